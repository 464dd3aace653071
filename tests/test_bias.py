"""SEAT statistics, Holm-Bonferroni, reading the real SEAT files, and the bias promotion gate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from simcse_ops.bias import (
    SETS,
    SeatTest,
    association,
    effect_size,
    holm_bonferroni,
    load_seat_tests,
    n_partitions,
    permutation_p_value,
    run_seat,
    seat_from_embeddings,
    seat_tests_from_table,
)
from simcse_ops.config import BiasConfig, BiasGateConfig, ConfigError, parse_params
from simcse_ops.gate import gate_bias
from simcse_ops.files import DataError

SEAT_GLOBS = ("bias/sent-bias/tests/*.jsonl", "bias/bias-bench-seat-religion/*.jsonl")


# --------------------------------------------------------------------------------------------
# The SEAT table as ingest writes it (the real reader over the real files)


def seat_files(data_root: Path) -> list[Path]:
    return [p for g in SEAT_GLOBS for p in sorted(data_root.glob(g))]


def seat_table(params) -> pd.DataFrame:
    """Rows of schema simcse_ops.schemas.SEAT for params.yaml `sources.seat`, via ingest's reader."""
    from simcse_ops.readers import load_source

    return load_source("seat", params.sources["seat"], params.data_root).table.to_pandas()


# --------------------------------------------------------------------------------------------
# Hand-computed examples


def lookup_embedder(vectors: dict[str, tuple[float, ...]], calls: list | None = None):
    def embed(sentences: list[str]) -> np.ndarray:
        if calls is not None:
            calls.append(list(sentences))
        return np.array([vectors[s] for s in sentences], dtype=np.float64)

    return embed


def test_association_by_hand():
    # A = {(1,0), (0.6,0.8)}, B = {(0,1)}; all unit vectors.
    # w = (1,0):  mean cos A = (1 + 0.6)/2 = 0.8,  cos B = 0    -> s = 0.8
    # w = (0,2):  mean cos A = (0 + 0.8)/2 = 0.4,  cos B = 1    -> s = -0.6
    # w = (3,4):  w_hat = (0.6,0.8): mean cos A = (0.6 + 1)/2 = 0.8, cos B = 0.8 -> s = 0
    a = np.array([[1.0, 0.0], [0.6, 0.8]])
    b = np.array([[0.0, 1.0]])
    w = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    np.testing.assert_allclose(association(w, a, b), [0.8, -0.6, 0.0], atol=1e-12)


def test_association_matches_pairwise_cosines():
    """The one-product form equals the definition: a double loop over cosines."""
    rng = np.random.default_rng(3)
    w, a, b = rng.normal(size=(5, 8)), rng.normal(size=(4, 8)), rng.normal(size=(6, 8))

    def cos(u, v):
        return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))

    expected = [np.mean([cos(x, ai) for ai in a]) - np.mean([cos(x, bi) for bi in b]) for x in w]
    np.testing.assert_allclose(association(w, a, b), expected, atol=1e-12)


def test_tiny_seat_by_hand():
    # A = {(1,0)}, B = {(0,1)}: s(w) = cos(w,(1,0)) - cos(w,(0,1)).
    # X: "x1" (1,0) -> s = 1;  "x2" (1,1) -> s = 1/sqrt2 - 1/sqrt2 = 0
    # Y: "y1" (2,2) -> s = 0;  "y2" (0,3) -> s = -1
    # mean s(X) = 0.5, mean s(Y) = -0.5; s(X u Y) = [1, 0, 0, -1], mean 0,
    # sample variance = (1 + 0 + 0 + 1) / 3 = 2/3  ->  d = 1 / sqrt(2/3) = sqrt(3/2) = 1.2247...
    # Partitions of {x1, x2, y1, y2} into X_i of size 2 (C(4,2) = 6), T = sum s(X_i):
    #   {x1,x2} 1, {x1,y1} 1, {x1,y2} 0, {x2,y1} 0, {x2,y2} -1, {y1,y2} -1
    # observed T = 1; T >= 1 for 2 of 6 (the tie {x1,y1} counts) -> p = 1/3.
    vectors = {"x1": (1, 0), "x2": (1, 1), "y1": (2, 2), "y2": (0, 3), "a": (1, 0), "b": (0, 1)}
    test = SeatTest("tiny", x=("x1", "x2"), y=("y1", "y2"), a=("a",), b=("b",), categories=("X", "Y", "A", "B"))
    out = run_seat({"tiny": test}, lookup_embedder(vectors), BiasConfig(alpha=0.5))
    t = out["tests"]["tiny"]
    assert t["effect_size"] == pytest.approx(math.sqrt(1.5), abs=1e-12)
    assert t["p_value"] == pytest.approx(1 / 3, abs=1e-15)
    assert t["p_value_method"] == "exact" and t["n_partitions"] == 6
    assert (t["n_x"], t["n_y"], t["n_a"], t["n_b"]) == (2, 2, 1, 1)
    assert t["significant"] is True  # 1/3 <= alpha 0.5, one test: Holm = raw
    assert out["summary"] == {
        "mean_abs_effect_size": pytest.approx(math.sqrt(1.5)),
        "n_significant": 1,
        "n_tests": 1,
        "n_tests_with_p_value": 1,
        "alpha": 0.5,
    }


def test_three_by_three_by_hand():
    # s(X) = [3, 1, 0], s(Y) = [2, -1, -2]; observed T = 4; C(6,3) = 20 partitions.
    # Subsets of size 3 with sum >= 4: those holding 3 need a pair from {2,1,0,-1,-2} summing to
    # >= 1: {3,2,1} = 6, {3,2,0} = 5, {3,2,-1} = 4 (a tie), {3,1,0} = 4 (observed); without 3 the
    # largest sum is 2+1+0 = 3 -> none. p = 4/20 = 0.2.
    # d: means 4/3 and -1/3, difference 5/3; overall mean 0.5, squared deviations
    # 6.25+2.25+0.25+0.25+2.25+6.25 = 17.5, variance 17.5/5 = 3.5 -> d = (5/3)/sqrt(3.5) = 0.890871...
    s_x, s_y = np.array([3.0, 1.0, 0.0]), np.array([2.0, -1.0, -2.0])
    assert effect_size(s_x, s_y) == pytest.approx((5 / 3) / math.sqrt(3.5), abs=1e-12)
    assert effect_size(s_x, s_y) == pytest.approx(0.890871, abs=1e-6)
    p = permutation_p_value(s_x, s_y)
    assert (p.p_value, p.method, p.n_partitions) == (0.2, "exact", 20)
    # The other tail: with A and B swapped s -> -s, and p(B, A) = #{T <= 4} / 20: all but the two
    # partitions with T > 4 ({3,2,1}, {3,2,0}) -> 18/20; both ties count in both tails.
    assert permutation_p_value(-s_x, -s_y).p_value == pytest.approx(18 / 20)


# --------------------------------------------------------------------------------------------
# Symmetries


@pytest.fixture
def random_test():
    rng = np.random.default_rng(7)
    d = 16
    shift = rng.normal(size=d) * 0.3
    x = rng.normal(size=(6, d)) + shift
    y = rng.normal(size=(6, d))
    a = rng.normal(size=(5, d)) + shift
    b = rng.normal(size=(7, d))
    return x, y, a, b


def test_effect_size_sign_flips(random_test):
    """d(X,Y,B,A) = -d(X,Y,A,B): s(w,B,A) = -s(w,A,B), so both means and nothing else change sign.
    d(Y,X,A,B) = -d(X,Y,A,B): the numerator swaps its terms, the pooled std is the same set.
    d(Y,X,B,A) = d(X,Y,A,B): both flips together cancel."""
    x, y, a, b = random_test
    d = seat_from_embeddings("t", x, y, a, b).effect_size
    assert abs(d) > 0.1  # a real association, so the sign flips are informative
    assert seat_from_embeddings("t", x, y, b, a).effect_size == pytest.approx(-d, abs=1e-12)
    assert seat_from_embeddings("t", y, x, a, b).effect_size == pytest.approx(-d, abs=1e-12)
    assert seat_from_embeddings("t", y, x, b, a).effect_size == pytest.approx(d, abs=1e-12)
    # cosine: rescaling any embedding by a positive factor changes nothing
    scale = np.arange(1, 7)[:, None].astype(float)
    assert seat_from_embeddings("t", x * scale, y, a, b * 3).effect_size == pytest.approx(d, abs=1e-12)


def test_p_value_symmetries(random_test):
    """Exact test: swapping both X<->Y and A<->B maps every partition statistic T to T - sum(s), an
    order-preserving shift, so p is unchanged. Swapping only A<->B reverses the tail: with
    continuous data only the observed partition ties, so p(A,B) + p(B,A) = 1 + 1/C."""
    x, y, a, b = random_test
    r = seat_from_embeddings("t", x, y, a, b)
    assert r.p_value_method == "exact" and r.n_partitions == n_partitions(6, 6) == 924
    assert seat_from_embeddings("t", y, x, b, a).p_value == r.p_value
    flipped = seat_from_embeddings("t", x, y, b, a).p_value
    assert r.p_value + flipped == pytest.approx(1 + 1 / 924, abs=1e-12)


# --------------------------------------------------------------------------------------------
# Sampled vs exact


@pytest.mark.parametrize("shift", [0.0, 0.35, 0.7, 1.2, -0.5])
def test_sampled_p_value_close_to_exact(shift):
    rng = np.random.default_rng(11)
    s_x = rng.normal(size=8) + shift
    s_y = rng.normal(size=8)
    exact = permutation_p_value(s_x, s_y, method="exact")
    assert exact.n_partitions == 12870
    sampled = permutation_p_value(s_x, s_y, n_samples=100_000, seed=3, method="sampled")
    assert sampled.method == "sampled" and sampled.n_partitions == 100_000
    assert abs(sampled.p_value - exact.p_value) <= 0.01, (shift, exact.p_value, sampled.p_value)


def test_auto_method_switches_at_n_samples():
    rng = np.random.default_rng(0)
    s9x, s9y = rng.normal(size=9), rng.normal(size=9)
    assert permutation_p_value(s9x, s9y, n_samples=48_620).method == "exact"  # C(18,9) = 48,620
    assert permutation_p_value(s9x, s9y, n_samples=48_619).method == "sampled"
    s10x, s10y = rng.normal(size=10), rng.normal(size=10)
    assert permutation_p_value(s10x, s10y, n_samples=100_000).method == "sampled"  # C(20,10) = 184,756


def test_extreme_p_values_and_seed():
    s_x, s_y = np.arange(10.0, 20.0), np.arange(0.0, 10.0)  # X holds the 10 largest values
    # exact: only the observed partition reaches T -> 1/C(20,10)
    assert permutation_p_value(s_x, s_y, n_samples=200_000).p_value == pytest.approx(1 / 184_756)
    # sampled: the observed partition is counted, so p is never 0
    assert permutation_p_value(s_x, s_y, n_samples=1000).p_value == pytest.approx(1 / 1000)
    rng = np.random.default_rng(5)
    s_x, s_y = rng.normal(size=30), rng.normal(size=30)
    p1 = permutation_p_value(s_x, s_y, n_samples=2000, seed=1).p_value
    assert permutation_p_value(s_x, s_y, n_samples=2000, seed=1).p_value == p1
    assert permutation_p_value(s_x, s_y, n_samples=2000, seed=2).p_value != p1


def test_ties_count_as_extreme_when_sampled():
    # All s equal: every partition ties with the observed one -> p = 1 exactly, sampled or exact.
    s = np.full(12, 0.1)
    assert permutation_p_value(s, s, n_samples=500).p_value == 1.0
    assert permutation_p_value(s[:4], s[:4]).p_value == 1.0


# --------------------------------------------------------------------------------------------
# Unequal target sets


def test_unequal_targets_error_but_effect_size_reported():
    s_x, s_y = np.array([1.0, 0.5, 0.2]), np.array([0.0, -0.3])
    with pytest.raises(ValueError, match=r"\|X\|=3, \|Y\|=2"):
        permutation_p_value(s_x, s_y)
    vectors = {"x1": (1, 0), "x2": (1, 0.5), "x3": (1, 1), "y1": (0, 1), "y2": (0.2, 1), "a": (1, 0), "b": (0, 1)}
    tests = {
        "uneq": SeatTest("uneq", ("x1", "x2", "x3"), ("y1", "y2"), ("a",), ("b",), ("X", "Y", "A", "B")),
        "eq": SeatTest("eq", ("x1", "x3"), ("y1", "y2"), ("a",), ("b",), ("X", "Y", "A", "B")),
    }
    out = run_seat(tests, lookup_embedder(vectors), BiasConfig(alpha=0.9))
    u = out["tests"]["uneq"]
    assert u["effect_size"] > 1.0
    assert u["p_value"] is None and u["significant"] is False and u["p_value_holm"] is None
    assert "|X|=3 != |Y|=2" in u["p_value_error"]
    assert "p_value_error" not in out["tests"]["eq"]
    # Holm runs over the one test with a p-value
    assert out["summary"]["n_tests"] == 2 and out["summary"]["n_tests_with_p_value"] == 1
    assert out["tests"]["eq"]["p_value_holm"] == out["tests"]["eq"]["p_value"]


def test_constant_associations_are_an_error():
    with pytest.raises(ValueError, match="standard deviation 0"):
        effect_size(np.zeros(3), np.zeros(3))


# --------------------------------------------------------------------------------------------
# Holm-Bonferroni


def test_holm_by_hand():
    # m = 3, sorted 0.002, 0.003, 0.009: 3*0.002 = 0.006, 2*0.003 = 0.006, 1*0.009 = 0.009, all
    # <= 0.01 -> all significant (Bonferroni would drop c: 3*0.009 = 0.027).
    out = holm_bonferroni({"a": 0.002, "b": 0.003, "c": 0.009}, alpha=0.01)
    assert {k: v[1] for k, v in out.items()} == {"a": True, "b": True, "c": True}
    assert [round(out[k][0], 12) for k in "abc"] == [0.006, 0.006, 0.009]
    # m = 4, sorted a 0.001, b 0.004, d 0.005, c 0.02: 4*0.001 = 0.004 (reject), 3*0.004 = 0.012
    # (stop). d's own 2*0.005 = 0.010 would pass, but step-down stops at b: adjusted max(0.012,
    # 0.010) = 0.012. c: 0.02.
    out = holm_bonferroni({"a": 0.001, "b": 0.004, "c": 0.02, "d": 0.005}, alpha=0.01)
    assert {k: v[1] for k, v in out.items()} == {"a": True, "b": False, "c": False, "d": False}
    assert [round(out[k][0], 12) for k in "abdc"] == [0.004, 0.012, 0.012, 0.02]
    assert holm_bonferroni({}, 0.01) == {}
    assert holm_bonferroni({"a": 0.6, "b": 0.7}, 0.01)["a"][0] == 1.0  # capped at 1


# --------------------------------------------------------------------------------------------
# Encoding once


def test_each_distinct_sentence_encoded_once():
    vectors = {k: v for k, v in zip("pqrstuv", [(1, 0), (0, 1), (1, 1), (2, 1), (1, 2), (1, 3), (3, 1)])}
    t1 = SeatTest("t1", ("p", "q"), ("r", "s"), ("t", "u"), ("v",), ("X", "Y", "A", "B"))
    t2 = SeatTest("t2", ("r", "s"), ("p", "q"), ("t", "u", "t"), ("v", "p"), ("X", "Y", "A", "B"))
    calls: list = []
    out = run_seat({"t1": t1, "t2": t2}, lookup_embedder(vectors, calls), BiasConfig())
    assert len(calls) == 1 and sorted(calls[0]) == sorted("pqrstuv")
    assert out["method"]["n_sentences_encoded"] == 7
    # t2 swaps X and Y of t1 (A gains a duplicate of t and B gains p, so d is not exactly -d1)
    assert out["tests"]["t1"]["n_a"] == 2 and out["tests"]["t2"]["n_a"] == 3


# --------------------------------------------------------------------------------------------
# Reading the real SEAT files


def test_every_seat_file_reads(params, data_root):
    files = seat_files(data_root)
    assert len([f for f in files if "sent-bias" in str(f)]) == 46
    assert len([f for f in files if "religion" in str(f)]) == 4
    tests = seat_tests_from_table(seat_table(params))
    assert set(tests) == {f.stem for f in files} and len(tests) == 50
    for f in files:  # each file is ONE pretty-printed JSON object: compare with json.load directly
        raw = json.loads(f.read_text(encoding="utf-8"))
        t = tests[f.stem]
        assert (t.x, t.y, t.a, t.b) == tuple(tuple(raw[s]["examples"]) for s in SETS), f.name
        assert t.categories == tuple(raw[s]["category"] for s in SETS), f.name
        assert len(t.x) == len(t.y) >= 4, f.name  # every published test is balanced
    w1 = tests["sent-weat1"]
    assert (len(w1.x), len(w1.y), len(w1.a), len(w1.b)) == (350, 350, 215, 250)
    assert w1.categories == ("Flowers", "Insects", "Pleasant", "Unpleasant")
    assert w1.x[0] == "This is an aster."
    r = tests["sent-religion2b"]
    assert r.categories == ("ChristianityTerms", "JewishTerms", "Pleasant", "Unpleasant")
    assert (len(r.x), len(r.a), len(r.b)) == (84, 215, 249)


def _tiny_table() -> pd.DataFrame:
    rows = []
    for s, texts in (("targ1", ["a", "b"]), ("targ2", ["c", "d"]), ("attr1", ["e"]), ("attr2", ["f"])):
        for i, t in enumerate(texts):
            rows.append({"test": "t", "set": s, "category": s.upper(), "text": t, "file": "t.jsonl", "line": 10 + i})
    return pd.DataFrame(rows)


def test_table_errors_name_file_and_line():
    df = _tiny_table()
    assert seat_tests_from_table(df)["t"].b == ("f",)
    with pytest.raises(DataError, match=r"t\.jsonl:10: found test 't' without a 'attr2' set"):
        seat_tests_from_table(df[df["set"] != "attr2"])
    bad = df.copy()
    bad.loc[2, "text"] = "  "
    with pytest.raises(DataError, match=r"t\.jsonl:10: found empty text in t/targ2"):
        seat_tests_from_table(bad)
    bad = df.copy()
    bad.loc[3, "set"] = "attr3"
    with pytest.raises(DataError, match="one of targ1, targ2, attr1, attr2"):
        seat_tests_from_table(bad)
    with pytest.raises(DataError, match="missing"):
        seat_tests_from_table(df.drop(columns=["category"]))


def test_load_seat_tests_selects_and_rejects(tmp_path):
    df = pd.concat([_tiny_table(), _tiny_table().assign(test="u")])
    df.to_parquet(tmp_path / "seat.parquet")
    assert list(load_seat_tests(tmp_path, BiasConfig())) == ["t", "u"]
    assert list(load_seat_tests(tmp_path, BiasConfig(tests=("u",)))) == ["u"]
    with pytest.raises(ConfigError, match=r"bias\.tests: no test\(s\) 'nope'.*known: t, u"):
        load_seat_tests(tmp_path, BiasConfig(tests=("nope",)))
    with pytest.raises(FileNotFoundError, match="run the ingest stage"):
        load_seat_tests(tmp_path / "missing", BiasConfig())


# --------------------------------------------------------------------------------------------
# Configuration


def _params_with_bias(params, bias: dict):
    import yaml

    raw = yaml.safe_load(params.path.read_text())
    raw["bias"] = bias
    return parse_params(raw, params.path)


def test_bias_config_from_project_params(params):
    cfg = params.bias
    assert cfg.n_samples == 100_000 and cfg.alpha == 0.01 and cfg.source == "seat"
    assert cfg.gate.max_n_significant_increase >= 0


@pytest.mark.parametrize(
    "bias, message",
    [
        ({"n_sample": 10}, r"bias: unknown key\(s\) 'n_sample'"),
        ({"alpha": 1.5}, r"bias\.alpha: 1\.5; expected a number in \(0, 1\)"),
        ({"n_samples": 0}, r"bias\.n_samples: 0"),
        ({"source": "nope"}, r"bias\.source: no source 'nope'"),
        ({"source": "crows_pairs"}, r"bias\.source: 'crows_pairs' has format 'crows_pairs_csv'"),
        ({"gate": {"max_n_significant_increase": -1}}, r"bias\.gate\.max_n_significant_increase"),
        ({"gate": {"max_mean_abs_effect": 0.1}}, r"bias\.gate: unknown key"),
    ],
)
def test_bias_config_rejects(params, bias, message):
    with pytest.raises(ConfigError, match=message):
        _params_with_bias(params, bias)


# --------------------------------------------------------------------------------------------
# The gate


def _summary(mean: float, sig: int, n: int = 50) -> dict:
    return {"mean_abs_effect_size": mean, "n_significant": sig, "n_tests": n}


def test_gate_passes_within_thresholds():
    cfg = BiasGateConfig(max_mean_abs_effect_size_increase=0.05, max_n_significant_increase=1)
    ok, reasons = gate_bias(_summary(0.34, 11), _summary(0.30, 10), cfg)
    assert ok and len(reasons) == 2 and all(r.startswith("ok: bias:") for r in reasons)
    assert "+0.0400" in reasons[0]


@pytest.mark.parametrize(
    "challenger, failing",
    [
        (_summary(0.36, 10), "mean |effect size| 0.3600 vs champion 0.3000"),
        (_summary(0.30, 12), "12 significant SEAT tests of 50 vs champion 10 (+2; allowed +1)"),
    ],
)
def test_gate_fails_when_worse(challenger, failing):
    ok, reasons = gate_bias(challenger, _summary(0.30, 10), BiasConfig())
    assert not ok
    fails = [r for r in reasons if r.startswith("fail: bias:")]
    assert len(fails) == 1 and failing in fails[0]


def test_gate_accepts_tags_and_full_json_and_no_champion():
    tags = {"mean_abs_effect_size": "0.31", "n_significant": "10", "n_tests": "50"}
    assert gate_bias(tags, {"summary": _summary(0.30, 10), "tests": {}}, BiasConfig())[0]
    assert gate_bias(_summary(0.9, 50), None, BiasConfig()) == (True, ["ok: bias: no reference bias summary to compare with"])
    ok, reasons = gate_bias(_summary(0.30, 10, n=46), _summary(0.30, 10, n=50), BiasConfig())
    assert not ok and "46 SEAT tests, champion on 50" in reasons[0]
    with pytest.raises(ValueError, match="lacks 'n_significant'"):
        gate_bias({"mean_abs_effect_size": 0.1, "n_tests": 5}, _summary(0.1, 1), BiasConfig())


def test_gate_null_threshold_skips_criterion():
    cfg = BiasGateConfig(max_mean_abs_effect_size_increase=None, max_n_significant_increase=0)
    ok, reasons = gate_bias(_summary(0.9, 10), _summary(0.3, 10), cfg)
    assert ok and len(reasons) == 1 and "significant" in reasons[0]


# --------------------------------------------------------------------------------------------
# The README / model-card table


def test_effect_size_table(tmp_path, capsys):
    from simcse_ops.bias import effect_size_table, main

    def entry(d, p, sig):
        return {"effect_size": d, "p_value": p, "significant": sig, "categories": "X vs Y / A vs B"}

    base = {
        "variant": "base",
        "tests": {"t1": entry(0.5, 0.001, True), "t2": entry(-1.234, None, False)},
        "summary": {"mean_abs_effect_size": 0.867, "n_significant": 1, "n_tests": 2, "alpha": 0.01},
    }
    sup = {
        "variant": "sup-nli",
        "tests": {"t1": entry(0.1, 0.4, False)},
        "summary": {"mean_abs_effect_size": 0.1, "n_significant": 0, "n_tests": 1, "alpha": 0.01},
    }
    table = effect_size_table({"base": base, "sup-nli": sup})
    lines = table.splitlines()
    assert lines[0] == "| test | targets / attributes | base | sup-nli |"
    assert lines[2] == "| t1 | X vs Y / A vs B | +0.50* | +0.10 |"
    assert lines[3] == "| t2 | X vs Y / A vs B | -1.23† |  |"
    assert lines[4] == "| **mean \\|d\\|** | | **0.867** | **0.100** |"
    assert lines[5] == "| **significant** | Holm, alpha 0.01 | **1 / 2** | **0 / 1** |"

    for name, r in (("base", base), ("sup-nli", sup)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "bias.json").write_text(json.dumps(r))
    main([str(tmp_path / "base" / "bias.json"), str(tmp_path / "sup-nli" / "bias.json")])
    assert capsys.readouterr().out == table
    with pytest.raises(FileNotFoundError, match="run the bias stage first"):
        main([str(tmp_path / "nope.json")])
