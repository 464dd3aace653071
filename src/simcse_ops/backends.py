"""Inference backends for a sentence encoder: torch, ONNX (fp32), ONNX int8, OpenVINO and OpenVINO
static int8, with equal outputs.

`export_onnx(model_dir, out_dir)` exports the Hugging Face transformer inside a
sentence-transformers folder with `torch.onnx.export` (graph inputs `input_ids`, `attention_mask`
and, when the model takes it, `token_type_ids`, with dynamic batch and sequence axes; output the
token embeddings `last_hidden_state`) to `out_dir/model.onnx`, quantises its weight matrices to
int8 into `out_dir/model_int8.onnx` (onnxruntime's dynamic quantisation, the feed-forward
MatMuls blockwise: `Int8Settings`), and records the
settings and library versions in `out_dir/backend.json`. From the same graph it writes the OpenVINO
IR `out_dir/openvino_model.{xml,bin}` (`openvino.convert_model`, fp32 weights) and, given
calibration sentences, its static int8 quantisation `out_dir/openvino_model_int8.{xml,bin}`
(`nncf.quantize`, `OpenVinoInt8Settings`). The tokenizer, the pooling and the
normalisation stay in `model_dir`: `OnnxEncoder` reads them from there, so `out_dir` holds only
what the export made.

`OnnxEncoder` reproduces `encoder.encode(load_sentence_transformer(model_dir), ...)`: the same
tokenizer at the model's own maximum length (not the 32 tokens SimCSE trains at), batches of
sentences sorted by length as sentence-transformers sorts them, then, from the token embeddings
h_1..h_T of a sentence and its attention mask m_1..m_T (1 for a real token, 0 for padding), the
pooling of the folder's Pooling module:

    mean                  e = sum_t m_t h_t / max(sum_t m_t, 1e-9)
    mean_sqrt_len_tokens  e = sum_t m_t h_t / sqrt(max(sum_t m_t, 1e-9))
    cls                   e = h_f, f the first t with m_t = 1 (position 0 with right padding)
    max                   e_d = max over {t : m_t = 1} of h_t,d

(several modes are concatenated in the Pooling module's order), and, only when the folder lists a
Normalize module, e <- e / max(||e||_2, 1e-12). A plain Hugging Face folder (no modules.json) gets
mean pooling and no normalisation, as sentence-transformers gives it.

`OpenVinoEncoder` does the same on an OpenVINO IR, compiled by the CPU plugin for throughput
(several inference streams, the batches of one call in flight together) at the plugin's default
inference precision for the CPU it runs on: bf16 on a CPU with AMX, f32 elsewhere (recorded as
`.precision`; parity and STS are measured per backend by evaluate@<variant>).

`load_encoder(model_dir, backend)` returns any of the five behind one `.encode(sentences,
batch_size)`, and `parity(a, b)` measures how far two backends' embeddings are apart (per-sentence
cosine).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import time
from pathlib import Path

import numpy as np

from simcse_ops.encoder import encode, load_sentence_transformer, resolve_model
from simcse_ops.errors import MissingInputError
from simcse_ops.files import atomic_path
from simcse_ops.progress import Progress

BACKENDS = ("torch", "onnx", "onnx-int8", "openvino", "openvino-int8")
ONNX_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
OV_FILE = "openvino_model.xml"  # + .bin beside it
OV_INT8_FILE = "openvino_model_int8.xml"
GRAPH_FILES = {"onnx": ONNX_FILE, "onnx-int8": INT8_FILE, "openvino": OV_FILE, "openvino-int8": OV_INT8_FILE}
SETTINGS_FILE = "backend.json"
FFN_MODES = ("blockwise", "fp32", "dynamic")  # Int8Settings.ffn
OPSET = 17
OUTPUT_NAME = "last_hidden_state"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")  # graph input order
SUPPORTED_POOLING = ("mean", "mean_sqrt_len_tokens", "cls", "max")
# Legacy pooling config keys, in the order sentence-transformers concatenates their outputs.
_LEGACY_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


# --------------------------------------------------------------------------------------------
# The sentence-transformers folder


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """What a sentence-transformers folder does around its transformer."""

    transformer_dir: Path
    pooling: tuple[str, ...]
    normalize: bool
    max_seq_length: int | None  # None: the tokenizer's, capped at max_position_embeddings
    do_lower_case: bool


def _module_kind(entry: dict) -> str:
    return str(entry.get("type", "")).rsplit(".", 1)[-1]


def _pooling_modes(config: dict) -> tuple[str, ...]:
    mode = config.get("pooling_mode")
    if mode is None:
        modes = tuple(m for key, m in _LEGACY_POOLING.items() if config.get(key))
        return modes or ("mean",)
    return (mode,) if isinstance(mode, str) else tuple(mode)


def read_pipeline(model_dir: Path | str) -> Pipeline:
    """Read modules.json (Transformer, Pooling, optional Normalize) of a local model folder."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file() and not (model_dir / "modules.json").is_file():
        raise MissingInputError(
            f"{model_dir}: not a model folder (no modules.json or config.json); train or export the "
            f"model first (e.g. `dvc repro train@<variant>`) or pass a saved model folder"
        )
    if not (model_dir / "modules.json").is_file():  # a plain Hugging Face encoder
        return Pipeline(model_dir, ("mean",), False, None, False)
    modules = json.loads((model_dir / "modules.json").read_text(encoding="utf-8"))
    kinds = [_module_kind(m) for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or any(k != "Normalize" for k in kinds[2:]):
        raise ValueError(
            f"{model_dir}: modules {kinds} are not supported by the ONNX backends (they need "
            f"Transformer, Pooling and optionally Normalize); use backend 'torch'"
        )
    t_dir = model_dir / modules[0].get("path", "")
    t_cfg_path = t_dir / "sentence_bert_config.json"
    t_cfg = json.loads(t_cfg_path.read_text(encoding="utf-8")) if t_cfg_path.is_file() else {}
    p_cfg = json.loads((model_dir / modules[1]["path"] / "config.json").read_text(encoding="utf-8"))
    pooling = _pooling_modes(p_cfg)
    unsupported = [m for m in pooling if m not in SUPPORTED_POOLING]
    if unsupported:
        raise ValueError(
            f"{model_dir}: pooling mode(s) {unsupported} are not supported by the ONNX backends "
            f"(supported: {', '.join(SUPPORTED_POOLING)}); use backend 'torch'"
        )
    return Pipeline(t_dir, pooling, "Normalize" in kinds, t_cfg.get("max_seq_length"),
                    bool(t_cfg.get("do_lower_case", False)))


def load_tokenizer(pipeline: Pipeline):
    """The tokenizer sentence-transformers' Transformer module builds, at the same max length."""
    from transformers import AutoConfig, AutoTokenizer  # lazy: transformers takes seconds to import

    kwargs = {} if pipeline.max_seq_length is None else {"model_max_length": pipeline.max_seq_length}
    tokenizer = AutoTokenizer.from_pretrained(str(pipeline.transformer_dir), **kwargs)
    if pipeline.max_seq_length is None:
        limit = getattr(AutoConfig.from_pretrained(str(pipeline.transformer_dir)), "max_position_embeddings", -1)
        if limit not in (None, -1):
            tokenizer.model_max_length = min(tokenizer.model_max_length, limit)
    return tokenizer


# --------------------------------------------------------------------------------------------
# Pooling (numpy), the formulas of the module docstring


def pool(token_embeddings: np.ndarray, attention_mask: np.ndarray, modes: tuple[str, ...]) -> np.ndarray:
    """(B, T, D) token embeddings and (B, T) mask -> (B, D * len(modes)) sentence embeddings."""
    h = token_embeddings.astype(np.float32, copy=False)
    mask = attention_mask.astype(np.float32)[:, :, None]
    out = []
    for mode in modes:
        if mode in ("mean", "mean_sqrt_len_tokens"):
            count = np.maximum(mask.sum(axis=1), 1e-9)
            out.append((h * mask).sum(axis=1) / (count if mode == "mean" else np.sqrt(count)))
        elif mode == "cls":
            first = attention_mask.argmax(axis=1)
            out.append(h[np.arange(h.shape[0]), first])
        elif mode == "max":
            out.append(np.where(mask > 0, h, -np.inf).max(axis=1))
        else:
            raise ValueError(f"pooling mode {mode!r} is not supported (supported: {', '.join(SUPPORTED_POOLING)})")
    return np.concatenate(out, axis=-1).astype(np.float32)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """x / max(||x||_2, 1e-12) per row, as torch.nn.functional.normalize."""
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Export


@dataclasses.dataclass(frozen=True)
class Int8Settings:
    """Arguments of `onnxruntime.quantization.quantize_dynamic`, and how the feed-forward MatMuls
    are quantised (`ffn`).

    Every MatMul but the feed-forward ones, and the embedding tables (Gather), get int8 weights
    per output channel; dynamic quantisation also quantises each MatMul's input, per tensor, at
    run time. The feed-forward MatMuls (recognised by their non-square weight, hidden <->
    intermediate size, whatever the architecture names them) hold two thirds of the encoder's
    multiply-adds, but a per-tensor int8 input costs too much accuracy there (the GELU outputs
    and the layer-norm outlier dimensions), so `ffn` is one of:

    - "blockwise" (default): 8-bit weights with one scale per block of `ffn_block_size` input
      rows per output column, and the input quantised to int8 per block of as many values at run
      time (`quantize_blockwise8`, onnxruntime's MatMulNBits at accuracy level 4);
    - "fp32": left in fp32 (the previous default);
    - "dynamic": per-tensor input like the other MatMuls.

    Measured by per-sentence cosine to the torch model (all-MiniLM-L6-v2, the 300 STS sentences
    of `backend_eval.parity_sample`), min (mean), 7-task STS avg (torch 78.88), and sentences/s
    against "fp32" (2 threads, 1,000 mixed sentences, batch 32 and 128, each batch run by every
    graph in turn, two runs on a loaded machine): "fp32" 0.9954 (0.9981), 78.78, 1.00x, 44 MB;
    "blockwise" at block 64 0.9941 (0.9979), 78.78, 1.15-1.22x, 23 MB; block 32 0.9944,
    1.11-1.13x; block 128 0.9929-0.9935, 1.21x; "dynamic" 0.981 (0.993), 1.45-1.9x.
    Earlier, on the unfused graph with every MatMul quantised dynamically: per-tensor weights
    0.885 (0.962), per-channel 0.981 (0.993), 0.968 with reduce_range; keeping only the first or
    only the second feed-forward MatMul in fp32 0.989 or 0.986, only the first and last layers
    0.985. onnxruntime's offline transformer optimiser (fused Attention, SkipLayerNorm, BiasGelu,
    EmbedLayerNorm, then QAttention) was no faster than these graphs, which the session fuses
    online, so the export does not use it.
    """

    per_channel: bool = True
    reduce_range: bool = False
    weight_type: str = "QInt8"
    op_types: tuple[str, ...] = ("MatMul", "Gather")
    ffn: str = "blockwise"
    ffn_block_size: int = 64

    def __post_init__(self):
        if self.ffn not in FFN_MODES:
            raise ValueError(f"Int8Settings.ffn={self.ffn!r}: choose one of {', '.join(FFN_MODES)}")
        b = self.ffn_block_size
        if b < 16 or b & (b - 1):
            raise ValueError(f"Int8Settings.ffn_block_size={b}: MatMulNBits needs a power of 2, at least 16")

    def as_json(self) -> dict:
        return {**dataclasses.asdict(self), "op_types": list(self.op_types)}


INT8_SETTINGS = Int8Settings()


def _token_embeddings_module(model, names: list[str]):
    """A torch module: positional graph inputs `names` -> `last_hidden_state` of the HF `model`."""
    import torch  # lazy: only the export needs torch

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return self.model(**dict(zip(names, inputs))).last_hidden_state

    return TokenEmbeddings().eval()


def _graph_inputs(model, tokenizer) -> list[str]:
    params = inspect.signature(model.forward).parameters
    return [n for n in INPUT_NAMES if n in params and n in tokenizer.model_input_names]


def export_fp32(pipeline: Pipeline, path: Path) -> dict:
    """torch.onnx.export of the transformer -> `path`; returns what backend.json records."""
    import warnings

    import torch  # lazy: torch takes seconds to import and only the export needs it
    from transformers import AutoModel

    # Eager attention: the plain MatMul/Softmax graph, which onnxruntime fuses; the same maths as
    # the sdpa kernel sentence-transformers runs in torch.
    model = AutoModel.from_pretrained(str(pipeline.transformer_dir), attn_implementation="eager").eval()
    tokenizer = load_tokenizer(pipeline)
    names = _graph_inputs(model, tokenizer)
    # Two sentences of different length: the traced graph must see padding, so that no
    # "mask is all ones" shortcut of the attention-mask code is baked into it.
    batch = tokenizer(["a short one", "a somewhat longer sentence to pad the first"], padding=True,
                      return_tensors="pt")
    dynamic = {n: {0: "batch", 1: "sequence"} for n in [*names, OUTPUT_NAME]}
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter (dynamo=False) is deprecated since torch 2.9, but the dynamo one
        # needs onnxscript, which is not a dependency. The tracer warns about masking_utils'
        # `kv_length - mask length > 0`, a shape check that is always false for an encoder.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", "Exporting aten::index operator", UserWarning)
        torch.onnx.export(
            _token_embeddings_module(model, names), tuple(batch[n] for n in names), str(path),
            input_names=names, output_names=[OUTPUT_NAME], dynamic_axes=dynamic,
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )
    return {"inputs": names, "output": OUTPUT_NAME, "opset": OPSET,
            "architecture": type(model).__name__, "max_seq_length": int(tokenizer.model_max_length)}


def ffn_matmuls(fp32_path: Path) -> list[str]:
    """Names of the MatMul nodes whose constant weight is a non-square matrix (feed-forward)."""
    import onnx  # lazy: only the export needs onnx

    graph = onnx.load(str(fp32_path)).graph
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    return [
        n.name for n in graph.node
        if n.op_type == "MatMul" and len(shapes.get(n.input[1], ())) == 2 and len(set(shapes[n.input[1]])) == 2
    ]


def quantize_blockwise8(path: Path, nodes: list[str], block_size: int) -> None:
    """Rewrite the MatMul nodes `nodes` (constant weight W, K x N) of the graph at `path`, in
    place, as com.microsoft MatMulNBits with 8-bit blockwise weights, by onnxruntime's
    `MatMulNBitsQuantizer` (symmetric, accuracy level 4); every other MatMul is left as it is.

    For output column n and block b of B = `block_size` input rows (K padded to a multiple of B):
    one scale s_nb per block, q_kn = round(W_kn / s_nb) in 8 bits, W ~ s * q. At accuracy level 4
    onnxruntime quantises the input to int8 per block of B values along K at run time, multiplies
    in int8 and sums the scaled block products in fp32.
    """
    import onnx  # lazy: export only
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    model = onnx.load(str(path))
    weights = {t.name for t in model.graph.initializer}
    constant = {n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights}
    missing = sorted(set(nodes) - constant)
    if missing:
        raise ValueError(f"{path}: no MatMul with a constant weight named {missing}")
    config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, accuracy_level=4, bits=8)
    # the quantizer takes every MatMul unless excluded (its nodes_to_include only adds to that)
    others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in set(nodes)]
    quantizer = MatMulNBitsQuantizer(model, nodes_to_exclude=others, algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(path), use_external_data_format=False)


def quantize_int8(fp32_path: Path, out_path: Path, settings: Int8Settings = INT8_SETTINGS) -> dict:
    """Dynamic int8 quantisation of `fp32_path` -> `out_path`, the feed-forward MatMuls as
    `settings.ffn` says; returns what backend.json records."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # lazy: export only

    ffn = ffn_matmuls(fp32_path)
    excluded = [] if settings.ffn == "dynamic" else ffn
    # onnxruntime logs "consider to run pre-processing": quant_pre_process was tried; its symbolic
    # shape inference fails on this graph and, without it, the cosines were the same.
    quantize_dynamic(
        str(fp32_path), str(out_path),
        op_types_to_quantize=list(settings.op_types),
        per_channel=settings.per_channel,
        reduce_range=settings.reduce_range,
        weight_type=getattr(QuantType, settings.weight_type),
        nodes_to_exclude=excluded,
    )
    blockwise = ffn if settings.ffn == "blockwise" else []
    if blockwise:
        quantize_blockwise8(out_path, blockwise, settings.ffn_block_size)
    return {**settings.as_json(), "excluded_nodes": excluded, "blockwise_nodes": blockwise}


@dataclasses.dataclass(frozen=True)
class OpenVinoInt8Settings:
    """How `quantize_openvino` calibrates the static int8 IR (`nncf.quantize`).

    Static quantisation fixes each quantised input's int8 range from the activations of
    `sentences` calibration sentences (a seeded sample of the variant's own training sentences,
    `calibration_sample`; never an evaluation set): x_q = clamp(round(x / s), -128, 127) with s
    from the observed range, weights int8 per output channel. `preset` "mixed" quantises
    activations asymmetrically, weights symmetrically (NNCF's advice for transformers).

    As in the onnxruntime int8 graph (`Int8Settings`), the feed-forward MatMuls (`ffn_matmuls`)
    are left out by default: their inputs (layer-norm outlier dimensions, GELU outputs) do not fit
    one int8 range per tensor. Measured on unsup-wiki (all-MiniLM-L6-v2 fine-tuned; 2,000 STS-B
    test sentences, per-sentence cosine to sentence-transformers fp32, x86 AMX, 300 calibration
    sentences): NNCF's defaults (SmoothQuant on, everything quantised) min cosine 0.957; without
    SmoothQuant 0.935-0.971; only the second feed-forward MatMul left out 0.979; both left out
    (this default) 0.990. `smooth_quant` false turns SmoothQuant off (it cost accuracy here).
    """

    sentences: int = 300
    seed: int = 0
    preset: str = "mixed"
    skip_ffn: bool = True
    smooth_quant: bool = False

    def __post_init__(self):
        if self.sentences < 1:
            raise ValueError(f"OpenVinoInt8Settings.sentences={self.sentences}: calibrate on at least 1 sentence")
        if self.preset not in ("mixed", "performance"):
            raise ValueError(f"OpenVinoInt8Settings.preset={self.preset!r}: choose mixed or performance")


OV_INT8_SETTINGS = OpenVinoInt8Settings()


def calibration_sample(texts: dict[str, list[str]], n: int, seed: int) -> list[str]:
    """`n` distinct sentences of `texts` (column -> sentences, e.g. `load_training_texts`'s),
    drawn with `random.Random(seed)` from their sorted set: the same sample for the same data."""
    import random

    distinct = sorted({s for column in texts.values() for s in column if isinstance(s, str) and s.strip()})
    return distinct if len(distinct) <= n else random.Random(seed).sample(distinct, n)


def export_openvino(onnx_path: Path, out_path: Path) -> dict:
    """The ONNX graph at `onnx_path` as OpenVINO IR at `out_path` (.xml + .bin), fp32 weights."""
    import openvino as ov  # lazy: export and the OpenVINO backends only

    ov.save_model(ov.convert_model(str(onnx_path)), str(out_path), compress_to_fp16=False)
    return {"file": out_path.name}


def quantize_openvino(onnx_path: Path, out_path: Path, pipeline: Pipeline, sentences: list[str],
                      settings: OpenVinoInt8Settings = OV_INT8_SETTINGS) -> dict:
    """Static int8 IR of the graph at `onnx_path`, calibrated on `sentences` -> `out_path`;
    returns what backend.json records."""
    import logging

    import nncf  # lazy: export only (nncf takes seconds to import)
    import openvino as ov

    if not sentences:
        raise ValueError(f"{onnx_path}: no calibration sentences for the OpenVINO int8 graph")
    tokenizer = load_tokenizer(pipeline)
    model = ov.Core().read_model(str(onnx_path))
    names = [i.get_any_name() for i in model.inputs]

    def feeds(sentence: str) -> dict[str, np.ndarray]:
        text = sentence.lower() if pipeline.do_lower_case else sentence
        enc = tokenizer([text], truncation="longest_first", return_tensors="np")
        return {n: np.asarray(enc[n], dtype=np.int64) for n in names}

    skipped = ffn_matmuls(onnx_path) if settings.skip_ffn else []
    advanced = None if settings.smooth_quant else nncf.AdvancedQuantizationParameters(
        smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=-1))
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.WARNING)  # not one INFO line per skipped node
    try:
        quantized = nncf.quantize(
            model, nncf.Dataset(sentences, feeds), model_type=nncf.ModelType.TRANSFORMER,
            preset=getattr(nncf.QuantizationPreset, settings.preset.upper()), subset_size=len(sentences),
            ignored_scope=nncf.IgnoredScope(names=skipped, validate=False), advanced_parameters=advanced,
        )
    finally:
        nncf_log.setLevel(level)
    ov.save_model(quantized, str(out_path), compress_to_fp16=False)
    return {**dataclasses.asdict(settings), "calibrated_on": len(sentences), "skipped_nodes": skipped}


def _versions() -> dict[str, str]:
    import nncf
    import onnx
    import onnxruntime
    import openvino
    import torch
    import transformers

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "openvino": openvino.__version__, "nncf": nncf.__version__, "transformers": transformers.__version__}


def export_onnx(model_dir: Path | str, out_dir: Path | str, int8: Int8Settings = INT8_SETTINGS,
                calibration: list[str] | None = None,
                ov_int8: OpenVinoInt8Settings = OV_INT8_SETTINGS) -> dict[str, Path]:
    """Export `model_dir` to `out_dir/{model.onnx, model_int8.onnx, openvino_model.xml/.bin,
    openvino_model_int8.xml/.bin, backend.json}`, atomically.

    The OpenVINO int8 IR is made only from `calibration` sentences (`calibration_sample` of the
    variant's training sentences); without them (an untrained variant has none) backend.json says
    why it is absent. Returns {backend: path of its graph, ..., "settings": backend.json}. On any
    error `out_dir` is left as it was (absent, or the previous export).
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not model_dir.is_dir():
        raise MissingInputError(
            f"{model_dir}: no such model folder; train the variant first (`dvc repro train@<variant>`) "
            f"or save the model there"
        )
    pipeline = read_pipeline(model_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        progress = Progress(f"export {model_dir}", 4, unit="phase")
        seconds = {}

        def phase(name: str, message: str, fn):
            progress.log(message)
            start = time.perf_counter()
            out = fn()
            seconds[name] = round(time.perf_counter() - start, 2)
            progress.update(1)
            return out

        graph = phase("export", "tracing the fp32 ONNX graph", lambda: export_fp32(pipeline, tmp / ONNX_FILE))
        quant = phase("quantize", f"quantizing to int8 ({int8.ffn} FFN)",
                      lambda: quantize_int8(tmp / ONNX_FILE, tmp / INT8_FILE, int8))
        ov_info = phase("openvino", "converting to OpenVINO IR",
                        lambda: export_openvino(tmp / ONNX_FILE, tmp / OV_FILE))
        if calibration:
            ov_quant = phase("openvino_int8", f"calibrating OpenVINO int8 on {len(calibration)} sentences",
                             lambda: quantize_openvino(tmp / ONNX_FILE, tmp / OV_INT8_FILE, pipeline, calibration,
                                                       ov_int8))
        else:
            ov_quant = {"absent": "no calibration sentences (a variant without training data)"}
            progress.update(1)
        files = [p for p in sorted(tmp.iterdir())]
        info = {
            "model_dir": str(model_dir), **graph, "pooling": list(pipeline.pooling),
            "normalize": pipeline.normalize, "int8": quant, "openvino": ov_info, "openvino_int8": ov_quant,
            "versions": _versions(), "seconds": seconds, "bytes": {p.name: p.stat().st_size for p in files},
        }
        (tmp / SETTINGS_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    made = {b: out_dir / f for b, f in GRAPH_FILES.items() if (out_dir / f).is_file()}
    return {**made, "settings": out_dir / SETTINGS_FILE}


# --------------------------------------------------------------------------------------------
# Encoders


class _GraphEncoder:
    """Tokenise, run a graph of token embeddings, pool and normalise (see module doc). A subclass
    says how a list of batches runs (`_run`)."""

    def __init__(self, model_dir: Path | str, graph_path: Path):
        if not graph_path.is_file():
            raise MissingInputError(
                f"{graph_path}: no such graph; export it first with "
                f"simcse_ops.backends.export_onnx({str(model_dir)!r}, {str(graph_path.parent)!r})"
            )
        self.pipeline = read_pipeline(model_dir)
        self.tokenizer = load_tokenizer(self.pipeline)
        self.max_seq_length = int(self.tokenizer.model_max_length)

    def _features(self, batch: list[str], names: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        if self.pipeline.do_lower_case:
            batch = [s.lower() for s in batch]
        enc = self.tokenizer(batch, padding=True, truncation="longest_first", return_tensors="np")
        return {n: np.asarray(enc[n], dtype=np.int64) for n in names}, enc["attention_mask"]

    def _sentence_embeddings(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        emb = pool(tokens, mask, self.pipeline.pooling)
        return l2_normalize(emb) if self.pipeline.normalize else emb

    def _run(self, batches: list[list[str]], progress: Progress) -> list[np.ndarray]:
        raise NotImplementedError

    def _dim(self) -> int:
        raise NotImplementedError

    def encode(self, sentences: list[str], batch_size: int = 64, what: str | None = None) -> np.ndarray:
        """Embed `sentences` -> float32 array (N, D), in the order given; `what`: log progress
        lines as `encoder.encode` does."""
        sentences = list(sentences)
        if not sentences:
            return np.zeros((0, self._dim() * len(self.pipeline.pooling)), np.float32)
        # Longest first, as sentence-transformers batches: little padding per batch.
        order = np.argsort([-len(s) for s in sentences], kind="stable")
        progress = Progress(what or "", len(sentences), unit="sentences", enabled=what is not None)
        batches = [[sentences[i] for i in order[k:k + batch_size]] for k in range(0, len(order), batch_size)]
        parts = self._run(batches, progress)
        out = np.empty((len(sentences), parts[0].shape[1]), dtype=np.float32)
        out[order] = np.concatenate(parts)
        return out


class OnnxEncoder(_GraphEncoder):
    """Sentence embeddings from an exported ONNX graph (onnxruntime, CPU), equal to the torch
    model's; the batches of a call run one after another, each on `threads` intra-op threads."""

    def __init__(self, model_dir: Path | str, onnx_path: Path | str, threads: int | None = None):
        import onnxruntime as ort  # lazy: only the ONNX backends need it

        super().__init__(model_dir, Path(onnx_path))
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def _dim(self) -> int:
        dim = self.session.get_outputs()[0].shape[-1]
        return dim if isinstance(dim, int) else 0

    def _run(self, batches: list[list[str]], progress: Progress) -> list[np.ndarray]:
        parts = []
        for batch in batches:
            feeds, mask = self._features(batch, self.input_names)
            (tokens,) = self.session.run([OUTPUT_NAME], feeds)
            parts.append(self._sentence_embeddings(tokens, mask))
            progress.update(len(batch))
        return parts


class OpenVinoEncoder(_GraphEncoder):
    """Sentence embeddings from an OpenVINO IR on the CPU plugin, equal to the torch model's up
    to the plugin's inference precision.

    Compiled with the THROUGHPUT performance hint: the plugin splits the `threads` cores into
    streams and a call keeps one batch in flight per stream (its own infer requests, started
    asynchronously), while this thread tokenises the next batch. Measured on unsup-wiki, x86 AMX, 2 threads, batch 32,
    2,000 STS-B sentences: 1.3x the LATENCY hint run batch after batch (same precision). `precision`
    None keeps the plugin's default inference precision for the CPU (bf16 on AMX, f32 elsewhere);
    "f32" forces fp32 arithmetic.
    """

    def __init__(self, model_dir: Path | str, ir_path: Path | str, threads: int | None = None,
                 precision: str | None = None):
        import openvino as ov  # lazy: only the OpenVINO backends need it

        super().__init__(model_dir, Path(ir_path))
        core = ov.Core()
        config = {"PERFORMANCE_HINT": "THROUGHPUT"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = precision
        self.compiled = core.compile_model(core.read_model(str(ir_path)), "CPU", config)
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # "bf16", "f32"
        self.input_names = [i.get_any_name() for i in self.compiled.inputs]
        self.requests = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))

    def _dim(self) -> int:
        dim = self.compiled.outputs[0].get_partial_shape()[-1]
        return dim.get_length() if dim.is_static else 0

    def _run(self, batches: list[list[str]], progress: Progress) -> list[np.ndarray]:
        # A pool of `self.requests` infer requests, used round robin: batch k goes to request
        # k mod n once that request's previous batch is collected. Everything Python (tokenising,
        # pooling, progress) stays on this thread; OpenVINO's threads only run the graphs.
        requests = [self.compiled.create_infer_request() for _ in range(max(self.requests, 1))]
        pending: list[tuple[int, np.ndarray] | None] = [None] * len(requests)
        parts: list[np.ndarray | None] = [None] * len(batches)

        def collect(i: int) -> None:
            k, mask = pending[i]
            requests[i].wait()
            parts[k] = self._sentence_embeddings(requests[i].get_output_tensor(0).data, mask)
            progress.update(len(mask))
            pending[i] = None

        for k, batch in enumerate(batches):
            i = k % len(requests)
            feeds, mask = self._features(batch, self.input_names)  # while the other requests run
            if pending[i] is not None:
                collect(i)
            requests[i].start_async(feeds)
            pending[i] = (k, mask)
        for i in range(len(requests)):
            if pending[i] is not None:
                collect(i)
        return parts  # type: ignore[return-value]


class TorchEncoder:
    """The torch model (`encoder.load_sentence_transformer` + `encoder.encode`) as a backend.

    `threads` sets torch's process-wide intra-op thread count.
    """

    def __init__(self, model_dir: Path | str, threads: int | None = None, device: str = "auto"):
        if threads is not None:
            import torch  # lazy: loading the model imports it anyway

            torch.set_num_threads(threads)
        self.model = load_sentence_transformer(model_dir, device=device)
        self.max_seq_length = int(self.model.max_seq_length)

    def encode(self, sentences: list[str], batch_size: int = 64, what: str | None = None) -> np.ndarray:
        return encode(self.model, sentences, batch_size, what=what)


def load_encoder(
    model_dir: Path | str, backend: str, onnx_dir: Path | str | None = None, threads: int | None = None
) -> TorchEncoder | OnnxEncoder | OpenVinoEncoder:
    """An encoder with `.encode(sentences, batch_size)` for `backend` (one of BACKENDS).

    `model_dir` may be anything `encoder.resolve_model` accepts (a folder, `default`, a models:/
    URI); the exported graphs are read from `onnx_dir` (default `<model_dir>/onnx`).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return TorchEncoder(model_dir, threads=threads)
    local = Path(resolve_model(os.fspath(model_dir)))
    onnx_dir = Path(onnx_dir) if onnx_dir is not None else local / "onnx"
    graph = onnx_dir / GRAPH_FILES[backend]
    if backend.startswith("openvino"):
        return OpenVinoEncoder(local, graph, threads=threads)
    return OnnxEncoder(local, graph, threads=threads)


def parity(a: np.ndarray, b: np.ndarray) -> dict:
    """Per-sentence cosine between two (N, D) embedding arrays: min, mean, p01 (1st percentile), n."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"parity needs two (N, D) arrays of one shape, got {a.shape} and {b.shape}")
    if len(a) == 0:
        raise ValueError("parity of zero sentences is undefined")
    cos = (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {"min": float(cos.min()), "mean": float(cos.mean()), "p01": float(np.percentile(cos, 1)), "n": len(cos)}
