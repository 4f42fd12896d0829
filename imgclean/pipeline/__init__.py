"""The jobs: fit, fit-head, scan, evaluate; each a function from folders to results."""
