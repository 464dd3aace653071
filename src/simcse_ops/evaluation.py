"""Loading the configured evaluation tasks from ingested Parquet and scoring models on them:
the 7 general STS tasks (every variant), a domain variant's domain tasks (with the base encoder
and BM25 beside it, bootstrap intervals and paired differences), and the dev scorer that training
selects its best step on."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from simcse_ops import domain
from simcse_ops.config import ConfigError, Params, StsTaskConfig
from simcse_ops.encoder import encode, load_sentence_transformer, resolve_model
from simcse_ops.errors import MissingInputError
from simcse_ops.files import model_hash
from simcse_ops.model import _base_st_info
from simcse_ops.readers import FORMATS
from simcse_ops.stats import paired_bootstrap
from simcse_ops.sts import DevScorer, EmbedFn, evaluate_sts, sts_dev_scorer


def load_task(data_dir: Path | str, task: StsTaskConfig, name: str, params_path: Path) -> pd.DataFrame:
    """Pairs of one task (columns subset, sentence1, sentence2, score) from `<data>/<source>.parquet`."""
    path = Path(data_dir) / f"{task.source}.parquet"
    if not path.is_file():
        raise MissingInputError(f"{path}: not found; run the ingest stage first (dvc repro ingest)")
    df = pd.read_parquet(path, columns=["split", "subset", "sentence1", "sentence2", "score"])
    if task.split is not None:
        splits = sorted(df["split"].unique())
        if task.split not in splits:
            raise ConfigError(
                f"{params_path}: evaluate.tasks.{name}.split: {task.split!r} not in {path} (splits: {splits})"
            )
        df = df[df["split"] == task.split]
    if len(df) < 2:
        raise ValueError(f"{path}: task {name} has {len(df)} pairs; need at least 2")
    return df.reset_index(drop=True)


def load_tasks(params: Params, data_dir: Path | str) -> dict[str, pd.DataFrame]:
    return {n: load_task(data_dir, t, n, params.path) for n, t in params.evaluate.tasks.items()}


def evaluate_model(params: Params, model_path: str | Path, data_dir: Path | str) -> dict:
    """Score `model_path` on every task in params `evaluate.tasks`; returns the metrics mapping."""
    cfg = params.evaluate
    tasks = load_tasks(params, data_dir)
    model = load_sentence_transformer(model_path, max_seq_length=cfg.max_seq_length, device=cfg.device)
    what = f"evaluate {model_path}: {len(tasks)} STS tasks"
    result = evaluate_sts(lambda s: encode(model, s, batch_size=cfg.batch_size, what=what), tasks)
    result["model"] = {
        "path": str(model_path),
        "max_seq_length": model.max_seq_length,
        "device": str(model.device),
    }
    return result


# --------------------------------------------------------------------------------------------
# Domain tasks (params.yaml evaluate.domain_tasks; a variant's suite is variants.<V>.domain_tasks)


@dataclass(frozen=True)
class DomainTaskData:
    """One domain task on one split: pairs (pair classification: label; graded similarity, kind
    `sts`: score) or queries/docs/qrels (retrieval)."""

    kind: str
    pairs: pd.DataFrame | None = None
    queries: pd.DataFrame | None = None
    docs: pd.DataFrame | None = None
    qrels: pd.DataFrame | None = None

    @property
    def n(self) -> int:
        return len(self.queries) if self.kind == "retrieval" else len(self.pairs)

    def fingerprint(self) -> str:
        """sha256 of the task's content (pairs and labels; queries, documents and judgments):
        two results are comparable item by item only on the same content (a grown document
        collection changes every query's ranking)."""
        h = hashlib.sha256()
        frames = [self.queries, self.docs, self.qrels] if self.kind == "retrieval" else [self.pairs]
        for df in frames:
            h.update(pd.util.hash_pandas_object(df.sort_values(list(df.columns)), index=False).values.tobytes())
        return h.hexdigest()[:16]


def load_domain_task(params: Params, data_dir: Path | str, name: str, split: str) -> DomainTaskData:
    """Rows of task `name` on `split` from `<data>/<source>.parquet` (ingest's pairs, sts or retrieval kind)."""
    task = params.evaluate.domain_tasks[name]
    path = Path(data_dir) / f"{task.source}.parquet"
    if not path.is_file():
        raise MissingInputError(f"{path}: not found; run the ingest stage first (dvc repro ingest)")
    kind = FORMATS[params.sources[task.source].format].kind
    df = pd.read_parquet(path)
    where = f"{params.path}: evaluate.domain_tasks.{name}"
    if kind in ("pairs", "sts"):
        pairs = df[df["split"] == split]
        if len(pairs) < 2:
            raise ConfigError(f"{where}: split {split!r} has {len(pairs)} pairs in {path} "
                              f"(splits: {sorted(df['split'].unique())})")
        pairs = pairs.assign(id=pairs["file"] + ":" + pairs["line"].astype(str)).reset_index(drop=True)
        columns = ["id", "sentence1", "sentence2", *(("label", "group") if kind == "pairs" else ("score",))]
        return DomainTaskData(kind, pairs=pairs[columns])
    if kind == "retrieval":
        queries = df[(df["record"] == "query") & (df["split"] == split)][["id", "text"]]
        if queries.empty:
            splits = sorted(df.loc[df["record"] == "query", "split"].unique())
            raise ConfigError(f"{where}: no queries of split {split!r} in {path} (splits: {splits})")
        docs = df[df["record"] == "doc"][["id", "title", "text"]]
        qrels = df[(df["record"] == "qrel") & (df["split"] == split)][["query_id", "doc_id", "relevance"]]
        return DomainTaskData(kind, queries=queries.reset_index(drop=True), docs=docs.reset_index(drop=True),
                              qrels=qrels.reset_index(drop=True))
    raise ConfigError(f"{where}.source: {task.source!r} is of kind {kind!r}; expected pairs, sts or retrieval")


DEFAULT_METRIC = {"retrieval": "ndcg@10", "pairs": "ap", "sts": "spearman"}


def task_metric(params: Params, name: str, kind: str) -> str:
    """The task's headline metric: its `metric`, else nDCG@10 (retrieval), AP (pairs) or
    Spearman (sts)."""
    return params.evaluate.domain_tasks[name].metric or DEFAULT_METRIC[kind]


def score_domain_task(data: DomainTaskData, embed: EmbedFn | None, chunker=None,
                      long_documents: str = "truncate") -> domain.TaskResult:
    """Score one encoder (`embed`) on a task; `embed=None` scores BM25 (retrieval only)."""
    if data.kind == "pairs":
        return domain.score_pairs(embed, data.pairs)
    if data.kind == "sts":
        return domain.score_graded_pairs(embed, data.pairs)
    if embed is None:
        return domain.score_bm25(data.queries, data.docs, data.qrels)
    return domain.score_retrieval(embed, data.queries, data.docs, data.qrels,
                                  long_documents=long_documents, chunker=chunker)


def _embedder(params: Params, model_path: str | Path):
    cfg = params.evaluate
    model = load_sentence_transformer(model_path, max_seq_length=cfg.max_seq_length, device=cfg.device)
    chunker = None
    if cfg.long_documents == "max_chunk":
        chunker = domain.make_chunker(model.tokenizer, model.max_seq_length)
    what = f"evaluate {model_path}: domain task"
    return (lambda s: encode(model, s, batch_size=cfg.batch_size, what=what)), chunker


def evaluate_domain(params: Params, variant: str, models: dict[str, str | Path],
                    data_dir: Path | str) -> tuple[dict, dict]:
    """Score `models` ({label: model folder}; the variant first, then its references) and BM25 on
    the variant's domain tasks (reported splits) -> (domain.json, domain_items.json mappings).

    Per task and model: the metrics x100, their percentile bootstrap intervals and n; per model
    other than base, the paired bootstrap difference to base (`vs_base`); for the variant, the
    paired difference to each other model (`vs_references`: d = m(variant) - m(reference) on the
    same items, its interval, p(d <= 0) and p(d >= 0)). The items (per query / pair values) go to
    the second mapping, for the registry gate's paired tests. `reference_models` records each
    model folder's sha256, so the register stage can tell a reference retrained since.
    """
    cfg, v = params.evaluate, params.variant(variant)
    b = cfg.bootstrap
    data = {t: load_domain_task(params, data_dir, t, cfg.domain_tasks[t].split) for t in v.domain_tasks}
    results: dict[str, dict[str, dict]] = {t: {} for t in data}
    for label, path in models.items():
        embed, chunker = _embedder(params, path)
        for t, d in data.items():
            r = score_domain_task(d, embed, chunker, cfg.long_documents)
            results[t][label] = domain.with_intervals(r, b.n_resamples, b.confidence, b.seed)
    for t, d in data.items():
        if d.kind == "retrieval":
            r = score_domain_task(d, None)
            results[t]["bm25"] = domain.with_intervals(r, b.n_resamples, b.confidence, b.seed)

    def paired(a: dict, ref: dict, metric: str) -> dict:
        pb = paired_bootstrap(a["items"], ref["items"], metric, n_resamples=b.n_resamples,
                              confidence=b.confidence, seed=b.seed)
        return {"diff": round(pb.diff, 4), "ci": [round(pb.ci_low, 4), round(pb.ci_high, 4)],
                "p_at_most_0": round(pb.p_at_most(0.0), 4), "p_at_least_0": round(pb.p_at_least(0.0), 4)}

    out_tasks, items = {}, {}
    for t, d in data.items():
        metric = task_metric(params, t, d.kind)
        task_out = {"kind": d.kind, "source": cfg.domain_tasks[t].source, "split": cfg.domain_tasks[t].split,
                    "metric": metric, "n": d.n, "fingerprint": d.fingerprint(), "results": {}, "vs_base": {},
                    "vs_references": {}}
        for label, r in results[t].items():
            task_out["results"][label] = {"metrics": r["metrics"], "ci": r["ci"], "timing": r["timing"]}
        for label, r in results[t].items():
            if label in ("base", "bm25") or "base" not in results[t]:
                continue
            task_out["vs_base"][label] = paired(r, results[t]["base"], metric)
        if variant in results[t]:
            for label in models:
                if label != variant:
                    task_out["vs_references"][label] = paired(results[t][variant], results[t][label], metric)
        out_tasks[t] = task_out
        items[t] = {label: r["items"] for label, r in results[t].items()}
    head = out_tasks.get(v.primary, {})
    headline = head.get("results", {}).get(variant, {}).get("metrics", {}).get(head.get("metric"))
    # the variant's figure on its primary task, flat: a column of `dvc exp show` / `dvc metrics diff`
    summary = {"variant": variant, "primary": v.primary,
               "primary_metric": {"metric": head.get("metric"), "value": headline},
               "models": [*models, "bm25"],
               "references": [m for m in models if m != variant],
               "reference_models": {m: model_hash(Path(p)) for m, p in models.items() if m != variant},
               "tasks": out_tasks, "long_documents": cfg.long_documents,
               "bootstrap": {"n_resamples": b.n_resamples, "confidence": b.confidence, "seed": b.seed}}
    return summary, {"tasks": items}


def split_wall_times(sts: dict, summary: dict) -> tuple[dict, dict, dict]:
    """(sts.json, domain.json, timing.json) from `evaluate_model`'s result (with `backends`) and
    `evaluate_domain`'s summary: the wall-clock fields move to the third mapping, the inputs are
    not changed.

    sts.json and domain.json must be functions of the models and the data alone. Every register@V
    depends on the base variant's sts.json (the gate's reference), so if a rerun of evaluate@base
    that only re-timed its encodes rewrote it, DVC would rerun, and re-register, every variant.
    timing.json is what no stage reads: `timing` of the torch run, `backends.<name>.encode_s`, and
    per domain task and model its `timing`.
    """
    sts = dict(sts)
    timing: dict = {"sts": sts.pop("timing", {}), "backends": {}, "domain": {}}
    if "backends" in sts:
        sts["backends"] = {name: dict(b) for name, b in sts["backends"].items()}
        for name, b in sts["backends"].items():
            if "encode_s" in b:
                timing["backends"][name] = {"encode_s": b.pop("encode_s")}
    summary = {**summary, "tasks": {t: dict(task) for t, task in summary.get("tasks", {}).items()}}
    for t, task in summary["tasks"].items():
        task["results"] = {label: dict(r) for label, r in task.get("results", {}).items()}
        timing["domain"][t] = {label: r.pop("timing") for label, r in task["results"].items() if "timing" in r}
    return sts, summary, timing


def domain_plot_rows(summary: dict) -> list[tuple[str, str, float]]:
    """(task, model, headline metric) rows for the DVC bar plot."""
    return [(t, label, r["metrics"][task["metric"]])
            for t, task in summary["tasks"].items() for label, r in task["results"].items()]


# --------------------------------------------------------------------------------------------
# Model selection during training


def dev_scorer_for(params: Params, variant: str, eval_data_dir: Path | str) -> DevScorer:
    """What training selects its best step on (never a test split).

    A general variant: STS-B dev (evaluate.dev_task). A domain variant: the rule of
    `config.SelectionConfig` over every domain task's dev split and STS-B dev,
        sel = P - penalty * sum_g max(0, g_0 - tol_g - g),
    P the primary task, g the guards (the other tasks and STS-B dev), g_0 the start model's
    figures (`DevScorer.reference`, set by the trainer from step 0). Each task's figure goes to
    the dev curve (`DevScorer.parts`)."""
    v = params.variant(variant)
    sts_dev = params.evaluate.dev_task
    stsb = sts_dev_scorer(Path(eval_data_dir) / f"{sts_dev.source}.parquet", sts_dev.split)
    if v.primary is None:
        return stsb
    cfg, sel = params.evaluate, params.evaluate.selection
    chunker = None
    if cfg.long_documents == "max_chunk":
        from transformers import AutoTokenizer  # heavy; only when chunking is configured

        tok = AutoTokenizer.from_pretrained(resolve_model(v.base_model))
        chunker = domain.make_chunker(tok, _base_st_info(v.base_model)[0])
    tasks = {t: load_domain_task(params, eval_data_dir, t, cfg.domain_tasks[t].dev_split) for t in v.domain_tasks}
    metrics = {t: task_metric(params, t, d.kind) for t, d in tasks.items()}
    tolerance = {t: cfg.domain_tasks[t].tolerance for t in tasks} | {stsb.metric: None}
    tolerance = {k: sel.tolerance if x is None else x for k, x in tolerance.items()}
    parts: dict[str, float] = {}
    reference: dict[str, float] = {}

    def score(embed: EmbedFn) -> float:
        parts.clear()
        for t, d in tasks.items():
            parts[t] = score_domain_task(d, embed, chunker, cfg.long_documents).metrics[metrics[t]]
        parts[stsb.metric] = stsb.score(embed)
        return selection_score(parts, v.primary, reference, tolerance, sel.penalty)

    fp = json.dumps([stsb.fingerprint, {t: d.fingerprint() for t, d in tasks.items()}, tolerance, sel.penalty,
                     cfg.long_documents], sort_keys=True)
    return DevScorer(metric=f"select_{v.primary}_{cfg.domain_tasks[v.primary].dev_split}", score=score,
                     parts=parts, reference=reference, fingerprint=hashlib.sha256(fp.encode()).hexdigest()[:16])


def selection_score(parts: dict[str, float], primary: str, reference: dict[str, float],
                    tolerance: dict[str, float], penalty: float) -> float:
    """sel = P - penalty * sum_g max(0, g_0 - tol_g - g) (see `dev_scorer_for`); without a
    reference (the start model itself) sel = P."""
    shortfall = sum(max(0.0, reference[g] - tolerance[g] - x) for g, x in parts.items()
                    if g != primary and g in reference)
    return parts[primary] - penalty * shortfall


def rescore_domain_task(params: Params, task: str, model_path: str | Path, data_dir: Path | str) -> dict:
    """One model on one domain task's reported split -> {metric, value, ci, items} (the registry
    re-scores a champion whose logged results are missing or on other items)."""
    cfg, b = params.evaluate, params.evaluate.bootstrap
    data = load_domain_task(params, data_dir, task, cfg.domain_tasks[task].split)
    embed, chunker = _embedder(params, model_path)
    r = domain.with_intervals(score_domain_task(data, embed, chunker, cfg.long_documents),
                              b.n_resamples, b.confidence, b.seed)
    metric = task_metric(params, task, data.kind)
    return {"metric": metric, "value": r["metrics"][metric], "ci": r["ci"][metric], "items": r["items"],
            "fingerprint": data.fingerprint()}
