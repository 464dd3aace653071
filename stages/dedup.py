"""DVC stage `dedup`: decontaminate the training sources against every evaluation set, remove
exact and near duplicates, and write the clean Parquet files, an audit of every removed row and
the counts per reason.

    python -m stages.dedup --data data/ingested --out data/clean \\
        --metrics metrics/dedup.json --audit reports/dedup_audit.parquet
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from simcse_ops.config import load_params
from simcse_ops.dedup import run_dedup
from simcse_ops.errors import run_main
from simcse_ops.progress import configure_logging


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", type=Path, required=True, help="folder of ingested <source>.parquet")
    ap.add_argument("--out", type=Path, required=True, help="folder for the clean <source>.parquet")
    ap.add_argument("--metrics", type=Path, required=True, help="counts per reason (JSON)")
    ap.add_argument("--audit", type=Path, required=True, help="every removed row (Parquet)")
    args = ap.parse_args(argv)
    configure_logging()

    params = load_params(args.params)
    metrics = run_dedup(params, args.data, args.out, args.metrics, args.audit)
    t = metrics["totals"]
    logging.getLogger("stages.dedup").info(
        "dedup: %d -> %d rows (contamination %d exact + %d near, duplicates %d exact + %d near) -> %s",
        t["rows_in"], t["rows_out"], t["contamination_exact"], t["contamination_near"],
        t["exact_duplicate"], t["near_duplicate"], args.out,
    )
    return metrics


if __name__ == "__main__":
    raise SystemExit(run_main(main))  # a user error: one line, its exit status (errors.py)
