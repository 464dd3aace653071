"""File helpers shared by every stage: atomic writes and strict JSON reads (errors.DataError).

Every output is written to a temporary file in the destination folder and moved into place with
`os.replace`, so a stage that fails half-way leaves either the previous file or nothing, never a
truncated one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from simcse_ops.errors import DataError, MissingInputError


@contextlib.contextmanager
def atomic_path(dest: Path | str, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success move it onto `dest`, on error delete it.

    Works for files and for folders (the caller creates the folder at the yielded path).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix + ".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()
    try:
        yield tmp
        if dest.is_dir() and not dest.is_symlink():
            # os.replace cannot replace a non-empty folder: swap through a second name.
            old = dest.with_name(f".{dest.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def write_json(path: Path | str, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def read_json(path: Path | str, made_by: str | None = None) -> Any:
    """The JSON document in `path`. A missing file is a `MissingInputError` (naming `made_by`, the
    stage that writes it, when given); invalid JSON a `DataError` naming the line."""
    path = Path(path)
    if not path.is_file():
        first = f"; run {made_by} first" if made_by else ""
        raise MissingInputError(f"{path}: not found{first}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(path, e.lineno, f"invalid JSON ({e.msg})", "a JSON document") from e


def remove_path(path: Path | str) -> None:
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def model_hash(model_dir: Path | str) -> str:
    """sha256 over every file of the model folder (relative names and bytes): the weights and
    configuration, since nothing else is written there. Training tags its run with it."""
    model_dir = Path(model_dir)
    h = hashlib.sha256()
    for f in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        rel = f.relative_to(model_dir).as_posix()
        h.update(rel.encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
