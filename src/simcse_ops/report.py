"""The run report: one self-contained HTML page per pipeline run (`reports/run/index.html`).

The page a reviewer opens to decide on a promotion. It is built from the stages' metrics files
only, found where dvc.yaml declares them (`locate`, as the flows find them):

- once for the run: its identity (git commit, time, the validation run's name), the dedup and
  decontamination counts (`dedup.json`), the validation summary (`validate.json`) with a link per
  batch into the Data Docs;
- per variant: the 7-task STS table (`sts.json`, the served backend's row as the gate saw it) with
  base and the gate's reference beside it; the domain tasks with their bootstrap intervals
  (`domain.json`) and the champion's value (`registry.json`); the loss and dev curves
  (`train/loss.csv`, `train/dev.csv`, `train/train.json`); the SEAT effect sizes with the
  significant ones marked (`bias.json`); the gate's decision and reasons (`registry.json`).

The page opens from disk with no network: one file, embedded CSS, charts as inline SVG rendered
from Vega-Lite specs by vl-convert (`vl_convert.vegalite_to_svg`). Every string from a file is
HTML-escaped. Every figure cell carries `data-variant`, `data-section`, `data-row` and
`data-col` and its full-precision value in `data-value`, so a browser test can compare the page
with metrics/. A missing optional file (a variant not registered, not trained, no domain tasks)
gives a visible note; a malformed one a `DataError` naming the file.
"""

from __future__ import annotations

import contextlib
import csv
import html
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import vl_convert

from simcse_ops.dvc_runner import load_stage_files
from simcse_ops.errors import DataError
from simcse_ops.files import atomic_path, read_json
from simcse_ops.scores import TORCH, has_sts, sts_row

PAGE = "index.html"  # the report inside its output folder (dvc.yaml: the `report` stage's outs)


# --------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class VariantFiles:
    """One variant's metrics files (absolute paths; any may be absent)."""

    name: str
    sts: Path  # evaluate@V
    domain: Path  # evaluate@V
    bias: Path  # bias@V
    registry: Path  # register@V
    loss: Path  # train@V
    dev: Path  # train@V
    train: Path  # train@V: train.json (the dev metric's name, the exported step)


@dataclass(frozen=True)
class RunFiles:
    """Everything the report reads, and where the Data Docs lie relative to the page."""

    variants: tuple[VariantFiles, ...]
    base_variant: str  # params.yaml register.base_variant: the reference of first versions
    tasks: tuple[str, ...]  # params.yaml evaluate.tasks
    dedup: Path
    validate: Path
    data_docs: str  # relative link from the page's folder to the Data Docs folder

    def paths(self) -> list[Path]:
        """Every file the report reads (the report stage's deps in dvc.yaml list them)."""
        out = [self.dedup, self.validate]
        for v in self.variants:
            out += [v.sts, v.domain, v.bias, v.registry, v.loss, v.dev, v.train]
        return out


def locate(workspace: Path | str, variants: Sequence[str], base_variant: str, tasks: Sequence[str],
           out_dir: Path | str) -> RunFiles:
    """The files the report reads, where dvc.yaml declares them (evaluate@V, bias@V, register@V,
    train@V, dedup, validate: `dvc_runner.load_stage_files`); a `ConfigError` naming dvc.yaml and
    the stage when one is not declared."""
    workspace = Path(workspace).resolve()
    targets = ["dedup", "validate", *(f"{s}@{v}" for v in variants for s in ("evaluate", "bias", "register", "train"))]
    files = load_stage_files(workspace, targets)
    per_variant = tuple(
        VariantFiles(
            name=v,
            sts=files[f"evaluate@{v}"].output("sts.json"),
            domain=files[f"evaluate@{v}"].output("domain.json"),
            bias=files[f"bias@{v}"].output("bias.json"),
            registry=files[f"register@{v}"].output("registry.json"),
            loss=files[f"train@{v}"].output("loss.csv"),
            dev=files[f"train@{v}"].output("dev.csv"),
            train=files[f"train@{v}"].output("train.json"),
        )
        for v in variants
    )
    docs = files["validate"].output("data_docs")
    out = (workspace / out_dir) if not Path(out_dir).is_absolute() else Path(out_dir)
    return RunFiles(per_variant, base_variant, tuple(tasks), files["dedup"].output("dedup.json"),
                    files["validate"].output("validate.json"), Path(os.path.relpath(docs, out)).as_posix())


def _optional_json(path: Path) -> Any | None:
    """The JSON document at `path`, None when the file does not exist (its stage has not run)."""
    return read_json(path) if path.is_file() else None


def _check(ok: bool, path: Path, found: str, expected: str) -> None:
    if not ok:
        raise DataError(path, None, found, expected)


def _number(value: Any, path: Path, what: str) -> float:
    """`value` (an int or a float, kept as it is); a DataError naming the file and the field
    otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(path, None, f"{what} = {value!r}", "a number")
    return value


def read_curve(path: Path, columns: Sequence[str]) -> list[dict[str, float]] | None:
    """The rows of a training curve CSV (`columns` as floats); None when the file does not exist."""
    if not path.is_file():
        return None
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        _check(not missing, path, f"columns {reader.fieldnames}", f"the columns {', '.join(columns)}")
        rows = []
        for line, r in enumerate(reader, start=2):
            try:
                rows.append({c: float(r[c]) for c in columns})
            except (TypeError, ValueError):
                raise DataError(path, line, f"{ {c: r[c] for c in columns} }", f"numbers in {', '.join(columns)}") from None
    return rows


# --------------------------------------------------------------------------------------------
# HTML pieces


def esc(value: Any) -> str:
    """Any value as escaped HTML text (quotes too: safe in attributes)."""
    return html.escape(str(value), quote=True)


def _attrs(attrs: Mapping[str, Any]) -> str:
    return "".join(f' {k}="{esc(v)}"' for k, v in attrs.items() if v is not None)


def num_cell(value: float | None, fmt: str = ".2f", **attrs: Any) -> str:
    """A figure cell: the value formatted, the full-precision value in `data-value`."""
    if value is None:
        return f"<td class=\"num missing\"{_attrs(attrs)}>&ndash;</td>"
    text = format(round(value), "d") if fmt == "d" else format(value, fmt)
    return f"<td class=\"num\"{_attrs({**attrs, 'data-value': repr(value)})}>{text}</td>"


def text_cell(value: Any, **attrs: Any) -> str:
    return f"<td{_attrs(attrs)}>{esc(value)}</td>"


def table(header: Sequence[str], rows: Iterable[str], **attrs: Any) -> str:
    """A table from escaped header labels and rows of ready-made cells (`<td>...</td>...`)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(f"<tr>{r}</tr>" for r in rows)
    return f"<table{_attrs(attrs)}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def svg(spec: Mapping[str, Any]) -> str:
    """A Vega-Lite spec rendered to a static SVG (inline: no script, no network)."""
    out = vl_convert.vegalite_to_svg(dict(spec))
    return f'<figure class="chart">{out}</figure>'


# --------------------------------------------------------------------------------------------
# Run-level sections


def identity_section(identity: Mapping[str, str], validate: Mapping[str, Any] | None) -> str:
    """The run's identity: git commit (and whether the tree was dirty), time, run name."""
    rows = [("git commit", identity.get("git.commit", "unknown")
             + (" (uncommitted changes)" if identity.get("git.dirty") == "true" else "")),
            ("generated", identity.get("time", "unknown"))]
    if validate and validate.get("run_name"):
        rows.append(("validation run", validate["run_name"]))
    body = "".join(f"<tr><th>{esc(k)}</th><td data-key=\"{esc(k)}\">{esc(v)}</td></tr>" for k, v in rows)
    return f'<section id="run"><h2>Run</h2><table class="kv">{body}</table></section>'


DEDUP_COUNTS = ("rows_in", "rows_out", "contamination_exact", "contamination_near", "exact_duplicate",
                "near_duplicate")


def dedup_section(path: Path) -> str:
    """Rows in and out, decontamination and duplicates removed: totals, per source, per eval set."""
    d = _optional_json(path)
    head = '<section id="dedup"><h2>Dedup and decontamination</h2>'
    if d is None:
        return head + note(f"{path.name} not found: the dedup stage has not run.") + "</section>"
    _check(isinstance(d.get("totals"), dict) and isinstance(d.get("sources"), dict), path,
           f"keys {sorted(d)}", "the dedup stage's output (totals, sources)")
    header = ["source", *DEDUP_COUNTS]

    def row(name: str, counts: Mapping[str, Any]) -> str:
        cells = [text_cell(name)]
        for k in DEDUP_COUNTS:
            v = counts.get(k, counts.get("removed", {}).get(k))
            cells.append(num_cell(None if v is None else _number(v, path, f"{name}.{k}"), "d",
                                  **{"data-section": "dedup", "data-row": name, "data-col": k}))
        return "".join(cells)

    rows = [row(name, s) for name, s in d["sources"].items()] + [row("total", d["totals"])]
    out = head + table(header, rows, **{"class": "data", "data-table": "dedup"})
    by_eval = (d.get("decontamination") or {}).get("by_eval_set") or {}
    if by_eval:
        out += "<h3>Training rows removed per evaluation set they matched</h3>"
        out += table(["evaluation set", "rows removed"],
                     [text_cell(k) + num_cell(_number(v, path, f"by_eval_set.{k}"), "d", **{
                         "data-section": "decontamination", "data-row": k, "data-col": "removed"})
                      for k, v in by_eval.items()], **{"class": "data", "data-table": "decontamination"})
    return out + "</section>"


def validation_section(path: Path, data_docs: str) -> str:
    """The validation summary, one row per batch linking to its Data Docs page, and the failures."""
    v = _optional_json(path)
    head = '<section id="validation"><h2>Data validation</h2>'
    if v is None:
        return head + note(f"{path.name} not found: the validate stage has not run.") + "</section>"
    _check(isinstance(v.get("batches"), dict), path, f"keys {sorted(v)}", "the validate stage's output (batches)")
    index = f"{data_docs}/index.html"
    verdict = "passed" if v.get("success") else "FAILED"
    out = head + (f'<p>Validation <strong class="{"ok" if v.get("success") else "fail"}">{verdict}</strong>: '
                  f'{esc(v.get("critical_failures", "?"))} critical failure(s), {esc(v.get("warnings", "?"))} '
                  f'warning(s). <a href="{esc(index)}">Data Docs</a></p>')
    cols = ("rows", "expectations", "failed_critical", "failed_warning")
    rows, failures = [], []
    for name, b in v["batches"].items():
        link = f"{data_docs}/{b['docs_page']}" if b.get("docs_page") else index
        cells = [f'<td><a href="{esc(link)}">{esc(name)}</a></td>', text_cell(b.get("source", "")),
                 text_cell(b.get("kind", ""))]
        cells += [num_cell(_number(b.get(c), path, f"batches.{name}.{c}"), "d",
                           **{"data-section": "validation", "data-row": name, "data-col": c}) for c in cols]
        cells.append(text_cell("pass" if b.get("success") else "FAIL", **{"class": "ok" if b.get("success") else "fail"}))
        rows.append("".join(cells))
        failures += [(name, f) for f in b.get("failures") or []]
    out += table(["batch", "source", "kind", *cols, "result"], rows, **{"class": "data", "data-table": "validation"})
    if failures:
        out += "<h3>Failed expectations</h3>" + table(
            ["batch", "check", "severity", "column", "observed", "expected"],
            ["".join(text_cell(x) for x in (n, f.get("check"), f.get("severity"), f.get("column") or "",
                                                f.get("observed"), f.get("expected"))) for n, f in failures],
            **{"class": "data", "data-table": "validation-failures"})
    return out + "</section>"


# --------------------------------------------------------------------------------------------
# Variant sections


@dataclass(frozen=True)
class Reference:
    """What the gate compared a variant with, as far as the files say."""

    label: str  # registry.json compared_to ("base", "champion v3", "itself (the reference)")
    is_base: bool  # the reference is the base variant (first version)
    champion_version: int | None  # the champion it was compared with ("champion v3" -> 3)


def reference(registry: Mapping[str, Any] | None, base_variant: str) -> Reference | None:
    """The gate's reference from registry.json `compared_to`; None for an unregistered variant."""
    if registry is None:
        return None
    label = str(registry.get("compared_to") or "")
    tail = label.removeprefix("champion v")
    return Reference(label, label == base_variant, int(tail) if tail != label and tail.isdigit() else None)


def sts_section(vf: VariantFiles, base: VariantFiles | None, registry: Mapping[str, Any] | None,
                ref: Reference | None, tasks: Sequence[str]) -> str:
    """The 7 STS tasks and avg: the variant (the served backend's row, as the gate saw it), base
    (same backend when evaluated, as `scores.base_scores`), and the difference."""
    head = f'<section id="{esc(vf.name)}-sts"><h3>STS (Spearman &times;100)</h3>'
    raw = _optional_json(vf.sts)
    if raw is None:
        return head + note(f"{vf.sts.name} not found: run the evaluate stage (dvc repro evaluate@{vf.name}).") + "</section>"
    backend = (registry or {}).get("serve_backend") or TORCH
    mine = sts_row(raw, list(tasks), backend, vf.sts)
    theirs, base_backend = None, None
    if base is not None and base.name != vf.name and base.sts.is_file():
        braw = read_json(base.sts)
        base_backend = backend if has_sts(braw, backend) else TORCH
        theirs = sts_row(braw, list(tasks), base_backend, base.sts)
    champ = _champion_sts(ref, registry, vf.registry, tasks)
    header = ["task", vf.name]
    if theirs is not None:
        header += [f"{base.name}" + (" (gate reference)" if ref and ref.is_base else ""), f"{vf.name} \u2212 {base.name}"]
    if champ is not None:
        header += [f"{ref.label} (gate reference)", f"{vf.name} \u2212 champion"]
    rows = []
    for t in [*tasks, "avg"]:
        a = {"data-variant": vf.name, "data-section": "sts", "data-row": t}
        cells = text_cell(t) + num_cell(mine[t], **a, **{"data-col": "challenger"})
        if theirs is not None:
            cells += num_cell(theirs[t], **a, **{"data-col": "base"})
            cells += num_cell(mine[t] - theirs[t], "+.2f", **a, **{"data-col": "diff", "class": "derived"})
        if champ is not None:
            cells += num_cell(champ[t], **a, **{"data-col": "champion"})
            cells += num_cell(mine[t] - champ[t], "+.2f", **a, **{"data-col": "diff-champion", "class": "derived"})
        rows.append(cells)
    out = head + table(header, rows, **{"class": "data", "data-table": "sts", "data-variant": vf.name})
    notes = [f"Backend: {backend} (the one the version serves; the gate compared these scores)."]
    if base_backend is not None and base_backend != backend:
        notes.append(f"{base.name} has no {backend} scores: its {base_backend} scores are shown.")
    notes += _champion_sts_note(ref, registry)
    return out + "".join(note(n) for n in notes) + "</section>"


def _champion_sts_note(ref: Reference | None, registry: Mapping[str, Any] | None) -> list[str]:
    if ref is None:
        return []
    if ref.is_base:
        return ["No champion before this version: the gate compared it with base (the column above)."]
    if ref.champion_version is None:
        return [f"The gate compared it with {ref.label}."]
    if (registry or {}).get("reference_sts"):
        return [f"The gate compared it with {ref.label} (the champion columns, on the "
                f"{registry['reference_sts'].get('backend', TORCH)} backend)."]
    name = (registry or {}).get("name", "")
    return [f"The gate compared it with {ref.label}; this registry.json predates `reference_sts` and "
            f"does not record that champion's STS scores: see the tags of models:/{name}/{ref.champion_version} "
            f"in MLflow."]


def _champion_sts(ref: Reference | None, registry: Mapping[str, Any] | None, path: Path,
                  tasks: Sequence[str]) -> dict[str, float] | None:
    """The champion's STS row the gate compared with (registry.json `reference_sts`), or None
    when the reference was base (shown as the base column) or is not recorded."""
    row = (registry or {}).get("reference_sts")
    if ref is None or ref.is_base or ref.champion_version is None or not row:
        return None
    _check(isinstance(row, Mapping), path, f"reference_sts {row!r}", "a mapping of task -> Spearman x100")
    return {t: _number(row.get(t), path, f"reference_sts.{t}") for t in [*tasks, "avg"]}


def ci_cell(value: float, ci: Sequence[float] | None, path: Path, what: str, fmt: str = ".2f", **attrs: Any) -> str:
    """A figure with its bootstrap interval: `value [low, high]`, all three in data attributes."""
    v = _number(value, path, what)
    if ci is None:
        return num_cell(v, fmt, **attrs)
    _check(isinstance(ci, (list, tuple)) and len(ci) == 2, path, f"{what} interval {ci!r}", "[low, high]")
    lo, hi = (_number(x, path, f"{what} interval") for x in ci)
    a = _attrs({**attrs, "data-value": repr(v), "data-ci-low": repr(lo), "data-ci-high": repr(hi)})
    return f'<td class="num"{a}>{v:{fmt}} <span class="ci">[{lo:{fmt}}, {hi:{fmt}}]</span></td>'


def domain_section(vf: VariantFiles, registry: Mapping[str, Any] | None) -> str:
    """Each domain task's headline metric with its bootstrap interval per model of domain.json
    (the variant, base, BM25), the paired difference to base, and the champion's value as the gate
    saw it (registry.json `domain`)."""
    head = f'<section id="{esc(vf.name)}-domain"><h3>Domain tasks</h3>'
    d = _optional_json(vf.domain)
    if d is None or not d.get("tasks"):
        why = "not found (run the evaluate stage)" if d is None else "lists none"
        return head + note(f"No domain tasks: {vf.domain.name} {why}; a variant names its own in "
                           f"params.yaml variants.{vf.name}.domain_tasks.") + "</section>"
    _check(isinstance(d["tasks"], dict) and isinstance(d.get("models"), list), vf.domain,
           f"keys {sorted(d)}", "the evaluate stage's domain summary (models, tasks)")
    models = [str(m) for m in d["models"]]
    gated = (registry or {}).get("domain") or {}
    has_champion = any((g or {}).get("champion") is not None for g in gated.values())
    paired = any(vf.name in (t.get("vs_base") or {}) for t in d["tasks"].values())  # not for base itself
    others = [str(r) for r in d.get("references") or [] if r != "base"]  # general references beside base
    header = ["task", "metric", "n", *models]
    header += [f"{vf.name} \u2212 base (paired)", "p(diff \u2264 0)"] if paired else []
    header += [f"{vf.name} \u2212 {r} (paired)" for r in others]
    header += ["champion (gate)"] if has_champion else []
    rows = []
    for task, t in d["tasks"].items():
        m = t["metric"]
        a = {"data-variant": vf.name, "data-section": "domain", "data-row": task}
        cells = text_cell(task + (" (primary)" if task == d.get("primary") else ""))
        cells += text_cell(m) + num_cell(_number(t["n"], vf.domain, f"tasks.{task}.n"), "d", **a, **{"data-col": "n"})
        for model in models:
            r = t["results"].get(model)
            cells += num_cell(None) if r is None else ci_cell(
                r["metrics"][m], r["ci"].get(m), vf.domain, f"tasks.{task}.results.{model}", **a, **{"data-col": model})
        vs = (t.get("vs_base") or {}).get(vf.name)
        if paired and vs is None:
            cells += num_cell(None) + num_cell(None)
        elif paired:
            cells += ci_cell(vs["diff"], vs.get("ci"), vf.domain, f"tasks.{task}.vs_base", "+.2f",
                             **a, **{"data-col": "diff"})
            cells += num_cell(_number(vs["p_at_most_0"], vf.domain, f"tasks.{task}.vs_base.p_at_most_0"), ".4f",
                              **a, **{"data-col": "p"})
        for r in others:
            vr = (t.get("vs_references") or {}).get(r)
            cells += num_cell(None) if vr is None else ci_cell(
                vr["diff"], vr.get("ci"), vf.domain, f"tasks.{task}.vs_references.{r}", "+.2f",
                **a, **{"data-col": f"diff-{r}"})
        if has_champion:
            c = (gated.get(task) or {}).get("champion")
            cells += num_cell(None if c is None else _number(c, vf.registry, f"domain.{task}.champion"),
                              **a, **{"data-col": "champion"})
        rows.append(cells)
    refs = (registry or {}).get("references") or {}
    own = _optional_json(vf.sts)
    if refs and own is not None:  # general STS beside every reference: the forgetting guard's inputs
        a = {"data-variant": vf.name, "data-section": "domain", "data-row": "general_sts_avg"}
        cells = text_cell("general STS, 7-task avg") + text_cell("spearman") + num_cell(None)
        for model in models:
            v = own.get("avg") if model == vf.name else (refs.get(model) or {}).get("sts_avg")
            cells += num_cell(None if v is None else _number(v, vf.registry, f"references.{model}.sts_avg"),
                              **a, **{"data-col": model})
        cells += (num_cell(None) + num_cell(None)) if paired else ""
        cells += "".join(num_cell(None) for _ in others) + (num_cell(None) if has_champion else "")
        rows.append(cells)
    conf = (d.get("bootstrap") or {}).get("confidence", 0.95)
    out = head + table(header, rows, **{"class": "data", "data-table": "domain", "data-variant": vf.name})
    out += note(f"Headline metric x100 on each task's test split, {conf:.0%} bootstrap intervals; "
                f"the difference to base is paired over the same queries or pairs.")
    if not has_champion:
        out += note("No champion column: the gate had no champion on these tasks (first version, or not registered).")
    return out + "</section>"


def curves_section(vf: VariantFiles) -> str:
    """The training loss per step and the dev score per evaluation, with the exported step."""
    head = f'<section id="{esc(vf.name)}-training"><h3>Training</h3>'
    loss = read_curve(vf.loss, ("step", "loss"))
    dev = read_curve(vf.dev, ("step", "dev_score"))
    info = _optional_json(vf.train) or {}
    if not loss and not dev:
        why = (f"method {info['method']}: not trained" if info.get("method") == "pretrained"
               else "no training curves (run the train stage)")
        return head + note(f"No loss or dev curve: {why}.") + "</section>"
    charts = []
    if loss:
        charts.append(svg(line_spec(loss, "loss", "Training loss (per step)")))
    if dev:
        metric = info.get("dev_metric", "dev score")
        charts.append(svg(line_spec(dev, "dev_score", f"Dev: {metric}", marker=info.get("exported_step"))))
    out = head + f'<div class="charts">{"".join(charts)}</div>'
    if info.get("exported_step") is not None:
        out += note(f"Exported step {info['exported_step']} (best dev score {info.get('best_dev_score', '?')}; "
                    f"dashed line); {info.get('steps', '?')} steps, {info.get('examples', '?')} examples.")
    return out + "</section>"


def line_spec(rows: list[dict[str, float]], y: str, title: str, marker: float | None = None) -> dict[str, Any]:
    """Vega-Lite: `y` against `step` as a line with points, and a dashed rule at `marker`."""
    layers: list[dict[str, Any]] = [{
        "mark": {"type": "line", "point": len(rows) <= 40, "color": "#1f5fa8"},
        "encoding": {"x": {"field": "step", "type": "quantitative", "title": "step"},
                     "y": {"field": y, "type": "quantitative", "title": y, "scale": {"zero": False}}},
    }]
    if marker is not None:
        layers.append({"data": {"values": [{"step": marker}]},
                       "mark": {"type": "rule", "strokeDash": [4, 3], "color": "#b35900"},
                       "encoding": {"x": {"field": "step", "type": "quantitative"}}})
    return {"$schema": "https://vega.github.io/schema/vega-lite/v5.json", "title": title,
            "width": 480, "height": 200, "data": {"values": rows}, "layer": layers}


def seat_spec(tests: list[dict[str, Any]]) -> dict[str, Any]:
    """Vega-Lite: one bar per SEAT test (effect size d), the significant ones coloured."""
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": "SEAT effect size d per test", "width": 420, "height": {"step": 11},
        "data": {"values": tests}, "mark": "bar",
        "encoding": {
            "y": {"field": "test", "type": "nominal", "sort": None, "title": None, "axis": {"labelFontSize": 9, "labelLimit": 300}},
            "x": {"field": "effect_size", "type": "quantitative", "title": "effect size d"},
            "color": {"field": "significance", "type": "nominal", "title": None,
                      "scale": {"domain": ["significant", "not significant"], "range": ["#c0392b", "#9aa5b1"]}},
        },
    }


def bias_section(vf: VariantFiles) -> str:
    """SEAT: the summary, the effect sizes as a chart and, folded, the table per test."""
    head = f'<section id="{esc(vf.name)}-bias"><h3>Bias (SEAT)</h3>'
    b = _optional_json(vf.bias)
    if b is None:
        return head + note(f"{vf.bias.name} not found: run the bias stage (dvc repro bias@{vf.name}).") + "</section>"
    _check(isinstance(b.get("summary"), dict) and isinstance(b.get("tests"), dict), vf.bias,
           f"keys {sorted(b)}", "the bias stage's output (summary, tests)")
    s = b["summary"]
    a = {"data-variant": vf.name, "data-section": "bias-summary", "data-row": "summary"}
    summary = table(["mean |d|", "significant tests", "tests", "alpha (Holm-Bonferroni)"], [
        num_cell(_number(s.get("mean_abs_effect_size"), vf.bias, "summary.mean_abs_effect_size"), ".4f",
                 **a, **{"data-col": "mean_abs_effect_size"})
        + num_cell(_number(s.get("n_significant"), vf.bias, "summary.n_significant"), "d", **a, **{"data-col": "n_significant"})
        + num_cell(_number(s.get("n_tests"), vf.bias, "summary.n_tests"), "d", **a, **{"data-col": "n_tests"})
        + num_cell(_number(s.get("alpha"), vf.bias, "summary.alpha"), "g", **a, **{"data-col": "alpha"})],
        **{"class": "data", "data-table": "bias-summary", "data-variant": vf.name})
    tests, rows = [], []
    for name, t in b["tests"].items():
        d = _number(t.get("effect_size"), vf.bias, f"tests.{name}.effect_size")
        sig = bool(t.get("significant"))
        tests.append({"test": name, "effect_size": d, "significance": "significant" if sig else "not significant"})
        a = {"data-variant": vf.name, "data-section": "bias", "data-row": name}
        p, ph = t.get("p_value"), t.get("p_value_holm")
        rows.append(text_cell(name) + num_cell(d, "+.3f", **a, **{"data-col": "effect_size"})
                    + num_cell(None if p is None else _number(p, vf.bias, f"tests.{name}.p_value"), ".4f", **a, **{"data-col": "p_value"})
                    + num_cell(None if ph is None else _number(ph, vf.bias, f"tests.{name}.p_value_holm"), ".4f",
                               **a, **{"data-col": "p_value_holm"})
                    + text_cell("\u2605 significant" if sig else "no", **{"class": "sig" if sig else None, "data-col": "significant"}))
    out = head + summary + (svg(seat_spec(tests)) if tests else note("No SEAT tests in bias.json."))
    out += (f"<details><summary>Effect sizes and p-values per test ({len(rows)})</summary>"
            + table(["test", "effect size d", "p-value", "p-value (Holm)", "significant"], rows,
                    **{"class": "data", "data-table": "bias", "data-variant": vf.name}) + "</details>")
    return out + "</section>"


def gate_section(vf: VariantFiles, registry: Mapping[str, Any] | None) -> str:
    """The gate's decision, what it compared with, and its reasons (registry.json)."""
    head = f'<section id="{esc(vf.name)}-gate"><h3>Promotion gate</h3>'
    if registry is None:
        return head + note(f"Not registered: {vf.registry.name} not found (run dvc repro register@{vf.name}).") + "</section>"
    _check("decision" in registry and isinstance(registry.get("reasons", []), list), vf.registry,
           f"keys {sorted(registry)}", "the register stage's output (decision, reasons)")
    promoted = bool(registry.get("promoted"))
    verdict = f'<strong class="{"ok" if promoted else "fail"}" data-variant="{esc(vf.name)}" data-decision="{esc(registry["decision"])}">' \
              f'{esc(registry["decision"])}</strong>'
    out = head + (f"<p>{esc(registry.get('name', ''))} version {esc(registry.get('version', '?'))}: {verdict} "
                  f"({'promoted to champion' if promoted else 'not promoted'}), compared with "
                  f"{esc(registry.get('compared_to', '?'))}; champion now: version {esc(registry.get('champion', '-'))}.</p>")
    items = []
    for r in registry.get("reasons", []):
        kind = "ok" if str(r).startswith("ok") else "fail" if str(r).startswith("fail") else "info"
        items.append(f'<li class="{kind}">{esc(r)}</li>')
    out += f'<ul class="reasons" data-variant="{esc(vf.name)}">{"".join(items)}</ul>'
    out += note(f"MLflow run {registry.get('run_id', '?')}, served backend {registry.get('serve_backend', TORCH)}.")
    return out + "</section>"


@contextlib.contextmanager
def reading(path: Path, expected: str) -> Iterator[None]:
    """A missing key or a value of the wrong type while reading `path` becomes a DataError
    naming the file (a malformed metrics file, not a bug of the report)."""
    try:
        yield
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        raise DataError(path, None, f"{type(e).__name__}: {e}", expected) from e
    except ValueError as e:  # scores.sts_row names the file itself
        if isinstance(e, DataError):
            raise
        raise DataError(path, None, str(e).removeprefix(f"{path}: "), expected) from e


SECTIONS = (("sts", "STS"), ("domain", "Domain tasks"), ("training", "Training"), ("bias", "Bias"),
            ("gate", "Gate"))


def variant_section(vf: VariantFiles, base: VariantFiles | None, tasks: Sequence[str]) -> str:
    """One variant: its table of contents, then STS, domain, training, bias and gate."""
    with reading(vf.registry, "the register stage's registry.json"):
        registry = _optional_json(vf.registry)
        _check(registry is None or isinstance(registry, dict), vf.registry, type(registry).__name__, "a JSON object")
        ref = reference(registry, base.name if base else "")
    decision = "" if registry is None else (
        f' <span class="badge {"ok" if registry.get("promoted") else "fail"}">{esc(registry.get("decision", "?"))}</span>')
    toc = "".join(f'<li><a href="#{esc(vf.name)}-{k}">{esc(label)}</a></li>' for k, label in SECTIONS)
    parts = [f'<section class="variant" id="{esc(vf.name)}" data-variant="{esc(vf.name)}">'
             f"<h2>Variant {esc(vf.name)}{decision}</h2><nav class=\"toc\"><ul>{toc}</ul></nav>"]
    with reading(vf.sts, "the evaluate stage's sts.json (params.yaml evaluate.tasks and avg)"):
        parts.append(sts_section(vf, base, registry, ref, tasks))
    with reading(vf.domain, "the evaluate stage's domain.json"):
        parts.append(domain_section(vf, registry))
    with reading(vf.train, "the train stage's train.json"):
        parts.append(curves_section(vf))
    with reading(vf.bias, "the bias stage's bias.json"):
        parts.append(bias_section(vf))
    with reading(vf.registry, "the register stage's registry.json"):
        parts.append(gate_section(vf, registry))
    return "".join(parts) + "</section>"


CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2530;
       margin: 0; background: #f6f7f9; }
main { max-width: 1200px; margin: 0 auto; padding: 16px 24px 48px; background: #fff; }
h1 { font-size: 22px; margin: 8px 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px;
  border-bottom: 2px solid #d8dde3; padding-bottom: 4px; } h3 { font-size: 15px; margin: 18px 0 6px; }
table { border-collapse: collapse; margin: 6px 0; font-size: 13px; }
th, td { padding: 2px 8px; border-bottom: 1px solid #e3e6ea; text-align: left; vertical-align: top; }
thead th { background: #eef1f4; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.derived { color: #555; } .ci { color: #6b7785; font-size: 12px; }
table.kv th { background: none; font-weight: 600; padding-right: 16px; }
.note { color: #5a6672; font-size: 12.5px; margin: 4px 0; }
.ok { color: #1e7b34; } .fail { color: #b3261e; } .sig { color: #b3261e; font-weight: 600; }
.badge { font-size: 12px; border-radius: 3px; padding: 1px 6px; margin-left: 8px; border: 1px solid; }
nav.toc ul { list-style: none; padding: 0; margin: 4px 0 8px; display: flex; flex-wrap: wrap; gap: 4px 14px; }
nav.toc a { color: #1f5fa8; text-decoration: none; } nav.toc a:hover { text-decoration: underline; }
nav.toc.top ul { font-size: 14px; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; } figure.chart { margin: 4px 0; }
figure.chart svg { max-width: 100%; height: auto; }
ul.reasons { margin: 4px 0; padding-left: 20px; } ul.reasons li { margin: 2px 0; }
details summary { cursor: pointer; color: #1f5fa8; margin: 6px 0; }
"""


def build_report(run: RunFiles, identity: Mapping[str, str]) -> str:
    """The whole page (a string of HTML): run identity, data, then one section per variant.

    `identity`: `git.commit`, `git.dirty` (tracking.git_info) and `time`."""
    with reading(run.validate, "the validate stage's validate.json"):
        validate = _optional_json(run.validate)
        _check(validate is None or isinstance(validate, dict), run.validate, type(validate).__name__, "a JSON object")
        validation = validation_section(run.validate, run.data_docs)
    with reading(run.dedup, "the dedup stage's dedup.json"):
        dedup = dedup_section(run.dedup)
    base = next((v for v in run.variants if v.name == run.base_variant), None)
    variants = [variant_section(v, base, run.tasks) for v in run.variants]
    toc = ['<li><a href="#run">Run</a></li>', '<li><a href="#dedup">Dedup</a></li>',
           '<li><a href="#validation">Validation</a></li>']
    toc += [f'<li><a href="#{esc(v.name)}">{esc(v.name)}</a></li>' for v in run.variants]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>SimCSE run report</title><style>{CSS}</style></head><body><main>"
            f"<h1>SimCSE run report</h1><nav class=\"toc top\"><ul>{''.join(toc)}</ul></nav>"
            + identity_section(identity, validate) + dedup + validation + "".join(variants)
            + "</main></body></html>\n")


def write_report(out_dir: Path | str, page: str) -> Path:
    """Write the page as `<out_dir>/index.html`, replacing the folder atomically; its path."""
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        (tmp / PAGE).write_text(page, encoding="utf-8")
    return Path(out_dir) / PAGE
