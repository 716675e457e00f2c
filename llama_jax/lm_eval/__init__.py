"""lm-evaluation-harness's command line with ``--model llama_jax`` registered.

    python -m llama_jax.lm_eval --model llama_jax \
        --model_args checkpoint=/ckpt/llama-7b,batch_size=16 \
        --tasks hellaswag,arc_easy --output_path results/

takes exactly lm-eval's arguments (``lm-eval run --help``): it imports
`llama_jax.eval.lm_eval_adapter` (which registers `LlamaJaxLM` under the name
``llama_jax``) and runs lm-eval's own CLI entry, ``lm_eval.__main__.cli_evaluate``.
lm-eval 0.4.13 discovers no outside models; newer releases read the
``lm_eval.models`` entry-point group, where the package declares the same class.
Needs the ``[lm_eval]`` extra. See docs/lm_eval.md.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from llama_jax import cpu_flags
from llama_jax.cli import handle_errors
from llama_jax.errors import ConfigError

_IMPORT_ERROR: ImportError | None = None
try:  # absolute imports: the installed harness, not this package
    import lm_eval.__main__ as lm_eval_main

    from llama_jax.eval import lm_eval_adapter  # noqa: F401 (registers --model llama_jax)
except ImportError as e:  # the [lm_eval] extra is not installed
    lm_eval_main, _IMPORT_ERROR = None, e


@handle_errors
def main(argv: Sequence[str] | None = None) -> int | None:
    """Run lm-eval's CLI on `argv` (default: ``sys.argv[1:]``) with our model registered.

    A user error of ours (a bad model_args value, a missing checkpoint) is
    one ``error: ...`` line and exit status 2, as in every llama_jax CLI.
    """
    if lm_eval_main is None:
        raise ConfigError(f"lm-evaluation-harness is not installed ({_IMPORT_ERROR}); pip "
                          "install 'llama_jax[lm_eval]'")
    cpu_flags.apply()  # as the eval command: the CPU preset before the backend starts
    args = list(sys.argv[1:] if argv is None else argv)
    saved = sys.argv
    sys.argv = ["lm-eval", *args]  # lm-eval's parser reads sys.argv itself
    try:
        lm_eval_main.cli_evaluate()
    finally:
        sys.argv = saved
    return 0
