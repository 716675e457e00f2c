"""Generation: KV-cache greedy equals full recompute, batching does not change
results, sampling filters, stop strings and EOS, and the generate CLI."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from eval_fixtures import ByteTokenizer

from llama_jax.convert.common import unstack_layers
from llama_jax.infer.engine import (
    Generator,
    SamplingConfig,
    generate_text,
    greedy_tokens,
    sample_logits,
)
from llama_jax.model import Llama, LlamaConfig, init_params

NEW = 10




@pytest.fixture(scope="module")
def model():
    cfg = LlamaConfig(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=384,
                      multiple_of=32, max_seq_len=64)
    params = init_params(cfg, jax.random.key(3))
    # A larger output scale gives peaked distributions, so argmax ties cannot occur.
    params["output"]["kernel"] = params["output"]["kernel"] * 20.0
    return cfg, params


@pytest.fixture(scope="module")
def generator(model):
    cfg, params = model
    return Generator(cfg, params, batch_size=8, prompt_buckets=(4, 16), chunk_size=4)


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(0)
    return [[1] + [int(t) for t in rng.integers(3, 300, n)] for n in (3, 11, 7, 15, 1)]


def _full_recompute_greedy(cfg, params, prompt, steps):
    """Greedy decoding by re-running the whole sequence each step (no cache)."""
    length = cfg.max_seq_len

    @jax.jit
    def next_token(tokens, n):
        segs = (jnp.arange(length) < n).astype(jnp.int32)[None]
        logits = Llama(cfg).apply({"params": params}, tokens, segment_ids=segs)
        return jnp.argmax(logits[0, n - 1])

    toks = list(prompt)
    for _ in range(steps):
        buf = np.zeros((1, length), np.int32)
        buf[0, :len(toks)] = toks
        toks.append(int(next_token(jnp.asarray(buf), len(toks))))
    return toks[len(prompt):]


def test_kv_cache_greedy_equals_full_recompute(model, generator, prompts):
    cfg, params = model
    out = generator.generate_tokens(prompts, max_new_tokens=NEW)
    for prompt, samples in zip(prompts, out, strict=True):
        assert samples[0] == _full_recompute_greedy(cfg, params, prompt, NEW)
    # Prefill once per prompt bucket used, decode loop once.
    assert generator.trace_count["decode"] == 1
    assert generator.trace_count["prefill"] <= 2


def test_unrolled_and_scanned_layers_decode_alike(model, generator, prompts):
    cfg, params = model
    assert cfg.scan_layers and not generator.config.scan_layers  # converted on the way in
    assert "layers_1" in generator.params and "layers" not in generator.params
    scanned = Generator(cfg, params, batch_size=8, prompt_buckets=(4, 16), chunk_size=4,
                        unroll_layers=False)
    assert scanned.config.scan_layers and "layers" in scanned.params
    assert (scanned.generate_tokens(prompts, max_new_tokens=NEW)
            == generator.generate_tokens(prompts, max_new_tokens=NEW))


def test_batched_left_padded_equals_one_by_one(generator, prompts):
    for s in (SamplingConfig(), SamplingConfig(temperature=1.0, top_k=50)):
        together = generator.generate_tokens(prompts, max_new_tokens=NEW, sampling=s,
                                             num_samples=2, seed=7)
        # Alone, a prompt lands in a smaller bucket (less or no left padding).
        alone = [generator.generate_tokens([p], max_new_tokens=NEW, sampling=s, num_samples=2,
                                           seed=7)[0] for p in prompts]
        assert together == alone
        reordered = generator.generate_tokens(prompts[::-1], max_new_tokens=NEW, sampling=s,
                                              num_samples=2, seed=7)
        assert reordered == together[::-1]
        if s.greedy:
            assert all(a == b for a, b in together)  # greedy samples are identical
        else:
            assert any(a != b for a, b in together)  # independent stream per sample
    other_seed = generator.generate_tokens(prompts, max_new_tokens=NEW, num_samples=2, seed=8,
                                           sampling=SamplingConfig(temperature=1.0, top_k=50))
    assert other_seed != together


def test_sampling_is_reproducible_per_row(generator, prompts):
    s = SamplingConfig(temperature=0.9, top_p=0.9)
    a = generator.generate_tokens(prompts, max_new_tokens=NEW, sampling=s, num_samples=3, seed=1)
    b = generator.generate_tokens(prompts[:2], max_new_tokens=NEW, sampling=s, num_samples=3,
                                  seed=1)
    assert a[:2] == b  # the other rows of the batch do not matter
    assert all(len(x) == NEW for per_prompt in a for x in per_prompt)


def test_greedy_tokens_are_argmax_ties_included():
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(64, 300)).astype(np.float32)
    logits[::3] = np.round(logits[::3])  # many ties: the first index wins, as in argmax
    logits[5, [7, 200]] = 99.0
    got = np.asarray(jax.jit(greedy_tokens)(jnp.asarray(logits)))
    np.testing.assert_array_equal(got, np.argmax(logits, axis=-1))
    assert got.dtype == np.int32 and got[5] == 7
    bf16 = jnp.asarray(logits, jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(greedy_tokens(bf16)), np.argmax(np.asarray(
        bf16.astype(jnp.float32)), axis=-1))


def test_sample_logits_filters():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = jnp.log(jnp.asarray(np.tile(probs, (4000, 1)), jnp.float32))
    keys = jax.random.split(jax.random.key(0), 4000)

    def support(cfg):
        return set(np.unique(np.asarray(sample_logits(logits, keys, cfg))).tolist())

    assert support(SamplingConfig()) == {0}
    assert support(SamplingConfig(temperature=1.0)) == {0, 1, 2, 3}
    assert support(SamplingConfig(temperature=1.0, top_k=2)) == {0, 1}
    assert support(SamplingConfig(temperature=1.0, top_p=0.7)) == {0, 1}    # 0.5 < 0.7 <= 0.8
    assert support(SamplingConfig(temperature=1.0, top_p=0.85)) == {0, 1, 2}
    assert support(SamplingConfig(temperature=1.0, top_p=0.01)) == {0}
    freq = np.bincount(np.asarray(sample_logits(logits, keys, SamplingConfig(1.0))), minlength=4)
    np.testing.assert_allclose(freq / 4000, probs, atol=0.03)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(temperature=1.0, top_p=0.0)


def test_stop_strings_and_eos(generator):
    tok = ByteTokenizer()
    base = generator.generate_tokens([tok.encode("Hello", bos=True)], max_new_tokens=NEW)[0][0]
    # EOS: pretend the 4th generated token is EOS; generation stops before it.
    out = generator.generate_tokens([tok.encode("Hello", bos=True)], max_new_tokens=NEW,
                                    eos_id=base[3])
    assert out[0][0] == base[:base.index(base[3])]
    # Stop string: the text is cut before the first occurrence.
    full = generate_text(generator, tok, ["Hello"], max_new_tokens=NEW)[0][0]
    printable = [ch for ch in full[2:] if ch.isprintable() and ch != "\ufffd"]
    if not printable:
        pytest.skip("the random model produced no printable character to stop on")
    stop = printable[0]
    cut = generate_text(generator, tok, ["Hello"], max_new_tokens=NEW, stop=[stop])[0][0]
    assert cut == full[:full.index(stop)]


def test_is_finished_stops_one_row_at_a_chunk_boundary(generator, prompts):
    full = generator.generate_tokens(prompts, max_new_tokens=NEW)
    seen = []

    def finished(prompt_index, toks):
        seen.append((prompt_index, len(toks)))
        return prompt_index == 1 and len(toks) >= 3

    out = generator.generate_tokens(prompts, max_new_tokens=NEW, is_finished=finished)
    # chunk_size=4: the host sees 4 tokens, stops row 1 there; the others run on.
    assert out[1][0] == full[1][0][:4]
    assert [o[0] for i, o in enumerate(out) if i != 1] == [f[0] for i, f in enumerate(full) if i != 1]
    assert (1, 4) in seen


def test_prompt_too_long_is_a_clear_error(generator):
    with pytest.raises(ValueError, match="max_seq_len"):
        generator.generate_tokens([[1] * 60], max_new_tokens=10)
    with pytest.raises(ValueError, match="empty"):
        generator.generate_tokens([[]], max_new_tokens=1)


@pytest.fixture(scope="module")
def spm_tok(tmp_path_factory):
    """A SentencePiece tokenizer trained on real text (the stdlib's json module)."""
    from llama_jax.data.tokenizer import train_tokenizer

    path = tmp_path_factory.mktemp("spm") / "tok"
    return train_tokenizer([pathlib.Path(json.__file__)], str(path), vocab_size=384)


def test_continuations_keep_their_leading_spaces(spm_tok):
    """SentencePiece drops a sequence's leading space; continuations must not."""
    from llama_jax.infer.engine import ContinuationDecoder

    for prompt, cont in (("def f():\n", "    return 1\n"), ("Q: capital?\nA:", " Paris")):
        p_ids = spm_tok.encode(prompt, bos=True)
        full = spm_tok.encode(prompt + cont, bos=True)
        assert full[:len(p_ids)] == p_ids
        assert spm_tok.decode(full[len(p_ids):]) != cont  # the naive decode loses a space
        assert ContinuationDecoder(spm_tok, [p_ids])(0, full[len(p_ids):]) == cont


def test_generate_cli(tmp_path, model, spm_tok):
    """`python -m llama_jax.generate` on an orbax checkpoint and a SentencePiece tokenizer."""
    import llama_jax

    cfg, params = model
    tok = spm_tok
    ckpt = tmp_path / "ckpt"
    llama_jax.save_pretrained(cfg, params, ckpt)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "The number 7"}) + "\n")
    out = tmp_path / "out.jsonl"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "llama_jax.generate", f"--checkpoint={ckpt}",
           f"--tokenizer={tok.path}", "--prompt=Hello", f"--prompts_file={prompts}",
           "--max_new_tokens=6", "--num_samples=2", "--temperature=0.7", f"--output={out}"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["prompt"], r["sample"]) for r in records] == [
        ("Hello", 0), ("Hello", 1), ("The number 7", 0), ("The number 7", 1)]
    assert all(isinstance(r["text"], str) for r in records)
    bad = subprocess.run([*cmd[:4], f"--prompts_file={tmp_path / 'missing.txt'}"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "missing.txt does not exist" in bad.stderr
    bad = subprocess.run([*cmd[:6], "--mesh=1,2"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("error: mesh shape [1, 2] must give")


@pytest.mark.parametrize("scan_layers", [True, False])
def test_samples_share_one_prefill(model, prompts, scan_layers):
    """n samples of a prompt prefill it once, and sample exactly as separate prefills do."""
    cfg, params = model
    cfg = cfg.replace(scan_layers=scan_layers)
    if not scan_layers:
        params = unstack_layers(params)
    sampling = SamplingConfig(temperature=1.0, top_k=50)
    # 16 rows on 8 devices: the 2 distinct prompts prefill in the smallest
    # batch the mesh splits (8 rows), not 16.
    shared = Generator(cfg, params, batch_size=16, prompt_buckets=(4, 16), chunk_size=4)
    every = Generator(cfg, params, batch_size=16, prompt_buckets=(4, 16), chunk_size=4,
                      share_prefill=False)
    kw = dict(max_new_tokens=NEW, sampling=sampling, num_samples=8, seed=5)
    got = shared.generate_tokens(prompts[:2], **kw)
    want = every.generate_tokens(prompts[:2], **kw)
    assert got == want
    assert len({tuple(s) for s in got[0]}) > 1  # the samples differ: a real sampling test
    assert (every.prefilled_rows, shared.prefilled_rows) == (16, 8)
    # Greedy samples of one prompt are its single greedy continuation.
    one = shared.generate_tokens(prompts[2:3], max_new_tokens=NEW, num_samples=16)[0]
    assert one == [shared.generate_tokens(prompts[2:3], max_new_tokens=NEW)[0][0]] * 16


def test_several_end_ids_each_stop_a_row(generator, prompts):
    """Llama 3 ends at <|end_of_text|> or <|eot_id|>: any id of `eos_id` stops a row."""
    free = generator.generate_tokens(prompts, max_new_tokens=NEW)
    ends = (free[0][0][2], free[1][0][3])  # ids the rows emit at steps 2 and 3
    out = generator.generate_tokens(prompts, max_new_tokens=NEW, eos_id=ends)
    for got, want in zip(out, free, strict=True):
        first = next((i for i, t in enumerate(want[0]) if t in ends), len(want[0]))
        assert got[0] == want[0][:first]
    assert len(out[0][0]) <= 2 and len(out[1][0]) <= 3
