"""The paper's Table 15 accounting: device-hours -> MWh -> tCO2eq, and a run's summary."""

import json

import pytest
import train_helpers as th

from llama_jax.errors import ConfigError
from llama_jax.train import carbon, metrics
from llama_jax.train.loop import train_and_evaluate

# Table 15 of the LLaMA paper: GPU-hours on A100-80GB, then the MWh and tCO2eq
# it prints (400 W, PUE 1.1, 0.385 kg CO2eq/kWh), rounded as the paper does.
TABLE_15 = {
    "LLaMA-7B": (82_432, 36, 14),
    "LLaMA-13B": (135_168, 59, 23),
    "LLaMA-33B": (530_432, 233, 90),
    "LLaMA-65B": (1_022_362, 449, 173),
}


@pytest.mark.parametrize("model", sorted(TABLE_15))
def test_formula_reproduces_table_15(model):
    gpu_hours, mwh, tonnes = TABLE_15[model]
    fp = carbon.footprint(gpu_hours, "NVIDIA A100-SXM4-80GB", 2048)
    assert fp.device_watts == 400.0 and fp.watts_source == "table"
    assert fp.pue == 1.1 and fp.kg_co2_per_kwh == 0.385
    assert int(fp.energy_kwh / 1000) == mwh  # the paper truncates MWh (449.8 -> 449)
    assert round(fp.tco2eq) == tonnes


def test_65b_row_by_hand():
    # 1,022,362 h x 400 W x 1.1 = 449,839 kWh; x 0.385 kg/kWh = 173.19 t.
    assert carbon.energy_kwh(1_022_362, 400, 1.1) == pytest.approx(449_839.28)
    assert carbon.tco2eq(449_839.28, 0.385) == pytest.approx(173.188, abs=1e-3)


def test_device_table_matches_like_the_peak_table():
    assert carbon.device_watts("NVIDIA H100 80GB HBM3") == 700.0
    assert carbon.device_watts("NVIDIA H100 PCIe") == 350.0
    assert carbon.device_watts("NVIDIA H200") == 700.0
    assert carbon.device_watts("NVIDIA A100-PCIE-40GB") == 250.0
    assert carbon.device_watts("Tesla V100-SXM2-16GB") == 300.0
    assert carbon.device_watts("TPU v4") == 192.0
    assert carbon.device_watts("cpu") is None
    # Every device with a peak FLOP/s entry that carbon lists is matched the same way.
    for name, _ in metrics.PEAK_FLOPS:
        if carbon.device_watts(name) is not None:
            assert metrics.peak_flops(name) is not None


def test_cpu_and_unknown_devices_are_assumed_and_overridable():
    fp = carbon.footprint(2.0, "cpu", 1)
    assert fp.watts_source == "assumed" and fp.device_watts == carbon.ASSUMED_WATTS
    assert fp.energy_kwh == pytest.approx(2.0 * carbon.ASSUMED_WATTS * 1.1 / 1000)
    fp = carbon.footprint(2.0, "cpu", 1, carbon.CarbonSettings(pue=1.0, kg_co2_per_kwh=0.5,
                                                               device_watts=100.0))
    assert fp.watts_source == "config"
    assert fp.energy_kwh == pytest.approx(0.2) and fp.tco2eq == pytest.approx(1e-4)
    assert "assumed" in carbon.footprint(1.0, "Mystery Accelerator", 4).describe()


@pytest.mark.parametrize("bad", [{"pue": 0.9}, {"kg_co2_per_kwh": -1.0},
                                 {"device_watts": 0.0}])
def test_bad_settings_name_the_key(bad):
    key = next(iter(bad))
    with pytest.raises(ConfigError, match=f"train.carbon.{key}"):
        carbon.CarbonSettings.from_config({"pue": 1.1, "kg_co2_per_kwh": 0.385,
                                           "device_watts": None, **bad})


def test_training_run_summary_carries_the_footprint(tmp_path):
    root = th.make_data(tmp_path / "data")
    cfg = th.micro_config(root, **{"train.steps": 3, "checkpoint.every": 3,
                                   "train.eval_batches": 0, "train.carbon.pue": 1.2,
                                   "train.carbon.kg_co2_per_kwh": 0.5})
    result = train_and_evaluate(cfg, str(tmp_path / "wd"))
    fp = result.footprint
    assert result.status == "completed" and fp is not None
    assert fp.device_kind == "cpu" and fp.n_devices == 1 and fp.watts_source == "assumed"
    # device-hours = the run's own clock (one CPU package) / 3600: a bound, not a speed check.
    run_hours = result.wall_seconds / 3600
    assert 0 < fp.device_hours <= run_hours
    assert fp.energy_kwh == pytest.approx(fp.device_hours * carbon.ASSUMED_WATTS * 1.2 / 1000)
    assert fp.tco2eq == pytest.approx(fp.energy_kwh * 0.5 / 1000)
    last = json.loads((tmp_path / "wd" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 3
    assert last["device_hours"] == pytest.approx(fp.device_hours)
    assert last["energy_kwh"] == pytest.approx(fp.energy_kwh)
    assert last["tco2eq"] == pytest.approx(fp.tco2eq)
    assert last["watts_source"] == "assumed"


def test_bad_carbon_key_fails_before_training(tmp_path):
    root = th.make_data(tmp_path / "data")
    cfg = th.micro_config(root, **{"train.carbon.pue": 0.5})
    with pytest.raises(ConfigError, match="train.carbon.pue"):
        train_and_evaluate(cfg, str(tmp_path / "wd"))
    assert not (tmp_path / "wd" / "metrics.jsonl").exists()
