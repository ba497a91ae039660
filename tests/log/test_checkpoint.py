"""C2SP signed notes and tlog checkpoints (dvsecure.log.note).

Published vectors reproduced here, with their sources:

* golang.org/x/mod/sumdb/note, note_test.go (TestSign, TestOpen, TestNewVerifier,
  TestNewSigner) and the package doc example in note.go: the PeterNeumann test
  key pair, the exact signed note it produces, the EnochRoot verifier key and
  signature, and the key-mangling and malformed-message cases.
* github.com/transparency-dev/formats, log/note_test.go: four published signer
  / verifier key pairs (Log, Known, KnownAgain, Unknown); a real sum.golang.org
  checkpoint (tree size 6476701) with the sum.golang.org verifier key; and the
  "monkeys", "bananas" and "witness" cosignatures over that same checkpoint.
* golang.org/x/mod/sumdb/tlog, note_test.go (TestFormatTree): the golden tree
  text for size 123456789012 and root RecordHash("hello world").
* github.com/transparency-dev/formats, log/checkpoint_test.go (TestMarshal): the
  "Log\\n123\\nYmFuYW5hcw==\\n" text, which a strict c2sp checkpoint parser must
  reject (its "root hash" is 7 bytes).
* c2sp.org/signed-note and c2sp.org/tlog-checkpoint (C2SP/C2SP signed-note.md,
  tlog-checkpoint.md): the two example notes at the top of each spec. Their keys
  are not published, so they are checked for syntax only, except that the
  tlog-checkpoint example's signature is a genuine sum.golang.org signature
  (see test_tlog_checkpoint_spec_example).
"""
from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dvsecure.errors import NoteError
from dvsecure.log.note import (
    MAX_NOTE_BYTES,
    MAX_SIGNATURES,
    Checkpoint,
    OpenedNote,
    Signer,
    Verifier,
    generate_signer,
    key_id,
    open_note,
    parse_note,
    sign_checkpoint,
    sign_note,
    verifier_key_string,
    verify_checkpoint,
)

EM = "\u2014"

# ----------------------------------------------------------------------------- published vectors

# golang.org/x/mod/sumdb/note note_test.go (TestSign / TestOpen) and note.go doc.
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_TEXT = ("If you think cryptography is the answer to your problem,\n"
           "then you don't know what your problem is.\n")
PETER_SIG = (f"{EM} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSN"
             "XgKvqfqdngotpRZb6KE6RyyBwJnAM=\n")
ENOCH_SIG = (f"{EM} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01"
             "oOTGwnWLox33WWd1RvMc+QQ=\n")
GO_SIGNED = GO_TEXT + "\n" + PETER_SIG          # TestSign's `want`

# github.com/transparency-dev/formats log/note_test.go
TD_KEYS = [
    ("PRIVATE+KEY+Log+2271c621+AdEIq9FLRQni54Wg68T96VJO+iayOaulswav2DUMKgvQ",
     "Log+2271c621+AemuH5ooBpEPcr+W8onrjA1NfuzBVHdezakU81Ekarvs"),
    ("PRIVATE+KEY+Known+451c786d+AQPRoE2+Z+Ed1HaHBA9F/FfracvcZ2rDU39kCecMEoci",
     "Known+451c786d+AXAQ0T7lbwuY4ABJ9/MYY9bWV3hmSyOGVt2x42NkmdUH"),
    ("PRIVATE+KEY+KnownAgain+4893b26c+ARhZda/l25zjGZswYLDZsLNRzNpmv5wYTN9IoTr1OJ2+",
     "KnownAgain+4893b26c+AQ+LR7BFF/F/dkpIBjBpSvT0crkteizuUkavAoGeaYMj"),
    ("PRIVATE+KEY+Unknown+fdbb2e08+Aav2knTC6orbhXX8pMWuNiWgO+Wwk2DB+h1eU2Q1W1nU",
     "Unknown+fdbb2e08+AWgRIYZ+8x1Vl+1Q+sR8zciNHiYI1SdlBjNw+RV0rots"),
]
SUMDB_VKEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
SUMDB_TEXT = ("go.sum database tree\n"
              "6476701\n"
              "mb8QLQIs0Z0yP5Cstq6guj87oXWeC9gEM8oVikmm9Wk=\n")
SUMDB_SIG = (f"{EM} sum.golang.org Az3grsLX85Gz+s1SiTbgkuqxgItqFq7gsMUEyVnrsa9LM7Us9S+1xbFIGu95949"
             "rj4nPRYfvimWEPWL+o3GeoWwOoAw=\n")
SUMDB_NOTE = (SUMDB_TEXT + "\n" + SUMDB_SIG).encode()
TD_COSIGNERS = [  # BenchmarkParse "many verifiers": (verifier key, signature line)
    ("monkeys+db4d9f7e+AULaJMvTtDLHPUcUrjdDad9vDlh/PTfC2VV60JUtCfWT",
     f"{EM} monkeys 202ffh9ve46Mqbhuyb4wnC2Pwdan5EsXQym/tF1ggXJqhjGosU4T5intH4iKMRgDLxrnXuIjRaU2NbvAnaepM6Y+8ww=\n"),
    ("bananas+cf639f13+AaPjhFnPCQnid/Ql32KWhmh+uk72FVRfK+2DLmO3BI3M",
     f"{EM} bananas z2OfE+2bbsBZ7NLgfuslc0v7NFW2QyexJ7fhePpoL2N/P7N/COd5S+JNHbQEAlYzz2C5sg0E+x/MggS1mDR6t3/9rQw=\n"),
    ("witness+f13a86db+AdYV1Ztajd9BvyjP2HgpwrqYL6TjOwIjGMOq8Bu42xbN",
     f"{EM} witness 8TqG25yWGFLdT7WPf/WoyeG3LwqtkXP+8S3yykOVm6EMh4hPgCke6eSVPU4BdtXNMPJBXKF+UpDbGgCdcpR8SVSoqAU=\n"),
]

# c2sp.org/signed-note (C2SP/C2SP signed-note.md), the example at the top.
C2SP_NOTE_EXAMPLE = (
    "Ognuno sta solo sul cuor della terra\n"
    "trafitto da un raggio di sole:\n"
    "\n"
    "ed \u00e8 subito sera.\n"
    "\n"
    f"{EM} quasimodo.example/salvatore NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKONrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n"
).encode()
# c2sp.org/tlog-checkpoint (C2SP/C2SP tlog-checkpoint.md), the example at the top.
C2SP_CHECKPOINT_EXAMPLE = (
    "example.com/behind-the-sofa\n"
    "20852163\n"
    "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    "\n"
    f"{EM} example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
).encode()


def test_go_peter_key_pair():
    s = Signer.from_key_string(PETER_SKEY)
    v = Verifier.from_key_string(PETER_VKEY)
    assert s.name == v.name == "PeterNeumann"
    assert s.key_id == v.key_id == 0xC74F20A3
    assert s.public_key == v.public_key
    assert s.verifier_key_string == PETER_VKEY
    assert v.key_string == PETER_VKEY
    assert s.key_string == PETER_SKEY


def test_go_sign_reproduced_byte_for_byte():
    """golang.org/x/mod/sumdb/note TestSign: Ed25519 is deterministic, so the
    published signature must come out exactly."""
    s = Signer.from_key_string(PETER_SKEY)
    assert sign_note(GO_TEXT.encode(), [s]) == GO_SIGNED.encode()
    assert sign_note(GO_TEXT, [s]) == GO_SIGNED.encode()       # str accepted too


def test_go_open_vectors():
    """golang.org/x/mod/sumdb/note TestOpen."""
    peter = Verifier.from_key_string(PETER_VKEY)
    enoch = Verifier.from_key_string(ENOCH_VKEY)
    assert enoch.key_id == 0xAF0CFE78
    msg = (GO_TEXT + "\n" + PETER_SIG + ENOCH_SIG).encode()

    n = open_note(msg, [peter])
    assert n == OpenedNote(GO_TEXT.encode(), ("PeterNeumann",), (("EnochRoot", 0xAF0CFE78),))
    n = open_note(msg, [peter, enoch])
    assert n.verified == ("PeterNeumann", "EnochRoot") and n.unknown == ()
    n = open_note(msg, [enoch], required=["EnochRoot"])
    assert n.verified == ("EnochRoot",) and n.unknown == (("PeterNeumann", 0xC74F20A3),)
    with pytest.raises(NoteError, match="no verifiable signature"):
        open_note(msg, [])

    # "Invalid signature": four base64 characters spliced into the signature.
    bad = GO_TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(NoteError, match=r"invalid signature for key PeterNeumann\+c74f20a3"):
        open_note(bad.encode(), [peter])

    # "Invalid encoded message syntax" (all are "malformed note" in Go).
    bad_msgs = [
        GO_TEXT,
        GO_TEXT + "\n",
        GO_TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + GO_TEXT + "\n" + PETER_SIG,
        GO_TEXT + "\n" + f"{EM} Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=",
        GO_TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
    ]
    for m in bad_msgs:
        with pytest.raises(NoteError):
            open_note(m.encode(), [peter])
    with pytest.raises(NoteError, match="not valid UTF-8"):
        open_note(b"\xff" + msg, [peter])

    # Too many signatures (Go: >100 is malformed).
    with pytest.raises(NoteError, match="too many signatures"):
        open_note((GO_TEXT + "\n" + PETER_SIG * 101).encode(), [peter])


def test_duplicate_signatures_rejected_unlike_go():
    """Go's Open silently drops repeated signatures; this implementation is
    stricter and rejects any repeated (name, key id), known or unknown."""
    peter = Verifier.from_key_string(PETER_VKEY)
    for sigs in (PETER_SIG * 2, PETER_SIG + ENOCH_SIG * 2, ENOCH_SIG + PETER_SIG + ENOCH_SIG):
        with pytest.raises(NoteError, match="duplicate signature"):
            open_note((GO_TEXT + "\n" + sigs).encode(), [peter])


def _manglings(key: str):
    b = key.encode()
    for i in range(len(b) + 1):
        for j in range(i + 1, len(b) + 1):
            if i != 0 or j != len(b):
                yield b[i:j]
    for i in range(len(b)):
        yield b[:i] + bytes([(b[i] + 1) % 256]) + b[i + 1:]


def test_go_new_verifier_manglings():
    """golang.org/x/mod/sumdb/note TestNewVerifier: every proper substring and
    every single-byte increment of the key string is rejected."""
    for m in _manglings(PETER_VKEY):
        with pytest.raises(NoteError):
            Verifier.from_key_string(m.decode("latin-1"))
    # Wrong key length and unknown algorithm, each with a matching key id.
    with pytest.raises(NoteError, match="base64|33"):
        Verifier.from_key_string(
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==")
    with pytest.raises(NoteError, match="unsupported signature algorithm 0x65"):
        Verifier.from_key_string("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")


def test_go_new_signer_manglings():
    """golang.org/x/mod/sumdb/note TestNewSigner."""
    for m in _manglings(PETER_SKEY):
        with pytest.raises(NoteError):
            Signer.from_key_string(m.decode("latin-1"))


@pytest.mark.parametrize("skey,vkey", TD_KEYS)
def test_transparency_dev_key_pairs(skey, vkey):
    s = Signer.from_key_string(skey)
    assert s.verifier_key_string == vkey
    assert s.key_string == skey
    assert Verifier.from_key_string(vkey) == s.verifier()


def test_sumdb_checkpoint_published():
    """transparency-dev/formats log/note_test.go TestSumDBNoteParsing: a real
    sum.golang.org checkpoint and the sum.golang.org verifier key."""
    v = Verifier.from_key_string(SUMDB_VKEY)
    assert v.key_id == 0x033DE0AE
    cp = verify_checkpoint(SUMDB_NOTE, [v], ["sum.golang.org"], "go.sum database tree")
    assert cp.origin == "go.sum database tree" and cp.size == 6476701
    assert cp.root_hash == base64.b64decode("mb8QLQIs0Z0yP5Cstq6guj87oXWeC9gEM8oVikmm9Wk=")
    assert cp.extensions == ()
    assert cp.to_text() == SUMDB_TEXT.encode()
    with pytest.raises(NoteError, match="not the expected"):
        verify_checkpoint(SUMDB_NOTE, [v], ["sum.golang.org"], "Go rocks but I might have the wrong ID")


def test_sumdb_checkpoint_with_published_cosignatures():
    """transparency-dev/formats log/note_test.go BenchmarkParse ("many
    verifiers"): monkeys, bananas and witness signatures over the same text."""
    log = Verifier.from_key_string(SUMDB_VKEY)
    cos = [Verifier.from_key_string(vk) for vk, _ in TD_COSIGNERS]
    note = SUMDB_NOTE + "".join(line for _, line in TD_COSIGNERS).encode()
    cp = verify_checkpoint(note, [log, *cos], ["sum.golang.org", "monkeys", "bananas", "witness"],
                           "go.sum database tree")
    assert cp.size == 6476701
    n = open_note(note, [log, *cos])
    assert n.verified == ("sum.golang.org", "monkeys", "bananas", "witness")
    # Only the log key known: the cosignatures are reported, not verified.
    n = open_note(note, [log])
    assert n.unknown == (("monkeys", 0xDB4D9F7E), ("bananas", 0xCF639F13), ("witness", 0xF13A86DB))
    with pytest.raises(NoteError, match="required signer.*witness"):
        verify_checkpoint(note, [log, *cos[:2]], ["sum.golang.org", "witness"])
    # BenchmarkParse "many sigs, 1 verifier" reuses witness's signature under the
    # names random1/random2: unknown keys, ignored.
    w = TD_COSIGNERS[2][1]
    extra = w.replace("witness", "random1") + w.replace("witness", "random2")
    n = open_note(note + extra.encode(), [log, cos[0]])
    assert n.verified == ("sum.golang.org", "monkeys")
    assert [u[0] for u in n.unknown] == ["bananas", "witness", "random1", "random2"]


def test_tlog_format_tree_golden():
    """golang.org/x/mod/sumdb/tlog TestFormatTree: RecordHash is the RFC 6962
    leaf hash SHA-256(0x00 || data)."""
    root = hashlib.sha256(b"\x00hello world").digest()
    golden = b"go.sum database tree\n123456789012\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n"
    cp = Checkpoint("go.sum database tree", 123456789012, root)
    assert cp.to_text() == golden
    assert Checkpoint.parse(golden) == cp
    # ParseTree's bad trees are rejected too.
    for bad in (b"go.sum database tree\n0xabcdef\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n",
                b"go.sum database tree\n123456789012\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBTOOBIG=\n"):
        with pytest.raises(NoteError):
            Checkpoint.parse(bad)


def test_transparency_dev_marshal_vector_is_not_a_c2sp_checkpoint():
    """transparency-dev/formats log/checkpoint_test.go TestMarshal: a 7-byte
    "hash" is accepted there, but a tlog-checkpoint root is 32 bytes."""
    with pytest.raises(NoteError, match="root hash is 7 bytes, want 32"):
        Checkpoint.parse(b"Log\n123\nYmFuYW5hcw==\n")
    with pytest.raises(NoteError, match="root hash is 7 bytes"):
        Checkpoint("Log", 123, b"bananas")


def test_signed_note_spec_example_syntax():
    """c2sp.org/signed-note example: the text holds an empty line and the
    separator is the last one; the key is not published, so no verification."""
    text, sigs = parse_note(C2SP_NOTE_EXAMPLE)
    assert text == ("Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n"
                    "\ned \u00e8 subito sera.\n").encode()
    assert len(sigs) == 1 and sigs[0].name == "quasimodo.example/salvatore"
    assert len(sigs[0].signature) == 64
    assert sigs[0].key_id == int.from_bytes(base64.b64decode("NnugSzTj")[:4], "big")
    with pytest.raises(NoteError, match="no verifiable signature"):
        open_note(C2SP_NOTE_EXAMPLE, [Verifier.from_key_string(PETER_VKEY)])


def test_tlog_checkpoint_spec_example():
    """c2sp.org/tlog-checkpoint example. Its key is not published, but its
    signature (key id 033de0ae) verifies under the published sum.golang.org key
    over the same checkpoint with origin "go.sum database tree": the example is a
    real sum.golang.org checkpoint with the origin line renamed. Over the spec's
    literal text, the signature does not verify — signatures bind exact bytes."""
    text, sigs = parse_note(C2SP_CHECKPOINT_EXAMPLE)
    cp = Checkpoint.parse(text)
    assert cp.origin == "example.com/behind-the-sofa" and cp.size == 20852163
    assert cp.to_text() == text
    assert sigs[0].name == "example.com/behind-the-sofa" and sigs[0].key_id == 0x033DE0AE
    sumdb = Verifier.from_key_string(SUMDB_VKEY)
    assert not sumdb.verify(text, sigs[0].signature)
    renamed = Checkpoint("go.sum database tree", cp.size, cp.root_hash)
    assert sumdb.verify(renamed.to_text(), sigs[0].signature)
    relabelled = C2SP_CHECKPOINT_EXAMPLE.replace(b"example.com/behind-the-sofa", b"go.sum database tree", 1)
    relabelled = relabelled.replace(f"{EM} example.com/behind-the-sofa".encode(), f"{EM} sum.golang.org".encode())
    got = verify_checkpoint(relabelled, [sumdb], ["sum.golang.org"], "go.sum database tree")
    assert got == renamed
    with pytest.raises(NoteError, match="no verifiable signature"):
        verify_checkpoint(C2SP_CHECKPOINT_EXAMPLE, [sumdb], ["sum.golang.org"])


# ----------------------------------------------------------------------------- independent cross-check


def _parse_vkey_independently(vkey: str) -> tuple[str, int, bytes]:
    name, hex_id, b64 = vkey.split("+", 2)
    raw = base64.b64decode(b64)
    assert raw[0] == 1 and len(raw) == 33
    assert int(hex_id, 16) == int.from_bytes(hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4], "big")
    return name, int(hex_id, 16), raw[1:]


def test_cross_check_with_cryptography_package():
    skey, vkey = generate_signer("example.com/log")
    name, kid, pub = _parse_vkey_independently(vkey)
    seed = base64.b64decode(skey.split("+", 4)[4])[1:]
    priv = Ed25519PrivateKey.from_private_bytes(seed)
    assert priv.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) == pub

    cp = Checkpoint("example.com/log", 7, hashlib.sha256(b"x").digest(), ("ext one",))
    note = sign_checkpoint(cp, [Signer.from_key_string(skey)])
    text, _, block = note.partition(b"\n\n")
    assert text + b"\n" == cp.to_text()
    line = block.decode()
    assert line.startswith(f"{EM} example.com/log ") and line.endswith("\n")
    blob = base64.b64decode(line.split(" ")[2])
    assert int.from_bytes(blob[:4], "big") == kid
    # The cryptography package verifies our signature, and its own signature
    # from the same seed is byte-identical (Ed25519 is deterministic).
    Ed25519PublicKey.from_public_bytes(pub).verify(blob[4:], cp.to_text())
    assert priv.sign(cp.to_text()) == blob[4:]
    with pytest.raises(InvalidSignature):
        Ed25519PublicKey.from_public_bytes(pub).verify(blob[4:], cp.to_text() + b"x")
    # And the Go published signature verifies under cryptography too.
    _, _, peter_pub = _parse_vkey_independently(PETER_VKEY)
    peter_blob = base64.b64decode(PETER_SIG.split(" ")[2])
    Ed25519PublicKey.from_public_bytes(peter_pub).verify(peter_blob[4:], GO_TEXT.encode())
    # A signature made by cryptography verifies under our Verifier.
    msg = b"hello\n"
    assert Verifier.from_key_string(vkey).verify(msg, priv.sign(msg))
    assert not Verifier.from_key_string(vkey).verify(msg + b"!", priv.sign(msg))


def test_key_id_definition():
    name, kid, pub = _parse_vkey_independently(PETER_VKEY)
    assert key_id(name, pub) == kid == 0xC74F20A3
    assert verifier_key_string(name, pub) == PETER_VKEY


# ----------------------------------------------------------------------------- round trips


@pytest.fixture(scope="module")
def keys():
    out = {}
    for name in ("example.com/log", "witness.example/w1", "witness.example/w2", "stranger.example"):
        skey, vkey = generate_signer(name)
        out[name] = (Signer.from_key_string(skey), Verifier.from_key_string(vkey))
    return out


def test_generate_signer_round_trip(keys):
    s, v = keys["example.com/log"]
    assert s.key_id == v.key_id and s.public_key == v.public_key and s.name == v.name
    assert Signer.from_key_string(s.key_string).key_string == s.key_string
    assert Verifier.from_key_string(s.verifier_key_string) == v
    sig = s.sign(b"abc")
    assert len(sig) == 64 and v.verify(b"abc", sig)
    assert not v.verify(b"abd", sig) and not v.verify(b"abc", sig[:-1]) and not v.verify(b"abc", b"")
    assert "PRIVATE" not in repr(s) and base64.b64encode(bytes(s._sk)).decode() not in repr(s)


def test_checkpoint_round_trip(keys):
    log_s, log_v = keys["example.com/log"]
    w1_s, w1_v = keys["witness.example/w1"]
    cp = Checkpoint("example.com/log", 0, bytes(32))
    assert cp.to_text() == b"example.com/log\n0\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
    for c in (cp, Checkpoint("example.com/log", 2**64 - 1, bytes(range(32)), ("a b", "\u00e9t\u00e9 \u2014 +"))):
        note = sign_checkpoint(c, [log_s, w1_s])
        assert Checkpoint.parse(c.to_text()) == c
        assert verify_checkpoint(note, [log_v, w1_v], ["example.com/log", "witness.example/w1"],
                                 "example.com/log") == c
        opened = open_note(note, [log_v])
        assert opened.text == c.to_text()
        assert opened.unknown == (("witness.example/w1", w1_s.key_id),)
    # Extensions given as a list are stored as a tuple.
    assert Checkpoint("o", 1, bytes(32), ["x"]).extensions == ("x",)


def test_note_text_with_inner_and_trailing_blank_lines(keys):
    s, v = keys["example.com/log"]
    for text in (b"a\n\nb\n", b"a\n\n", b"\n", b"\n\n\n", "\u2014 x y\n\n".encode()):
        note = sign_note(text, [s])
        assert open_note(note, [v]).text == text


# ----------------------------------------------------------------------------- malformed input


@pytest.fixture(scope="module")
def signed(keys):
    log_s, log_v = keys["example.com/log"]
    w1_s, w1_v = keys["witness.example/w1"]
    cp = Checkpoint("example.com/log", 42, hashlib.sha256(b"root").digest())
    return cp, sign_checkpoint(cp, [log_s, w1_s]), [log_v, w1_v]


REQ = ["example.com/log", "witness.example/w1"]


def test_flipped_byte_in_text(signed):
    cp, note, vs = signed
    bad = bytearray(note)
    bad[note.index(b"\n42\n") + 1] ^= 0x01        # "42" -> "52"
    with pytest.raises(NoteError, match=r"invalid signature for key example\.com/log\+"):
        verify_checkpoint(bytes(bad), vs, REQ)


def test_flipped_byte_in_signature(signed):
    cp, note, vs = signed
    text, sigs = parse_note(note)
    # Flip a bit in the raw signature and re-encode canonically.
    blob = bytearray(sigs[1].key_id.to_bytes(4, "big") + sigs[1].signature)
    blob[10] ^= 0x80
    line = f"{EM} witness.example/w1 {base64.b64encode(bytes(blob)).decode()}\n".encode()
    bad = note[: note.rindex(f"{EM} witness".encode())] + line
    with pytest.raises(NoteError, match=r"invalid signature for key witness\.example/w1\+"):
        verify_checkpoint(bad, vs, REQ)


def test_unknown_key_only(signed, keys):
    cp, note, vs = signed
    stranger = keys["stranger.example"][1]
    with pytest.raises(NoteError, match="no verifiable signature from a known key"):
        verify_checkpoint(note, [stranger], ["stranger.example"])
    # Same name, different key (so a different key id): unknown, ignored.
    other_s, _ = generate_signer("example.com/log")
    other_v = Signer.from_key_string(other_s).verifier()
    with pytest.raises(NoteError, match="no verifiable signature"):
        open_note(note, [other_v])


def test_missing_required_signer(signed, keys):
    cp, note, vs = signed
    with pytest.raises(NoteError, match=r"required signer\(s\) witness\.example/w2"):
        verify_checkpoint(note, vs + [keys["witness.example/w2"][1]], REQ + ["witness.example/w2"])
    with pytest.raises(NoteError, match=r"required signer\(s\) witness\.example/w1"):
        verify_checkpoint(note, vs[:1], REQ)     # w1 signed but its key is not trusted
    with pytest.raises(NoteError, match="at least one signer"):
        verify_checkpoint(note, vs, [])
    with pytest.raises(TypeError):
        verify_checkpoint(note, vs, "example.com/log")


def test_wrong_key_id(signed):
    cp, note, vs = signed
    # In a key string.
    vkey = vs[0].key_string
    name, hex_id, rest = vkey.split("+", 2)
    wrong = f"{name}+{(int(hex_id, 16) ^ 1):08x}+{rest}"
    with pytest.raises(NoteError, match="key id .* does not match the key"):
        Verifier.from_key_string(wrong)
    with pytest.raises(NoteError, match="8 lowercase hex"):
        Verifier.from_key_string(f"{name}+{hex_id.upper()}+{rest}" if hex_id.upper() != hex_id
                                 else f"{name}+{hex_id[:7]}+{rest}")
    # In a signature line: a known name with a wrong key id is an unknown key.
    text, sigs = parse_note(note)
    blob = (sigs[0].key_id ^ 1).to_bytes(4, "big") + sigs[0].signature
    bad = text + b"\n" + f"{EM} example.com/log {base64.b64encode(blob).decode()}\n".encode()
    with pytest.raises(NoteError, match="no verifiable signature"):
        open_note(bad, vs)


@pytest.mark.parametrize("name,msg", [
    ("", "empty"),
    ("a b", "whitespace"),
    ("a\u00a0b", "whitespace"),
    ("a\u3000b", "whitespace"),
    ("a\tb", "whitespace"),
    ("a+b", r"contains '\+'"),
    ("a\x01b", "control character"),
])
def test_bad_names(name, msg):
    with pytest.raises(NoteError, match=msg):
        generate_signer(name)
    with pytest.raises(NoteError, match=msg):
        Verifier(name, bytes(32))
    if "+" not in name:
        with pytest.raises(NoteError, match=msg):
            Verifier.from_key_string(f"{name}+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")


def test_bad_name_in_signature_line(signed):
    cp, note, vs = signed
    text, sigs = parse_note(note)
    b64 = base64.b64encode(sigs[0].key_id.to_bytes(4, "big") + sigs[0].signature).decode()
    for name, msg in (("a+b", r"'\+'"), ("a\u00a0b", "whitespace"), ("a\u2003b", "whitespace")):
        bad = text + b"\n" + f"{EM} {name} {b64}\n".encode()
        with pytest.raises(NoteError, match=msg):
            open_note(bad, vs)


def test_bad_base64(signed):
    cp, note, vs = signed
    text, sigs = parse_note(note)
    b64 = base64.b64encode(sigs[0].key_id.to_bytes(4, "big") + sigs[0].signature).decode()
    assert b64.endswith("=")                                  # 68 bytes -> one '='
    variants = {
        "missing padding": b64.rstrip("="),
        "url alphabet '-'": b64[:5] + "-" + b64[6:],
        "url alphabet '_'": b64[:5] + "_" + b64[6:],
        "junk char": b64[:10] + "!" + b64[11:],
        "non-canonical trailing bits": b64[:-2] + chr(ord(b64[-2]) + 1) + "=",
        "extra padding": b64 + "==",
    }
    for label, bad_b64 in variants.items():
        bad = text + b"\n" + f"{EM} example.com/log {bad_b64}\n".encode()
        with pytest.raises(NoteError, match="base64"):
            open_note(bad, vs)
    # In a verifier key (33 bytes: no padding, no spare bits): added padding,
    # a newline, and the URL alphabet.
    with pytest.raises(NoteError, match="not canonical standard base64"):
        Verifier.from_key_string(PETER_VKEY + "=")
    with pytest.raises(NoteError, match="not valid standard base64"):
        Verifier.from_key_string(PETER_VKEY + "\n")
    with pytest.raises(NoteError, match="base64"):
        Verifier.from_key_string(PETER_VKEY.replace("/", "_"))
    with pytest.raises(NoteError, match="base64"):
        Checkpoint.parse(b"o\n1\n" + base64.urlsafe_b64encode(b"\xff" * 32) + b"\n")


def test_signature_wrong_length_for_known_key(signed):
    cp, note, vs = signed
    text, sigs = parse_note(note)
    for blob in (sigs[0].key_id.to_bytes(4, "big") + sigs[0].signature[:-1],
                 sigs[0].key_id.to_bytes(4, "big") + sigs[0].signature + b"\0"):
        bad = text + b"\n" + f"{EM} example.com/log {base64.b64encode(blob).decode()}\n".encode()
        with pytest.raises(NoteError, match="invalid signature.*want 64"):
            open_note(bad, vs)
    short = text + b"\n" + f"{EM} example.com/log {base64.b64encode(b'abcd').decode()}\n".encode()
    with pytest.raises(NoteError, match="too short"):
        open_note(short, vs)


@pytest.mark.parametrize("mutate,msg", [
    (lambda n: n[:-1], "does not end with a newline"),
    (lambda n: n + b"\n", "no signature lines"),
    (lambda n: n.replace(b"\n\n", b"\n"), "no blank line"),
    (lambda n: n + b"trailing junk\n", "does not start with an em dash"),
    (lambda n: n.replace("\u2014 ".encode(), b"- ", 1), "does not start with an em dash"),
    (lambda n: n.replace("\u2014 ".encode(), "\u2013 ".encode(), 1), "does not start with an em dash"),
    (lambda n: n.replace("\u2014 ".encode(), "\u2014  ".encode(), 1), "must be"),
    (lambda n: n.replace(b"log ", b"log\t", 1), "control character"),
    (lambda n: n.replace(b"\n", b"\r\n"), "control character"),
    (lambda n: n[:-1] + b" \n", "must be"),
    (lambda n: n.replace(b"example", b"ex\xc3ample", 1), "not valid UTF-8"),
    (lambda n: n.replace(b"example", b"ex\xed\xa0\x80ample", 1), "not valid UTF-8"),  # surrogate
    (lambda n: n.replace(b"42", b"4\x002", 1), "control character"),
])
def test_malformed_notes(signed, mutate, msg):
    cp, note, vs = signed
    with pytest.raises(NoteError, match=msg):
        verify_checkpoint(mutate(note), vs, REQ)


def test_oversized_note(signed):
    cp, note, vs = signed
    big = b"x" * MAX_NOTE_BYTES + b"\n" + note
    with pytest.raises(NoteError, match="over the .*-byte limit"):
        open_note(big, vs)
    with pytest.raises(NoteError, match="too many signatures"):
        text, _ = parse_note(note)
        open_note(text + b"\n" + (note.split(b"\n\n")[1].split(b"\n")[0] + b"\n") * (MAX_SIGNATURES + 1), vs)


def test_sign_note_rejects_bad_input(keys):
    s, _ = keys["example.com/log"]
    with pytest.raises(NoteError, match="empty"):
        sign_note(b"", [s])
    with pytest.raises(NoteError, match="does not end with a newline"):
        sign_note(b"abc", [s])
    with pytest.raises(NoteError, match="control character"):
        sign_note(b"a\rb\n", [s])
    with pytest.raises(NoteError, match="not valid UTF-8"):
        sign_note(b"\xff\n", [s])
    with pytest.raises(NoteError, match="duplicate signer"):
        sign_note(b"a\n", [s, s])
    with pytest.raises(NoteError, match="at least one signer"):
        sign_note(b"a\n", [])
    with pytest.raises(NoteError, match="over the"):
        sign_note(b"x" * MAX_NOTE_BYTES + b"\n", [s])


def test_ambiguous_verifiers(signed, keys):
    cp, note, vs = signed
    # Two different keys claiming the same (name, key id) cannot both be trusted.
    # (A real collision needs ~2**32 key generations; forge the id on an object.)
    forged = Verifier("example.com/log", keys["stranger.example"][1].public_key)
    forged.key_id = vs[0].key_id
    with pytest.raises(NoteError, match="ambiguous"):
        open_note(note, [vs[0], forged])
    # The same key listed twice is fine.
    assert open_note(note, [vs[0], vs[0]]).verified == ("example.com/log",)


@pytest.mark.parametrize("text,msg", [
    (b"o\n012\n" + base64.b64encode(bytes(32)) + b"\n", "leading zero"),
    (b"o\n00\n" + base64.b64encode(bytes(32)) + b"\n", "leading zero"),
    (b"o\n+12\n" + base64.b64encode(bytes(32)) + b"\n", "not a canonical decimal"),
    (b"o\n-1\n" + base64.b64encode(bytes(32)) + b"\n", "not a canonical decimal"),
    (b"o\n1_000\n" + base64.b64encode(bytes(32)) + b"\n", "not a canonical decimal"),
    (b"o\n 12\n" + base64.b64encode(bytes(32)) + b"\n", "not a canonical decimal"),
    (b"o\n\n" + base64.b64encode(bytes(32)) + b"\n", "not a canonical decimal"),
    ("o\n\u0661\u0662\n".encode() + base64.b64encode(bytes(32)) + b"\n", "not a canonical decimal"),
    ("o\n\uff11\n".encode() + base64.b64encode(bytes(32)) + b"\n", "not a canonical decimal"),
    (b"o\n18446744073709551616\n" + base64.b64encode(bytes(32)) + b"\n", "exceeds"),
    (b"o\n" + b"9" * 30 + b"\n" + base64.b64encode(bytes(32)) + b"\n", "not a canonical decimal"),
    (b"o\n1\n" + base64.b64encode(bytes(31)) + b"\n", "root hash is 31 bytes"),
    (b"o\n1\n" + base64.b64encode(bytes(33)) + b"\n", "root hash is 33 bytes"),
    (b"o\n1\n\n", "root hash is 0 bytes"),
    (b"o\n1\n" + base64.b64encode(bytes(32)).rstrip(b"=") + b"\n", "base64"),
    (b"\n1\n" + base64.b64encode(bytes(32)) + b"\n", "origin is empty"),
    (b"o\n1\n" + base64.b64encode(bytes(32)), "does not end with a newline"),
    (b"o\n1\n", "want at least 3"),
    (b"o\n1\n" + base64.b64encode(bytes(32)) + b"\n\n", "extension line 1 is empty"),
    (b"o\n1\n" + base64.b64encode(bytes(32)) + b"\next\n\n", "extension line 2 is empty"),
    (b"o\r\n1\n" + base64.b64encode(bytes(32)) + b"\n", "control character"),
    (b"\xffo\n1\n" + base64.b64encode(bytes(32)) + b"\n", "not valid UTF-8"),
])
def test_checkpoint_parse_rejects(text, msg):
    with pytest.raises(NoteError, match=msg):
        Checkpoint.parse(text)


def test_checkpoint_constructor_rejects():
    r = bytes(32)
    for args, msg in [
        (("", 1, r), "origin is empty"),
        (("a\nb", 1, r), "newline"),
        (("a", -1, r), "outside"),
        (("a", 2**64, r), "outside"),
        (("a", True, r), "must be an int"),
        (("a", 1.0, r), "must be an int"),
        (("a", 1, bytes(31)), "31 bytes"),
        (("a", 1, "x" * 32), "must be bytes"),
        (("a", 1, r, ("",)), "extension line 1 is empty"),
        (("a", 1, r, ("ok", "x\ny")), "extension line 2 contains a newline"),
        (("a", 1, r, "abc"), "not a str"),
        (("a\x7f\x01", 1, r), "control character"),
    ]:
        with pytest.raises(NoteError, match=msg):
            Checkpoint(*args)


def test_body_that_is_not_a_checkpoint(keys):
    """transparency-dev/formats ParseCheckpoint "bad body good sigs"."""
    s, v = keys["example.com/log"]
    note = sign_note(b"if this is a valid checkpoint then I'll eat my hat\n", [s])
    assert open_note(note, [v]).verified == ("example.com/log",)
    with pytest.raises(NoteError, match="want at least 3"):
        verify_checkpoint(note, [v], ["example.com/log"])


# ----------------------------------------------------------------------------- fuzzing


@pytest.fixture(scope="module")
def fuzz_target(keys):
    log_s, log_v = keys["example.com/log"]
    w1_s, w1_v = keys["witness.example/w1"]
    st_s, _ = keys["stranger.example"]
    cp = Checkpoint("example.com/log", 1234, hashlib.sha256(b"fuzz").digest(), ("extension",))
    note = sign_checkpoint(cp, [log_s, w1_s, st_s])
    return cp, note, [log_v, w1_v]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_byte_flips_never_change_accepted_content(fuzz_target, data):
    cp, note, vs = fuzz_target
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(note) - 1), st.integers(1, 255)),
                               min_size=1, max_size=4, unique_by=lambda t: t[0]))
    bad = bytearray(note)
    for i, mask in flips:
        bad[i] ^= mask
    try:
        got = verify_checkpoint(bytes(bad), vs, REQ, "example.com/log")
    except NoteError:
        return
    assert got == cp
    # Only the stranger's (unknown) signature line may have changed.
    changed = [i for i in range(len(note)) if bad[i] != note[i]]
    assert min(changed) >= note.rindex(f"{EM} stranger".encode())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_splices_never_change_accepted_content(fuzz_target, data):
    cp, note, vs = fuzz_target
    i = data.draw(st.integers(0, len(note)))
    j = data.draw(st.integers(i, min(len(note), i + 8)))
    ins = data.draw(st.binary(max_size=8))
    bad = note[:i] + ins + note[j:]
    try:
        got = verify_checkpoint(bad, vs, REQ, "example.com/log")
    except NoteError:
        return
    assert got == cp


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_arbitrary_bytes_only_raise_note_error(blob):
    v = Verifier.from_key_string(PETER_VKEY)
    for f in (lambda: open_note(blob, [v]), lambda: Checkpoint.parse(blob), lambda: parse_note(blob)):
        try:
            f()
        except NoteError:
            pass


_line = st.text(st.characters(blacklist_categories=("Cs",), min_codepoint=0x20), min_size=1, max_size=20)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(origin=_line, size=st.integers(0, 2**64 - 1), root=st.binary(min_size=32, max_size=32),
       exts=st.lists(_line, max_size=3))
def test_fuzz_checkpoint_round_trip(keys, origin, size, root, exts):
    s, v = keys["example.com/log"]
    cp = Checkpoint(origin, size, root, tuple(exts))
    assert Checkpoint.parse(cp.to_text()) == cp
    assert verify_checkpoint(sign_checkpoint(cp, [s]), [v], ["example.com/log"], origin) == cp


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(st.characters(blacklist_categories=("Cs",), min_codepoint=0x20) | st.just("\n"),
                    max_size=60).map(lambda t: t + "\n"))
def test_fuzz_note_text_round_trip(keys, text):
    s, v = keys["example.com/log"]
    n = open_note(sign_note(text, [s]), [v], required=["example.com/log"])
    assert n.text == text.encode()
