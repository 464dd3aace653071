"""DVC stage `inputs`: one folder per consumer with exactly the sources it reads
(`simcse_ops.inputs`), so that each train@V, evaluate@V, register@V and bias@V depends on its own
data only and a change to one source reruns only the stages that read it.

    python -m stages.inputs --clean data/clean --ingested data/ingested --out data/inputs
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from simcse_ops.config import load_params
from simcse_ops.errors import run_main
from simcse_ops.inputs import write_inputs
from simcse_ops.progress import configure_logging


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--clean", type=Path, required=True, help="folder of the clean <source>.parquet (dedup)")
    ap.add_argument("--ingested", type=Path, required=True, help="folder of the ingested <source>.parquet")
    ap.add_argument("--out", type=Path, required=True, help="folder to write (data/inputs)")
    args = ap.parse_args(argv)
    configure_logging()

    summary = write_inputs(load_params(args.params), args.clean, args.ingested, args.out)
    log = logging.getLogger("stages.inputs")
    for folder, sources in summary.items():
        log.info("inputs: %s/%s: %s", args.out, folder, ", ".join(sources) or "(nothing)")
    return summary


if __name__ == "__main__":
    raise SystemExit(run_main(main))  # a user error: one line, its exit status (errors.py)
