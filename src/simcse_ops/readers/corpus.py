"""Readers for unlabelled text: one sentence per line (wiki1m), WikiExtractor `<doc>` dumps and
PubMedQA JSON. All yield rows of `simcse_ops.schemas.CORPUS`: text, doc, file, line.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from simcse_ops.errors import ConfigError, DataError
from simcse_ops.readers.base import (
    JsonStringLines,
    ReadContext,
    check_fraction,
    decode_text,
    iter_lines,
    read_bytes,
    seeded_fraction,
)
from simcse_ops.readers.sentences import Splitter, get_splitter


def read_lines(
    files: Sequence[Path], ctx: ReadContext, drop_unterminated_last_line: bool = False
) -> Iterator[dict]:
    """One sentence per line (SimCSE's `wiki1m_for_simcse.txt`). Blank lines are skipped.

    `drop_unterminated_last_line`: drop a last line with no newline after it, for copies that
    are byte prefixes of a larger file and end mid-sentence.
    """
    for path in files:
        for ln in iter_lines(path, ctx):
            if drop_unterminated_last_line and not ln.terminated:
                ctx.stats["unterminated_last_line_dropped"] += 1
                continue
            text = ln.text.strip()
            if not text:
                ctx.stats["blank_lines"] += 1
                continue
            yield {"text": text, "doc": "", "file": ctx.rel(path), "line": ln.number}


# ---------------------------------------------------------------------------------------------
# WikiExtractor

_DOC_OPEN = re.compile(r'^<doc id="(?P<id>[^"]*)"(?: url="[^"]*")?(?: title="(?P<title>[^"]*)")?>$')
_DOC_CLOSE = "</doc>"
_REF = re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", re.S)
_TAG = re.compile(r"</?[A-Za-z][^>]*>")
_EMPTY_PARENS = re.compile(r"\s*\(\s*[,;]?\s*\)")  # "Name () is": a removed template
_SPACES = re.compile(r"\s+")

# Words that make a short line a sentence rather than a section heading ("He died in 1921.").
_SENTENCE_WORDS = frozenset(
    "is are was were be been being am has have had does did do will would can could may might "
    "shall should must i he she it we they you his her its their our my your him them".split()
)


def clean_wiki_text(text: str) -> str:
    """Undo what WikiExtractor leaves behind: HTML entities, `<ref>` and other tags, empty
    parentheses from removed templates, runs of spaces."""
    text = html.unescape(text)
    text = _REF.sub("", text)
    text = _TAG.sub("", text)
    text = _EMPTY_PARENS.sub("", text)
    return _SPACES.sub(" ", text).strip()


def is_heading(line: str, max_words: int) -> bool:
    """A WikiExtractor section heading: a short line ending in "." ("Early life.") that starts
    with a capital, a digit or a quote, has no other sentence end and no verb or pronoun that
    would make it a sentence."""
    if not line.endswith(".") or line.endswith(".."):
        return False
    words = line[:-1].split()
    if not words or len(words) > max_words:
        return False
    if not (line[0].isupper() or line[0].isdigit() or line[0] in "\"'"):
        return False
    if any(c in line[:-1] for c in "!?") or ". " in line:
        return False
    return not any(w.lower().strip("\"'(),:;") in _SENTENCE_WORDS for w in words)


def read_wikiextractor(
    files: Sequence[Path],
    ctx: ReadContext,
    min_words: int = 1,
    max_heading_words: int = 6,
    splitter: Splitter = "rules",
) -> Iterator[dict]:
    """WikiExtractor output: `<doc id=.. url=.. title=..>`, the title line, one paragraph per
    line, `</doc>`.

    The title line is dropped, title-only stubs are dropped (counted as `stub_docs`), section
    headings (`is_heading`) are dropped, paragraphs are cleaned (`clean_wiki_text`) and split
    into sentences; sentences with fewer than `min_words` words are dropped (counted). `doc` is
    the document id, `line` the paragraph's line.
    """
    split = get_splitter(splitter)
    for path in files:
        doc_id: str | None = None
        title: str | None = None
        body: list = []
        open_line = 0
        for ln in iter_lines(path, ctx):
            text = ln.text
            if doc_id is None:
                m = _DOC_OPEN.match(text)
                if m:
                    doc_id, title, body, open_line = m.group("id"), m.group("title"), [], ln.number
                    expecting_title = True
                elif text.strip():
                    raise DataError(path, ln.number, f"text outside a document: {text[:60]!r}",
                                    '<doc id="..." url="..." title="..."> before any text')
                continue
            if text == _DOC_CLOSE:
                yield from _wiki_doc(path, ctx, doc_id, body, min_words, max_heading_words, split)
                doc_id = None
                continue
            if _DOC_OPEN.match(text):
                raise DataError(path, ln.number, f"a new <doc> inside document {doc_id} "
                                f"(opened on line {open_line})", "</doc> before the next <doc>")
            if expecting_title and text.strip():
                expecting_title = False
                if title is None or html.unescape(text.strip()) == html.unescape(title):
                    continue  # the title line
            body.append(ln)
        if doc_id is not None:
            raise DataError(path, open_line, f"document {doc_id} never closed",
                            "</doc> after every <doc ...> block")


def _wiki_doc(path, ctx, doc_id, body, min_words, max_heading_words, split) -> Iterator[dict]:
    ctx.stats["docs"] += 1
    paragraphs = [ln for ln in body if ln.text.strip()]
    if not paragraphs:
        ctx.stats["stub_docs"] += 1
        return
    rel = ctx.rel(path)
    for ln in paragraphs:
        text = clean_wiki_text(ln.text)
        if not text:
            continue
        if is_heading(text, max_heading_words):
            ctx.stats["headings"] += 1
            continue
        for sentence in split(text):
            if len(sentence.split()) < min_words:
                ctx.stats["short_sentences"] += 1
                continue
            yield {"text": sentence, "doc": doc_id, "file": rel, "line": ln.number}


# ---------------------------------------------------------------------------------------------
# PubMedQA

PubMedQASplit = Literal["train", "dev", "test"]
PUBMEDQA_SPLITS: tuple[str, ...] = ("train", "dev", "test")
PUBMEDQA_TEST_PMIDS = "domain/biomedical/pubmedqa_pqal/test_ground_truth.json"


def pubmedqa_split(pmid: str, test_pmids: Collection[str], dev_fraction: float, seed: int) -> str:
    """The split of a PubMedQA PMID, the one rule every PubMedQA reader uses: "test" for the
    official test PMIDs, else "dev" when seeded_fraction(pmid, seed) < dev_fraction, else
    "train"."""
    if pmid in test_pmids:
        return "test"
    return "dev" if seeded_fraction(pmid, seed) < dev_fraction else "train"


def load_test_pmids(ctx: ReadContext, rel: str) -> frozenset[str]:
    """The official test PMIDs: `test_ground_truth.json` ({pmid: label}) or a JSON list of PMIDs,
    read from the data root (`sources.<name>.options.test_pmids`)."""
    path = ctx.data_path(rel, "test_pmids")
    text = decode_text(path, read_bytes(path, ctx))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, e.lineno, f"invalid JSON ({e.msg}, column {e.colno})",
                        "a JSON object keyed by PMID (test_ground_truth.json) or a list of PMIDs") from e
    if isinstance(data, dict):
        pmids = list(data)
    elif isinstance(data, list) and all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in data):
        pmids = [str(x) for x in data]
    else:
        raise DataError(path, 1, f"a JSON {type(data).__name__}",
                        "a JSON object keyed by PMID (test_ground_truth.json) or a list of PMIDs")
    if not pmids:
        raise DataError(path, 1, "no PMIDs", "at least one test PMID",
                        f"fix sources.{ctx.source}.options.test_pmids")
    return frozenset(pmids)


class PubMedQASplits:
    """The split options shared by the PubMedQA readers, checked once: `splits` kept (None:
    every PMID), the test PMIDs (read only when a split is needed) and the dev/train hash."""

    def __init__(self, ctx: ReadContext, splits: Sequence[str] | None, test_pmids: str,
                 dev_fraction: float, seed: int, always: bool = False) -> None:
        check_fraction(dev_fraction, ctx, "dev_fraction")
        if splits is not None and not splits:
            raise ConfigError(f"sources.{ctx.source}.options.splits: expected at least one of "
                              f"{', '.join(PUBMEDQA_SPLITS)} (or null for every PMID), got []")
        self.ctx, self.dev_fraction, self.seed = ctx, dev_fraction, seed
        self.keep = None if splits is None else frozenset(splits)
        self.test = load_test_pmids(ctx, test_pmids) if (always or splits is not None) else frozenset()
        self.seen: set[str] = set()

    def of(self, pmid: str) -> str:
        return pubmedqa_split(pmid, self.test, self.dev_fraction, self.seed)

    def admit(self, pmid: str) -> str | None:
        """The PMID's split if it is kept (counted as docs_<split>), else None (counted as
        docs_skipped_<split>)."""
        self.seen.add(pmid)
        split = self.of(pmid)
        if self.keep is not None and split not in self.keep:
            self.ctx.stats[f"docs_skipped_{split}"] += 1
            return None
        if self.keep is not None:
            self.ctx.stats[f"docs_{split}"] += 1
        return split

    def finish(self) -> None:
        """Count the test PMIDs that no file held (a wrong test file shows up here)."""
        if self.test:
            self.ctx.stats["test_pmids_not_found"] += len(self.test - self.seen)


@dataclass
class PubMedQARecord:
    """One validated PubMedQA abstract; `paragraphs` are CONTEXTS then LONG_ANSWER in file order
    with their lines."""

    pmid: str
    line: int
    question: str | None
    question_line: int
    contexts: list[str]
    answer: str
    answer_line: int
    context_lines: list[int]
    paragraphs: list[tuple[str, int]]


def iter_pubmedqa(path: Path, ctx: ReadContext, need_question: bool = False) -> Iterator[PubMedQARecord]:
    """The records of one PubMedQA file (`ori_pqal.json`: one JSON object keyed by PMID, each
    with `QUESTION`, `CONTEXTS` (the abstract's section paragraphs) and `LONG_ANSWER` (its
    conclusion)); a malformed record is a bad record (`ctx.bad`)."""
    text = decode_text(path, read_bytes(path, ctx))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, e.lineno, f"invalid JSON ({e.msg}, column {e.colno})",
                        "one JSON object keyed by PMID") from e
    if not isinstance(data, dict):
        raise DataError(path, 1, f"a JSON {type(data).__name__}", "one JSON object keyed by PMID")
    where = JsonStringLines(text)
    for pmid, record in data.items():
        line = where.find(pmid, default=0)
        try:
            if not isinstance(record, dict):
                raise DataError(path, line, f"PMID {pmid}: a JSON {type(record).__name__}",
                                "an object with CONTEXTS and LONG_ANSWER")
            contexts, answer = record.get("CONTEXTS"), record.get("LONG_ANSWER")
            question = record.get("QUESTION")
            if not (isinstance(contexts, list) and all(isinstance(c, str) for c in contexts)):
                raise DataError(path, line, f"PMID {pmid}: CONTEXTS = {contexts!r:.60}",
                                "a list of strings")
            if not isinstance(answer, str):
                raise DataError(path, line, f"PMID {pmid}: LONG_ANSWER = {answer!r:.60}",
                                "a string")
            if need_question and not (isinstance(question, str) and question.strip()):
                raise DataError(path, line, f"PMID {pmid}: QUESTION = {question!r:.60}",
                                "a non-empty string")
        except DataError as e:
            ctx.bad(e)
            continue
        # in file order, so that the line lookup only moves forward
        q_line, a_line, c_lines, paragraphs = line, line, [], []
        for key in record:
            if key == "QUESTION" and need_question:
                q_line = where.find(question, default=line)
            elif key == "CONTEXTS":
                c_lines = [where.find(c, default=line) for c in contexts]
                paragraphs += list(zip(contexts, c_lines))
            elif key == "LONG_ANSWER":
                a_line = where.find(answer, default=line)
                paragraphs.append((answer, a_line))
        yield PubMedQARecord(str(pmid), line, question.strip() if need_question else None, q_line,
                             contexts, answer, a_line, c_lines, paragraphs)


def clean_paragraph(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def read_pubmedqa_json(
    files: Sequence[Path],
    ctx: ReadContext,
    min_words: int = 1,
    splitter: Splitter = "rules",
    splits: list[PubMedQASplit] | None = None,
    test_pmids: str = PUBMEDQA_TEST_PMIDS,
    dev_fraction: float = 0.5,
    seed: int = 0,
) -> Iterator[dict]:
    """PubMedQA (`ori_pqal.json`): `CONTEXTS` and `LONG_ANSWER` of each abstract are split into
    sentences; sentences with fewer than `min_words` words are dropped (counted). `doc` is the
    PMID, `line` the line of the paragraph in the file.

    `splits`: read only the PMIDs whose `pubmedqa_split` is listed (the others are counted as
    docs_skipped_<split>): [train] is the inductive setting that never sees a dev or test
    abstract; None reads every PMID (transductive). `test_pmids` (a file under the data root),
    `dev_fraction` and `seed` define the split as in every PubMedQA reader.
    """
    split = get_splitter(splitter)
    chooser = PubMedQASplits(ctx, splits, test_pmids, dev_fraction, seed)
    for path in files:
        rel = ctx.rel(path)
        for rec in iter_pubmedqa(path, ctx):
            if chooser.admit(rec.pmid) is None:
                continue
            ctx.stats["docs"] += 1
            for paragraph, p_line in rec.paragraphs:
                for sentence in split(clean_paragraph(paragraph)):
                    if len(sentence.split()) < min_words:
                        ctx.stats["short_sentences"] += 1
                        continue
                    yield {"text": sentence, "doc": rec.pmid, "file": rel, "line": p_line}
    chooser.finish()
