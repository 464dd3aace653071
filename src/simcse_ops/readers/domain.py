"""Readers for domain evaluation sets and domain training pairs.

* `read_mqp_csv`, `read_pairs_labelled` -> `simcse_ops.schemas.PAIRS` (pair classification)
* `read_pairs_scored` -> `simcse_ops.schemas.STS` (graded similarity: pairs with a score, e.g. BIOSSES)
* `read_beir`, `read_pubmedqa_retrieval` -> `simcse_ops.schemas.RETRIEVAL` (queries, docs, qrels)
* `read_pubmedqa_pairs` -> `simcse_ops.schemas.TEXT_PAIRS` (positive pairs for contrastive training)

Splits drawn here are deterministic: a seeded SHA-256 of the unit that must stay on one side
(`seeded_fraction`), never Python's `hash` or a random generator, so a rerun gives the same split.
Every PubMedQA reader splits with `pubmedqa_split` (defined beside the PubMedQA corpus reader in
`simcse_ops.readers.corpus`, re-exported here).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from simcse_ops.errors import ConfigError, DataError, MissingInputError
from simcse_ops.readers.base import (
    ReadContext,
    check_fraction,
    check_nonempty,
    csv_fields,
    iter_lines,
    read_bytes,
    seeded_fraction,
)
from simcse_ops.readers.corpus import (
    PUBMEDQA_TEST_PMIDS,
    PubMedQASplit,
    PubMedQASplits,
    Splitter,
    clean_paragraph,
    get_splitter,
    iter_pubmedqa,
    pubmedqa_split,
)

__all__ = ["pubmedqa_split", "read_beir", "read_mqp_csv", "read_pairs_labelled", "read_pairs_scored",
           "read_pubmedqa_pairs", "read_pubmedqa_retrieval"]

LABELS = {"0": 0, "1": 1}


def parse_label(value: Any, path: Path, line: int) -> int:
    """A binary pair label: 0/1 as text or as a JSON integer (not true/false, not 1.0)."""
    if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
        return value
    if isinstance(value, str) and value.strip() in LABELS:
        return LABELS[value.strip()]
    raise DataError(path, line, f"label {value!r}", "0 (different) or 1 (similar)")


def group_split(group: str, dev_fraction: float, seed: int) -> str:
    """"dev" when seeded_fraction(group, seed) < dev_fraction, else "test": every row of a group
    lands on the same side. The group is compared with its whitespace collapsed."""
    return "dev" if seeded_fraction(" ".join(group.split()), seed) < dev_fraction else "test"


# ---------------------------------------------------------------------------------------------
# Pair classification

MQP_LAYOUT = "4 fields: dr_id, question_1, question_2, label"


def read_mqp_csv(
    files: Sequence[Path], ctx: ReadContext, dev_fraction: float = 0.5, seed: int = 0
) -> Iterator[dict]:
    """Medical Question Pairs (`mqp.csv`): no header, comma-separated with RFC-4180 quoting,
    CRLF; fields dr_id, question_1, question_2, label (1 similar, 0 different).

    `group` is question_1: each original question has one similar and one different pair, and
    both go wholly to "dev" or to "test" (`group_split` with `dev_fraction`, `seed`).
    """
    check_fraction(dev_fraction, ctx, "dev_fraction")
    for path in files:
        rel = ctx.rel(path)
        lines = list(iter_lines(path, ctx))
        for line, fields in csv_fields(path, lines):
            if fields == [] or fields == [""]:
                ctx.stats["blank_lines"] += 1
                continue
            try:
                if len(fields) != 4:
                    raise DataError(path, line, f"{len(fields)} comma-separated field(s)", MQP_LAYOUT)
                q1, q2 = fields[1].strip(), fields[2].strip()
                check_nonempty({"question_1": q1, "question_2": q2}, path, line)
                label = parse_label(fields[3], path, line)
            except DataError as e:
                ctx.bad(e)
                continue
            yield {"split": group_split(q1, dev_fraction, seed), "group": q1, "sentence1": q1,
                   "sentence2": q2, "label": label, "file": rel, "line": line}


PAIR_COLUMNS = ("sentence1", "sentence2", "label")


def _pair_records(path: Path, ctx: ReadContext, required: Sequence[str]) -> Iterator[tuple[int, dict]]:
    """(line, record) of a pairs file, by suffix (optionally `.gz`): `.tsv` (a header, tab-separated,
    no quoting), `.csv` (a header, RFC-4180 quoting) or `.jsonl` (one object per line)."""
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    suffix = Path(name).suffix
    if suffix == ".tsv":
        return _tsv_records(path, ctx, required)
    if suffix == ".csv":
        return _csv_records(path, ctx, required)
    if suffix == ".jsonl":
        return _jsonl_records(path, ctx)
    raise DataError(path, None, f"file name {path.name!r}", "a .tsv, .csv or .jsonl file (optionally .gz)",
                    f"rename the file or fix sources.{ctx.source}.paths")


def _check_split_option(split: str, ctx: ReadContext) -> None:
    if not split.strip():
        raise ConfigError(f"sources.{ctx.source}.options.split: expected a non-empty split name, got {split!r}")


def read_pairs_labelled(files: Sequence[Path], ctx: ReadContext, split: str = "test") -> Iterator[dict]:
    """A user's labelled pairs, by file suffix (optionally `.gz`):

    * `.tsv`: a header naming sentence1, sentence2, label (optional split, group; other columns
      ignored), tab-separated, no quoting;
    * `.csv`: the same header, comma-separated, double-quoted fields;
    * `.jsonl`: one object per line with those keys.

    label is 0 or 1. A row without a split gets the option `split`; without a group, "".
    """
    _check_split_option(split, ctx)
    for path in files:
        records = _pair_records(path, ctx, PAIR_COLUMNS)
        rel = ctx.rel(path)
        for line, rec in records:
            try:
                row = _labelled_row(path, line, rec, split)
            except DataError as e:
                ctx.bad(e)
                continue
            row.update(file=rel, line=line)
            yield row


SCORED_COLUMNS = ("sentence1", "sentence2", "score")


def read_pairs_scored(files: Sequence[Path], ctx: ReadContext, split: str = "test",
                      score_range: Sequence[float] | None = None) -> Iterator[dict]:
    """Graded similarity pairs (an STS-style domain task such as BIOSSES), by file suffix as
    `read_pairs_labelled`: a header (or keys) sentence1, sentence2, score (optional split).

    score is a finite number, within `score_range` [low, high] when given (BIOSSES: 0..4). A row
    without a split gets the option `split`. Rows make the `sts` kind (subset: the file's stem),
    scored as Spearman x100 of cosine (`simcse_ops.domain.score_graded_pairs`).
    """
    _check_split_option(split, ctx)
    if score_range is not None and (len(score_range) != 2 or float(score_range[0]) > float(score_range[1])):
        raise ConfigError(f"sources.{ctx.source}.options.score_range: expected [low, high], got {score_range!r}")
    for path in files:
        rel = ctx.rel(path)
        subset = Path(path.name[:-3] if path.name.endswith(".gz") else path.name).stem
        for line, rec in _pair_records(path, ctx, SCORED_COLUMNS):
            try:
                row = _scored_row(path, line, rec, split, score_range)
            except DataError as e:
                ctx.bad(e)
                continue
            row.update(subset=subset, file=rel, line=line)
            yield row


def _scored_row(path: Path, line: int, rec: dict, default_split: str,
                score_range: Sequence[float] | None) -> dict:
    s1, s2 = _text(rec, "sentence1", path, line), _text(rec, "sentence2", path, line)
    check_nonempty({"sentence1": s1, "sentence2": s2}, path, line)
    raw = rec.get("score")
    expected = ("a number" if score_range is None
                else f"a number in [{float(score_range[0]):g}, {float(score_range[1]):g}]")
    try:
        score = float(raw.strip() if isinstance(raw, str) else raw)
    except (TypeError, ValueError, AttributeError):
        raise DataError(path, line, f"score {raw!r:.40}" if "score" in rec else "no key 'score'",
                        f"score as {expected}") from None
    if isinstance(raw, bool) or not math.isfinite(score) or (
            score_range is not None and not float(score_range[0]) <= score <= float(score_range[1])):
        raise DataError(path, line, f"score {raw!r:.40}", f"score as {expected}")
    split = _text(rec, "split", path, line) if "split" in rec else default_split
    if not split:
        raise DataError(path, line, "an empty split", "a split name (or no split column)")
    return {"split": split, "sentence1": s1, "sentence2": s2, "score": score}


def _header_names(path: Path, names: list[str], sep: str, required: Sequence[str]) -> list[str]:
    names = [n.strip() for n in names]
    missing = [c for c in required if c not in names]
    if missing:
        optional = "split, group" if "label" in required else "split"
        raise DataError(path, 1, f"header {sep.join(names)!r} without {', '.join(missing)}",
                        f"a header naming {', '.join(required)} (optional {optional})")
    return names


def _tsv_records(path: Path, ctx: ReadContext, required: Sequence[str]) -> Iterator[tuple[int, dict]]:
    lines = list(iter_lines(path, ctx, read_bytes(path, ctx)))
    if not lines or lines[0].number != 1:
        raise DataError(path, 1, "no readable header line", f"a header naming {', '.join(required)}")
    names = _header_names(path, lines[0].text.split("\t"), "\t", required)
    for ln in lines[1:]:
        if not ln.text.strip():
            ctx.stats["blank_lines"] += 1
            continue
        fields = ln.text.split("\t")
        if len(fields) != len(names):
            ctx.bad(DataError(path, ln.number, f"{len(fields)} tab-separated field(s)",
                              f"{len(names)} fields, as in the header"))
            continue
        yield ln.number, dict(zip(names, fields))


def _csv_records(path: Path, ctx: ReadContext, required: Sequence[str]) -> Iterator[tuple[int, dict]]:
    lines = list(iter_lines(path, ctx, read_bytes(path, ctx)))
    if not lines or lines[0].number != 1:
        raise DataError(path, 1, "no readable header line", f"a header naming {', '.join(required)}")
    records = csv_fields(path, lines)
    _, names = next(records)
    names = _header_names(path, names, ",", required)
    for line, fields in records:
        if fields == [] or fields == [""]:
            ctx.stats["blank_lines"] += 1
            continue
        if len(fields) != len(names):
            ctx.bad(DataError(path, line, f"{len(fields)} comma-separated field(s)",
                              f"{len(names)} fields, as in the header"))
            continue
        yield line, dict(zip(names, fields))


def _jsonl_records(path: Path, ctx: ReadContext) -> Iterator[tuple[int, dict]]:
    for ln in iter_lines(path, ctx, read_bytes(path, ctx)):
        if not ln.text.strip():
            ctx.stats["blank_lines"] += 1
            continue
        try:
            rec = _json_object(path, ln.number, ln.text)
        except DataError as e:
            ctx.bad(e)
            continue
        yield ln.number, rec


def _json_object(path: Path, line: int, text: str) -> dict:
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, line, f"invalid JSON ({e.msg}, column {e.colno})", "one JSON object per line") from None
    if not isinstance(rec, dict):
        raise DataError(path, line, f"a JSON {type(rec).__name__}", "a JSON object")
    return rec


def _text(rec: dict, key: str, path: Path, line: int, required: bool = True) -> str:
    """A string field (an integer id is accepted as text), stripped."""
    value = rec.get(key)
    if value is None and not required:
        return ""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise DataError(path, line, f"{key} = {value!r:.60}" if key in rec else f"no key {key!r}",
                        f"{key} as a string")
    return value.strip()


def _labelled_row(path: Path, line: int, rec: dict, default_split: str) -> dict:
    s1, s2 = _text(rec, "sentence1", path, line), _text(rec, "sentence2", path, line)
    check_nonempty({"sentence1": s1, "sentence2": s2}, path, line)
    if "label" not in rec:
        raise DataError(path, line, "no key 'label'", "label 0 or 1")
    label = parse_label(rec["label"], path, line)
    split = _text(rec, "split", path, line) if "split" in rec else default_split
    if not split:
        raise DataError(path, line, "an empty split", "a split name (or no split column)")
    group = _text(rec, "group", path, line, required=False)
    return {"split": split, "group": group, "sentence1": s1, "sentence2": s2, "label": label}


# ---------------------------------------------------------------------------------------------
# Retrieval


def _retrieval_row(record: str, *, split: str = "", id: str = "", title: str = "", text: str = "",
                   query_id: str | None = None, doc_id: str | None = None, relevance: int | None = None,
                   file: str, line: int) -> dict:
    return {"record": record, "split": split, "id": id, "title": title, "text": text,
            "query_id": query_id, "doc_id": doc_id, "relevance": relevance, "file": file, "line": line}


BEIR_LAYOUT = "a BEIR folder, or its corpus.jsonl, queries.jsonl and qrels/<split>.tsv files"
QRELS_HEADER = ["query-id", "corpus-id", "score"]


def _beir_files(files: Sequence[Path], ctx: ReadContext) -> tuple[Path, Path, list[Path]]:
    """(corpus.jsonl, queries.jsonl, qrels files) from folders and files in `paths`."""
    corpus: set[Path] = set()
    queries: set[Path] = set()
    qrels: list[Path] = []
    for p in files:
        if p.is_dir():
            corpus.add(p / "corpus.jsonl")
            queries.add(p / "queries.jsonl")
            qrels += sorted((p / "qrels").glob("*.tsv"))
        elif p.name == "corpus.jsonl":
            corpus.add(p)
        elif p.name == "queries.jsonl":
            queries.add(p)
        elif p.parent.name == "qrels" and p.suffix == ".tsv":
            qrels.append(p)
        else:
            raise DataError(p, None, f"file name {ctx.rel(p)!r}", BEIR_LAYOUT,
                            f"fix sources.{ctx.source}.paths")
    for what, found in (("corpus.jsonl", corpus), ("queries.jsonl", queries)):
        if len(found) != 1:
            raise DataError(ctx.data_root, None, f"{len(found)} {what} files ({', '.join(sorted(map(ctx.rel, found)))})",
                            f"exactly one {what}: {BEIR_LAYOUT}", f"fix sources.{ctx.source}.paths")
        (path,) = found
        if not path.is_file():
            raise MissingInputError(f"{path}: not found; a BEIR folder holds corpus.jsonl, queries.jsonl "
                                    f"and qrels/<split>.tsv (fix sources.{ctx.source}.paths)")
    qrels = list(dict.fromkeys(qrels))
    if not qrels:
        raise MissingInputError(f"no qrels/<split>.tsv file in sources.{ctx.source}.paths; "
                                f"expected {BEIR_LAYOUT}")
    return corpus.pop(), queries.pop(), qrels


def _beir_jsonl(path: Path, ctx: ReadContext, what: str) -> dict[str, tuple[int, str, str]]:
    """{_id: (line, title, text)} of corpus.jsonl or queries.jsonl; a repeated _id is an error."""
    out: dict[str, tuple[int, str, str]] = {}
    for line, rec in _jsonl_records(path, ctx):
        try:
            _id = _text(rec, "_id", path, line)
            title = _text(rec, "title", path, line, required=False) if what == "doc" else ""
            text = _text(rec, "text", path, line, required=what == "query")
            check_nonempty({"_id": _id}, path, line)
            if what == "query":
                check_nonempty({"text": text}, path, line)
            elif not (title or text):
                raise DataError(path, line, f"doc {_id!r} with an empty title and text", "some text")
            if _id in out:
                raise DataError(path, line, f"_id {_id!r} again (first on line {out[_id][0]})", f"a unique {what} _id")
        except DataError as e:
            ctx.bad(e)
            continue
        out[_id] = (line, title, text)
    return out


def read_beir(files: Sequence[Path], ctx: ReadContext) -> Iterator[dict]:
    """A BEIR dataset (Thakur et al. 2021): `corpus.jsonl` ({_id, title, text}),
    `queries.jsonl` ({_id, text}) and `qrels/<split>.tsv` (header query-id, corpus-id, score).
    `paths` names the folder or its files.

    Rows: every doc; each query once per split whose qrels name it (queries named by no qrels
    file are skipped, counted as `queries_without_qrels`); every qrel with its file's split. A
    qrel naming an unknown query or doc, or a repeated (query, doc) in one split, is an error.
    """
    corpus_path, queries_path, qrels_paths = _beir_files(files, ctx)
    docs = _beir_jsonl(corpus_path, ctx, "doc")
    queries = _beir_jsonl(queries_path, ctx, "query")
    qrels: list[dict] = []
    splits_of: dict[str, list[str]] = defaultdict(list)
    for path in qrels_paths:
        split = path.stem
        rel = ctx.rel(path)
        lines = list(iter_lines(path, ctx, read_bytes(path, ctx)))
        if not lines or lines[0].number != 1 or [f.strip() for f in lines[0].text.split("\t")] != QRELS_HEADER:
            found = repr(lines[0].text) if lines and lines[0].number == 1 else "no readable header line"
            raise DataError(path, 1, f"header {found}", "the header " + "\\t".join(QRELS_HEADER))
        seen: dict[tuple[str, str], int] = {}
        for ln in lines[1:]:
            if not ln.text.strip():
                ctx.stats["blank_lines"] += 1
                continue
            try:
                fields = [f.strip() for f in ln.text.split("\t")]
                if len(fields) != 3:
                    raise DataError(path, ln.number, f"{len(fields)} tab-separated field(s)",
                                    "3 fields: query-id, corpus-id, score")
                qid, did, score = fields
                if qid not in queries:
                    raise DataError(path, ln.number, f"query-id {qid!r}, not in {ctx.rel(queries_path)}",
                                    "the _id of a query")
                if did not in docs:
                    raise DataError(path, ln.number, f"corpus-id {did!r}, not in {ctx.rel(corpus_path)}",
                                    "the _id of a corpus document")
                try:
                    relevance = int(score)
                except ValueError:
                    raise DataError(path, ln.number, f"score {score!r}", "an integer relevance") from None
                if (qid, did) in seen:
                    raise DataError(path, ln.number, f"qrel ({qid!r}, {did!r}) again (first on line "
                                    f"{seen[qid, did]})", "one score per query and document in a split")
            except DataError as e:
                ctx.bad(e)
                continue
            seen[qid, did] = ln.number
            if split not in splits_of[qid]:
                splits_of[qid].append(split)
            qrels.append(_retrieval_row("qrel", split=split, query_id=qid, doc_id=did,
                                        relevance=relevance, file=rel, line=ln.number))
    rel = ctx.rel(corpus_path)
    for _id, (line, title, text) in docs.items():
        yield _retrieval_row("doc", id=_id, title=title, text=text, file=rel, line=line)
    rel = ctx.rel(queries_path)
    for _id, (line, _, text) in queries.items():
        if not splits_of.get(_id):
            ctx.stats["queries_without_qrels"] += 1
            continue
        for split in splits_of[_id]:
            ctx.stats[f"queries_{split}"] += 1
            yield _retrieval_row("query", split=split, id=_id, text=text, file=rel, line=line)
    ctx.stats["docs"] += len(docs)
    yield from qrels


def read_pubmedqa_retrieval(
    files: Sequence[Path],
    ctx: ReadContext,
    target: Literal["conclusion", "abstract"] = "conclusion",
    test_pmids: str = PUBMEDQA_TEST_PMIDS,
    dev_fraction: float = 0.5,
    seed: int = 0,
) -> Iterator[dict]:
    """Retrieval built from PubMedQA PQA-L: the query is an abstract's QUESTION (its title
    rephrased), the one relevant document is that abstract's `target`: its conclusion
    (LONG_ANSWER) or the rest of the abstract (CONTEXTS joined with a space). Doc titles are
    always "" since the title is the question.

    Splits (`pubmedqa_split`): the official test PMIDs are "test", the others "dev" or "train".
    Rows: a doc for every PMID (the corpus searched, all splits), then a query for each dev
    and test PMID (no train queries), then its qrel (query PMID -> own doc, relevance 1).
    """
    chooser = PubMedQASplits(ctx, None, test_pmids, dev_fraction, seed, always=True)
    docs, queries, qrels = [], [], []
    seen: dict[str, str] = {}
    for path in files:
        rel = ctx.rel(path)
        for rec in iter_pubmedqa(path, ctx, need_question=True):
            try:
                if rec.pmid in seen:
                    raise DataError(path, rec.line, f"PMID {rec.pmid} again (also in {seen[rec.pmid]})",
                                    "each PMID once across sources.<name>.paths")
                if target == "conclusion":
                    text, line = clean_paragraph(rec.answer), rec.answer_line
                else:
                    text = clean_paragraph(" ".join(rec.contexts))
                    line = rec.context_lines[0] if rec.contexts else rec.line
                check_nonempty({"LONG_ANSWER" if target == "conclusion" else "CONTEXTS": text}, path, line)
            except DataError as e:
                ctx.bad(e)
                continue
            seen[rec.pmid] = rel
            split = chooser.admit(rec.pmid)
            ctx.stats[f"docs_{split}"] += 1
            docs.append(_retrieval_row("doc", id=rec.pmid, text=text, file=rel, line=line))
            if split == "train":
                continue
            queries.append(_retrieval_row("query", split=split, id=rec.pmid, text=rec.question,
                                          file=rel, line=rec.question_line))
            qrels.append(_retrieval_row("qrel", split=split, query_id=rec.pmid, doc_id=rec.pmid,
                                        relevance=1, file=rel, line=rec.line))
    chooser.finish()
    yield from docs
    yield from queries
    yield from qrels


# ---------------------------------------------------------------------------------------------
# Training pairs

PairType = Literal["question_conclusion", "question_abstract", "sentence_abstract"]


def read_pubmedqa_pairs(
    files: Sequence[Path],
    ctx: ReadContext,
    pairs: Sequence[PairType] = ("question_conclusion", "question_abstract", "sentence_abstract"),
    splits: Sequence[PubMedQASplit] | None = ("train",),
    min_words: int = 4,
    splitter: Splitter = "rules",
    test_pmids: str = PUBMEDQA_TEST_PMIDS,
    dev_fraction: float = 0.5,
    seed: int = 0,
) -> Iterator[dict]:
    """Positive pairs mined from the structure of PubMedQA abstracts (no labels needed):

    * question_conclusion: QUESTION -> LONG_ANSWER
    * question_abstract:   QUESTION -> CONTEXTS joined with a space
    * sentence_abstract:   each CONTEXTS sentence with >= `min_words` words -> the rest of its
      abstract (the CONTEXTS + LONG_ANSWER sentences without it, joined with a space)

    Only PMIDs whose `pubmedqa_split` is in `splits` are used (default: train, so no dev or test
    abstract is trained on; None: every PMID). `doc` is the PMID; `line` the line of the anchor.
    """
    if not pairs:
        raise ConfigError(f"sources.{ctx.source}.options.pairs: expected at least one of "
                          "question_conclusion, question_abstract, sentence_abstract, got []")
    kinds = list(dict.fromkeys(pairs))
    split = get_splitter(splitter)
    chooser = PubMedQASplits(ctx, None if splits is None else list(splits), test_pmids, dev_fraction, seed)
    for path in files:
        rel = ctx.rel(path)
        for rec in iter_pubmedqa(path, ctx, need_question=True):
            if chooser.admit(rec.pmid) is None:
                continue
            ctx.stats["docs"] += 1
            conclusion = clean_paragraph(rec.answer)
            abstract = clean_paragraph(" ".join(rec.contexts))
            for kind in kinds:
                if kind == "question_conclusion" or kind == "question_abstract":
                    positive = conclusion if kind == "question_conclusion" else abstract
                    if not positive:
                        ctx.stats[f"{kind}_empty"] += 1
                        continue
                    ctx.stats[f"pairs_{kind}"] += 1
                    yield {"anchor": rec.question, "positive": positive, "doc": rec.pmid, "file": rel,
                           "line": rec.question_line}
                    continue
                # sentence_abstract: sentences of every paragraph, in file order
                parts = [(p, line, True) for p, line in zip(rec.contexts, rec.context_lines)]
                parts.append((rec.answer, rec.answer_line, False))
                sentences = [(s, line, in_contexts) for p, line, in_contexts in parts
                             for s in split(clean_paragraph(p))]
                for k, (anchor, line, in_contexts) in enumerate(sentences):
                    if not in_contexts:
                        continue
                    if len(anchor.split()) < min_words:
                        ctx.stats["short_sentences"] += 1
                        continue
                    rest = " ".join(s for j, (s, _, _) in enumerate(sentences) if j != k)
                    if not rest:
                        ctx.stats["sentence_abstract_empty"] += 1
                        continue
                    ctx.stats["pairs_sentence_abstract"] += 1
                    yield {"anchor": anchor, "positive": rest, "doc": rec.pmid, "file": rel, "line": line}
    chooser.finish()
