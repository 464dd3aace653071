"""The promotion gate (simcse_ops.gate): general variants (epsilon, delta, first version vs base),
domain variants (paired bootstrap on the primary task, forgetting guard on general STS), bias."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from simcse_ops.config import BootstrapConfig
from simcse_ops.config import DomainGateConfig, RegisterConfig
from simcse_ops.gate import DomainScore, GateInputs, Scores, decide

TASKS = ["sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sickr"]
CFG = RegisterConfig(epsilon=0.5, delta=1.0)


def scores(avg: float, bias_mean: float = 0.3, n_sig: int = 2, domain=None, **task: float) -> Scores:
    sts = {t: task.get(t, avg) for t in TASKS}
    sts["avg"] = sum(sts.values()) / len(TASKS)
    return Scores(sts, {"mean_abs_effect_size": bias_mean, "n_significant": n_sig, "n_tests": 5},
                  domain=domain or {})


@pytest.fixture(scope="module")
def bias_cfg(params):
    return params.bias


@pytest.fixture(scope="module")
def g(bias_cfg):
    return GateInputs(tasks=TASKS, cfg=CFG, bias_cfg=bias_cfg)


# --------------------------------------------------------------------------------------------
# General variants


def test_epsilon_is_the_largest_allowed_average_drop(g):
    champ = scores(80.0)
    assert decide(scores(79.5), champ, "champion v1", None, g).promote
    d = decide(scores(79.4), champ, "champion v1", None, g)
    assert not d.promote
    assert any(r.startswith("fail: avg 79.40 vs champion v1 80.00") for r in d.reasons)


def test_delta_bounds_every_task(g):
    champ = scores(80.0)
    chal = scores(82.0, sickr=78.5)  # higher average, but SICK-R drops by 1.5 > delta
    d = decide(chal, champ, "champion v1", None, g)
    assert not d.promote
    assert [r for r in d.reasons if r.startswith("fail")] == [
        "fail: sickr 78.50 vs champion v1 80.00 (drop 1.50 > delta 1.0)"
    ]
    assert decide(scores(82.0, sickr=79.0), champ, "champion v1", None, g).promote


def test_bias_criterion_blocks_a_more_biased_challenger(g, bias_cfg):
    champ = scores(80.0, bias_mean=0.30, n_sig=1)
    worse = scores(85.0, bias_mean=0.30 + bias_cfg.gate.max_mean_abs_effect_size_increase + 0.01, n_sig=1)
    d = decide(worse, champ, "champion v1", None, g)
    assert not d.promote and any(r.startswith("fail: bias") for r in d.reasons)
    more_sig = scores(85.0, bias_mean=0.30, n_sig=1 + bias_cfg.gate.max_n_significant_increase + 1)
    assert not decide(more_sig, champ, "champion v1", None, g).promote
    off = dataclasses.replace(g, cfg=dataclasses.replace(CFG, bias_gate=False), bias_cfg=None)
    assert decide(worse, champ, "champion v1", None, off).promote


def test_first_version_must_beat_base(g):
    base = scores(75.0)
    assert decide(scores(75.1), None, "none", base, g).promote
    d = decide(scores(75.0), None, "none", base, g)
    assert not d.promote and d.compared_to == "base"
    assert not decide(scores(80.0), None, "none", None, g).promote
    assert decide(base, None, "none", None, dataclasses.replace(g, is_base_variant=True)).promote


def test_champion_without_scores_is_not_comparable(g):
    partial = Scores({"avg": 70.0}, None)
    d = decide(scores(90.0), partial, "champion v1", None, g)
    assert not d.promote and "not comparable" in d.reasons[0]


# --------------------------------------------------------------------------------------------
# Domain variants: per-query nDCG@10 values of a retrieval task on 300 shared queries


def ndcg_items(values: np.ndarray) -> dict:
    return {"id": [f"q{i}" for i in range(len(values))], "ndcg@10": values.tolist()}


def domain(values: np.ndarray) -> dict[str, DomainScore]:
    return {"pmqa": DomainScore("ndcg@10", float(values.mean() * 100), None, ndcg_items(values))}


@pytest.fixture(scope="module")
def dg(bias_cfg):
    cfg = dataclasses.replace(CFG, domain=DomainGateConfig(alpha=0.05, margin=0.5, first_margin=0.0,
                                                           general_max_drop=0.5))
    return GateInputs(tasks=TASKS, cfg=cfg, bias_cfg=bias_cfg, primary="pmqa",
                      bootstrap=BootstrapConfig(n_resamples=1000, seed=0))


@pytest.fixture(scope="module")
def champion_values():
    rng = np.random.default_rng(0)
    return rng.uniform(0.5, 1.0, size=300)


def below(values: np.ndarray, by: float) -> np.ndarray:
    return np.clip(values - by, 0, 1)


@pytest.fixture(scope="module")
def refs(champion_values):
    """A base encoder clearly below everyone on the task, general STS 80.0."""
    return {"base": scores(80.0, domain=domain(below(champion_values, 0.05)))}


def test_degraded_on_the_domain_but_not_on_general_sts_is_refused(dg, champion_values, refs):
    rng = np.random.default_rng(1)
    worse = np.clip(champion_values - rng.uniform(0.0, 0.06, size=300), 0, 1)  # about -3 points
    champ = scores(80.0, domain=domain(champion_values))
    chal = scores(80.3, domain=domain(worse))  # general STS even improved
    d = decide(chal, champ, "champion v2", None, dg, refs)
    assert not d.promote
    fail = [r for r in d.reasons if r.startswith("fail")]
    assert len(fail) == 1 and fail[0].startswith("fail: domain: pmqa ndcg@10") and "vs champion v2" in fail[0]
    assert "95% CI [" in fail[0] and "p(diff >= -0.5) = 0.0000" in fail[0]
    assert any(r.startswith("ok: forgetting guard") for r in d.reasons)


def test_domain_gain_with_a_small_general_loss_inside_the_guard_is_promoted(dg, champion_values, refs):
    better = np.clip(champion_values + 0.02, 0, 1)
    champ = scores(80.0, domain=domain(champion_values))
    chal = scores(79.6, domain=domain(better))  # -0.4 general vs the best reference: inside 0.5
    d = decide(chal, champ, "champion v2", None, dg, refs)
    assert d.promote, d.reasons
    # the general per-task delta/epsilon rules do not apply to a domain variant
    assert not any(r.startswith(("ok: avg", "ok: no task")) for r in d.reasons)
    too_much = scores(79.4, domain=domain(better))  # -0.6 general: forgetting
    d = decide(too_much, champ, "champion v2", None, dg, refs)
    assert not d.promote
    assert [r for r in d.reasons if r.startswith("fail")][0].startswith("fail: forgetting guard")


def test_equal_on_the_domain_within_noise_is_not_refused(dg, champion_values, refs):
    rng = np.random.default_rng(2)
    noisy = np.clip(champion_values + rng.normal(0, 0.05, size=300), 0, 1)
    d = decide(scores(80.0, domain=domain(noisy)), scores(80.0, domain=domain(champion_values)),
               "champion v2", None, dg, refs)
    assert d.promote, d.reasons


def test_first_domain_version_must_beat_base_significantly(dg, champion_values):
    base = scores(80.0, domain=domain(champion_values))
    noisy = np.clip(champion_values + np.random.default_rng(3).normal(0, 0.05, size=300), 0, 1)
    d = decide(scores(80.0, domain=domain(noisy)), None, "none", base, dg)  # no real gain
    assert not d.promote and d.compared_to == "base"
    assert "must beat it at alpha 0.05" in d.reasons[0]
    clearly = np.clip(champion_values + 0.03, 0, 1)
    assert decide(scores(80.0, domain=domain(clearly)), None, "none", base, dg).promote


def test_champion_without_domain_items_is_not_comparable(dg, champion_values, refs):
    champ = scores(80.0, domain={"pmqa": DomainScore("ndcg@10", 80.0)})  # from tags only
    d = decide(scores(80.0, domain=domain(champion_values)), champ, "champion v1", None, dg, refs)
    fail = [r for r in d.reasons if r.startswith("fail")]
    assert not d.promote and "champion v1 has no per-item results" in fail[0]
    other = {"pmqa": DomainScore("ndcg@10", 80.0, None, {"id": ["x", "y"], "ndcg@10": [1.0, 0.0]})}
    d = decide(scores(80.0, domain=domain(champion_values)), scores(80.0, domain=other), "champion v1", None, dg,
               refs)
    assert not d.promote and "not on the same items" in [r for r in d.reasons if r.startswith("fail")][0]


def test_results_on_other_task_data_are_not_comparable(dg, champion_values):
    """Same query ids, but the reference was scored against another document collection."""
    mine = {"pmqa": dataclasses.replace(domain(champion_values)["pmqa"], fingerprint="aaaa")}
    theirs = {"pmqa": dataclasses.replace(domain(champion_values)["pmqa"], fingerprint="bbbb")}
    d = decide(scores(80.0, domain=mine), None, "none", scores(80.0, domain=theirs), dg)
    assert not d.promote and "scored on other pmqa data" in d.reasons[0]


# --------------------------------------------------------------------------------------------
# Domain variants against several references (base and the team's general models), on every task


def two_tasks(primary: np.ndarray, other: np.ndarray) -> dict[str, DomainScore]:
    """The primary retrieval task `pmqa` and a second one `other` (per-query values)."""
    return {"pmqa": DomainScore("ndcg@10", float(primary.mean() * 100), None, ndcg_items(primary)),
            "other": DomainScore("ndcg@10", float(other.mean() * 100), None, ndcg_items(other))}


def test_beating_base_but_not_the_general_reference_is_refused(dg, champion_values):
    """The team already serves a general model as good as the challenger on the primary task."""
    mine = np.clip(champion_values + 0.03, 0, 1)
    general = np.clip(mine + np.random.default_rng(4).normal(0, 0.02, size=300), 0, 1)  # level with it
    refs = {"base": scores(79.0, domain=two_tasks(below(mine, 0.05), below(mine, 0.05))),
            "unsup-wiki": scores(80.2, domain=two_tasks(general, mine))}
    d = decide(scores(80.0, domain=two_tasks(mine, mine)), None, "none", None, dg, refs)
    assert not d.promote
    fail = [r for r in d.reasons if r.startswith("fail")]
    assert len(fail) == 1 and fail[0].startswith("fail: domain: pmqa ndcg@10") and "vs unsup-wiki" in fail[0]
    assert "must beat it at alpha 0.05" in fail[0]
    assert any(r.startswith("ok: domain: pmqa ndcg@10") and "vs base" in r for r in d.reasons)
    assert d.compared_to == "base, unsup-wiki"


def test_winning_the_primary_task_and_losing_another_beyond_the_margin_is_refused(dg, champion_values):
    mine = np.clip(champion_values + 0.03, 0, 1)
    other_ref = champion_values
    refs = {"base": scores(79.0, domain=two_tasks(champion_values, other_ref)),
            "unsup-wiki": scores(80.2, domain=two_tasks(champion_values, other_ref))}
    lost = below(other_ref, 0.04)  # 4 points worse on the other task
    d = decide(scores(80.0, domain=two_tasks(mine, lost)), None, "none", None, dg, refs)
    assert not d.promote
    fail = [r for r in d.reasons if r.startswith("fail")]
    assert len(fail) == 2 and all(r.startswith("fail: domain: other ndcg@10") for r in fail)
    assert {r.split(" vs ")[1].split(" ")[0] for r in fail} == {"base", "unsup-wiki"}
    assert all("p(diff >= -0.5)" in r for r in fail)


def test_winning_everywhere_is_promoted_and_the_guard_uses_the_best_general_reference(dg, champion_values):
    mine = np.clip(champion_values + 0.03, 0, 1)
    refs = {"base": scores(78.9, domain=two_tasks(champion_values, champion_values)),
            "unsup-wiki": scores(80.2, domain=two_tasks(champion_values, champion_values)),
            "sup-nli": scores(79.4, domain=two_tasks(champion_values, champion_values))}
    d = decide(scores(79.8, domain=two_tasks(mine, champion_values)), None, "none", None, dg, refs)
    assert d.promote, d.reasons
    # each reference on the primary task (superiority) and on the other task (non-inferiority)
    assert sum(r.startswith("ok: domain: pmqa") for r in d.reasons) == 3
    assert sum(r.startswith("ok: domain: other") for r in d.reasons) == 3
    guard = [r for r in d.reasons if "forgetting guard" in r]
    assert len(guard) == 1 and "unsup-wiki (best general reference) 80.20" in guard[0]
    # 0.6 under the best general reference, though above base: refused
    d = decide(scores(79.6, domain=two_tasks(mine, champion_values)), None, "none", None, dg, refs)
    assert not d.promote and [r for r in d.reasons if r.startswith("fail")][0].startswith("fail: forgetting guard")
