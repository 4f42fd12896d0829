"""The review page in a real browser: headless Chromium renders it offline, it is not blank, its
one script runs under the page's CSP, and a copy button copies its restore command.

Skipped where no Chromium is installed (Debian: `apt-get install chromium`).
"""
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from imgclean.cli import app

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
BROWSER = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no chromium/chrome on PATH (apt-get install chromium)")

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)


def chromium(tmp_path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    return subprocess.run(
        [BROWSER, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)},
    )


@pytest.fixture
def page(model_dir, incoming, tmp_path):
    folder, _ = incoming
    (folder / "<script>alert(1)<").mkdir()
    (folder / "<script>alert(1)<" / "script>.png").write_bytes(b"not an image")
    out = tmp_path / "review.html"
    result = CliRunner().invoke(app, ["scan", str(folder), "-m", str(model_dir), "--move-to", str(tmp_path / "q"), "--html", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return out


def test_page_renders_and_is_not_blank(page, tmp_path):
    shot = tmp_path / "shot.png"
    proc = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri())
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    assert shot.is_file() and shot.stat().st_size > 0
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels.std() > 20  # a blank (or error) page is one flat colour
    # the dark header band is drawn at the top, and the page body below it is light
    assert pixels[5:40, :600].mean() < 90
    assert pixels[300:, :].mean() > 180
    # some red: rejected scores and over-threshold histogram bars
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    assert ((r > 150) & (g < 100) & (b < 100)).sum() > 50


def test_browser_runs_only_the_pinned_script_and_shows_hostile_name_as_text(page, tmp_path):
    proc = chromium(tmp_path, "--dump-dom", page.as_uri())
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    dom = proc.stdout.decode("utf-8")
    assert len(re.findall(r"<script\b", dom)) == 1  # the page's own copy script, nothing from a name
    # it ran, so the CSP hash matches it (the copy buttons are shown only then)
    assert re.search(r'<html[^>]*class="js"', dom)
    assert dom.count('<button type="button" class="copy"') >= 2
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.png" in dom
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', dom)
    assert srcs and all(s.startswith("data:image/") for s in srcs)


def test_copy_button_copies_the_exact_restore_command(page, tmp_path):
    """Clicks the first copy button of the page, with the clipboard replaced by a recorder."""
    import base64
    import hashlib
    import html

    probe = (
        "Object.defineProperty(navigator,'clipboard',{value:{writeText:function(t){"
        "document.body.setAttribute('data-copied',t);return Promise.resolve()}}});"
        "window.addEventListener('load',function(){document.querySelector('button.copy').click()});"
    )
    digest = base64.b64encode(hashlib.sha256(probe.encode()).digest()).decode()
    source = page.read_text(encoding="utf-8")
    source = source.replace("script-src '", f"script-src 'sha256-{digest}' '", 1)
    source = source.replace("</script>", f"</script><script>{probe}</script>", 1)
    probed = tmp_path / "probed.html"
    probed.write_text(source, encoding="utf-8")
    proc = chromium(tmp_path, "--virtual-time-budget=3000", "--dump-dom", probed.as_uri())
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    dom = proc.stdout.decode("utf-8")
    copied = re.search(r'data-copied="([^"]*)"', dom)
    first = re.search(r'<code class="cmd"[^>]*>([^<]*)</code>', source)
    assert copied and first, dom[:2000]
    assert html.unescape(copied.group(1)) == html.unescape(first.group(1))
    assert html.unescape(first.group(1)).startswith("imgclean restore ")
