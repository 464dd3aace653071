"""DVC stage `evaluate@<variant>`: the 7 STS tasks -> metrics/<variant>/sts.json + bar plot CSV,
with `backends` in sts.json: the same tasks with the ONNX graphs of exports/<variant> (onnx,
onnx-int8), their parity to torch and whether onnx-int8 is offered (serve.int8_max_drop);
the variant's domain tasks (with the base encoder and BM25 scored in the same run) ->
metrics/<variant>/domain.json, domain_items.json (per query / pair, for the gate) and
domain_tasks.csv (bar plot). A variant without domain tasks writes them empty. The encode
times go to metrics/<variant>/timing.json, so that sts.json and domain.json change only when a
score does (`evaluation.split_wall_times`)."""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
from pathlib import Path

from simcse_ops.backend_eval import evaluate_backends
from simcse_ops.config import load_params
from simcse_ops.errors import MissingInputError, run_main
from simcse_ops.evaluation import domain_plot_rows, evaluate_domain, evaluate_model, split_wall_times
from simcse_ops.files import atomic_path, write_json
from simcse_ops.progress import configure_logging

log = logging.getLogger("stages.evaluate")


def write_csv(path: Path, header: list[str], rows: list) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")


def run_domain(params, variant: str, model: str, baseline: str | None, baseline_model: str | None,
               data: Path, reference_models: Path | None = None) -> tuple[dict, dict]:
    """Score the variant's domain tasks, beside its references (register.domain.references, the
    base variant first) -> (domain.json, domain_items.json) mappings."""
    v = params.variant(variant)
    if v.domain_tasks:
        if variant == baseline:
            models = {"base": model}
        else:
            models = {variant: model, "base": baseline_model}
            for ref in params.domain_references(variant):
                if ref == baseline:
                    continue
                folder = (reference_models or Path(baseline_model).parent) / ref
                if not (folder / "config.json").is_file():
                    raise MissingInputError(f"{folder}: the reference {ref!r} of {variant} has no model; "
                                            f"run `dvc repro train@{ref}` first")
                models[ref] = str(folder)
        summary, items = evaluate_domain(params, variant, models, data)
    else:
        summary = {"variant": variant, "primary": None, "models": [], "tasks": {}}
        items = {"tasks": {}}
    return summary, items


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", type=Path, required=True, help="folder of ingested Parquet files")
    ap.add_argument("--model", required=True, help="model folder (models/<variant>)")
    ap.add_argument("--out", type=Path, required=True, help="metrics folder (metrics/<variant>)")
    ap.add_argument("--exports", type=Path, default=None,
                    help="the export stage's folder (exports/<variant>): score the ONNX backends too; "
                         "without it sts.json has no `backends` and only serve.backend torch registers")
    ap.add_argument("--baseline", default=None, help="the reference variant (register.base_variant)")
    ap.add_argument("--baseline-model", default=None,
                    help="its model folder (models/base), scored beside a domain variant on its tasks")
    ap.add_argument("--reference-models", type=Path, default=None,
                    help="the folder of the references' models (models/): a domain variant is scored beside "
                         "each of register.domain.references (default: --baseline-model's folder)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    configure_logging()  # progress lines of long encodes

    params = load_params(args.params)
    params.variant(args.variant)  # unknown variant -> error listing the known ones
    if params.variant(args.variant).domain_tasks and args.variant != args.baseline and not args.baseline_model:
        ap.error("a domain variant needs --baseline and --baseline-model (models/base)")
    log.info("evaluate@%s: %d STS tasks with torch", args.variant, len(params.evaluate.tasks))
    result = evaluate_model(params, args.model, args.data)
    result = {**result, "variant": args.variant}
    if args.exports is not None:  # after the torch fields, which stay as they were
        log.info("evaluate@%s: the STS tasks with the ONNX backends of %s", args.variant, args.exports)
        result["backends"] = evaluate_backends(params, args.model, args.exports, args.data, result)
    if params.variant(args.variant).domain_tasks:
        log.info("evaluate@%s: domain tasks %s", args.variant, ", ".join(params.variant(args.variant).domain_tasks))
    summary, items = run_domain(params, args.variant, args.model, args.baseline, args.baseline_model, args.data,
                                args.reference_models)

    result, summary, timing = split_wall_times(result, summary)
    write_json(args.out / "sts.json", result)
    write_csv(args.out / "sts_tasks.csv", ["task", "spearman"],
              [[t, result[t]] for t in [*params.evaluate.tasks, "avg"]])
    write_json(args.out / "domain_items.json", items)
    write_json(args.out / "domain.json", summary)
    write_csv(args.out / "domain_tasks.csv", ["task", "model", "value"], domain_plot_rows(summary))
    write_json(args.out / "timing.json", timing)

    for t, task in summary["tasks"].items():
        cells = "  ".join(f"{m} {r['metrics'][task['metric']]:.2f}" for m, r in task["results"].items())
        print(f"evaluate@{args.variant}: {t} ({task['metric']}, n={task['n']}): {cells}")
    table = "  ".join(f"{t} {result[t]:.2f}" for t in [*params.evaluate.tasks, "avg"])
    print(f"evaluate@{args.variant}: {table}  ({timing['sts']['total_s']:.0f} s)")
    for name, b in result.get("backends", {}).items():
        if name != "torch" and "avg" not in b:  # not exported
            print(f"evaluate@{args.variant}: {name} not offered ({b['reason']})")
        elif name != "torch":
            offered = "" if "offered" not in b else f"  offered: {b['offered']} ({b['reason']})"
            print(f"evaluate@{args.variant}: {name} avg {b['avg']:.2f}, min cosine to torch "
                  f"{b['parity']['min']:.4f}{offered}")


if __name__ == "__main__":
    raise SystemExit(run_main(main))  # a user error: one line, its exit status (errors.py)
