"""cli/runs.py counts rejects with reports.records.is_rejected, imported at the first record (not
when the CLI starts) and kept in a module attribute: the function itself is never rebound
(issue 26: it used to replace itself through `global`)."""
from types import SimpleNamespace

from imgclean.cli import runs
from imgclean.reports import records


def test_the_first_record_imports_is_rejected_once_and_the_name_stays_put(monkeypatch):
    monkeypatch.setattr(runs, "_REJECTED", None, raising=False)  # as at the CLI's start
    before = runs._is_rejected
    assert runs._is_rejected(SimpleNamespace(status="ood"), False) is True
    assert runs._is_rejected is before  # not rebound
    assert runs._REJECTED is records.is_rejected
    unreadable = SimpleNamespace(status="unreadable")
    assert runs._is_rejected(unreadable, False) is True and runs._is_rejected(unreadable, True) is False
    assert runs._is_rejected(SimpleNamespace(status="ok"), False) is False
