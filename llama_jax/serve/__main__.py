"""Serve a checkpoint over an OpenAI-compatible HTTP API with continuous batching.

    python -m llama_jax.serve --checkpoint=/ckpt/llama-7b [--tokenizer=PATH] \
        [--host=127.0.0.1] [--port=8000] [--slots=8] [--max_seq_len=2048] \
        [--mesh=1,-1,1,1] [--chat_template=llama2] [--api_key=KEY]

The weights are read straight onto the mesh (each process reads only its
devices' shards). Several hosts: start the same command on each with
``--coordinator_address=HOST0:PORT --num_processes=N --process_id=I`` (or
under SLURM / MPI / TPU, detected): process 0 serves HTTP and the others
follow its device calls (`llama_jax.serve.lockstep`).

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions``,
``GET /v1/models``, ``GET /health`` (see docs/serving.md). It binds to
127.0.0.1 unless ``--host`` says otherwise; with ``--api_key`` every route but
``/health`` needs ``Authorization: Bearer <key>``. The model compiles its
prefill buckets and decode step before the port opens. Exit status
(`llama_jax.cli`): 2 with one ``error: ...`` line for a bad flag, checkpoint,
tokenizer or template; 0 after Ctrl-C.
"""

from __future__ import annotations

import ipaddress
import os

import uvicorn
from absl import app, flags, logging

from llama_jax import sharding
from llama_jax.cli import run_cli, user_errors
from llama_jax.convert import from_pretrained
from llama_jax.convert.hf_tokenizer import checkpoint_tokenizer
from llama_jax.data.tokenizer import check_tokenizer_fits
from llama_jax.errors import ConfigError
from llama_jax.infer import placement, run_flags  # noqa: F401 (run_flags: --mesh, --dtype, ...)
from llama_jax.serve.app import create_app
from llama_jax.serve.chat import ChatEncoder
from llama_jax.serve.lockstep import LockstepEngine, follow
from llama_jax.serve.scheduler import Scheduler
from llama_jax.serve.slots import DEFAULT_BUCKETS, SlotEngine

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Checkpoint directory (Meta, HF, orbax or training workdir).")
flags.DEFINE_string("tokenizer", None, "tokenizer.model or tokenizer.json (default: the checkpoint's own).")
flags.DEFINE_string("host", "127.0.0.1", "Address to bind (127.0.0.1: this machine only).")
flags.DEFINE_integer("port", 8000, "Port to listen on.")
flags.DEFINE_integer("slots", 8, "Decode slots: requests decoded together in every step.")
flags.DEFINE_integer("max_seq_len", None, "Tokens (prompt + completion) per slot (default: the model's).")
flags.DEFINE_list("prefill_buckets", [str(b) for b in DEFAULT_BUCKETS],
                  "Padded prompt-chunk lengths; longer prompts are prefilled in chunks of the largest.")
flags.DEFINE_integer("max_queue", 64, "Requests that may wait for a slot; more get 429.")
flags.DEFINE_float("request_timeout", 600.0, "Seconds a request may take (0: no limit).")
flags.DEFINE_string("api_key", None, "Require 'Authorization: Bearer <key>' (default: env LLAMA_JAX_API_KEY).")
flags.DEFINE_string("chat_template", None, "Chat template name or tokenizer_config.json "
                    "(default: the checkpoint's, else llama2).")
flags.DEFINE_string("model_name", None, "Model id clients name (default: the checkpoint folder's name).")
flags.DEFINE_bool("bos", True, "Start each text prompt with BOS.")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_engine(checkpoint: str, tokenizer_path: str | None = None, **kw):
    """(engine, tokenizer) for a checkpoint, read straight onto the mesh.

    The parameters come in the unscanned layout `SlotEngine` runs, already
    sharded, so no process holds the whole model. Keywords as the flags.
    """
    with user_errors():
        tokenizer, _ = checkpoint_tokenizer(checkpoint, tokenizer_path)
        overrides = {"attention_impl": kw.get("attention_impl", "auto"), "scan_layers": False}
        if kw.get("dtype"):
            overrides["dtype"] = kw["dtype"]
        mesh = placement.parse_mesh(kw.get("mesh"))
        rules = sharding.make_rules(kw.get("mesh_rules"))
        config, params = from_pretrained(checkpoint, dtype=kw.get("dtype"),
                                         config_overrides=overrides, mesh=mesh, rules=rules)
        check_tokenizer_fits(tokenizer, config.vocab_size, f"checkpoint {checkpoint}")
        buckets = [int(b) for b in kw.get("prefill_buckets", DEFAULT_BUCKETS)]
        engine = SlotEngine(config, params, slots=kw.get("slots", 8),
                            max_seq_len=kw.get("max_seq_len"), prefill_buckets=buckets,
                            mesh=mesh, rules=rules)
    return engine, tokenizer


def build(checkpoint: str, tokenizer_path: str | None = None, *, engine=None, tokenizer=None,
          **kw):
    """(app, scheduler) for a checkpoint: what `main` serves; keywords as the flags.

    `engine` / `tokenizer`: already built (`build_engine`; process 0 of a
    multi-host server passes its `LockstepEngine`).
    """
    if engine is None:
        engine, tokenizer = build_engine(checkpoint, tokenizer_path, **kw)
    with user_errors():
        chat = ChatEncoder(tokenizer, kw.get("chat_template"), checkpoint=checkpoint)
    timeout = kw.get("request_timeout") or None
    scheduler = Scheduler(engine, tokenizer, max_queue=kw.get("max_queue", 64),
                          request_timeout=timeout)
    name = kw.get("model_name") or os.path.basename(os.path.normpath(checkpoint))
    application = create_app(scheduler, tokenizer, model_name=name, api_key=kw.get("api_key"),
                             chat=chat, add_bos=kw.get("bos", True))
    return application, scheduler


def main(argv):
    """Parse flags, load and compile the model, serve until interrupted."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {list(argv[1:])}")
    if not FLAGS.checkpoint:
        raise app.UsageError("--checkpoint is required")
    for name in ("slots", "max_queue"):
        if FLAGS[name].value < 1:
            raise ConfigError(f"--{name}={FLAGS[name].value} must be an integer >= 1")
    if not 0 < FLAGS.port < 65536:
        raise ConfigError(f"--port={FLAGS.port} must be in [1, 65535]")
    try:
        buckets = [int(b) for b in FLAGS.prefill_buckets]
    except ValueError:
        raise ConfigError(f"--prefill_buckets={','.join(FLAGS.prefill_buckets)}: give "
                          "comma-separated integers, e.g. 16,64,256") from None
    api_key = FLAGS.api_key or os.environ.get("LLAMA_JAX_API_KEY") or None
    if not _is_loopback(FLAGS.host) and not api_key:
        logging.warning("--host=%s is reachable from other machines and no --api_key is set: "
                        "anyone who can reach the port can use the model", FLAGS.host)
    # Before anything touches a JAX backend: join the job, as training does.
    info = placement.join_job(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    engine, tokenizer = build_engine(
        FLAGS.checkpoint, FLAGS.tokenizer, slots=FLAGS.slots, max_seq_len=FLAGS.max_seq_len,
        prefill_buckets=buckets, mesh=FLAGS.mesh, mesh_rules=FLAGS.mesh_rules,
        dtype=FLAGS.dtype, attention_impl=FLAGS.attention_impl)
    if info.process_index != 0:  # a follower: process 0's device calls, until it stops
        print(f"process {info.process_index} of {info.process_count}: following process 0",
              flush=True)
        calls = follow(engine)
        logging.info("process 0 stopped serving after %d device calls", calls)
        return 0
    if info.process_count > 1:
        engine = LockstepEngine(engine)
    application, scheduler = build(
        FLAGS.checkpoint, FLAGS.tokenizer, engine=engine, tokenizer=tokenizer,
        max_queue=FLAGS.max_queue, request_timeout=FLAGS.request_timeout, api_key=api_key,
        chat_template=FLAGS.chat_template, model_name=FLAGS.model_name, bos=FLAGS.bos)
    try:
        logging.info("compiling the prefill buckets and the decode step")
        engine.warmup()
        scheduler.start()
        print(f"serving {application.title} on http://{FLAGS.host}:{FLAGS.port}/v1"
              + (f" ({info.process_count} processes)" if info.process_count > 1 else ""),
              flush=True)
        uvicorn.run(application, host=FLAGS.host, port=FLAGS.port, log_level="warning")
    finally:
        scheduler.close()
        if isinstance(engine, LockstepEngine):
            engine.close()
    return 0


def run():
    """Console entry point."""
    run_cli(main)


if __name__ == "__main__":
    run()
