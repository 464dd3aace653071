"""The user-facing errors of the pipeline, and the runner that turns them into a one-line message.

A `UserError` is the user's to fix, not a bug: a bad `params.yaml` value, bad input data, an input
that an earlier stage makes and that is not there, a registry action the gate refuses, a tracking
store that does not answer, a team server that does not start. Every entry point (the stages, the
flows' `main`, `simcse-ops`) runs through `run_main`, the one place that prints it, as the last line,

    <prog>: error: <message>        e.g.  ingest: error: params.yaml: ingest: unknown key(s) ...

with no traceback, and exits with the error's `exit_status`. Anything else is a bug and keeps
Python's traceback.

Exit statuses (`python -m stages.<name>`, `python -m flows.<name>`, `simcse-ops`; `dvc repro`
shows them as "failed with exit code N"):

    0    success
    1    unexpected error: a bug, Python prints the traceback; or RegistryError (a registry action
         refused: the gate, a missing export, ...) or DvcError (a `dvc` command a flow ran failed)
    2    ConfigError (params.yaml, or a bad command-line argument: argparse also exits 2)
    3    DataError (an input file: its path and line, what was found and what was expected), or
         MissingInputError (an input that is not there: its path and the stage that makes it)
    4    tracking.TrackingUnavailable (the MLflow store did not answer after its retries)
    5    team.TeamError (the team stack could not be started or stopped)
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
EXIT_REFUSED = 1  # a registry action refused, or a failed `dvc` command: the message says why
EXIT_CONFIG = 2
EXIT_DATA = 3
EXIT_STORE = 4
EXIT_TEAM = 5
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """An error the user can act on; the message says what is wrong and what to do. `run_main`
    prints it on one line, without a traceback, and exits with the class's `exit_status`."""

    exit_status: int = EXIT_UNEXPECTED


class ConfigError(UserError, ValueError):
    """A `params.yaml` value that cannot be used; the message names the file and the key."""

    exit_status = EXIT_CONFIG


class DataError(UserError, ValueError):
    """Bad input data. The message names the file, the line, what was found and what was expected."""

    exit_status = EXIT_DATA

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


class MissingInputError(UserError, FileNotFoundError):
    """An input file or folder that is not there. The message names it and the stage (or command)
    that makes it, e.g. `data/ingested/stsb.parquet: not found; run the ingest stage first (dvc
    repro ingest)`; for a raw source, the `params.yaml` key that names it. A FileNotFoundError, so
    that code which expects one still catches it."""

    exit_status = EXIT_DATA


class RegistryError(UserError, RuntimeError):
    """A registry action that cannot be done (a gate that refuses, a missing export, a version left
    half-registered); the message says why and what to do. Exit 1."""

    exit_status = EXIT_REFUSED


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

    A `UserError` prints `<prog>: error: <message>` to stderr as the last line and returns its
    `exit_status` (module docstring); Ctrl-C prints `<prog>: interrupted` and returns 130. Any
    other exception propagates, so Python prints its traceback and exits 1. `main`'s return
    value is the status when it is an int, else 0. `prog` defaults to the stage's name.
    """
    try:
        result = main() if argv is None else main(list(argv))
    except KeyboardInterrupt:
        _report(prog or _stage_name(main, argv), "interrupted")
        return EXIT_INTERRUPTED
    except UserError as e:
        _report(prog or _stage_name(main, argv), f"error: {one_line(e)}")
        return e.exit_status
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
