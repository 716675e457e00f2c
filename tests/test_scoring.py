"""Scoring: log-likelihoods equal Hugging Face's, bucketing bounds compiles,
rolling / packed perplexity, mesh invariance."""

import numpy as np
import pytest

import llama_jax
from llama_jax import sharding
from llama_jax.eval.scoring import Scorer, default_buckets, pack_rows
from llama_jax.eval.tasks.base import EvalContext, encode_pair
from llama_jax.eval.tasks.multiple_choice import MCDoc, evaluate_multiple_choice
from llama_jax.model import LlamaConfig, init_params

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 260


class ByteTokenizer:
    """Bytes + 3 (pad 0, bos 1, eos 2): a stand-in with the Tokenizer interface."""

    bos_id, eos_id, pad_id, vocab_size = 1, 2, 0, 259

    def encode(self, text, bos=False, eos=False):
        return [1] * bos + [b + 3 for b in text.encode("utf-8")] + [2] * eos

    def decode(self, ids):
        return bytes(i - 3 for i in ids if i >= 3).decode("utf-8", errors="replace")


@pytest.fixture(scope="module")
def hf_model_dir(tmp_path_factory):
    """A random HF LlamaForCausalLM (GQA, large init std) saved with save_pretrained."""
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rms_norm_eps=1e-6, initializer_range=0.2, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval().float()
    path = tmp_path_factory.mktemp("hf_llama")
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="module")
def hf_scorer(hf_model_dir):
    config, params = llama_jax.from_pretrained(hf_model_dir[0])
    return Scorer(config, params, batch_size=8, buckets=(64, 128))


def _hf_score(model, context, continuation):
    """Summed log-prob and greedy flag of `continuation`, computed by HF in torch."""
    with torch.no_grad():
        ids = torch.tensor([list(context) + list(continuation)])
        logprobs = torch.log_softmax(model(ids).logits[0].double(), dim=-1)[:-1]
        targets = ids[0, 1:]
        n = len(continuation)
        lp = logprobs.gather(-1, targets[:, None])[:, 0][-n:].sum().item()
        greedy = bool((logprobs.argmax(-1)[-n:] == targets[-n:]).all())
    return lp, greedy


def _hf_greedy(model, context, n):
    toks = list(context)
    with torch.no_grad():
        for _ in range(n):
            toks.append(int(model(torch.tensor([toks])).logits[0, -1].argmax()))
    return toks[len(context):]


def test_loglikelihoods_match_hugging_face(hf_model_dir, hf_scorer):
    _, model = hf_model_dir
    rng = np.random.default_rng(0)
    requests = []
    for i in range(14):
        ctx = [int(t) for t in rng.integers(0, VOCAB, rng.integers(1, 90))]
        if i % 3 == 0:  # some continuations are the greedy ones
            cont = _hf_greedy(model, ctx, int(rng.integers(1, 4)))
        else:
            cont = [int(t) for t in rng.integers(0, VOCAB, rng.integers(1, 9))]
        requests.append((ctx, cont))
    results = hf_scorer.loglikelihood(requests)
    greedy_seen = 0
    for (ctx, cont), res in zip(requests, results, strict=True):
        ref_lp, ref_greedy = _hf_score(model, ctx, cont)
        assert res.logprob == pytest.approx(ref_lp, rel=1e-4)
        assert res.is_greedy == ref_greedy
        assert res.num_tokens == len(cont)
        greedy_seen += ref_greedy
    assert greedy_seen >= 4  # both branches of is_greedy were exercised


def test_multiple_choice_answers_match_hugging_face(hf_model_dir, hf_scorer):
    _, model = hf_model_dir
    tok = ByteTokenizer()
    docs = [
        MCDoc("Question: Which is a fruit?\nAnswer:", ["apple", "a bicycle", "granite"], 0),
        MCDoc("Question: What colour is the sky?\nAnswer:", ["blue", "green", "very loud"], 0),
        MCDoc("The cat sat on the", ["mat.", "quantum field theory", "roof"], 2),
        MCDoc("Question: 2 + 2 =\nAnswer:", ["4", "five", "22"], 0),
        MCDoc("", ["Ann gave Bob the book because Ann", "Ann gave Bob the book because Bob"],
              1, partial_target="was leaving."),
    ]
    ctx = EvalContext(tokenizer=tok, make_scorer=lambda: hf_scorer)
    res = evaluate_multiple_choice(ctx, docs, unconditional=True)
    for doc, pred in zip(docs, res["predictions"], strict=True):
        if doc.partial_target is None:
            pairs = [(doc.query, " " + c) for c in doc.choices]
        else:
            pairs = [(c, " " + doc.partial_target) for c in doc.choices]
        lls = [_hf_score(model, *encode_pair(tok, a, b))[0] for a, b in pairs]
        uncond = [_hf_score(model, *encode_pair(tok, "Answer:", " " + c))[0] for c in doc.choices]
        np.testing.assert_allclose(pred["loglikelihoods"], lls, rtol=1e-4)
        assert pred["acc"] == int(np.argmax(lls))
        lens = [len(c) for c in doc.choices] if doc.partial_target is None else [1] * len(lls)
        assert pred["acc_norm"] == int(np.argmax(np.array(lls) / np.array(lens)))
        assert pred["acc_uncond"] == int(np.argmax(np.array(lls) - np.array(uncond)))


def test_rolling_windows_are_the_harness_windows(hf_scorer):
    # get_rolling_token_windows(range(34), prefix -100, max_seq_len=10,
    # context_len=1) + make_disjoint_window, worked out by hand: full windows
    # condition on the token before them, the last (4 tokens) on the 7 before it.
    scorer = Scorer(hf_scorer.config, hf_scorer.params, max_len=10, buckets=(10,))
    assert scorer.rolling_windows(list(range(34)), prefix_token=-100) == [
        ([-100], list(range(0, 10))),
        ([9], list(range(10, 20))),
        ([19], list(range(20, 30))),
        (list(range(23, 30)), list(range(30, 34))),
    ]
    assert scorer.rolling_windows(list(range(7)), prefix_token=-100) == [([-100], list(range(7)))]
    assert scorer.rolling_windows([], prefix_token=-100) == []


def test_rolling_loglikelihood_matches_full_context_windows_in_hugging_face(hf_model_dir,
                                                                         hf_scorer):
    _, model = hf_model_dir
    size = 32
    scorer = Scorer(hf_scorer.config, hf_scorer.params, batch_size=8, max_len=size,
                    buckets=(size,))
    rng = np.random.default_rng(5)
    doc = [int(t) for t in rng.integers(3, 256, 75)]  # windows of 32, 32 and 11 tokens
    (lp, n), = scorer.loglikelihood_rolling([doc], prefix_token=1)
    assert n == 75

    def hf_window(inputs, targets, last):
        """Log-prob of the last `last` targets, the model reading all of `inputs`."""
        assert len(inputs) == len(targets) <= size
        with torch.no_grad():
            logits = model(torch.tensor([inputs])).logits[0].double()
            lps = torch.log_softmax(logits, -1).gather(-1, torch.tensor(targets)[:, None])
        return lps[-last:].sum().item()

    # The harness: BOS + doc[:31] predicts doc[:32]; doc[31:63] predicts
    # doc[32:64]; the last 11 tokens are predicted by a full 32-token window.
    want = (hf_window([1] + doc[:31], doc[:32], 32) + hf_window(doc[31:63], doc[32:64], 32)
            + hf_window(doc[42:74], doc[43:75], 11))
    assert lp == pytest.approx(want, rel=1e-5)


@pytest.fixture(scope="module")
def tiny():
    cfg = LlamaConfig(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=256,
                      multiple_of=32, max_seq_len=128)
    import jax

    return cfg, init_params(cfg, jax.random.key(1))


def test_bucketing_compiles_a_handful_of_times(tiny):
    cfg, params = tiny
    scorer = Scorer(cfg, params, batch_size=8)
    assert scorer.buckets == default_buckets(128) == (32, 64, 128)
    rng = np.random.default_rng(1)
    reqs = []
    for total in range(2, 129, 2):  # 64 different lengths, 2..128 tokens
        n_cont = int(rng.integers(1, min(total - 1, 6) + 1))
        toks = [int(t) for t in rng.integers(0, 256, total)]
        reqs.append((toks[:total - n_cont], toks[total - n_cont:]))
    first = scorer.loglikelihood(reqs)
    assert scorer.trace_count <= len(scorer.buckets)
    traces = scorer.trace_count
    # More, differently sized requests reuse the compiled buckets.
    again = scorer.loglikelihood(list(reversed(reqs))[:37])
    assert scorer.trace_count == traces
    assert [r.logprob for r in again] == pytest.approx(
        [r.logprob for r in list(reversed(first))[:37]], rel=1e-5)


def test_pack_rows_places_every_request_once_within_its_row():
    rng = np.random.default_rng(3)
    buckets = (32, 64, 128)
    for n in (1, 7, 200):
        lengths = [int(x) for x in rng.integers(1, 100, n)]
        conts = [int(rng.integers(1, min(x, 12) + 1)) for x in lengths]
        row_len, slots, batches = pack_rows(lengths, buckets, 4, conts)
        assert row_len == min(b for b in buckets if b >= max(lengths))
        assert slots == (row_len // 4 if max(conts) <= row_len // 4 else row_len)
        placed = sorted(i for batch in batches for row in batch for i in row)
        assert placed == list(range(n))  # each request in exactly one row
        assert all(1 <= len(batch) <= 4 for batch in batches)
        rows = [row for b in batches for row in b]
        assert all(sum(lengths[i] for i in row) <= row_len for row in rows)
        assert all(sum(conts[i] for i in row) <= slots for row in rows)
        assert len(rows) >= -(-sum(lengths) // row_len)
    # Continuations = whole requests (the default): no two rows could be merged.
    lengths = [int(x) for x in rng.integers(1, 30, 300)]
    row_len, slots, batches = pack_rows(lengths, buckets, 4)
    assert slots == row_len
    fill = sorted(sum(lengths[i] for i in row) for b in batches for row in b)
    assert fill[0] + fill[1] > row_len
    assert pack_rows([], buckets, 4) == (32, 32, [])


def test_packed_rows_score_as_requests_scored_alone(tiny):
    cfg, params = tiny
    scorer = Scorer(cfg, params, batch_size=2, buckets=(64, 128))
    rng = np.random.default_rng(4)
    reqs = [([int(t) for t in rng.integers(0, 256, int(rng.integers(1, 40)))],
             [int(t) for t in rng.integers(0, 256, int(rng.integers(1, 6)))]) for _ in range(12)]
    _, _, batches = pack_rows([len(c) + len(x) - 1 for c, x in reqs], scorer.buckets, 2,
                              [len(x) for _, x in reqs])
    assert max(len(row) for b in batches for row in b) > 2  # rows really are shared
    together = scorer.loglikelihood(reqs)
    alone = [scorer.loglikelihood([r])[0] for r in reqs]
    assert [r.logprob for r in together] == pytest.approx([r.logprob for r in alone], rel=1e-5)
    assert [r.is_greedy for r in together] == [r.is_greedy for r in alone]
    assert [r.num_tokens for r in together] == [len(x) for _, x in reqs]


def test_too_long_requests_are_left_truncated_like_the_harness(tiny):
    cfg, params = tiny
    scorer = Scorer(cfg, params, batch_size=8, max_len=32, buckets=(32,))
    rng = np.random.default_rng(2)
    ctx = [int(t) for t in rng.integers(0, 256, 60)]
    cont = [5, 6, 7]
    long, short = scorer.loglikelihood([(ctx, cont), (ctx[-30:], cont)])
    # (ctx + cont)[-33:] keeps exactly the last 30 context tokens.
    assert long.logprob == pytest.approx(short.logprob, rel=1e-6)
    with pytest.raises(ValueError, match="continuation"):
        scorer.loglikelihood([(ctx, [])])
    with pytest.raises(ValueError, match="vocabulary"):
        scorer.loglikelihood([([1], [300])])


def test_rolling_and_packed_perplexity_agree(tiny):
    cfg, params = tiny
    scorer = Scorer(cfg, params, batch_size=8, max_len=32, buckets=(32,))
    rng = np.random.default_rng(3)
    doc_a = [int(t) for t in rng.integers(3, 256, 75)]  # needs 3 windows of 32
    doc_b = [int(t) for t in rng.integers(3, 256, 14)]
    windows = scorer.rolling_windows(doc_a, prefix_token=1)
    assert [len(w) for _, w in windows] == [32, 32, 11]
    assert [t for _, w in windows for t in w] == doc_a  # every token predicted once
    (lp_a, n_a), (lp_b, n_b) = scorer.loglikelihood_rolling([doc_a, doc_b], prefix_token=1)
    assert (n_a, n_b) == (75, 14)
    # A short document scored whole equals one (BOS, document) request.
    single = scorer.loglikelihood([([1], doc_b)])[0]
    assert lp_b == pytest.approx(single.logprob, rel=1e-6)
    # Packing doc_b twice into one row (segments 1 and 2, positions restarting)
    # scores each copy independently: twice the log-prob of doc_b.
    row = [1] + doc_b
    inputs = np.zeros((1, 32), np.int32)
    targets = np.zeros((1, 32), np.int32)
    positions = np.zeros((1, 32), np.int32)
    segs = np.zeros((1, 32), np.int32)
    mask = np.zeros((1, 32), np.float32)
    n = len(row) - 1
    for s, off in ((1, 0), (2, n)):
        inputs[0, off:off + n] = row[:-1]
        targets[0, off:off + n] = row[1:]
        positions[0, off:off + n] = np.arange(n)
        segs[0, off:off + n] = s
        mask[0, off:off + n] = 1
    total, count = scorer.packed_loglikelihood(dict(inputs=inputs, targets=targets,
                                                    positions=positions, segment_ids=segs,
                                                    loss_mask=mask))
    assert count == 2 * n
    assert total == pytest.approx(2 * lp_b, rel=1e-5)


@pytest.mark.parametrize("shape", [(8, 1, 1, 1), (2, 2, 2, 1)])
def test_scores_do_not_depend_on_the_mesh(tiny, shape):
    cfg, params = tiny
    rng = np.random.default_rng(4)
    reqs = [([int(t) for t in rng.integers(0, 256, int(rng.integers(1, 30)))],
             [int(t) for t in rng.integers(0, 256, int(rng.integers(1, 4)))]) for _ in range(10)]
    base = Scorer(cfg, params, batch_size=8, buckets=(32,)).loglikelihood(reqs)
    other = Scorer(cfg, params, mesh=sharding.make_mesh(shape), batch_size=8,
                   buckets=(32,)).loglikelihood(reqs)
    np.testing.assert_allclose([r.logprob for r in other], [r.logprob for r in base], rtol=1e-5)
    assert [r.is_greedy for r in other] == [r.is_greedy for r in base]
