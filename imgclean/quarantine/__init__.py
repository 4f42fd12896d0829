"""Moving files out of a scanned folder and back: journal, transfer, recovery, restore, locks."""
