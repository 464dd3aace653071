"""Domain adaptation methods for `biomed`, compared on the domain tasks: dev to choose, test to report.

Each configuration overrides keys of params.yaml `variants.biomed` (method, corpus, base_model,
...), trains with the pipeline's own code (simcse_ops.trainer / simcse_ops.tsdae, best step on
the primary task's dev split), and is scored with the pipeline's own evaluation: every domain task
on its dev and test splits (test: with the 95 % bootstrap interval and the paired difference to the
base encoder, scored once and cached), and the 7-task general STS average. One JSON line per
configuration.

Needs `dvc repro validate` first (data/ingested, data/clean). Run by path:

    python benchmarks/domain_adaptation.py --configs unsup tsdae pairs --out /tmp/adapt
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name -> overrides of variants.biomed (everything else as in params.yaml)
CONFIGS: dict[str, dict] = {
    "base": {"method": "pretrained"},
    "unsup": {"method": "unsup", "corpus": ["pubmedqa"]},
    "unsup-transductive": {"method": "unsup", "corpus": ["pubmedqa", "pubmedqa_heldout"]},
    "tsdae": {"method": "tsdae", "corpus": ["pubmedqa"], "batch_size": 8, "lr": 3e-5,
              "max_seq_length": 64, "mlp": False, "eval_steps": 100, "checkpoint_steps": 0},
    "pairs-qa": {"method": "pairs", "corpus": ["pubmedqa_qa_pairs"], "mlp": False, "batch_size": 32,
                 "lr": 3e-5, "epochs": 4, "max_seq_length": 128, "eval_steps": 8, "checkpoint_steps": 0},
    "pairs-all": {"method": "pairs", "corpus": ["pubmedqa_qa_pairs", "pubmedqa_ict_pairs"], "mlp": False,
                  "batch_size": 32, "lr": 3e-5, "epochs": 1, "max_seq_length": 128, "eval_steps": 20,
                  "checkpoint_steps": 0},
    "unsup-from-wiki": {"method": "unsup", "corpus": ["pubmedqa"], "base_model": "models/unsup-wiki"},
    "unsup-mixed": {"method": "unsup", "corpus": ["pubmedqa", "wiki1m"], "max_train_samples": 6000},
}


def general_sts(params, model_dir) -> float:
    from simcse_ops.evaluation import evaluate_model

    return evaluate_model(params, model_dir, ROOT / "data/ingested")["avg"]


def scored(params, model_dir, tasks: list[str], split_key: str) -> dict[str, dict]:
    """{task: {metric, value, ci, items}} of one model on each task's dev or test split."""
    from simcse_ops.evaluation import rescore_domain_task

    out = {}
    for t in tasks:
        task = params.evaluate.domain_tasks[t]
        split_params = params
        if split_key == "dev":  # score the dev split through the same function
            dev = dataclasses.replace(task, split=task.dev_split)
            ev = dataclasses.replace(params.evaluate, domain_tasks={**params.evaluate.domain_tasks, t: dev})
            split_params = dataclasses.replace(params, evaluate=ev)
        out[t] = rescore_domain_task(split_params, t, model_dir, ROOT / "data/ingested")
    return out


def base_results(params, tasks: list[str], out: Path, sts: bool) -> dict:
    """The base encoder once (cached in `out`): dev and test per task, and the general average."""
    cache = out / "base.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    model = ROOT / "models/base"
    res = {"dev": scored(params, model, tasks, "dev"), "test": scored(params, model, tasks, "test"),
           "sts_avg": general_sts(params, model) if sts else None}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(res))
    return res


def run_config(name: str, overrides: dict, out: Path, sts: bool, tasks: list[str]) -> dict:
    from simcse_ops.config import parse_params
    from simcse_ops.evaluation import dev_scorer_for
    from simcse_ops.stats import paired_bootstrap
    from simcse_ops.trainer import run_training
    from simcse_ops.tsdae import run_tsdae

    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["variants"]["biomed"] = {**raw["variants"]["biomed"], **overrides}
    params = parse_params(raw, ROOT / "params.yaml")
    v = params.variant("biomed")
    base = base_results(params, tasks, out, sts)
    t0 = time.perf_counter()
    train = {}
    if v.method == "pretrained":
        model_dir = ROOT / "models/base"
    else:
        model_dir = out / name / "model"
        run = run_tsdae if v.method == "tsdae" else run_training
        run(v, variant="biomed", data_dir=ROOT / "data/clean", out_dir=model_dir,
            metrics_dir=out / name / "train", ckpt_dir=out / name / "ckpt",
            dev=dev_scorer_for(params, "biomed", ROOT / "data/ingested"),
            dev_batch_size=params.evaluate.batch_size, progress=False)
        train = json.loads((out / name / "train" / "train.json").read_text())
        train = {k: train.get(k) for k in ("examples", "steps", "best_step", "best_dev_score", "train_s")}
    dev = scored(params, model_dir, tasks, "dev")
    test = scored(params, model_dir, tasks, "test")
    b = params.evaluate.bootstrap
    report = {}
    for t in tasks:
        r, br = test[t], base["test"][t]
        pb = paired_bootstrap(r["items"], br["items"], r["metric"], b.n_resamples, b.confidence, b.seed)
        report[t] = {"metric": r["metric"], "value": r["value"], "ci": r["ci"], "base": br["value"],
                     "vs_base": [round(pb.diff, 2), round(pb.ci_low, 2), round(pb.ci_high, 2)],
                     "p_at_most_0": pb.p_at_most(0.0)}
    return {"config": name, "overrides": overrides,
            "dev": {t: round(dev[t]["value"], 2) for t in tasks},
            "dev_base": {t: round(base["dev"][t]["value"], 2) for t in tasks},
            "test": report, "sts_avg": general_sts(params, model_dir) if sts else None,
            "sts_avg_base": base["sts_avg"], "train": train, "wall_s": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--out", type=Path, default=Path("/tmp/simcse-adapt"))
    ap.add_argument("--no-sts", action="store_true", help="skip the 7-task general STS average")
    ap.add_argument("--tasks", nargs="+", default=["pubmedqa_conclusion", "mqp"],
                    help="domain tasks to score (pubmedqa_abstract is saturated and slow: 1,000 long documents)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.chdir(ROOT)
    from simcse_ops.hardware import machine_report

    for name in args.configs:
        line = run_config(name, CONFIGS[name], args.out, not args.no_sts, args.tasks)
        print(json.dumps({**line, "machine": machine_report()}), flush=True)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
