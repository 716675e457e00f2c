"""A training run's energy and carbon footprint, as the paper's Table 15 counts it.

The LLaMA paper (Section 6.3, Table 15) estimates the energy of a run as

    energy (Wh)   = device-hours x device power (W) x PUE
    tCO2eq        = energy (MWh) x carbon intensity (t CO2eq / MWh)

with 400 W per A100 (its thermal design power), a data-centre PUE of 1.1 and
the US-average intensity of 0.385 kg CO2eq/kWh. Device-hours are the devices
reserved times the wall-clock time they were reserved for (compilation, data
set-up and evaluation included), as a cluster bills them.

Device powers (`DEVICE_WATTS`) are board TDPs, matched against
`jax.Device.device_kind` by case-insensitive substring, first match wins,
exactly as `llama_jax.train.metrics.PEAK_FLOPS` is. A CPU run counts one CPU
package per process at `ASSUMED_WATTS` (the JAX CPU "devices" of one host
share one processor), as does any device missing from the table: the
footprint then says ``watts_source="assumed"``. Give the real figure with
``--config.train.carbon.device_watts=...`` (``watts_source="config"``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax

from llama_jax.errors import ConfigError
from llama_jax.train.metrics import lookup_device_kind

# Board power (TDP) per device in watts, matched against `device_kind` by
# substring, first match wins (so the more specific names come first).
# NVIDIA's data sheets (SXM unless named); the paper uses 400 W for its A100s.
DEVICE_WATTS: tuple[tuple[str, float], ...] = (
    ("GH200", 1000.0),      # the Grace Hopper module, CPU and memory included
    ("H200 NVL", 600.0),
    ("H200", 700.0),
    ("H100 PCIe", 350.0),
    ("H100 NVL", 400.0),
    ("H100", 700.0),        # SXM5
    ("H800", 700.0),
    ("B200", 1000.0),
    ("A100-PCIE-40GB", 250.0),
    ("A100-PCIE", 300.0),   # 80 GB PCIe
    ("A100", 400.0),        # SXM4, the paper's figure
    ("A800", 400.0),
    ("L40S", 350.0),
    ("L4", 72.0),
    ("A10G", 150.0),
    ("V100", 300.0),        # SXM2
    ("TPU v4", 192.0),      # the commonly quoted mean power of a v4 chip
)

# Watts counted per CPU package (one per process) and for devices missing from
# `DEVICE_WATTS`: a desktop processor's TDP. An assumption, and reported as one.
ASSUMED_WATTS = 65.0

# The paper's settings (Section 6.3): data-centre PUE and US-average carbon intensity.
PAPER_PUE = 1.1
PAPER_KG_CO2_PER_KWH = 0.385
PAPER_A100_WATTS = 400.0


def device_watts(device_kind: str) -> float | None:
    """Board power (W) of one device of `device_kind` from `DEVICE_WATTS`, or None."""
    return lookup_device_kind(DEVICE_WATTS, device_kind)


def energy_kwh(device_hours: float, watts: float, pue: float) -> float:
    """Energy in kWh: device-hours x watts x PUE / 1000 (Table 15's MWh x 1000)."""
    return device_hours * watts * pue / 1000.0


def tco2eq(energy: float, kg_co2_per_kwh: float) -> float:
    """Tonnes of CO2 equivalent of `energy` kWh at `kg_co2_per_kwh`."""
    return energy * kg_co2_per_kwh / 1000.0


@dataclasses.dataclass(frozen=True)
class CarbonSettings:
    """How a run's footprint is counted (the ``train.carbon`` config section).

    Attributes:
      pue: data-centre power usage effectiveness (>= 1; the paper: 1.1).
      kg_co2_per_kwh: carbon intensity of the electricity (the paper: 0.385).
      device_watts: power per device; None = `DEVICE_WATTS` by device kind
        (or `ASSUMED_WATTS` when unlisted).
    """

    pue: float = PAPER_PUE
    kg_co2_per_kwh: float = PAPER_KG_CO2_PER_KWH
    device_watts: float | None = None

    def __post_init__(self):
        if not self.pue >= 1.0:
            raise ConfigError(f"train.carbon.pue={self.pue} must be >= 1 (1.0 = no overhead; "
                              "the paper uses 1.1)")
        if not self.kg_co2_per_kwh >= 0.0:
            raise ConfigError(f"train.carbon.kg_co2_per_kwh={self.kg_co2_per_kwh} must be >= 0 "
                              "(the paper uses 0.385, the US average)")
        if self.device_watts is not None and not self.device_watts > 0:
            raise ConfigError(f"train.carbon.device_watts={self.device_watts} must be positive, "
                              "or unset to take the device's TDP from the table")

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> CarbonSettings:
        """From the ``train.carbon`` section; raises ConfigError on a bad value."""
        watts = section.get("device_watts")
        return cls(pue=float(section.get("pue", PAPER_PUE)),
                   kg_co2_per_kwh=float(section.get("kg_co2_per_kwh", PAPER_KG_CO2_PER_KWH)),
                   device_watts=None if watts is None else float(watts))


@dataclasses.dataclass(frozen=True)
class Footprint:
    """Device-hours, energy and emissions of one run (Table 15's columns)."""

    device_kind: str
    n_devices: int
    device_hours: float
    device_watts: float
    watts_source: str  # 'table', 'config' or 'assumed'
    pue: float
    kg_co2_per_kwh: float
    energy_kwh: float
    tco2eq: float

    def metrics(self) -> dict[str, float | int | str]:
        """The footprint as a flat metrics record (JSONL / TensorBoard)."""
        return {"device_hours": self.device_hours, "energy_kwh": self.energy_kwh,
                "tco2eq": self.tco2eq, "device_watts": self.device_watts,
                "watts_source": self.watts_source, "pue": self.pue,
                "kg_co2_per_kwh": self.kg_co2_per_kwh, "n_devices": self.n_devices,
                "device_kind": self.device_kind}

    def describe(self) -> str:
        """One log line: the numbers and where the power figure came from."""
        return (f"{self.device_hours:.4g} device-hours ({self.n_devices} x {self.device_kind}, "
                f"{self.device_watts:g} W {self.watts_source}, PUE {self.pue:g}) -> "
                f"{self.energy_kwh:.4g} kWh -> {self.tco2eq:.4g} tCO2eq at "
                f"{self.kg_co2_per_kwh:g} kg/kWh")


def footprint(device_hours: float, device_kind: str, n_devices: int,
              settings: CarbonSettings = CarbonSettings()) -> Footprint:
    """The footprint of `device_hours` on `n_devices` devices of `device_kind`."""
    if settings.device_watts is not None:
        watts, source = settings.device_watts, "config"
    elif (listed := device_watts(device_kind)) is not None:
        watts, source = listed, "table"
    else:
        watts, source = ASSUMED_WATTS, "assumed"
    energy = energy_kwh(device_hours, watts, settings.pue)
    return Footprint(device_kind=device_kind, n_devices=n_devices, device_hours=device_hours,
                     device_watts=watts, watts_source=source, pue=settings.pue,
                     kg_co2_per_kwh=settings.kg_co2_per_kwh, energy_kwh=energy,
                     tco2eq=tco2eq(energy, settings.kg_co2_per_kwh))


def run_footprint(wall_seconds: float, settings: CarbonSettings = CarbonSettings()) -> Footprint:
    """The footprint of this job running `wall_seconds` on all of its devices.

    Accelerators count every device of every process; a CPU job counts one
    processor package per process (see the module docstring).
    """
    device = jax.devices()[0]
    if device.platform == "cpu":
        kind, count = "cpu", jax.process_count()
    else:
        kind, count = device.device_kind, jax.device_count()
    return footprint(count * wall_seconds / 3600.0, kind, count, settings)
