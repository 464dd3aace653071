"""Inference throughput of the encoder backends on CPU: sentences/s, parity and STS, side by side.

The same `--n` (10,000) real sentences of mixed length - half the distinct sentences of the STS
test sets (STS12-16, STS-B test, SICK-R test), half lines of the wiki1m corpus, a seeded sample of
each, shuffled together - are embedded by every backend at batch 32 and 128, torch and
onnxruntime both at `--threads` (2) intra-op threads, in one process:

- torch: `SentenceTransformer.encode` in fp32 (`simcse_ops.encoder.encode`): the BASELINE;
- torch-bf16: the same call inside bf16 autocast (`simcse_ops.hardware.autocast`; on a CPU
  without AMX-BF16 or AVX512-BF16, `resolve_precision` warns that it is emulated and slow);
- onnx: `simcse_ops.backends.OnnxEncoder` on the fp32 graph of `backends.export_onnx`;
- onnx-int8: the same on its int8 graph (`backends.Int8Settings`, reported as `int8_settings`
  from the export's backend.json: an export made before the blockwise feed-forward MatMuls
  reports `keep_ffn_fp32` there instead of `ffn`);
- openvino: `simcse_ops.backends.OpenVinoEncoder` on the export's OpenVINO IR, THROUGHPUT hint,
  at the CPU plugin's default inference precision (bf16 on AMX, f32 elsewhere; reported as
  `openvino_precision`);
- openvino-int8: the same on the export's NNCF static int8 IR (`backends.OpenVinoInt8Settings`;
  absent from an export without calibration sentences, e.g. of `default`: pass `--exports
  exports/<V>` of a trained variant);
- openvino-f32 (only when named in `--backends`): openvino forced to f32 arithmetic;
- onnx-int8-ffn-fp32 (only when named in `--backends`): the previous int8 graph, its
  feed-forward MatMuls in fp32 (`Int8Settings(ffn="fp32")`), quantised here from the fp32 graph;
- onnx-fused (only when named in `--backends`): the fp32 graph after onnxruntime's offline transformer
  optimiser (`onnxruntime.transformers.optimizer`, model type bert: Attention, EmbedLayerNorm,
  SkipLayerNorm and BiasGelu fusions), the one other offline engine installed here; measured no
  faster than `onnx`, since onnxruntime's session already runs at `ORT_ENABLE_ALL` by default
  (checked at run time, reported as `ort_graph_optimization_level`), which applies these fusions
  online. Its int8 quantisation (QAttention) was no faster than onnx-int8 either.

The derived graphs (onnx-int8-ffn-fp32, onnx-fused) are written to a temporary folder, never
into `--exports`.

Timing: each backend is warmed up (`--warmup` sentences), then `--repeats` rounds; in every round
each (batch size, backend) embeds all the sentences once, in an order rotated per round so that a
noisy shared machine disturbs them alike. Reported: best (max) and median sentences/s over the
rounds, and the ratio of each to the baseline's (same statistic, same batch size). Parity: the
per-sentence cosine of each backend's embeddings to the baseline's at the same batch size
(`backends.parity`: min, p01, mean).

STS (7-task avg, `simcse_ops.sts.evaluate_sts` on params.yaml `evaluate.tasks`): with `--sts`,
computed here for every backend in `--sts-backends` (default: all; minutes each) on the ingested Parquet in `--data` when given,
else on the sources read in memory by the project's readers (the same tables ingest writes);
without it, read from `metrics/<V>/sts.json` `backends` rows when present (V: the folder name of
`--model models/V`; `base` for `--model default`), the torch fp32 row falling back to the file's
top-level avg. `sts_source` says which was used.

Target (issue 26): the best backend within 0.3 STS points of torch and at per-sentence cosine
>= 0.99 (min) at >= 3x the baseline's sentences/s on a CPU with AVX-512 VNNI or AMX, >= 1.6x on
an AVX2-only CPU (best-of-rounds, at any batch size); `target` names the CPU class it applied. `meets_target` is computed only from STS figures
that exist for both; null when they do not. Prints one JSON line.

    python benchmarks/encode_throughput.py                       # default model, no STS
    python benchmarks/encode_throughput.py --sts --exports /tmp/onnx-default
    python benchmarks/encode_throughput.py --model models/unsup-wiki --sts
    python benchmarks/encode_throughput.py --n 200 --repeats 1 --batch-sizes 32   # smoke test
    python benchmarks/encode_throughput.py --n 1000 --repeats 2 --exports /tmp/onnx-default \
        --backends onnx,onnx-int8,onnx-int8-ffn-fp32,onnx-fused     # the int8 and fusion choices
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
BASELINE = "torch"
ALL_BACKENDS = ("torch", "torch-bf16", "onnx", "onnx-int8", "openvino", "openvino-int8", "openvino-f32",
                "onnx-int8-ffn-fp32", "onnx-fused")
STS_SOURCES = ("sts12", "sts13", "sts14", "sts15", "sts16")
MIN_COSINE = 0.99


def target_for(cpu) -> dict:
    """Issue 26's bar for the CPU class at hand: 3x with int8 dot products (VNNI or AMX), else 1.6x."""
    fast_int8 = bool({"avx512_vnni", "amx_bf16"} & set(cpu.flags))
    return {"cpu_class": cpu.cpu_class, "max_sts_drop": 0.3, "min_cosine": MIN_COSINE,
            "min_speedup": 3.0 if fast_int8 else 1.6}


TARGET: dict = {}  # set in main() from the CPU


# --------------------------------------------------------------------------------------------
# Data


def _read(params, name: str):
    from simcse_ops.readers import read_source

    return read_source(name, params.sources[name], params.data_root).to_pandas()


def sts_test_frames(params, data_dir: str | None) -> dict:
    """params `evaluate.tasks` -> pairs DataFrames: from ingested Parquet in `data_dir`, or read in
    memory from the raw sources (what ingest would write)."""
    from simcse_ops.evaluation import load_tasks

    if data_dir:
        return load_tasks(params, data_dir)
    cache: dict = {}
    out = {}
    for name, task in params.evaluate.tasks.items():
        if task.source not in cache:
            cache[task.source] = _read(params, task.source)
        df = cache[task.source]
        if task.split is not None:
            df = df[df["split"] == task.split]
        out[name] = df[["subset", "sentence1", "sentence2", "score"]].reset_index(drop=True)
    return out


def load_sentences(n: int, seed: int = 0, params_path: str | Path = ROOT / "params.yaml",
                   data_dir: str | None = None) -> list[str]:
    """`n` real sentences: n//2 distinct STS test sentences + the rest wiki1m lines, seeded."""
    from simcse_ops.config import load_params

    params = load_params(params_path)
    tasks = sts_test_frames(params, data_dir)
    sts = sorted({s for df in tasks.values() for col in ("sentence1", "sentence2") for s in df[col]})
    wiki = [t for t in _read(params, "wiki1m")["text"].tolist() if t.strip()]
    rng = random.Random(seed)
    n_sts = min(n // 2, len(sts))
    picked = rng.sample(sts, n_sts) + rng.sample(wiki, min(n - n_sts, len(wiki)))
    rng.shuffle(picked)
    if len(picked) < n:
        raise SystemExit(f"only {len(picked)} sentences available, asked for {n}")
    return picked


# --------------------------------------------------------------------------------------------
# Backends


def resolve_model_dir(model: str) -> Path:
    from simcse_ops.encoder import resolve_model

    return Path(resolve_model(model))


def variant_of(model: str) -> str | None:
    if model == "default":
        return "base"
    p = Path(model)
    return p.name if p.parent.name == "models" else None


def ensure_exports(model_dir: Path, exports: str | None, tmp: str) -> Path:
    """The folder holding model.onnx and model_int8.onnx for `model_dir` (exported if missing)."""
    from simcse_ops.backends import INT8_FILE, ONNX_FILE, OV_FILE, export_onnx

    out = Path(exports) if exports else Path(tmp) / "onnx"
    if not all((out / f).is_file() for f in (ONNX_FILE, INT8_FILE, OV_FILE)):
        print(f"exporting {model_dir} to {out}", file=sys.stderr)
        export_onnx(model_dir, out)
    return out


def fuse_graph(onnx_dir: Path, model_dir: Path, work_dir: Path) -> Path:
    """onnxruntime's offline transformer optimiser on the fp32 graph -> work_dir/model_fused.onnx."""
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoConfig

    from simcse_ops.backends import ONNX_FILE, read_pipeline

    out = work_dir / "model_fused.onnx"
    if not out.is_file():
        cfg = AutoConfig.from_pretrained(str(read_pipeline(model_dir).transformer_dir))
        opt = optimize_model(str(onnx_dir / ONNX_FILE), model_type="bert", num_heads=cfg.num_attention_heads,
                             hidden_size=cfg.hidden_size, opt_level=1)
        opt.save_model_to_file(str(out))
    return out


def int8_ffn_fp32_graph(onnx_dir: Path, work_dir: Path) -> Path:
    """The previous int8 graph (feed-forward MatMuls in fp32) -> work_dir/model_int8_ffn_fp32.onnx."""
    from simcse_ops.backends import ONNX_FILE, Int8Settings, quantize_int8

    out = work_dir / "model_int8_ffn_fp32.onnx"
    if not out.is_file():
        quantize_int8(onnx_dir / ONNX_FILE, out, Int8Settings(ffn="fp32"))
    return out


def int8_settings(onnx_dir: Path | None) -> dict | None:
    """backend.json `int8` of the export, without its node lists."""
    from simcse_ops.backends import SETTINGS_FILE

    path = None if onnx_dir is None else onnx_dir / SETTINGS_FILE
    if path is None or not path.is_file():
        return None
    int8 = json.loads(path.read_text(encoding="utf-8")).get("int8", {})
    return {k: v for k, v in int8.items() if not k.endswith("_nodes")}


class Bf16:
    """The torch encoder with every encode inside bf16 autocast."""

    def __init__(self, inner):
        from simcse_ops.hardware import resolve_precision

        self.inner = inner
        self.precision = resolve_precision("bf16", "cpu", key="--backends torch-bf16")

    def encode(self, sentences, batch_size=64):
        from simcse_ops.hardware import autocast

        with autocast(self.precision, "cpu"):
            return self.inner.encode(sentences, batch_size)


def build_backends(names: list[str], model_dir: Path, onnx_dir: Path | None, threads: int, work_dir: Path) -> dict:
    from simcse_ops.backends import OnnxEncoder, load_encoder

    out: dict = {}
    for name in names:
        if name == "torch":
            out[name] = load_encoder(model_dir, "torch", threads=threads)
        elif name == "torch-bf16":
            out[name] = Bf16(out.get("torch") or load_encoder(model_dir, "torch", threads=threads))
        elif name in ("onnx", "onnx-int8", "openvino", "openvino-int8"):
            out[name] = load_encoder(model_dir, name, onnx_dir=onnx_dir, threads=threads)
        elif name == "openvino-f32":
            from simcse_ops.backends import OV_FILE, OpenVinoEncoder

            out[name] = OpenVinoEncoder(model_dir, onnx_dir / OV_FILE, threads=threads, precision="f32")
        elif name == "onnx-int8-ffn-fp32":
            out[name] = OnnxEncoder(model_dir, int8_ffn_fp32_graph(onnx_dir, work_dir), threads=threads)
        elif name == "onnx-fused":
            out[name] = OnnxEncoder(model_dir, fuse_graph(onnx_dir, model_dir, work_dir), threads=threads)
        else:
            raise SystemExit(f"unknown backend {name!r}: choose from {', '.join(ALL_BACKENDS)}")
    return out


# --------------------------------------------------------------------------------------------
# STS


def stored_sts(model: str, names: list[str]) -> dict:
    """{backend: avg} from metrics/<V>/sts.json `backends` rows (dict or list), torch from `avg`."""
    variant = variant_of(model)
    path = ROOT / "metrics" / (variant or "") / "sts.json"
    if variant is None or not path.is_file():
        return {}
    data = json.loads(path.read_text(encoding="utf-8"))
    rows = data.get("backends") or {}
    if isinstance(rows, list):
        rows = {r.get("backend"): r for r in rows if isinstance(r, dict)}
    got = {}
    for name in names:
        row = rows.get(name)
        value = row.get("avg") if isinstance(row, dict) else row
        if isinstance(value, (int, float)):
            got[name] = float(value)
    if BASELINE in names and BASELINE not in got and isinstance(data.get("avg"), (int, float)):
        got[BASELINE] = float(data["avg"])
    return {"values": got, "file": str(path.relative_to(ROOT))}


def computed_sts(backends: dict, tasks: dict, batch_size: int) -> dict:
    from simcse_ops.sts import evaluate_sts

    out = {}
    for name, enc in backends.items():
        t0 = time.perf_counter()
        res = evaluate_sts(lambda s, e=enc: e.encode(s, batch_size), tasks)
        out[name] = {"avg": res["avg"], **{k: res[k] for k in tasks}, "seconds": round(time.perf_counter() - t0, 1)}
        print(f"sts {name}: {res['avg']}", file=sys.stderr)
    return out


# --------------------------------------------------------------------------------------------
# Timing


def time_rounds(backends: dict, sentences: list[str], batch_sizes: list[int], repeats: int, warmup: int):
    """{bs: {backend: [sentences/s per round]}}, and the last round's embeddings {bs: {backend: X}}."""
    names = list(backends)
    for name in names:
        backends[name].encode(sentences[:warmup], max(batch_sizes))
    speeds = {bs: {n: [] for n in names} for bs in batch_sizes}
    emb: dict = {bs: {} for bs in batch_sizes}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for bs in batch_sizes:
            for name in order:
                t0 = time.perf_counter()
                emb[bs][name] = backends[name].encode(sentences, bs)
                dt = time.perf_counter() - t0
                speeds[bs][name].append(len(sentences) / dt)
                print(f"round {r} bs {bs} {name}: {len(sentences) / dt:.1f} sentences/s", file=sys.stderr)
    return speeds, emb


def summarise(speeds: dict, emb: dict, sts: dict) -> tuple[dict, dict | None]:
    from simcse_ops.backends import parity

    table: dict = {}
    best = None
    for bs, per in speeds.items():
        base_best, base_med = max(per[BASELINE]), statistics.median(per[BASELINE])
        rows = {}
        for name, vals in per.items():
            p = parity(emb[bs][BASELINE], emb[bs][name])
            row = {
                "sentences_per_s_best": round(max(vals), 1),
                "sentences_per_s_median": round(statistics.median(vals), 1),
                "speedup_best": round(max(vals) / base_best, 3),
                "speedup_median": round(statistics.median(vals) / base_med, 3),
                "parity_cos_min": round(p["min"], 6), "parity_cos_p01": round(p["p01"], 6),
                "parity_cos_mean": round(p["mean"], 6),
                "sts_avg": sts.get(name),
                "rounds": [round(v, 1) for v in vals],
            }
            rows[name] = row
            if name != BASELINE and sts.get(name) is not None and sts.get(BASELINE) is not None:
                drop = round(sts[BASELINE] - sts[name], 2)
                ok = (drop <= TARGET["max_sts_drop"] and row["speedup_best"] >= TARGET["min_speedup"]
                      and p["min"] >= TARGET["min_cosine"])
                cand = {"backend": name, "batch_size": bs, "speedup_best": row["speedup_best"],
                        "sts_drop": drop, "meets": ok}
                key = (ok, row["speedup_best"] if drop <= TARGET["max_sts_drop"] else -1, row["speedup_best"])
                if best is None or key > best[0]:
                    best = (key, cand)
        table[str(bs)] = rows
    return table, (best[1] if best else None)


def _ov_version() -> str:
    import openvino

    return openvino.__version__


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="'default' (the bundled encoder) or a models/<V> folder")
    ap.add_argument("--n", type=int, default=10_000, help="sentences embedded per timed run")
    ap.add_argument("--batch-sizes", default="32,128")
    ap.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds (best and median reported)")
    ap.add_argument("--warmup", type=int, default=256, help="sentences embedded once per backend before timing")
    ap.add_argument("--backends", default="torch,onnx,onnx-int8,openvino,openvino-int8",
                    help=f"comma-separated, from {','.join(ALL_BACKENDS)} (torch, the baseline, is always added)")
    ap.add_argument("--exports", help="an export folder (exports/<V>; exported there if missing, without "
                                      "calibration sentences); default: a temporary folder")
    ap.add_argument("--sts", action="store_true", help="compute every backend's 7-task STS avg (minutes each)")
    ap.add_argument("--sts-backends", help="comma-separated subset of the backends to score on STS (default: all)")
    ap.add_argument("--sts-batch-size", type=int, default=128)
    ap.add_argument("--data", help="ingested Parquet folder (data/ingested); default: read the sources in memory")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import onnxruntime as ort
    import torch

    from simcse_ops.hardware import cpu_info

    TARGET.update(target_for(cpu_info()))
    names = [BASELINE] + [b for b in args.backends.split(",") if b and b != BASELINE]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    sentences = load_sentences(args.n, args.seed, args.params, args.data)
    model_dir = resolve_model_dir(args.model)
    with tempfile.TemporaryDirectory(prefix="encode-throughput-") as tmp:
        onnx_dir = ensure_exports(model_dir, args.exports, tmp) if any(n != BASELINE and not n.startswith("torch")
                                                                       for n in names) else None
        backends = build_backends(names, model_dir, onnx_dir, args.threads, Path(tmp))
        int8 = int8_settings(onnx_dir)
        speeds, emb = time_rounds(backends, sentences, batch_sizes, args.repeats, min(args.warmup, len(sentences)))
        if args.sts:
            from simcse_ops.config import load_params

            tasks = sts_test_frames(load_params(args.params), args.data)
            scored = args.sts_backends.split(",") if args.sts_backends else names
            sts_rows = computed_sts({n: backends[n] for n in names if n in scored}, tasks, args.sts_batch_size)
            sts = {n: r["avg"] for n, r in sts_rows.items()}
            sts_source = {"kind": "computed", "data": args.data or "sources read in memory",
                          "batch_size": args.sts_batch_size, "per_backend": sts_rows}
        else:
            stored = stored_sts(args.model, names)
            sts = stored.get("values", {})
            sts_source = {"kind": "stored" if sts else "none", "file": stored.get("file"),
                          "backends_found": sorted(sts)}
    table, best = summarise(speeds, emb, sts)
    lengths = sorted(len(s) for s in sentences)
    from simcse_ops.hardware import machine_report

    print(json.dumps({
        "benchmark": "encode_throughput",
        "model": args.model, "model_dir": str(model_dir),
        "baseline": BASELINE,
        "n_sentences": len(sentences),
        "chars": {"median": lengths[len(lengths) // 2], "p95": lengths[int(0.95 * (len(lengths) - 1))],
                  "max": lengths[-1]},
        "threads": args.threads, "repeats": args.repeats, "batch_sizes": batch_sizes,
        "results": table,
        "sts_source": sts_source,
        "target": TARGET,
        "best": best,
        "meets_target": None if best is None else best["meets"],
        "int8_settings": int8,
        "ort_graph_optimization_level": str(ort.SessionOptions().graph_optimization_level),
        "openvino_precision": {n: b.precision for n, b in backends.items() if hasattr(b, "precision")
                               and isinstance(b.precision, str)},
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__, "openvino": _ov_version()},
        "machine": machine_report(),
        "seconds": round(time.perf_counter() - t_start, 1),
    }), flush=True)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main()
