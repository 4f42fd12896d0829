"""imgclean.structured, the one bounded reader of JSON, JSON lines, CSV and YAML: every input it
is given ends as a value or a StructuredInputError naming the file, the line and the limit,
never as a RecursionError, csv.Error or UnicodeDecodeError."""
import csv
import io
import json
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgclean.errors import ImgcleanError
from imgclean.structured import (
    MAX_DEPTH, CsvRows, Limits, StructuredInputError, json_lines, load_json, load_yaml, parse_json, too_deep,
)

BOMB = "[" * 50_000 + "]" * 50_000  # 100 KB: json.loads raises RecursionError on it


def lines_of(data: bytes, limits: Limits = Limits()) -> list:
    return list(json_lines(io.BytesIO(data), "f.jsonl", limits))


def test_json_loads_itself_recurses_on_a_few_kilobytes():
    """The reason for the reader: a small document is a RecursionError, not a ValueError."""
    with pytest.raises(RecursionError):
        json.loads("[" * (sys.getrecursionlimit() + 10))


@pytest.mark.parametrize("text", [BOMB, "[" * 40_000, '{"a":' * 5_000 + "1" + "}" * 5_000, "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)])
def test_a_depth_bomb_is_a_one_line_error_naming_the_limit(text):
    with pytest.raises(StructuredInputError) as info:
        load_json(text.encode(), "config.json")
    exc = info.value
    assert isinstance(exc, ValueError) and isinstance(exc, ImgcleanError)
    assert str(exc).startswith("config.json: ") and f"deeper than {MAX_DEPTH} levels" in str(exc)
    assert "\n" not in str(exc) and len(str(exc)) < 200


def test_nesting_up_to_the_limit_and_brackets_inside_strings_are_fine():
    deep = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert load_json(deep, "x") is not None
    name = "[" * 10_000  # a file name may hold any number of brackets
    assert load_json(json.dumps({"path": name, "escaped": '\\"[[[[' * 100}), "x")["path"] == name


@pytest.mark.parametrize("text, deep", [
    ("[]", False), ("[[]]", False), ('["]]]]"]', False), ('["\\"[[[[[["]', False),
    ("[" * 5 + "]" * 5, False), ("[" * 6 + "]" * 6, True), ("[{" * 3 + "}]" * 3, True),
    ("[" * 6, True),  # unclosed: json.loads would recurse into it before failing
    ('"' + "[" * 9, False),  # an unterminated string: its brackets are text
])
def test_too_deep_measures_structure_not_text(text, deep):
    assert too_deep(text, 5) is deep


def test_too_deep_is_linear_on_hostile_strings():
    """An unterminated string full of escaped quotes after enough brackets to need the careful
    path: a regex that retried from each quote would take hours; this takes well under a second
    here (not a timing test: the size makes the difference one of hours against milliseconds)."""
    text = "[" * 40 + '"' + '\\"' * 300_000 + "\\"
    assert too_deep(text, 32) is True


def test_json_lines_reports_each_bad_line_and_goes_on():
    data = b"".join([
        b'{"a": 1}\n',
        b"\n",  # blank: skipped, still counted
        b"[" * 2_000 + b"]" * 2_000 + b"\n",  # 4 KB, and json.loads would raise RecursionError
        b'{"name": "caf\xe9"}\n',  # Latin-1, not UTF-8
        b'{"a": "x\x00y"}\n',
        b"x" * 10_000 + b"\n",  # over the line limit below
        b"{not json\n",
        b'{"n": ' + b"9" * 5_000 + b"}\n",  # an int with more digits than Python converts
        b'{"b": 2}',  # last line, no newline, sound
    ])
    got = lines_of(data, Limits(line_bytes=8_192))
    values = {n: v for n, v in got}
    assert values[1] == {"a": 1} and values[9] == {"b": 2} and 2 not in values
    problems = {n: v.problem for n, v in got if isinstance(v, StructuredInputError)}
    assert set(problems) == {3, 4, 5, 6, 7, 8}
    assert "deeper than" in problems[3] and "not UTF-8" in problems[4] and "0xe9" in problems[4]
    assert "NUL" in problems[5] and "longer than 8,192 bytes" in problems[6]
    assert problems[7].startswith("not JSON") and problems[8].startswith("not JSON")
    assert all(not v.torn for v in values.values() if isinstance(v, StructuredInputError))
    assert str(values[3]) == f"f.jsonl line 3: {problems[3]}"


def test_an_over_long_line_is_never_held_whole_and_a_cut_last_line_is_torn():
    class Reads(io.BytesIO):
        biggest = 0

        def readline(self, size=-1):
            line = super().readline(size)
            Reads.biggest = max(Reads.biggest, len(line))
            return line

    data = b'{"a": 1}\n' + b"y" * 3_000_000 + b"\n" + b'{"b": 2}\n' + b'{"c": ' + b"z" * 2_000_000
    got = list(json_lines(Reads(data), "j", Limits(line_bytes=1_000)))
    assert [n for n, _ in got] == [1, 2, 3, 4]
    assert got[2][1] == {"b": 2} and not got[1][1].torn and got[3][1].torn
    assert Reads.biggest <= 1 << 20  # read in bounded pieces


def test_the_total_size_limit_stops_the_file():
    with pytest.raises(StructuredInputError, match="larger than 100 bytes"):
        lines_of(b'{"a": 1}\n' * 50, Limits(total_bytes=100))
    with pytest.raises(StructuredInputError, match="more than the limit"):
        load_json(b"[" + b"1," * 100 + b"1]", "c.json", Limits(total_bytes=50))


@pytest.mark.parametrize("data, text", [
    (b"\xff\xfe{}", "not UTF-8"), (b'{"a": "\x00"}', "NUL"), (b"{", "not valid JSON"), (b"", "not valid JSON"),
])
def test_a_bad_document(data, text):
    with pytest.raises(StructuredInputError, match=text):
        load_json(data, "doc.json")


def csv_rows(text: str, limits: Limits = Limits()) -> list:
    fh = io.StringIO(text, newline="")
    rows = CsvRows(fh, "r.csv", limits)
    return [rows.fieldnames, *rows]


def test_csv_rows_are_dicts_with_their_line_numbers():
    got = csv_rows('path,status\r\na.png,ok\r\n"b\nc.png",ood\r\n\r\nshort\r\nx,y,z\r\n')
    assert got[0] == ["path", "status"]
    assert got[1] == (2, {"path": "a.png", "status": "ok"})
    assert got[2] == (3, {"path": "b\nc.png", "status": "ood"})  # a name with a newline: one row, two lines
    assert got[3] == (6, {"path": "short", "status": None})
    assert got[4] == (7, {"path": "x", "status": "y", None: ["z"]})


def test_a_csv_field_over_csvs_default_limit_is_read_and_one_over_ours_is_one_error():
    old = csv.field_size_limit()
    try:
        csv.field_size_limit(131_072)  # csv's default: a report of a deep tree would stop here
        long_path = "d/" * 100_000 + "x.png"
        got = csv_rows(f"path,status\r\n{long_path},ok\r\n")
        assert got[1][1]["path"] == long_path
        with pytest.raises(StructuredInputError) as info:
            csv_rows('path,status\r\na.png,ok\r\n"' + "m" * 3_000 + '",ok\r\nb.png,ok\r\n', Limits(field_chars=1_000))
        assert "line 3" in str(info.value) and "1,000 characters" in str(info.value)
    finally:
        csv.field_size_limit(old)


def test_a_csv_field_split_over_many_short_lines_still_meets_the_field_limit():
    old = csv.field_size_limit()
    try:
        text = 'path,status\r\n"' + "ab\n" * 1_000 + '",ok\r\n'
        with pytest.raises(StructuredInputError, match="line 2.*a field is longer than"):
            csv_rows(text, Limits(field_chars=100))
    finally:
        csv.field_size_limit(old)


def test_a_csv_line_with_a_nul_or_an_over_long_line_is_one_error():
    with pytest.raises(StructuredInputError, match="r.csv line 3: holds a NUL"):
        csv_rows("path,status\r\na.png,ok\r\nb\x00.png,ok\r\n")
    with pytest.raises(StructuredInputError, match="r.csv line 2: longer than 50 characters"):
        csv_rows("path,status\r\n" + "z" * 80 + ",ok\r\n", Limits(field_chars=50))


def test_yaml_depth_aliases_size_and_bad_values_are_one_line_errors():
    assert load_yaml("scan:\n  model: m\n", "s.yaml") == {"scan": {"model": "m"}}
    cases = {
        "a: " + "[" * 5_000 + "]" * 5_000: "nested deeper than 32 levels",
        "a: &x [1, 2]\nb: *x\n": "aliases",
        "a: " + "1" * 5_000: "not valid YAML",  # int() refuses 5,000 digits: a ValueError, not a YAMLError
        "a: 2001-13-45": "not valid YAML",
        "a: !!python/object:os.system x": "not valid YAML",
        "a: [1,\n": "not valid YAML",
        "a: b\x00": "line 1: holds a NUL",
    }
    for text, expected in cases.items():
        with pytest.raises(StructuredInputError, match=expected.replace("(", "\\(")) as info:
            load_yaml(text, "s.yaml")
        assert str(info.value).startswith("s.yaml") and "\n" not in str(info.value)
    with pytest.raises(StructuredInputError, match="not UTF-8"):
        load_yaml(b"a: \xff", "s.yaml")
    with pytest.raises(StructuredInputError, match="larger than 10 bytes"):
        load_yaml("a: 12345678901", "s.yaml", Limits(total_bytes=10))


# ----------------------------------------------------------------------------- hypothesis

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)


def depth_of(value) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values, depth=st.integers(1, 6))
def test_too_deep_agrees_with_the_real_depth(value, depth):
    """On any JSON text (strings full of brackets and quotes included) the fast measure is exact."""
    text = json.dumps(value, ensure_ascii=bool(depth % 2))
    assert too_deep(text, depth) is (depth_of(value) > depth)
    if depth_of(value) <= depth:
        assert parse_json(text, "x", Limits(depth=depth)) == json.loads(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=600), cut=st.integers(0, 600))
def test_json_lines_never_raises_anything_but_its_own_error(data, cut):
    """Random bytes, and random damage to a valid file: every line is a value or an error."""
    valid = b"".join(json.dumps({"path": f"d/{i}[.png", "n": [i, {"x": "]\""}]}).encode() + b"\n" for i in range(5))
    for blob in (data, valid[:cut] + data[: len(data) // 2] + valid[cut:], b"[" * 40 + data):
        for n, value in lines_of(blob, Limits(depth=8, line_bytes=200)):
            assert n >= 1
            if isinstance(value, StructuredInputError):
                assert value.line == n and "\n" not in str(value)
            else:
                assert depth_of(value) <= 8


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=300))
def test_csv_and_yaml_never_raise_anything_but_their_own_error(text):
    for read in (lambda: csv_rows(text, Limits(field_chars=100)), lambda: load_yaml(text, "s.yaml", Limits(depth=4))):
        try:
            read()
        except StructuredInputError as exc:
            assert "\n" not in str(exc)
