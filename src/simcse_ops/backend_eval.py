"""The serving backends (backends.py) scored as evaluate@<variant> scores torch: the 7 STS tasks
with the graphs of exports/<variant> (ONNX, ONNX int8, OpenVINO, OpenVINO int8), their parity to
torch, and whether each is offered.

The result is sts.json `backends` (`backends_record`), read at registration: the gate sees the STS
row of the backend the version serves (params.yaml `serve.backend`), and a backend is refused
for a version where it is not offered. Parity and speed depend on the CPU (OpenVINO runs bf16 on
AMX, f32 elsewhere): each row records the CPU class it was measured on. Kept apart from evaluation.py, which training imports
for its dev scorer: a change here must not invalidate trained models.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from simcse_ops.backends import GRAPH_FILES, load_encoder, parity
from simcse_ops.config import Params
from simcse_ops.encoder import encode, load_sentence_transformer
from simcse_ops.evaluation import load_tasks
from simcse_ops.hardware import cpu_info
from simcse_ops.sts import EmbedFn, evaluate_sts

PARITY_SENTENCES = 300  # STS sentences on which each exported backend is compared with torch
EXPORTED_BACKENDS = tuple(GRAPH_FILES)  # scored beside torch from the variant's export, when present


def parity_sample(tasks: dict[str, pd.DataFrame], n: int = PARITY_SENTENCES) -> list[str]:
    """`n` distinct sentences of the tasks, spread over every length: the distinct sentences sorted
    by (length, text), taken at n evenly spaced ranks (all of them when there are at most n)."""
    distinct = sorted({s for df in tasks.values() for col in ("sentence1", "sentence2") for s in df[col]},
                      key=lambda s: (len(s), s))
    if len(distinct) <= n:
        return distinct
    return [distinct[i] for i in np.unique(np.linspace(0, len(distinct) - 1, n).round().astype(int))]


def offer(name: str, torch_avg: float, avg: float, min_cos: float, max_drop: float, min_cosine: float) -> dict:
    """Whether backend `name` is offered for serving: iff drop = round(torch avg - its avg, 2) <=
    max_drop (params.yaml `serve.int8_max_drop`) and its smallest per-sentence cosine to torch is
    >= min_cosine (`serve.min_cosine`). The avgs have two decimals, so the difference is rounded
    to two as well: 70.01 - 69.71 is a drop of 0.30, not 0.30000000000001137."""
    drop = round(torch_avg - avg, 2)
    sts_ok = bool(drop <= max_drop)  # False for a NaN avg
    cos_ok = bool(min_cos >= min_cosine)
    reason = (f"STS avg torch {torch_avg:.2f} - {name} {avg:.2f} = {drop:.2f} "
              f"{'<=' if sts_ok else 'is more than'} serve.int8_max_drop {max_drop}; min cosine to torch "
              f"{min_cos:.4f} {'>=' if cos_ok else 'is below'} serve.min_cosine {min_cosine}")
    return {"offered": sts_ok and cos_ok, "drop": drop, "max_drop": max_drop, "min_cosine": min_cosine,
            "reason": reason}


def backends_record(torch_result: dict, embeds: dict[str, EmbedFn], tasks: dict[str, pd.DataFrame],
                    sample: list[str], torch_sample: np.ndarray, max_drop: float, min_cosine: float,
                    absent: dict[str, str] | None = None, cpu_class: str | None = None) -> dict:
    """sts.json `backends`: per backend its Spearman x100 per task and avg (`tasks`, `avg`, scored
    as `sts.evaluate_sts` scores torch); for each backend in `embeds`, its `parity` to torch
    (`backends.parity` of its and torch's embeddings of `sample`: min, mean, p01 cosine, n),
    `encode_s`, `offer` and the `cpu_class` it ran on; a backend in `absent` (not exported) gets
    `offered` false and the reason. torch's row is copied from `torch_result`."""
    names = list(tasks)
    record = {"torch": {"tasks": {t: torch_result[t] for t in names}, "avg": torch_result["avg"]}}
    for name, embed in embeds.items():
        r = evaluate_sts(embed, tasks)
        p = parity(torch_sample, embed(sample))
        entry = {"tasks": {t: r[t] for t in names}, "avg": r["avg"],
                 "parity": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in p.items()},
                 "encode_s": r["timing"]["encode_s"]}
        entry.update(offer(name, torch_result["avg"], r["avg"], p["min"], max_drop, min_cosine))
        if cpu_class is not None:
            entry["cpu_class"] = cpu_class
        record[name] = entry
    for name, why in (absent or {}).items():
        record[name] = {"offered": False, "reason": why}
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
    embeds, absent = {}, {}
    for name in EXPORTED_BACKENDS:
        if not (Path(export_dir) / GRAPH_FILES[name]).is_file():
            absent[name] = f"not exported ({GRAPH_FILES[name]} absent: {_why_absent(export_dir, name)})"
            continue
        encoder = load_encoder(model_path, name, onnx_dir=export_dir)
        what = f"evaluate {model_path}: {name} on the STS tasks"
        embeds[name] = lambda s, e=encoder, w=what: e.encode(s, batch_size=cfg.batch_size, what=w)
    return backends_record(torch_result, embeds, tasks, sample, torch_sample, params.serve.int8_max_drop,
                           params.serve.min_cosine, absent=absent, cpu_class=cpu_info().cpu_class)


def _why_absent(export_dir: str | Path, name: str) -> str:
    """What backend.json says about a graph the export did not make (else: an older export)."""
    settings = Path(export_dir) / "backend.json"
    info = json.loads(settings.read_text(encoding="utf-8")) if settings.is_file() else {}
    note = (info.get(name.replace("-", "_")) or {}).get("absent")
    return note or f"an export made before this backend existed; rerun `dvc repro export@<variant>`"
