"""Builders for the data-hygiene tests (dedup, validate): small ingested Parquet tables with the
real schemas, real sentences, and a minimal params.yaml that names them."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from simcse_ops.schemas import CORPUS, NLI, STS

WIKI = "corpus/wiki1m_for_simcse_prefix/wiki1m_for_simcse.txt"


@lru_cache(maxsize=1)
def _real_lines(data_root: str) -> tuple[str, ...]:
    text = (Path(data_root) / WIKI).read_text(encoding="utf-8")
    return tuple(text.split("\n")[:-1])


def real_sentences(data_root, n: int, skip: int = 0) -> list[str]:
    """`n` real Wikipedia sentences (wiki1m) of 8-40 words, no two of them near duplicates."""
    from simcse_ops.config import DedupConfig
    from simcse_ops.dedup import deduplicate

    lines = [s for s in _real_lines(str(data_root)) if 8 <= len(s.split()) <= 40][skip : skip + 3 * n]
    res = deduplicate({"c": ("corpus", corpus_table(lines))}, {}, DedupConfig(max_removed_fraction=1.0))
    kept = [s for s, k in zip(lines, res.keep["c"]) if k]
    assert len(kept) >= n, "not enough distinct sentences in the wiki1m prefix"
    return kept[:n]


def sts_table(pairs, split="test", file="sts/fixture.txt") -> pa.Table:
    rows = list(pairs)
    splits = split if isinstance(split, list) else [split] * len(rows)
    return pa.table(
        {
            "split": splits,
            "subset": ["fixture"] * len(rows),
            "sentence1": [r[0] for r in rows],
            "sentence2": [r[1] for r in rows],
            "score": [r[2] for r in rows],
            "file": [file] * len(rows),
            "line": list(range(1, len(rows) + 1)),
        },
        schema=STS,
    )


def corpus_table(texts, file="corpus/fixture.txt") -> pa.Table:
    texts = list(texts)
    return pa.table(
        {"text": texts, "doc": [""] * len(texts), "file": [file] * len(texts),
         "line": list(range(1, len(texts) + 1))},
        schema=CORPUS,
    )


def nli_table(triples, file="nli/fixture.jsonl") -> pa.Table:
    rows = list(triples)
    return pa.table(
        {"anchor": [r[0] for r in rows], "positive": [r[1] for r in rows], "negative": [r[2] for r in rows],
         "file": [file] * len(rows), "line": list(range(1, len(rows) + 1))},
        schema=NLI,
    )


FORMAT_OF = {"sts": "semeval_sts", "corpus": "lines", "nli": "snli_jsonl"}


def write_project(tmp_path: Path, sources: dict, dedup: dict | None = None,
                  validate: dict | None = None) -> tuple[Path, Path]:
    """Write `ingested/<name>.parquet` for each `name: (kind, role, table)` and a params.yaml
    naming them; returns (params path, ingested folder)."""
    ingested = tmp_path / "ingested"
    ingested.mkdir(parents=True, exist_ok=True)
    src_cfg = {}
    for name, (kind, role, table) in sources.items():
        pq.write_table(table, ingested / f"{name}.parquet")
        src_cfg[name] = {"format": FORMAT_OF[kind], "role": role, "paths": [f"{name}.txt"]}
    eval_name = next(n for n, (k, r, _) in sources.items() if r == "eval-sts")
    raw = {
        "data": {"root": str(tmp_path)},
        "ingest": {},
        "sources": src_cfg,
        "evaluate": {"tasks": {"fixture": {"source": eval_name}}},
        "variants": {},
        "dedup": dedup or {},
        "validate": validate or {},
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path, ingested
