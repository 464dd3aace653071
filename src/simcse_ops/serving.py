"""The MLflow pyfunc wrapper that makes a registered encoder a service.

`SentenceEncoderModel` carries a sentence-transformers folder as the artifact `encoder`. Loaded
with `mlflow.pyfunc.load_model("models:/simcse-X@champion")` (or served by `mlflow models serve`),
`predict` takes a list of sentences, a pandas Series, or a DataFrame (column `sentence`, `text`, or
the first column) and returns a float32 array (N, D) of embeddings, not normalised: compare them
with cosine similarity, as the STS evaluation does.

The serving environment must have `simcse-ops` installed (`--env-manager local`), since the model
object is pickled by reference to this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

from simcse_ops.encoder import encode, load_sentence_transformer
from simcse_ops.uris import ENCODER_ARTIFACT  # defined beside the loader that reads it back

CARD_ARTIFACT = "model_card"
# The request schema of the pyfunc: input columns (or dict keys) it reads sentences from, tried in
# order. Not a data kind, so not taken from `simcse_ops.schemas.KINDS`.
TEXT_COLUMNS = ("sentence", "text")


def _as_sentences(model_input: Any) -> list[str]:
    import pandas as pd

    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, pd.DataFrame):
        if model_input.shape[1] == 0:
            raise ValueError("empty DataFrame: expected a column 'sentence' (or 'text') of strings")
        col = next((c for c in TEXT_COLUMNS if c in model_input.columns), model_input.columns[0])
        values = model_input[col].tolist()
    elif isinstance(model_input, (pd.Series, np.ndarray)):
        values = list(np.asarray(model_input).ravel())
    elif isinstance(model_input, dict):
        col = next((c for c in TEXT_COLUMNS if c in model_input), None)
        if col is None:
            raise ValueError(f"expected a key 'sentence' or 'text', got {sorted(model_input)}")
        values = list(model_input[col])
    else:
        values = list(model_input)
    bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
    if bad:
        raise ValueError(f"input {bad[0]} is {type(values[bad[0]]).__name__}, expected a string")
    return values


class SentenceEncoderModel(mlflow.pyfunc.PythonModel):
    """pyfunc: sentences -> embeddings (N, D) from a bundled sentence-transformers folder."""

    def __init__(self, batch_size: int = 64) -> None:
        self.batch_size = batch_size
        self._model = None

    def load_context(self, context) -> None:
        folder = Path(context.artifacts[ENCODER_ARTIFACT])
        self._model = load_sentence_transformer(folder, device="auto")

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> np.ndarray:
        if self._model is None:  # predict before load_context: only when misused directly
            self.load_context(context)
        sentences = _as_sentences(model_input)
        batch = int((params or {}).get("batch_size", self.batch_size))
        return encode(self._model, sentences, batch_size=batch)


def signature(dim: int):
    """Input: strings (a list, or a one-column DataFrame); output: a float32 tensor (-1, dim)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([ColSpec(DataType.string)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, dim))]),
        params=ParamSchema([ParamSpec("batch_size", DataType.long, 64)]),
    )


def pip_requirements() -> list[str]:
    """Pinned to what is installed here, so that pyfunc does not run its slow requirement
    inference (which loads the model in a subprocess)."""
    from importlib.metadata import version

    pkgs = ("mlflow", "torch", "transformers", "sentence-transformers", "numpy", "pandas")
    return [f"{p}=={version(p)}" for p in pkgs]
