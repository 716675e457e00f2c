"""Sample text from a checkpoint.

    python -m llama_jax.generate --checkpoint=/ckpt/llama-7b \
        --tokenizer=/ckpt/tokenizer.model --prompt="The capital of France is" \
        --max_new_tokens=32 --temperature=0.8 --top_p=0.95 --num_samples=2

Prompts come from ``--prompt`` (repeatable) and/or ``--prompts_file`` (one prompt
per line, or JSON Lines with a "prompt" field when the file ends in .jsonl). All
prompts are decoded together in left-padded batches with a KV cache
(`llama_jax.infer.engine`). ``--temperature=0`` is greedy; ``--stop`` strings cut
the output. ``--output`` writes JSON Lines of {prompt, sample, text} (its folder
is checked before the model loads). A prompt longer than the context
(prompt + max_new_tokens > max_seq_len) is an error naming the lengths unless
``--truncate`` is given (it keeps the prompt's last tokens and says so on
stderr). Exit status (`llama_jax.cli`): 0 done; 2 for a user error (flags,
prompts file, mesh, checkpoint, tokenizer, a prompt too long or empty: one
``error: ...`` line); 1 otherwise.

Several hosts: the same command on every host with
``--coordinator_address=HOST0:PORT --num_processes=N --process_id=i`` (or
SLURM / Open MPI / a TPU slice, detected) joins through `llama_jax.distributed`
as training does; each process reads only its devices' shards; process 0
prints and writes the samples.
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging

from llama_jax import sharding
from llama_jax.cli import check_output_file, run_cli, user_errors
from llama_jax.convert import from_pretrained
from llama_jax.convert.hf_tokenizer import checkpoint_tokenizer
from llama_jax.data.tokenizer import check_tokenizer_fits
from llama_jax.errors import ConfigError, DataError
from llama_jax.eval.tasks.readers import read_jsonl
from llama_jax.infer import placement, run_flags  # noqa: F401 (run_flags: --mesh, --dtype, ...)
from llama_jax.infer.engine import Generator, SamplingConfig, generate_text

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Checkpoint directory (Meta, HF, orbax or training workdir).")
flags.DEFINE_string("tokenizer", None, "tokenizer.model (SentencePiece) or tokenizer.json (Hugging Face) "
                    "(default: the checkpoint's, tokenizer.model first).")
flags.DEFINE_multi_string("prompt", [], "A prompt (repeat the flag for several).")
flags.DEFINE_string("prompts_file", None, "File of prompts: one per line, or .jsonl with 'prompt'.")
flags.DEFINE_integer("max_new_tokens", 64, "Most tokens to generate per sample.")
flags.DEFINE_float("temperature", 0.0, "0 = greedy; otherwise the sampling temperature.")
flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0 = off).")
flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass (1.0 = off).")
flags.DEFINE_integer("num_samples", 1, "Samples per prompt.")
flags.DEFINE_multi_string("stop", [], "Stop string (repeatable); output is cut before it.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_integer("batch_size", 8, "Rows decoded together.")
flags.DEFINE_bool("bos", True, "Start each prompt with BOS.")
flags.DEFINE_string("output", None, "Write JSON Lines {prompt, sample, text} here.")
flags.DEFINE_bool("truncate", False, "Keep only the last tokens of a prompt longer than "
                  "max_seq_len - max_new_tokens (said on stderr); without it such a prompt is an "
                  "error.")


def read_prompts(path: str) -> list[str]:
    """Prompts of a file: .jsonl records' "prompt" field, else one per line."""
    if not os.path.isfile(path):
        raise DataError(f"--prompts_file={path} does not exist")
    if not path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            return [ln for ln in f.read().splitlines() if ln.strip()]
    expected = "one JSON object with a 'prompt' string per line"
    records = read_jsonl(path, expected)  # DataError (a ValueError) names file:line.
    bad = [i for i, r in enumerate(records, 1) if not isinstance(r.get("prompt"), str)]
    if bad:
        raise DataError(f"{path}: record {bad[0]} has no 'prompt' string; expected {expected}")
    return [r["prompt"] for r in records]


def main(argv):
    """Parse flags, load the model, sample, print (and write) the texts."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {list(argv[1:])}")
    if not FLAGS["verbosity"].present:  # Quiet orbax/JAX INFO lines unless asked (-v 0).
        logging.set_verbosity(logging.WARNING)
    if not FLAGS.checkpoint:
        raise app.UsageError("--checkpoint is required")
    # Before anything touches a JAX backend: join the job, as training does.
    info = placement.join_job(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    prompts = list(FLAGS.prompt) + (read_prompts(FLAGS.prompts_file) if FLAGS.prompts_file else [])
    if not prompts:
        raise app.UsageError("give --prompt and/or --prompts_file")
    for name in ("max_new_tokens", "num_samples", "batch_size"):  # before the model loads
        if FLAGS[name].value < 1:
            raise ConfigError(f"--{name}={FLAGS[name].value} must be an integer >= 1")
    if FLAGS.output:
        check_output_file(FLAGS.output, "output")  # before generating anything
    with user_errors():  # sampling values, mesh, checkpoint, tokenizer
        sampling = SamplingConfig(FLAGS.temperature, FLAGS.top_k, FLAGS.top_p)
        tokenizer, _ = checkpoint_tokenizer(FLAGS.checkpoint, FLAGS.tokenizer)
        # Unscanned: what the Generator runs (no conversion copy).
        overrides = {"attention_impl": FLAGS.attention_impl, "scan_layers": False}
        if FLAGS.dtype:
            overrides["dtype"] = FLAGS.dtype
        mesh = placement.parse_mesh(FLAGS.mesh)
        rules = sharding.make_rules(FLAGS.mesh_rules)
        # Straight onto the mesh: each process reads only its devices' shards.
        config, params = from_pretrained(FLAGS.checkpoint, dtype=FLAGS.dtype,
                                         config_overrides=overrides, mesh=mesh, rules=rules)
        check_tokenizer_fits(tokenizer, config.vocab_size, f"checkpoint {FLAGS.checkpoint}")
    generator = Generator(config, params, mesh=mesh, rules=rules, batch_size=FLAGS.batch_size)
    del params
    with user_errors():  # --max_new_tokens, --num_samples, a prompt too long for the model
        outs = generate_text(generator, tokenizer, prompts, max_new_tokens=FLAGS.max_new_tokens,
                             sampling=sampling, num_samples=FLAGS.num_samples, stop=FLAGS.stop,
                             seed=FLAGS.seed, add_bos=FLAGS.bos, truncate_left=FLAGS.truncate)
    records = [{"prompt": p, "sample": s, "text": t}
               for p, samples in zip(prompts, outs, strict=True) for s, t in enumerate(samples)]
    if info.process_index != 0:  # every process decodes; process 0 prints and writes
        return 0
    for r in records:
        head = f"[{r['sample']}] " if FLAGS.num_samples > 1 else ""
        print(f"=== {head}{r['prompt']}\n{r['prompt']}{r['text']}\n")
    if FLAGS.output:
        with open(FLAGS.output, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return 0


def run():
    """Console entry point."""
    run_cli(main)


if __name__ == "__main__":
    run()
