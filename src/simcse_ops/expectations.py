"""Great Expectations (GX Core 1.x) suites per data kind, and the validate stage's work.

One `ExpectationSuite` per kind: `corpus` (unlabelled sentences), `nli` ((anchor, positive,
negative) triples), `text_pairs` ((anchor, positive) pairs), `sts` (evaluation pairs with gold
scores) and `pairs` (evaluation pairs with 0/1 labels). Values that differ between
sources (score range, exact row counts) are suite parameters (`{"$PARAMETER": ...}`) filled in
per batch, so each kind keeps a single suite. Every expectation carries
GX's `severity` (critical | warning, from params.yaml `validate`) and
`meta={"check": <params key>}`.

A batch is one Parquet table (a training source in data/clean) or one split of an evaluation
source (e.g. `stsb/test` in data/ingested). Derived columns are added before validation, so that
every check is a plain GX expectation shown in Data Docs:

    _key          normalised text (`simcse_ops.dedup.normalize`; the triple joined for NLI):
                  "no duplicates left" is expect_column_values_to_be_unique on it
    _tokens_<c>   number of whitespace tokens of text column c
    _identical    the two sides of a pair are equal after normalisation

In GX, a source is a data asset of the pandas data source `simcse` and a split its batch
definition (`all` for a training table), so a page reads "Data asset: stsb", batch definition
`test`. Every batch of one stage run is one GX run named after the pipeline run
(`run_name.current_run_name()`: the Prefect flow run, or `dvc-repro-<sha>-<time>`).

The GX project is ephemeral (in memory): nothing is written to the source tree except the Data
Docs site, which goes where the caller says (a DVC output) and works offline
(`simcse_ops.data_docs`). metrics/validate.json records the run name and each batch's page.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from simcse_ops import data_docs
from simcse_ops.config import Rule, ValidateConfig
from simcse_ops.errors import EXIT_DATA, MissingInputError, UserError
from simcse_ops.files import atomic_path, remove_path, write_json
from simcse_ops.dedup import normalize_many
from simcse_ops.readers import FORMATS
from simcse_ops.run_name import current_run_name, safe_run_name
from simcse_ops.schemas import KINDS

SITE = "simcse"  # the Data Docs site's name in the GX context


# A character that has no business in a sentence: C0/C1 controls (tab and newline included,
# a sentence is one line), soft hyphen, zero-width and bidi controls, BOM, replacement char.
NONPRINTABLE_REGEX = (
    r"[\x00-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff\ufffd]"
)
# A character outside the Latin script blocks (and outside general punctuation and symbols):
# Greek, Cyrillic, Arabic, CJK, ...
NON_LATIN_REGEX = (
    r"[^\x00-\u024f\u0300-\u036f\u1e00-\u1eff\u2000-\u2bff\u2c60-\u2c7f\ua720-\ua7ff\ufb00-\ufb06]"
)


class ValidationFailed(UserError, ValueError):
    """At least one critical expectation failed; the message lists each with its observed value.
    A user-facing data error: a stage exits with `errors.EXIT_DATA`, without a traceback."""

    exit_status = EXIT_DATA

    def __init__(self, failures: list[dict], docs: Path | None = None) -> None:
        self.failures = failures
        lines = [f"validate: {len(failures)} critical expectation(s) failed:"]
        lines += [f"  - {describe_failure(f)}" for f in failures]
        lines.append(
            "Fix the data (or its reader), or, if the rule is wrong, change it in params.yaml "
            "validate.<kind>.<check> (severity: warning records it without failing)."
        )
        if docs is not None:
            lines.append(f"Details: {docs / 'index.html'}")
        super().__init__("\n".join(lines))


def describe_failure(f: dict) -> str:
    col = f" on {f['column']}" if f.get("column") else ""
    return (
        f"{f['batch']} ({f['path']}): {f['check']} [{f['severity']}] — {f['expectation']}{col}: "
        f"observed {f['observed']}; expected {f['expected']}"
    )


# --------------------------------------------------------------------------------------------
# Suites


def _kw(check: str, rule: Rule) -> dict:
    """GX's own `severity` (shown in Data Docs) and our check name (the params.yaml key)."""
    return {"severity": rule.severity, "meta": {"check": check, "severity": rule.severity}}


def build_suite(kind: str, cfg: ValidateConfig):
    """The `ExpectationSuite` of one data kind, from params (suite parameters filled per batch)."""
    import great_expectations as gx
    from great_expectations.core.expectation_suite import ExpectationSuite

    E = gx.expectations
    cols = KINDS[kind].text_columns
    ex: list = []
    if kind == "corpus":
        c = cfg.corpus
    elif kind == "nli":
        c = cfg.nli
    elif kind == "sts":
        c = cfg.sts
    elif kind == "text_pairs":
        c = cfg.text_pairs
    elif kind == "pairs":
        c = cfg.pairs
    else:
        raise ValueError(f"validate: no suite for data kind {kind!r}")

    def on(rule: Rule) -> bool:
        return rule.enabled

    if on(c.not_null):
        for col in cols + {"sts": ("score",), "pairs": ("label",)}.get(kind, ()):
            ex.append(E.ExpectColumnValuesToNotBeNull(column=col, **_kw("not_null", c.not_null)))
    if on(c.not_empty):
        for col in cols:
            ex.append(E.ExpectColumnValuesToMatchRegex(column=col, regex=r"\S", **_kw("not_empty", c.not_empty)))
    if kind in ("corpus", "nli", "text_pairs") and on(c.row_count):
        ex.append(E.ExpectTableRowCountToBeBetween(min_value=c.row_count.min, max_value=c.row_count.max,
                                                   **_kw("row_count", c.row_count)))
    if kind in ("corpus", "nli", "text_pairs") and on(c.length_tokens):
        r = c.length_tokens
        for col in cols:
            ex.append(E.ExpectColumnValuesToBeBetween(column=f"_tokens_{col}", min_value=r.min, max_value=r.max,
                                                      mostly=r.mostly, **_kw("length_tokens", r)))
    if on(c.nonprintable):
        r = c.nonprintable
        for col in cols:
            ex.append(E.ExpectColumnValuesToNotMatchRegex(column=col, regex=NONPRINTABLE_REGEX,
                                                          mostly=1.0 - r.max_share, **_kw("nonprintable", r)))
    if kind == "corpus" and on(c.non_latin):
        r = c.non_latin
        ex.append(E.ExpectColumnValuesToNotMatchRegex(column="text", regex=NON_LATIN_REGEX,
                                                      mostly=1.0 - r.max_share, **_kw("non_latin", r)))
    if kind in ("corpus", "nli", "text_pairs") and on(c.unique):
        ex.append(E.ExpectColumnValuesToBeUnique(column="_key", **_kw("unique", c.unique)))
    if kind in ("nli", "sts", "text_pairs") and on(c.identical_pairs):
        r = c.identical_pairs
        ex.append(E.ExpectColumnValuesToBeInSet(column="_identical", value_set=[False],
                                                mostly=1.0 - r.max_share, **_kw("identical_pairs", r)))
    if kind == "pairs" and on(c.labels):
        ex.append(E.ExpectColumnValuesToBeInSet(column="label", value_set=[int(v) for v in c.labels.values],
                                                **_kw("labels", c.labels)))
    if kind == "sts":
        if on(c.splits):
            ex.append(E.ExpectColumnValuesToBeInSet(column="split", value_set=list(c.splits.values),
                                                    **_kw("splits", c.splits)))
        if on(c.score_range):
            ex.append(E.ExpectColumnValuesToBeBetween(
                column="score", min_value={"$PARAMETER": "score_min"}, max_value={"$PARAMETER": "score_max"},
                **_kw("score_range", c.score_range)))
        if on(c.row_counts):
            ex.append(E.ExpectTableRowCountToEqual(value={"$PARAMETER": "row_count"},
                                                   **_kw("row_counts", c.row_counts)))
    return ExpectationSuite(name=f"simcse_{kind}", expectations=ex)


def prepare_frame(kind: str, df: pd.DataFrame) -> pd.DataFrame:
    """The batch GX validates: the table plus the derived columns the suite refers to."""
    df = df.copy()
    cols = KINDS[kind].text_columns
    for c in cols:
        df[f"_tokens_{c}"] = df[c].map(lambda s: len(s.split()) if isinstance(s, str) else 0).astype("int64")
    norms = {c: normalize_many(df[c].astype(object).where(df[c].notna(), None).tolist()) for c in cols}
    if kind in ("corpus", "nli", "text_pairs"):
        df["_key"] = ["\n".join("" if x is None else x for x in row) for row in zip(*(norms[c] for c in cols))]
    if kind in ("nli", "sts", "text_pairs"):
        a, b = norms[cols[0]], norms[cols[1]]
        df["_identical"] = [x is not None and x == y for x, y in zip(a, b)]
    return df


# --------------------------------------------------------------------------------------------
# Running


@dataclass
class Batch:
    name: str  # "wiki1m" or "stsb/test"
    source: str
    kind: str
    path: Path
    frame: pd.DataFrame
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def split(self) -> str:
        """The batch definition's name: the split of an evaluation set, `all` for a whole table."""
        return self.name.partition("/")[2] or "all"


def _observed(result: dict) -> str:
    if "observed_value" in result:
        return repr(result["observed_value"])
    parts = []
    if "unexpected_count" in result:
        parts.append(f"{result['unexpected_count']} of {result.get('element_count', '?')} rows "
                     f"({result.get('unexpected_percent') or 0:.3g}%) unexpected")
    if result.get("partial_unexpected_list"):
        parts.append(f"e.g. {result['partial_unexpected_list'][:3]!r}")
    return ", ".join(parts) or repr(result)


def _expected(cfg_kwargs: dict, parameters: dict) -> str:
    def resolve(v):
        if isinstance(v, dict) and "$PARAMETER" in v:
            return parameters.get(v["$PARAMETER"])
        return v

    keep = {k: resolve(v) for k, v in cfg_kwargs.items()
            if k not in ("column", "meta", "result_format", "catch_exceptions", "batch_id", "rendered_content")
            and v is not None}
    return ", ".join(f"{k}={v!r}" for k, v in sorted(keep.items())) or "-"


def make_context(docs_dir: Path | None, views_dir: Path | None = None):
    """An ephemeral GX context (analytics and progress bars off) whose Data Docs site, if any,
    is written to `docs_dir`, with the offline page templates in `views_dir`
    (`data_docs.write_views`)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    sites = {}
    if docs_dir is not None:
        if views_dir is None:
            raise ValueError("make_context: a Data Docs site needs views_dir (data_docs.write_views)")
        sites[SITE] = data_docs.site_config(docs_dir, views_dir)
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
        data_docs_sites=sites,
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _batch_failures(b: Batch, vr) -> tuple[list[dict], list[dict]]:
    """The failed expectations of one validation result: (critical, warnings)."""
    crit, warn = [], []
    for r in vr.results:
        conf = r.expectation_config
        meta = conf.meta or {}
        if r.success:
            continue
        severity = str(conf.get("severity") or meta.get("severity") or "critical")
        kwargs = dict(conf.kwargs)
        item = {
            "batch": b.name, "source": b.source, "path": str(b.path), "check": meta.get("check", "?"),
            "severity": severity.split(".")[-1].lower(), "expectation": conf.type,
            "column": kwargs.get("column"),
            "observed": _observed(r.result or {}) if not r.exception_info.get("raised_exception") else
            f"error: {r.exception_info.get('exception_message')}",
            "expected": _expected(kwargs, b.parameters),
        }
        if item["check"] == "row_counts" and b.parameters.get("row_count") == -1:
            item["expected"] = (f"a row count for split {b.split!r} in params.yaml "
                                f"validate.sts.row_counts.expected.{b.source}")
        (crit if item["severity"] == "critical" else warn).append(item)
    return crit, warn


class _Runner:
    """Runs one Checkpoint per batch in one GX context: a data asset per source, a batch
    definition per split, every run named `run_name` (the pipeline run; run times increase)."""

    def __init__(self, ctx, cfg: ValidateConfig, run_name: str) -> None:
        self.ctx, self.cfg, self.run_name = ctx, cfg, run_name
        self.source = ctx.data_sources.add_pandas("simcse")
        self.assets: dict[str, Any] = {}
        self.suites: dict[str, Any] = {}
        self.last_time: dt.datetime | None = None

    def _run_id(self):
        from great_expectations.core.run_identifier import RunIdentifier

        now = dt.datetime.now(dt.timezone.utc)
        if self.last_time is not None and now <= self.last_time:  # each batch its own page path
            now = self.last_time + dt.timedelta(microseconds=1)
        self.last_time = now
        return RunIdentifier(run_name=self.run_name, run_time=now)

    def run(self, b: Batch):
        """Validate `b`; returns (the result's store key, the result)."""
        import great_expectations as gx
        from great_expectations.checkpoint import Checkpoint
        from great_expectations.data_context.types.resource_identifiers import ValidationResultIdentifier

        if b.kind not in self.suites:
            self.suites[b.kind] = self.ctx.suites.add(build_suite(b.kind, self.cfg))
        if b.source not in self.assets:
            self.assets[b.source] = self.source.add_dataframe_asset(name=b.source)
        bd = self.assets[b.source].add_batch_definition_whole_dataframe(b.split)
        label = b.name.replace("/", ".")
        vd = self.ctx.validation_definitions.add(
            gx.ValidationDefinition(name=f"validate.{label}", data=bd, suite=self.suites[b.kind]))
        cp = self.ctx.checkpoints.add(Checkpoint(name=f"checkpoint.{label}", validation_definitions=[vd],
                                                 actions=[],
                                                 result_format={"result_format": self.cfg.result_format}))
        res = cp.run(batch_parameters={"dataframe": b.frame}, expectation_parameters=b.parameters,
                     run_id=self._run_id())
        ((gx_key, vr),) = res.run_results.items()
        # GX names the batch after its asset only ("simcse-sick_full" for every split); the
        # stored result is keyed (and its page named) after the source and the split instead.
        key = ValidationResultIdentifier(gx_key.expectation_suite_identifier, gx_key.run_id,
                                         f"{b.source}-{b.split}")
        # GX 1.24's result page reads the asset name from the batch spec, which a dataframe
        # asset leaves without one ("Data asset: None"): name it, with the split and the file.
        vr.meta["batch_spec"] = {**(vr.meta.get("batch_spec") or {}), "data_asset_name": b.source,
                                 "batch_definition": b.split, "path": str(b.path)}
        store = self.ctx.validation_results_store
        if store.has_key(gx_key):  # the checkpoint stored it under GX's name: keep one copy
            store.remove_key(gx_key)
        store.set(key, vr)
        return key, vr


def validate_batches(batches: list[Batch], cfg: ValidateConfig, docs_dir: Path | None = None,
                     run_name: str | None = None) -> dict:
    """Validate each batch with its kind's suite (one Checkpoint per batch); build Data Docs
    (offline: `simcse_ops.data_docs`) in `docs_dir` if given.

    `run_name` names the GX runs (default `run_name.current_run_name()`: the pipeline run).
    Returns the summary for `metrics/validate.json` (with each batch's Data Docs page, relative
    to `docs_dir`, as `docs_page`); the caller decides what fails.
    """
    run_name = safe_run_name(run_name) if run_name else current_run_name()
    if docs_dir is not None:
        data_docs.check_vendor_files()  # before a minute of validation, not after
    summary: dict = {"success": True, "critical_failures": 0, "warnings": 0, "run_name": run_name,
                     "batches": {}}
    failures: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="simcse-gx-views-") as views:
        if docs_dir is not None:
            data_docs.write_views(Path(views))
        ctx = make_context(docs_dir, Path(views))
        runner = _Runner(ctx, cfg, run_name)
        keys = {}
        for b in batches:
            keys[b.name], vr = runner.run(b)
            crit, warn = _batch_failures(b, vr)
            failures.extend(crit)
            summary["batches"][b.name] = {
                "source": b.source, "kind": b.kind, "rows": int(len(b.frame)),
                "expectations": len(vr.results), "success": not crit,
                "failed_critical": len(crit), "failed_warning": len(warn),
                "failures": crit + warn,
            }
            summary["critical_failures"] += len(crit)
            summary["warnings"] += len(warn)
        if docs_dir is not None:
            ctx.build_data_docs(site_names=[SITE])
            data_docs.copy_vendor_files(docs_dir)
            for name, key in keys.items():
                summary["batches"][name]["docs_page"] = data_docs.page_of(ctx, SITE, docs_dir, key)
    summary["success"] = summary["critical_failures"] == 0
    summary["_failures"] = failures
    return summary


def load_batches(params, cfg: ValidateConfig, clean_dir: Path, ingested_dir: Path) -> list[Batch]:
    """Training sources from `clean_dir` (one batch each), evaluation sets from `ingested_dir`
    (one batch per split), in params.yaml order."""
    import pyarrow.parquet as pq

    batches = []
    for name, src in params.sources.items():
        if src.role in cfg.clean_roles:
            folder = clean_dir
        elif src.role in cfg.eval_roles:
            folder = ingested_dir
        else:
            continue
        kind = FORMATS[src.format].kind
        path = Path(folder) / f"{name}.parquet"
        if not path.is_file():
            stage = "dedup" if folder == clean_dir else "ingest"
            raise MissingInputError(f"{path}: not found; run the {stage} stage first (dvc repro {stage})")
        df = prepare_frame(kind, pq.read_table(path).to_pandas())
        if kind != "sts":
            batches.append(Batch(name, name, kind, path, df))
            continue
        expected = cfg.sts.row_counts.expected.get(name, {})
        lo, hi = cfg.sts.score_range.range_for(name)
        splits = list(dict.fromkeys(list(expected) + sorted(df["split"].dropna().unique().tolist())))
        for split in splits:
            part = df[df["split"] == split].reset_index(drop=True)
            # A split without an expected count fails its row-count check (-1 never matches).
            params_b = {"score_min": lo, "score_max": hi, "row_count": int(expected.get(split, -1))}
            batches.append(Batch(f"{name}/{split}", name, kind, path, part, params_b))
    return batches


def _fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_validate(params, clean_dir, ingested_dir, metrics_path, docs_dir, ok_path) -> dict:
    """Validate, write Data Docs and metrics; on a critical failure remove `ok_path` and raise
    `ValidationFailed`; otherwise write `ok_path` (what training depends on): the fingerprints
    of the validated files and of the rules, with no time stamp, so it only changes with them."""

    cfg = params.validate
    batches = load_batches(params, cfg, Path(clean_dir), Path(ingested_dir))
    remove_path(ok_path)
    docs_dir = Path(docs_dir)
    with atomic_path(docs_dir) as tmp:
        summary = validate_batches(batches, cfg, tmp)
        if not (tmp / "index.html").is_file():
            raise RuntimeError(f"{docs_dir}: GX did not build the Data Docs site")
    failures = summary.pop("_failures")
    write_json(metrics_path, summary)
    if failures:
        raise ValidationFailed(failures, docs_dir)
    files = sorted({str(b.path) for b in batches})
    write_json(ok_path, {
        "validated": {f: _fingerprint(Path(f)) for f in files},
        "rules": hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True, default=str).encode()).hexdigest(),
        "warnings": summary["warnings"],
    })
    return summary
