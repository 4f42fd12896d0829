"""A scan that could not list part of its tree exits non-zero (issue 25): common.exit_code reads
summary.unlisted (folders the walk could not list) and answers EXIT_SKIPPED with a line saying
so, unless allow_unlisted; summaries without the field keep the earlier rules."""
from types import SimpleNamespace

import pytest

from imgclean.cli.common import EXIT_ERROR, EXIT_OK, EXIT_REJECTED, EXIT_SKIPPED, EXIT_TERMINATED, exit_code
from imgclean.pipeline.apply.applier import ScanSummary


def stub(**fields):
    """A summary as the walk's helper will make it: ScanSummary's fields and `unlisted`."""
    base = dict(interrupted=False, move_errors=0, rejected=0, counts={"skipped": 0, "changed": 0})
    return SimpleNamespace(**{**base, **fields})


@pytest.mark.parametrize("fields, flags, expected", [
    (dict(unlisted=2, counts={"skipped": 2, "changed": 0}), {}, EXIT_SKIPPED),
    (dict(unlisted=1), {"allow_unlisted": True}, EXIT_OK),
    (dict(unlisted=1, rejected=3), {"fail_on_reject": True}, EXIT_SKIPPED),  # incomplete comes first
    (dict(unlisted=1, rejected=3), {"fail_on_reject": True, "allow_unlisted": True}, EXIT_REJECTED),
    (dict(unlisted=1, move_errors=1), {}, EXIT_ERROR),
    (dict(unlisted=1, interrupted=True), {"stop_code": EXIT_TERMINATED}, EXIT_TERMINATED),
    (dict(unlisted=0, counts={"skipped": 1, "changed": 0}), {}, EXIT_OK),
    (dict(unlisted=0, counts={"skipped": 1, "changed": 0}), {"fail_on_skip": True}, EXIT_SKIPPED),
])
def test_unlisted_folders_exit_non_zero_by_default(fields, flags, expected):
    code, message = exit_code(stub(**fields), **flags)
    assert code == expected, (fields, flags, code)
    if expected == EXIT_SKIPPED and fields.get("unlisted"):
        assert f"{fields['unlisted']} folder(s) in the scan could not be listed" in message
        assert "part of the tree was not scanned" in message


def test_a_summary_without_the_field_keeps_the_earlier_rules():
    plain = ScanSummary(root="/r", model="m")
    plain.counts["skipped"] = 1
    assert exit_code(plain) == (EXIT_OK, "")
    assert exit_code(plain, fail_on_skip=True) == (EXIT_SKIPPED, "")
    plain.unlisted = 1  # the field the walk's helper adds
    code, message = exit_code(plain)
    assert code == EXIT_SKIPPED and message.startswith("1 folder(s)")
