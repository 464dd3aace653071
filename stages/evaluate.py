"""DVC stage `evaluate@<variant>`: the 7 STS tasks -> metrics/<variant>/sts.json + bar plot CSV."""

from __future__ import annotations

import argparse
import csv
import io
import os
from pathlib import Path

from simcse_ops.config import load_params
from simcse_ops.evaluation import evaluate_model
from simcse_ops.files import atomic_path, write_json


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", type=Path, required=True, help="folder of ingested Parquet files")
    ap.add_argument("--model", required=True, help="model folder (models/<variant>)")
    ap.add_argument("--out", type=Path, required=True, help="metrics folder (metrics/<variant>)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    params = load_params(args.params)
    params.variant(args.variant)  # unknown variant -> error listing the known ones
    result = evaluate_model(params, args.model, args.data)
    result = {**result, "variant": args.variant}
    write_json(args.out / "sts.json", result)

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["task", "spearman"])
    for task in [*params.evaluate.tasks, "avg"]:
        w.writerow([task, result[task]])
    with atomic_path(args.out / "sts_tasks.csv") as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")

    table = "  ".join(f"{t} {result[t]:.2f}" for t in [*params.evaluate.tasks, "avg"])
    print(f"evaluate@{args.variant}: {table}  ({result['timing']['total_s']:.0f} s)")


if __name__ == "__main__":
    main()
