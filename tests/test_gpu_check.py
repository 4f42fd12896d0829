"""scripts/gpu_check.py's dry path on a CPU: it runs end to end and writes its marked section."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu_writes_its_section_only(tmp_path):
    docs = tmp_path / "performance.md"
    docs.write_text("# Performance\n\nkept as is\n")
    cmd = [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cpu", "--tiny", "--epochs", "1",
           "--arch", "mobilenetv3_small_050", "--work", str(tmp_path / "work"), "--docs", str(docs)]
    proc = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = docs.read_text()
    assert page.startswith("# Performance\n\nkept as is\n")
    assert page.count("<!-- gpu_check:start -->") == 1 and "scan_images_per_s" in page and "fit_seconds" in page

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_section(docs, "second run")  # replaces the section, leaves the rest
    page = docs.read_text()
    assert page.count("<!-- gpu_check:start -->") == 1 and "second run" in page and "scan_images_per_s" not in page
    assert page.startswith("# Performance\n\nkept as is\n")
