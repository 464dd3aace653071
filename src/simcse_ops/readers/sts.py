"""Readers for the STS evaluation sets: SemEval STS 2012-2016, STS Benchmark and SICK.

All yield rows of `simcse_ops.schemas.STS`: split, subset, sentence1, sentence2, score, file,
line. Sentences are stripped of surrounding whitespace (several originals carry trailing spaces);
nothing else is changed (no tokenising or lower-casing).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from simcse_ops.errors import DataError, MissingInputError
from simcse_ops.readers.base import (
    ReadContext,
    check_fields,
    check_nonempty,
    iter_lines,
    parse_score,
)

STS_SCORE = (0.0, 5.0)
SICK_SCORE = (1.0, 5.0)  # SICK relatedness is on a 1-5 scale

# `STS.input.MSRpar.txt`, `STS2016.input.answer-answer.txt`: prefix, subset.
_SEMEVAL_INPUT = re.compile(r"^(STS\d*)\.input\.(.+)\.txt$")


def semeval_gold_path(input_path: Path) -> Path:
    """`STS.input.X.txt` -> `STS.gs.X.txt` in the same folder (STS2016 keeps its prefix)."""
    m = _SEMEVAL_INPUT.match(input_path.name)
    if not m:
        raise DataError(
            input_path,
            None,
            f"file name {input_path.name!r}",
            "a SemEval input file named STS.input.<subset>.txt or STS2016.input.<subset>.txt",
            "list the input files (not the STS.gs.* gold files) in sources.<name>.paths",
        )
    return input_path.with_name(f"{m.group(1)}.gs.{m.group(2)}.txt")


def read_semeval_sts(files: Sequence[Path], ctx: ReadContext) -> Iterator[dict]:
    """SemEval STS 2012-2016: `STS.input.X.txt` (sentence pairs) + `STS.gs.X.txt` (gold).

    Line i of the gold file scores line i of the input file. A blank gold line marks an unscored
    pair: it is skipped (counted as `unscored`) while the alignment is kept. Input lines have
    2 tab-separated fields, or 4 in STS 2016 (two source notes that must not be used); the
    count must be the same on every line of a file. `subset` is the X in the file name.
    """
    lo, hi = STS_SCORE
    for path in files:
        gold_path = semeval_gold_path(path)
        subset = _SEMEVAL_INPUT.match(path.name).group(2)
        if not gold_path.is_file():
            raise MissingInputError(
                f"{gold_path}: gold file not found for {path}; the gold scores of "
                f"STS.input.<subset>.txt must be in STS.gs.<subset>.txt beside it "
                f"(fix sources.{ctx.source}.paths)"
            )
        inputs = list(iter_lines(path, ctx))
        golds = {g.number: g.text for g in iter_lines(gold_path, ctx)}
        n_input = inputs[-1].number if inputs else 0
        n_gold = max(golds) if golds else 0
        if n_input != n_gold:
            short, n_short = (gold_path, n_gold) if n_gold < n_input else (path, n_input)
            raise DataError(
                short,
                n_short + 1,
                f"end of file after {n_short} lines ({path.name}: {n_input} lines, "
                f"{gold_path.name}: {n_gold} lines)",
                "one gold line per input line, a blank gold line for an unscored pair",
                "restore the missing lines; never delete blank gold lines",
            )
        width = None
        for ln in inputs:
            gold = golds.get(ln.number)
            if gold is None:  # the gold line itself was undecodable and already reported
                continue
            try:
                fields = ln.text.split("\t")
                check_fields(fields, (width,) if width else (2, 4), path, ln.number,
                             "sentence1, sentence2[, source1, source2]")
                width = len(fields)
                if not gold.strip():
                    ctx.stats["unscored"] += 1
                    continue
                s1, s2 = fields[0].strip(), fields[1].strip()
                check_nonempty({"sentence1": s1, "sentence2": s2}, path, ln.number)
                score = parse_score(gold.strip(), gold_path, ln.number, lo, hi)
            except DataError as e:
                ctx.bad(e)
                continue
            yield {
                "split": "test",
                "subset": subset,
                "sentence1": s1,
                "sentence2": s2,
                "score": score,
                "file": ctx.rel(path),
                "line": ln.number,
            }


_STSB_SPLIT = re.compile(r"sts-(train|dev|test)\.csv$")


def read_stsb_csv(files: Sequence[Path], ctx: ReadContext) -> Iterator[dict]:
    """STS Benchmark `sts-{train,dev,test}.csv`: tab-separated, no header, no quoting.

    Fields: genre, source file, year, id, score, sentence1, sentence2; some lines carry two extra
    source fields (9 in all), which are ignored. Double quotes are literal text, so lines are
    split on tabs only (the equivalent of `csv.QUOTE_NONE`). `split` comes from the file name,
    `subset` is the genre.
    """
    lo, hi = STS_SCORE
    for path in files:
        m = _STSB_SPLIT.search(path.name)
        if not m:
            raise DataError(
                path, None, f"file name {path.name!r}",
                "sts-train.csv, sts-dev.csv or sts-test.csv (the split is read from the name)",
                f"rename the file or fix sources.{ctx.source}.paths",
            )
        split = m.group(1)
        for ln in iter_lines(path, ctx):
            try:
                fields = ln.text.split("\t")
                check_fields(fields, (7, 9), path, ln.number,
                             "genre, file, year, id, score, sentence1, sentence2[, source, source]")
                genre, _file, _year, _id, score_text, s1, s2 = fields[:7]
                s1, s2 = s1.strip(), s2.strip()
                check_nonempty({"genre": genre, "sentence1": s1, "sentence2": s2}, path, ln.number)
                score = parse_score(score_text.strip(), path, ln.number, lo, hi)
            except DataError as e:
                ctx.bad(e)
                continue
            yield {
                "split": split,
                "subset": genre,
                "sentence1": s1,
                "sentence2": s2,
                "score": score,
                "file": ctx.rel(path),
                "line": ln.number,
            }


def _header(path: Path, ctx: ReadContext, required: Sequence[str]) -> tuple[dict[str, int], list]:
    """Read a tab-separated file with a header line; return column indices and the data lines."""
    lines = list(iter_lines(path, ctx))
    if not lines or lines[0].number != 1:
        raise DataError(path, 1, "no readable header line", "a header line naming " + ", ".join(required))
    names = lines[0].text.split("\t")
    missing = [c for c in required if c not in names]
    if missing:
        raise DataError(
            path, 1, f"header {lines[0].text!r}", f"a header with the columns {', '.join(required)}"
        )
    return {n: i for i, n in enumerate(names)}, lines[1:]


# SemEval-2014 Task 1 split files -> split name.
_SICK_SPLIT = re.compile(r"SICK_(train|trial|test_annotated)\.txt$")
_SICK_SPLIT_NAMES = {"train": "train", "trial": "trial", "test_annotated": "test"}


_SICK_COLUMNS = ("pair_ID", "sentence_A", "sentence_B", "relatedness_score")


def _sick_rows(path: Path, ctx: ReadContext, cols: dict[str, int], lines: list, split_of) -> Iterator[dict]:
    lo, hi = SICK_SCORE
    width = len(cols)
    for ln in lines:
        try:
            fields = ln.text.split("\t")
            if len(fields) != width:
                raise DataError(path, ln.number, f"{len(fields)} tab-separated field(s)",
                                f"{width} fields, as in the header")
            s1 = fields[cols["sentence_A"]].strip()
            s2 = fields[cols["sentence_B"]].strip()
            check_nonempty({"sentence_A": s1, "sentence_B": s2}, path, ln.number)
            score = parse_score(fields[cols["relatedness_score"]].strip(), path, ln.number, lo, hi,
                                "a SICK relatedness score")
            split = split_of(fields, ln.number)
        except DataError as e:
            ctx.bad(e)
            continue
        yield {
            "split": split,
            "subset": "SICK",
            "sentence1": s1,
            "sentence2": s2,
            "score": score,
            "file": ctx.rel(path),
            "line": ln.number,
        }


def read_sick_semeval(files: Sequence[Path], ctx: ReadContext) -> Iterator[dict]:
    """SICK as split for SemEval-2014 Task 1: `SICK_train.txt`, `SICK_trial.txt`,
    `SICK_test_annotated.txt` (header line, 5 tab-separated fields, LF or CRLF).

    `split` (train / trial / test) comes from the file name; SICK-R is the test split.
    """
    for path in files:
        m = _SICK_SPLIT.search(path.name)
        if not m:
            raise DataError(
                path, None, f"file name {path.name!r}",
                "SICK_train.txt, SICK_trial.txt or SICK_test_annotated.txt (the split is read "
                "from the name; the unannotated SICK_test.txt has no scores)",
                f"fix sources.{ctx.source}.paths",
            )
        split = _SICK_SPLIT_NAMES[m.group(1)]
        cols, lines = _header(path, ctx, _SICK_COLUMNS)
        yield from _sick_rows(path, ctx, cols, lines, lambda fields, line, split=split: split)


_SICK_SETS = {"TRAIN": "train", "TRIAL": "trial", "TEST": "test"}


def read_sick_full(files: Sequence[Path], ctx: ReadContext) -> Iterator[dict]:
    """The full SICK release `SICK.txt`: header, 12 tab-separated fields, CRLF, and no newline
    after the last line. `split` is its `SemEval_set` column lower-cased (train / trial / test).
    """
    for path in files:
        cols, lines = _header(path, ctx, (*_SICK_COLUMNS, "SemEval_set"))
        idx = cols["SemEval_set"]

        def split_of(fields: list[str], line: int, path=path, idx=idx) -> str:
            value = fields[idx].strip()
            if value not in _SICK_SETS:
                raise DataError(path, line, f"SemEval_set {value!r}", "TRAIN, TRIAL or TEST")
            return _SICK_SETS[value]

        yield from _sick_rows(path, ctx, cols, lines, split_of)
