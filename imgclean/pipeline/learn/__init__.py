"""Learning from a review: a quarantine's decisions -> a learned rule and a new model version."""
