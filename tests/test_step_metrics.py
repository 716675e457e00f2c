"""StepMetrics: the loop's one-step-behind fetch and non-finite stop/skip policy, on fake metrics."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from llama_jax.errors import ConfigError, NonFiniteLossError
from llama_jax.train.step_metrics import StepMetrics

NAN, INF = float("nan"), float("inf")


class Harness:
    """A StepMetrics whose callbacks log what happened, in order."""

    def __init__(self, mode="stop", max_skips=2, good=(4, "/wd/checkpoints")):
        self.events = []
        self.good = good

        def record(step, host, data_stats, hold):
            self.events.append(("record", step, host["loss"], data_stats, hold))

        def last_good():
            self.events.append(("last_good",))
            return self.good

        def fetch(dev):
            self.events.append(("fetch", dev["id"]))
            return {k: v for k, v in dev.items() if k != "id"}

        self.sm = StepMetrics(on_nonfinite=mode, max_consecutive_skips=max_skips, record=record,
                              last_good=last_good, fetch=fetch)


def dev(step, loss, grad_norm=1.0):
    """A fake device metrics dict; `id` lets the fetch say which step it fetched."""
    return {"id": step, "loss": np.float32(loss), "grad_norm": jnp.float32(grad_norm),
            "update_count": np.int32(step - 1)}


def test_one_step_behind_ordering():
    h = Harness()
    sm = h.sm
    assert sm.settle() is None and h.events == []  # nothing held yet
    sm.defer(1, dev(1, 5.0), {"tokens/a": 3})
    assert h.events == []  # deferring does not touch the device values
    # The loop: dispatch step 2, then settle step 1, then defer step 2.
    host = sm.settle()
    assert host == {"loss": 5.0, "grad_norm": 1.0, "update_count": 0.0}
    assert all(type(v) is float for v in host.values())
    sm.defer(2, dev(2, 4.0))
    assert h.events == [("fetch", 1), ("record", 1, 5.0, {"tokens/a": 3}, False)]
    with pytest.raises(RuntimeError, match="step 3 deferred while step 2 is unsettled"):
        sm.defer(3, dev(3, 3.0))
    sm.settle(hold=True)  # before a save / eval: settle now, the record waits for evals
    assert h.events[-2:] == [("fetch", 2), ("record", 2, 4.0, None, True)]
    assert sm.pending is None and sm.settle() is None
    assert sm.last_loss == 4.0 and sm.skips == 0


def test_finite_steps_record_and_track_last_loss():
    h = Harness()
    for step, loss in enumerate([8.0, 7.5, 7.25], start=1):
        h.sm.defer(step, dev(step, loss))
        h.sm.settle()
    assert [e[1:3] for e in h.events if e[0] == "record"] == [(1, 8.0), (2, 7.5), (3, 7.25)]
    assert h.sm.last_loss == 7.25


@pytest.mark.parametrize("loss, grad_norm", [(NAN, 1.0), (INF, 1.0), (2.0, NAN), (2.0, -INF)])
def test_stop_raises_at_the_first_nonfinite_step(loss, grad_norm):
    h = Harness("stop")
    h.sm.defer(1, dev(1, 3.0))
    h.sm.settle()
    h.sm.defer(2, dev(2, loss, grad_norm))
    with pytest.raises(NonFiniteLossError) as e:
        h.sm.settle()
    msg = str(e.value)
    assert msg.startswith(f"step 2: loss {loss}, gradient norm {grad_norm} (non-finite).")
    assert "the last good checkpoint is step 4 in /wd/checkpoints." in msg
    assert "Lower optimizer.lr" in msg and "train.on_nonfinite='skip'" in msg
    # Not recorded; the checkpoint is asked for only when stopping.
    assert h.events[-2:] == [("fetch", 2), ("last_good",)]
    assert [e[1] for e in h.events if e[0] == "record"] == [1]
    assert h.sm.last_loss == 3.0


def test_stop_without_a_checkpoint_says_none():
    h = Harness("stop", good=(None, "/wd/checkpoints"))
    h.sm.defer(1, dev(1, NAN))
    with pytest.raises(NonFiniteLossError, match="last good checkpoint is none in /wd/checkpoints"):
        h.sm.settle()


def test_skip_tolerates_up_to_max_consecutive_then_stops():
    h = Harness("skip", max_skips=2)
    sm = h.sm
    losses = [6.0, NAN, NAN, 5.0, NAN, NAN, NAN]  # a finite step resets the count
    skips_after = []
    with pytest.raises(NonFiniteLossError) as e:
        for step, loss in enumerate(losses, start=1):
            sm.defer(step, dev(step, loss))
            sm.settle()
            skips_after.append(sm.skips)
    assert skips_after == [0, 1, 2, 0, 1, 2]  # the 7th step (3rd NaN in a row) raised
    assert "step 7: loss nan" in str(e.value)
    assert "(after 3 skipped updates in a row)" in str(e.value)
    recorded = [e[1] for e in h.events if e[0] == "record"]
    assert recorded == [1, 2, 3, 4, 5, 6]  # skipped steps are still logged
    nan_records = [e for e in h.events if e[0] == "record" and math.isnan(e[2])]
    assert [e[1] for e in nan_records] == [2, 3, 5, 6]
    assert sm.last_loss == 5.0  # the last finite loss
    assert h.events[-1] == ("last_good",)


def test_skip_with_zero_tolerance_stops_at_once():
    h = Harness("skip", max_skips=0)
    h.sm.defer(1, dev(1, NAN))
    with pytest.raises(NonFiniteLossError, match=r"after 1 skipped updates in a row"):
        h.sm.settle()


def test_unknown_policy_is_a_config_error():
    with pytest.raises(ConfigError, match="train.on_nonfinite='ignore'"):
        Harness("ignore")
