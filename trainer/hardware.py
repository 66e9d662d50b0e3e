"""Accelerators: peak FLOP/s, memory, power and price per chip; dollars, energy and carbon.

Every figure is per *chip*. TPU v2 and v3 chips hold two TensorCores and JAX shows
each core as a device, so a chip is two devices there (Cloud names count cores:
a v3-256 slice is 128 chips); TPU v4 and v5p join their two cores into one device
("megacore"); v5e and v6e have one core per chip; a GPU is one chip and one device.
Peak is dense bfloat16 matmul throughput (no structured sparsity). Prices are
Google Cloud on-demand list prices per chip-hour (us-central regions) and move
often; override them with ``--config.cost.price_per_chip_hour`` or ``--price``.

Sources (read 2026-11):
  [tpu-v2]  Cloud TPU docs, "TPU v2" (cloud.google.com/tpu/docs/v2): 45 TFLOP/s bf16 and
            16 GiB HBM per chip. Power: estimate, the 280 W TDP of Jouppi et al. 2020,
            "A Domain-Specific Supercomputer for Training Deep Neural Networks" (CACM), Table 3.
  [tpu-v3]  cloud.google.com/tpu/docs/v3: 123 TFLOP/s bf16, 32 GiB HBM2 per chip,
            measured min/mean/max power 123/220/262 W (we use the mean).
  [tpu-v4]  cloud.google.com/tpu/docs/v4: 275 TFLOP/s bf16, 32 GiB HBM2 per chip,
            measured min/mean/max power 90/170/192 W (we use the mean).
  [tpu-v5e] cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16, 16 GB HBM per chip.
            Power is not published: estimate 200 W (between v4's and v6e's).
  [tpu-v5p] cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16, 95 GB HBM2e per chip.
            Power is not published: estimate 350 W.
  [tpu-v6e] cloud.google.com/tpu/docs/v6e: 918 TFLOP/s bf16, 32 GB HBM per chip.
            Power is not published: estimate 300 W.
  [tpu-price] cloud.google.com/tpu/pricing, on-demand per chip-hour: v2 $1.125 (a v2-8,
            4 chips, was $4.50/hour), v3 $2.00 (v3-8 $8.00/hour), v4 $3.22, v5e $1.20,
            v5p $4.20, v6e $2.70.
  [a100]    NVIDIA A100 Tensor Core GPU datasheet (SXM4): 312 TFLOP/s bf16 dense,
            40 or 80 GB HBM, 400 W max TDP.
  [h100]    NVIDIA H100 Tensor Core GPU datasheet (SXM5): 989 TFLOP/s bf16 dense
            (1,979 with sparsity), 80 GB HBM3, up to 700 W.
  [h200]    NVIDIA H200 datasheet (SXM): 989 TFLOP/s bf16 dense, 141 GB HBM3e, up to 700 W.
  [gpu-price] Estimates: Google Cloud on-demand a2-highgpu (A100 40 GB, ~$3.67/GPU-hour),
            a2-ultragpu (A100 80 GB, ~$5.07), a3-highgpu (H100, ~$11.06 = $88.49 / 8) and
            a3-ultragpu (H200, ~$10.85) list prices; neoclouds rent for a third of this.
  [cpu]     Peak measured at start (``metrics.measure_peak_flops``); memory read from the
            host; 100 W and $0.10/hour per host are estimates for a small cloud VM.
"""
from __future__ import annotations

import dataclasses
import os

from trainer.errors import ConfigError

GB, GIB = 1e9, 2**30


@dataclasses.dataclass(frozen=True)
class Hardware:
  """One chip's figures; ``devices_per_chip`` is how many JAX devices one chip shows."""
  name: str
  peak_flops: float          # Dense bf16 FLOP/s per chip.
  memory_bytes: float        # Accelerator memory per chip.
  power_w: float             # Average board power per chip.
  price_per_hour: float      # On-demand dollars per chip-hour.
  devices_per_chip: int = 1
  source: str = ''

  @property
  def memory_per_device(self) -> float:
    return self.memory_bytes / self.devices_per_chip


TABLE = {h.name: h for h in (
    Hardware('tpu-v2', 45e12, 16 * GIB, 280, 1.125, 2, '[tpu-v2] [tpu-price]; power estimate'),
    Hardware('tpu-v3', 123e12, 32 * GIB, 220, 2.00, 2, '[tpu-v3] [tpu-price]'),
    Hardware('tpu-v4', 275e12, 32 * GIB, 170, 3.22, 1, '[tpu-v4] [tpu-price]'),
    Hardware('tpu-v5e', 197e12, 16 * GB, 200, 1.20, 1, '[tpu-v5e] [tpu-price]; power estimate'),
    Hardware('tpu-v5p', 459e12, 95 * GB, 350, 4.20, 1, '[tpu-v5p] [tpu-price]; power estimate'),
    Hardware('tpu-v6e', 918e12, 32 * GB, 300, 2.70, 1, '[tpu-v6e] [tpu-price]; power estimate'),
    Hardware('a100-40gb', 312e12, 40 * GB, 400, 3.67, 1, '[a100] [gpu-price] (price estimate)'),
    Hardware('a100-80gb', 312e12, 80 * GB, 400, 5.07, 1, '[a100] [gpu-price] (price estimate)'),
    Hardware('h100', 989e12, 80 * GB, 700, 11.06, 1, '[h100] [gpu-price] (price estimate)'),
    Hardware('h200', 989e12, 141 * GB, 700, 10.85, 1, '[h200] [gpu-price] (price estimate)'),
    Hardware('cpu', 0.0, 0.0, 100, 0.10, 1, '[cpu] peak measured at start; power, price estimates'),
)}

# jax Device.device_kind prefixes, most specific first.
_KINDS = (('TPU v2', 'tpu-v2'), ('TPU v3', 'tpu-v3'), ('TPU v4', 'tpu-v4'),
          ('TPU v5 lite', 'tpu-v5e'), ('TPU v5e', 'tpu-v5e'), ('TPU v5', 'tpu-v5p'),
          ('TPU v6', 'tpu-v6e'), ('NVIDIA A100-SXM4-40GB', 'a100-40gb'),
          ('NVIDIA A100-SXM4-80GB', 'a100-80gb'), ('NVIDIA A100 80GB', 'a100-80gb'),
          ('NVIDIA A100', 'a100-40gb'), ('NVIDIA H100', 'h100'), ('NVIDIA H200', 'h200'))


def get(name: str) -> Hardware:
  """The table row for ``name``; an unknown name is a ConfigError listing the known ones."""
  if name not in TABLE:
    raise ConfigError(f'unknown hardware {name!r}; known: {", ".join(TABLE)}')
  return TABLE[name]


def detect(device) -> str:
  """Table name for a jax device; unknown accelerators fall back to 'cpu' figures."""
  if device.platform == 'cpu':
    return 'cpu'
  for prefix, name in _KINDS:
    if device.device_kind.startswith(prefix):
      return name
  return 'cpu'


def host_memory_bytes() -> float:
  return float(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES'))


@dataclasses.dataclass(frozen=True)
class Rates:
  """What a cluster of ``chips`` costs per hour of wall time, in dollars, kWh and CO2e."""
  chips: float
  price_per_chip_hour: float
  power_w: float
  pue: float
  kg_co2e_per_kwh: float

  @classmethod
  def from_config(cls, cost_cfg, hw: Hardware, chips: float) -> 'Rates':
    """Table figures unless the config sets them (negative means: from the table)."""
    price = cost_cfg.price_per_chip_hour
    power = cost_cfg.power_w
    return cls(chips=cost_cfg.chips or chips,
               price_per_chip_hour=hw.price_per_hour if price < 0 else price,
               power_w=hw.power_w if power < 0 else power,
               pue=cost_cfg.pue, kg_co2e_per_kwh=cost_cfg.kg_co2e_per_kwh)

  def dollars(self, hours: float) -> float:
    return self.chips * self.price_per_chip_hour * hours

  def kwh(self, hours: float) -> float:
    """Facility energy: chip power x chips x time x PUE."""
    return self.power_w * self.chips * hours * self.pue / 1000

  def co2e_kg(self, hours: float) -> float:
    return self.kwh(hours) * self.kg_co2e_per_kwh
