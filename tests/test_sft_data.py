"""Finetuning data: response-only loss, packing, and bad input.

- Masking: the gradient of the step's loss with respect to the logits is
  exactly zero at every prompt, template and padding position and non-zero
  at response positions; the counted tokens are the response tokens (their
  text is the assistant replies, counted independently per example).
- Packing: a packed row's logits equal each example's logits computed alone
  (so no example attends to another and positions restart), and the packed
  loss equals the unpacked computation.
- Gradient accumulation divides by the global batch's response-token count.
- Bad input: each a DataError / ConfigError naming the line, or a counted skip.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import sft_helpers as sh
import train_helpers as th

from llama_jax import sharding as shd
from llama_jax.chat.templates import get_template
from llama_jax.data.sft import Example, SFTIterator, encode_example, fit_examples, read_jsonl
from llama_jax.data.sft.readers import ReadStats
from llama_jax.data.tokenizer import Tokenizer
from llama_jax.errors import ConfigError, DataError
from llama_jax.model.config import LlamaConfig
from llama_jax.model.llama import Llama
from llama_jax.train.sft_data import load_examples
from llama_jax.train.step import global_batch, init_train_state, make_train_step, masked_nll_sums

CFG = LlamaConfig(dim=32, n_layers=2, n_heads=4, vocab_size=th.VOCAB, multiple_of=16,
                  max_seq_len=128, dtype="float32")
SEQ = 128


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return th.make_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def tok(root):
    return Tokenizer.load(root / "tok.model")


@pytest.fixture(scope="module")
def examples(tok):
    template = get_template("llama2", tokenizer=tok)
    encoded = [encode_example(tok, template, Example(m, f"x:{i}"))
               for i, m in enumerate(sh.conversations(24))]
    return fit_examples(encoded, SEQ)


@pytest.fixture(scope="module")
def params():
    return Llama(CFG).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]


def _batch(examples, n_rows=4, seed=0):
    it = SFTIterator(examples, seq_len=SEQ, global_batch_size=n_rows, seed=seed, pad_id=0)
    return next(it)


def _logits(params, batch):
    return Llama(CFG).apply({"params": jax.tree.map(jnp.asarray, params)},
                            jnp.asarray(batch["inputs"]),
                            positions=jnp.asarray(batch["positions"]),
                            segment_ids=jnp.asarray(batch["segment_ids"]))


def test_gradient_is_zero_off_responses_and_counts_are_response_tokens(tok, examples, params):
    b = _batch(examples)
    logits = _logits(params, b)
    jb = {k: jnp.asarray(v) for k, v in b.items()}

    def loss(lg):
        total, count = masked_nll_sums(lg, jb)
        return total / count

    g = np.asarray(jax.grad(loss)(logits))  # [batch, len, vocab]
    per_pos = np.abs(g).max(axis=-1)
    off = b["loss_mask"] == 0
    assert off.sum() > 0 and (~off).sum() > 0
    assert np.all(per_pos[off] == 0.0)  # exactly zero, not small
    assert np.all(per_pos[~off] > 0)
    _, count = masked_nll_sums(logits, jb)
    # Independently: per packed example, its response tokens are the targets whose
    # text is the assistant replies plus the end-of-turn eos.
    n_resp = 0
    for r in range(b["inputs"].shape[0]):
        for s in set(b["segment_ids"][r]) - {0}:
            at = b["segment_ids"][r] == s
            tgt = b["targets"][r][at][b["loss_mask"][r][at] == 1]
            n_resp += len(tgt)
            assert tok.eos_id in tgt.tolist()
    assert float(count) == n_resp == b["loss_mask"].sum()
    first = examples[0]
    msgs = sh.conversations(24)[0]
    reply = tok.decode(first.ids[first.mask == 1].tolist())
    want = " ".join(m["content"] for m in msgs if m["role"] == "assistant")
    assert reply.strip() == want


def test_train_on_last_turn_only(tok):
    msgs = sh.conversations(2)[1]  # two assistant turns
    assert sum(m["role"] == "assistant" for m in msgs) == 2
    t = get_template("llama2", tokenizer=tok)
    every = encode_example(tok, t, Example(msgs, "x:1"), "all")
    last = encode_example(tok, t, Example(msgs, "x:1"), "last")
    assert np.array_equal(every.ids, last.ids)
    assert tok.decode(last.ids[last.mask == 1].tolist()).strip() == msgs[-1]["content"]
    assert every.mask.sum() > last.mask.sum()


def test_packing_isolates_examples_and_equals_unpacked_loss(examples, params):
    b = _batch(examples)
    assert b["segment_ids"].max() >= 3  # several examples per row
    logits = np.asarray(_logits(params, b))
    total, count = masked_nll_sums(jnp.asarray(logits), {k: jnp.asarray(v) for k, v in b.items()})
    ref_total, ref_count = 0.0, 0.0
    for r in range(b["inputs"].shape[0]):
        for s in sorted(set(b["segment_ids"][r]) - {0}):
            at = np.flatnonzero(b["segment_ids"][r] == s)
            assert np.array_equal(b["positions"][r][at], np.arange(len(at)))  # restart
            alone = {"inputs": b["inputs"][r][at][None], "positions": np.arange(len(at))[None],
                     "segment_ids": np.ones((1, len(at)), np.int32)}
            lg = np.asarray(_logits(params, alone))[0]  # [n, vocab]
            np.testing.assert_allclose(logits[r][at], lg, rtol=2e-5, atol=2e-5)
            lz = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
            nll = lz - lg[np.arange(len(at)), b["targets"][r][at]]
            m = b["loss_mask"][r][at]
            ref_total += float((nll * m).sum())
            ref_count += float(m.sum())
    assert float(count) == ref_count
    np.testing.assert_allclose(float(total), ref_total, rtol=1e-5)


def test_grad_accumulation_divides_by_the_global_response_count(examples):
    """Rows with very different response counts: k=4 microbatches == one batch."""
    mesh = shd.make_mesh((8, 1, 1, 1))
    tx = optax.sgd(1.0)
    batch = _batch(examples, n_rows=32)
    batch["loss_mask"][:8] = 0  # microbatch 0's rows (0, 4, ...) differ from the rest
    batch["loss_mask"][1::4] *= 0
    counts = [batch["loss_mask"][j::4].sum() for j in range(4)]
    assert len(set(counts)) > 1
    out = []
    for k in (1, 4):
        state, shardings = init_train_state(CFG, tx, mesh, shd.DEFAULT_RULES, jax.random.key(0))
        step = make_train_step(CFG, tx, mesh, shd.DEFAULT_RULES, shardings, grad_accum_steps=k)
        gb = global_batch(mesh, {k2: batch[k2] for k2 in
                                 ("inputs", "targets", "positions", "segment_ids", "loss_mask")})
        state, m = step(state, gb)
        out.append((jax.device_get(state.params), m))
    assert float(out[0][1]["num_tokens"]) == float(out[1][1]["num_tokens"]) == batch["loss_mask"].sum()
    np.testing.assert_allclose(float(out[0][1]["loss"]), float(out[1][1]["loss"]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(out[0][0]), jax.tree.leaves(out[1][0]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_iterator_is_deterministic_and_resumes_exactly(examples):
    def make():
        return SFTIterator(examples, seq_len=SEQ, global_batch_size=4, seed=3, pad_id=0)

    a = make()
    ref = [next(a) for _ in range(12)]  # several epochs
    b = make()
    for _ in range(5):
        next(b)
    state = json.loads(json.dumps(b.get_state()))
    c = make()
    c.set_state(state)
    for want in ref[5:]:
        got = next(c)
        assert all(np.array_equal(got[k], want[k]) for k in want)
    # Two processes each hold their half of the same global batch.
    halves = [next(SFTIterator(examples, seq_len=SEQ, global_batch_size=4, seed=3, pad_id=0,
                               process_index=p, process_count=2)) for p in (0, 1)]
    assert np.array_equal(np.concatenate([h["inputs"] for h in halves]), ref[0]["inputs"])


def _write(tmp_path, lines, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return p


OK = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}


@pytest.mark.parametrize("fmt, bad, match", [
    ("alpaca", {"instruction": "x"}, r"d.jsonl:2: a alpaca record needs the fields "
                                     r"\['instruction', 'output'\]; missing \['output'\]"),
    ("flan", {"inputs": "x", "target": "y"}, r"d.jsonl:2: .*missing \['targets'\]"),
    ("chat", {"messages": [{"role": "user", "content": "x"}]}, r"d.jsonl:2: .*no assistant turn"),
    ("chat", {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant",
                                                                "content": "y"}]},
     r"d.jsonl:2: message 0 has role 'robot'; roles are system, user, assistant"),
    ("chat", "{not json", r"d.jsonl:2: not valid JSON"),
    ("chat", {"text": "x"}, r"d.jsonl:2: a chat record needs a 'messages' list"),
])
def test_bad_lines_name_file_and_line_or_are_counted(tmp_path, fmt, bad, match):
    good = {"alpaca": {"instruction": "a", "output": "b"}, "flan": {"inputs": "a", "targets": "b"},
            "chat": OK}[fmt]
    p = _write(tmp_path, [good, bad, good])
    with pytest.raises(DataError, match=match):
        list(read_jsonl(p, fmt))
    stats = ReadStats()
    got = list(read_jsonl(p, fmt, on_error="skip", stats=stats))
    assert [e.where for e in got] == [f"{p}:1", f"{p}:3"]
    assert stats.read == 3 and sum(stats.skipped.values()) == 1


def test_config_errors_and_counts(root, tmp_path):
    data = _write(tmp_path, [OK, {"messages": [{"role": "user", "content": "x"}]}])
    c = sh.sft_config(root, data)
    tokenizer = Tokenizer.load(root / "tok.model")
    c.data.sft.template = "no-such-template"
    with pytest.raises(ConfigError, match=r"data.sft.template='no-such-template'.*alpaca"):
        load_examples(c, tokenizer)
    c.data.sft.template = ""
    with pytest.raises(DataError, match=r"d.jsonl:2: the conversation has no assistant turn"):
        load_examples(c, tokenizer)
    c.data.sft.on_error = "skip"
    ex, reads, enc = load_examples(c, tokenizer)
    assert len(ex) == 1 and sum(reads.skipped.values()) == 1 and enc.examples == 1
    long = _write(tmp_path, [{"messages": [{"role": "user", "content": "q " * 5},
                                           {"role": "assistant", "content": "a " * 400}]}, OK],
                  "long.jsonl")
    c.data.sft.path = str(long)
    ex, _, enc = load_examples(c, tokenizer)
    assert enc.truncated == 1 and len(ex) == 2 and max(len(e.ids) for e in ex) == 129
    c.data.sft.too_long = "drop"
    ex, _, enc = load_examples(c, tokenizer)
    assert enc.dropped_too_long == 1 and len(ex) == 1
    alpaca = sh.write_alpaca(tmp_path / "a.jsonl", 4)
    c.data.sft.path, c.data.sft.format, c.data.sft.too_long = str(alpaca), "alpaca", "truncate"
    ex, _, _ = load_examples(c, tokenizer)
    text = tokenizer.decode(ex[0].ids.tolist())
    assert "### Instruction:" in text and "### Response:" in text  # the alpaca template
