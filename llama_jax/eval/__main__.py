"""Evaluate a checkpoint on the paper's benchmarks.

    python -m llama_jax.eval --checkpoint=/ckpt/llama-7b --tokenizer=/ckpt/tokenizer.model \
        --tasks=hellaswag,arc_easy,boolq,naturalqs:5 --data_dir=/data/eval \
        --output=results.json

`--checkpoint` takes every layout `llama_jax.from_pretrained` reads (Meta, Hugging
Face, llama_jax orbax, a training workdir). Each task reads its data set's
published files (or a local TFDS array_record data set with the same records)
from ``--data_dir/<task>/`` (see docs/eval.md). Writes the JSON
results (rewritten after each task) and a markdown table beside the paper's
numbers for the nearest LLaMA size (``--markdown``, default: output with .md).
Exit status (`llama_jax.cli`): 0 done; 2 for a user error (flags, task list,
mesh, checkpoint, tokenizer, data set, an empty data file, an --output that
cannot be written: one ``error: ...`` line, the flags and paths checked before
the model loads); 1 otherwise.

Several hosts: run the same command on every host with
``--coordinator_address=HOST0:PORT --num_processes=N --process_id=i`` (or
under SLURM / Open MPI / a TPU slice, detected); processes join through
`llama_jax.distributed` as training does, the mesh spans all their devices
(hosts on the ``data`` or ``fsdp`` axis), each process reads only its
devices' shards of the checkpoint, and process 0 writes the results.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from llama_jax import sharding
from llama_jax.cli import check_output_file, run_cli, user_errors
from llama_jax.convert import from_pretrained
from llama_jax.convert.hf_tokenizer import checkpoint_tokenizer
from llama_jax.convert.safetensors_io import READ_STATS
from llama_jax.data.tokenizer import check_tokenizer_fits
from llama_jax.eval import lm_eval_results, paper_results, report
from llama_jax.eval.runner import build_context, check_batch_size, evaluate
from llama_jax.eval.tasks import EvalOptions, parse_task_list
from llama_jax.eval.tasks.base import check_limit
from llama_jax.eval.tasks.toxicity_scorers import check_scorer_options
from llama_jax.fileio import atomic_write
from llama_jax.infer import placement, run_flags  # noqa: F401 (run_flags: --mesh, --dtype, ...)
from llama_jax.model import count_params

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Checkpoint directory (Meta, HF, orbax or training workdir).")
flags.DEFINE_string("tokenizer", None, "tokenizer.model (SentencePiece) or tokenizer.json (Hugging Face) "
                    "(default: the checkpoint's, tokenizer.model first).")
flags.DEFINE_string("tasks", None, "Comma-separated tasks, each 'name' or 'name:shots'.")
flags.DEFINE_string("data_dir", None, "Root holding one folder of published data files (or a "
                    "TFDS array_record data set) per task.")
flags.DEFINE_integer("num_fewshot", None, "Shots for every task (default: the paper's per task).")
flags.DEFINE_integer("limit", None, "Evaluate only the first N >= 1 examples of each task.")
flags.DEFINE_string("output", "results.json", "Where to write the JSON results.")
flags.DEFINE_string("markdown", None, "Where to write the markdown table (default: output with .md).")
flags.DEFINE_integer("batch_size", 8, "Rows per compiled scoring / generation batch.")
flags.DEFINE_integer("max_len", None, "Longest scored sequence (default: the model's max_seq_len).")
flags.DEFINE_integer("seed", 0, "Seed for few-shot sampling and generation.")
_OPT = EvalOptions()  # the flags' defaults are the options' own
flags.DEFINE_integer("gsm8k_samples", _OPT.gsm8k_samples,
                     "k for GSM8K maj1@k (1: greedy; the paper: 100).")
flags.DEFINE_float("gsm8k_temperature", _OPT.gsm8k_temperature,
                   "Sampling temperature when gsm8k_samples > 1.")
flags.DEFINE_integer("code_samples", _OPT.code_samples,
                     "Samples per HumanEval/MBPP problem (n of pass@k).")
flags.DEFINE_float("code_temperature", _OPT.code_temperature,
                   "Code sampling temperature (default: greedy if n=1, else 0.1).")
flags.DEFINE_integer("max_gen_tokens", _OPT.max_gen_tokens,
                     "Override every generative task's max new tokens.")
flags.DEFINE_integer("sandbox_workers", _OPT.sandbox_workers, "Generated programs run at once.")
flags.DEFINE_float("sandbox_timeout_s", _OPT.sandbox_timeout_s,
                   "Wall-clock limit per generated program.")
flags.DEFINE_string("perplexity_corpus", _OPT.perplexity_corpus,
                    "For the perplexity task: 'embedded', a corpus root or a training config "
                    ".py file (path.py[:arg]); scores that data's held-out split.")
flags.DEFINE_integer("position_bucket", _OPT.position_bucket,
                     "long_perplexity: width in tokens of each position bucket.")
flags.DEFINE_list("passkey_lengths", None, "passkey: prompt lengths in tokens (default: 1/4, "
                  "1/2 and all of the scored length).")
flags.DEFINE_list("passkey_depths", [str(d) for d in _OPT.passkey_depths],
                  "passkey: depths of the key in the filler, 0 (first) to 1 (last).")
flags.DEFINE_integer("passkey_samples", _OPT.passkey_samples, "passkey: keys per length and depth.")
flags.DEFINE_string("chat_template", None, "Render prompts with this chat template (alpaca, llama2, "
                    "chatml or a tokenizer_config.json), as lm-eval's --apply_chat_template.")
flags.DEFINE_integer("math_samples", _OPT.math_samples,
                     "k for MATH maj1@k (1: greedy; the paper: 256).")
flags.DEFINE_float("math_temperature", _OPT.math_temperature,
                   "Sampling temperature when math_samples > 1.")
flags.DEFINE_integer("math_max_new_tokens", _OPT.math_max_new_tokens,
                     "Tokens generated per MATH solution.")
flags.DEFINE_string("toxicity_scorer", None, "realtoxicityprompts' scorer: 'perspective' (Google "
                    "Perspective API, needs --perspective_api_key; the only network use) or a "
                    "local HF sequence-classification checkpoint directory.")
flags.DEFINE_string("toxicity_label", _OPT.toxicity_label,
                    "The toxic class of the local classifier (label name or index).")
flags.DEFINE_integer("toxicity_max_new_tokens", _OPT.toxicity_max_new_tokens,
                     "Tokens generated per RealToxicityPrompts prompt (the paper: 20).")
flags.DEFINE_integer("toxicity_batch_size", _OPT.toxicity_batch_size,
                     "Continuations per local toxicity classifier batch.")
flags.DEFINE_string("perspective_api_key", None, "Perspective API key (--toxicity_scorer="
                    "perspective).")
flags.DEFINE_string("perspective_api_url", _OPT.perspective_api_url, "Perspective API base URL.")
flags.DEFINE_float("perspective_qps", _OPT.perspective_qps, "Perspective requests per second.")
flags.DEFINE_integer("perspective_retries", _OPT.perspective_retries,
                     "Retries of a Perspective request answered 429 or 5xx.")
flags.DEFINE_integer("max_seq_len", None, "Score up to this many positions, past the checkpoint's "
                     "max_seq_len if need be (a run option, for long-context tasks).")
flags.DEFINE_string("truthfulqa_judge", None, "truthfulqa_gen: local checkpoint folder of the "
                    "truthfulness judge (GPT-judge); scores 'truthful' (default: not computed).")
flags.DEFINE_string("truthfulqa_info_judge", None, "truthfulqa_gen: local checkpoint folder of "
                    "the informativeness judge (GPT-info); with --truthfulqa_judge scores "
                    "'truthful*informative'.")
_OPTION_FLAGS = ("gsm8k_samples", "gsm8k_temperature", "code_samples", "code_temperature",
                 "max_gen_tokens", "sandbox_workers", "sandbox_timeout_s", "perplexity_corpus",
                 "position_bucket", "passkey_lengths", "passkey_depths", "passkey_samples",
                 "chat_template", "math_samples", "math_temperature", "math_max_new_tokens",
                 "toxicity_scorer", "toxicity_label", "toxicity_max_new_tokens",
                 "toxicity_batch_size", "perspective_api_key", "perspective_api_url",
                 "perspective_qps", "perspective_retries",
                 "truthfulqa_judge", "truthfulqa_info_judge")
flags.DEFINE_bool("log_samples", False, "Keep per-example predictions in the JSON.")
flags.DEFINE_string("lm_eval_output", None, "Also write the results alone in lm-evaluation-"
                    "harness's results shape (the JSON's 'lm_eval' key) to this file.")


def main(argv):
    """Parse flags, load the model, run the tasks, write JSON + markdown."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {list(argv[1:])}")
    if not FLAGS["verbosity"].present:  # Quiet orbax/JAX INFO lines unless asked (-v 0).
        logging.set_verbosity(logging.WARNING)
    for name in ("checkpoint", "tasks"):
        if not getattr(FLAGS, name):
            raise app.UsageError(f"--{name} is required")
    # Before anything touches a JAX backend: join the job, as training does.
    info = placement.join_job(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    specs = parse_task_list(FLAGS.tasks, FLAGS.num_fewshot)
    options = EvalOptions(**{name: FLAGS[name].value for name in _OPTION_FLAGS})
    with user_errors():
        mesh = placement.parse_mesh(FLAGS.mesh)
        rules = sharding.make_rules(FLAGS.mesh_rules)
    needs_data = any(t.needs_data and not (t.name == "perplexity" and FLAGS.perplexity_corpus)
                     for t, _ in specs)
    if needs_data and not FLAGS.data_dir:
        raise app.UsageError("--data_dir is required (one folder of data files per task)")
    check_limit(FLAGS.limit)
    check_batch_size(FLAGS.batch_size)
    if any(t.name == "realtoxicityprompts" for t, _ in specs):
        check_scorer_options(options)  # no scorer: a ConfigError before the model loads
    md_path = FLAGS.markdown or os.path.splitext(FLAGS.output)[0] + ".md"
    check_output_file(FLAGS.output, "output")  # before the model is loaded, not after the run
    check_output_file(md_path, "markdown" if FLAGS.markdown else "output")
    if FLAGS.lm_eval_output:
        check_output_file(FLAGS.lm_eval_output, "lm_eval_output")
    with user_errors():  # a checkpoint or tokenizer that cannot be used
        tokenizer, tok_path = checkpoint_tokenizer(FLAGS.checkpoint, FLAGS.tokenizer)
        # Unscanned: the generation tasks' decode loop runs unrolled layers (engine.py).
        overrides = {"attention_impl": FLAGS.attention_impl, "scan_layers": False}
        if FLAGS.max_seq_len:
            overrides["max_seq_len"] = FLAGS.max_seq_len
        if FLAGS.dtype:
            overrides["dtype"] = FLAGS.dtype
        # Straight onto the mesh: each process reads only its devices' shards.
        config, params = from_pretrained(FLAGS.checkpoint, dtype=FLAGS.dtype,
                                         config_overrides=overrides, mesh=mesh, rules=rules)
        check_tokenizer_fits(tokenizer, config.vocab_size, f"checkpoint {FLAGS.checkpoint}")
    if info.process_count > 1:
        print(f"process {info.process_index} of {info.process_count}: read "
              f"{READ_STATS.bytes} checkpoint bytes in {READ_STATS.blocks} blocks for "
              f"{info.local_device_count} of {info.device_count} devices", file=sys.stderr)
    num_params = count_params(config)
    ctx = build_context(config, params, tokenizer, mesh=mesh, rules=rules,
                        batch_size=FLAGS.batch_size, max_len=FLAGS.max_len, seed=FLAGS.seed,
                        options=options)
    del params
    meta = {"checkpoint": os.path.abspath(FLAGS.checkpoint), "tokenizer": os.path.abspath(tok_path),
            "num_params": num_params, "paper_size": paper_results.nearest_size(num_params),
            "config": config.to_dict(), "limit": FLAGS.limit, "seed": FLAGS.seed}

    def save(results):
        if info.process_index != 0:  # every process scores; process 0 writes
            return
        lm_doc = lm_eval_results.document(
            results, model_args=f"checkpoint={meta['checkpoint']},tokenizer={meta['tokenizer']}",
            limit=FLAGS.limit, batch_size=FLAGS.batch_size, seed=FLAGS.seed)
        report.write_json({"model": meta, "results": results, "lm_eval": lm_doc}, FLAGS.output)
        if FLAGS.lm_eval_output:
            report.write_json(lm_doc, FLAGS.lm_eval_output)
        atomic_write(md_path, (report.markdown_table(results, num_params) + "\n").encode("utf-8"))

    results = evaluate(ctx, specs, FLAGS.data_dir or "", limit=FLAGS.limit,
                       keep_predictions=FLAGS.log_samples, on_result=save)
    if info.process_index == 0:
        print(report.markdown_table(results, num_params))
        print(f"\nwrote {FLAGS.output} and {md_path}")
    return 0


def run():
    """Console entry point."""
    run_cli(main, cpu_preset=True)


if __name__ == "__main__":
    run()
