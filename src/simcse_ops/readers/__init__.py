"""The registry of published data formats, and `read_source` that turns a `params.yaml` source
into a normalised Arrow table.

    FORMATS[format]      -> Format(reader, kind, folders): the reader(files, ctx, **options)
                            yielding rows, and the key of `simcse_ops.schemas.KINDS` whose schema
                            the rows make
    load_source(name, source_config, data_root) -> SourceResult (table, kind, counts for ingest)
    read_source(name, source_config, data_root) -> pyarrow.Table

Every row carries `file` (relative to the data root) and `line` (1-based) so any later stage can
point back at the original record.
"""

from __future__ import annotations

import collections.abc
import glob
import inspect
import types
import typing
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from simcse_ops.config import ConfigError, SourceConfig
from simcse_ops.errors import DataError, MissingInputError
from simcse_ops.readers.base import ReadContext
from simcse_ops.readers.bias import read_crows_pairs_csv, read_seat_json
from simcse_ops.readers.corpus import read_lines, read_pubmedqa_json, read_wikiextractor
from simcse_ops.readers.domain import (
    read_beir,
    read_mqp_csv,
    read_pairs_labelled,
    read_pairs_scored,
    read_pubmedqa_pairs,
    read_pubmedqa_retrieval,
)
from simcse_ops.readers.nli import read_nli_csv, read_snli_jsonl
from simcse_ops.readers.sts import read_semeval_sts, read_sick_full, read_sick_semeval, read_stsb_csv
from simcse_ops.schemas import KINDS


@dataclass(frozen=True)
class Format:
    """A published data format: the reader that yields its rows and the kind they make."""

    reader: Callable[..., Iterable[dict]]  # reader(files, ctx, **sources.<name>.options)
    kind: str  # key of simcse_ops.schemas.KINDS: the schema of the table
    folders: bool = False  # `paths` may name folders as well as files (a BEIR dataset is a folder)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.reader.__name__}: unknown kind {self.kind!r}")


FORMATS: dict[str, Format] = {
    "semeval_sts": Format(read_semeval_sts, "sts"),
    "stsb_csv": Format(read_stsb_csv, "sts"),
    "sick_semeval": Format(read_sick_semeval, "sts"),
    "sick_full": Format(read_sick_full, "sts"),
    "lines": Format(read_lines, "corpus"),
    "wikiextractor": Format(read_wikiextractor, "corpus"),
    "pubmedqa_json": Format(read_pubmedqa_json, "corpus"),
    "snli_jsonl": Format(read_snli_jsonl, "nli"),
    "nli_csv": Format(read_nli_csv, "nli"),
    "seat_json": Format(read_seat_json, "seat"),
    "crows_pairs_csv": Format(read_crows_pairs_csv, "crows_pairs"),
    "mqp_csv": Format(read_mqp_csv, "pairs"),
    "pairs_labelled": Format(read_pairs_labelled, "pairs"),
    "pairs_scored": Format(read_pairs_scored, "sts"),
    "beir": Format(read_beir, "retrieval", folders=True),
    "pubmedqa_retrieval": Format(read_pubmedqa_retrieval, "retrieval"),
    "pubmedqa_pairs": Format(read_pubmedqa_pairs, "text_pairs"),
}

__all__ = ["FORMATS", "Format", "SourceResult", "expand_paths", "load_source", "read_source"]


@dataclass
class SourceResult:
    """A source read into its kind's schema, with the counts ingest reports."""

    name: str
    kind: str
    table: pa.Table
    files: list[str]
    n_bad: int = 0
    bad_examples: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)

    def metrics(self) -> dict:
        """Row counts for `metrics/ingest.json` (per split and subset for STS sources)."""
        out: dict = {"kind": self.kind, "files": len(self.files), "rows": self.table.num_rows,
                     "bad_records": self.n_bad}
        if self.kind == "sts":
            out["splits"] = _counts(self.table, "split")
            out["subsets"] = _counts(self.table, "subset")
        elif self.kind == "pairs":
            out["splits"] = _counts(self.table, "split")
            out["labels"] = {str(k): v for k, v in _counts(self.table, "label").items()}
        elif self.kind == "retrieval":
            out["records"] = _counts(self.table, "record")
            out["splits"] = {r: _counts(self.table.filter(pc.equal(self.table.column("record"), r)), "split")
                             for r in ("query", "qrel")}
        elif self.kind == "seat":
            out["tests"] = len(set(self.table.column("test").to_pylist()))
        elif self.kind == "crows_pairs":
            out["bias_types"] = _counts(self.table, "bias_type")
        out.update(sorted(self.stats.items()))
        if self.bad_examples:
            out["bad_examples"] = self.bad_examples
        return out


def _counts(table: pa.Table, column: str) -> dict[str, int]:
    return dict(sorted(Counter(table.column(column).to_pylist()).items()))


def expand_paths(name: str, source: SourceConfig, data_root: Path, folders: bool = False) -> list[Path]:
    """Expand `sources.<name>.paths` (glob patterns allowed) against the data root.

    Each pattern's matches are sorted; patterns keep their listed order; a file matched twice is
    read once. A pattern that matches nothing is an error naming the params key. Folders match
    only when `folders` is true (a `Format` with `folders=True`).
    """
    files: list[Path] = []
    seen: set[Path] = set()

    def usable(p: Path) -> bool:
        return p.is_file() or (folders and p.is_dir())

    for i, pattern in enumerate(source.paths):
        full = data_root / pattern
        if glob.has_magic(pattern):
            matches = sorted(Path(p) for p in glob.glob(str(full)) if usable(Path(p)))
        else:
            matches = [full] if usable(full) else []
        if not matches:
            raise MissingInputError(
                f"{full}: no such file (sources.{name}.paths[{i}] = {pattern!r}, data root "
                f"{data_root}); fix sources.{name}.paths in params.yaml or set data.root / "
                f"$SIMCSE_DATA_ROOT"
            )
        for p in matches:
            if p not in seen:
                seen.add(p)
                files.append(p)
    return files


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _value_ok(value, tp) -> tuple[bool, str] | None:
    """(value has type tp, what tp expects in words); None for a type not checked here."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return value in args, " or ".join(map(repr, args))
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        if value is None:
            return True, "null"
        checked = _value_ok(value, inner)
        return None if checked is None else (checked[0], f"{checked[1]} or null")
    if origin in (list, tuple, collections.abc.Sequence) and len(args) == 1:
        inner = args[0]
        if typing.get_origin(inner) is not typing.Literal and inner not in _TYPE_NAMES:
            return None
        each = [_value_ok(v, inner)[0] for v in value] if isinstance(value, list) else [False]
        words = (f"one of {', '.join(map(repr, typing.get_args(inner)))}"
                 if typing.get_origin(inner) is typing.Literal else _TYPE_NAMES[inner])
        return all(each), f"a list, each item {words}"
    if tp in (bool, int, float, str):
        ok = isinstance(value, tp) and not (tp is not bool and isinstance(value, bool))
        ok = ok or (tp is float and isinstance(value, int) and not isinstance(value, bool))
        return ok, _TYPE_NAMES[tp]
    return None


def _check_options(name: str, source: SourceConfig, reader) -> None:
    """Every `sources.<name>.options` key must be a keyword of the reader, with a value of the
    keyword's type (or one of its Literal values; lists of them; null where the type allows)."""
    allowed = list(inspect.signature(reader).parameters)[2:]
    unknown = sorted(set(source.options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"sources.{name}.options: unknown option(s) {', '.join(map(repr, unknown))} for format "
            f"{source.format!r}; allowed: {', '.join(allowed) or 'none'}"
        )
    hints = typing.get_type_hints(reader)
    for key, value in source.options.items():
        checked = _value_ok(value, hints.get(key))
        if checked is not None and not checked[0]:
            raise ConfigError(f"sources.{name}.options.{key}: expected {checked[1]}, got {value!r}")


def load_source(
    name: str, source: SourceConfig, data_root: Path | str, max_bad_fraction: float = 0.0
) -> SourceResult:
    """Read every file of source `name` with its format's reader into the kind's schema.

    Malformed records raise `DataError` (file:line, found, expected) unless `max_bad_fraction`
    > 0: then they are skipped and counted, and the source fails only if skipped / (kept +
    skipped) exceeds the fraction.
    """
    fmt = FORMATS.get(source.format)
    if fmt is None:
        raise ConfigError(
            f"sources.{name}.format: unknown format {source.format!r}; "
            f"known: {', '.join(sorted(FORMATS))}"
        )
    reader = fmt.reader
    _check_options(name, source, reader)
    data_root = Path(data_root)
    files = expand_paths(name, source, data_root, folders=fmt.folders)
    kind = fmt.kind
    schema = KINDS[kind].schema
    ctx = ReadContext(source=name, data_root=data_root, max_bad_fraction=max_bad_fraction)
    rows = list(reader(files, ctx, **source.options))
    if not rows:
        raise DataError(
            files[0] if len(files) == 1 else data_root, None, f"no records in {len(files)} file(s)",
            f"at least one {source.format} record", f"check sources.{name}.paths and format",
        )
    total = len(rows) + ctx.n_bad
    if ctx.n_bad and ctx.n_bad / total > max_bad_fraction:
        first = ctx.first_bad
        raise DataError(
            first.path,
            first.line,
            f"{ctx.n_bad} malformed record(s) of {total} ({ctx.n_bad / total:.2%}), the first: "
            f"{first.found} where {first.expected} was expected",
            f"at most ingest.max_bad_fraction = {max_bad_fraction:g} of source {name!r}",
            "repair the files, or raise ingest.max_bad_fraction in params.yaml",
        )
    table = pa.Table.from_pylist(rows, schema=schema)
    return SourceResult(
        name=name,
        kind=kind,
        table=table,
        files=[ctx.rel(f) for f in files],
        n_bad=ctx.n_bad,
        bad_examples=list(ctx.bad_errors),
        stats=dict(ctx.stats),
    )


def read_source(
    name: str, source: SourceConfig, data_root: Path | str, max_bad_fraction: float = 0.0
) -> pa.Table:
    """The normalised table of source `name` (see `load_source`)."""
    return load_source(name, source, data_root, max_bad_fraction).table
