"""Readers for unlabelled text: one sentence per line (wiki1m), WikiExtractor `<doc>` dumps and
PubMedQA JSON. All yield rows of `simcse_ops.schemas.CORPUS`: text, doc, file, line.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from simcse_ops.files import DataError
from simcse_ops.readers.base import JsonStringLines, ReadContext, decode_text, iter_lines, read_bytes
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


def read_pubmedqa_json(
    files: Sequence[Path], ctx: ReadContext, min_words: int = 1, splitter: Splitter = "rules"
) -> Iterator[dict]:
    """PubMedQA (`ori_pqal.json`): one JSON object keyed by PMID, each with `CONTEXTS` (the
    abstract's section paragraphs) and `LONG_ANSWER` (its conclusion). Both are split into
    sentences; sentences with fewer than `min_words` words are dropped (counted). `doc` is the
    PMID, `line` the line of the paragraph in the file.
    """
    split = get_splitter(splitter)
    for path in files:
        text = decode_text(path, read_bytes(path, ctx))
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(path, e.lineno, f"invalid JSON ({e.msg}, column {e.colno})",
                            "one JSON object keyed by PMID") from e
        if not isinstance(data, dict):
            raise DataError(path, 1, f"a JSON {type(data).__name__}", "one JSON object keyed by PMID")
        where = JsonStringLines(text)
        rel = ctx.rel(path)
        for pmid, record in data.items():
            line = where.find(pmid, default=0)
            try:
                if not isinstance(record, dict):
                    raise DataError(path, line, f"PMID {pmid}: a JSON {type(record).__name__}",
                                    "an object with CONTEXTS and LONG_ANSWER")
                contexts, answer = record.get("CONTEXTS"), record.get("LONG_ANSWER")
                if not (isinstance(contexts, list) and all(isinstance(c, str) for c in contexts)):
                    raise DataError(path, line, f"PMID {pmid}: CONTEXTS = {contexts!r:.60}",
                                    "a list of strings")
                if not isinstance(answer, str):
                    raise DataError(path, line, f"PMID {pmid}: LONG_ANSWER = {answer!r:.60}",
                                    "a string")
            except DataError as e:
                ctx.bad(e)
                continue
            ctx.stats["docs"] += 1
            # in file order, so that the line lookup only moves forward
            keys = [k for k in record if k in ("CONTEXTS", "LONG_ANSWER")]
            paragraphs = [p for k in keys for p in (contexts if k == "CONTEXTS" else [answer])]
            for paragraph in paragraphs:
                p_line = where.find(paragraph, default=line)
                for sentence in split(_SPACES.sub(" ", paragraph).strip()):
                    if len(sentence.split()) < min_words:
                        ctx.stats["short_sentences"] += 1
                        continue
                    yield {"text": sentence, "doc": str(pmid), "file": rel, "line": p_line}
