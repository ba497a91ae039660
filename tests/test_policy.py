"""The consortium policy: TOML format, validation, budgets and weight bands."""
from __future__ import annotations

import base64
import dataclasses
import math
import tomllib
from fractions import Fraction

import pytest
import tomli_w
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dvsecure.accounting.conversions import rho_from_eps_delta, rho_from_rdp_budget
from dvsecure.errors import PolicyError
from dvsecure.policy import (
    Budget,
    CalibrationPolicy,
    ConsortiumPolicy,
    MechanismPolicy,
    SignerPolicy,
    SourcePolicy,
)

GRID = 2 ** -16

POLICY_TOML = """\
[consortium]
name = "demo"
collusion_tolerance = 2

[mechanism]
kind = "confident_gnmax"
sigma1 = 1.5
threshold = 0.9
sigma2 = 0.75

[calibration]
budget_fraction = 0.2

[[sources]]
id = "alpha"
gamma_min = 0.10
gamma_max = 0.60
budget = { rdp = 100.0, order = 2.0 }
delta = 1e-6
on_exhaustion = "shrink"
votes = "simplex"

[[sources]]
id = "beta"
gamma_min = 0
gamma_max = 1
budget = { rho = 50 }

[[sources]]
id = "gamma"
gamma_min = 0.3125
gamma_max = 0.3125
budget = { epsilon = 8.0, delta = 1e-7 }
"""


def base() -> dict:
    import tomllib
    return tomllib.loads(POLICY_TOML)


def from_dict_toml(d: dict) -> ConsortiumPolicy:
    """Go through the file format, not just from_dict."""
    return ConsortiumPolicy.from_toml(tomli_w.dumps(d))


def expect_error(d: dict, *words: str) -> PolicyError:
    with pytest.raises(PolicyError) as ei:
        from_dict_toml(d)
    msg = str(ei.value)
    for w in words:
        assert w in msg, (w, msg)
    return ei.value


# ---------------------------------------------------------------- round trip

def test_parse_example():
    p = ConsortiumPolicy.from_toml(POLICY_TOML)
    assert p.name == "demo" and p.collusion_tolerance == 2
    assert p.ids == ("alpha", "beta", "gamma")
    assert p.mechanism == MechanismPolicy("confident_gnmax", sigma2=0.75, sigma1=1.5, threshold=0.9)
    assert p.mechanism.confident
    assert p.calibration == CalibrationPolicy(0.2)
    a, b, g = p.sources
    assert (a.gamma_min, a.gamma_max, a.delta, a.on_exhaustion, a.votes) == (0.1, 0.6, 1e-6, "shrink", "simplex")
    # defaults
    assert (b.delta, b.on_exhaustion, b.votes) == (1e-5, "exclude", "one-hot")
    assert isinstance(b.gamma_min, float) and isinstance(b.budget.value, float)
    # the eps/delta budget's delta is the reporting default
    assert g.delta == 1e-7
    assert p.source("beta") is b
    with pytest.raises(PolicyError, match="nope"):
        p.source("nope")


def test_toml_round_trip_and_digest():
    p = ConsortiumPolicy.from_toml(POLICY_TOML)
    text = p.to_toml()
    q = ConsortiumPolicy.from_toml(text)
    assert q == p
    assert q.digest() == p.digest()
    assert q.to_toml() == text                      # a fixed point after one trip
    assert ConsortiumPolicy.from_toml(q.to_toml()).digest() == p.digest()
    assert len(p.digest()) == 64 and int(p.digest(), 16) >= 0
    # the digest is a function of the content, not of the object
    assert ConsortiumPolicy.from_toml(POLICY_TOML).digest() == p.digest()


def test_digest_changes_with_any_field():
    p = ConsortiumPolicy.from_toml(POLICY_TOML)
    seen = {p.digest()}
    edits = [
        lambda d: d["consortium"].__setitem__("name", "other"),
        lambda d: d["consortium"].__setitem__("collusion_tolerance", 3),
        lambda d: d["mechanism"].__setitem__("sigma2", 0.7500001),
        lambda d: d["mechanism"].__setitem__("threshold", 0.91),
        lambda d: d["calibration"].__setitem__("budget_fraction", 0.25),
        lambda d: d["sources"][0].__setitem__("gamma_max", 0.61),
        lambda d: d["sources"][0].__setitem__("votes", "one-hot"),
        lambda d: d["sources"][1].__setitem__("budget", {"rho": 50.5}),
        lambda d: d["sources"][2].__setitem__("delta", 1e-8),
        lambda d: d["sources"].reverse(),
        lambda d: d["sources"][0].__setitem__("resolution", 32),
    ]
    for edit in edits:
        d = base()
        edit(d)
        seen.add(from_dict_toml(d).digest())
    assert len(seen) == len(edits) + 1


def test_int_and_float_spellings_are_the_same_policy():
    d = base()
    d["sources"][1]["budget"] = {"rho": 50.0}
    d["sources"][1]["gamma_min"] = 0.0
    d["sources"][1]["gamma_max"] = 1.0
    assert from_dict_toml(d).digest() == ConsortiumPolicy.from_toml(POLICY_TOML).digest()


def test_gnmax_round_trip_and_defaults():
    d = base()
    d["mechanism"] = {"kind": "gnmax", "sigma2": 2}
    del d["consortium"]
    del d["calibration"]
    p = from_dict_toml(d)
    assert p.mechanism.sigma1 is None and p.mechanism.threshold is None and not p.mechanism.confident
    assert p.mechanism.sigma2 == 2.0
    assert p.name == "consortium" and p.collusion_tolerance == 1
    assert p.calibration.budget_fraction == 0.1
    assert "sigma1" not in p.to_toml() and "threshold" not in p.to_toml()
    assert ConsortiumPolicy.from_toml(p.to_toml()) == p


def test_load(tmp_path):
    f = tmp_path / "policy.toml"
    f.write_text(POLICY_TOML, encoding="utf-8")
    p = ConsortiumPolicy.load(f)
    assert p == ConsortiumPolicy.from_toml(POLICY_TOML)
    assert ConsortiumPolicy.load(str(f)).digest() == p.digest()
    g = tmp_path / "again.toml"
    g.write_text(p.to_toml(), encoding="utf-8")
    assert ConsortiumPolicy.load(g) == p


def test_load_missing_file(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(PolicyError, match="nope.toml"):
        ConsortiumPolicy.load(missing)
    with pytest.raises(PolicyError, match="cannot read"):
        ConsortiumPolicy.load(tmp_path)             # a directory is not a file


def test_load_names_the_file_on_content_errors(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text(POLICY_TOML.replace("sigma2 = 0.75", "sigma2 = -0.75"), encoding="utf-8")
    with pytest.raises(PolicyError) as ei:
        ConsortiumPolicy.load(f)
    assert "bad.toml" in str(ei.value) and "sigma2" in str(ei.value)


@pytest.mark.parametrize("text", [
    "[mechanism\nkind = 'gnmax'",
    "[mechanism]\nkind = gnmax\n",
    "x = = 1",
    "[mechanism]\nkind = 'gnmax'\n[mechanism]\nsigma2 = 1.0\n",   # table defined twice
    "[[sources]]\nid = 'a'\nid = 'b'\n",                           # duplicate key
])
def test_invalid_toml(text, tmp_path):
    with pytest.raises(PolicyError, match="not valid TOML"):
        ConsortiumPolicy.from_toml(text)
    f = tmp_path / "p.toml"
    f.write_text(text)
    with pytest.raises(PolicyError, match="not valid TOML"):
        ConsortiumPolicy.load(f)


def test_policy_objects_are_immutable():
    p = ConsortiumPolicy.from_toml(POLICY_TOML)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.name = "x"
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.sources[0].gamma_max = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.mechanism.sigma2 = 1.0
    assert isinstance(p.sources, tuple)


# ---------------------------------------------------------------- budgets

def test_three_budget_forms():
    p = ConsortiumPolicy.from_toml(POLICY_TOML)
    a, b, g = p.sources
    assert a.budget.kind == "rdp" and a.budget_rho == Fraction(100) / Fraction(2) == 50
    assert a.budget_rho == rho_from_rdp_budget(100.0, 2.0)
    assert b.budget.kind == "rho" and b.budget_rho == Fraction(50)
    assert g.budget.kind == "eps_delta" and g.budget_rho == rho_from_eps_delta(8.0, 1e-7)
    for s in p.sources:
        assert isinstance(s.budget_rho, Fraction) and s.budget_rho > 0


@pytest.mark.parametrize("budget,rho", [
    ({"rho": 0.125}, Fraction(1, 8)),
    ({"rdp": 3, "order": 1.5}, Fraction(2)),
    ({"rdp": 10.0, "order": 32}, Fraction(10, 32)),
    ({"rdp": 0.1, "order": 3.0}, Fraction(0.1) / 3),
    ({"epsilon": 1.0, "delta": 1e-5}, rho_from_eps_delta(1.0, 1e-5)),
    ({"epsilon": 0.3, "delta": 1e-9}, rho_from_eps_delta(0.3, 1e-9)),
])
def test_budget_rho(budget, rho):
    d = base()
    d["sources"][0]["budget"] = budget
    s = from_dict_toml(d).sources[0]
    assert s.budget_rho == rho
    assert Budget.from_dict("x", budget).rho == rho


def test_extreme_eps_budget_converts():
    # regression: rho_from_eps_delta used to crash (scipy ValueError) for eps >~ 1e13
    d = base()
    d["sources"][2]["budget"] = {"epsilon": 1e15, "delta": 1e-5}
    s = from_dict_toml(d).sources[2]
    assert s.budget_rho == rho_from_eps_delta(1e15, 1e-5)
    assert 0.98e15 < s.budget_rho < 1e15


def test_explicit_delta_overrides_budget_delta():
    d = base()
    d["sources"][2]["delta"] = 1e-3
    s = from_dict_toml(d).sources[2]
    assert s.delta == 1e-3 and s.budget.delta == 1e-7
    assert s.budget_rho == rho_from_eps_delta(8.0, 1e-7)


# ---------------------------------------------------------------- weight bands

def on_grid(x: float) -> bool:
    return (Fraction(x) * 65536).denominator == 1


@settings(max_examples=300, deadline=None)
@given(lo=st.floats(0, 1), hi=st.floats(0, 1))
def test_grid_band_inside_declared_band(lo, hi):
    lo, hi = min(lo, hi), max(lo, hi)
    assume(hi > 0)
    try:
        s = SourcePolicy("s", lo, hi, Budget("rho", 1.0))
    except PolicyError as e:
        # only when the band contains no positive multiple of 2**-16
        assert "2**-16" in str(e)
        assert math.floor(hi * 65536) < max(1, math.ceil(Fraction(lo) * 65536))
        return
    assert on_grid(s.grid_min) and on_grid(s.grid_max)
    assert lo <= s.grid_min <= s.grid_max <= hi
    assert s.grid_min > 0
    # and they are the extreme grid points in the band
    assert s.grid_max + GRID > hi
    assert s.grid_min - GRID < lo or s.grid_min == GRID


@pytest.mark.parametrize("lo,hi,gmin,gmax", [
    (0.1, 0.6, 6554 / 65536, 39321 / 65536),
    (0.0, 1.0, 1 / 65536, 1.0),
    (0.5, 0.5, 0.5, 0.5),
    (0.25, 0.75, 0.25, 0.75),
    (1e-9, 1e-4, 1 / 65536, 6 / 65536),
])
def test_grid_band_examples(lo, hi, gmin, gmax):
    s = SourcePolicy("s", lo, hi, Budget("rho", 1.0))
    assert (s.grid_min, s.grid_max) == (gmin, gmax)


def test_band_without_grid_point():
    with pytest.raises(PolicyError, match="2\\*\\*-16"):
        SourcePolicy("s", 0.3, 0.30000001, Budget("rho", 1.0))
    with pytest.raises(PolicyError, match="2\\*\\*-16"):
        SourcePolicy("s", 0.3, 0.3, Budget("rho", 1.0))        # 0.3 is not a grid point
    with pytest.raises(PolicyError, match="2\\*\\*-16"):
        SourcePolicy("s", 0.0, 1e-6, Budget("rho", 1.0))    # 0 is not a participating weight


def test_simplex_resolution_default_grid_and_file_format():
    p = ConsortiumPolicy.from_toml(POLICY_TOML)
    alpha, beta = p.source("alpha"), p.source("beta")
    assert (alpha.resolution, alpha.grid_step) == (16, 16)          # the default m
    assert (beta.resolution, beta.grid_step) == (None, 1)
    # weights of a simplex source are multiples of m * 2**-16, so gamma/m is exact
    assert (Fraction(alpha.grid_min) * 65536, Fraction(alpha.grid_max) * 65536) == (6560, 39312)
    assert alpha.on_grid(6560 / 65536) and not alpha.on_grid(6561 / 65536) and beta.on_grid(6561 / 65536)
    assert alpha.floor_to_band(0.3) == (19660 // 16) * 16 / 65536 and alpha.floor_to_band(0.0) == alpha.grid_min
    # always stated in the file: the rounding is part of the agreement
    assert p.to_dict()["sources"][0]["resolution"] == 16 and "resolution" not in p.to_dict()["sources"][1]
    d = base()
    d["sources"][0]["resolution"] = 16
    assert from_dict_toml(d).digest() == p.digest()
    d["sources"][0]["resolution"] = 1024
    q = from_dict_toml(d)
    assert q.source("alpha").grid_step == 1024 and ConsortiumPolicy.from_toml(q.to_toml()) == q
    assert Fraction(q.source("alpha").grid_min) * 65536 == 7168 and q.source("alpha").vote_format.units == 1024
    for m in (1, 2, 1 << 16):
        s = SourcePolicy("s", 0.0, 1.0, Budget("rho", 1.0), votes="simplex", resolution=m)
        assert s.grid_step == m and s.grid_max == 1.0 and s.grid_min == m / 65536


def test_a_simplex_band_must_hold_a_multiple_of_its_grid_step():
    SourcePolicy("s", 0.3, 0.3001, Budget("rho", 1.0), votes="simplex", resolution=4)
    with pytest.raises(PolicyError, match="4096 \\* 2\\*\\*-16"):
        SourcePolicy("s", 0.3, 0.3001, Budget("rho", 1.0), votes="simplex", resolution=4096)


def test_resolution_is_for_simplex_votes_only():
    with pytest.raises(PolicyError, match="resolution is for votes = 'simplex'.*'histogram'"):
        SourcePolicy("s", 0.0, 1.0, Budget("rho", 1.0), unit="slice", slices=4, resolution=4)
    with pytest.raises(PolicyError, match="resolution must be a power of two"):
        SourcePolicy("s", 0.0, 1.0, Budget("rho", 1.0), votes="simplex", resolution=12)


def test_sources_are_bound_to_their_consortium_for_rounding():
    p = ConsortiumPolicy.from_toml(POLICY_TOML)
    fmt = p.source("alpha").vote_format
    assert (fmt.kind, fmt.resolution, fmt.consortium, fmt.source_id) == ("simplex", 16, "demo", "alpha")
    # the binding is not part of the agreement's content: equal sources, equal digests
    free = SourcePolicy.from_dict(base()["sources"][0])
    assert free.consortium is None and free == p.source("alpha")
    renamed = dataclasses.replace(p, name="other")
    assert renamed.source("alpha").vote_format.consortium == "other"
    assert p.source("alpha").vote_format.consortium == "demo"


# ---------------------------------------------------------------- errors

def _set(path, value):
    def edit(d):
        t = d
        for k in path[:-1]:
            t = t[k]
        t[path[-1]] = value
    return edit


def _del(path):
    def edit(d):
        t = d
        for k in path[:-1]:
            t = t[k]
        del t[path[-1]]
    return edit


S0, S1, S2 = ("sources", 0), ("sources", 1), ("sources", 2)

ERRORS = [
    # bands
    ("gamma_min>gamma_max", _set(S0 + ("gamma_min",), 0.7), ["gamma_min", "gamma_max", "alpha"]),
    ("gamma_min<0", _set(S0 + ("gamma_min",), -0.1), ["gamma_min", "[0, 1]"]),
    ("gamma_min>1", _set(S0 + ("gamma_min",), 1.1), ["gamma_min"]),
    ("gamma_max>1", _set(S0 + ("gamma_max",), 1.5), ["gamma_max"]),
    ("gamma_max=0", _set(S0 + ("gamma_max",), 0.0), ["gamma_max"]),
    ("gamma_max<0", _set(S0 + ("gamma_max",), -0.5), ["gamma_max"]),
    ("gamma nan", _set(S0 + ("gamma_max",), float("nan")), ["gamma_max", "finite"]),
    ("gamma inf", _set(S0 + ("gamma_min",), float("inf")), ["gamma_min", "finite"]),
    # noise
    ("sigma2=0", _set(("mechanism", "sigma2"), 0.0), ["sigma2", "> 0"]),
    ("sigma2<0", _set(("mechanism", "sigma2"), -1.0), ["sigma2"]),
    ("sigma1=0", _set(("mechanism", "sigma1"), 0), ["sigma1"]),
    ("sigma1<0", _set(("mechanism", "sigma1"), -2.0), ["sigma1"]),
    ("sigma2 inf", _set(("mechanism", "sigma2"), float("inf")), ["sigma2"]),
    # budgets
    ("rho=0", _set(S1 + ("budget",), {"rho": 0}), ["rho", "beta"]),
    ("rho<0", _set(S1 + ("budget",), {"rho": -1.0}), ["rho"]),
    ("eps=0", _set(S1 + ("budget",), {"epsilon": 0.0, "delta": 1e-5}), ["epsilon"]),
    ("eps<0", _set(S1 + ("budget",), {"epsilon": -1.0, "delta": 1e-5}), ["epsilon"]),
    ("rdp=0", _set(S1 + ("budget",), {"rdp": 0.0, "order": 2.0}), ["rdp"]),
    ("budget delta=0", _set(S1 + ("budget",), {"epsilon": 1.0, "delta": 0.0}), ["beta", "delta", "(0, 1)"]),
    ("budget delta=1", _set(S1 + ("budget",), {"epsilon": 1.0, "delta": 1.0}), ["beta", "delta"]),
    ("budget delta>1", _set(S1 + ("budget",), {"epsilon": 1.0, "delta": 2.0}), ["beta", "delta"]),
    ("order=1", _set(S1 + ("budget",), {"rdp": 1.0, "order": 1.0}), ["beta", "order", "> 1"]),
    ("order<1", _set(S1 + ("budget",), {"rdp": 1.0, "order": 0.5}), ["beta", "order"]),
    ("budget not table", _set(S1 + ("budget",), 5.0), ["budget", "table"]),
    ("budget empty", _set(S1 + ("budget",), {}), ["budget", "forms"]),
    ("budget eps without delta", _set(S1 + ("budget",), {"epsilon": 1.0}), ["budget", "epsilon"]),
    ("budget rdp without order", _set(S1 + ("budget",), {"rdp": 1.0}), ["budget", "rdp"]),
    ("budget two forms", _set(S1 + ("budget",), {"rho": 1.0, "rdp": 1.0, "order": 2.0}), ["budget", "order", "rho"]),
    # reporting delta
    ("delta=0", _set(S1 + ("delta",), 0.0), ["delta", "beta"]),
    ("delta=1", _set(S1 + ("delta",), 1.0), ["delta"]),
    ("delta<0", _set(S1 + ("delta",), -1e-5), ["delta"]),
    # ids
    ("duplicate id", _set(S1 + ("id",), "alpha"), ["duplicate", "alpha"]),
    ("empty id", _set(S1 + ("id",), ""), ["id"]),
    ("int id", _set(S1 + ("id",), 7), ["id"]),
    ("unprintable id", _set(S1 + ("id",), "a\nb"), ["id"]),
    ("long id", _set(S1 + ("id",), "x" * 129), ["id"]),
    # unknown keys at every level
    ("unknown top", _set(("sigma",), 1.0), ["unknown", "sigma"]),
    ("unknown consortium", _set(("consortium", "members"), 3), ["consortium", "unknown", "members"]),
    ("unknown mechanism", _set(("mechanism", "sigma3"), 1.0), ["mechanism", "unknown", "sigma3"]),
    ("unknown calibration", _set(("calibration", "rounds"), 3), ["calibration", "unknown", "rounds"]),
    ("unknown source", _set(S0 + ("weight",), 0.5), ["alpha", "unknown", "weight"]),
    ("unknown budget", _set(S1 + ("budget",), {"rho": 1.0, "extra": 2.0}), ["budget", "extra"]),
    # missing required keys
    ("no mechanism", _del(("mechanism",)), ["mechanism"]),
    ("no kind", _del(("mechanism", "kind")), ["kind"]),
    ("no sigma2", _del(("mechanism", "sigma2")), ["sigma2"]),
    ("no sources", _del(("sources",)), ["sources"]),
    ("empty sources", _set(("sources",), []), ["source"]),
    ("sources not tables", _set(("sources",), [1, 2]), ["sources[0]", "table"]),
    ("no id", _del(S1 + ("id",)), ["id", "#1"]),
    ("no gamma_min", _del(S1 + ("gamma_min",)), ["gamma_min", "beta"]),
    ("no gamma_max", _del(S1 + ("gamma_max",)), ["gamma_max"]),
    ("no budget", _del(S1 + ("budget",)), ["budget", "missing"]),
    # kinds
    ("bad on_exhaustion", _set(S1 + ("on_exhaustion",), "drop"), ["on_exhaustion", "drop"]),
    ("bad votes", _set(S1 + ("votes",), "ranked"), ["votes", "ranked"]),
    ("bad votes case", _set(S1 + ("votes",), "One-Hot"), ["votes"]),
    ("bad mechanism kind", _set(("mechanism", "kind"), "laplace"), ["kind", "laplace"]),
    ("mechanism kind int", _set(("mechanism", "kind"), 1), ["kind"]),
    # mechanism consistency
    ("confident without sigma1", _del(("mechanism", "sigma1")), ["confident_gnmax", "sigma1"]),
    ("confident without threshold", _del(("mechanism", "threshold")), ["confident_gnmax", "threshold"]),
    ("gnmax with sigma1", lambda d: d["mechanism"].update(kind="gnmax", sigma1=1.0) or d["mechanism"].pop("threshold"),
     ["gnmax", "sigma1"]),
    ("gnmax with threshold", lambda d: d["mechanism"].update(kind="gnmax") or d["mechanism"].pop("sigma1"),
     ["gnmax", "threshold"]),
    # consortium
    ("collusion 0", _set(("consortium", "collusion_tolerance"), 0), ["collusion_tolerance", ">= 1"]),
    ("collusion <0", _set(("consortium", "collusion_tolerance"), -1), ["collusion_tolerance"]),
    ("collusion float", _set(("consortium", "collusion_tolerance"), 1.5), ["collusion_tolerance", "integer"]),
    ("collusion float int-valued", _set(("consortium", "collusion_tolerance"), 2.0), ["collusion_tolerance"]),
    ("collusion bool", _set(("consortium", "collusion_tolerance"), True), ["collusion_tolerance"]),
    ("collusion string", _set(("consortium", "collusion_tolerance"), "2"), ["collusion_tolerance"]),
    ("name empty", _set(("consortium", "name"), ""), ["name"]),
    ("name int", _set(("consortium", "name"), 5), ["name"]),
    # calibration
    ("budget_fraction 0", _set(("calibration", "budget_fraction"), 0.0), ["budget_fraction"]),
    ("budget_fraction 1", _set(("calibration", "budget_fraction"), 1.0), ["budget_fraction"]),
    # tables that are not tables
    ("consortium scalar", _set(("consortium",), 5), ["consortium", "table"]),
    ("mechanism scalar", _set(("mechanism",), "gnmax"), ["mechanism", "table"]),
    ("calibration scalar", _set(("calibration",), 0.1), ["calibration", "table"]),
    # non-numeric values
    ("gamma string", _set(S0 + ("gamma_min",), "0.1"), ["gamma_min", "number"]),
    ("gamma bool", _set(S0 + ("gamma_max",), True), ["gamma_max", "number"]),
    ("sigma2 string", _set(("mechanism", "sigma2"), "1.0"), ["sigma2", "number"]),
    ("sigma1 bool", _set(("mechanism", "sigma1"), True), ["sigma1", "number"]),
    ("threshold string", _set(("mechanism", "threshold"), "high"), ["threshold", "number"]),
    ("threshold bool", _set(("mechanism", "threshold"), False), ["threshold", "number"]),
    ("threshold nan", _set(("mechanism", "threshold"), float("nan")), ["threshold", "finite"]),
    ("rho string", _set(S1 + ("budget",), {"rho": "50"}), ["rho", "number"]),
    ("rho bool", _set(S1 + ("budget",), {"rho": True}), ["rho", "number"]),
    ("epsilon string", _set(S1 + ("budget",), {"epsilon": "8", "delta": 1e-5}), ["epsilon", "number"]),
    ("budget delta string", _set(S1 + ("budget",), {"epsilon": 8.0, "delta": "1e-5"}), ["delta", "number"]),
    ("order bool", _set(S1 + ("budget",), {"rdp": 1.0, "order": True}), ["order", "number"]),
    ("rdp string", _set(S1 + ("budget",), {"rdp": "1", "order": 2.0}), ["rdp", "number"]),
    ("delta string", _set(S1 + ("delta",), "1e-5"), ["delta", "number"]),
    ("delta bool", _set(S1 + ("delta",), True), ["delta", "number"]),
    ("budget_fraction string", _set(("calibration", "budget_fraction"), "0.1"), ["budget_fraction", "number"]),
    ("rho array", _set(S1 + ("budget",), {"rho": [1.0]}), ["rho", "number"]),
    ("on_exhaustion int", _set(S1 + ("on_exhaustion",), 1), ["on_exhaustion"]),
    # the simplex resolution m: a power of two dividing 2**16, for simplex votes only
    ("resolution 3", _set(S0 + ("resolution",), 3), ["alpha", "resolution", "power of two", "2**16", "3"]),
    ("resolution 0", _set(S0 + ("resolution",), 0), ["alpha", "resolution", "got 0"]),
    ("resolution -16", _set(S0 + ("resolution",), -16), ["resolution", "-16"]),
    ("resolution 2**17", _set(S0 + ("resolution",), 1 << 17), ["resolution", "131072"]),
    ("resolution 48", _set(S0 + ("resolution",), 48), ["resolution", "48"]),
    ("resolution float", _set(S0 + ("resolution",), 16.0), ["resolution", "16.0"]),
    ("resolution string", _set(S0 + ("resolution",), "16"), ["resolution", "'16'"]),
    ("resolution bool", _set(S0 + ("resolution",), True), ["resolution", "True"]),
    ("resolution on one-hot", _set(S1 + ("resolution",), 16), ["beta", "resolution", "'simplex'", "'one-hot'"]),
]


@pytest.mark.parametrize("name,edit,words", ERRORS, ids=[e[0] for e in ERRORS])
def test_policy_errors(name, edit, words):
    d = base()
    edit(d)
    expect_error(d, *words)


def test_unedited_base_is_valid():
    # the error cases above differ from a valid policy by exactly one edit
    assert from_dict_toml(base()) == ConsortiumPolicy.from_toml(POLICY_TOML)


def test_errors_from_objects_too():
    ok = Budget("rho", 1.0)
    with pytest.raises(PolicyError, match="unknown budget kind"):
        Budget("zcdp", 1.0)
    with pytest.raises(PolicyError, match="delta"):
        Budget("eps_delta", 1.0)
    with pytest.raises(PolicyError, match="order"):
        Budget("rdp", 1.0)
    with pytest.raises(PolicyError, match="budget"):
        SourcePolicy("s", 0.1, 0.2, budget={"rho": 1.0})
    with pytest.raises(PolicyError, match="at least one source"):
        ConsortiumPolicy(sources=(), mechanism=MechanismPolicy("gnmax", 1.0))
    with pytest.raises(PolicyError, match="SourcePolicy"):
        ConsortiumPolicy(sources=({"id": "a"},), mechanism=MechanismPolicy("gnmax", 1.0))
    with pytest.raises(PolicyError, match="MechanismPolicy"):
        ConsortiumPolicy(sources=(SourcePolicy("a", 0.1, 0.2, ok),), mechanism={"kind": "gnmax"})
    with pytest.raises(PolicyError, match="duplicate source id 'a'"):
        ConsortiumPolicy(sources=[SourcePolicy("a", 0.1, 0.2, ok)] * 2, mechanism=MechanismPolicy("gnmax", 1.0))
    with pytest.raises(PolicyError, match="policy must be a table"):
        ConsortiumPolicy.from_dict([1, 2])


def test_policy_error_is_a_value_error():
    d = base()
    d["mechanism"]["sigma2"] = -1.0
    assert isinstance(expect_error(d, "sigma2"), ValueError)


# ---- [signers]: who must sign every checkpoint (issue 10) ----------------------------

KEY = [base64.b64encode(bytes([i]) * 32).decode() for i in range(4)]


def test_signers_round_trip_and_bind_the_digest():
    p = ConsortiumPolicy.from_toml(POLICY_TOML)
    q = p.with_signers(SignerPolicy(operator=KEY[0], parties=tuple(KEY[1:])))
    assert ConsortiumPolicy.from_toml(q.to_toml()) == q and q.digest() != p.digest()
    assert "signers" not in p.to_dict()                 # an old policy keeps its digest
    r = q.with_signers(SignerPolicy(operator=KEY[0], parties=(KEY[1], KEY[3], KEY[2])))
    assert r.digest() != q.digest()                     # the parties' order (their ranks) is agreed too
    assert [slot for slot, _, _ in q.signers.slots()] == ["operator", "party-0", "party-1", "party-2"]
    e = p.with_signers(SignerPolicy(enclave_pcr0="AB" * 48))
    assert e.signers.enclave_pcr0 == "ab" * 48 and ConsortiumPolicy.from_toml(e.to_toml()) == e


@pytest.mark.parametrize("table, message", [
    ({"operator": "not base64!"}, "signers: operator must be a base64 Ed25519 public key"),
    ({"operator": KEY[0][:-4] + "===="}, "signers: operator must be a base64"),
    ({"parties": [KEY[1], "AAAA"]}, r"signers: parties\[1\] must be a base64 Ed25519 public key"),
    ({"parties": KEY[1]}, "parties must be a list"),
    ({"operator": KEY[0], "parties": [KEY[0]]}, "a key is named twice"),
    ({}, "name the operator's key, the parties' keys or enclave_pcr0"),
    ({"enclave_pcr0": "ab" * 47}, "enclave_pcr0 must be 96 hex digits"),
    ({"enclave_pcr0": "zz" * 48}, "enclave_pcr0 must be 96 hex digits"),
    ({"enclave_pcr0": "ab" * 48, "operator": KEY[0]}, "signed by the attested enclave alone"),
    ({"operator": KEY[0], "cosigners": []}, "unknown key"),
])
def test_bad_signers_tables_are_named(table, message):
    d = tomllib.loads(POLICY_TOML)
    d["signers"] = table
    with pytest.raises(PolicyError, match=message):
        ConsortiumPolicy.from_toml(tomli_w.dumps(d))
