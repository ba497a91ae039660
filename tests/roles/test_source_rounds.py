"""How `dvsecure source submit` and `watch` treat the parties across rounds
(issue 14), with the parties' side played by a recorder (the real parties are
in test_source_e2e.py): a vote is sealed once and the same envelopes go again
when its query re-opens; a party that already holds one counts as done; a party
found unreachable is not tried again for every query of the round; SIGTERM
stops `watch` cleanly."""
from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time

import pytest
from test_source_config import make_setup, run, write_config

from dvsecure.errors import PartyRefusal
from dvsecure.roles.published import OpenQueries, write_open
from dvsecure.roles.source import Source
from dvsecure.wire.submission import Submission


@pytest.fixture
def setup(tmp_path, capsys):
    return make_setup(tmp_path, capsys)


class Recorder:
    """Stands in for PartySubmitter: seals deterministically-named envelopes, and
    each party answers as `answers[rank](query_id)` says (None: accepted)."""

    def __init__(self, answers):
        self.box_keys, self.answers, self.calls, self.sealed = [bytes(32)] * 2, answers, [], 0

    def envelopes(self, qids, votes, num_classes, kind):
        self.sealed += 1
        sub = Submission.new(votes[0])
        return [f"{qids[0]}|{rank}|{sub.nonce.hex()}".encode() for rank in range(2)], [sub]

    def close(self):
        pass


def install(monkeypatch, recorder):
    monkeypatch.setattr(Source, "connect", lambda self: setattr(self, "_submitter", recorder) or recorder)

    def send(self, rank, envelope):
        qid = envelope.decode().split("|")[0]
        recorder.calls.append((rank, envelope))
        code = recorder.answers[rank](qid)
        if code is not None:
            raise PartyRefusal(f"party {rank}: {code}", code)
    monkeypatch.setattr(Source, "_send", send)


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_a_reopened_query_gets_the_same_envelopes_and_an_unreachable_party_is_tried_once(setup, capsys,
                                                                                          monkeypatch):
    tmp_path, policy = setup
    qids = ("q0", "q1", "q2")
    (tmp_path / "votes.jsonl").write_text("".join(json.dumps({"query_id": q, "vote": i}) + "\n"
                                                  for i, q in enumerate(qids)))
    write_open(tmp_path / "pub", OpenQueries(1, qids, 3, 0.0, policy.digest()))
    rec = Recorder([lambda q: None, lambda q: "UNAVAILABLE"])
    install(monkeypatch, rec)
    code, out, err = run(capsys, "source", "submit", "--config", write_config(tmp_path), "--votes",
                         tmp_path / "votes.jsonl", "--json")
    got = json.loads(out)
    assert code == 1 and got["sent"] == 0, out + err
    assert [(f["query_id"], f["party"]) for f in got["failed"]] == [("q0", 1), ("q1", 1), ("q2", 1)]
    assert [r for r, _ in rec.calls] == [0, 1, 0, 0]                     # party 1 asked once, not per query
    assert "not tried" in got["failed"][1]["error"]
    state = tmp_path / "alpha-state"
    assert len(lines(state / "sealed.jsonl")) == 3 and not lines(state / "submissions.jsonl")

    # The queries re-open in round 2: party 0 still holds each share, party 1 is back.
    write_open(tmp_path / "pub", OpenQueries(2, qids, 3, 0.0, policy.digest()))
    rec2 = Recorder([lambda q: "ALREADY_EXISTS", lambda q: None])
    install(monkeypatch, rec2)
    code, out, err = run(capsys, "source", "submit", "--config", write_config(tmp_path), "--votes",
                         tmp_path / "votes.jsonl", "--json")
    assert code == 0 and json.loads(out)["sent"] == 3, out + err
    assert rec2.sealed == 0                                              # nothing sealed anew
    sealed = {d["query_id"]: d for d in lines(state / "sealed.jsonl")}
    for rank, env in rec2.calls:                                         # each exactly as sealed in round 1
        assert env == base64.b64decode(sealed[env.decode().split("|")[0]]["envelopes"][rank])
    assert {env for r, env in rec2.calls if r == 0} == {env for r, env in rec.calls if r == 0}
    subs = lines(state / "submissions.jsonl")
    assert [(d["query_id"], d["vote"], d["nonce"]) for d in subs] == \
        [(q, sealed[q]["vote"], sealed[q]["nonce"]) for q in qids]
    # A third round of the same queries: each was sent in round 2, not in round 3, so again.
    write_open(tmp_path / "pub", OpenQueries(3, qids[:1], 3, 0.0, policy.digest()))
    rec3 = Recorder([lambda q: "ALREADY_EXISTS", lambda q: "ALREADY_EXISTS"])
    install(monkeypatch, rec3)
    code, out, err = run(capsys, "source", "submit", "--config", write_config(tmp_path), "--votes",
                         tmp_path / "votes.jsonl", "--json")
    assert code == 0 and json.loads(out)["sent"] == 1 and json.loads(out)["not_open"] == 2
    assert len(lines(state / "submissions.jsonl")) == 3                 # recorded once per query


def test_a_refusal_other_than_held_leaves_the_query_unsent(setup, capsys, monkeypatch):
    tmp_path, policy = setup
    write_open(tmp_path / "pub", OpenQueries(1, ("q0",), 3, 0.0, policy.digest()))
    install(monkeypatch, Recorder([lambda q: None, lambda q: "FAILED_PRECONDITION"]))
    code, out, err = run(capsys, "source", "submit", "--config", write_config(tmp_path), "--votes",
                         tmp_path / "votes.jsonl")
    assert code == 1 and "not sent: query 'q0' to party 1: party 1: FAILED_PRECONDITION" in out, out + err
    assert not (tmp_path / "alpha-state" / "submissions.jsonl").exists()


def test_open_queries_of_another_policy_are_refused(setup, capsys, monkeypatch):
    tmp_path, policy = setup
    write_open(tmp_path / "pub", OpenQueries(1, ("q0",), 3, 0.0, "ab" * 32))
    rec = Recorder([lambda q: None, lambda q: None])
    install(monkeypatch, rec)
    code, out, err = run(capsys, "source", "submit", "--config", write_config(tmp_path), "--votes",
                         tmp_path / "votes.jsonl")
    assert code == 2 and "not this source's" in err and rec.calls == []


def test_watch_stops_cleanly_on_sigterm(setup):
    tmp, policy = setup
    # An open round this source has no vote for: it polls, and never needs a party.
    write_open(tmp / "pub", OpenQueries(1, ("other",), 3, 0.0, policy.digest()))
    proc = subprocess.Popen([sys.executable, "-m", "dvsecure.cli", "source", "watch", "--config",
                             str(write_config(tmp, poll=0.1)), "--votes", str(tmp / "votes.jsonl"), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()                 # its first round report: it is polling
        assert json.loads(first)["event"] == "round" and json.loads(first)["no_vote"] == 1
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    end = json.loads(out.splitlines()[-1])
    assert end["event"] == "end" and end["stopped"] == "signal" and end["rounds"] == 1
