"""Bootstrap statistics for per-item evaluation results.

A task's result is a set of n items (queries of a retrieval task, pairs of a pair task) and a
metric M computed on them. The bootstrap (Efron & Tibshirani 1993) estimates how M would vary
over other samples of items from the same population: draw R resamples of n items with
replacement, compute M on each, and read off percentiles.

- Percentile interval at confidence c: with alpha = 1 - c, [q_{alpha/2}, q_{1-alpha/2}] of the
  R resampled values M*_1..M*_R.
- Cluster bootstrap: when items come in groups that are not independent (the pairs built from one
  question share its embedding), whole groups are resampled with replacement and their items
  concatenated (Field & Welsh 2007), so a group's members always stay together.
- Paired bootstrap (Koehn 2004; Berg-Kirkpatrick et al. 2012): two systems a and b scored on the
  SAME items. Each resample r applies the same indices I_r to both, giving
      d*_r = M(a[I_r]) - M(b[I_r]),
  whose percentile interval brackets the observed d = M(a) - M(b). One-sided percentile
  bootstrap p-values are fractions of resampled differences:
      p_at_most(x)  = #{r : d*_r <= x} / R   ("a beats b by more than x" is significant at alpha
                                              when p_at_most(x) < alpha; x = 0 for "a beats b"),
      p_at_least(x) = #{r : d*_r >= x} / R   ("a is worse than b by more than a margin m" is
                                              significant when p_at_least(-m) < alpha).

Items are stored as a mapping of equal-length lists (what domain.json holds per task):
- retrieval items {"id": [...], "ndcg@10": [...], "mrr@10": [...], ...}: per-query values in
  0..1; the metric is their mean x100, computed for all R resamples at once.
- pair items {"id": [...], "label": [0/1], "score": [cosine], "group": [...]}: metrics `ap`
  (average precision, as sklearn's average_precision_score that MTEB's pair classification
  reports) and `roc_auc` (as sklearn's roc_auc_score), x100; both re-implemented in numpy for
  speed and tested equal to sklearn. A resample holding one class only leaves them undefined (NaN);
  such resamples are dropped from the percentiles and counted.
- graded pair items {"id": [...], "gold": [human score], "score": [cosine]} (an STS-style
  domain task): metrics `spearman` (Pearson's r of the ranks, ties at their average rank) and
  `pearson`, x100, recomputed on every resample. A resample whose gold or cosine values are all
  equal leaves them undefined (NaN), dropped and counted as above.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

PAIR_METRICS = ("ap", "roc_auc")
PAIR_FIELDS = ("id", "label", "score", "group")
GRADED_METRICS = ("spearman", "pearson")

Indices = np.ndarray | list[np.ndarray]


def bootstrap_indices(
    n: int, n_resamples: int, seed: int, groups: Sequence | np.ndarray | None = None
) -> Indices:
    """Resampled item indices.

    Without `groups`: an int array (R, n), each row n draws with replacement from 0..n-1.
    With `groups` (one label per item): each resample draws G of the G distinct groups with
    replacement and concatenates their items' indices (in item order within a group), so rows
    differ in length; the result is then a list of R int arrays.
    """
    if n < 1:
        raise ValueError(f"bootstrap: no items to resample (n={n})")
    if n_resamples < 1:
        raise ValueError(f"bootstrap: n_resamples must be >= 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    if groups is None:
        return rng.integers(0, n, size=(n_resamples, n))
    groups = np.asarray(groups)
    if len(groups) != n:
        raise ValueError(f"bootstrap: {len(groups)} group labels for {n} items")
    _, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")  # items sorted by group, item order kept within
    counts = np.bincount(inverse)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    members = [order[s : s + c] for s, c in zip(starts, counts, strict=True)]
    picks = rng.integers(0, len(members), size=(n_resamples, len(members)))
    return [np.concatenate([members[g] for g in row]) for row in picks]


def _is_pair_items(items: Mapping[str, Sequence]) -> bool:
    return "label" in items and "score" in items


def _is_graded_items(items: Mapping[str, Sequence]) -> bool:
    return "gold" in items and "score" in items


def _groups(items: Mapping[str, Sequence]) -> np.ndarray | None:
    """The pair items' group labels, or None when there are none (missing, empty or all blank)."""
    if not _is_pair_items(items):
        return None
    g = items.get("group")
    if g is None or len(g) == 0 or all(x is None or x == "" for x in g):
        return None
    return np.asarray([str(x) for x in g])


def _n_items(items: Mapping[str, Sequence]) -> int:
    if "id" not in items:
        raise ValueError(f"items have no 'id' list (keys: {sorted(items)})")
    n = len(items["id"])
    for k, v in items.items():
        if k == "group" and len(v) == 0:
            continue
        if len(v) != n:
            raise ValueError(f"items: {k!r} has {len(v)} values but 'id' has {n}")
    return n


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision in 0..1, equal to sklearn's `average_precision_score` (tests check it).

    With the distinct scores t_1 > t_2 > ... as thresholds, P_k and R_k the precision and recall
    of "score >= t_k": AP = sum_k (R_k - R_{k-1}) P_k, R_0 = 0 (no interpolation). It is ~20x
    faster than sklearn's input checking per call, which matters in a 1000-resample loop.
    """
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last position of each distinct score
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / tp[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC in 0..1 as the Mann-Whitney statistic, equal to sklearn's `roc_auc_score`.

    AUC = (sum of the positives' ranks - P(P+1)/2) / (P N), ties taking average ranks; this is
    the trapezoidal area under the ROC curve sklearn computes.
    """
    ranks = rankdata(scores)
    pos = labels == 1
    n_pos = int(pos.sum())
    n_neg = len(labels) - n_pos
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _pair_metric(name: str, labels: np.ndarray, scores: np.ndarray) -> float:
    if len(labels) == 0 or labels.min() == labels.max():
        return float("nan")  # one class only: AP / AUC undefined
    if name == "ap":
        return average_precision(labels, scores) * 100.0
    return roc_auc(labels, scores) * 100.0


def correlation(name: str, gold: np.ndarray, scores: np.ndarray) -> float:
    """Spearman's rho (Pearson's r of average ranks) or Pearson's r, x100; NaN when either side
    is constant (as scipy.stats.spearmanr / pearsonr, which tests compare it with)."""
    if name == "spearman":
        gold, scores = rankdata(gold), rankdata(scores)
    a, b = gold - gold.mean(), scores - scores.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den * 100.0) if den > 0 else float("nan")


def _batch_metric(items: Mapping[str, Sequence], metric: str) -> Callable[[Indices], np.ndarray]:
    """A function of R index rows -> (R,) metric values x100; vectorised for mean metrics."""
    _n_items(items)
    if _is_graded_items(items):
        if metric not in GRADED_METRICS:
            raise ValueError(f"unknown graded-pair metric {metric!r}; expected one of {', '.join(GRADED_METRICS)}")
        gold = np.asarray(items["gold"], dtype=np.float64)
        cos = np.asarray(items["score"], dtype=np.float64)

        def graded(rows: Indices) -> np.ndarray:
            return np.array([correlation(metric, gold[r], cos[r]) for r in rows])

        return graded
    if _is_pair_items(items):
        if metric not in PAIR_METRICS:
            raise ValueError(f"unknown pair metric {metric!r}; expected one of {', '.join(PAIR_METRICS)}")
        labels = np.asarray(items["label"], dtype=np.int64)
        scores = np.asarray(items["score"], dtype=np.float64)
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(f"pair items: labels must be 0 or 1, found {sorted(set(labels.tolist()))}")

        def pairs(rows: Indices) -> np.ndarray:
            return np.array([_pair_metric(metric, labels[r], scores[r]) for r in rows])

        return pairs
    if metric not in items or metric == "id":
        names = [k for k in items if k != "id"]
        raise ValueError(f"unknown retrieval metric {metric!r}; these items have {', '.join(names)}")
    values = np.asarray(items[metric], dtype=np.float64)

    def means(rows: Indices) -> np.ndarray:
        if isinstance(rows, np.ndarray) and rows.ndim == 2:
            return values[rows].mean(axis=1) * 100.0  # (R, n) -> (R,)
        return np.array([values[r].mean() * 100.0 for r in rows])

    return means


def metric_on(items: Mapping[str, Sequence], metric: str) -> Callable[[np.ndarray], float]:
    """The metric x100 as a function of a 1-D array of item indices (repeats allowed).

    Retrieval items: mean of the per-query values of `metric` x100. Pair items: `ap` or
    `roc_auc` of (label, score) x100 (NaN when the indices hold one class only).
    """
    batch = _batch_metric(items, metric)

    def on(idx: np.ndarray) -> float:
        return float(batch(np.asarray(idx, dtype=np.int64)[None, :])[0])

    return on


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    alpha = 1.0 - confidence
    low, high = np.percentile(values, [100.0 * alpha / 2, 100.0 * (1 - alpha / 2)])
    return float(low), float(high)


def bootstrap_ci(
    items: Mapping[str, Sequence],
    metric: str,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval (low, high) of the metric x100.

    Pair items with group labels are resampled by group (cluster bootstrap); everything else by
    item. Resamples where the metric is undefined (one class only) are left out.
    """
    n = _n_items(items)
    rows = bootstrap_indices(n, n_resamples, seed, groups=_groups(items))
    return _percentiles(_batch_metric(items, metric)(rows), confidence)


def _align(items_a: Mapping[str, Sequence], items_b: Mapping[str, Sequence]) -> dict[str, list]:
    """Reorder b's items to a's `id` order; error naming the ids when the two sets differ."""
    ids_a = [str(x) for x in items_a["id"]]
    ids_b = [str(x) for x in items_b["id"]]
    for name, ids in (("a", ids_a), ("b", ids_b)):
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            dup = sorted({x for x in ids if x in seen or seen.add(x)})
            raise ValueError(f"paired bootstrap: system {name} repeats ids {dup[:10]}")
    only_a = sorted(set(ids_a) - set(ids_b))
    only_b = sorted(set(ids_b) - set(ids_a))
    if only_a or only_b:
        raise ValueError(
            f"paired bootstrap: the two systems are scored on different items; "
            f"only in a: {only_a[:10]}{' ...' if len(only_a) > 10 else ''} ({len(only_a)}), "
            f"only in b: {only_b[:10]}{' ...' if len(only_b) > 10 else ''} ({len(only_b)})"
        )
    pos_b = {x: i for i, x in enumerate(ids_b)}
    perm = np.array([pos_b[x] for x in ids_a], dtype=np.int64)
    out: dict[str, list] = {}
    for k, v in items_b.items():
        out[k] = list(v) if (k == "group" and len(v) == 0) else [v[i] for i in perm]
    return out


@dataclass(frozen=True)
class PairedBootstrap:
    """Paired bootstrap of d = M(a) - M(b) (x100 points). See the module docstring for the maths."""

    metric: str
    diff: float  # observed M(a) - M(b)
    ci_low: float
    ci_high: float
    diffs: np.ndarray  # (R',) resampled differences, undefined resamples dropped
    n: int  # items
    confidence: float
    n_undefined: int = 0  # resamples where the metric was undefined for a or b

    def p_at_most(self, x: float) -> float:
        """Fraction of resampled differences <= x."""
        return float(np.mean(self.diffs <= x)) if len(self.diffs) else float("nan")

    def p_at_least(self, x: float) -> float:
        """Fraction of resampled differences >= x."""
        return float(np.mean(self.diffs >= x)) if len(self.diffs) else float("nan")


def paired_bootstrap(
    items_a: Mapping[str, Sequence],
    items_b: Mapping[str, Sequence],
    metric: str,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedBootstrap:
    """Paired bootstrap of metric(a) - metric(b) on the same items, aligned by `id`.

    b is reordered to a's ids; the resampled indices (by a's groups for grouped pair items) are
    applied to both systems.
    """
    n = _n_items(items_a)
    _n_items(items_b)
    b = _align(items_a, items_b)
    groups = _groups(items_a)
    groups_b = _groups(b)
    if groups is not None and groups_b is not None and not np.array_equal(groups, groups_b):
        raise ValueError("paired bootstrap: the two systems put the same ids in different groups")
    everything = np.arange(n)[None, :]
    fa, fb = _batch_metric(items_a, metric), _batch_metric(b, metric)
    diff = float(fa(everything)[0] - fb(everything)[0])
    rows = bootstrap_indices(n, n_resamples, seed, groups=groups)
    diffs = fa(rows) - fb(rows)
    undefined = np.isnan(diffs)
    diffs = diffs[~undefined]
    low, high = _percentiles(diffs, confidence)
    return PairedBootstrap(
        metric=metric,
        diff=diff,
        ci_low=low,
        ci_high=high,
        diffs=diffs,
        n=n,
        confidence=confidence,
        n_undefined=int(undefined.sum()),
    )
