"""DVC stage `ingest`: one normalised Parquet file per `params.yaml` source, and row counts.

    python -m stages.ingest --params params.yaml --out data/ingested --metrics metrics/ingest.json
    python -m stages.ingest ... --only sts12 stsb     # re-read some sources, keep the others
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from simcse_ops.config import load_params
from simcse_ops.errors import run_main
from simcse_ops.ingest import link_data_root_for_queue, run_ingest


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", type=Path, required=True, help="folder of <source>.parquet files")
    ap.add_argument("--metrics", type=Path, required=True, help="row-count metrics JSON to write")
    ap.add_argument("--only", nargs="+", metavar="SOURCE",
                    help="ingest only these sources; the others' files are kept as they are")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    params = load_params(args.params)
    metrics = run_ingest(params, args.out, args.metrics, args.only)
    link_data_root_for_queue(Path(args.params).resolve().parent, params.data.root)  # for `dvc queue start`
    logging.getLogger("stages.ingest").info(
        "ingest: %d rows in %d source(s) -> %s", metrics["total_rows"], len(metrics["sources"]), args.out
    )
    return metrics


if __name__ == "__main__":
    raise SystemExit(run_main(main))  # a user error: one line, its exit status (errors.py)
