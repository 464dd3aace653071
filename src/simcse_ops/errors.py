"""The user-facing errors of the pipeline, and the runner that turns them into a one-line message.

A `ConfigError` (a `params.yaml` value that cannot be used) or a `DataError` (bad input data)
is the user's to fix, not a bug: a stage run through `run_main` prints it as its last line,

    <stage>: error: <message>        e.g.  ingest: error: params.yaml: ingest: unknown key(s) ...

with no traceback, and exits with its own status. Anything else is a bug and keeps Python's
traceback.

Exit statuses (`python -m stages.<name>`, `dvc repro` shows them as "failed with exit code N"):

    0    success
    1    unexpected error: a bug; Python prints the traceback
    2    ConfigError (params.yaml, or a bad command-line argument: argparse also exits 2)
    3    DataError (an input file: its path and line, what was found and what was expected)
    130  interrupted (Ctrl-C)

This module imports nothing from the package, so any module may import it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_CONFIG = 2
EXIT_DATA = 3
EXIT_INTERRUPTED = 130


class ConfigError(ValueError):
    """A `params.yaml` value that cannot be used; the message names the file and the key."""


class DataError(ValueError):
    """Bad input data. The message names the file, the line, what was found and what was expected."""

    def __init__(
        self,
        path: Path | str,
        line: int | None,
        found: str,
        expected: str,
        fix: str | None = None,
    ) -> None:
        self.path = str(path)
        self.line = line
        self.found = found
        self.expected = expected
        where = f"{path}:{line}" if line is not None else f"{path}"
        msg = f"{where}: found {found}; expected {expected}"
        if fix:
            msg += f". Fix: {fix}"
        super().__init__(msg)


class RegistryError(RuntimeError):
    """A registry action that cannot be done; the message says why and what to do. The register
    stage and `simcse-ops promote/rollback/...` catch it themselves: message on stderr, exit 1."""


def exit_status(exc: BaseException) -> int | None:
    """The documented exit status of a user-facing error; None for anything else (a bug)."""
    if isinstance(exc, DataError):
        return EXIT_DATA
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG
    # Another user-facing error declares its status (expectations.ValidationFailed: the data).
    status = getattr(type(exc), "exit_status", None)
    return status if isinstance(status, int) else None


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (a YAML parser error, for one, spans several)."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text or type(exc).__name__


def _stage_name(main: Callable[..., Any], argv: Sequence[str] | None) -> str:
    """`ingest`, or `train@sup-nli` with `--variant sup-nli`: the DVC stage's name."""
    module = getattr(main, "__module__", None) or ""
    if module == "__main__":  # python -m stages.train: the real name is in the module's spec
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        module = spec.name if spec is not None else Path(sys.argv[0]).stem
    name = module.rpartition(".")[2] or "simcse-ops"
    args = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(args):
        if arg == "--variant" and i + 1 < len(args):
            return f"{name}@{args[i + 1]}"
        if arg.startswith("--variant="):
            return f"{name}@{arg.partition('=')[2]}"
    return name


def run_main(
    main: Callable[..., Any], argv: Sequence[str] | None = None, *, prog: str | None = None
) -> int:
    """Call `main(argv)` (`main()` when argv is None) and return the process's exit status.

    A ConfigError or DataError (or a subclass) prints `<prog>: error: <message>` to stderr as
    the last line and returns 2 or 3; Ctrl-C prints `<prog>: interrupted` and returns 130. Any
    other exception propagates, so Python prints its traceback and exits 1. `main`'s return
    value is the status when it is an int, else 0. `prog` defaults to the stage's name.
    """
    try:
        result = main() if argv is None else main(list(argv))
    except KeyboardInterrupt:
        _report(prog or _stage_name(main, argv), "interrupted")
        return EXIT_INTERRUPTED
    except ValueError as e:
        status = exit_status(e)
        if status is None:
            raise
        _report(prog or _stage_name(main, argv), f"error: {one_line(e)}")
        return status
    if isinstance(result, int) and not isinstance(result, bool):
        return result
    return EXIT_OK


def _report(prog: str, text: str) -> None:
    # Whatever the stage printed goes out first, so that the error is the last line in a terminal.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    print(f"{prog}: {text}", file=sys.stderr, flush=True)
