"""DVC stage `bias@<variant>`: SEAT probes -> metrics/<variant>/bias.json + bias_tests.csv (plot)."""

from __future__ import annotations

import argparse
import csv
import io
import os
import time
from pathlib import Path

from simcse_ops.bias import load_seat_tests, probe_model
from simcse_ops.config import load_params
from simcse_ops.errors import run_main
from simcse_ops.files import atomic_path, write_json
from simcse_ops.progress import configure_logging

CSV_FIELDS = ("test", "effect_size", "p_value", "p_value_holm", "significant")


def tests_csv(result: dict) -> str:
    """One row per test, for the DVC bar plot of effect sizes."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for name, t in result["tests"].items():
        w.writerow([name, *(("" if t[k] is None else t[k]) for k in CSV_FIELDS[1:])])
    return buf.getvalue()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--variant", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--data", type=Path, required=True, help="folder of ingested Parquet files")
    ap.add_argument("--model", required=True, help="model folder (models/<variant>)")
    ap.add_argument("--out", type=Path, required=True, help="metrics folder (metrics/<variant>)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    configure_logging()  # progress lines of long encodes

    params = load_params(args.params)
    params.variant(args.variant)  # unknown variant -> error listing the known ones
    cfg = params.bias
    tests = load_seat_tests(args.data, cfg, params.path)

    t0 = time.perf_counter()
    result = probe_model(cfg, args.model, tests)
    result = {"variant": args.variant, **result}
    write_json(args.out / "bias.json", result)
    with atomic_path(args.out / "bias_tests.csv") as tmp:
        tmp.write_text(tests_csv(result), encoding="utf-8")

    s = result["summary"]
    untested = [n for n, t in result["tests"].items() if t["p_value"] is None]
    print(
        f"bias@{args.variant}: {s['n_tests']} SEAT tests, mean |effect size| {s['mean_abs_effect_size']:.3f}, "
        f"{s['n_significant']} significant (Holm, alpha {s['alpha']})"
        + (f"; no p-value for {', '.join(untested)}" if untested else "")
        + f"  ({time.perf_counter() - t0:.0f} s)"
    )


if __name__ == "__main__":
    raise SystemExit(run_main(main))  # a user error: one line, its exit status (errors.py)
