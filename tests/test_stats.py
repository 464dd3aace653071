"""Bootstrap statistics on cases whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from simcse_ops.stats import (
    average_precision,
    bootstrap_ci,
    bootstrap_indices,
    metric_on,
    paired_bootstrap,
    roc_auc,
)


def _retrieval(values, ids=None, metric="ndcg@10"):
    ids = ids if ids is not None else [f"q{i}" for i in range(len(values))]
    return {"id": list(ids), metric: list(values)}


def _pairs(labels, scores, groups=(), ids=None):
    ids = ids if ids is not None else [f"p{i}" for i in range(len(labels))]
    return {"id": list(ids), "label": list(labels), "score": list(scores), "group": list(groups)}


def test_bootstrap_indices_shape_range_and_seed():
    idx = bootstrap_indices(7, 50, seed=3)
    assert idx.shape == (50, 7)
    assert idx.min() >= 0 and idx.max() <= 6
    np.testing.assert_array_equal(idx, bootstrap_indices(7, 50, seed=3))
    assert not np.array_equal(idx, bootstrap_indices(7, 50, seed=4))


def test_cluster_bootstrap_keeps_group_members_together():
    groups = ["a", "a", "a", "b", "c", "c", "d", "d", "d", "d"]
    rows = bootstrap_indices(len(groups), 200, seed=0, groups=groups)
    assert len(rows) == 200
    members = {g: [i for i, x in enumerate(groups) if x == g] for g in set(groups)}
    lengths = set()
    for row in rows:
        counts = np.bincount(row, minlength=len(groups))
        for idx in members.values():
            # a group is drawn whole, some number of times: its members appear equally often
            assert len(set(counts[idx].tolist())) == 1
        # 4 groups are drawn per resample
        assert sum(counts[idx[0]] for idx in members.values()) == 4
        lengths.add(len(row))
    assert len(lengths) > 1  # rows differ in length: groups have different sizes


def test_metric_on_mean_and_pair_metrics():
    items = _retrieval([0.0, 0.5, 1.0])
    f = metric_on(items, "ndcg@10")
    assert f(np.array([0, 1, 2])) == pytest.approx(50.0)
    assert f(np.array([2, 2, 1])) == pytest.approx(100 * 2.5 / 3)
    pairs = _pairs([0, 1, 0, 1], [0.1, 0.9, 0.8, 0.3])
    # ranking 0.9(+) 0.8(-) 0.3(+) 0.1(-): AP = (1/1 + 2/3) / 2; AUC = 3 of 4 (pos, neg) pairs ordered
    assert metric_on(pairs, "ap")(np.arange(4)) == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert metric_on(pairs, "roc_auc")(np.arange(4)) == pytest.approx(75.0)
    assert np.isnan(metric_on(pairs, "ap")(np.array([1, 3])))  # positives only: undefined
    with pytest.raises(ValueError, match="unknown retrieval metric 'mrr@10'"):
        metric_on(items, "mrr@10")
    with pytest.raises(ValueError, match="unknown pair metric"):
        metric_on(pairs, "ndcg@10")


def test_fast_ap_and_auc_equal_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 80))
        labels = rng.integers(0, 2, n)
        if labels.min() == labels.max():
            continue
        scores = np.round(rng.random(n), 1)  # many ties
        assert average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
        assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_bootstrap_ci_contains_estimate_and_is_deterministic():
    rng = np.random.default_rng(1)
    items = _retrieval(rng.random(200))
    low, high = bootstrap_ci(items, "ndcg@10", n_resamples=500, seed=7)
    mean = 100 * np.mean(items["ndcg@10"])
    assert low < mean < high
    assert (low, high) == bootstrap_ci(items, "ndcg@10", n_resamples=500, seed=7)
    assert bootstrap_ci(_retrieval([0.4] * 10), "ndcg@10") == pytest.approx((40.0, 40.0))
    # a wider confidence gives a wider interval
    low99, high99 = bootstrap_ci(items, "ndcg@10", n_resamples=500, confidence=0.99, seed=7)
    assert low99 <= low and high99 >= high


def test_bootstrap_ci_uses_groups_for_pairs():
    # each group holds one positive and one negative; by group the interval differs from by item
    rng = np.random.default_rng(2)
    labels = [1, 0] * 50
    scores = (rng.random(100) + np.array(labels) * 0.3).tolist()
    grouped = _pairs(labels, scores, groups=[str(i // 2) for i in range(100)])
    flat = _pairs(labels, scores)
    assert bootstrap_ci(grouped, "ap", n_resamples=200) != bootstrap_ci(flat, "ap", n_resamples=200)
    lo, hi = bootstrap_ci(grouped, "roc_auc", n_resamples=200)
    assert lo < metric_on(grouped, "roc_auc")(np.arange(100)) < hi


def test_paired_bootstrap_identical_systems():
    rng = np.random.default_rng(3)
    a = _retrieval(rng.random(50))
    r = paired_bootstrap(a, dict(a), "ndcg@10", n_resamples=300)
    assert r.diff == 0.0
    assert r.ci_low <= 0.0 <= r.ci_high
    assert r.n == 50 and len(r.diffs) == 300
    assert r.p_at_most(0) == 1.0 and r.p_at_least(0) == 1.0


def test_paired_bootstrap_better_on_every_item():
    rng = np.random.default_rng(4)
    base = rng.random(80) * 0.8
    a, b = _retrieval(base + 0.1), _retrieval(base)
    r = paired_bootstrap(a, b, "ndcg@10", n_resamples=400)
    assert r.diff == pytest.approx(10.0)
    assert r.ci_low > 0
    assert r.p_at_most(0) == 0.0
    # "b is worse than a by more than 5 points" is significant; by more than 15 it is not
    rb = paired_bootstrap(b, a, "ndcg@10", n_resamples=400)
    assert rb.p_at_least(-5) == 0.0 and rb.p_at_least(-15) == 1.0


def test_paired_bootstrap_pairs_better_on_every_item():
    labels = [1, 0] * 30
    b_scores = np.linspace(0, 1, 60)
    a_scores = np.where(np.array(labels) == 1, 1.0, 0.0)  # perfectly separated
    a = _pairs(labels, a_scores, groups=[str(i // 2) for i in range(60)])
    b = _pairs(labels, b_scores, groups=[str(i // 2) for i in range(60)])
    r = paired_bootstrap(a, b, "roc_auc", n_resamples=200)
    assert r.diff > 0 and r.ci_low > 0 and r.p_at_most(0) == 0.0


def test_paired_bootstrap_aligns_by_id():
    rng = np.random.default_rng(5)
    va, vb = rng.random(40), rng.random(40)
    ids = [f"q{i}" for i in range(40)]
    a = _retrieval(va, ids)
    b = _retrieval(vb, ids)
    b_shuffled = _retrieval(vb[::-1], ids[::-1])
    r1 = paired_bootstrap(a, b, "ndcg@10", n_resamples=100, seed=1)
    r2 = paired_bootstrap(a, b_shuffled, "ndcg@10", n_resamples=100, seed=1)
    assert r1.diff == pytest.approx(r2.diff)
    np.testing.assert_allclose(r1.diffs, r2.diffs)


def test_paired_bootstrap_misaligned_ids_are_named():
    a = _retrieval([0.1, 0.2, 0.3], ["q1", "q2", "q3"])
    b = _retrieval([0.1, 0.2, 0.3], ["q1", "q2", "q9"])
    with pytest.raises(ValueError, match=r"only in a: \['q3'\].*only in b: \['q9'\]"):
        paired_bootstrap(a, b, "ndcg@10")
    with pytest.raises(ValueError, match="repeats ids"):
        paired_bootstrap(_retrieval([0.1, 0.2], ["q1", "q1"]), _retrieval([0.1, 0.2], ["q1", "q1"]), "ndcg@10")


def test_paired_bootstrap_seed_determinism():
    rng = np.random.default_rng(6)
    a, b = _retrieval(rng.random(30)), _retrieval(rng.random(30))
    r1 = paired_bootstrap(a, b, "ndcg@10", n_resamples=100, seed=11)
    r2 = paired_bootstrap(a, b, "ndcg@10", n_resamples=100, seed=11)
    r3 = paired_bootstrap(a, b, "ndcg@10", n_resamples=100, seed=12)
    np.testing.assert_array_equal(r1.diffs, r2.diffs)
    assert not np.array_equal(r1.diffs, r3.diffs)


def test_vectorised_speed_is_fine():
    import time

    rng = np.random.default_rng(7)
    a, b = _retrieval(rng.random(500)), _retrieval(rng.random(500))
    t0 = time.perf_counter()
    paired_bootstrap(a, b, "ndcg@10", n_resamples=1000)
    assert time.perf_counter() - t0 < 2.0


def test_graded_items_spearman_and_pearson_as_scipy_and_bootstrapped():
    from scipy.stats import pearsonr, spearmanr

    from simcse_ops.stats import correlation

    rng = np.random.default_rng(0)
    gold = rng.integers(0, 5, size=60).astype(float)  # ties, as in human ratings
    cos = gold / 5 + rng.normal(0, 0.3, size=60)
    assert correlation("spearman", gold, cos) == pytest.approx(spearmanr(gold, cos)[0] * 100)
    assert correlation("pearson", gold, cos) == pytest.approx(pearsonr(gold, cos)[0] * 100)
    assert np.isnan(correlation("spearman", np.ones(5), np.arange(5.0)))
    items = {"id": [str(i) for i in range(60)], "gold": gold.tolist(), "score": cos.tolist()}
    lo, hi = bootstrap_ci(items, "spearman", 500, 0.95, 0)
    assert lo < correlation("spearman", gold, cos) < hi
    worse = {**items, "score": (cos + rng.normal(0, 0.5, size=60)).tolist()}
    t = paired_bootstrap(items, worse, "spearman", 500, 0.95, 0)
    assert t.diff > 0 and t.ci_low <= t.diff <= t.ci_high
    with pytest.raises(ValueError, match="unknown graded-pair metric 'ap'"):
        bootstrap_ci(items, "ap", 10, 0.95, 0)
