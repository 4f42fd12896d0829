"""Where files are decoded and scored: the Engine protocol, its registry, the local and Ray engines."""
