"""The front door: one request object per job (scan, apply, fit, audit, evaluate, learn).

A request holds what a job was asked to do and checks itself (`check()`) before anything runs:
folders that must exist, where a quarantine, a cache or a report may go, option ranges, the
method a model can serve. The CLI parses its arguments into a request; `imgclean.api` builds the
same request from its keywords: both doors refuse the same bad requests with the same
ImgcleanError subclass and one-line message (the message names options as the CLI spells them:
--cache-dir is the API's cache_dir). A refusal the CLI says as a usage error (exit 2) is one of
`base.refusal_classes()`. A job's result owns its exit code (`results.py`).
"""

# The issues of an audit that `apply --move-issues` and `audit --move-issues` may name
# (pipeline/audit/apply_findings.MOVABLE); here, so the CLI's help needs no request module.
ISSUE_NAMES = ("label_issue", "outlier", "duplicate", "unreadable")
