"""docs/test-map.md (which tests cover which module) is current."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("test_map_script", ROOT / "scripts" / "test_map.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_page_is_current():
    assert (ROOT / "docs" / "test-map.md").read_text() == _script().render(), "run python scripts/test_map.py"


def test_every_module_is_listed_and_a_known_pairing_is_found():
    script = _script()
    page = script.render()
    for module in script.modules():
        assert f"| `{module}` |" in page
    row = next(line for line in page.splitlines() if line.startswith("| `imgclean.tuning` |"))
    assert "`test_tuning.py`" in row
