"""Issue 10, attack 2, as the auditor and the framed source see it: the budget
filter is a function of public data, so the auditor re-runs it and flags an
exclusion it does not make; and a source checks that each of its submissions is
in the log with its commitment and the status the filter requires."""
from __future__ import annotations

import pytest

from dvsecure.audit.check import audit
from dvsecure.audit.receipt import export_receipt
from dvsecure.engine.aggregator import Aggregator
from dvsecure.engine.ledger import Ledger
from dvsecure.log.writer import LogWriter, name_signers, operator_signer
from dvsecure.mechanism.filter import EXCLUDED_BUDGET, Decision
from dvsecure.noise import make_noise
from dvsecure.policy import Budget, ConsortiumPolicy, MechanismPolicy, SourcePolicy

POLICY = ConsortiumPolicy(
    sources=(SourcePolicy("a", 0.2, 0.5, Budget("rho", 4.0)),
             SourcePolicy("b", 0.1, 0.4, Budget("rho", 2.0), on_exhaustion="shrink"),
             SourcePolicy("c", 0.1, 0.3, Budget("rho", 1.5))),
    mechanism=MechanismPolicy("confident_gnmax", sigma2=0.5, sigma1=0.5, threshold=0.3), name="framing")


class FramingAggregator(Aggregator):
    """An operator whose filter excludes `victim` on the queries it names."""

    def __init__(self, *args, victim: str, on: set[int], **kwargs):
        super().__init__(*args, **kwargs)
        self.victim, self.on, self.count = victim, on, 0

    def _decide(self, spent):
        row = super()._decide(spent)
        if self.count in self.on:
            k = self._id_list.index(self.victim)
            row = [*row[:k], Decision(0.0, EXCLUDED_BUDGET), *row[k + 1:]]
        self.count += 1
        return row


def write_log(tmp_path, victim=None, on=(), queries=30):
    state = tmp_path / "state"
    policy = name_signers(POLICY, state)
    with Ledger(state / "ledger.sqlite", policy) as ledger:
        log = LogWriter(tmp_path / "log", ledger, [operator_signer(state, policy)])
        cls = FramingAggregator if victim else Aggregator
        extra = {"victim": victim, "on": set(on)} if victim else {}
        agg = cls(policy, ledger, noise=make_noise("seeded", 3), log=log, **extra)
        results = [agg.query(f"q{i}", {"a": i % 3, "b": i % 3, "c": (i + 1) % 3}, 3) for i in range(queries)]
    return tmp_path / "log", results


def filter_findings(report):
    return [f for f in report.findings if f.check == "filter"]


def test_an_honest_log_with_shrinking_and_exhausted_sources_has_no_filter_finding(tmp_path):
    log, results = write_log(tmp_path)
    statuses = {p.status for r in results for p in r.participants}
    assert {"excluded:budget", "shrunk"} <= statuses          # the filter did exclude and shrink
    report = audit(log, allow_nonprivate=True)
    assert report.ok, [str(f) for f in report.findings]


@pytest.mark.parametrize("victim", ["a", "b", "c"])
def test_an_exclusion_the_filter_does_not_make_is_flagged(tmp_path, victim):
    log, results = write_log(tmp_path, victim=victim, on={1})
    framed = results[1]
    assert framed.participant(victim).status == "excluded:budget"
    report = audit(log, allow_nonprivate=True)
    found = filter_findings(report)
    assert [f.seq for f in found] == [framed.seq] and victim in found[0].message, [str(f) for f in report.findings]
    # ... and in the victim's own receipt, from its entries alone.
    receipt = export_receipt(log, victim, tmp_path / "receipt")
    assert [f.seq for f in filter_findings(audit(receipt, allow_nonprivate=True))] == [framed.seq]


# ---- the framed source's own check (audit --submissions) -------------------------------

def test_a_source_finds_each_of_its_submissions_as_it_made_them(tmp_path):
    from dvsecure.audit.submissions import submission_line
    from dvsecure.wire.submission import Submission

    state = tmp_path / "state"
    policy = name_signers(POLICY, state)
    mine = {f"q{i}": Submission.new(i % 3) for i in range(6)}
    with Ledger(state / "ledger.sqlite", policy) as ledger:
        log = LogWriter(tmp_path / "log", ledger, [operator_signer(state, policy)])
        agg = Aggregator(policy, ledger, noise=make_noise("seeded", 3), log=log)
        for q, sub in mine.items():
            agg.query(q, {"a": sub, "b": 1, "c": 2}, 3)
    subs = tmp_path / "a.jsonl"
    subs.write_text("".join(submission_line(q, s) + "\n" for q, s in mine.items()))
    report = audit(tmp_path / "log", source="a", submissions=subs, allow_nonprivate=True)
    assert report.ok, [str(f) for f in report.findings]
    receipt = export_receipt(tmp_path / "log", "a", tmp_path / "receipt")
    assert audit(receipt, submissions=subs, allow_nonprivate=True).ok
    # A vote it did not make (another nonce), and a query it never got into the log.
    forged = dict(mine, q2=Submission(mine["q2"].vote, bytes(32)), q9=Submission.new(0))
    subs.write_text("".join(submission_line(q, s) + "\n" for q, s in forged.items()))
    found = [f for f in audit(receipt, submissions=subs, allow_nonprivate=True).findings if f.check == "submission"]
    assert len(found) == 2 and "q2" in found[0].message and "not 'a''s" in found[0].message
    assert "'q9'" in found[1].message and "no entry here" in found[1].message


class FramingAsAbsentOrInvalid(Aggregator):
    """The operator logs the victim's valid vote as absent (q1) or invalid (q2)."""

    def _open(self, query_id, subs):
        votes, commitments = super()._open(query_id, subs)
        if query_id == "q1":
            votes[0] = None
            commitments = bytes(32) + commitments[32:]
        if query_id == "q2":
            votes[0] = [0.5, 0.5, 0.5]          # not a vote: the tally will call it invalid
        return votes, commitments


def test_a_framed_source_sees_it_in_its_receipt(tmp_path):
    from dvsecure.audit.submissions import submission_line
    from dvsecure.wire.submission import Submission

    state = tmp_path / "state"
    policy = name_signers(POLICY, state)
    mine = {f"q{i}": Submission.new(1) for i in range(4)}
    with Ledger(state / "ledger.sqlite", policy) as ledger:
        log = LogWriter(tmp_path / "log", ledger, [operator_signer(state, policy)])
        agg = FramingAsAbsentOrInvalid(policy, ledger, noise=make_noise("seeded", 3), log=log)
        results = [agg.query(q, {"a": s, "b": 1, "c": 2}, 3) for q, s in mine.items()]
    assert [r.participant("a").status for r in results] == ["active", "absent", "excluded:invalid", "active"]
    # Every other check passes: only the source knows what it sent.
    assert audit(tmp_path / "log", allow_nonprivate=True).ok
    subs = tmp_path / "a.jsonl"
    subs.write_text("".join(submission_line(q, s) + "\n" for q, s in mine.items()))
    receipt = export_receipt(tmp_path / "log", "a", tmp_path / "receipt")
    found = [str(f) for f in audit(receipt, submissions=subs, allow_nonprivate=True).findings]
    # Logged absent: a receipt holds the entries the source is not absent from, so the
    # submission has no entry there; in the whole log the entry says absent.
    assert any("'q1'" in f and "no entry here, although 'a' submitted" in f for f in found), found
    assert any("'q2'" in f and "logged invalid" in f and "although the vote it submitted is valid" in f
               for f in found), found
    in_log = [str(f) for f in audit(tmp_path / "log", source="a", submissions=subs, allow_nonprivate=True).findings]
    assert any("'q1'" in f and "logged absent although it submitted" in f for f in in_log), in_log
    assert len(in_log) == len(found) == 2


@pytest.mark.parametrize("line, message", [
    ("not json", "line 1: not a JSON object"),
    ('{"query_id": "q", "vote": 1}', "exactly the fields"),
    ('{"query_id": "", "vote": 1, "nonce": "AA=="}', "query_id must be a non-empty string"),
    ('{"query_id": "q", "vote": 1, "nonce": "AA=="}', "nonce must be 32 bytes"),
])
def test_a_bad_submissions_file_is_named(tmp_path, line, message):
    from dvsecure.audit.submissions import load_submissions
    from dvsecure.errors import ParameterError

    path = tmp_path / "s.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ParameterError, match=f"{path}.*{message}"):
        load_submissions(path)


def test_an_entry_claiming_an_mpc_backend_does_not_skip_the_filter_check(tmp_path):
    """The operator writes the entry's backend field: under a policy that names no
    computing party, nobody else re-runs the filter, so the auditor does, whatever
    the entry says."""
    import msgspec

    from dvsecure.log import entry as E
    from dvsecure.log.merkle import MerkleTree, leaf_hash
    from dvsecure.log.note import Checkpoint, sign_checkpoint
    from dvsecure.log.writer import CHECKPOINTS, ENTRIES, PREVIOUS, checkpoint_name

    log, results = write_log(tmp_path, victim="a", on={1})
    lines = (log / ENTRIES).read_bytes().split(b"\n")[:-1]
    lines = [E.encode(msgspec.structs.replace(E.decode(x), backend="mpc")) if isinstance(E.decode(x), E.Query)
             else x for x in lines]
    (log / ENTRIES).write_bytes(b"".join(x + b"\n" for x in lines))
    for p in (log / CHECKPOINTS).iterdir():
        p.unlink()
    op = operator_signer(tmp_path / "state", POLICY)
    root = MerkleTree([leaf_hash(x) for x in lines]).root()
    cp = Checkpoint(E.decode(lines[0]).origin, len(lines), root, (f"{PREVIOUS}0",))
    (log / CHECKPOINTS / checkpoint_name(len(lines))).write_bytes(sign_checkpoint(cp, [op]))
    report = audit(log, allow_nonprivate=True)
    assert [f.seq for f in filter_findings(report)] == [results[1].seq], [str(f) for f in report.findings]
