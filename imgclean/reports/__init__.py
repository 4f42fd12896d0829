"""What imgclean writes for people and other programs: record files and the review page."""
