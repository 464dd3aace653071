"""DVC stage `validate`: Great Expectations suites over the clean training sources and the
evaluation sets. A failed critical expectation fails the stage (so `dvc repro` stops before
training) with the source, the check and the observed value; warnings are recorded.

    python -m stages.validate --clean data/clean --ingested data/ingested \\
        --metrics metrics/validate.json --docs reports/data_docs --ok data/validated.json
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from simcse_ops.config import load_params
from simcse_ops.errors import run_main
from simcse_ops.expectations import run_validate


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--clean", type=Path, required=True, help="folder of deduplicated training sources")
    ap.add_argument("--ingested", type=Path, required=True, help="folder of ingested sources (evaluation sets)")
    ap.add_argument("--metrics", type=Path, required=True, help="summary JSON (a DVC metric)")
    ap.add_argument("--docs", type=Path, required=True, help="folder for the Data Docs HTML site")
    ap.add_argument("--ok", type=Path, required=True,
                    help="written only when every critical expectation holds; training depends on it")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)

    params = load_params(args.params)
    summary = run_validate(params, args.clean, args.ingested, args.metrics, args.docs, args.ok)
    log = logging.getLogger("stages.validate")
    for name, b in summary["batches"].items():
        for f in b["failures"]:
            log.warning("validate: warning: %s: %s (%s%s): observed %s; expected %s", name, f["check"],
                        f["expectation"], f" on {f['column']}" if f["column"] else "", f["observed"], f["expected"])
    log.info("validate: %d batch(es) pass every critical expectation (%d warning(s)); Data Docs: %s",
             len(summary["batches"]), summary["warnings"], args.docs / "index.html")
    return summary


if __name__ == "__main__":
    raise SystemExit(run_main(main))  # a user error: one line, its exit status (errors.py)
