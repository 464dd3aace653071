"""Training data for the contrastive loop: Parquet -> texts -> token rows -> padded batches.

- `COLUMNS`: the text columns each training method reads (the one place that says so);
- `load_training_texts`: a variant's corpus sources, concatenated and checked;
- `tokenize_column` / `build_training_set`: tokenised once, ahead of training, stored flat
  (`TokenizedColumn`); `TrainingSet.rows` gives a step's token rows in forward-pass order;
- `epoch_permutation`: the data order of an epoch;
- `length_groups` / `pad_rows`: the step's rows cut into passes of similar length, each padded
  to its own longest row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from simcse_ops.config import ConfigError
from simcse_ops.errors import DataError, MissingInputError

# The text columns a training method reads from its sources, in forward-pass order.
from simcse_ops.schemas import TRAINING_COLUMNS as COLUMNS  # method -> text columns, from the kind registry


def load_training_texts(
    data_dir: Path | str, corpus: Sequence[str], method: str, max_samples: int | None = None
) -> dict[str, list[str]]:
    """Read `<data_dir>/<source>.parquet` for every source of the variant's corpus, concatenated.

    unsup reads the CORPUS column `text`; sup reads the NLI columns anchor / positive / negative;
    pairs reads the text_pairs columns anchor / positive. A pairs variant may also list corpus
    sources: each sentence x becomes the pair (x, x), which in one forward pass with independent
    dropout masks is exactly unsupervised SimCSE's positive, so one batch mixes unsupervised
    sentences and mined pairs under one InfoNCE loss with shared in-batch negatives.
    """
    if method not in COLUMNS:
        raise ConfigError(f"method {method!r} has no training data (expected one of {', '.join(COLUMNS)})")
    if not corpus:
        raise ConfigError(f"a {method} variant needs `corpus: [source, ...]` in params.yaml")
    cols = COLUMNS[method]
    out: dict[str, list[str]] = {c: [] for c in cols}
    for source in corpus:
        path = Path(data_dir) / f"{source}.parquet"
        if not path.is_file():
            raise MissingInputError(
                f"{path}: training data for source {source!r} not found; run the dedup stage "
                f"(or ingest) first, or pass --data with the folder that holds it"
            )
        names = pq.read_schema(path).names
        # (x, x) rows from a corpus source of a pairs variant: source column for each method column
        read = dict(zip(cols, cols))
        if method == "pairs" and "text" in names and not all(c in names for c in cols):
            read = {c: "text" for c in cols}
        missing = sorted({v for v in read.values() if v not in names})
        if missing:
            raise DataError(path, None, f"columns {names}", f"columns {list(cols)} for a {method} variant",
                            "check the variant's `method` and `corpus` in params.yaml")
        extra = [c for c in ("file", "line") if c in names]
        table = pq.read_table(path, columns=sorted(set(read.values())) + extra).to_pydict()
        table.update({c: table[src] for c, src in read.items()})
        for c in cols:
            for i, v in enumerate(table[c]):
                if v is None or not str(v).strip():
                    where = table["line"][i] if "line" in table else i + 1
                    raise DataError(path, where, f"an empty {c!r}", "non-empty text in every row",
                                    "fix or drop the row upstream (ingest / dedup)")
            out[c].extend(table[c])
    n = len(out[cols[0]])
    if max_samples is not None:
        n = min(n, max_samples)
        out = {c: v[:n] for c, v in out.items()}
    if n == 0:
        raise DataError(Path(data_dir), None, "0 training examples", f"at least one row in {list(corpus)}")
    return out


@dataclass
class TokenizedColumn:
    """Token ids of N texts, stored flat: row i is ids[offsets[i]:offsets[i + 1]]."""

    ids: np.ndarray  # (total,) int32
    offsets: np.ndarray  # (N + 1,) int64

    def __len__(self) -> int:
        return len(self.offsets) - 1


def tokenize_column(tokenizer, texts: Sequence[str], max_length: int, chunk: int = 8192) -> TokenizedColumn:
    """Tokenise once, ahead of training; truncation to `max_length` includes the special tokens."""
    parts: list[np.ndarray] = []
    lengths: list[int] = []
    for start in range(0, len(texts), chunk):
        enc = tokenizer(list(texts[start:start + chunk]), truncation=True, max_length=max_length,
                        padding=False, return_attention_mask=False, return_token_type_ids=False)
        for row in enc["input_ids"]:
            parts.append(np.asarray(row, dtype=np.int32))
            lengths.append(len(row))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    return TokenizedColumn(ids, offsets)


@dataclass
class TrainingSet:
    method: str
    columns: dict[str, TokenizedColumn]

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    @property
    def sentences_per_example(self) -> int:
        return len(self.columns)

    @property
    def rows_per_example(self) -> int:
        """Forward-pass rows per example: unsup 2 (x twice), sup 3, pairs 2."""
        return len(self.rows(np.zeros(1, dtype=np.int64)))

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.method.encode())
        for name, col in self.columns.items():
            h.update(name.encode())
            h.update(col.offsets.tobytes())
            h.update(col.ids.tobytes())
        return h.hexdigest()[:16]

    def rows(self, idx: np.ndarray) -> list[np.ndarray]:
        """Token rows for examples `idx`, in forward-pass order: unsup [x, x]; sup [a, p, n]; pairs [a, p]."""
        if self.method == "unsup":
            col = self.columns["text"]
            rows = [col.ids[col.offsets[i]:col.offsets[i + 1]] for i in idx]
            return rows + rows
        out = []
        for name in COLUMNS[self.method]:
            col = self.columns[name]
            out.extend(col.ids[col.offsets[i]:col.offsets[i + 1]] for i in idx)
        return out


def build_training_set(tokenizer, texts: dict[str, list[str]], method: str, max_length: int) -> TrainingSet:
    return TrainingSet(method, {c: tokenize_column(tokenizer, texts[c], max_length) for c in COLUMNS[method]})


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng(seed + epoch).permutation(n)


def length_groups(lengths: Sequence[int], groups: int) -> list[np.ndarray]:
    """Row indices in `groups` runs of similar length: a stable sort by length, cut evenly.

    groups = 1 keeps the rows in their own order (one pass, exactly the plain padded batch).
    """
    n = len(lengths)
    if groups <= 1 or n <= 1:
        return [np.arange(n)]
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [g for g in np.array_split(order, min(groups, n)) if len(g)]


def pad_rows(rows: list[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic padding: (N rows) -> input_ids (N, T), attention_mask (N, T), T = longest row."""
    t = max(len(r) for r in rows)
    ids = np.full((len(rows), t), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), t), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)
