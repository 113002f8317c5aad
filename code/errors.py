"""What every entry point does with an error: one clear line, an exit code, the traceback only when asked for.

    if __name__ == "__main__":
        run_main(main)           # main() parses its own flags (sys.argv) and runs

A user error (a bad flag or config value, a missing or malformed file) is raised as a `UserError` subclass
whose message names the file or flag, what was expected and what to do; `run_main` prints `error: <message>`
on stderr and exits with 2 for usage errors (`UsageError`) and 1 for the rest. Anything else is a bug or an
environment problem: one line with its type and message, exit 1. `--debug` on the command line (or
`MINDVIS_DEBUG=1` in the environment) re-raises instead, so the full traceback is printed.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
from collections.abc import Callable
from typing import Any

DEBUG_FLAG = "--debug"
DEBUG_ENV = "MINDVIS_DEBUG"
DEBUG_HELP = f"show the full Python traceback on errors (or set {DEBUG_ENV}=1)"


class UserError(Exception):
    """Something the user can fix (data, files, environment); the message says what and how. Exit code 1."""

    exit_code = 1


class UsageError(UserError):
    """A flag or config value is invalid; the message names it. Exit code 2."""

    exit_code = 2


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file is missing, unreadable or does not hold what a stage expects."""


class MetricsFileError(UserError):
    """A metrics.json is unreadable, lacks item scores or was scored on other items than the one it is compared to."""


class UnsafeCheckpointError(UserError, pickle.UnpicklingError):
    """A pickled file asked for a class or function outside the allow-list, or for state only code could set."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with usage errors on one line (`prog: error: ... (see --help)`, exit 2), not the whole usage block."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def debug_requested(argv: list[str] | None = None) -> bool:
    """Whether the user asked for tracebacks (`--debug` among the arguments, or MINDVIS_DEBUG=1)."""
    argv = sys.argv[1:] if argv is None else argv
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


MAX_MESSAGE = 1000  # characters: a message quoting a file's value is cut, not printed whole


def one_line(err: BaseException) -> str:
    """The error's message on one line (multi-line messages are joined, long ones cut at MAX_MESSAGE)."""
    text = " ".join(str(err).split()) or type(err).__name__
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 3] + "..."
    return text if isinstance(err, UserError) else f"{type(err).__name__}: {text}"


def run_main(main: Callable[[], Any]) -> None:
    """Call `main()` and turn errors into one line on stderr and an exit code (see the module docstring)."""
    if debug_requested():
        main()
        return
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except UserError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(err.exit_code)
    except MemoryError:
        print(
            "error: out of memory; use a smaller --batch_size (rerun with --debug for the traceback)", file=sys.stderr
        )
        sys.exit(1)
    except Exception as err:  # a bug or an environment problem: still one line, the traceback on request
        print(f"error: {one_line(err)} (rerun with {DEBUG_FLAG} for the traceback)", file=sys.stderr)
        sys.exit(1)
