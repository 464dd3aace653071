"""Loading the configured STS tasks from ingested Parquet and scoring a model on them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from simcse_ops.config import ConfigError, Params, StsTaskConfig
from simcse_ops.encoder import encode, load_sentence_transformer
from simcse_ops.sts import evaluate_sts


def load_task(data_dir: Path | str, task: StsTaskConfig, name: str, params_path: Path) -> pd.DataFrame:
    """Pairs of one task (columns subset, sentence1, sentence2, score) from `<data>/<source>.parquet`."""
    path = Path(data_dir) / f"{task.source}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run the ingest stage first (dvc repro ingest)")
    df = pd.read_parquet(path, columns=["split", "subset", "sentence1", "sentence2", "score"])
    if task.split is not None:
        splits = sorted(df["split"].unique())
        if task.split not in splits:
            raise ConfigError(
                f"{params_path}: evaluate.tasks.{name}.split: {task.split!r} not in {path} (splits: {splits})"
            )
        df = df[df["split"] == task.split]
    if len(df) < 2:
        raise ValueError(f"{path}: task {name} has {len(df)} pairs; need at least 2")
    return df.reset_index(drop=True)


def load_tasks(params: Params, data_dir: Path | str) -> dict[str, pd.DataFrame]:
    return {n: load_task(data_dir, t, n, params.path) for n, t in params.evaluate.tasks.items()}


def evaluate_model(params: Params, model_path: str | Path, data_dir: Path | str) -> dict:
    """Score `model_path` on every task in params `evaluate.tasks`; returns the metrics mapping."""
    cfg = params.evaluate
    tasks = load_tasks(params, data_dir)
    model = load_sentence_transformer(model_path, max_seq_length=cfg.max_seq_length, device=cfg.device)
    result = evaluate_sts(lambda s: encode(model, s, batch_size=cfg.batch_size), tasks)
    result["model"] = {
        "path": str(model_path),
        "max_seq_length": model.max_seq_length,
        "device": str(model.device),
    }
    return result
