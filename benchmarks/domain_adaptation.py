"""Domain adaptation methods for `biomed`, compared on the domain tasks: dev to choose, test to report.

Each configuration overrides keys of params.yaml `variants.biomed` (method, corpus, base_model,
...), trains with the pipeline's own code (simcse_ops.trainer / simcse_ops.tsdae, best step on
the primary task's dev split), and is scored with the pipeline's own evaluation: every domain task
on its dev and test splits (test: with the 95 % bootstrap interval and the paired difference to the
base encoder), and the 7-task general STS average. One JSON line per configuration.

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
    "pairs": {"method": "pairs", "corpus": ["pubmedqa_pairs"], "mlp": False, "batch_size": 32,
              "lr": 3e-5, "epochs": 3, "max_seq_length": 128, "eval_steps": 10, "checkpoint_steps": 0},
    "unsup-from-wiki": {"method": "unsup", "corpus": ["pubmedqa"], "base_model": "models/unsup-wiki"},
    "unsup-mixed": {"method": "unsup", "corpus": ["pubmedqa", "wiki1m"], "max_train_samples": 6000},
}


def general_sts(params, model_dir) -> float:
    from simcse_ops.evaluation import evaluate_model

    return evaluate_model(params, model_dir, ROOT / "data/ingested")["avg"]


def dev_scores(params, variant: str, model_dir) -> dict[str, float]:
    """Every domain task of the variant on its dev split (headline metric x100)."""
    from simcse_ops.evaluation import _embedder, load_domain_task, score_domain_task, task_metric

    embed, chunker = _embedder(params, model_dir)
    out = {}
    for t in params.variant(variant).domain_tasks:
        data = load_domain_task(params, ROOT / "data/ingested", t, params.evaluate.domain_tasks[t].dev_split)
        r = score_domain_task(data, embed, chunker, params.evaluate.long_documents)
        out[t] = r.metrics[task_metric(params, t, data.kind)]
    return out


def run_config(name: str, overrides: dict, out: Path, sts: bool) -> dict:
    from simcse_ops.config import load_params, parse_params
    from simcse_ops.evaluation import dev_scorer_for, evaluate_domain
    from simcse_ops.trainer import run_training
    from simcse_ops.tsdae import run_tsdae

    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["variants"]["biomed"] = {**raw["variants"]["biomed"], **overrides}
    params = parse_params(raw, ROOT / "params.yaml")
    v = params.variant("biomed")
    model_dir = out / name / "model"
    t0 = time.perf_counter()
    train = {}
    if v.method == "pretrained":
        model_dir = ROOT / "models/base"
    else:
        run = run_tsdae if v.method == "tsdae" else run_training
        res = run(v, variant="biomed", data_dir=ROOT / "data/clean", out_dir=model_dir,
                  metrics_dir=out / name / "train", ckpt_dir=out / name / "ckpt",
                  dev=dev_scorer_for(params, "biomed", ROOT / "data/ingested"),
                  dev_batch_size=params.evaluate.batch_size, progress=False)
        train = json.loads((out / name / "train" / "train.json").read_text())
        train = {k: train.get(k) for k in ("examples", "steps", "best_step", "best_dev_score", "train_s")}
        del res
    train_s = time.perf_counter() - t0
    summary, _ = evaluate_domain(params, "biomed", {"biomed": model_dir, "base": ROOT / "models/base"},
                                 ROOT / "data/ingested")
    test = {}
    for t, task in summary["tasks"].items():
        m = task["metric"]
        r = task["results"]["biomed"]
        test[t] = {"metric": m, "value": r["metrics"][m], "ci": r["ci"][m],
                   "base": task["results"]["base"]["metrics"][m],
                   "bm25": task["results"].get("bm25", {}).get("metrics", {}).get(m),
                   "vs_base": task["vs_base"].get("biomed")}
    return {"config": name, "overrides": overrides, "dev": dev_scores(params, "biomed", model_dir),
            "test": test, "sts_avg": general_sts(params, model_dir) if sts else None,
            "train": train, "wall_s": round(time.perf_counter() - t0, 1), "train_wall_s": round(train_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--out", type=Path, default=Path("/tmp/simcse-adapt"))
    ap.add_argument("--no-sts", action="store_true", help="skip the 7-task general STS average")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.chdir(ROOT)
    for name in args.configs:
        line = run_config(name, CONFIGS[name], args.out, not args.no_sts)
        print(json.dumps(line), flush=True)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
