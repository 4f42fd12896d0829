"""What imgclean keeps on disk besides the quarantine: the model directory and the scan cache."""
