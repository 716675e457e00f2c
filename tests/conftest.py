"""Shared test set-up: 8 fake CPU devices, float32 matmuls, tiny configs."""

import os

# Must happen before jax is imported anywhere in the test session; appended so
# flags a caller already set in XLA_FLAGS are kept.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

from llama_jax import cpu_flags  # noqa: E402

# The CPU preset every CLI applies, here too: the test process and the CLIs it
# starts compile alike (and the CLI subprocesses inherit XLA_FLAGS as is).
cpu_flags.apply()

from llama_jax.model.config import LlamaConfig  # noqa: E402


@pytest.fixture(scope="session")
def tiny_config() -> LlamaConfig:
    """A 2-layer multi-head model that compiles in seconds; divisible by 8 devices."""
    return LlamaConfig(dim=64, n_layers=2, n_heads=8, n_kv_heads=8, vocab_size=256,
                       multiple_of=32, max_seq_len=64)


@pytest.fixture(scope="session")
def gqa_config() -> LlamaConfig:
    """A 2-layer grouped-query model (4 query heads per KV head)."""
    return LlamaConfig(dim=64, n_layers=2, n_heads=8, n_kv_heads=2, vocab_size=256,
                       multiple_of=32, max_seq_len=64)


def pytest_report_header(config):
    return f"jax {jax.__version__}, {jax.device_count()} devices ({jax.default_backend()})"
