"""FastDropout vs torch's dropout: the STS cost of the fast mask stream, over seeds, on one variant.

`dropout_impl: fast` draws dropout masks with `simcse_ops.fast_dropout` (4 mask elements per 64-bit
random number, in the encoder's dropout modules and inside attention); `native` uses torch's
`nn.Dropout` and SDPA's own attention dropout. Both compute the same loss and gradients for a given
mask (tests/test_trainer.py); only the random stream differs. So a difference in quality between
the two can only come from the statistics of the masks, and one seed per side cannot see it: this
trains the variant (default `unsup-wiki`, everything else as params.yaml) once per seed and method,
interleaved so that both sides see the same machine load, and scores each model with the pipeline's
own 7-task STS evaluation. Prints one JSON line: per run the STS average, the best dev step and
the training seconds, and per method the mean, the sample standard deviation and the mean training
time, plus the difference fast - native with a Welch 95 % interval.

Needs `dvc repro inputs` first (data/inputs/<variant>/train for training and dev, data/ingested for STS). Run by path:

    python benchmarks/dropout_impl.py --variant unsup-wiki --seeds 42 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train_and_score(params_raw: dict, variant: str, method: str, seed: int, out: Path) -> dict:
    from simcse_ops.config import parse_params
    from simcse_ops.evaluation import dev_scorer_for, evaluate_model
    from simcse_ops.trainer import run_training

    raw = json.loads(json.dumps(params_raw))
    raw["variants"][variant] = {**raw["variants"][variant], "dropout_impl": method, "seed": seed}
    params = parse_params(raw, ROOT / "params.yaml")
    v = params.variant(variant)
    run_dir = out / f"{method}-{seed}"
    t0 = time.perf_counter()
    run_training(v, variant=variant, data_dir=ROOT / "data/inputs" / variant / "train",
                 out_dir=run_dir / "model", metrics_dir=run_dir / "train", ckpt_dir=run_dir / "ckpt",
                 dev=dev_scorer_for(params, variant, ROOT / "data/inputs" / variant / "train"),
                 dev_batch_size=params.evaluate.batch_size, progress=False)
    train_s = time.perf_counter() - t0
    train = json.loads((run_dir / "train" / "train.json").read_text())
    sts = evaluate_model(params, run_dir / "model", ROOT / "data/ingested")
    return {"method": method, "seed": seed, "sts_avg": round(sts["avg"], 4),
            "best_step": train.get("best_step"), "best_dev": train.get("best_dev_score"),
            "train_s": round(train_s, 1)}


def summarise(rows: list[dict], methods: list[str]) -> dict:
    from scipy import stats

    out: dict = {}
    for m in methods:
        xs = [r["sts_avg"] for r in rows if r["method"] == m]
        ts = [r["train_s"] for r in rows if r["method"] == m]
        out[m] = {"n": len(xs), "mean": round(statistics.fmean(xs), 4),
                  "sd": round(statistics.stdev(xs), 4) if len(xs) > 1 else None,
                  "train_s_mean": round(statistics.fmean(ts), 1)}
    if set(methods) == {"fast", "native"} and min(out[m]["n"] for m in methods) > 1:
        a = [r["sts_avg"] for r in rows if r["method"] == "fast"]
        b = [r["sts_avg"] for r in rows if r["method"] == "native"]
        t = stats.ttest_ind(a, b, equal_var=False)
        ci = t.confidence_interval(0.95)
        out["fast_minus_native"] = {"mean": round(statistics.fmean(a) - statistics.fmean(b), 4),
                                    "ci95": [round(ci.low, 4), round(ci.high, 4)], "p": round(t.pvalue, 4),
                                    "speedup": round(out["native"]["train_s_mean"] / out["fast"]["train_s_mean"], 3)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", default="unsup-wiki")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    ap.add_argument("--methods", nargs="+", default=["fast", "native"], choices=["fast", "native"])
    ap.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.chdir(ROOT)
    import yaml

    from simcse_ops.hardware import machine_report

    params_raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        for seed in args.seeds:
            for method in args.methods:
                rows.append(train_and_score(params_raw, args.variant, method, seed, out))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "dropout_impl", "variant": args.variant, "runs": rows,
                      "summary": summarise(rows, args.methods), "machine": machine_report()}), flush=True)


if __name__ == "__main__":
    main()
