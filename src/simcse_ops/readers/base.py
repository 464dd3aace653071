"""What every reader shares: the read context (bad-record accounting), strict line decoding and
score parsing.

A reader is a function `read_x(files, ctx, **options) -> Iterator[dict]` yielding one row per
record with the columns of its kind's schema (`simcse_ops.schemas`). It never skips a malformed
record silently: it calls `ctx.bad(DataError(...))`, which raises at once when
`ingest.max_bad_fraction` is 0 and otherwise counts the record; `read_source` fails at the end if
the counted fraction passes the threshold. File-level problems (missing, empty, misaligned
files) always raise.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from simcse_ops.errors import ConfigError, DataError, MissingInputError

# How many skipped records a report keeps verbatim (the count is always exact).
MAX_KEPT_ERRORS = 20


@dataclass
class ReadContext:
    """State shared by a reader and `read_source` while one source is read.

    `n_bad` counts the malformed records skipped (the first few kept verbatim in `bad_errors`);
    `stats` holds reader-specific counts (unscored pairs, stub documents, ...) that ingest
    reports as metrics.
    """

    source: str
    data_root: Path
    max_bad_fraction: float = 0.0
    n_bad: int = 0
    bad_errors: list[str] = field(default_factory=list)
    first_bad: DataError | None = None
    stats: Counter = field(default_factory=Counter)

    def rel(self, path: Path) -> str:
        """`path` relative to the data root (posix), as stored in the `file` column."""
        try:
            return path.resolve().relative_to(self.data_root.resolve()).as_posix()
        except ValueError:
            return path.as_posix()

    def data_path(self, rel: str, option: str) -> Path:
        """A file named by `sources.<source>.options.<option>`, relative to the data root."""
        path = self.data_root / rel
        if not path.is_file():
            raise MissingInputError(
                f"{path}: no such file (sources.{self.source}.options.{option} = {rel!r}, data root "
                f"{self.data_root}); fix sources.{self.source}.options.{option} in params.yaml"
            )
        return path

    def bad(self, err: DataError) -> None:
        """A malformed record: raise when no bad records are allowed, else count and skip it."""
        if self.max_bad_fraction <= 0.0:
            raise err
        self.n_bad += 1
        if self.first_bad is None:
            self.first_bad = err
        if len(self.bad_errors) < MAX_KEPT_ERRORS:
            self.bad_errors.append(str(err))


def read_bytes(path: Path, ctx: ReadContext) -> bytes:
    """The file's bytes (gunzipped for `.gz`); an empty file is an error."""
    if not path.is_file():
        raise MissingInputError(f"{path}: not found (source {ctx.source!r}; fix sources.{ctx.source}.paths)")
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise DataError(path, None, f"a corrupt gzip stream ({e})", "a gzip-compressed file") from e
    if not data.strip():
        raise DataError(
            path,
            1,
            "an empty file" if not data else "a file with only whitespace",
            "at least one record",
            f"replace the file or remove it from sources.{ctx.source}.paths",
        )
    return data


@dataclass(frozen=True)
class Line:
    number: int  # 1-based
    text: str  # without the line terminator (\n or \r\n)
    terminated: bool  # False only for a last line with no newline after it


def iter_lines(path: Path, ctx: ReadContext, data: bytes | None = None) -> Iterator[Line]:
    """Decode `path` as UTF-8 line by line; CRLF and LF both end a line.

    An undecodable line is a bad record (`ctx.bad`) naming its line and byte column; the other
    lines still decode. A UTF-8 byte-order mark at the start is dropped.
    """
    if data is None:
        data = read_bytes(path, ctx)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    raw_lines = data.split(b"\n")
    last_terminated = raw_lines[-1] == b""
    if last_terminated:
        raw_lines.pop()
    n = len(raw_lines)
    for i, raw in enumerate(raw_lines, start=1):
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            ctx.bad(
                DataError(
                    path,
                    i,
                    f"invalid UTF-8 byte {raw[e.start:e.start + 1]!r} at column {e.start + 1}",
                    "UTF-8 text",
                    "re-encode the file as UTF-8",
                )
            )
            continue
        yield Line(i, text, terminated=(i < n or last_terminated))


def decode_text(path: Path, data: bytes) -> str:
    """Decode a whole document (JSON) strictly as UTF-8; the error names the line."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(
            path, line, f"invalid UTF-8 byte {data[e.start:e.start + 1]!r}", "UTF-8 text",
            "re-encode the file as UTF-8",
        ) from e


def parse_score(
    text: str, path: Path, line: int, lo: float, hi: float, what: str = "a similarity score"
) -> float:
    """Parse a gold score and check it lies in [lo, hi]; raise `DataError` otherwise."""
    try:
        value = float(text)
    except ValueError:
        raise DataError(path, line, f"score {text!r}", f"{what}, a number in [{lo:g}, {hi:g}]") from None
    if not math.isfinite(value) or not lo <= value <= hi:
        raise DataError(path, line, f"score {text!r} out of range", f"{what} in [{lo:g}, {hi:g}]")
    return value


def seeded_fraction(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by (`seed`, `key`): the first 8 bytes of SHA-256 of "seed:key"
    over 2^64. Stable across processes and Python versions (unlike `hash`), so a split drawn
    with it never changes between runs."""
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def check_fraction(value: float, ctx: ReadContext, option: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"sources.{ctx.source}.options.{option}: expected a number in [0, 1], got {value!r}")


def check_fields(fields: list[str], allowed: tuple[int, ...], path: Path, line: int, layout: str) -> None:
    if len(fields) not in allowed:
        counts = " or ".join(map(str, allowed))
        raise DataError(
            path, line, f"{len(fields)} tab-separated field(s)", f"{counts} fields ({layout})"
        )


def check_nonempty(values: dict[str, str], path: Path, line: int) -> None:
    for name, value in values.items():
        if not value:
            raise DataError(path, line, f"an empty {name}", f"a non-empty {name}")


# ---------------------------------------------------------------------------------------------
# Line numbers of JSON strings: `json.load` forgets positions, so we scan the string literals once
# and match the decoded values in document order.

_JSON_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')


class JsonStringLines:
    """Find the 1-based line of each string value of a JSON document, in document order."""

    def __init__(self, text: str) -> None:
        self._tokens: list[tuple[str, int]] = []
        line, pos = 1, 0
        for m in _JSON_STRING.finditer(text):
            line += text.count("\n", pos, m.start())
            pos = m.start()
            self._tokens.append((m.group(0), line))
        self._cursor = 0

    def find(self, value: str, default: int) -> int:
        """Line of the next string literal equal to `value`; `default` if it is not found."""
        for i in range(self._cursor, len(self._tokens)):
            token, line = self._tokens[i]
            if json.loads(token) == value if "\\" in token else token[1:-1] == value:
                self._cursor = i + 1
                return line
        return default


def csv_fields(path: Path, lines: list) -> Iterator[tuple[int, list[str]]]:
    """(line, fields) of each comma-separated, double-quoted CSV record in decoded `lines`,
    where `line` is the line the record starts on (a quoted field may span lines). Malformed
    quoting raises DataError naming the line."""
    text = "".join(ln.text + "\n" for ln in lines)
    numbers = [ln.number for ln in lines]
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    start = 0  # physical lines consumed so far
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(path, numbers[min(start, len(numbers) - 1)], f"malformed CSV ({e})",
                            "comma-separated fields, double-quoted when they hold commas or quotes") from None
        line = numbers[start]
        start = reader.line_num
        yield line, fields


def csv_records(path: Path, ctx: ReadContext, lines: list, header: list[str], make_row,
                 exact_header: bool = True) -> Iterator[dict]:
    """Parse comma-separated, double-quoted CSV from decoded lines, tracking the line each
    record starts on. `make_row(path, line, {column: value})` builds the row or raises DataError."""
    if not lines or lines[0].number != 1:
        raise DataError(path, 1, "no readable header line", "the header " + ",".join(header))
    records = csv_fields(path, lines)
    try:
        _, names = next(records)
    except DataError as e:
        raise DataError(path, 1, f"an unparsable header ({e.found})", ",".join(header)) from None
    except StopIteration:
        names = []
    if (names != header) if exact_header else any(c not in names for c in header):
        raise DataError(path, 1, f"header {','.join(names)!r}",
                        ("the header " if exact_header else "a header with the columns ") + ",".join(header))
    rel = ctx.rel(path)
    for line, fields in records:
        if fields == [] or fields == [""]:
            ctx.stats["blank_lines"] += 1
            continue
        try:
            if len(fields) != len(names):
                raise DataError(path, line, f"{len(fields)} comma-separated field(s)",
                                f"{len(names)} fields, as in the header")
            row = make_row(path, line, dict(zip(names, fields)))
        except DataError as e:
            ctx.bad(e)
            continue
        row.update(file=rel, line=line)
        yield row
