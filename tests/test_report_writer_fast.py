"""The CSV writer's formatted rows are byte for byte what csv.writer writes, whatever the fields hold."""
from __future__ import annotations

import csv
import io
import math

import pytest

from imgclean.reports.records import FIELDS, RecordWriter, ScanRecord, read_report

VALUES = {
    "path": ["a.png", "sub/b c.png", "x,y.png", 'q"uote.png', "new\nline.png", "cr\r.png", " lead.png", "caf\u00e9.png",
             "bad\udcff.png", ""],
    "predicted": [None, "cat", "a,b", 'say "hi"', ""],
    "score": [None, 0.0, 1.5, 1 / 3, 1e-300, 123456789.123, math.inf, -0.0],
    "message": ["", "decode failed: x, y", "line\nbreak", "plain"],
    "destination": [None, "/q/a.png", "/q/a,b.png"],
    "size": [0, None, 12345],
    "dev": [None, 2049],
}


def records():
    n = max(len(v) for v in VALUES.values())
    for i in range(n * 2):
        pick = {k: v[(i * 7 + j) % len(v)] for j, (k, v) in enumerate(VALUES.items())}
        yield ScanRecord(pick["path"] or f"f{i}.png", "ok" if i % 2 else "ood", pick["predicted"], pick["predicted"],
                         pick["score"], pick["message"], "moved" if pick["destination"] else "", pick["destination"],
                         pick["size"], None if pick["size"] is None else 10**18 + i, pick["dev"],
                         None if pick["dev"] is None else i)


def reference(recs, root) -> bytes:
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(FIELDS)
    for r in recs:
        d = r.to_dict()
        w.writerow([root if k == "root" else d[k] for k in FIELDS])
    return buf.getvalue().encode("utf-8", "surrogateescape")


@pytest.mark.parametrize("root", ["/data/photos", "/data/a,b", '/data/q"', "/data/\u00e9t\u00e9", "/data/line\nbreak"])
def test_rows_equal_csv_writer(tmp_path, root):
    recs = list(records())
    out = tmp_path / "r.csv"
    with RecordWriter(out, root) as w:
        for r in recs:
            w(r)
    assert out.read_bytes() == reference(recs, root)
    back = [row.record for row in read_report(out)]
    assert [r.path for r in back] == [r.path for r in recs]
