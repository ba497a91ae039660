"""Every command line the role docs show runs, and prints what they say (issue 14),
so the docs cannot drift.

In a ```console block, each `$ dvsecure ARGS` line is run (an optional trailing
`# exit N` is the exit code it must give; 0 otherwise), and the lines after it,
up to the next `$`, are its output (stdout, then stderr). All the role docs run
in one working directory, in the order a consortium meets them: the operator's
policy is the file the source, the party and the auditor then check. Keys are
made fresh on every run, so base64 keys and verifier keys compare as
placeholders; a line `...` stands for any lines, and `...` inside a line for any
text (private noise changes the figures). Every other `dvsecure ...` line in a
code block must parse.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from dvsecure.cli import build_parser, main

DOCS = Path(__file__).parents[1] / "docs"
ORDER = ["operator.md", "source.md", "party.md", "auditor.md"]
EXIT = re.compile(r"#\s*exit\s+(\d+)\s*$")
VKEY = re.compile(r"[^\s\"+]+\+[0-9a-f]{8}\+[A-Za-z0-9+/]{44}")
KEY = re.compile(r"[A-Za-z0-9+/]{43}=")


def blocks(text: str):
    """(info string, lines) of every fenced code block."""
    return [(m.group(1), m.group(2).splitlines()) for m in re.finditer(r"^```(\w*)\n(.*?)^```$", text, re.S | re.M)]


def console_steps(lines: list[str]):
    """(command, expected output lines) of one console block."""
    steps: list[tuple[str, list[str]]] = []
    for line in lines:
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            assert steps, f"output before any command: {line!r}"
            steps[-1][1].append(line)
    return steps


def normalised(text: str) -> str:
    return KEY.sub("<key>", VKEY.sub("<vkey>", text))


def matches(expected: list[str], actual: str) -> bool:
    parts = []
    for line in expected:
        line = normalised(line.rstrip())
        if line == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(".*?".join(re.escape(p) for p in line.split("...")) + r"\n")
    got = "".join(normalised(line.rstrip()) + "\n" for line in actual.splitlines())
    return re.fullmatch("".join(parts), got) is not None


def test_every_role_doc_is_run():
    shown = {p.name for p in DOCS.glob("*.md") if any(info == "console" for info, _ in blocks(p.read_text()))}
    assert shown <= set(ORDER) and all((DOCS / name).exists() for name in ORDER)


def test_the_role_docs_commands_run_and_print_what_they_show(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ran = 0
    for name in ORDER:
        for info, lines in blocks((DOCS / name).read_text()):
            if info != "console":
                continue
            for command, expected in console_steps(lines):
                assert command.startswith("dvsecure "), f"{name}: only dvsecure commands run here: {command!r}"
                want = EXIT.search(command)
                try:
                    code = main(shlex.split(command, comments=True)[1:])
                except SystemExit as e:
                    code = e.code
                out = capsys.readouterr()
                shown = out.out + out.err
                assert code == (int(want.group(1)) if want else 0), f"{name}: $ {command}\n{shown}"
                assert matches(expected, shown), f"{name}: $ {command}\nprinted:\n{shown}\ndocs say:\n" + \
                    "\n".join(expected)
                ran += 1
    assert ran >= 20


@pytest.mark.parametrize("name", ORDER)
def test_the_other_command_lines_of_the_role_docs_parse(name):
    for info, lines in blocks((DOCS / name).read_text()):
        if info == "console":
            continue
        for line in lines:
            if line.startswith("dvsecure "):
                build_parser().parse_args(shlex.split(line, comments=True)[1:])   # SystemExit if not


def test_the_matcher_is_strict_where_the_docs_are_literal():
    assert matches(["a", "...", "d ... f"], "a\nb\nc\nd e f\n")
    assert matches(["key <x>", "digest abc"], "key <x>\ndigest abc\n")
    assert not matches(["digest abc"], "digest abd\n")
    assert not matches(["a"], "a\nb\n")
    assert matches(["k " + "A" * 43 + "="], "k " + "B" * 43 + "=\n")
