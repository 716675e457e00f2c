"""One error path and one exit-status convention for every command-line tool.

Every CLI (train, eval, generate, convert, plot, corpus, tokenizer) runs its
``main`` through this module:

- absl mains: ``run_cli(main)`` instead of ``app.run(main)``;
- argparse mains: decorate with ``@handle_errors`` (the function then returns
  the exit status instead of raising).

The convention (`llama_jax.errors`): a user error -- a `LlamaJaxError`
(ConfigError, DataError, ConversionError), an `OSError` such as a missing
file, an absl `app.UsageError` or a flag that does not parse -- prints
``error: <message>`` as one line on stderr and exits `EXIT_USER_ERROR` (2).
A diverged run (`NonFiniteLossError`) prints its one line and exits
`EXIT_FAILURE` (1). Anything else is a bug: Python's traceback, exit 1.
``--verbosity=1`` (absl) or ``LLAMA_JAX_TRACEBACK=1`` adds the traceback to
the one-line messages.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from absl import app, flags

from llama_jax import cpu_flags, errors, fileio
from llama_jax.errors import EXIT_FAILURE, EXIT_OK, EXIT_USER_ERROR, NonFiniteLossError

TRACEBACK_ENV = "LLAMA_JAX_TRACEBACK"

# What a user can fix: printed as one line, exit status 2.
USER_ERRORS: tuple[type[BaseException], ...] = (*errors.USER_ERRORS, OSError, app.UsageError,
                                                flags.Error)


def one_line(error: BaseException) -> str:
    """The error's message on one line (its lines joined), or its class name."""
    text = " ".join(part.strip() for part in str(error).splitlines() if part.strip())
    return text or type(error).__name__


def _verbosity_in(argv: Sequence[str]) -> int:
    """The --verbosity / -v value in `argv` (for errors raised before flags parse)."""
    value = 0
    args = list(argv)
    for i, a in enumerate(args):
        for name in ("--verbosity", "-verbosity", "--v", "-v"):
            if a == name and i + 1 < len(args):
                value = _int_or(args[i + 1], value)
            elif a.startswith(name + "="):
                value = _int_or(a.split("=", 1)[1], value)
    return value


def _int_or(text: str, default: int) -> int:
    try:
        return int(text)
    except ValueError:
        return default


def want_traceback(argv: Sequence[str] | None = None) -> bool:
    """True when ``LLAMA_JAX_TRACEBACK`` is set (not 0) or ``--verbosity >= 1``."""
    if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
        return True
    if flags.FLAGS.is_parsed() and "verbosity" in flags.FLAGS:
        return flags.FLAGS.verbosity >= 1
    return _verbosity_in(sys.argv if argv is None else argv) >= 1


def report(error: BaseException, status: int) -> int:
    """Print `error` as ``error: <message>`` on stderr (traceback if asked); return `status`."""
    if want_traceback():
        traceback.print_exception(error, file=sys.stderr)
    print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
    return status


def exit_status(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """Call ``fn(*args, **kwargs)`` and map its outcome to an exit status.

    None or 0 -> `EXIT_OK`, another int is passed through; a user error ->
    `EXIT_USER_ERROR`, a `NonFiniteLossError` -> `EXIT_FAILURE`, each printed
    as one line. Other exceptions propagate (a bug: the traceback is the point).
    """
    try:
        status = fn(*args, **kwargs)
    except USER_ERRORS as e:
        return report(e, EXIT_USER_ERROR)
    except NonFiniteLossError as e:
        return report(e, EXIT_FAILURE)
    return EXIT_OK if status is None else int(status)


def handle_errors(main: Callable[..., Any]) -> Callable[..., int]:
    """Decorator for a non-absl ``main``: it returns the exit status (see `exit_status`)."""

    @functools.wraps(main)
    def wrapped(*args: Any, **kwargs: Any) -> int:
        return exit_status(main, *args, **kwargs)

    return wrapped


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Treat a plain ``ValueError`` raised inside as the user's (a `LlamaJaxError`).

    For a CLI's calls whose ValueErrors all come from what the user passed
    (flag values, a checkpoint, a tokenizer file), so that they get the one-line
    message and exit 2 instead of a traceback.
    """
    try:
        yield
    except errors.LlamaJaxError:
        raise
    except ValueError as e:
        raise errors.LlamaJaxError(one_line(e)) from e


def check_output_file(path: str, flag: str) -> None:
    """Before any work: a `ConfigError` naming `flag` unless `path` can be written.

    For a CLI's output file (``--output``, ``--markdown``): its folder must
    exist and take a file, and `path` must not be a folder, so a long run
    never ends in a write that fails.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise errors.ConfigError(f"--{flag}={path} is a folder; give a file path")
    if not os.path.isdir(folder):
        what = "is a file" if os.path.exists(folder) else "does not exist"
        raise errors.ConfigError(f"--{flag}={path}: the folder {folder} {what}; create it "
                                 f"(mkdir -p {folder}) or choose another path")
    problem = fileio.unwritable_parent(folder)
    if problem is not None:
        raise errors.ConfigError(f"--{flag}={path}: {problem}; choose another path")


def check_folder(path: str, flag: str) -> None:
    """Before any work: a `ConfigError` naming `flag` unless `path` is or can be made a
    writable folder (it is a file, lies under a file, or its nearest existing folder
    cannot be written). Creates nothing."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise errors.ConfigError(f"--{flag}={path} is a file, not a folder; choose a folder "
                                 "path (a new one, or an existing one)")
    problem = fileio.unwritable_parent(path)
    if problem is not None:
        raise errors.ConfigError(f"--{flag}={path}: {problem}; choose a writable folder whose "
                                 "parents are folders")


def _root_user_error(error: BaseException) -> BaseException | None:
    """The innermost `LlamaJaxError` that `error` was raised from, if any.

    config_flags re-raises a config file's error with the traceback pasted
    into the message, and absl wraps that again; the original has the message.
    """
    found, seen = None, set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, errors.LlamaJaxError):
            found = error
        error = error.__cause__ or error.__context__
    return found


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing with a bad flag as a one-line user error (exit 2)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        root = _root_user_error(e)
        error = root if root is not None else flags.Error(f"{one_line(e)} (see --helpshort)")
        sys.exit(report(error, EXIT_USER_ERROR))


def run_cli(main: Callable[[list[str]], Any], *,
            precheck: Callable[[list[str]], None] | None = None,
            cpu_preset: bool = False) -> NoReturn:
    """Run an absl `main` with the one error path (replaces ``app.run(main)``).

    `precheck`, if given, runs on ``sys.argv`` before the flags are parsed
    (e.g. the train CLI's check for unknown ``--config.*`` keys), under the
    same error handling. `cpu_preset`: apply `llama_jax.cpu_flags` first (the
    train and eval commands; it slows batched decoding, so generate and serve
    do not).
    """
    if cpu_preset:
        cpu_flags.apply()  # before anything starts the backend
    if precheck is not None:
        status = exit_status(precheck, list(sys.argv))
        if status != EXIT_OK:
            sys.exit(status)
    app.run(functools.partial(exit_status, main), flags_parser=_parse_flags)
    sys.exit(EXIT_OK)  # app.run exits itself; this is for type checkers.
