"""Talk to a checkpoint in the terminal.

    python -m llama_jax.chat --checkpoint=/ckpt/llama-2-7b-chat [--template=llama2] \
        [--system="You are terse."] [--max_new_tokens=256] [--temperature=0.7 --top_p=0.9]
    python -m llama_jax.chat --checkpoint=DIR --prompt="Write a haiku."   # one turn, then exit

Replies stream as they are generated. The conversation is kept (oldest
exchanges are dropped when it outgrows the model's context); ``/reset``
starts over, ``/exit`` or Ctrl-D leaves. The template is ``--template`` (a
name from `llama_jax.chat.templates.template_names`, or a
``tokenizer_config.json``), else the checkpoint's own Jinja template, else
``llama2``. Exit status (`llama_jax.cli`): 0 done; 2 for a user error (flags,
checkpoint, tokenizer, template, a message too long: one ``error: ...`` line).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from llama_jax.chat.session import ChatSession
from llama_jax.chat.templates import get_template
from llama_jax.cli import run_cli, user_errors
from llama_jax.convert import from_pretrained
from llama_jax.convert.hf_tokenizer import checkpoint_tokenizer
from llama_jax.errors import ConfigError, DataError
from llama_jax.infer import placement
from llama_jax.infer.engine import Generator, SamplingConfig

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Checkpoint directory (Meta, HF, orbax or training workdir).")
flags.DEFINE_string("tokenizer", None, "tokenizer.model or tokenizer.json (default: the checkpoint's own).")
flags.DEFINE_string("template", None, "Chat template name or tokenizer_config.json (default: the "
                    "checkpoint's, else llama2).")
flags.DEFINE_string("system", None, "A system message for the whole conversation.")
flags.DEFINE_string("prompt", None, "Answer this one message and exit.")
flags.DEFINE_integer("max_new_tokens", 256, "Most tokens per reply.")
flags.DEFINE_float("temperature", 0.0, "0 = greedy; otherwise the sampling temperature.")
flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = off).")
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1.0 = off).")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_integer("stream_every", 2, "Tokens decoded between screen updates.")
flags.DEFINE_string("mesh", None, "Mesh sizes data,fsdp,tensor,sequence (default: 1,-1,1,1).")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"], "Cast weights and compute.")


def _print(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def repl(session: ChatSession, read=input) -> None:
    """Read messages until EOF or /exit; /reset clears the conversation."""
    print("chat: /reset starts over, /exit or Ctrl-D leaves", file=sys.stderr)
    while True:
        try:
            line = read("you> ")
        except EOFError:
            _print("\n")
            return
        text = line.strip()
        if not text:
            continue
        if text == "/exit":
            return
        if text == "/reset":
            session.reset()
            print("(conversation cleared)", file=sys.stderr)
            continue
        _print("assistant> ")
        dropped = session.dropped
        try:
            session.reply(text, on_text=_print)
        except DataError as e:  # a message too long: say so, keep chatting
            print(f"error: {e}", file=sys.stderr)
            continue
        _print("\n")
        if session.dropped > dropped:
            print(f"(dropped {session.dropped - dropped} old exchange(s) to fit the context)",
                  file=sys.stderr)


def main(argv):
    """Parse flags, load the model, then chat (or answer --prompt)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {list(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if not FLAGS.checkpoint:
        raise app.UsageError("--checkpoint is required")
    for name in ("max_new_tokens", "stream_every"):
        if FLAGS[name].value < 1:
            raise ConfigError(f"--{name}={FLAGS[name].value} must be an integer >= 1")
    with user_errors():
        sampling = SamplingConfig(FLAGS.temperature, FLAGS.top_k, FLAGS.top_p)
        tokenizer, _ = checkpoint_tokenizer(FLAGS.checkpoint, FLAGS.tokenizer)
        template = get_template(FLAGS.template, checkpoint=FLAGS.checkpoint, tokenizer=tokenizer)
        # Unscanned: what the Generator runs (no conversion copy).
        overrides = {"scan_layers": False, **({"dtype": FLAGS.dtype} if FLAGS.dtype else {})}
        config, params = from_pretrained(FLAGS.checkpoint, dtype=FLAGS.dtype,
                                         config_overrides=overrides)
        generator = Generator(config, params, mesh=placement.parse_mesh(FLAGS.mesh),
                              batch_size=1, chunk_size=FLAGS.stream_every)
        del params
        session = ChatSession(generator, tokenizer, template, system=FLAGS.system,
                              max_new_tokens=FLAGS.max_new_tokens, sampling=sampling,
                              seed=FLAGS.seed)
    if FLAGS.prompt is not None:
        with user_errors():
            session.reply(FLAGS.prompt, on_text=_print)
        _print("\n")
        return 0
    repl(session)
    return 0


def run():
    """Console entry point."""
    run_cli(main)


if __name__ == "__main__":
    run()
