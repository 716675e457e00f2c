"""One exit-status convention for every CLI (`llama_jax.cli`): a user error is
one ``error:`` line on stderr and exit 2, no traceback unless asked; a
diverged run exits 1 with its one line; a bug keeps its traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from absl import app, flags

from llama_jax import cli
from llama_jax.errors import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USER_ERROR,
    ConfigError,
    ConversionError,
    DataError,
    NonFiniteLossError,
)

REPO = Path(__file__).resolve().parents[1]


def _cases(tmp: Path):
    """(id, argv after ``python -m``, text the error line must hold): cheap bad inputs
    that every CLI rejects before loading a model."""
    missing = tmp / "missing"
    a_file = tmp / "a_file"
    return {
        "train-unknown-size": (["llama_jax.train", "--config=configs/llama.py:8b",
                                f"--workdir={tmp / 'w'}"], "unknown model size '8b'"),
        "train-unknown-key": (["llama_jax.train", "--config=configs/tiny.py", f"--workdir={tmp}",
                               "--config.train.stpes=3"], "unknown config key 'train.stpes'"),
        "train-no-workdir": (["llama_jax.train", "--config=configs/tiny.py"], "--workdir is required"),
        "eval-unknown-task": (["llama_jax.eval", f"--checkpoint={missing}", f"--data_dir={tmp}",
                               "--tasks=no_such_task"], "unknown task 'no_such_task'"),
        "eval-bad-mesh": (["llama_jax.eval", f"--checkpoint={missing}", f"--data_dir={tmp}",
                           "--tasks=boolq", "--mesh=1,x"], "expected four comma-separated integers"),
        "eval-bad-option": (["llama_jax.eval", f"--checkpoint={missing}", f"--data_dir={tmp}",
                             "--tasks=gsm8k", "--gsm8k_samples=0"], "gsm8k_samples=0 must be"),
        "eval-missing-checkpoint": (["llama_jax.eval", f"--checkpoint={missing}",
                                     f"--data_dir={tmp}", "--tasks=boolq"], str(missing)),
        "generate-missing-checkpoint": (["llama_jax.generate", f"--checkpoint={missing}",
                                         "--prompt=hi"], str(missing)),
        "generate-bad-flag": (["llama_jax.generate", f"--checkpoint={missing}", "--prompt=hi",
                               "--max_new_tokens=many"], "max_new_tokens"),
        "convert-missing-src": (["llama_jax.convert", f"--src={missing}", f"--dst={tmp / 'out'}",
                                 "--dst_format=hf"], str(missing)),
        "plot-missing-workdir": (["llama_jax.plot", str(missing)], "no metrics"),
        "corpus-root-is-a-file": (["llama_jax.data.corpus", f"--root={a_file}"], str(a_file)),
        "tokenizer-missing-source": (["llama_jax.data.tokenizer", f"--sources={missing}",
                                      "--vocab_size=300", f"--out={tmp / 'tok'}"], str(missing)),
    }


CASE_IDS = sorted(_cases(Path("/tmp")))


def _run(argv, tmp_path, **env):
    (tmp_path / "a_file").write_text("not a folder\n")
    return subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True,
                          cwd=REPO, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", "LLAMA_JAX_TRACEBACK": "",
                               "XLA_FLAGS": "--xla_force_host_platform_device_count=1", **env})


@pytest.mark.parametrize("case", CASE_IDS)
def test_every_cli_user_error_is_one_line_and_exit_2(case, tmp_path):
    argv, want = _cases(tmp_path)[case]
    done = _run(argv, tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == EXIT_USER_ERROR, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
    assert want in lines[0]


def test_traceback_env_shows_the_traceback(tmp_path):
    argv, want = _cases(tmp_path)["eval-unknown-task"]
    done = _run(argv, tmp_path, LLAMA_JAX_TRACEBACK="1")
    assert done.returncode == EXIT_USER_ERROR
    assert "Traceback" in done.stderr and "ConfigError" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: unknown task")


# ----- the mapping itself, in process --------------------------------------------------
def _raise(error):
    def fn():
        raise error
    return fn


@pytest.mark.parametrize("error,status", [
    (ConfigError("bad key\nsecond line"), EXIT_USER_ERROR),
    (DataError("bad file"), EXIT_USER_ERROR),
    (ConversionError("bad checkpoint"), EXIT_USER_ERROR),
    (FileNotFoundError(2, "No such file or directory", "/x/y"), EXIT_USER_ERROR),
    (app.UsageError("--flag is required"), EXIT_USER_ERROR),
    (flags.IllegalFlagValueError("flag --n=x: not an int"), EXIT_USER_ERROR),
    (NonFiniteLossError("loss is NaN at step 7; last good checkpoint is step 5"), EXIT_FAILURE),
])
def test_exit_status_maps_each_error_to_one_line(error, status, capsys, monkeypatch):
    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
    assert cli.exit_status(_raise(error)) == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    first = str(error).splitlines()[0] if str(error) else ""
    assert first in err
    if "second line" in str(error):
        assert err == "error: bad key second line\n"


def test_exit_status_passes_return_values_and_keeps_bugs_loud(capsys):
    assert cli.exit_status(lambda: None) == EXIT_OK
    assert cli.exit_status(lambda: 3) == 3
    with pytest.raises(KeyError):  # an internal error is not dressed up as the user's
        cli.exit_status(_raise(KeyError("x")))
    with pytest.raises(ValueError):  # a plain ValueError is a bug unless a CLI says otherwise
        cli.exit_status(_raise(ValueError("x")))
    assert capsys.readouterr().err == ""


def test_user_errors_turns_a_value_error_into_exit_2(capsys):
    def fn():
        with cli.user_errors():
            raise ValueError("mesh='1,x': expected four integers")
    assert cli.exit_status(fn) == EXIT_USER_ERROR
    assert capsys.readouterr().err == "error: mesh='1,x': expected four integers\n"

    @cli.handle_errors
    def main(argv):
        raise DataError(f"{argv[0]} does not exist")
    assert main(["/data"]) == EXIT_USER_ERROR
    assert capsys.readouterr().err == "error: /data does not exist\n"


def test_traceback_on_request(capsys, monkeypatch):
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    assert cli.exit_status(_raise(DataError("bad file"))) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "Traceback" in err and err.endswith("error: bad file\n")
    # Before absl parses the flags (e.g. the train CLI's override check), --verbosity is read
    # from argv.
    assert cli._verbosity_in(["prog", "--verbosity=1"]) == 1
    assert cli._verbosity_in(["prog", "-v", "2", "--config=x"]) == 2
    assert cli._verbosity_in(["prog", "--v=-1"]) == -1 and cli._verbosity_in(["prog"]) == 0
