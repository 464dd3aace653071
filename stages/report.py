"""DVC stage `report`: the run report, reports/run/index.html (simcse_ops.report).

Reads the metrics files of every variant of params.yaml `variants` and the run's dedup and
validation summaries, where dvc.yaml declares them (the outputs of evaluate@V, bias@V,
register@V, train@V, dedup and validate: listing them here too would be a second source of
truth), and writes one self-contained HTML page that opens from disk.

    python -m stages.report --params params.yaml --out reports/run
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

from simcse_ops.config import load_params
from simcse_ops.errors import run_main
from simcse_ops.report import build_report, locate, write_report
from simcse_ops.tracking import git_info


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", type=Path, required=True, help="folder of the report (reports/run)")
    args = ap.parse_args(argv)

    params = load_params(args.params)
    root = Path(args.params).resolve().parent  # the DVC project: dvc.yaml says where the metrics are
    run = locate(root, list(params.variants), params.register.base_variant, list(params.evaluate.tasks), args.out)
    identity = {**git_info(root), "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    page = write_report(args.out, build_report(run, identity))
    print(f"report: {len(run.variants)} variant(s) -> {page}")
    return page


if __name__ == "__main__":
    raise SystemExit(run_main(main))  # a user error: one line, its exit status (errors.py)
