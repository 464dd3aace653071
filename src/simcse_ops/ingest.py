"""The ingest stage's library half: read every source of `params.yaml` and write one Parquet file
per source plus the row-count metrics.

Atomicity: every source is read (and checked) in memory before anything is written, so a bad
record fails the stage with nothing touched. The Parquet files are then written into a fresh
temporary folder beside the output folder, which is swapped in as a whole
(`simcse_ops.files.atomic_path`): readers see either the previous folder or the new one, never a
mix and never a partial file.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import pyarrow.parquet as pq

from simcse_ops.config import ConfigError, Params
from simcse_ops.files import atomic_path, read_json, write_json
from simcse_ops.readers import SourceResult, load_source

log = logging.getLogger(__name__)


def select_sources(params: Params, only: Sequence[str] | None) -> list[str]:
    """The source names to ingest: all of `params.sources`, or `only` (checked)."""
    if not only:
        return list(params.sources)
    unknown = [n for n in only if n not in params.sources]
    if unknown:
        raise ConfigError(
            f"{params.path}: --only {' '.join(unknown)}: no such source in sources; "
            f"known: {', '.join(params.sources)}"
        )
    return list(dict.fromkeys(only))


def read_sources(params: Params, names: Sequence[str]) -> dict[str, SourceResult]:
    """Read the named sources; the first error stops everything (nothing is written yet)."""
    results = {}
    for name in names:
        t0 = time.perf_counter()
        result = load_source(
            name, params.sources[name], params.data_root, params.ingest.max_bad_fraction
        )
        log.info(
            "ingest %s: %d rows from %d file(s), %d bad record(s) skipped (%.1f s)",
            name, result.table.num_rows, len(result.files), result.n_bad,
            time.perf_counter() - t0,
        )
        results[name] = result
    return results


def write_ingested(
    results: dict[str, SourceResult], out_dir: Path, keep: Sequence[str] = ()
) -> None:
    """Write `<out_dir>/<source>.parquet` for each result, replacing `out_dir` atomically.

    Files of the sources named in `keep` (a partial `--only` run) are carried over unchanged
    from the current folder; any other file there is dropped.
    """
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for name in keep:
            old = out_dir / f"{name}.parquet"
            if old.is_file() and name not in results:
                _link_or_copy(old, tmp / old.name)
        for name, result in results.items():
            pq.write_table(result.table, tmp / f"{name}.parquet")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def build_metrics(
    params: Params, results: dict[str, SourceResult], previous: dict | None = None
) -> dict:
    """`metrics/ingest.json`: per source its rows, files, bad records and reader counts (per
    split and subset for STS sources); with `previous`, sources not re-read keep their entry."""
    sources: dict[str, dict] = {}
    old = (previous or {}).get("sources", {})
    for name, cfg in params.sources.items():
        if name in results:
            entry = {"format": cfg.format, "role": cfg.role, **results[name].metrics()}
        elif name in old:
            entry = old[name]
        else:
            continue
        sources[name] = entry
    return {
        "total_rows": sum(e["rows"] for e in sources.values()),
        "bad_records": sum(e.get("bad_records", 0) for e in sources.values()),
        "max_bad_fraction": params.ingest.max_bad_fraction,
        "sources": sources,
    }


def run_ingest(
    params: Params, out_dir: Path, metrics_path: Path, only: Sequence[str] | None = None
) -> dict:
    """Read, then write the Parquet folder, then the metrics. Returns the metrics."""
    names = select_sources(params, only)
    results = read_sources(params, names)
    out_dir, metrics_path = Path(out_dir), Path(metrics_path)
    keep = [n for n in params.sources if n not in results] if only else []
    write_ingested(results, out_dir, keep=keep)
    previous = read_json(metrics_path) if only and metrics_path.is_file() else None
    metrics = build_metrics(params, results, previous)
    write_json(metrics_path, metrics)
    return metrics


# --------------------------------------------------------------------------------------------
# Queued experiments

QUEUE_COPIES = Path(".dvc") / "tmp" / "exps"  # `dvc queue start` runs each experiment in <this>/<tmp>/


def link_data_root_for_queue(repo: Path | str, data_root: str) -> Path | None:
    """Make a relative `data.root` that leaves the repository (`../shared/data`) resolve from the
    copies `dvc queue start` runs experiments in: from `.dvc/tmp/exps/<tmp>/`, `../shared` is
    `.dvc/tmp/exps/shared`, so a symlink there to the real `../shared` lets DVC hash the ingest
    stage's deps and the stage read them. Returns the link (None when the root is absolute, inside
    the repository, or climbs too far to land under .dvc/). `.dvc/tmp` is ignored by git and DVC."""
    repo, rel = Path(repo).resolve(), Path(data_root)
    ups = 0
    for part in rel.parts:
        if part != "..":
            break
        ups += 1
    if rel.is_absolute() or ups == 0 or ups >= len(QUEUE_COPIES.parts) + 1 or len(rel.parts) == ups:
        return None
    anchor = repo / QUEUE_COPIES / "copy"
    for _ in range(ups):
        anchor = anchor.parent
    link = anchor / rel.parts[ups]
    target = (repo / Path(*rel.parts[: ups + 1])).resolve()
    if link.is_symlink() and link.resolve() == target:
        return link
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        return None  # something DVC made: leave it alone
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target, target_is_directory=True)
    return link
