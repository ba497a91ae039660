"""The runnable examples keep working and show what they claim."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _spend_table(text: str) -> dict[str, tuple[float, float]]:
    rows = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] in ("north", "south", "east"):
            rows[parts[0]] = (float(parts[1]), float(parts[2]))
    return rows


def test_three_hospitals_continues_and_never_overspends(tmp_path):
    first = _run("three_hospitals.py", str(tmp_path))
    assert "east excluded:invalid" in first and "charged 0.0" in first
    spent1 = _spend_table(first)
    assert set(spent1) == {"north", "south", "east"}
    second = _run("three_hospitals.py", str(tmp_path))
    spent2 = _spend_table(second)
    for sid, (spent, budget) in spent2.items():
        assert spent <= budget
        assert spent >= spent1[sid][0]          # continued from the ledger, nothing freed
