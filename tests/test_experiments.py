"""`dvsecure experiment` and `dvsecure report` (issue 15, first part): the quick
grid on scikit-learn's bundled digits writes results and plots, every ε in the
results is what `dvsecure audit` recomputes from that configuration's log, a
re-run skips finished work, the plots' data files hold what their titles say,
and without the extra the commands name it."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the experiments extra is part of `make install`")

from dvsecure.audit.check import audit  # noqa: E402
from dvsecure.cli import main  # noqa: E402
from dvsecure.errors import ParameterError  # noqa: E402
from dvsecure.experiments import data, grid, plots  # noqa: E402


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "quick"
    assert main(["experiment", "--dataset", "digits", "--quick", "--out", str(out), "--json"]) == 0
    return out


def test_the_quick_grid_writes_results_and_every_epsilon_is_the_auditors(quick):
    results = json.loads((quick / "results.json").read_text())["results"]
    assert len(results) == len(grid.parse(grid.QUICK)) == 16
    with (quick / "results.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 16
    for r in results:
        report = audit(quick / r["log"])
        assert report.ok, [str(f) for f in report.findings]
        assert [s["epsilon"] for s in r["sources"]] == [s.epsilon for s in report.sources] == r["audited_epsilon"]
        assert [s["influence_epsilon"] for s in r["sources"]] == [s.influence_epsilon for s in report.sources]
        assert max(s.epsilon for s in report.sources) <= r["epsilon"] + 1e-9
        assert all(s["pate_is_analysis_only"] for s in r["sources"])
        assert 0 <= r["coverage"] <= 1 and r["answered"] == sum(r["answered_flags"])


def test_a_configuration_beats_the_best_institution_by_five_points_at_eps_8(quick):
    results = json.loads((quick / "results.json").read_text())["results"]
    winners = [r for r in results if r["accuracy"] is not None and r["coverage"] >= 0.25
               and plots.gain(r) >= 0.05 and r["max_epsilon"] <= 8.0]
    assert winners, [(r["slices"], r["accuracy"], r["best_single_slice_vote_accuracy"]) for r in results]
    assert all(r["slices"] > 1 for r in winners)                # slice units make it affordable


def test_a_rerun_skips_finished_configurations(quick, capsys):
    before = (quick / "results.json").read_text()
    assert main(["experiment", "--quick", "--out", str(quick), "--no-plots", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["configurations"] == 16
    assert (quick / "results.json").read_text() == before


def test_plot_data_files_hold_what_the_figures_show(quick):
    figures = quick / "figures"
    results = json.loads((quick / "results.json").read_text())["results"]
    for name in ("frontier", "answered_vs_budget", "coverage_vs_threshold", "spend_over_time"):
        png = (figures / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    front = json.loads((figures / "frontier.json").read_text())
    points = sorted(tuple(p[:2]) for pts in front["series"].values() for p in pts)
    assert points == sorted((r["max_epsilon"], r["accuracy"]) for r in results if r["accuracy"] is not None)
    answered = json.loads((figures / "answered_vs_budget.json").read_text())["series"]
    for m, pts in answered.items():
        for eps, mean in pts:
            rows = [r["answered"] for r in results if r["slices"] == int(m) and r["epsilon"] == eps]
            assert mean == pytest.approx(np.mean(rows))
    spend = json.loads((figures / "spend_over_time.json").read_text())
    best = next(r for r in results if r["key"] == spend["key"])
    assert all(max(v) <= spend["cap_rho"] for v in spend["spend"].values())
    assert spend["spend"]["inst-1"] == [row[0] for row in best["spend_over_time"]]


def test_report_draws_any_log_from_the_log_alone(quick, tmp_path, capsys):
    r = json.loads((quick / "results.json").read_text())["results"][5]
    assert main(["report", str(quick / r["log"]), "--out", str(tmp_path / "rep"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["audit_ok"] and [s["epsilon"] for s in summary["sources"]] == r["audited_epsilon"]
    spend = json.loads((tmp_path / "rep" / "spend.json").read_text())
    assert spend["spent"]["inst-1"][-1] == pytest.approx(r["sources"][0]["spent_rho"])
    assert all(max(v) <= spend["caps"][k] for k, v in spend["spent"].items())
    assert (tmp_path / "rep" / "spend.png").read_bytes()[:4] == b"\x89PNG"


def test_grid_files_are_checked_key_by_key(tmp_path):
    bad = tmp_path / "g.toml"
    bad.write_text('[grid]\nslices = [1, 10]\nsigmaa = [1.0]\n')
    with pytest.raises(ParameterError, match="unknown key.*sigmaa"):
        grid.load(bad)
    bad.write_text('[grid]\nbackend = ["tee"]\n')
    with pytest.raises(ParameterError, match="backend 'tee'"):
        grid.load(bad)
    assert main(["experiment", "--grid", str(bad), "--quick", "--out", str(tmp_path / "o")]) == 2


def test_the_partition_is_disjoint_and_skewed():
    ds = data.load("digits", 0)
    rng = np.random.default_rng(0)
    parts = data.dirichlet_partition(ds.y_train, 5, 0.1, rng)
    flat = np.concatenate(parts)
    assert len(flat) == len(set(flat.tolist())) == len(ds.y_train)
    # Skewed: most institutions hold most of their data in few classes.
    top2 = [np.sort(np.bincount(ds.y_train[p], minlength=10))[-2:].sum() / max(len(p), 1) for p in parts if len(p)]
    assert np.median(top2) > 0.5


def test_without_the_extra_the_command_names_it(tmp_path):
    code = ("import sys, builtins; real = builtins.__import__\n"
            "def fake(name, *a, **k):\n"
            "    if name.split('.')[0] in ('sklearn', 'matplotlib'): raise ImportError(name=name)\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = fake\n"
            "from dvsecure.cli import main\n"
            f"sys.exit(main(['experiment', '--quick', '--out', {str(tmp_path / 'x')!r}]))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "pip install -e '.[experiments]'" in done.stderr


def test_the_researcher_doc_shows_real_figures_and_commands_that_parse():
    import re
    import shlex
    from pathlib import Path

    from dvsecure.cli import build_parser

    doc_dir = Path(__file__).parents[1] / "docs"
    text = (doc_dir / "researcher.md").read_text()
    images = re.findall(r"!\[[^]]*\]\(([^)]+)\)", text)
    assert len(images) == 5
    for rel in images:
        assert (doc_dir / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    commands = [line.split("#")[0].strip() for line in text.splitlines() if line.startswith("dvsecure ")]
    assert len(commands) >= 3
    for cmd in commands:
        argv = [a.replace("[--json]", "--json") for a in shlex.split(cmd)[1:] if a != "[--json]"]
        build_parser().parse_args(argv)          # raises SystemExit on an unknown option


@pytest.mark.slow
def test_bench_all_runs_the_three_backends_on_one_workload(tmp_path, capsys):
    assert main(["bench", "--backend", "all", "--queries", "20", "--classes", "4", "--sources", "3",
                 "--out", str(tmp_path / "b")]) == 0
    result = json.loads(capsys.readouterr().out)
    secs = result["seconds"]
    assert set(secs) == {"plaintext", "mpc", "enclave"} and result["workload"]["queries"] == 20
    for name in ("mpc", "enclave"):
        assert result["ratio_to_plaintext"][name] == pytest.approx(secs[name]["total"] / secs["plaintext"]["total"])
    assert secs["plaintext"]["evaluate"] + secs["plaintext"]["account_commit_log"] == \
        pytest.approx(secs["plaintext"]["total"])
    b = result["bytes_per_query"]
    assert b["plaintext"]["network"] == 0
    assert b["mpc"]["sources_to_parties"] > 0 and b["enclave"]["sources_to_enclave"] > 0
    assert b["mpc"]["per_party_to_others"] == result["mpc_parties_bench"]["bytes_per_query_per_party"] > 0
    assert json.loads((tmp_path / "b" / "bench_all.json").read_text()) == result
    chart = json.loads((tmp_path / "b" / "bench_all_chart.json").read_text())
    assert chart["ratio_to_plaintext"] == result["ratio_to_plaintext"]
    assert chart["bytes_per_query"]["values"][1] == b["mpc"]["per_party_to_others"]
    assert (tmp_path / "b" / "bench_all_chart.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_a_grid_runs_the_same_configuration_on_every_backend(tmp_path, capsys):
    spec = tmp_path / "g.toml"
    spec.write_text('[experiment]\nqueries = 30\n[grid]\nskew = [1.0]\ninstitutions = [3]\nslices = [10]\n'
                    'sigma1 = [1.0]\nthreshold = [0.3]\nsigma2 = [0.3]\ncalibration = [0]\nepsilon = [8.0]\n'
                    'backend = ["plaintext", "mpc", "enclave"]\n')
    assert main(["experiment", "--grid", str(spec), "--out", str(tmp_path / "o"), "--no-plots", "--json"]) == 0
    results = json.loads((tmp_path / "o" / "results.json").read_text())["results"]
    assert [r["backend"] for r in results] == ["plaintext", "mpc", "enclave"]
    for r in results:
        assert r["audit_ok"] and r["audited_epsilon"] == [s["epsilon"] for s in r["sources"]]
        assert r["queries"] == 30 and 0 < r["max_epsilon"] <= 8.0
    # The enclave's log names its attested measurement: it audits only with the simulated root trusted.
    enclave = tmp_path / "o" / results[2]["log"]
    assert not audit(enclave).ok
    root = enclave.parent / "state" / "sim-ca" / "root.pem"
    assert audit(enclave, trusted_sim_roots=[root.read_bytes()]).ok
