"""Every CLI on the bad inputs of issue 16 (items 3, 4, 5, 7): each exits 2 with one
``error:`` line that names the thing and the fix, and no traceback; nothing the
user keeps is written, cut or deleted on the way."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import pytest

import llama_jax
from llama_jax.convert import ConversionError
from llama_jax.data.tokenizer import train_tokenizer
from llama_jax.errors import EXIT_OK, EXIT_USER_ERROR
from llama_jax.model import LlamaConfig, init_params

REPO = Path(__file__).resolve().parents[1]
LONG_PROMPT = "word " * 100


def _read_only_folder(tmp: Path) -> Path | None:
    """A folder this process cannot write: a chmod-ed one, or (as root, whom chmod does
    not stop) a read-only mount such as /sys; None when there is none."""
    ro = tmp / "read_only"
    ro.mkdir(exist_ok=True)
    ro.chmod(0o555)
    for folder in (ro, Path("/sys"), Path("/proc/sys")):
        try:
            tempfile.TemporaryFile(dir=folder).close()
        except OSError:
            return folder
    return None


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """A tiny orbax checkpoint with its tokenizer, bad tokenizer files, an empty eval
    file, bad config files and a file where folders are expected."""
    root = tmp_path_factory.mktemp("faults")
    cfg = LlamaConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=384,
                      multiple_of=32, max_seq_len=64)
    tok = train_tokenizer([Path(json.__file__)], str(root / "tok"), vocab_size=384)
    llama_jax.save_pretrained(cfg, init_params(cfg, jax.random.key(0)), root / "ckpt",
                              tokenizer=tok)
    (root / "empty.model").write_bytes(b"")
    (root / "random.model").write_bytes(os.urandom(2048))
    (root / "data" / "boolq").mkdir(parents=True)
    (root / "data" / "boolq" / "dev.jsonl").write_bytes(b"")
    (root / "a_file").write_text("not a folder\n")
    (root / "syntax.py").write_text("def get_config(:\n    return None\n")
    (root / "no_get_config.py").write_text("CONFIG = {}\n")
    (root / "raising.py").write_text("def get_config(arg=None):\n    return {}['size']\n")
    (root / "empty_workdir").mkdir()
    return root


def _cases(p: Path):
    """id -> (argv after ``python -m``, text the error line must hold)."""
    ckpt, tok = p / "ckpt", p / "tok.model"
    gen = ["llama_jax.generate", f"--checkpoint={ckpt}", "--max_new_tokens=4"]
    ev = ["llama_jax.eval", f"--checkpoint={ckpt}", f"--data_dir={p / 'data'}", "--tasks=boolq",
          f"--output={p / 'results.json'}"]
    train = ["llama_jax.train", f"--workdir={p / 'w'}"]
    ro = _read_only_folder(p)
    cases = {
        # train: config files and workdirs
        "train-config-syntax-error": (train + [f"--config={p / 'syntax.py'}"],
                                      "syntax.py line 1: invalid syntax (a syntax error); fix"),
        "train-config-no-get_config": (train + [f"--config={p / 'no_get_config.py'}"],
                                       "no_get_config.py defines no get_config()"),
        "train-config-get_config-raises": (train + [f"--config={p / 'raising.py'}:7b"],
                                           "get_config('7b') failed (KeyError: 'size')"),
        "train-config-missing-file": (train + [f"--config={p / 'nope.py'}"],
                                      "nope.py does not exist; pass a config file"),
        "train-config-not-given": (train, "--config is required"),
        "train-workdir-is-a-file": (["llama_jax.train", "--config=configs/tiny.py",
                                     f"--workdir={p / 'a_file'}"], "a_file is a file, not a folder"),
        "train-workdir-under-a-file": (["llama_jax.train", "--config=configs/tiny.py",
                                        f"--workdir={p / 'a_file' / 'w'}"],
                                       "a_file is a file, not a folder"),
        # eval
        "eval-empty-data-file": (ev, "boolq/dev.jsonl: holds no records (empty file)"),
        "eval-limit-0": (ev + ["--limit=0"], "--limit=0 must be an integer >= 1"),
        "eval-limit-negative": (ev + ["--limit=-3"], "--limit=-3 must be an integer >= 1"),
        "eval-batch-size-0": (ev + ["--batch_size=0"], "--batch_size=0 must be an integer >= 1"),
        "eval-output-in-missing-folder": (ev + [f"--output={p / 'no_such' / 'r.json'}"],
                                          "no_such does not exist; create it"),
        "eval-tokenizer-0-bytes": (ev + [f"--tokenizer={p / 'empty.model'}"],
                                   "empty.model is not a SentencePiece model"),
        "eval-tokenizer-random-bytes": (ev + [f"--tokenizer={p / 'random.model'}"],
                                        "random.model is not a SentencePiece model"),
        # generate
        "generate-tokenizer-0-bytes": (gen + [f"--tokenizer={p / 'empty.model'}", "--prompt=hi"],
                                       "empty.model is not a SentencePiece model"),
        "generate-tokenizer-random-bytes": (gen + [f"--tokenizer={p / 'random.model'}",
                                                   "--prompt=hi"],
                                            "random.model is not a SentencePiece model"),
        "generate-empty-prompt-nobos": (gen + ["--prompt=", "--nobos"],
                                        "has no tokens without BOS (--nobos)"),
        "generate-max-new-tokens-0": (gen + ["--prompt=hi", "--max_new_tokens=0"],
                                      "--max_new_tokens=0 must be an integer >= 1"),
        "generate-batch-size-0": (gen + ["--prompt=hi", "--batch_size=0"],
                                  "--batch_size=0 must be an integer >= 1"),
        "generate-output-in-missing-folder": (gen + ["--prompt=hi",
                                                     f"--output={p / 'no_such' / 'o.jsonl'}"],
                                              "no_such does not exist; create it"),
        "generate-prompt-longer-than-context": (gen + [f"--prompt={LONG_PROMPT}"],
                                                "> the model's max_seq_len=64. Shorten the prompt"),
        # data, plot, convert
        "corpus-root-is-a-file": (["llama_jax.data.corpus", f"--root={p / 'a_file'}"],
                                  "a_file is a file, not a folder; pass a folder with --root"),
        "corpus-vocab-size-0": (["llama_jax.data.corpus", f"--root={p / 'corpus'}",
                                 "--vocab_size=0"], "vocab_size=0 must be an int >= 260"),
        "tokenizer-vocab-size-0": (["llama_jax.data.tokenizer", f"--sources={p / 'syntax.py'}",
                                    "--vocab_size=0", f"--out={p / 'tok2'}"],
                                   "vocab_size=0 must be an int >= 260"),
        "plot-missing-workdir": (["llama_jax.plot", str(p / "nowhere")], "no metrics at"),
        "plot-empty-workdir": (["llama_jax.plot", str(p / "empty_workdir")], "no metrics at"),
        "convert-dst-contains-src": (["llama_jax.convert", f"--src={ckpt}", f"--dst={p}",
                                      "--dst_format=hf", "--overwrite"],
                                     "contains --src=" + str(ckpt)),
        "convert-dst-inside-src": (["llama_jax.convert", f"--src={ckpt}",
                                    f"--dst={ckpt / 'params' / 'hf'}", "--dst_format=hf",
                                    "--overwrite"], "lies inside --src="),
        "convert-dst-under-a-file": (["llama_jax.convert", f"--src={ckpt}",
                                      f"--dst={p / 'a_file' / 'hf'}", "--dst_format=hf"],
                                     "a_file is a file, not a folder"),
    }
    if ro is not None:
        cases["train-workdir-read-only"] = (["llama_jax.train", "--config=configs/tiny.py",
                                             f"--workdir={ro / 'w'}"], "is not writable")
        cases["convert-dst-read-only"] = (["llama_jax.convert", f"--src={ckpt}",
                                           f"--dst={ro / 'hf'}", "--dst_format=hf"],
                                          "is not writable")
    return cases, tok


CASE_IDS = sorted(_cases(Path(tempfile.gettempdir()))[0])


def _run(argv, **env):
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True,
                          cwd=REPO, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", "LLAMA_JAX_TRACEBACK": "",
                               "XLA_FLAGS": "--xla_force_host_platform_device_count=1", **env})


def _tree(folder: Path) -> dict[str, int]:
    return {str(f.relative_to(folder)): f.stat().st_size for f in folder.rglob("*") if f.is_file()}


@pytest.mark.parametrize("case", CASE_IDS)
def test_bad_input_is_one_line_exit_2(case, fx):
    cases, _ = _cases(fx)
    if case not in cases:
        pytest.skip("no read-only folder on this machine")
    argv, want = cases[case]
    before = _tree(fx / "ckpt")
    done = _run(argv)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == EXIT_USER_ERROR, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
    assert want in lines[0], lines[0]
    assert _tree(fx / "ckpt") == before  # the source checkpoint is whole
    assert not (fx / "no_such").exists() and not (fx / "results.json").exists()
    assert done.stdout == ""  # nothing was generated or scored


def test_truncate_keeps_the_last_tokens_and_says_so(fx, tmp_path):
    out = tmp_path / "o.jsonl"
    done = _run(["llama_jax.generate", f"--checkpoint={fx / 'ckpt'}", "--max_new_tokens=4",
                 f"--prompt={LONG_PROMPT}", "--truncate", f"--output={out}"])
    assert done.returncode == EXIT_OK, done.stderr[-3000:]
    assert "truncated 1 prompt(s) to their last 60 tokens" in done.stderr
    assert [r["prompt"] for r in map(json.loads, out.read_text().splitlines())] == [LONG_PROMPT]


def test_save_pretrained_under_a_file_writes_nothing(fx, tmp_path):
    config, params = llama_jax.from_pretrained(fx / "ckpt")
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(ConversionError, match=r"blocker is a file, not a folder"):
        llama_jax.save_pretrained(config, params, blocker / "out", format="hf")
    with pytest.raises(ConversionError, match=r"exists and is not a directory"):
        llama_jax.save_pretrained(config, params, blocker, format="hf", overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["blocker"] and blocker.read_text() == "x"
