"""Issue 10, "Links in a log directory": a log directory or receipt holds regular
files only, each under a size cap, and every reader refuses anything else by name.

The attack as reported: `receipt export` followed a link in keys/ and copied what
it pointed to into the receipt, and `audit` read `entries.jsonl -> /dev/zero`
until a MemoryError (a FIFO would have hung it). Audits that could hang or eat
memory run in a subprocess with a timeout and an address-space limit, so the old
behaviour fails the test instead of blocking it.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dvsecure.audit.check import audit
from dvsecure.audit.receipt import export_receipt
from dvsecure.cli import main
from dvsecure.errors import LogError, ParameterError
from dvsecure.log.files import LARGE_FILE_ENV, NOTE_FILE, PublishedFileError, read_published, scan_published
from dvsecure.log.writer import CHECKPOINTS, ENTRIES, KEYS, POLICY

SECRET = b"not part of any log: must never reach a receipt\n"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    assert main(["demo", "--backend", "plaintext", "--out", str(root / "log"), "--queries", "45",
                 "--noise-seed", "3", "--json"]) == 0
    assert main(["receipt", "export", str(root / "log"), "--source", "inst-2", "--out", str(root / "receipt")]) == 0
    return root


@pytest.fixture
def log(base, tmp_path) -> Path:
    shutil.copytree(base / "log", tmp_path / "log")
    return tmp_path / "log"


@pytest.fixture
def receipt(base, tmp_path) -> Path:
    shutil.copytree(base / "receipt", tmp_path / "receipt")
    return tmp_path / "receipt"


@pytest.fixture
def outside(tmp_path) -> Path:
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret").write_bytes(SECRET)
    return d


def file_findings(report) -> dict[str, str]:
    return {f.file: f.message for f in report.findings if f.check == "file"}


def key_file(d: Path) -> Path:
    (k,) = sorted((d / KEYS).iterdir())
    return k


def replace_with_link(path: Path, target: Path) -> None:
    """`path` becomes a link to `target`, which holds exactly the bytes `path` held:
    the content is right, only the kind of file is wrong."""
    if path.is_dir():
        shutil.move(path, target)
    else:
        target.write_bytes(path.read_bytes())
        path.unlink()
    path.symlink_to(target)


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The `dvsecure` command in a child; a hang raises TimeoutExpired, a runaway
    read hits the address-space limit."""
    return subprocess.run([sys.executable, "-m", "dvsecure.cli", *args], capture_output=True, text=True,
                          timeout=120, preexec_fn=_limit_memory, env={**os.environ, **(env or {})})


def audit_json(path: Path, *extra: str, env: dict | None = None) -> dict:
    done = run_cli("audit", str(path), "--allow-nonprivate", "--json", *extra, env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return json.loads(done.stdout)


def named(report: dict) -> dict[str, str]:
    return {f["file"]: f["message"] for f in report["findings"] if f["check"] == "file"}


# ---- the baseline ---------------------------------------------------------------------------

def test_a_plain_log_and_its_receipt_audit_clean(log, receipt):
    assert audit(log, allow_nonprivate=True).ok
    assert audit(receipt, allow_nonprivate=True).ok
    listing = scan_published(log)
    assert not listing.refused and set(listing.dirs) == {CHECKPOINTS, KEYS}


# ---- the attack as reported ---------------------------------------------------------------------

def test_receipt_export_refuses_a_linked_key_file_and_copies_nothing(log, outside, tmp_path, capsys):
    (log / KEYS / "evil.vkey").symlink_to(outside / "secret")
    out = tmp_path / "r"
    with pytest.raises(PublishedFileError) as e:
        export_receipt(log, "inst-2", out)
    assert e.value.path == f"{KEYS}/evil.vkey" and "symbolic link" in str(e.value)
    assert str(log / KEYS / "evil.vkey") in str(e.value)
    assert main(["receipt", "export", str(log), "--source", "inst-2", "--out", str(out)]) == 2
    assert f"{KEYS}/evil.vkey: a symbolic link" in capsys.readouterr().err
    copied = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert not any(SECRET in p.read_bytes() for p in copied)
    assert file_findings(audit(log, allow_nonprivate=True))[f"{KEYS}/evil.vkey"].startswith("a symbolic link")


def test_a_linked_key_file_with_the_right_bytes_is_still_refused(log, outside, tmp_path):
    k = key_file(log)
    replace_with_link(k, outside / k.name)
    report = audit(log, allow_nonprivate=True)
    rel = f"{KEYS}/{k.name}"
    assert "symbolic link" in file_findings(report)[rel]
    with pytest.raises(LogError, match="symbolic link"):
        export_receipt(log, "inst-2", tmp_path / "r")


def test_entries_linked_to_dev_zero_is_a_finding_not_a_memory_error(log):
    (log / ENTRIES).unlink()
    (log / ENTRIES).symlink_to("/dev/zero")
    report = audit_json(log)
    assert named(report)[ENTRIES].startswith("a symbolic link, not a regular file")
    done = run_cli("receipt", "export", str(log), "--source", "inst-2", "--out", str(log.parent / "r"))
    assert done.returncode == 2 and f"{ENTRIES}: a symbolic link" in done.stderr, done.stderr


def test_a_fifo_entries_file_is_refused_without_hanging(log):
    (log / ENTRIES).unlink()
    os.mkfifo(log / ENTRIES)
    report = audit_json(log)
    assert named(report)[ENTRIES].startswith("a FIFO, not a regular file")
    done = run_cli("receipt", "export", str(log), "--source", "inst-2", "--out", str(log.parent / "r"))
    assert done.returncode == 2 and f"{ENTRIES}: a FIFO" in done.stderr, done.stderr
    assert not (log.parent / "r").exists()


# ---- links to directories, the policy, devices, sockets -----------------------------------------

def test_a_linked_checkpoints_directory_is_not_followed(log, outside, tmp_path):
    replace_with_link(log / CHECKPOINTS, outside / CHECKPOINTS)
    report = audit(log, allow_nonprivate=True)
    assert "symbolic link" in file_findings(report)[CHECKPOINTS]
    assert report.checkpoints == 0                  # nothing read through the link
    with pytest.raises(LogError, match=f"{CHECKPOINTS}: a symbolic link"):
        export_receipt(log, "inst-2", tmp_path / "r")
    # A reader naming a file below the link is refused at the link, not at the file.
    note = sorted((outside / CHECKPOINTS).iterdir())[0].name
    with pytest.raises(PublishedFileError) as e:
        read_published(log, f"{CHECKPOINTS}/{note}", NOTE_FILE)
    assert e.value.path == CHECKPOINTS


def test_a_linked_keys_directory_is_not_followed(log, outside):
    replace_with_link(log / KEYS, outside / KEYS)
    found = file_findings(audit(log, allow_nonprivate=True))
    assert "symbolic link" in found[KEYS]
    assert any(f.startswith(f"{KEYS}/") and "missing key file" in m for f, m in found.items())


def test_a_linked_policy_is_refused(log, outside, tmp_path):
    replace_with_link(log / POLICY, outside / POLICY)
    report = audit(log, allow_nonprivate=True)
    assert "symbolic link" in file_findings(report)[POLICY]
    assert not report.sources                       # the policy was not read through the link
    with pytest.raises(LogError, match=f"{POLICY}: a symbolic link"):
        export_receipt(log, "inst-2", tmp_path / "r")


def test_a_device_file_is_refused(log, tmp_path):
    k = key_file(log)
    k.unlink()
    try:
        os.mknod(k, 0o600 | 0o020000, os.makedev(1, 5))     # a character device: /dev/zero's numbers
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")
    report = audit_json(log)
    assert named(report)[f"{KEYS}/{k.name}"].startswith("a character device")
    with pytest.raises(LogError, match="a character device"):
        export_receipt(log, "inst-2", tmp_path / "r")


def test_a_socket_is_refused(log, monkeypatch):
    monkeypatch.chdir(log / KEYS)                  # a relative bind: socket paths are short
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind("listening.vkey")
        assert file_findings(audit(log, allow_nonprivate=True))[f"{KEYS}/listening.vkey"].startswith("a socket")
    finally:
        s.close()


# ---- sizes -------------------------------------------------------------------------------------

def test_an_oversized_checkpoint_is_refused_without_reading_it(log):
    note = sorted((log / CHECKPOINTS).iterdir())[-1]
    with open(note, "r+b") as f:
        f.truncate(NOTE_FILE.cap + 1)               # sparse: cheap to make, costly to read whole
    report = audit(log, allow_nonprivate=True)
    message = file_findings(report)[f"{CHECKPOINTS}/{note.name}"]
    assert "over the" in message and "checkpoint note" in message


def test_an_oversized_key_file_is_refused(log):
    k = key_file(log)
    k.write_bytes(k.read_bytes() + b" " * (1 << 20))
    assert "cap for a verifier key file" in file_findings(audit(log, allow_nonprivate=True))[f"{KEYS}/{k.name}"]


def test_the_entries_cap_is_configurable_and_named(log, tmp_path, monkeypatch):
    monkeypatch.setenv(LARGE_FILE_ENV, "1000")
    message = file_findings(audit(log, allow_nonprivate=True))[ENTRIES]
    assert "cap for an entries file" in message and LARGE_FILE_ENV in message
    with pytest.raises(LogError, match=LARGE_FILE_ENV):
        export_receipt(log, "inst-2", tmp_path / "r")
    monkeypatch.setenv(LARGE_FILE_ENV, "lots")
    with pytest.raises(ParameterError, match=LARGE_FILE_ENV):
        audit(log, allow_nonprivate=True)
    monkeypatch.setenv(LARGE_FILE_ENV, str(100 << 20))
    assert audit(log, allow_nonprivate=True).ok


# ---- receipts get the same treatment -----------------------------------------------------------

def test_a_receipt_with_a_linked_receipt_json_is_refused(receipt, outside):
    replace_with_link(receipt / "receipt.json", outside / "receipt.json")
    report = audit(receipt, allow_nonprivate=True)
    assert report.kind == "receipt" and "symbolic link" in file_findings(report)["receipt.json"]


def test_a_receipt_with_a_fifo_or_linked_entries_is_refused(receipt):
    (receipt / ENTRIES).unlink()
    os.mkfifo(receipt / ENTRIES)
    assert named(audit_json(receipt))[ENTRIES].startswith("a FIFO")
    (receipt / ENTRIES).unlink()
    (receipt / ENTRIES).symlink_to("/dev/zero")
    assert named(audit_json(receipt))[ENTRIES].startswith("a symbolic link")


def test_a_receipt_with_linked_keys_or_checkpoints_is_refused(receipt, outside):
    replace_with_link(receipt / KEYS, outside / KEYS)
    replace_with_link(receipt / CHECKPOINTS, outside / CHECKPOINTS)
    found = file_findings(audit(receipt, allow_nonprivate=True))
    assert "symbolic link" in found[KEYS] and "symbolic link" in found[CHECKPOINTS]


def test_an_oversized_receipt_json_is_refused(receipt):
    report = audit_json(receipt, env={LARGE_FILE_ENV: "100"})
    assert "cap for a receipt.json" in named(report)["receipt.json"]


# ---- the auditor's own files: witness and --policy ---------------------------------------------

def test_a_fifo_or_linked_witness_is_an_error_not_a_hang(log, tmp_path):
    fifo = tmp_path / "witness.json"
    os.mkfifo(fifo)
    done = run_cli("audit", str(log), "--allow-nonprivate", "--witness", str(fifo))
    assert done.returncode == 2 and f"witness state {fifo}: a FIFO" in done.stderr, done.stderr
    fifo.unlink()
    real = tmp_path / "real.json"
    real.write_text('{"version": 1, "logs": {}}\n')
    fifo.symlink_to(real)
    with pytest.raises(ParameterError, match="a symbolic link"):
        audit(log, allow_nonprivate=True, witness=fifo)


def test_saving_the_witness_does_not_write_through_a_planted_link(log, outside, tmp_path):
    witness = tmp_path / "w.json"
    (tmp_path / "w.json.tmp").symlink_to(outside / "secret")
    with pytest.raises(ParameterError, match="cannot write witness state"):
        audit(log, allow_nonprivate=True, witness=witness)
    assert (outside / "secret").read_bytes() == SECRET


def test_a_policy_argument_may_be_a_link_but_not_a_fifo(log, tmp_path):
    mine = tmp_path / "my-policy.toml"
    mine.symlink_to(log / POLICY)                   # the user's own link: followed
    assert audit(log, allow_nonprivate=True, policy=mine).ok
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    done = run_cli("audit", str(log), "--allow-nonprivate", "--policy", str(fifo))
    assert done.returncode == 2 and f"{fifo}: a FIFO" in done.stderr, done.stderr


# ---- the other readers: the source's checks, the mirror, the writer -----------------------------

def test_the_source_side_readers_refuse_a_linked_entries_file(log, outside):
    from dvsecure.tee.client import check_commitments, fetch_log
    from dvsecure.demo.consortium import default_policy

    replace_with_link(log / ENTRIES, outside / ENTRIES)
    with pytest.raises(PublishedFileError, match=f"{ENTRIES}: a symbolic link"):
        check_commitments(log, "inst-2", {})
    # The mirror refuses a destination with a link in it before asking the enclave for anything.
    with pytest.raises(PublishedFileError, match=f"{ENTRIES}: a symbolic link"):
        fetch_log(None, default_policy(), log)
    assert (outside / ENTRIES).read_bytes() == (log / ENTRIES).read_bytes()


def test_the_writer_refuses_to_reopen_a_directory_with_a_linked_policy(base, tmp_path, outside, capsys):
    shutil.copytree(base / "log", tmp_path / "log")
    shutil.copytree(base / "log.state", tmp_path / "log.state")
    replace_with_link(tmp_path / "log" / POLICY, outside / POLICY)
    assert main(["demo", "--backend", "plaintext", "--out", str(tmp_path / "log"), "--queries", "45",
                 "--noise-seed", "3"]) == 2
    assert f"{POLICY}: a symbolic link" in capsys.readouterr().err


def test_a_link_swapped_in_between_the_check_and_the_open_is_refused(log, monkeypatch):
    """The stat says regular file; the open (O_NOFOLLOW) still refuses the link put there after it."""
    import dvsecure.log.files as files

    real_stat = os.stat

    def stat_then_swap(name, *a, **kw):
        st = real_stat(name, *a, **kw)
        if name == ENTRIES:
            (log / ENTRIES).unlink()
            (log / ENTRIES).symlink_to("/dev/zero")
        return st

    monkeypatch.setattr(files.os, "stat", stat_then_swap)
    with pytest.raises(PublishedFileError, match="replaced while being opened") as e:
        read_published(log, ENTRIES, files.ENTRIES_FILE)
    assert e.value.path == ENTRIES


@pytest.mark.parametrize("flag", ["--trust-key", "--trust-sim-root", "--enclave-principals"])
def test_a_fifo_given_as_a_file_argument_is_refused_not_waited_on(log, tmp_path, flag):
    """Files the user names on the command line are read capped too: a FIFO there
    would otherwise hang the audit."""
    fifo = tmp_path / "arg.fifo"
    os.mkfifo(fifo)
    extra = [flag, str(fifo)] + (["--enclave-pcr0", "ab" * 48] if flag != "--trust-key" else [])
    done = run_cli("audit", str(log), "--allow-nonprivate", *extra)
    assert done.returncode == 2, done.stdout + done.stderr
    assert str(fifo) in done.stderr and "Traceback" not in done.stderr
