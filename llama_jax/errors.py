"""The errors a user can cause, and the exit status every CLI gives them.

Each is a `ValueError` (so library callers that catch `ValueError` keep
working) whose message names the thing that is wrong and the fix. The CLIs
(`llama_jax.cli.run_cli`) print such an error as one line and exit with
`EXIT_USER_ERROR`; anything else is a bug or a failed run and exits with
`EXIT_FAILURE` (Python's own status for an uncaught exception).

Exit statuses, the same for train, eval, generate, convert, plot, corpus and
tokenizer:

- 0 (`EXIT_OK`): done, or preempted after a clean save;
- 1 (`EXIT_FAILURE`): the run failed (a diverged loss, an internal error);
- 2 (`EXIT_USER_ERROR`): bad flags, config, data, checkpoint or paths; the
  message says what to change.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USER_ERROR = 2


class LlamaJaxError(ValueError):
    """Base of the user-fixable errors (the message names the fix)."""


class ConfigError(LlamaJaxError):
    """A run config, flag or workdir that cannot be used as given."""


class DataError(LlamaJaxError):
    """A data file (corpus, training source, eval set) that is missing or malformed."""


class ConversionError(LlamaJaxError):
    """A checkpoint that cannot be read or written as asked."""


class CheckpointError(LlamaJaxError):
    """A training checkpoint that fails verification or cannot be restored."""


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient norm became NaN/Inf; the message names the last good checkpoint.

    Not a `LlamaJaxError`: the inputs were valid, the run itself failed
    (`EXIT_FAILURE`).
    """


USER_ERRORS: tuple[type[BaseException], ...] = (LlamaJaxError,)
