"""What each stage reads, as one folder per consumer: the `inputs` stage (data/inputs/).

DVC decides what to rerun from each stage's deps. With every `train@V` depending on the whole of
data/clean and data/ingested, a new file in one domain's folder made every variant stale. DVC
cannot interpolate a list into a stage's deps (`${item.corpus}` fails for a list), so the sources a
stage reads cannot be listed per variant in dvc.yaml; instead this stage writes, after validation,
one folder per consumer holding exactly the `<source>.parquet` files that consumer reads:

    data/inputs/<V>/train/      the variant's corpus (data/clean) and the dev splits that select
                                its best step (data/ingested: evaluate.dev_task's source and, for a
                                domain variant, its domain tasks' sources; `evaluation.dev_scorer_for`)
    data/inputs/<V>/evaluate/   the sources of evaluate.tasks and of the variant's domain_tasks
                                (evaluate@V scores them; register@V re-scores a champion on them)
    data/inputs/bias/           bias.source (every bias@V)

and in each a `sources.json`: source -> {from, md5}. A source whose cleaned or ingested file did
not change is copied byte for byte, so a consumer whose sources all kept their bytes keeps its
folder's hash and DVC leaves its stage (and everything downstream) up to date. The stages read
their folder with the same `<dir>/<source>.parquet` lookup as before.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from simcse_ops.config import ConfigError, Params
from simcse_ops.errors import MissingInputError
from simcse_ops.files import atomic_path, write_json

CLEAN, INGESTED = "clean", "ingested"
BIAS = "bias"
MANIFEST = "sources.json"


def train_sources(params: Params, variant: str) -> dict[str, str]:
    """source -> CLEAN | INGESTED: what train@<variant> reads (nothing for a pretrained one)."""
    v = params.variant(variant)
    if v.method == "pretrained":
        return {}
    cleaned = set(params.dedup.roles)
    out: dict[str, str] = {}
    for s in v.corpus:
        if params.sources[s].role not in cleaned:
            raise ConfigError(
                f"{params.path}: variants.{variant}.corpus: source {s!r} has role {params.sources[s].role!r}, "
                f"which dedup does not clean (dedup.roles: {', '.join(params.dedup.roles)}); train only on "
                f"those roles")
        out[s] = CLEAN
    out.setdefault(params.evaluate.dev_task.source, INGESTED)
    if v.primary is not None:  # evaluation.dev_scorer_for: every domain task's dev split
        for t in v.domain_tasks:
            out.setdefault(params.evaluate.domain_tasks[t].source, INGESTED)
    return out


def evaluate_sources(params: Params, variant: str) -> dict[str, str]:
    """source -> INGESTED: what evaluate@<variant> scores (the STS tasks and its domain tasks)."""
    v = params.variant(variant)
    cfg = params.evaluate
    names = [t.source for t in cfg.tasks.values()] + [cfg.domain_tasks[t].source for t in v.domain_tasks]
    return dict.fromkeys(names, INGESTED)


def bias_sources(params: Params) -> dict[str, str]:
    return {params.bias.source: INGESTED}


def consumers(params: Params) -> dict[str, dict[str, str]]:
    """Folder (relative to data/inputs) -> {source: CLEAN | INGESTED}, for every consumer."""
    out: dict[str, dict[str, str]] = {}
    for name in params.variants:
        out[f"{name}/train"] = train_sources(params, name)
        out[f"{name}/evaluate"] = evaluate_sources(params, name)
    out[BIAS] = bias_sources(params)
    return out


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_inputs(params: Params, clean_dir: Path | str, ingested_dir: Path | str, out_dir: Path | str) -> dict:
    """Write every consumer's folder under `out_dir` (atomically: all or nothing) -> summary
    {folder: [sources]}. A source file that is missing names the stage that makes it."""
    dirs = {CLEAN: (Path(clean_dir), "dedup"), INGESTED: (Path(ingested_dir), "ingest")}
    plan = consumers(params)
    md5: dict[Path, str] = {}
    with atomic_path(out_dir) as tmp:
        for folder, sources in plan.items():
            dest = tmp / folder
            dest.mkdir(parents=True)
            manifest = {}
            for source, kind in sources.items():
                src_dir, stage = dirs[kind]
                src = src_dir / f"{source}.parquet"
                if not src.is_file():
                    raise MissingInputError(f"{src}: not found ({folder} reads source {source!r}); "
                                            f"run the {stage} stage first (dvc repro {stage})")
                shutil.copyfile(src, dest / src.name)
                md5[src] = md5.get(src) or _md5(src)
                manifest[source] = {"from": f"{kind}/{src.name}", "md5": md5[src]}
            write_json(dest / MANIFEST, manifest)
    return {folder: sorted(sources) for folder, sources in plan.items()}
