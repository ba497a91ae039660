"""A source's vote file (issue 14): JSON lines, CSV and .npy; every bad row is an
error naming the file, its line and the field, and the good rows are kept."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dvsecure.mechanism.votes import VoteFormat
from dvsecure.policy import HISTOGRAM, ONE_HOT, SIMPLEX
from dvsecure.roles.votefile import VoteFileError, check_votes, parse_jsonl, read_votes

SIMPLEX_FMT = VoteFormat(SIMPLEX, 1, 16, "c", "alpha")
SLICES = VoteFormat(HISTOGRAM, 4)


def where(vf):
    """(line, field) of each error, and each error names the file."""
    assert all(str(e).startswith(f"{vf.path}:{e.line}: {e.field}: ") for e in vf.errors)
    return [(e.line, e.field) for e in vf.errors]


def test_jsonl_keeps_good_rows_and_names_each_bad_line_and_field(tmp_path):
    path = tmp_path / "votes.jsonl"
    path.write_text("\n".join([
        json.dumps({"query_id": "q0", "vote": 2}),
        json.dumps({"query_id": "q1", "vote": [0, 1, 0]}),
        "{not json",
        json.dumps({"query_id": "q2"}),
        json.dumps({"query_id": "q3", "vote": 1, "extra": True}),
        json.dumps({"query_id": "", "vote": 1}),
        json.dumps({"query_id": "q4", "vote": "2"}),
        json.dumps({"query_id": "q5", "vote": True}),
        "",
        json.dumps({"query_id": "q0", "vote": 1}),
        json.dumps({"query_id": "q6", "vote": [0.25, "x"]}),
        json.dumps([1, 2]),
        json.dumps({"query_id": "q7", "vote": 0}),
    ]) + "\n")
    vf = read_votes(path, ONE_HOT)
    assert [(r.query_id, r.vote, r.line) for r in vf.rows] == [("q0", 2, 1), ("q1", [0, 1, 0], 2), ("q7", 0, 13)]
    assert where(vf) == [(3, "line"), (4, "vote"), (5, "extra"), (6, "query_id"), (7, "vote"), (8, "vote"),
                         (10, "query_id"), (11, "vote"), (12, "line")]
    assert "first at line 1" in str(vf.errors[6])


def test_csv_index_vectors_and_histograms_with_a_header(tmp_path):
    path = tmp_path / "votes.csv"
    path.write_text("query_id,vote\nq0,2\nq1,0.25,0.75,0\nq2,two\nq3,1.5\nq4\n,1\n\nq5,0,0,1\n")
    vf = read_votes(path, SIMPLEX_FMT)
    assert [(r.query_id, r.vote, r.line) for r in vf.rows] == [("q0", 2, 2), ("q1", [0.25, 0.75, 0], 3),
                                                                 ("q5", [0, 0, 1], 9)]
    assert isinstance(vf.rows[1].vote[0], float) and isinstance(vf.rows[1].vote[2], int)
    assert where(vf) == [(4, "vote column 1"), (5, "vote"), (6, "vote"), (7, "query_id")]

    hist = tmp_path / "slices.csv"
    hist.write_text("q0,1,2,1\nq1,3\nq2,0,4,0\n")       # no header; a histogram is C counts, not an index
    vf = read_votes(hist, SLICES)
    assert [(r.query_id, r.vote) for r in vf.rows] == [("q0", [1, 2, 1]), ("q2", [0, 4, 0])]
    assert where(vf) == [(2, "vote")] and "histogram" in vf.errors[0].message


def test_csv_line_numbers_count_quoted_newlines(tmp_path):
    path = tmp_path / "votes.csv"
    path.write_text('"q\n0",1\nq1,x\n')
    vf = read_votes(path, ONE_HOT)
    assert where(vf) == [(2, "query_id"), (3, "vote column 1")]     # a newline is not printable


def test_npy_structured_arrays(tmp_path):
    vec = np.array([("q0", [0.5, 0.5, 0.0]), ("q1", [0.0, 1.0, 0.0]), ("", [1.0, 0, 0])],
                   dtype=[("query_id", "U16"), ("vote", "f8", (3,))])
    np.save(tmp_path / "vec.npy", vec)
    vf = read_votes(tmp_path / "vec.npy", SIMPLEX_FMT)
    assert [(r.query_id, r.vote, r.line) for r in vf.rows] == [("q0", [0.5, 0.5, 0.0], 1), ("q1", [0.0, 1.0, 0.0], 2)]
    assert where(vf) == [(3, "query_id")]
    idx = np.array([("a", 2), ("b", 0), ("a", 1)], dtype=[("query_id", "U4"), ("vote", "i8")])
    np.save(tmp_path / "idx.npy", idx)
    vf = read_votes(tmp_path / "idx.npy", ONE_HOT)
    assert [(r.query_id, r.vote) for r in vf.rows] == [("a", 2), ("b", 0)] and type(vf.rows[0].vote) is int
    assert where(vf) == [(3, "query_id")]
    flt = np.array([("a", 2.0)], dtype=[("query_id", "U4"), ("vote", "f8")])
    np.save(tmp_path / "flt.npy", flt)
    assert where(read_votes(tmp_path / "flt.npy", ONE_HOT)) == [(1, "vote")]


@pytest.mark.parametrize("arr", [np.zeros((2, 3)), np.array([(1, 2)], dtype=[("id", "i8"), ("vote", "i8")]),
                                 np.array([("a", "b")], dtype=[("query_id", "U2"), ("vote", "U2")])])
def test_npy_files_outside_the_convention_are_refused_whole(tmp_path, arr):
    np.save(tmp_path / "bad.npy", arr)
    with pytest.raises(VoteFileError, match="bad.npy"):
        read_votes(tmp_path / "bad.npy", ONE_HOT)


def test_unreadable_or_unknown_files_are_refused_whole(tmp_path):
    with pytest.raises(VoteFileError, match="cannot read"):
        read_votes(tmp_path / "none.jsonl", ONE_HOT)
    (tmp_path / "votes.txt").write_text("q0 1\n")
    with pytest.raises(VoteFileError, match="unknown format"):
        read_votes(tmp_path / "votes.txt", ONE_HOT)
    (tmp_path / "pickled.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(VoteFileError, match="not a .npy"):
        read_votes(tmp_path / "pickled.npy", ONE_HOT)


def test_check_votes_applies_the_library_validation_for_the_open_class_count(tmp_path):
    text = "\n".join(json.dumps(d) for d in [
        {"query_id": "q0", "vote": 3}, {"query_id": "q1", "vote": 4}, {"query_id": "q2", "vote": [0, 1, 0, 0]},
        {"query_id": "q3", "vote": [0.5, 0.5, 0, 0]}, {"query_id": "q4", "vote": [1, 0, 0]}])
    vf = parse_jsonl(text, "model", ONE_HOT)
    ok = check_votes(vf, ONE_HOT, 4)
    assert [r.query_id for r in ok.rows] == ["q0", "q2"]
    assert where(ok) == [(2, "vote"), (4, "vote"), (5, "vote")]
    assert "outside [0, 4)" in ok.errors[0].message and "not one-hot" in ok.errors[1].message
    # The same vector is valid for a simplex source, and a histogram must count all m slices.
    assert [r.query_id for r in check_votes(vf, SIMPLEX_FMT, 4).rows] == ["q0", "q2", "q3"]
    hist = parse_jsonl('{"query_id": "h0", "vote": [1, 3, 0]}\n{"query_id": "h1", "vote": [1, 2, 0]}', "m", SLICES)
    ok = check_votes(hist, SLICES, 3)
    assert [r.query_id for r in ok.rows] == ["h0"] and "not 4 slices" in ok.errors[0].message
