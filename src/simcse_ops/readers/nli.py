"""Readers for supervised SimCSE triples: SNLI jsonl(.gz) and SimCSE's `nli_for_simcse.csv`.
Both yield rows of `simcse_ops.schemas.NLI`: anchor, positive, negative, file, line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from simcse_ops.errors import DataError
from simcse_ops.readers.base import ReadContext, check_nonempty, csv_records, iter_lines, read_bytes

SNLI_LABELS = ("entailment", "neutral", "contradiction", "-")


def read_snli_jsonl(files: Sequence[Path], ctx: ReadContext) -> Iterator[dict]:
    """SNLI 1.0 jsonl (optionally gzipped): one JSON object per line.

    Rows whose `gold_label` is "-" (no annotator majority) are dropped (counted as `no_gold`).
    Within each file the rest are grouped by premise (`captionID` + `sentence1`); every premise
    with at least one entailment and one contradiction hypothesis gives one triple
    (premise, first entailment, first contradiction in file order), emitted in the order the
    premises first appear; `line` is the line of that premise's first row. This is SimCSE's
    construction and gives 2,943 (dev) + 2,921 (test) triples.
    """
    for path in files:
        groups: dict[tuple[str, str], dict] = {}
        for ln in iter_lines(path, ctx, read_bytes(path, ctx)):
            if not ln.text.strip():
                ctx.stats["blank_lines"] += 1
                continue
            try:
                try:
                    row = json.loads(ln.text)
                except json.JSONDecodeError as e:
                    raise DataError(path, ln.number, f"invalid JSON ({e.msg}, column {e.colno})",
                                    "one SNLI JSON object per line") from None
                if not isinstance(row, dict):
                    raise DataError(path, ln.number, f"a JSON {type(row).__name__}", "a JSON object")
                missing = [k for k in ("gold_label", "sentence1", "sentence2", "captionID") if k not in row]
                if missing:
                    raise DataError(path, ln.number, f"no key(s) {', '.join(missing)}",
                                    "gold_label, sentence1, sentence2 and captionID")
                label = row["gold_label"]
                if label not in SNLI_LABELS:
                    raise DataError(path, ln.number, f"gold_label {label!r}", " / ".join(SNLI_LABELS))
                premise = str(row["sentence1"]).strip()
                hypothesis = str(row["sentence2"]).strip()
                check_nonempty({"sentence1": premise, "sentence2": hypothesis}, path, ln.number)
            except DataError as e:
                ctx.bad(e)
                continue
            if label == "-":
                ctx.stats["no_gold"] += 1
                continue
            group = groups.setdefault((str(row["captionID"]), premise), {"line": ln.number})
            group.setdefault(label, hypothesis)
        rel = ctx.rel(path)
        for (_caption, premise), group in groups.items():
            if "entailment" in group and "contradiction" in group:
                yield {
                    "anchor": premise,
                    "positive": group["entailment"],
                    "negative": group["contradiction"],
                    "file": rel,
                    "line": group["line"],
                }
            else:
                ctx.stats["premises_without_triple"] += 1


NLI_CSV_HEADER = ["sent0", "sent1", "hard_neg"]


def read_nli_csv(files: Sequence[Path], ctx: ReadContext) -> Iterator[dict]:
    """SimCSE's `nli_for_simcse.csv`: header `sent0,sent1,hard_neg`, quoted CSV (fields may hold
    commas, quotes and newlines), LF or CRLF. `line` is the line a record starts on."""
    for path in files:
        lines = list(iter_lines(path, ctx))
        yield from csv_records(path, ctx, lines, NLI_CSV_HEADER, _nli_row)


def _nli_row(path: Path, line: int, rec: dict[str, str]) -> dict:
    anchor, positive, negative = rec["sent0"].strip(), rec["sent1"].strip(), rec["hard_neg"].strip()
    check_nonempty({"sent0": anchor, "sent1": positive, "hard_neg": negative}, path, line)
    return {"anchor": anchor, "positive": positive, "negative": negative}
