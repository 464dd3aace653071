"""Readers for the bias probes: SEAT tests (May et al. 2019) and CrowS-Pairs (Nangia et al. 2020).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from simcse_ops.errors import DataError
from simcse_ops.readers.base import (
    JsonStringLines,
    ReadContext,
    check_nonempty,
    csv_records,
    decode_text,
    iter_lines,
    read_bytes,
)

SEAT_SETS = ("targ1", "targ2", "attr1", "attr2")


def read_seat_json(files: Sequence[Path], ctx: ReadContext) -> Iterator[dict]:
    """SEAT tests: despite the `.jsonl` suffix each file is ONE (pretty-printed) JSON object
    `{targ1, targ2, attr1, attr2: {category, examples: [...]}}`. Rows of
    `simcse_ops.schemas.SEAT`, one per example; `test` is the file stem (unique across files),
    `line` the example's line in the file.
    """
    seen: dict[str, Path] = {}
    for path in files:
        test = path.stem
        if test in seen:
            raise DataError(path, None, f"a second SEAT test named {test!r} (also {seen[test]})",
                            "unique file names across sources.<name>.paths",
                            f"remove one of them from sources.{ctx.source}.paths")
        seen[test] = path
        text = decode_text(path, read_bytes(path, ctx))
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(path, e.lineno, f"invalid JSON ({e.msg}, column {e.colno})",
                            "one JSON object {targ1, targ2, attr1, attr2} (not JSON lines)") from e
        if not isinstance(data, dict) or sorted(data) != sorted(SEAT_SETS):
            found = sorted(data) if isinstance(data, dict) else f"a JSON {type(data).__name__}"
            raise DataError(path, 1, f"keys {found}", "an object with keys targ1, targ2, attr1, attr2")
        where = JsonStringLines(text)
        rel = ctx.rel(path)
        for set_name in [k for k in data]:  # file order keeps the line lookup moving forward
            block = data[set_name]
            line = where.find(set_name, default=1)
            if not isinstance(block, dict) or not isinstance(block.get("category"), str) \
                    or not isinstance(block.get("examples"), list) or not block["examples"]:
                raise DataError(path, line, f"{set_name} = {json.dumps(block)[:80]}",
                                '{"category": "...", "examples": ["...", ...]} with at least one example')
            for example in block["examples"]:
                ex_line = where.find(example, default=line) if isinstance(example, str) else line
                try:
                    if not isinstance(example, str) or not example.strip():
                        raise DataError(path, ex_line, f"example {example!r} in {set_name}",
                                        "a non-empty string")
                except DataError as e:
                    ctx.bad(e)
                    continue
                yield {
                    "test": test,
                    "set": set_name,
                    "category": block["category"],
                    "text": example.strip(),
                    "file": rel,
                    "line": ex_line,
                }


CROWS_COLUMNS = ["sent_more", "sent_less", "stereo_antistereo", "bias_type"]
CROWS_DIRECTIONS = ("stereo", "antistereo")


def read_crows_pairs_csv(files: Sequence[Path], ctx: ReadContext) -> Iterator[dict]:
    """CrowS-Pairs `crows_pairs_anonymized.csv`: comma CSV with double-quoted fields; the first
    header column is empty (a row index). Rows of `simcse_ops.schemas.CROWS_PAIRS`."""
    for path in files:
        lines = list(iter_lines(path, ctx, read_bytes(path, ctx)))
        yield from csv_records(path, ctx, lines, CROWS_COLUMNS, _crows_row, exact_header=False)


def _crows_row(path: Path, line: int, rec: dict[str, str]) -> dict:
    row = {c: rec[c].strip() for c in CROWS_COLUMNS}
    check_nonempty(row, path, line)
    if row["stereo_antistereo"] not in CROWS_DIRECTIONS:
        raise DataError(path, line, f"stereo_antistereo {row['stereo_antistereo']!r}",
                        " or ".join(CROWS_DIRECTIONS))
    return row
