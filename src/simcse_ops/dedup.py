"""Exact and near-duplicate removal, and decontamination against evaluation sets.

What it holds: text normalisation and shingling (`normalize`, `ShingleSets`), vectorised MinHash
LSH with exact verification (`near_duplicate_pairs`, `greedy_near_duplicates`), `deduplicate`
(the cleaning of training sources, composed of named phases) and `run_dedup` (the DVC stage's
work: read data/ingested, write data/clean, the audit and the metrics).

`deduplicate` builds the evaluation sentences (`eval_sentences`) and the training items of each
kind (`training_items`), then runs the phases, each a function of explicit values:

1. `decontaminate`: items with a sentence equal or near to an evaluation sentence;
2. `remove_exact_duplicates`: later copies of an item among those still alive;
3. `remove_near_duplicates`: items near an earlier kept item (MinHash LSH, exact J);
4. `summarise`: the metrics (rows per source and reason, decontamination per set, LSH stats);
5. `audit_table`: one row per removed item (`AUDIT_SCHEMA`).

Phases 1-3 return `Removal` records by item; `clean_items` chains them per kind into `Cleaned`.
Text columns and trainable kinds come from the kind registry, `simcse_ops.schemas.KINDS`.

Definitions (every comparison below works on these):

* **Normalised text**: Unicode NFKC, then `str.casefold`, then every run of whitespace collapsed
  to one space and the ends stripped (`normalize`). Two texts are *exact duplicates* when their
  normalised forms are equal.
* **Tokens**: the normalised text split on spaces, each piece reduced to its alphanumeric
  characters (`str.isalnum`), empty pieces dropped, so "Guitar," and "guitar" are one token.
* **Shingles**: the set of word n-grams (`ngram` consecutive tokens); a text with fewer than
  `ngram` tokens has one shingle made of all its tokens. Shingles are 64-bit hashes.
* **Near duplicates**: two texts whose shingle sets have Jaccard similarity
  J(A, B) = |A n B| / |A u B| >= `threshold`. J is computed exactly on the shingle sets; MinHash
  only proposes the candidate pairs.

Candidate search is MinHash LSH (Broder 1997; Leskovec, Rajaraman & Ullman, *Mining of Massive
Datasets*, ch. 3): `num_perm` min-wise hashes per set, cut into `bands` bands of
r = num_perm / bands rows; two sets that agree on every row of at least one band become a
candidate pair, which happens with probability 1 - (1 - J^r)^bands. Each hash function is
h_k(x) = ((a_k * x + b_k) mod 2^64) >> 32 with random odd a_k (multiply-shift, Dietzfelbinger et
al. 1997). Everything is vectorised with numpy over all sets at once: no Python loop per set.

Candidates are then filtered by the MinHash estimate of J (`prefilter_margin` below the
threshold) and verified by the exact J, so precision does not depend on the estimate.

Removal is greedy in a fixed priority order (evaluation sentences first, then training sources in
`params.yaml` order, rows in file order): an item is a near duplicate when it is near an earlier
item that was kept; the audit names that item.
"""

from __future__ import annotations

import gc
import unicodedata
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from simcse_ops.config import EVAL_ROLES, MAX_NGRAM, ConfigError, DedupConfig, Params
from simcse_ops.errors import DataError, MissingInputError
from simcse_ops.files import atomic_path, write_json
from simcse_ops.progress import Progress
from simcse_ops.readers import FORMATS
from simcse_ops.schemas import KINDS, TRAINED_KINDS

# Removal reasons, in the order they are applied.
CONTAMINATION_EXACT = "contamination_exact"
CONTAMINATION_NEAR = "contamination_near"
EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"
REASONS = (CONTAMINATION_EXACT, CONTAMINATION_NEAR, EXACT_DUPLICATE, NEAR_DUPLICATE)

# Kinds whose items are near duplicates only when EVERY side is near (J >= threshold per
# column, the item's J is the smallest): a text pair's positive is often most of an abstract
# shared by many pairs of that abstract, so shingles merged over the pair would make all of
# them "near duplicates" of one another.
PER_SIDE_NEAR_KINDS = ("text_pairs",)

# --------------------------------------------------------------------------------------------
# Normalisation and tokens


def normalize(text: str) -> str:
    """NFKC, case-fold, collapse whitespace: the key of exact deduplication."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def tokens(normalized: str) -> list[str]:
    """The word tokens of a normalised text (alphanumeric characters of each space piece)."""
    out = []
    for piece in normalized.split(" "):
        t = "".join(filter(str.isalnum, piece))
        if t:
            out.append(t)
    return out


def shingles(normalized: str, ngram: int) -> set[tuple[str, ...]]:
    """Reference (slow) shingle set of one normalised text; `ShingleSets` is the fast version."""
    toks = tokens(normalized)
    if not toks:
        return set()
    if len(toks) < ngram:
        return {tuple(toks)}
    return {tuple(toks[i : i + ngram]) for i in range(len(toks) - ngram + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if (a or b) else 0.0


@contextmanager
def _no_gc():
    # Building millions of small strings triggers the cyclic collector over and over; nothing
    # here creates cycles.
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def normalize_many(texts: Sequence[str | None]) -> list[str | None]:
    """`normalize` over a sequence; None stays None."""
    nfkc = unicodedata.normalize
    with _no_gc():
        return [None if t is None else " ".join(nfkc("NFKC", t).casefold().split()) for t in texts]


# --------------------------------------------------------------------------------------------
# Hashing helpers (uint64 arithmetic wraps modulo 2^64, which is what these hashes want)


# Odd multipliers for the positions of an n-gram (position 0 uses the token hash as it is).
_NGRAM_C = np.random.default_rng(20240607).integers(1, 2**63, size=MAX_NGRAM, dtype=np.uint64) | np.uint64(1)


def _token_hashes(unique_tokens: list[str]) -> np.ndarray:
    """A stable (content-based, process-independent) 64-bit hash per token."""
    if not unique_tokens:
        return np.zeros(0, dtype=np.uint64)
    return pd.util.hash_array(np.asarray(unique_tokens, dtype=object)).astype(np.uint64)


# --------------------------------------------------------------------------------------------
# Shingle sets


@dataclass
class ShingleSets:
    """Shingle hashes of n texts, flattened: text k owns `hashes[offsets[k]:offsets[k+1]]`.

    A text's hashes may repeat (a repeated n-gram); `jaccard_pairs` works on the distinct values.
    """

    hashes: np.ndarray  # (S,) uint64
    offsets: np.ndarray  # (n + 1,) int64

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def from_normalized(cls, normalized: Sequence[str | None], ngram: int) -> ShingleSets:
        """Shingle hashes of normalised texts (None or empty texts get an empty set)."""
        n = len(normalized)
        texts = pa.array([t if t is not None else "" for t in normalized], type=pa.large_string())
        if n == 0:
            return cls(np.zeros(0, np.uint64), np.zeros(1, np.int64))
        # Normalised texts are single-space separated, so a literal split gives the pieces.
        pieces = pc.split_pattern(texts, " ")
        piece_offsets = pieces.offsets.to_numpy().astype(np.int64)
        flat = pc.list_flatten(pieces)
        enc = pc.dictionary_encode(flat)
        piece_ids = enc.indices.to_numpy(zero_copy_only=False)  # int32: fine as an index
        with _no_gc():
            vocab = enc.dictionary.to_pylist()
            cleaned = ["".join(filter(str.isalnum, p)) for p in vocab]
        # Map cleaned tokens to distinct hashes; an empty token is dropped.
        clean_arr = pa.array(cleaned, type=pa.large_string())
        clean_enc = pc.dictionary_encode(clean_arr)
        clean_ids = clean_enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        clean_vocab = clean_enc.dictionary.to_pylist()
        tok_hash = _token_hashes(clean_vocab)
        nonempty = np.array([bool(t) for t in clean_vocab], dtype=bool)
        piece_h = tok_hash[clean_ids]  # per distinct piece
        piece_keep = nonempty[clean_ids]
        if piece_keep.all():
            token_h = piece_h[piece_ids]  # (T,) uint64
            tok_offsets = piece_offsets
        else:  # drop the pieces that are only punctuation
            keep = piece_keep[piece_ids]  # (P,) bool
            token_h = piece_h[piece_ids[keep]]
            kept_cum = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])
            tok_offsets = kept_cum[piece_offsets]
        return cls._from_tokens(token_h, tok_offsets, ngram)

    @classmethod
    def _from_tokens(cls, token_h: np.ndarray, tok_offsets: np.ndarray, ngram: int) -> ShingleSets:
        """Shingle hashes from per-token hashes (flattened, `tok_offsets` per text).

        The n-gram starting at token p is h(t_p) ^ c_1 h(t_p+1) ^ ... ^ c_{n-1} h(t_p+n-1)
        (c_d odd constants, products mod 2^64), then mixed; a text shorter than n has one
        shingle of all its tokens, tagged with its length so it never equals a full n-gram.
        """
        n = len(tok_offsets) - 1
        lengths = np.diff(tok_offsets)
        T = len(token_h)
        if T == 0:
            return cls(np.zeros(0, np.uint64), np.zeros(n + 1, np.int64))
        starts, ends = tok_offsets[:-1], tok_offsets[1:]
        acc = token_h.copy()  # (T,)
        tmp = np.empty(T, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for d in range(1, ngram):
                np.multiply(token_h[d:], _NGRAM_C[d], out=tmp[: T - d])
                acc[:-d] ^= tmp[: T - d]
        # A start is valid unless it lies in the last ngram-1 tokens of its text.
        start = np.ones(T, dtype=bool)
        for d in range(1, ngram):
            e = ends - d
            start[e[e >= starts]] = False
        short = np.flatnonzero((lengths > 0) & (lengths < ngram))
        if len(short):
            s0, ln = starts[short], lengths[short]
            v = token_h[s0].copy()
            with np.errstate(over="ignore"):
                for d in range(1, ngram - 1):
                    m = d < ln
                    v[m] ^= token_h[s0[m] + d] * _NGRAM_C[d]
                v ^= ln.astype(np.uint64) * np.uint64(0xD6E8FEB86659FD93)
            acc[s0] = v
            start[s0] = True
        hashes = acc[start]
        with np.errstate(over="ignore"):
            hashes *= np.uint64(0x9E3779B97F4A7C15)  # odd: a bijection
            hashes ^= hashes >> np.uint64(29)
        counts = np.where(lengths == 0, 0, np.maximum(lengths - ngram + 1, 1))
        offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        return cls(hashes, offsets)

    def concat_groups(self, group_size: int) -> ShingleSets:
        """Merge each run of `group_size` consecutive texts into one set (an NLI triple)."""
        if group_size == 1:
            return self
        if len(self) % group_size:
            raise ValueError(f"{len(self)} texts do not split into groups of {group_size}")
        return ShingleSets(self.hashes, self.offsets[::group_size].copy())

    def take(self, idx: np.ndarray) -> ShingleSets:
        """The sets of texts `idx`, in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        starts = self.offsets[:-1][idx]
        sizes = self.sizes[idx]
        offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        gather = np.repeat(starts - offsets[:-1], sizes) + np.arange(offsets[-1], dtype=np.int64)
        return ShingleSets(self.hashes[gather], offsets)


# --------------------------------------------------------------------------------------------
# MinHash and LSH


def _hash_params(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    return a, b


def minhash_signatures(
    sets: ShingleSets, num_perm: int, seed: int, chunk_shingles: int = 1 << 13
) -> np.ndarray:
    """(n, num_perm) uint32 MinHash signatures; an empty set's row is all 0xFFFFFFFF.

    sig[t, k] = min over shingles x of t of ((a_k * x + b_k) mod 2^64) >> 32.
    """
    n = len(sets)
    a, b = _hash_params(num_perm, seed)
    sig = np.full((n, num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    sizes = sets.sizes
    nonempty = np.flatnonzero(sizes > 0)
    if len(nonempty) == 0:
        return sig
    # Chunks of whole texts with about `chunk_shingles` shingles each (keeps buffers in cache).
    # The layout is (num_perm, shingles): numpy's reduceat is several times faster along the
    # contiguous axis. The shift is applied after the min (x -> x >> 32 is monotonic).
    ends = sets.offsets[nonempty + 1] - sets.offsets[nonempty[0]]
    cuts = np.searchsorted(ends, np.arange(chunk_shingles, ends[-1], chunk_shingles), side="right")
    cuts = np.unique(np.concatenate([[0], cuts, [len(nonempty)]]))
    a_col, b_col = a[:, None], b[:, None]
    for lo, hi in zip(cuts[:-1], cuts[1:]):
        rows = nonempty[lo:hi]
        s0, s1 = sets.offsets[rows[0]], sets.offsets[rows[-1] + 1]
        h = np.multiply(a_col, sets.hashes[None, s0:s1])  # (K, m), wraps mod 2^64
        np.add(h, b_col, out=h)
        mins = np.minimum.reduceat(h, sets.offsets[rows] - s0, axis=1)  # (K, len(rows))
        sig[rows] = (mins >> np.uint64(32)).astype(np.uint32).T
    return sig


def _band_keys(sig: np.ndarray, bands: int, rows: np.ndarray, seed: int = 0, step: int = 1 << 14) -> np.ndarray:
    """(bands, len(rows)) uint32: a universal hash of each band's `r` values for the signatures
    `sig[rows]` (sum of c_j * value_j mod 2^64, top 32 bits). A rare collision of two different
    bands only adds a candidate, which is verified anyway. Works in row chunks that stay in
    cache."""
    r = sig.shape[1] // bands
    c = np.random.default_rng(seed + 1).integers(1, 2**63, size=r, dtype=np.uint64) | np.uint64(1)
    m = len(rows)
    out = np.empty((bands, m), dtype=np.uint32)
    with np.errstate(over="ignore"):
        for lo in range(0, m, step):
            v = sig[rows[lo : lo + step]].reshape(-1, bands, r)
            key = v[:, :, 0].astype(np.uint64) * c[0]
            for j in range(1, r):
                key += v[:, :, j] * c[j]  # uint32 * uint64 -> uint64, wraps mod 2^64
            out[:, lo : lo + step] = (key >> np.uint64(32)).T
    return out


def lsh_candidate_pairs(
    sig: np.ndarray, bands: int, window: int, valid: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs (i, j), i < j, that share a band bucket; deduplicated.

    Inside a bucket (items in index order) item p is paired with the bucket's first item and
    with its `window` predecessors, which bounds what a huge bucket of near-identical items can
    produce.
    """
    n = sig.shape[0]
    if valid is None:
        valid = np.ones(n, dtype=bool)
    idx = np.flatnonzero(valid)
    if len(idx) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    keys = _band_keys(sig, bands, idx)
    found = []
    m = len(idx)
    pos = np.arange(m)
    low = np.arange(m, dtype=np.uint64)
    for band in range(bands):
        # Sort by (bucket, item): one plain sort of key << 32 | position, so a bucket lists its
        # items in priority order and its first item is the earliest (an evaluation sentence
        # before any training one).
        packed = np.sort((keys[band].astype(np.uint64) << np.uint64(32)) | low)
        ks = (packed >> np.uint64(32)).astype(np.uint32)
        items = idx[(packed & np.uint64(0xFFFFFFFF)).astype(np.int64)]
        same = np.empty(m, dtype=bool)
        same[0] = False
        np.equal(ks[1:], ks[:-1], out=same[1:])
        if not same.any():
            continue
        start_pos = np.maximum.accumulate(np.where(same, 0, pos))
        sel = same & (start_pos < pos - window)
        if sel.any():
            found.append((items[start_pos[sel]], items[sel]))
        for d in range(1, min(window, m - 1) + 1):
            eq = ks[d:] == ks[:-d]
            if not eq.any():
                break
            found.append((items[:-d][eq], items[d:][eq]))
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    a = np.concatenate([f[0] for f in found])
    b = np.concatenate([f[1] for f in found])
    i, j = np.minimum(a, b).astype(np.int64), np.maximum(a, b).astype(np.int64)
    code = np.unique(i * n + j)
    return code // n, code % n


def estimated_jaccard(sig: np.ndarray, i: np.ndarray, j: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    out = np.empty(len(i), dtype=np.float64)
    for s in range(0, len(i), chunk):
        out[s : s + chunk] = (sig[i[s : s + chunk]] == sig[j[s : s + chunk]]).mean(axis=1)
    return out


def jaccard_pairs(sets: ShingleSets, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Exact Jaccard of the distinct shingle hashes of texts i[p] and j[p], for every p."""
    P = len(i)
    if P == 0:
        return np.zeros(0)

    def distinct(side: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sub = sets.take(side)
        pair = np.repeat(np.arange(P, dtype=np.int64), sub.sizes)
        order = np.lexsort((sub.hashes, pair))
        p, h = pair[order], sub.hashes[order]
        first = np.ones(len(p), dtype=bool)
        first[1:] = (p[1:] != p[:-1]) | (h[1:] != h[:-1])
        return p[first], h[first]

    pa_, ha = distinct(i)
    pb, hb = distinct(j)
    size_a = np.bincount(pa_, minlength=P)
    size_b = np.bincount(pb, minlength=P)
    p = np.concatenate([pa_, pb])
    h = np.concatenate([ha, hb])
    order = np.lexsort((h, p))
    p, h = p[order], h[order]
    both = (p[1:] == p[:-1]) & (h[1:] == h[:-1])
    inter = np.bincount(p[1:][both], minlength=P)
    union = size_a + size_b - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


@dataclass
class NearPairs:
    """Verified near-duplicate pairs (i < j) with their exact Jaccard, and search statistics."""

    i: np.ndarray
    j: np.ndarray
    jaccard: np.ndarray
    stats: dict = field(default_factory=dict)


def near_duplicate_pairs(
    sets: ShingleSets,
    cfg: DedupConfig,
    valid: np.ndarray | None = None,
    keep_pair=None,
) -> NearPairs:
    """All pairs (i < j) with exact J >= cfg.threshold that MinHash LSH proposes.

    `valid` masks the sets that take part; `keep_pair(i, j) -> bool array` drops candidate pairs
    that do not matter to the caller before any verification (e.g. two evaluation sentences).
    """
    nonempty = sets.sizes > 0
    valid = nonempty if valid is None else (valid & nonempty)
    sig = minhash_signatures(sets, cfg.num_perm, cfg.seed)
    i, j = lsh_candidate_pairs(sig, cfg.bands, cfg.bucket_window, valid)
    stats = {"sets": int(valid.sum()), "candidates": int(len(i))}
    if keep_pair is not None and len(i):
        m = keep_pair(i, j)
        i, j = i[m], j[m]
    stats["candidates_kept"] = int(len(i))
    est = estimated_jaccard(sig, i, j)
    m = est >= cfg.threshold - cfg.prefilter_margin
    i, j = i[m], j[m]
    stats["verified"] = int(len(i))
    jac = jaccard_pairs(sets, i, j)
    m = jac >= cfg.threshold - 1e-12
    stats["near_pairs"] = int(m.sum())
    return NearPairs(i[m], j[m], jac[m], stats)


def greedy_near_duplicates(n: int, pairs: NearPairs, kept: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Walk items in index order: j is removed when it is near an earlier item still kept.

    Returns (removed mask, matched item per removed j or -1, Jaccard with that item).
    `kept` marks items that may be matched at all (default: every item).
    """
    removed = np.zeros(n, dtype=bool)
    matched = np.full(n, -1, dtype=np.int64)
    jac_of = np.zeros(n)
    if len(pairs.i) == 0:
        return removed, matched, jac_of
    alive = np.ones(n, dtype=bool) if kept is None else kept.copy()
    # Sort by j, then best match first, then earliest.
    order = np.lexsort((pairs.i, -pairs.jaccard, pairs.j))
    ii, jj, jac = pairs.i[order].tolist(), pairs.j[order].tolist(), pairs.jaccard[order].tolist()
    for a, b, s in zip(ii, jj, jac):
        if removed[b] or not alive[a] or removed[a]:
            continue
        removed[b] = True
        matched[b] = a
        jac_of[b] = s
    return removed, matched, jac_of


# --------------------------------------------------------------------------------------------
# Cleaning training sources: what the phases pass along

# The audit (reports/dedup_audit.parquet): one row per removed item, where it is, why it went and
# what it matched. The one definition of its columns.
AUDIT_SCHEMA = pa.schema([
    ("source", pa.string()), ("file", pa.string()), ("line", pa.int64()), ("row", pa.int64()),
    ("reason", pa.string()), ("field", pa.string()), ("text", pa.string()),
    ("matched_source", pa.string()), ("matched_file", pa.string()), ("matched_line", pa.int64()),
    ("matched_field", pa.string()), ("matched_text", pa.string()), ("jaccard", pa.float64()),
    ("eval_sets", pa.string()),
])


@dataclass
class DedupResult:
    keep: dict[str, np.ndarray]  # source -> (rows,) bool, the rows written to data/clean
    audit: pd.DataFrame  # one row per removed item (the columns of AUDIT_SCHEMA)
    metrics: dict


@dataclass
class EvalSentences:
    """Every non-empty evaluation sentence (`rows`: set, source, file, line, field, text, norm) and
    its distinct normalised texts: text u is `unique[u]`, first seen in row `first_row[u]`, found
    in the evaluation sets `sets[u]` (sorted)."""

    rows: pd.DataFrame
    unique: pd.Index
    first_row: np.ndarray
    sets: list[list[str]]

    def __len__(self) -> int:
        return len(self.unique)


@dataclass
class Items:
    """The training items of one kind in priority order (sources in params.yaml order, rows in
    file order). Item k is row `row[k]` of source `sources[source[k]]`; it owns the `width`
    normalised sentences `norm[k * width:(k + 1) * width]`, one per text column."""

    kind: str
    sources: list[str]
    columns: tuple[str, ...]
    source: np.ndarray  # (n,) int64: index into `sources`
    row: np.ndarray  # (n,) int64: row in its source's table
    raw: dict[str, list]  # text column -> the item's text as read
    files: list[str]
    lines: list[int]
    norm: list[str | None]  # (n * width,) normalised sentences, item-major
    is_null: np.ndarray  # (n,) bool: a sentence is null; never compared as a duplicate, kept

    @property
    def width(self) -> int:
        return len(self.columns)

    def __len__(self) -> int:
        return len(self.source)


@dataclass
class Removal:
    """Why one item was removed: its audit row less the item's own location."""

    reason: str  # one of REASONS
    field: str  # the item's text column that matched
    text: str
    matched_source: str
    matched_file: str
    matched_line: int
    matched_field: str
    matched_text: str
    jaccard: float
    eval_sets: set[str]  # the evaluation sets the item matched (contamination only)


@dataclass
class Cleaned:
    """One kind after the removal phases: the removed items and the LSH search statistics."""

    items: Items
    removed: dict[int, Removal]  # item -> why it was removed
    search: dict[str, dict]  # "decontamination/<kind>", "dedup/<kind>" -> NearPairs.stats

    def reasons(self) -> np.ndarray:
        """(n,) object: each item's removal reason, "" for a kept item."""
        out = np.full(len(self.items), "", dtype=object)
        for k, r in self.removed.items():
            out[k] = r.reason
        return out

    def keep(self) -> dict[str, np.ndarray]:
        """Source -> (rows,) bool: the rows that stay."""
        kept = self.reasons() == ""
        return {n: kept[self.items.source == si] for si, n in enumerate(self.items.sources)}


def _alive(items: Items, removed: dict[int, Removal]) -> np.ndarray:
    """The items a duplicate search compares: neither removed nor null."""
    alive = ~items.is_null
    alive[list(removed)] = False
    return alive


# --------------------------------------------------------------------------------------------
# Inputs: evaluation sentences and training items


def eval_sentences(evals: dict[str, tuple[str, pa.Table]]) -> EvalSentences:
    """The sentences of every evaluation source (the text columns of its kind; only the
    `eval_record` rows of a long table), normalised; empty ones dropped."""
    frames = []
    for name, (kind, table) in evals.items():
        if kind not in KINDS:
            raise ValueError(f"evaluation source {name!r}: kind {kind!r} has no text columns")
        cols, record = KINDS[kind].text_columns, KINDS[kind].eval_record
        if record is not None:
            table = table.filter(pc.equal(table.column("record"), record))
        df = table.select([c for c in ("split", "file", "line", *cols) if c in table.column_names]).to_pandas()
        if "split" in df and df["split"].nunique() > 1:
            label = name + "/" + df["split"].astype(str)
        else:
            label = pd.Series(name, index=df.index)
        for c in cols:
            frames.append(pd.DataFrame({
                "set": label.to_numpy(), "source": name, "file": df["file"].to_numpy(),
                "line": df["line"].to_numpy(), "field": c, "text": df[c].to_numpy(dtype=object),
            }))
    ev = (pd.concat(frames, ignore_index=True) if frames
          else pd.DataFrame(columns=["set", "source", "file", "line", "field", "text"]))
    ev["norm"] = normalize_many(ev["text"].tolist())
    ev = ev[ev["norm"].notna() & (ev["norm"] != "")].reset_index(drop=True)
    code, unique = pd.factorize(ev["norm"], sort=False)
    first_row = pd.Series(np.arange(len(ev))).groupby(code).min().to_numpy()
    sets = ev.groupby(code)["set"].agg(lambda s: sorted(set(s))).tolist()
    return EvalSentences(ev, pd.Index(unique), first_row, sets)


def training_items(train: dict[str, tuple[str, pa.Table]]) -> list[Items]:
    """The training items of each kind, kinds in the order of their first source."""
    kinds: list[str] = []
    for name, (kind, _) in train.items():
        if kind not in TRAINED_KINDS:
            raise ValueError(
                f"training source {name!r}: dedup handles {', '.join(TRAINED_KINDS)}, not {kind!r}")
        if kind not in kinds:
            kinds.append(kind)
    return [_items_of_kind(kind, train) for kind in kinds]


def _items_of_kind(kind: str, train: dict[str, tuple[str, pa.Table]]) -> Items:
    srcs = [n for n, (k, _) in train.items() if k == kind]
    cols = KINDS[kind].text_columns
    width = len(cols)
    counts = [train[n][1].num_rows for n in srcs]
    n_items = int(sum(counts))
    raw: dict[str, list] = {c: [] for c in cols}
    files, lines = [], []
    for n in srcs:
        t = train[n][1]
        for c in cols:
            raw[c].extend(t.column(c).to_pylist())
        files.extend(t.column("file").to_pylist())
        lines.extend(t.column("line").to_pylist())
    norm_cols = [normalize_many(raw[c]) for c in cols]
    norm = [norm_cols[f][k] for k in range(n_items) for f in range(width)] if width > 1 else norm_cols[0]
    is_null = (np.array([x is None for x in norm], dtype=bool).reshape(n_items, width).any(axis=1)
               if n_items else np.zeros(0, bool))
    return Items(
        kind=kind, sources=srcs, columns=cols,
        source=np.repeat(np.arange(len(srcs)), counts),
        row=np.concatenate([np.arange(c) for c in counts]) if counts else np.zeros(0, np.int64),
        raw=raw, files=files, lines=lines, norm=norm, is_null=is_null,
    )


# --------------------------------------------------------------------------------------------
# Phase 1: decontamination (exact and near) against the evaluation sentences


@dataclass
class _EvalMatches:
    """Per training sentence: the distinct evaluation sentence it equals (-1: none), else the
    nearest one (-1: none), their J, and (by distinct training sentence `code`) the evaluation
    sets of every near match."""

    exact: np.ndarray
    near: np.ndarray
    near_jaccard: np.ndarray
    code: np.ndarray
    near_sets: dict[int, set[str]]


def _eval_matches(items: Items, ev: EvalSentences, cfg: DedupConfig) -> tuple[_EvalMatches, dict | None]:
    """Exact matches by lookup; near matches of the distinct remaining sentences by MinHash LSH
    over (evaluation + training) sentences, keeping only evaluation-training pairs."""
    n, n_eval = len(items.norm), len(ev)
    m = _EvalMatches(np.full(n, -1, np.int64), np.full(n, -1, np.int64), np.zeros(n),
                     np.full(n, -1, np.int64), {})
    sent = np.array(items.norm, dtype=object)
    usable = np.array([x is not None and x != "" for x in items.norm], dtype=bool)
    if n_eval and usable.any():
        m.exact[usable] = ev.unique.get_indexer(sent[usable])
    cand = usable & (m.exact < 0)
    if not (n_eval and cand.any()):
        return m, None
    scode, suniq = pd.factorize(sent[cand], sort=False)
    sets = ShingleSets.from_normalized(list(ev.unique) + list(suniq), cfg.ngram)
    pairs = near_duplicate_pairs(sets, cfg, keep_pair=lambda i, j: (i < n_eval) & (j >= n_eval))
    if len(pairs.i):
        dfp = pd.DataFrame({"e": pairs.i, "u": pairs.j - n_eval, "jac": pairs.jaccard})
        dfp = dfp.sort_values(["u", "jac", "e"], ascending=[True, False, True])
        best = dfp.drop_duplicates("u")
        best_e = np.full(len(suniq), -1, dtype=np.int64)
        best_j = np.zeros(len(suniq))
        best_e[best["u"].to_numpy()] = best["e"].to_numpy()
        best_j[best["u"].to_numpy()] = best["jac"].to_numpy()
        for u, grp in dfp.groupby("u")["e"]:
            m.near_sets[int(u)] = set().union(*(ev.sets[e] for e in grp))
        idx = np.flatnonzero(cand)
        m.near[idx] = best_e[scode]
        m.near_jaccard[idx] = best_j[scode]
        m.code[idx] = scode
    return m, pairs.stats


def decontaminate(items: Items, ev: EvalSentences, cfg: DedupConfig) -> tuple[dict[int, Removal], dict | None]:
    """Phase 1: the items with a sentence equal or near (J >= threshold) to an evaluation
    sentence, with the LSH statistics (None when nothing was searched).

    An item is charged to its best match: exact before near, then the highest J; its
    `eval_sets` gather the sets of every match of every sentence it has."""
    m, stats = _eval_matches(items, ev, cfg)
    removed: dict[int, Removal] = {}
    for s in np.flatnonzero((m.exact >= 0) | (m.near >= 0)):
        k, f = divmod(int(s), items.width)
        exact = bool(m.exact[s] >= 0)
        e = int(m.exact[s] if exact else m.near[s])
        esets = set(ev.sets[e]) if exact else set(m.near_sets.get(int(m.code[s]), ()))
        jac = 1.0 if exact else float(m.near_jaccard[s])
        cur = removed.get(k)
        if cur is not None:
            cur.eval_sets |= esets
            if cur.reason == CONTAMINATION_EXACT or (not exact and jac <= cur.jaccard):
                continue
            esets |= cur.eval_sets
        col = items.columns[f]
        er = ev.rows.iloc[int(ev.first_row[e])]
        removed[k] = Removal(
            CONTAMINATION_EXACT if exact else CONTAMINATION_NEAR, col, items.raw[col][k],
            er["source"], er["file"], int(er["line"]), er["field"], er["text"], jac, esets,
        )
    return removed, stats


# --------------------------------------------------------------------------------------------
# Phases 2 and 3: exact and near duplicates among the training items


def _duplicate(items: Items, k: int, m: int, jac: float, reason: str) -> Removal:
    """Item k removed as a duplicate of the kept item m (the audit shows the first column)."""
    f = items.columns[0]
    return Removal(reason, f, items.raw[f][k], items.sources[int(items.source[m])], items.files[m],
                   int(items.lines[m]), f, items.raw[f][m], jac, set())


def remove_exact_duplicates(items: Items, alive: np.ndarray, cfg: DedupConfig) -> dict[int, Removal]:
    """Phase 2: among the `alive` items, every later item whose normalised sentences all equal an
    earlier one's (within one source unless `cfg.across_sources`); the first is kept."""
    idx = np.flatnonzero(alive)
    if not len(idx):
        return {}
    w = items.width
    texts = [items.norm[k] for k in idx] if w == 1 else ["\n".join(items.norm[k * w:(k + 1) * w]) for k in idx]
    group = np.zeros(len(items), dtype=np.int64) if cfg.across_sources else items.source
    keys = pd.Series(texts, dtype=object).astype(str) + "\x00" + pd.Series(group[idx]).astype(str)
    kcode, _ = pd.factorize(keys, sort=False)
    first = pd.Series(np.arange(len(kcode))).groupby(kcode).transform("min").to_numpy()
    return {int(idx[p]): _duplicate(items, int(idx[p]), int(idx[first[p]]), 1.0, EXACT_DUPLICATE)
            for p in np.flatnonzero(first != np.arange(len(kcode)))}


def remove_near_duplicates(items: Items, alive: np.ndarray, cfg: DedupConfig) -> tuple[dict[int, Removal], dict | None]:
    """Phase 3: among the `alive` items, every item near (J >= threshold) an earlier item still
    kept (greedy, best match first), with the LSH statistics (None when nothing was searched).
    An item's shingles are those of all its sentences, except for PER_SIDE_NEAR_KINDS."""
    if alive.sum() <= 1:
        return {}, None
    sets = ShingleSets.from_normalized([x if x is not None else "" for x in items.norm], cfg.ngram)
    group = items.source
    keep_pair = None if cfg.across_sources else (lambda i, j: group[i] == group[j])
    if items.kind in PER_SIDE_NEAR_KINDS:
        pairs = _per_side_near_pairs(sets, items.width, cfg, alive, keep_pair)
    else:
        pairs = near_duplicate_pairs(sets.concat_groups(items.width), cfg, valid=alive, keep_pair=keep_pair)
    near, matched, jac = greedy_near_duplicates(len(items), pairs, kept=alive)
    removed = {int(k): _duplicate(items, int(k), int(matched[k]), float(jac[k]), NEAR_DUPLICATE)
               for k in np.flatnonzero(near)}
    return removed, pairs.stats


def _per_side_near_pairs(sets: ShingleSets, width: int, cfg: DedupConfig, alive: np.ndarray,
                         keep_pair) -> NearPairs:
    """Near-duplicate items of `width` sentences each (item-major `sets`) whose every side is
    near: candidates from the first side, then J_item = min over sides of J(side) >= threshold."""
    n_items = len(sets) // width
    sides = [sets.take(np.arange(n_items, dtype=np.int64) * width + f) for f in range(width)]
    pairs = near_duplicate_pairs(sides[0], cfg, valid=alive, keep_pair=keep_pair)
    jac = pairs.jaccard
    for side in sides[1:]:
        jac = np.minimum(jac, jaccard_pairs(side, pairs.i, pairs.j))
    m = jac >= cfg.threshold - 1e-12
    return NearPairs(pairs.i[m], pairs.j[m], jac[m], {**pairs.stats, "near_pairs": int(m.sum())})


def clean_items(items: Items, ev: EvalSentences, cfg: DedupConfig, progress: Progress | None = None) -> Cleaned:
    """Phases 1-3 on one kind's items: each phase sees only the items the earlier ones kept.
    `progress` gets a line as each phase starts and is advanced by the items at the end."""
    n = len(items.source)
    say = progress.log if progress is not None else (lambda note: None)
    say(f"{items.kind}: decontaminating {n} rows against {len(ev.unique)} distinct evaluation sentences")
    contaminated, decon_stats = decontaminate(items, ev, cfg)
    say(f"{items.kind}: exact duplicates")
    removed = {**contaminated, **remove_exact_duplicates(items, _alive(items, contaminated), cfg)}
    say(f"{items.kind}: near duplicates (MinHash LSH)")
    near, near_stats = remove_near_duplicates(items, _alive(items, removed), cfg)
    if progress is not None:
        progress.update(n)
    search = {f"decontamination/{items.kind}": decon_stats, f"dedup/{items.kind}": near_stats}
    return Cleaned(items, {**removed, **near}, {k: v for k, v in search.items() if v is not None})


# --------------------------------------------------------------------------------------------
# Phases 4 and 5: the metrics and the audit table


def _source_stats(reasons: np.ndarray, is_null: np.ndarray) -> dict:
    """Counts of one source (its items' reasons, "" for kept)."""
    stats = {"rows_in": len(reasons), "rows_out": int((reasons == "").sum()),
             "removed": {x: int((reasons == x).sum()) for x in REASONS},
             "null_rows": int(is_null.sum())}
    stats["removed_total"] = stats["rows_in"] - stats["rows_out"]
    stats["removed_fraction"] = round(stats["removed_total"] / stats["rows_in"], 6) if stats["rows_in"] else 0.0
    return stats


def summarise(cleaned: list[Cleaned], names: list[str], ev: EvalSentences) -> dict:
    """Phase 4: metrics/dedup.json (less `config`): rows per source and reason, decontamination
    by training source and evaluation set, LSH statistics per search."""
    per_source: dict[str, dict] = {}
    by_set: dict[str, int] = {}
    by_source_set: dict[str, dict[str, int]] = {}
    for c in cleaned:
        reasons = c.reasons()
        for si, n in enumerate(c.items.sources):
            mine = c.items.source == si
            per_source[n] = _source_stats(reasons[mine], c.items.is_null[mine])
            by_source_set[n] = {}
        for k, r in c.removed.items():
            n = c.items.sources[int(c.items.source[k])]
            for es in r.eval_sets:
                by_set[es] = by_set.get(es, 0) + 1
                by_source_set[n][es] = by_source_set[n].get(es, 0) + 1
    by_source = {}
    for n in names:
        exact, near = (per_source[n]["removed"][x] for x in (CONTAMINATION_EXACT, CONTAMINATION_NEAR))
        by_source[n] = {"exact": exact, "near": near, "total": exact + near}
    totals = {"rows_in": sum(s["rows_in"] for s in per_source.values()),
              "rows_out": sum(s["rows_out"] for s in per_source.values())}
    totals.update({x: sum(s["removed"][x] for s in per_source.values()) for x in REASONS})
    return {
        "totals": totals,
        "sources": {n: per_source[n] for n in names},
        "decontamination": {
            "eval_sets": sorted(ev.rows["set"].unique().tolist()),
            "eval_sentences": int(len(ev)),
            "removed": sum(d["total"] for d in by_source.values()),
            "by_training_source": by_source,
            "by_eval_set": dict(sorted(by_set.items())),
            "by_training_source_and_eval_set": {n: dict(sorted(by_source_set[n].items())) for n in names},
        },
        "search": {k: v for c in cleaned for k, v in c.search.items()},
    }


def audit_table(cleaned: list[Cleaned], names: list[str]) -> pd.DataFrame:
    """Phase 5: one row per removed item (AUDIT_SCHEMA), by source (params.yaml order) and row."""
    rows = []
    for c in cleaned:
        it = c.items
        for k in sorted(c.removed):
            r = c.removed[k]
            rows.append({
                "source": it.sources[int(it.source[k])], "file": it.files[k], "line": int(it.lines[k]),
                "row": int(it.row[k]), "reason": r.reason, "field": r.field, "text": r.text,
                "matched_source": r.matched_source, "matched_file": r.matched_file,
                "matched_line": int(r.matched_line), "matched_field": r.matched_field,
                "matched_text": r.matched_text, "jaccard": float(r.jaccard),
                "eval_sets": ",".join(sorted(r.eval_sets)),
            })
    audit = pd.DataFrame(rows, columns=AUDIT_SCHEMA.names)
    if len(audit):
        order = {n: i for i, n in enumerate(names)}
        audit = audit.sort_values(["source", "row"], key=lambda s: s.map(order) if s.name == "source" else s)
        audit = audit.reset_index(drop=True)
    return audit


def deduplicate(
    train: dict[str, tuple[str, pa.Table]],
    evals: dict[str, tuple[str, pa.Table]],
    cfg: DedupConfig,
) -> DedupResult:
    """Decontaminate `train` against every sentence of `evals`, then remove exact and near
    duplicates among the training items of each kind.

    `train` and `evals` map a source name to (kind, table) in priority order. A training item is
    a row: one sentence for a corpus, the (anchor, positive, negative) triple for NLI; a triple
    is removed when any of its sentences matches an evaluation sentence. Rows with a null text
    are not compared (the validate stage rejects them) and are counted as `null_rows`.
    """
    ev = eval_sentences(evals)
    kinds = training_items(train)
    progress = Progress("dedup", sum(len(items.source) for items in kinds), unit="rows")
    cleaned = [clean_items(items, ev, cfg, progress) for items in kinds]
    keep = {n: mask for c in cleaned for n, mask in c.keep().items()}
    return DedupResult(keep=keep, audit=audit_table(cleaned, list(train)),
                       metrics=summarise(cleaned, list(train), ev))


# --------------------------------------------------------------------------------------------
# The stage's work: read data/ingested, write data/clean, the audit and the metrics


def plan_sources(params: Params, cfg: DedupConfig) -> tuple[list[str], list[str]]:
    """(training sources to clean, evaluation sources to decontaminate against), in
    params.yaml order: the evaluation sources are every source with an evaluation role
    (config.EVAL_ROLES: eval-sts, eval-domain), then `dedup.extra_eval_sources`."""
    train = [n for n, s in params.sources.items() if s.role in cfg.roles]
    evals = list(params.sources_with_role(*EVAL_ROLES))
    for n in cfg.extra_eval_sources:
        if n not in params.sources:
            raise ConfigError(f"{params.path}: dedup.extra_eval_sources: no source {n!r} in sources")
        if n in train:
            raise ConfigError(
                f"{params.path}: dedup.extra_eval_sources: {n!r} is a training source "
                f"(role {params.sources[n].role}); an evaluation set cannot also be cleaned"
            )
        if n not in evals:
            evals.append(n)
    return train, evals


def _read_ingested(params: Params, data_dir: Path, name: str) -> tuple[str, pa.Table]:
    """(kind, table) of source `name` in `data_dir`."""
    path = data_dir / f"{name}.parquet"
    if not path.is_file():
        raise MissingInputError(f"{path}: not found; run the ingest stage first (dvc repro ingest)")
    return FORMATS[params.sources[name].format].kind, pq.read_table(path)


def _check_removed_fraction(metrics: dict, cfg: DedupConfig, data_dir: Path, audit_path) -> None:
    """DataError for the first source that lost more than `cfg.max_removed_fraction` of its rows."""
    too_many = {n: s for n, s in metrics["sources"].items()
                if s["rows_in"] and s["removed_fraction"] > cfg.max_removed_fraction}
    if too_many:
        n, s = next(iter(too_many.items()))
        parts = ", ".join(f"{k} {v}" for k, v in s["removed"].items() if v)
        raise DataError(
            data_dir / f"{n}.parquet", None,
            f"{s['removed_total']} of {s['rows_in']} rows to remove "
            f"({s['removed_fraction']:.1%}: {parts})",
            f"at most {cfg.max_removed_fraction:.0%} of a source removed "
            "(params.yaml dedup.max_removed_fraction)",
            f"look at the removed rows in {audit_path}; fix the source, or raise "
            "dedup.max_removed_fraction if this much duplication is expected",
        )


def run_dedup(params: Params, data_dir, out_dir, metrics_path, audit_path) -> dict:
    """Clean every training source of `data_dir` into `out_dir/<source>.parquet` (same schema).

    Writes the audit Parquet and the metrics JSON first, then fails (DataError) when a source
    lost more than `dedup.max_removed_fraction` of its rows, before any clean file is written.
    """
    cfg = params.dedup
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    train_names, eval_names = plan_sources(params, cfg)
    train = {n: _read_ingested(params, data_dir, n) for n in train_names}
    evals = {n: _read_ingested(params, data_dir, n) for n in eval_names}
    result = deduplicate(train, evals, cfg)
    metrics = result.metrics
    metrics["config"] = {"ngram": cfg.ngram, "threshold": cfg.threshold, "num_perm": cfg.num_perm,
                         "bands": cfg.bands, "rows": cfg.rows}

    with atomic_path(audit_path, suffix=".parquet") as tmp:
        table = pa.Table.from_pandas(result.audit, schema=AUDIT_SCHEMA, preserve_index=False)
        pq.write_table(table, tmp)
    write_json(metrics_path, metrics)
    _check_removed_fraction(metrics, cfg, data_dir, audit_path)

    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for n, (kind, table) in train.items():
            mask = pa.array(result.keep[n])
            pq.write_table(table.filter(mask), tmp / f"{n}.parquet")
    return metrics
