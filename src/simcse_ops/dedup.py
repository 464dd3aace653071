"""Exact and near-duplicate removal, and decontamination against evaluation sets.

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

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

# Removal reasons, in the order they are applied.
CONTAMINATION_EXACT = "contamination_exact"
CONTAMINATION_NEAR = "contamination_near"
EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"
REASONS = (CONTAMINATION_EXACT, CONTAMINATION_NEAR, EXACT_DUPLICATE, NEAR_DUPLICATE)

# Text columns per data kind (`simcse_ops.schemas.KINDS`): what dedup compares and what
# decontamination collects from an evaluation set.
TEXT_COLUMNS: dict[str, tuple[str, ...]] = {
    "corpus": ("text",),
    "nli": ("anchor", "positive", "negative"),
    "sts": ("sentence1", "sentence2"),
    "seat": ("text",),
    "crows_pairs": ("sent_more", "sent_less"),
    "pairs": ("sentence1", "sentence2"),
    "retrieval": ("text",),
    "text_pairs": ("anchor", "positive"),
}

# Kinds a training source may have.
TRAIN_KINDS = ("corpus", "nli", "text_pairs")
# Kinds whose items are near duplicates only when EVERY side is near (J >= threshold per
# column, the item's J is the smallest): a text pair's positive is often most of an abstract
# shared by many pairs of that abstract, so shingles merged over the pair would make all of
# them "near duplicates" of one another.
PER_SIDE_NEAR_KINDS = ("text_pairs",)

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


@dataclass(frozen=True)
class DedupConfig:
    """params.yaml `dedup` (typed with `simcse_ops.config.section`)."""

    # Roles whose sources are cleaned and written to data/clean.
    roles: tuple[str, ...] = ("train-unsup", "train-sup", "domain")
    # Every sentence of every source with one of these roles is an evaluation sentence.
    eval_roles: tuple[str, ...] = ("eval-sts",)
    # More evaluation sets by source name (any role and kind), e.g. a domain STS set.
    extra_eval_sources: tuple[str, ...] = ()
    # Duplicates across training sources of the same kind (earlier source in params.yaml wins).
    across_sources: bool = True
    ngram: int = 2
    threshold: float = 0.7
    num_perm: int = 128
    bands: int = 32
    # In a band bucket, each item is compared with the bucket's first item and its `bucket_window`
    # predecessors, which bounds the pairs a huge bucket can produce.
    bucket_window: int = 16
    # Candidates whose MinHash estimate of J is below threshold - margin are not verified.
    prefilter_margin: float = 0.15
    seed: int = 1234
    # Fail the stage when a source loses more than this share of its rows (a file ingested
    # twice, a corpus built from an evaluation set): never clean such data silently.
    max_removed_fraction: float = 0.3

    def __post_init__(self) -> None:
        from simcse_ops.config import ConfigError

        if not 1 <= self.ngram <= len(_NGRAM_C):
            raise ConfigError(f"dedup.ngram: expected 1..{len(_NGRAM_C)}, got {self.ngram}")
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"dedup.threshold: expected in (0, 1], got {self.threshold}")
        if self.bands < 1 or self.num_perm % self.bands:
            raise ConfigError(
                f"dedup.bands: {self.bands} must divide dedup.num_perm ({self.num_perm})"
            )
        if self.bucket_window < 1:
            raise ConfigError(f"dedup.bucket_window: expected >= 1, got {self.bucket_window}")
        if not 0.0 <= self.max_removed_fraction <= 1.0:
            raise ConfigError(
                f"dedup.max_removed_fraction: expected in [0, 1], got {self.max_removed_fraction}"
            )

    @property
    def rows(self) -> int:
        return self.num_perm // self.bands


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


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser: a bijective 64-bit mixer (Steele et al. 2014)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


# Odd multipliers for the positions of an n-gram (position 0 uses the token hash as it is).
_NGRAM_C = np.random.default_rng(20240607).integers(1, 2**63, size=16, dtype=np.uint64) | np.uint64(1)


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


def concat_sets(parts: Sequence[ShingleSets]) -> ShingleSets:
    hashes = np.concatenate([p.hashes for p in parts]) if parts else np.zeros(0, np.uint64)
    offs = [np.zeros(1, np.int64)]
    base = 0
    for p in parts:
        offs.append(p.offsets[1:] + base)
        base += p.offsets[-1]
    return ShingleSets(hashes, np.concatenate(offs))


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
# Cleaning training sources


@dataclass
class DedupResult:
    keep: dict[str, np.ndarray]  # source -> (rows,) bool, the rows written to data/clean
    audit: pd.DataFrame  # one row per removed item (AUDIT_COLUMNS)
    metrics: dict


AUDIT_COLUMNS = [
    "source", "file", "line", "row", "reason", "field", "text",
    "matched_source", "matched_file", "matched_line", "matched_field", "matched_text",
    "jaccard", "eval_sets",
]


def _eval_sentences(evals: dict[str, tuple[str, pa.Table]]) -> pd.DataFrame:
    """Long table of every evaluation sentence: set, source, file, line, field, text."""
    frames = []
    for name, (kind, table) in evals.items():
        cols = TEXT_COLUMNS.get(kind)
        if cols is None:
            raise ValueError(f"evaluation source {name!r}: kind {kind!r} has no text columns")
        if kind == "retrieval":
            # Only the queries are evaluation text: documents are unlabelled text a transductive
            # setup may train on, and qrels carry no text.
            table = table.filter(pc.equal(table.column("record"), "query"))
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
    if not frames:
        return pd.DataFrame(columns=["set", "source", "file", "line", "field", "text"])
    return pd.concat(frames, ignore_index=True)


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
    # ---- evaluation sentences: distinct normalised texts, their first occurrence, their sets
    ev = _eval_sentences(evals)
    ev["norm"] = normalize_many(ev["text"].tolist())
    ev = ev[ev["norm"].notna() & (ev["norm"] != "")].reset_index(drop=True)
    ecode, euniq = pd.factorize(ev["norm"], sort=False)
    first_of = pd.Series(np.arange(len(ev))).groupby(ecode).min().to_numpy()
    sets_of = ev.groupby(ecode)["set"].agg(lambda s: sorted(set(s))).tolist()
    n_eval = len(euniq)
    eval_index = pd.Index(euniq)

    # ---- training sentences, item-major: item k of source s owns `width` consecutive sentences
    names = list(train)
    audit_rows: list[dict] = []
    per_source: dict[str, dict] = {}
    keep: dict[str, np.ndarray] = {}
    decon_by_source: dict[str, dict] = {}
    decon_by_set: dict[str, int] = {}
    decon_by_source_set: dict[str, dict[str, int]] = {}
    search_stats: dict[str, dict] = {}

    kinds = []
    for name in names:
        kind, _ = train[name]
        if kind not in TRAIN_KINDS:
            raise ValueError(f"training source {name!r}: dedup handles {', '.join(TRAIN_KINDS)}, not {kind!r}")
        if kind not in kinds:
            kinds.append(kind)

    for kind in kinds:
        srcs = [n for n in names if train[n][0] == kind]
        cols = TEXT_COLUMNS[kind]
        width = len(cols)
        tables = {n: train[n][1] for n in srcs}
        counts = [tables[n].num_rows for n in srcs]
        n_items = int(sum(counts))
        src_of = np.repeat(np.arange(len(srcs)), counts)
        row_of = np.concatenate([np.arange(c) for c in counts]) if counts else np.zeros(0, np.int64)
        raw = {c: [] for c in cols}
        files, lines = [], []
        for n in srcs:
            t = tables[n]
            for c in cols:
                raw[c].extend(t.column(c).to_pylist())
            files.extend(t.column("file").to_pylist())
            lines.extend(t.column("line").to_pylist())
        # (n_items, width) normalised texts, flattened item-major.
        norm_cols = [normalize_many(raw[c]) for c in cols]
        sent_norm = [norm_cols[f][k] for k in range(n_items) for f in range(width)] if width > 1 else norm_cols[0]
        sent_arr = np.array(sent_norm, dtype=object)
        is_null = np.array([x is None for x in sent_norm], dtype=bool).reshape(n_items, width).any(axis=1) if n_items else np.zeros(0, bool)

        removed = np.zeros(n_items, dtype=bool)
        reason = np.full(n_items, "", dtype=object)
        rec: dict[int, dict] = {}

        # ---- 1. decontamination, exact: a sentence equal to an evaluation sentence
        sent_item = np.repeat(np.arange(n_items), width)
        sent_field = np.tile(np.arange(width), n_items)
        usable = np.array([x is not None and x != "" for x in sent_norm], dtype=bool)
        hit = np.full(len(sent_norm), -1, dtype=np.int64)
        if n_eval and usable.any():
            hit[usable] = eval_index.get_indexer(sent_arr[usable])
        # ---- 2. decontamination, near: distinct remaining sentences against evaluation ones
        near_hit = np.full(len(sent_norm), -1, dtype=np.int64)
        near_jac = np.zeros(len(sent_norm))
        near_sets: dict[int, set] = {}
        ucode_of = np.full(len(sent_norm), -1, dtype=np.int64)
        cand = usable & (hit < 0)
        if n_eval and cand.any():
            scode, suniq = pd.factorize(sent_arr[cand], sort=False)
            universe = list(euniq) + list(suniq)
            sets = ShingleSets.from_normalized(universe, cfg.ngram)
            pairs = near_duplicate_pairs(
                sets, cfg, keep_pair=lambda i, j: (i < n_eval) & (j >= n_eval)
            )
            search_stats[f"decontamination/{kind}"] = pairs.stats
            if len(pairs.i):
                dfp = pd.DataFrame({"e": pairs.i, "u": pairs.j - n_eval, "jac": pairs.jaccard})
                dfp = dfp.sort_values(["u", "jac", "e"], ascending=[True, False, True])
                best = dfp.drop_duplicates("u")
                best_e = np.full(len(suniq), -1, dtype=np.int64)
                best_j = np.zeros(len(suniq))
                best_e[best["u"].to_numpy()] = best["e"].to_numpy()
                best_j[best["u"].to_numpy()] = best["jac"].to_numpy()
                for u, grp in dfp.groupby("u")["e"]:
                    near_sets[int(u)] = set().union(*(sets_of[e] for e in grp))
                idx_c = np.flatnonzero(cand)
                near_hit[idx_c] = best_e[scode]
                near_jac[idx_c] = best_j[scode]
                ucode_of[idx_c] = scode

        # An item is contaminated by its best match: exact before near, then the highest J.
        for s in np.flatnonzero((hit >= 0) | (near_hit >= 0)):
            k = int(sent_item[s])
            exact = bool(hit[s] >= 0)
            e = int(hit[s] if exact else near_hit[s])
            esets = set(sets_of[e]) if exact else set(near_sets.get(int(ucode_of[s]), ()))
            jac_s = 1.0 if exact else float(near_jac[s])
            cur = rec.get(k)
            if cur is not None:
                cur["eval_sets"] |= esets
                cur_exact = reason[k] == CONTAMINATION_EXACT
                if cur_exact or (not exact and jac_s <= cur["jaccard"]):
                    continue
                esets |= cur["eval_sets"]
            removed[k] = True
            reason[k] = CONTAMINATION_EXACT if exact else CONTAMINATION_NEAR
            f = cols[int(sent_field[s])]
            er = ev.iloc[int(first_of[e])]
            rec[k] = {
                "field": f, "text": raw[f][k],
                "matched_source": er["source"], "matched_file": er["file"],
                "matched_line": int(er["line"]), "matched_field": er["field"],
                "matched_text": er["text"], "jaccard": jac_s, "eval_sets": esets,
            }

        # ---- 3. exact duplicates among the remaining items (first occurrence kept)
        alive = ~removed & ~is_null
        group = np.zeros(n_items, dtype=np.int64) if cfg.across_sources else src_of
        item_key = np.array(
            [("\n".join(sent_norm[k * width:(k + 1) * width])) for k in range(n_items)]
            if width > 1 else sent_norm, dtype=object,
        ) if n_items else np.zeros(0, dtype=object)
        alive_idx = np.flatnonzero(alive)
        if len(alive_idx):
            keys = pd.Series(item_key[alive_idx]).astype(str) + "\x00" + pd.Series(group[alive_idx]).astype(str)
            kcode, _ = pd.factorize(keys, sort=False)
            first_pos = pd.Series(np.arange(len(kcode))).groupby(kcode).transform("min").to_numpy()
            dup = first_pos != np.arange(len(kcode))
            for p in np.flatnonzero(dup):
                k, m = int(alive_idx[p]), int(alive_idx[first_pos[p]])
                removed[k] = True
                reason[k] = EXACT_DUPLICATE
                rec[k] = _dup_record(k, m, 1.0, srcs, src_of, row_of, files, lines, raw, cols)
        # ---- 4. near duplicates among the remaining items
        alive = ~removed & ~is_null
        if alive.sum() > 1:
            sets = ShingleSets.from_normalized(
                [x if x is not None else "" for x in sent_norm], cfg.ngram
            )
            keep_pair = None if cfg.across_sources else (lambda i, j: group[i] == group[j])
            if kind in PER_SIDE_NEAR_KINDS:
                pairs = _per_side_near_pairs(sets, width, cfg, alive, keep_pair)
            else:
                pairs = near_duplicate_pairs(sets.concat_groups(width), cfg, valid=alive, keep_pair=keep_pair)
            search_stats[f"dedup/{kind}"] = pairs.stats
            near_rm, matched, jac = greedy_near_duplicates(n_items, pairs, kept=alive)
            for k in np.flatnonzero(near_rm):
                m = int(matched[k])
                removed[k] = True
                reason[k] = NEAR_DUPLICATE
                rec[k] = _dup_record(int(k), m, float(jac[k]), srcs, src_of, row_of, files, lines, raw, cols)

        # ---- per-source results
        for si, n in enumerate(srcs):
            mine = src_of == si
            keep[n] = ~removed[mine]
            r = reason[mine]
            stats = {"rows_in": int(mine.sum()), "rows_out": int((~removed[mine]).sum()),
                     "removed": {x: int((r == x).sum()) for x in REASONS},
                     "null_rows": int(is_null[mine].sum())}
            stats["removed_total"] = stats["rows_in"] - stats["rows_out"]
            stats["removed_fraction"] = round(stats["removed_total"] / stats["rows_in"], 6) if stats["rows_in"] else 0.0
            per_source[n] = stats
            dsrc = {"exact": stats["removed"][CONTAMINATION_EXACT], "near": stats["removed"][CONTAMINATION_NEAR]}
            dsrc["total"] = dsrc["exact"] + dsrc["near"]
            decon_by_source[n] = dsrc
            decon_by_source_set[n] = {}
        for k in sorted(rec):
            n = srcs[int(src_of[k])]
            rr = rec[k]
            esets = sorted(rr.get("eval_sets") or ())
            for es in esets:
                decon_by_set[es] = decon_by_set.get(es, 0) + 1
                decon_by_source_set[n][es] = decon_by_source_set[n].get(es, 0) + 1
            audit_rows.append({
                "source": n, "file": files[k], "line": int(lines[k]), "row": int(row_of[k]),
                "reason": reason[k], "field": rr["field"], "text": rr["text"],
                "matched_source": rr["matched_source"], "matched_file": rr["matched_file"],
                "matched_line": int(rr["matched_line"]), "matched_field": rr["matched_field"],
                "matched_text": rr["matched_text"], "jaccard": float(rr["jaccard"]),
                "eval_sets": ",".join(esets),
            })

    audit = pd.DataFrame(audit_rows, columns=AUDIT_COLUMNS)
    if len(audit):
        order = {n: i for i, n in enumerate(names)}
        audit = audit.sort_values(["source", "row"], key=lambda s: s.map(order) if s.name == "source" else s)
        audit = audit.reset_index(drop=True)
    totals = {"rows_in": sum(s["rows_in"] for s in per_source.values()),
              "rows_out": sum(s["rows_out"] for s in per_source.values())}
    for x in REASONS:
        totals[x] = sum(s["removed"][x] for s in per_source.values())
    metrics = {
        "totals": totals,
        "sources": {n: per_source[n] for n in names},
        "decontamination": {
            "eval_sets": sorted(ev["set"].unique().tolist()),
            "eval_sentences": int(n_eval),
            "removed": sum(d["total"] for d in decon_by_source.values()),
            "by_training_source": {n: decon_by_source[n] for n in names},
            "by_eval_set": dict(sorted(decon_by_set.items())),
            "by_training_source_and_eval_set": {n: dict(sorted(decon_by_source_set[n].items())) for n in names},
        },
        "search": search_stats,
    }
    return DedupResult(keep=keep, audit=audit, metrics=metrics)


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


def _dup_record(k, m, jac, srcs, src_of, row_of, files, lines, raw, cols) -> dict:
    """Audit fields for item k removed as a duplicate of item m (same kind)."""
    f = cols[0]
    return {
        "field": f, "text": raw[f][k],
        "matched_source": srcs[int(src_of[m])], "matched_file": files[m],
        "matched_line": int(lines[m]), "matched_field": f, "matched_text": raw[f][m],
        "jaccard": jac, "eval_sets": set(),
    }


# --------------------------------------------------------------------------------------------
# The stage's work: read data/ingested, write data/clean, the audit and the metrics


def plan_sources(params, cfg: DedupConfig) -> tuple[list[str], list[str]]:
    """(training sources to clean, evaluation sources to decontaminate against), in
    params.yaml order."""
    from simcse_ops.config import ConfigError

    train = [n for n, s in params.sources.items() if s.role in cfg.roles]
    evals = [n for n, s in params.sources.items() if s.role in cfg.eval_roles]
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


def run_dedup(params, data_dir, out_dir, metrics_path, audit_path) -> dict:
    """Clean every training source of `data_dir` into `out_dir/<source>.parquet` (same schema).

    Writes the audit Parquet and the metrics JSON first, then fails (DataError) when a source
    lost more than `dedup.max_removed_fraction` of its rows, before any clean file is written.
    """
    from pathlib import Path

    import pyarrow.parquet as pq

    from simcse_ops.config import section
    from simcse_ops.files import DataError, atomic_path, write_json
    from simcse_ops.readers import FORMAT_KIND

    cfg = section(params, "dedup", DedupConfig)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    train_names, eval_names = plan_sources(params, cfg)

    def read(name: str) -> tuple[str, pa.Table]:
        path = data_dir / f"{name}.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; run the ingest stage first (dvc repro ingest)")
        return FORMAT_KIND[params.sources[name].format], pq.read_table(path)

    train = {n: read(n) for n in train_names}
    evals = {n: read(n) for n in eval_names}
    result = deduplicate(train, evals, cfg)
    metrics = result.metrics
    metrics["config"] = {"ngram": cfg.ngram, "threshold": cfg.threshold, "num_perm": cfg.num_perm,
                         "bands": cfg.bands, "rows": cfg.rows}

    with atomic_path(audit_path, suffix=".parquet") as tmp:
        table = pa.Table.from_pandas(result.audit, schema=AUDIT_SCHEMA, preserve_index=False)
        pq.write_table(table, tmp)
    write_json(metrics_path, metrics)

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

    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for n, (kind, table) in train.items():
            mask = pa.array(result.keep[n])
            pq.write_table(table.filter(mask), tmp / f"{n}.parquet")
    return metrics


AUDIT_SCHEMA = pa.schema([
    ("source", pa.string()), ("file", pa.string()), ("line", pa.int64()), ("row", pa.int64()),
    ("reason", pa.string()), ("field", pa.string()), ("text", pa.string()),
    ("matched_source", pa.string()), ("matched_file", pa.string()), ("matched_line", pa.int64()),
    ("matched_field", pa.string()), ("matched_text", pa.string()), ("jaccard", pa.float64()),
    ("eval_sets", pa.string()),
])
