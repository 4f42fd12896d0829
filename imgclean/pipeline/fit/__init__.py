"""Training a model: the classifier, its detectors and their calibration, the reject head."""
