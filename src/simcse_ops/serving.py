"""The MLflow pyfunc wrapper that makes a registered encoder a service.

`SentenceEncoderModel` carries a sentence-transformers folder as the artifact `encoder` and, when
registered with its export, the ONNX graphs as the artifact `onnx`; it embeds with the backend
chosen at registration (params.yaml `serve.backend`: torch, onnx, onnx-int8, openvino,
openvino-int8, or auto: `choose_backend` times torch and every backend offered for the version on
the CPU the model loads on and keeps the fastest). Loaded
with `mlflow.pyfunc.load_model("models:/simcse-X@champion")` (or served by `mlflow models serve`),
`predict` takes a list of sentences, a pandas Series, or a DataFrame (column `sentence`, `text`, or
the first column) and returns a float32 array (N, D) of embeddings, not normalised: compare them
with cosine similarity, as the STS evaluation does.

Bad input is refused, never guessed at: `check_sentences` raises an `MlflowException` with
INVALID_PARAMETER_VALUE, which the scoring server answers with HTTP 400 and a JSON body
`{"error_code": "INVALID_PARAMETER_VALUE", "message": "..."}` naming the problem, for an empty
request, more than `serve.max_batch` sentences, a null (JSON `null`, a missing DataFrame cell) or
non-string item (number, boolean, list, object), and a sentence longer than `serve.max_chars`
characters (rejected with its index and length, not truncated: a silently cut sentence would get
an embedding of a different text). The limits come from params.yaml `serve` at registration and
are pickled with the model.

The input signature is one unnamed column of type `any` (not `string`): with `string`, the scoring
server casts the parsed JSON to numpy strings before `predict` runs, so `null` arrives as "None"
and `3` as "3" and would be embedded. With `any`, values reach `predict` as JSON decoded them.
(Malformed JSON and an empty list are refused by MLflow itself, also with HTTP 400.)

The serving environment must have `simcse-ops` installed (`--env-manager local`), since the model
object is pickled by reference to this module.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema, TensorSpec
from mlflow.types.schema import AnyType

from simcse_ops.backends import BACKENDS, load_encoder
from simcse_ops.config import ServeConfig
from simcse_ops.uris import ENCODER_ARTIFACT, ONNX_ARTIFACT  # beside the loader that reads them back

CARD_ARTIFACT = "model_card"
# The request schema of the pyfunc: input columns (or dict keys) it reads sentences from, tried in
# order. Not a data kind, so not taken from `simcse_ops.schemas.KINDS`.
TEXT_COLUMNS = ("sentence", "text")
_DEFAULTS = ServeConfig()
log = logging.getLogger(__name__)
# What `choose_backend` times each candidate on: sentences of everyday length (6 to 40 words),
# 128 of them, embedded at the served batch size; the best of `rounds` after a warm-up batch.
PROBE_SENTENCES = [
    "A man is playing a guitar on the street.",
    "The central bank raised interest rates for the third time this year, citing persistent inflation "
    "in services and a tight labour market.",
    "Two dogs run through a field.",
    "Patients who received the higher dose reported fewer symptoms after four weeks of treatment, "
    "although the difference was not statistically significant.",
    "How do I reset my password?",
    "The museum reopened after a two-year renovation that restored the original ceiling frescoes "
    "and added a new wing for contemporary art.",
    "She plays the violin beautifully.",
    "Heavy rain is expected across the north tomorrow, with local flooding possible near rivers.",
] * 16


def bad_request(message: str) -> MlflowException:
    """The error `predict` raises for bad input: the scoring server answers it with HTTP 400."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _as_values(model_input: Any) -> list[Any]:
    """The items of a request, whatever container they came in (not yet checked)."""
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, pd.DataFrame):
        if model_input.shape[1] == 0:
            return []
        col = next((c for c in TEXT_COLUMNS if c in model_input.columns), model_input.columns[0])
        return model_input[col].tolist()
    if isinstance(model_input, (pd.Series, np.ndarray)):
        return list(np.asarray(model_input, dtype=object).ravel())
    if isinstance(model_input, dict):
        col = next((c for c in TEXT_COLUMNS if c in model_input), None)
        if col is None:
            raise bad_request(f"expected a key 'sentence' or 'text', got {sorted(model_input)}")
        return list(model_input[col])
    return list(model_input)


def _is_null(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and math.isnan(value))


def _item_problem(value: Any, max_chars: int) -> str | None:
    """Why one item is not an acceptable sentence, or None."""
    if isinstance(value, np.ndarray) and value.ndim == 0:  # `instances` records: 0-d arrays
        value = value.item()
    if isinstance(value, str):
        if len(value) > max_chars:
            return f"has {len(value)} characters, more than serve.max_chars={max_chars}"
        return None
    if _is_null(value):
        return "is null; expected a string"
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return f"is {type(value).__name__} {shown}; expected a string"


def check_sentences(values: Sequence[Any], max_batch: int, max_chars: int) -> list[str]:
    """`values` as a list of str, or `bad_request` naming the first bad item (and how many)."""
    n = len(values)
    if n == 0:
        raise bad_request("empty input: expected 1 to serve.max_batch="
                          f"{max_batch} sentences, got none")
    if n > max_batch:
        raise bad_request(f"too many sentences: {n}, more than serve.max_batch={max_batch}; "
                          "split the request")
    problems = [(i, p) for i, v in enumerate(values) if (p := _item_problem(v, max_chars))]
    if problems:
        i, p = problems[0]
        more = f" ({len(problems)} bad items, the first shown)" if len(problems) > 1 else ""
        raise bad_request(f"item {i} {p}{more}")
    return [str(v.item() if isinstance(v, np.ndarray) else v) for v in values]


def _batch_size(params: dict[str, Any] | None, default: int) -> int:
    value = (params or {}).get("batch_size", default)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise bad_request(f"params.batch_size must be an integer >= 1, got {value!r}")
    return int(value)


def choose_backend(loaders: dict[str, Callable[[], Any]], batch_size: int, rounds: int = 2,
                   sentences: Sequence[str] = PROBE_SENTENCES) -> tuple[str, Any, dict[str, float]]:
    """Load each candidate (name -> loader of an encoder), time it on `sentences` at `batch_size`
    (one warm-up batch, then the best of `rounds` full passes) and keep the fastest: returns
    (name, its encoder, {name: sentences/s}). The others are dropped. A candidate that fails to
    load or encode is skipped with a warning; torch, the first candidate, must work."""
    speeds: dict[str, float] = {}
    best: tuple[str, Any] | None = None
    for name, load in loaders.items():
        try:
            encoder = load()
            encoder.encode(list(sentences[:batch_size]), batch_size=batch_size)  # warm-up
            seconds = []
            for _ in range(rounds):
                start = time.perf_counter()
                encoder.encode(list(sentences), batch_size=batch_size)
                seconds.append(time.perf_counter() - start)
        except Exception as e:  # noqa: BLE001 - an optional backend that cannot run here is not chosen
            if not speeds:
                raise
            log.warning("serve.backend auto: %s skipped (%s: %s)", name, type(e).__name__, e)
            continue
        speeds[name] = len(sentences) / min(seconds)
        if best is None or speeds[name] > speeds[best[0]]:
            best = (name, encoder)
        del encoder
    assert best is not None
    return best[0], best[1], speeds


class SentenceEncoderModel(mlflow.pyfunc.PythonModel):
    """pyfunc: sentences -> embeddings (N, D) from a bundled sentence-transformers folder.

    The limits are set at registration (params.yaml `serve`) and pickled with the model; the class
    attributes are the defaults of versions pickled before the limits existed. With backend
    "auto", `load_context` times torch and the `offered` backends (`choose_backend`) and serves
    with the fastest; `served` names the backend in use.
    """

    batch_size: int = _DEFAULTS.batch_size
    max_batch: int = _DEFAULTS.max_batch
    max_chars: int = _DEFAULTS.max_chars
    backend: str = _DEFAULTS.backend
    offered: tuple[str, ...] = ("torch",)

    def __init__(self, batch_size: int = _DEFAULTS.batch_size, max_batch: int = _DEFAULTS.max_batch,
                 max_chars: int = _DEFAULTS.max_chars, backend: str = _DEFAULTS.backend,
                 offered: tuple[str, ...] = ("torch",)) -> None:
        self.batch_size, self.max_batch, self.max_chars = batch_size, max_batch, max_chars
        self.backend = backend
        self.offered = tuple(offered)
        self._model = None
        self.served: str | None = None
        self.speeds: dict[str, float] = {}

    def load_context(self, context) -> None:
        """Load `self.backend` (see `backends.load_encoder`), or for "auto" the fastest of torch
        and the offered backends; the exported backends read their graphs from the artifact
        `onnx`, which registration logs from the variant's `exports/` folder."""
        folder = Path(context.artifacts[ENCODER_ARTIFACT])
        onnx_dir = context.artifacts.get(ONNX_ARTIFACT)
        if self.backend not in ("torch", "auto") and onnx_dir is None:
            raise MlflowException(
                f"backend {self.backend!r} needs the export, but this model has no artifact "
                f"{ONNX_ARTIFACT!r}: register the version again with its export "
                f"(`dvc repro export@<variant> register@<variant>`), or set serve.backend: torch"
            )
        if self.backend != "auto":
            self._model, self.served = load_encoder(folder, self.backend, onnx_dir=onnx_dir), self.backend
            return
        names = ["torch"] + [n for n in self.offered if n in BACKENDS and n != "torch" and onnx_dir is not None]
        loaders = {n: (lambda n=n: load_encoder(folder, n, onnx_dir=onnx_dir)) for n in names}
        self.served, self._model, self.speeds = choose_backend(loaders, self.batch_size)
        shown = ", ".join(f"{n} {v:.0f}" for n, v in self.speeds.items())
        log.warning("serve.backend auto: serving with %s (sentences/s at batch %d: %s)",
                    self.served, self.batch_size, shown)

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> np.ndarray:
        sentences = check_sentences(_as_values(model_input), self.max_batch, self.max_chars)
        batch = _batch_size(params, self.batch_size)
        if self._model is None:  # predict before load_context: only when misused directly
            self.load_context(context)
        return self._model.encode(sentences, batch_size=batch)


def signature(dim: int, batch_size: int = _DEFAULTS.batch_size):
    """Input: one unnamed column of type `any` (a list of sentences, or a one-column DataFrame),
    so that nulls and numbers reach `predict` unconverted and are refused there (see the module
    docstring); output: a float32 tensor (-1, dim); param `batch_size` (default: `batch_size`)."""
    return ModelSignature(
        inputs=Schema([ColSpec(AnyType())]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, dim))]),
        params=ParamSchema([ParamSpec("batch_size", DataType.long, batch_size)]),
    )


def pip_requirements() -> list[str]:
    """Pinned to what is installed here, so that pyfunc does not run its slow requirement
    inference (which loads the model in a subprocess)."""
    pkgs = ("mlflow", "torch", "transformers", "sentence-transformers", "numpy", "pandas", "onnxruntime",
            "openvino")
    return [f"{p}=={version(p)}" for p in pkgs]
