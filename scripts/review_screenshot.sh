#!/bin/sh
# Rebuild docs/review-page.png: fit the sample digits, scan a copy of sample_data/incoming with
# --html, and screenshot the page in headless Chromium (Debian: apt-get install chromium).
# Usage: scripts/review_screenshot.sh [WORK_DIR]   (from the repository root; IMGCLEAN overrides the command)
set -eu
IMGCLEAN=${IMGCLEAN:-imgclean}  # e.g. IMGCLEAN="python -m imgclean"
work=${1:-/tmp/imgclean-review}
rm -rf "$work" && mkdir -p "$work"
$IMGCLEAN fit sample_data/train -o "$work/model" -q
cp -r sample_data/incoming "$work/incoming"
$IMGCLEAN scan "$work/incoming" -m "$work/model" --move-to "$work/rejected" --html "$work/review.html" -q
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$work/chromium-profile" --screenshot="$work/review.png" \
  --window-size=1280,2000 "file://$work/review.html" 2>/dev/null
cp "$work/review.png" docs/review-page.png
echo "docs/review-page.png from $work/review.html"
