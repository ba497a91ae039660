"""README claims that code can check: its policy example parses (every key in it
is a real key), and the demo's --json carries the fields it lists."""
from __future__ import annotations

import json
import re
from pathlib import Path

from dvsecure.cli import main
from dvsecure.policy import ConsortiumPolicy

README = (Path(__file__).parents[1] / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def test_the_policy_example_is_a_valid_policy():
    block = re.search(r"```toml\n(.*?)```", _section("Policies"), re.S).group(1)
    # The [signers] table holds placeholders for keys; everything before it must parse as written.
    policy = ConsortiumPolicy.from_toml(block.split("[signers]")[0])
    slice_src = policy.source("inst-2")
    assert (slice_src.unit, slice_src.slices, slice_src.votes) == ("slice", 80, "histogram")
    assert slice_src.influence_budget_rho == 20000


def test_the_demo_json_has_the_fields_the_readme_lists(tmp_path, capsys):
    assert main(["demo", "--backend", "plaintext", "--queries", "12", "--out", str(tmp_path / "o"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    listed = _section("The demo").split("`--json` prints one object:")[1].split("\n- ")[0]
    names = set(re.findall(r"`([a-z_]+)`", listed)) - {"null", "source", "slice"}
    source_keys = set(data["sources"][0]) | {"audit"}
    missing = {n for n in names if n not in data and n not in source_keys and n not in data["audit"]}
    assert not missing, missing
    assert {"unit", "slices", "epsilon", "influence_rho", "influence_epsilon"} <= set(data["sources"][0])
    assert "best_single_source_accuracy" in data
