"""Social-bias probes for sentence encoders: SEAT (May et al. 2019). The bias criterion of the
promotion gate is `gate.gate_bias`.

SEAT is the sentence-level version of WEAT (Caliskan et al. 2017). A test names two target sets
X, Y (e.g. sentences about European-American and African-American names) and two attribute sets
A, B (pleasant and unpleasant sentences). With cosine similarity of sentence embeddings,

    s(w, A, B) = mean_{a in A} cos(w, a) - mean_{b in B} cos(w, b)              (association)

    d = (mean_{x in X} s(x) - mean_{y in Y} s(y)) / std_{w in X u Y} s(w)        (effect size)

with the sample standard deviation (ddof=1) over the |X| + |Y| targets. d > 0 means X is closer
to A (and Y to B) than the other way round; |d| is the size of the association, in pooled
standard deviations (0.2 small, 0.5 medium, 0.8 large in Cohen's convention).

Significance is a one-sided permutation test of the statistic T(X) = sum_{x in X} s(x) (May et
al. 2019 and the sent-bias reference, `weat.py`): under the null hypothesis that X and Y are
exchangeable, every split of X u Y into two halves of size |X| is equally likely, and

    p = #{partitions X_i of X u Y with T(X_i) >= T(X)} / #{partitions}

counting ties as "at least as extreme". Partitions are the C(|X|+|Y|, |X|) subsets X_i of size
|X| (X_i and its complement are different partitions; the observed X is one of them, so p >= 1/C).

- exact: when C(|X|+|Y|, |X|) <= n_samples, every partition is enumerated.
- sampled: otherwise n_samples - 1 uniformly random partitions are drawn (numpy PCG64 seeded with
  `seed`) and the observed partition is counted as one more: p = (1 + #{draws >= T(X)}) /
  n_samples. Including the observed partition makes the estimate a valid p-value (never 0;
  Phipson & Smyth 2010) and matches sent-bias, which "biases by 1".

"Ties" are partition sums within 1e-9 * sum_w |s(w)| of T(X): the same set of values summed in a
different order differs in the last bits, and such partitions must count as equal.

Unequal |X| and |Y| are an error for the permutation test (it is defined over equal-size
re-partitions here, as in SEAT); the effect size is still reported, with p_value null and the
reason in `p_value_error`.

Across the tests of one run, significance uses Holm-Bonferroni at `alpha` (default 0.01): with the
m p-values sorted p_(1) <= ... <= p_(m), the adjusted p-value is
p~_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)), and a test is significant iff p~ <= alpha (the
step-down procedure, which controls the family-wise error rate).

Each distinct sentence is embedded once for all tests; s(w) is computed once per test as
w_hat . (mean_a a_hat - mean_b b_hat) (unit vectors), and partition sums are numpy gathers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from simcse_ops.config import BiasConfig, ConfigError
from simcse_ops.encoder import encode, load_sentence_transformer
from simcse_ops.errors import DataError, MissingInputError
from simcse_ops.sts import embed_unique

EmbedFn = Callable[[list[str]], np.ndarray]

SETS = ("targ1", "targ2", "attr1", "attr2")  # X, Y, A, B
TIE_RTOL = 1e-9
# Random keys drawn per chunk in the sampled test: bounds memory (~16 MB of float64).
_CHUNK_ELEMENTS = 2_000_000


# --------------------------------------------------------------------------------------------
# Configuration: params.yaml `bias`


# --------------------------------------------------------------------------------------------
# The statistics


def _unit_rows(emb: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; a zero row stays zero (its cosine with anything is 0)."""
    emb = np.asarray(emb, dtype=np.float64)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return np.divide(emb, norms, out=np.zeros_like(emb), where=norms > 0)


def association(w: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """s(w, A, B) = mean_a cos(w, a) - mean_b cos(w, b) for each row w: (N, D), (NA, D), (NB, D) -> (N,).

    The mean of cosines equals w_hat . mean(a_hat), so this is one matrix-vector product.
    """
    if len(a) == 0 or len(b) == 0:
        raise ValueError(f"association needs non-empty attribute sets; got |A|={len(a)}, |B|={len(b)}")
    direction = _unit_rows(a).mean(axis=0) - _unit_rows(b).mean(axis=0)  # (D,)
    return _unit_rows(w) @ direction


def effect_size(s_x: np.ndarray, s_y: np.ndarray) -> float:
    """(mean s(X) - mean s(Y)) / std(s(X u Y), ddof=1)."""
    s_x = np.asarray(s_x, dtype=np.float64)
    s_y = np.asarray(s_y, dtype=np.float64)
    if len(s_x) == 0 or len(s_y) == 0:
        raise ValueError(f"effect size needs non-empty target sets; got |X|={len(s_x)}, |Y|={len(s_y)}")
    std = float(np.std(np.concatenate([s_x, s_y]), ddof=1))
    if not std > 0:
        raise ValueError(
            "effect size undefined: every target has the same association s(w) (standard deviation 0); "
            "the encoder does not separate the target sentences"
        )
    return float((s_x.mean() - s_y.mean()) / std)


def n_partitions(n_x: int, n_y: int) -> int:
    """Number of equal-size re-partitions: C(n_x + n_y, n_x)."""
    return math.comb(n_x + n_y, n_x)


@dataclass(frozen=True)
class PValue:
    p_value: float
    method: Literal["exact", "sampled"]
    n_partitions: int  # partitions the p-value is a fraction of (all of them, or n_samples)


def permutation_p_value(
    s_x: np.ndarray,
    s_y: np.ndarray,
    n_samples: int = 100_000,
    seed: int = 0,
    method: Literal["auto", "exact", "sampled"] = "auto",
) -> PValue:
    """One-sided permutation p-value of T = sum s(X) over re-partitions of X u Y (module docstring).

    `method="auto"` is exact when C(|X|+|Y|, |X|) <= n_samples, else sampled.
    """
    s_x = np.asarray(s_x, dtype=np.float64)
    s_y = np.asarray(s_y, dtype=np.float64)
    n_x, n_y = len(s_x), len(s_y)
    if n_x != n_y:
        raise ValueError(
            f"the permutation test needs |X| == |Y| (equal-size re-partitions of X u Y); "
            f"got |X|={n_x}, |Y|={n_y}. Balance the target sets of this test"
        )
    if n_x == 0:
        raise ValueError("the permutation test needs non-empty target sets")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1; got {n_samples}")
    s_xy = np.concatenate([s_x, s_y])  # (2n,)
    total = n_partitions(n_x, n_y)
    tol = TIE_RTOL * float(np.abs(s_xy).sum())
    if method == "auto":
        method = "exact" if total <= n_samples else "sampled"

    if method == "exact":
        # combinations() starts with (0, ..., n_x - 1): the observed X, summed the same way.
        idx = np.array(list(itertools.combinations(range(2 * n_x), n_x)), dtype=np.int64)  # (C, n)
        stats = s_xy[idx].sum(axis=1)
        observed = stats[0]
        hits = int(np.count_nonzero(stats >= observed - tol))
        return PValue(hits / total, "exact", total)

    if method != "sampled":
        raise ValueError(f"method must be 'auto', 'exact' or 'sampled'; got {method!r}")
    observed = s_xy[:n_x].sum()
    rng = np.random.default_rng(seed)
    n_draws = n_samples - 1
    chunk = max(1, _CHUNK_ELEMENTS // (2 * n_x))
    hits = 0
    for start in range(0, n_draws, chunk):
        k = min(chunk, n_draws - start)
        # The n_x smallest of 2n iid uniform keys index a uniformly random n_x-subset.
        keys = rng.random((k, 2 * n_x))
        idx = np.argpartition(keys, n_x - 1, axis=1)[:, :n_x]  # (k, n)
        stats = s_xy[idx].sum(axis=1)
        hits += int(np.count_nonzero(stats >= observed - tol))
    return PValue((1 + hits) / n_samples, "sampled", n_samples)


def holm_bonferroni(p_values: Mapping[str, float], alpha: float = 0.01) -> dict[str, tuple[float, bool]]:
    """Holm's step-down adjustment -> {name: (adjusted p, significant at alpha)}.

    Sorted ascending (ties by name), p~_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)).
    """
    order = sorted(p_values, key=lambda n: (p_values[n], n))
    m = len(order)
    out: dict[str, tuple[float, bool]] = {}
    running = 0.0
    for i, name in enumerate(order):
        running = max(running, min(1.0, (m - i) * float(p_values[name])))
        out[name] = (running, running <= alpha)
    return out


# --------------------------------------------------------------------------------------------
# Tests as data


@dataclass(frozen=True)
class SeatTest:
    """One SEAT test: targets X (targ1), Y (targ2), attributes A (attr1), B (attr2)."""

    name: str
    x: tuple[str, ...]
    y: tuple[str, ...]
    a: tuple[str, ...]
    b: tuple[str, ...]
    categories: tuple[str, str, str, str]  # of X, Y, A, B
    file: str = ""

    def sentences(self) -> list[str]:
        return [*self.x, *self.y, *self.a, *self.b]


def seat_tests_from_table(df: pd.DataFrame, path: Path | str = "seat.parquet") -> dict[str, SeatTest]:
    """Group SEAT rows (schema `schemas.SEAT`: test, set, category, text, file, line) into tests.

    Rows keep their order within a set. Every test must have the four sets, each non-empty, with
    one category each; anything else is a `DataError` naming the file and line.
    """
    needed = {"test", "set", "category", "text"}
    missing = needed - set(df.columns)
    if missing:
        raise DataError(path, None, f"columns {sorted(df.columns)}", f"the SEAT schema (missing {sorted(missing)})")
    if len(df) == 0:
        raise DataError(path, None, "no rows", "at least one SEAT test")
    has_loc = {"file", "line"} <= set(df.columns)
    tests: dict[str, SeatTest] = {}
    for name, g in df.groupby("test", sort=True):
        first = g.iloc[0]
        where = (first["file"], int(first["line"])) if has_loc else (path, None)
        bad = sorted(set(g["set"]) - set(SETS))
        if bad:
            row = g[g["set"].isin(bad)].iloc[0]
            loc = (row["file"], int(row["line"])) if has_loc else where
            raise DataError(*loc, f"set {row['set']!r} in test {name!r}", f"one of {', '.join(SETS)}")
        parts: dict[str, tuple[str, ...]] = {}
        cats: list[str] = []
        for s in SETS:
            rows = g[g["set"] == s]
            if len(rows) == 0:
                raise DataError(*where, f"test {name!r} without a {s!r} set", f"the four sets {', '.join(SETS)}")
            texts = rows["text"].tolist()
            empty = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
            if empty:
                row = rows.iloc[empty[0]]
                loc = (row["file"], int(row["line"])) if has_loc else where
                raise DataError(*loc, f"empty text in {name}/{s}", "a non-empty sentence")
            c = sorted(set(rows["category"]))
            if len(c) != 1:
                raise DataError(*where, f"categories {c} in {name}/{s}", "one category per set")
            parts[s] = tuple(texts)
            cats.append(str(c[0]))
        tests[str(name)] = SeatTest(
            name=str(name),
            x=parts["targ1"],
            y=parts["targ2"],
            a=parts["attr1"],
            b=parts["attr2"],
            categories=(cats[0], cats[1], cats[2], cats[3]),
            file=str(first["file"]) if has_loc else str(path),
        )
    return tests


def load_seat_tests(data_dir: Path | str, cfg: BiasConfig, params_path: Path | str = "params.yaml") -> dict[str, SeatTest]:
    """The tests `cfg.tests` (all when empty) from `<data_dir>/<cfg.source>.parquet`."""
    path = Path(data_dir) / f"{cfg.source}.parquet"
    if not path.is_file():
        raise MissingInputError(f"{path}: not found; run the ingest stage first (dvc repro ingest)")
    tests = seat_tests_from_table(pd.read_parquet(path), path)
    if not cfg.tests:
        return tests
    unknown = [t for t in cfg.tests if t not in tests]
    if unknown:
        raise ConfigError(
            f"{params_path}: bias.tests: no test(s) {', '.join(map(repr, unknown))} in {path}; "
            f"known: {', '.join(sorted(tests))}"
        )
    return {t: tests[t] for t in cfg.tests}


# --------------------------------------------------------------------------------------------
# Running the tests


@dataclass(frozen=True)
class SeatResult:
    name: str
    effect_size: float
    p_value: float | None
    p_value_method: str | None
    p_value_error: str | None
    n_partitions: int | None
    n_x: int
    n_y: int
    n_a: int
    n_b: int


def seat_from_embeddings(
    name: str, x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray, n_samples: int = 100_000, seed: int = 0
) -> SeatResult:
    """Effect size and permutation p-value of one test from its embeddings (rows)."""
    s = association(np.concatenate([x, y]), a, b)
    s_x, s_y = s[: len(x)], s[len(x) :]
    d = effect_size(s_x, s_y)
    p: PValue | None = None
    error = None
    if len(x) != len(y):
        # Checked here rather than caught: the permutation test is undefined, the effect size is not.
        error = (
            f"no permutation test: |X|={len(x)} != |Y|={len(y)} (SEAT re-partitions X u Y into "
            f"equal halves); balance the target sets of {name}"
        )
    else:
        p = permutation_p_value(s_x, s_y, n_samples=n_samples, seed=seed)
    return SeatResult(
        name=name,
        effect_size=d,
        p_value=p.p_value if p else None,
        p_value_method=p.method if p else None,
        p_value_error=error,
        n_partitions=p.n_partitions if p else None,
        n_x=len(x),
        n_y=len(y),
        n_a=len(a),
        n_b=len(b),
    )


def run_seat(tests: Mapping[str, SeatTest], embed: EmbedFn, cfg: BiasConfig) -> dict[str, Any]:
    """Run every test with one embedding pass -> the `bias.json` mapping.

    {"tests": {name: {effect_size, p_value, p_value_holm, significant, p_value_method, n_partitions,
    n_x, n_y, n_a, n_b, categories}}, "summary": {mean_abs_effect_size, n_significant, n_tests,
    n_tests_with_p_value, alpha}}.
    """
    if not tests:
        raise ValueError("no SEAT tests to run")
    all_sentences = [s for t in tests.values() for s in t.sentences()]
    index, emb = embed_unique(embed, all_sentences)

    def rows(texts: Sequence[str]) -> np.ndarray:
        return emb[np.fromiter((index[t] for t in texts), dtype=np.int64, count=len(texts))]

    results = {
        name: seat_from_embeddings(
            name, rows(t.x), rows(t.y), rows(t.a), rows(t.b), n_samples=cfg.n_samples, seed=cfg.seed
        )
        for name, t in tests.items()
    }
    holm = holm_bonferroni({n: r.p_value for n, r in results.items() if r.p_value is not None}, cfg.alpha)

    out_tests: dict[str, dict[str, Any]] = {}
    for name, r in results.items():
        adj, sig = holm.get(name, (None, False))
        cx, cy, ca, cb = tests[name].categories
        entry: dict[str, Any] = {
            "effect_size": r.effect_size,
            "p_value": r.p_value,
            "p_value_holm": adj,
            "significant": bool(sig),
            "p_value_method": r.p_value_method,
            "n_partitions": r.n_partitions,
            "n_x": r.n_x,
            "n_y": r.n_y,
            "n_a": r.n_a,
            "n_b": r.n_b,
            "categories": f"{cx} vs {cy} / {ca} vs {cb}",
        }
        if r.p_value_error:
            entry["p_value_error"] = r.p_value_error
        out_tests[name] = entry
    summary = {
        "mean_abs_effect_size": float(np.mean([abs(r.effect_size) for r in results.values()])),
        "n_significant": int(sum(e["significant"] for e in out_tests.values())),
        "n_tests": len(results),
        "n_tests_with_p_value": len(holm),
        "alpha": cfg.alpha,
    }
    return {
        "tests": out_tests,
        "summary": summary,
        "method": {
            "probe": "SEAT (May et al. 2019)",
            "n_samples": cfg.n_samples,
            "seed": cfg.seed,
            "correction": "holm-bonferroni",
            "n_sentences_encoded": len(index),
        },
    }


def probe_model(cfg: BiasConfig, model_path: str | Path, tests: Mapping[str, SeatTest]) -> dict[str, Any]:
    """Load the model and run the SEAT tests on it."""

    model = load_sentence_transformer(model_path, max_seq_length=cfg.max_seq_length, device=cfg.device)
    what = f"bias {model_path}: SEAT sentences"
    result = run_seat(tests, lambda s: encode(model, s, batch_size=cfg.batch_size, what=what), cfg)
    result["model"] = {"path": str(model_path), "max_seq_length": model.max_seq_length, "device": str(model.device)}
    return result


# --------------------------------------------------------------------------------------------
# Reporting


def effect_size_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown table of effect sizes: one row per test, one column per variant.

    `results` maps a variant name to its bias.json mapping. A cell is d with two decimals, `*` when
    significant after Holm-Bonferroni, `†` when no p-value could be computed; blank when the
    variant did not run the test. The last rows are mean |d| and the number significant.
    """
    variants = list(results)
    tests: dict[str, str] = {}
    for r in results.values():
        for name, t in r["tests"].items():
            tests.setdefault(name, t.get("categories", ""))
    lines = [
        "| test | targets / attributes | " + " | ".join(variants) + " |",
        "|---|---|" + "---:|" * len(variants),
    ]
    for name, cats in tests.items():
        cells = []
        for v in variants:
            t = results[v]["tests"].get(name)
            if t is None:
                cells.append("")
                continue
            mark = "*" if t["significant"] else ("†" if t["p_value"] is None else "")
            cells.append(f"{t['effect_size']:+.2f}{mark}")
        lines.append(f"| {name} | {cats} | " + " | ".join(cells) + " |")
    lines.append(
        "| **mean \\|d\\|** | | "
        + " | ".join(f"**{results[v]['summary']['mean_abs_effect_size']:.3f}**" for v in variants)
        + " |"
    )
    lines.append(
        "| **significant** | Holm, alpha "
        + "/".join(sorted({f"{results[v]['summary']['alpha']:g}" for v in variants}))
        + " | "
        + " | ".join(
            f"**{results[v]['summary']['n_significant']} / {results[v]['summary']['n_tests']}**" for v in variants
        )
        + " |"
    )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m simcse_ops.bias metrics/base/bias.json metrics/sup-nli/bias.json ...` prints the
    README's effect-size table (columns in the order given)."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("files", nargs="+", type=Path, help="bias.json files written by the bias stage")
    args = ap.parse_args(argv)
    results: dict[str, Any] = {}
    for f in args.files:
        if not f.is_file():
            raise MissingInputError(f"{f}: not found; run the bias stage first (dvc repro bias@<variant>)")
        r = json.loads(f.read_text(encoding="utf-8"))
        results[r.get("variant") or f.parent.name] = r
    print(effect_size_table(results), end="")


if __name__ == "__main__":
    main()
