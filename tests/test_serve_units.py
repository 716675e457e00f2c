"""Serving pieces without HTTP: per-slot sampling equals `sample_logits`, the slot
engine (chunked prefill, vmapped decode) equals `Generator`, stream-safe text."""

import jax
import numpy as np
import pytest
from serve_helpers import tiny_model

from llama_jax.infer.engine import Generator, SamplingConfig, sample_logits
from llama_jax.serve.sampling import sample_rows
from llama_jax.serve.scheduler import choice_key
from llama_jax.serve.slots import SlotEngine
from llama_jax.serve.text import TextTracker, held_back


def test_sample_rows_equals_sample_logits_row_by_row():
    logits = jax.random.normal(jax.random.key(0), (6, 50)) * 3
    keys = jax.random.split(jax.random.key(1), 6)
    settings = [(0.0, 1.0), (1.0, 1.0), (0.7, 0.9), (1.3, 0.5), (0.0, 0.3), (2.0, 0.05)]
    got = sample_rows(logits, keys, np.array([t for t, _ in settings], np.float32),
                      np.array([p for _, p in settings], np.float32))
    for r, (t, p) in enumerate(settings):
        want = sample_logits(logits[r:r + 1], keys[r:r + 1], SamplingConfig(t, 0, p))
        assert int(got[r]) == int(want[0]), (r, t, p)


def test_slot_engine_equals_generator_greedy_and_seeded():
    """Prompts longer than the largest bucket (chunked), slots filled out of order."""
    cfg, params = tiny_model()
    rng = np.random.default_rng(0)
    prompts = [[1] + [int(t) for t in rng.integers(3, 300, n)] for n in (3, 11, 40, 7, 70)]
    gen = Generator(cfg, params, batch_size=8, prompt_buckets=(16, 64, 128), chunk_size=4)
    eng = SlotEngine(cfg, params, slots=8, prefill_buckets=(8, 32))
    assert eng.chunks(70) == [(0, 32, 32), (32, 32, 32), (64, 6, 8)]
    for sampling, seed in ((SamplingConfig(), 0), (SamplingConfig(temperature=0.9, top_p=0.8), 5)):
        want = gen.generate_tokens(prompts, max_new_tokens=8, sampling=sampling, seed=seed)
        slots = [6, 1, 3, 0, 5]
        for slot, p in zip(slots, prompts, strict=True):
            for start, length, bucket in eng.chunks(len(p)):
                eng.prefill(slot, p[start:start + length], start, bucket,
                            choice_key(seed, p, 0), sampling.temperature, sampling.top_p)
        active = np.zeros(8, bool)
        active[slots] = True
        steps = np.stack([eng.decode(active) for _ in range(8)], 1)  # [slots, 8]
        for slot, w in zip(slots, want, strict=True):
            assert steps[slot].tolist() == w[0]
    assert eng.trace_count["decode"] == 1
    assert eng.trace_count["prefill"] == 2  # one per bucket


class _Chars:
    """A tokenizer whose ids are characters (decode joins them)."""

    eos_id = None

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def test_stream_deltas_hold_back_a_possible_stop_string():
    assert held_back("abc</", ["</s>"]) == 2
    assert held_back("abc<", ["</s>", "<|im_end|>"]) == 1
    assert held_back("abc", ["</s>"]) == 0
    assert held_back("ab\ufffd", []) == 1
    assert held_back("ab\ufffd\ufffd", ["x"]) == 2
    assert held_back("\ufffd", []) == 1
    text = "hello </x> world </s> never"
    tracker = TextTracker(_Chars(), [ord(">")], ["</s>"])
    ids, out = [], []
    for ch in text:
        ids.append(ord(ch))
        out.append(tracker.delta(ids))
        assert "</s" not in "".join(out) and not "".join(out).endswith("<")
        if tracker.hit_stop(ids):
            break
    out.append(tracker.delta(ids, final=True))
    assert "".join(out) == tracker.text(ids) == "hello </x> world "


@pytest.mark.parametrize("slots", [0, -1, True])
def test_bad_slot_count_is_a_clear_error(slots):
    cfg, params = tiny_model()
    with pytest.raises(ValueError, match="slots"):
        SlotEngine(cfg, params, slots=slots)
