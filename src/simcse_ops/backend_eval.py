"""The serving backends (backends.py) scored as evaluate@<variant> scores torch: the 7 STS tasks
with the ONNX graphs of exports/<variant>, their parity to torch, and whether onnx-int8 is offered.

The result is sts.json `backends` (`backends_record`), read at registration: the gate sees the STS
row of the backend the version serves (params.yaml `serve.backend`), and onnx-int8 is refused
for a version where it is not offered. Kept apart from evaluation.py, which training imports
for its dev scorer: a change here must not invalidate trained models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from simcse_ops.backends import load_encoder, parity
from simcse_ops.config import Params
from simcse_ops.encoder import encode, load_sentence_transformer
from simcse_ops.evaluation import load_tasks
from simcse_ops.sts import EmbedFn, evaluate_sts

PARITY_SENTENCES = 300  # STS sentences on which each ONNX backend is compared with torch
ONNX_BACKENDS = ("onnx", "onnx-int8")  # scored beside torch from the variant's export


def parity_sample(tasks: dict[str, pd.DataFrame], n: int = PARITY_SENTENCES) -> list[str]:
    """`n` distinct sentences of the tasks, spread over every length: the distinct sentences sorted
    by (length, text), taken at n evenly spaced ranks (all of them when there are at most n)."""
    distinct = sorted({s for df in tasks.values() for col in ("sentence1", "sentence2") for s in df[col]},
                      key=lambda s: (len(s), s))
    if len(distinct) <= n:
        return distinct
    return [distinct[i] for i in np.unique(np.linspace(0, len(distinct) - 1, n).round().astype(int))]


def int8_offer(torch_avg: float, int8_avg: float, max_drop: float) -> dict:
    """Whether onnx-int8 is offered for serving: iff drop = round(torch avg - int8 avg, 2) <=
    max_drop (params.yaml `serve.int8_max_drop`). The avgs have two decimals, so the difference
    is rounded to two as well: 70.01 - 69.71 is a drop of 0.30, not 0.30000000000001137."""
    drop = round(torch_avg - int8_avg, 2)
    offered = bool(drop <= max_drop)  # False for a NaN avg
    verdict = "<=" if offered else "is more than"
    return {"offered": offered, "drop": drop, "max_drop": max_drop,
            "reason": f"STS avg torch {torch_avg:.2f} - onnx-int8 {int8_avg:.2f} = {drop:.2f} {verdict} "
                      f"serve.int8_max_drop {max_drop}"}


def backends_record(torch_result: dict, embeds: dict[str, EmbedFn], tasks: dict[str, pd.DataFrame],
                    sample: list[str], torch_sample: np.ndarray, int8_max_drop: float) -> dict:
    """sts.json `backends`: per backend its Spearman x100 per task and avg (`tasks`, `avg`, scored
    as `sts.evaluate_sts` scores torch); for each backend in `embeds`, its `parity` to torch
    (`backends.parity` of its and torch's embeddings of `sample`: min, mean, p01 cosine, n) and
    `encode_s`; for onnx-int8, `int8_offer`. torch's row is copied from `torch_result`."""
    names = list(tasks)
    record = {"torch": {"tasks": {t: torch_result[t] for t in names}, "avg": torch_result["avg"]}}
    for name, embed in embeds.items():
        r = evaluate_sts(embed, tasks)
        p = parity(torch_sample, embed(sample))
        entry = {"tasks": {t: r[t] for t in names}, "avg": r["avg"],
                 "parity": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in p.items()},
                 "encode_s": r["timing"]["encode_s"]}
        if name == "onnx-int8":
            entry.update(int8_offer(torch_result["avg"], r["avg"], int8_max_drop))
        record[name] = entry
    return record


def evaluate_backends(params: Params, model_path: str | Path, export_dir: str | Path, data_dir: Path | str,
                      torch_result: dict) -> dict:
    """`backends_record` of the model's ONNX backends (graphs in `export_dir`, the export stage's
    folder) against `torch_result` (`evaluate_model`'s). The ONNX encoders run at the model's
    own maximum length and on the CPU, as the served pyfunc runs them; torch embeds the parity
    sample as `evaluate_model` embeds the tasks."""
    cfg = params.evaluate
    tasks = load_tasks(params, data_dir)
    sample = parity_sample(tasks)
    model = load_sentence_transformer(model_path, max_seq_length=cfg.max_seq_length, device=cfg.device)
    torch_sample = encode(model, sample, batch_size=cfg.batch_size, what=f"evaluate {model_path}: parity sample")
    del model
    embeds = {}
    for name in ONNX_BACKENDS:
        encoder = load_encoder(model_path, name, onnx_dir=export_dir)
        what = f"evaluate {model_path}: {name} on the STS tasks"
        embeds[name] = lambda s, e=encoder, w=what: e.encode(s, batch_size=cfg.batch_size, what=w)
    return backends_record(torch_result, embeds, tasks, sample, torch_sample, params.serve.int8_max_drop)
