"""``trainer plan``: time, dollars, energy, carbon and memory of a run, before launch.

FLOPs follow trainer/model.py: model FLOPs (PaLM convention, what MFU counts) and
hardware FLOPs (model FLOPs plus the forward passes that full remat repeats, what HFU
and published "TFLOP/s per GPU" figures such as OPT's 147 count). Throughput comes from
an assumed MFU, HFU or tokens/s. Memory is an estimate from shapes and shardings;
``estimate_memory`` is one ``memory_fn``, and a compiled (AOT) measurement can be
passed in its place with the same return keys.
"""
from __future__ import annotations

import math
import re

from trainer import config as config_lib
from trainer import hardware, model, sharding
from trainer.config import ConfigError

DEFAULT_MFU = 0.4
_SUFFIX = {'': 1, 'K': 1e3, 'M': 1e6, 'B': 1e9, 'G': 1e9, 'T': 1e12}


def parse_count(text: str, what: str) -> float:
  """'300e9', '300B', '32G' or '1.5T' to a positive number; anything else is a ConfigError."""
  match = re.fullmatch(r'\s*([0-9.eE+-]+)\s*([KMBGT]?)\s*', str(text))
  try:
    value = float(match.group(1)) * _SUFFIX[match.group(2)] if match else math.nan
  except ValueError:
    value = math.nan
  if not value > 0 or math.isinf(value):
    raise ConfigError(f'--{what}={text}: must be a positive number (e.g. 300e9 or 300B)')
  return value


def _sharded_elements(cfg, mesh_shape) -> tuple[int, int]:
  """Parameter elements held by one device under the configured rules, and in all."""
  mcfg = model.ModelConfig.from_config(cfg.model)
  sizes = dict(zip(sharding.AXES, mesh_shape))
  per_device = total = 0
  for shape, _, mesh_spec in sharding.param_table(model.abstract_params(mcfg),
                                                  cfg.mesh.rules).values():
    n = 1
    for dim, axes in zip(shape, tuple(mesh_spec) + (None,) * len(shape)):
      axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
      n *= math.ceil(dim / math.prod(sizes[a] for a in axes))
    per_device += n
    total += math.prod(shape)
  return per_device, total


def estimate_memory(cfg, mcfg: model.ModelConfig, hw: hardware.Hardware, chips: int) -> dict:
  """Bytes per device: float32 params, grads and two Adam moments, plus activations.

  Activations per layer follow Korthikanti et al. 2022 ("Reducing Activation
  Recomputation in Large Transformer Models", eq. 2 with tensor parallelism t):
  s*b*h*(10 + 24/t + 5*a*s/(h*t)) bytes at 16 bits; 'dots' recomputes attention, so the
  5*a*s/(h*t) score term goes (their selective recomputation); full remat keeps each
  layer's 2*s*b*h input and one layer's full set while it recomputes. Logits and their
  gradient add 2 x s*b*V/t float32.
  """
  devices = chips * hw.devices_per_chip
  data, fsdp, tensor = shape = sharding.mesh_shape(cfg.mesh, devices)
  per_device, _ = _sharded_elements(cfg, shape)
  state = 16 * per_device
  t = cfg.train
  b = math.ceil(t.batch_size / t.micro_batches / (data * fsdp))
  s, h, a, L = t.seq_len, mcfg.embed_dim, mcfg.num_heads, mcfg.num_layers
  scale = mcfg.compute_dtype.itemsize / 2
  scores = s * b * h * 5 * a * s / (h * tensor) * scale
  layer = s * b * h * (10 + 24 / tensor) * scale + scores
  if mcfg.remat == 'full':
    acts = L * 2 * s * b * h * scale + layer
  elif mcfg.remat == 'dots':
    acts = L * (layer - scores) + scores
  else:
    acts = L * layer
  acts += 2 * s * b * mcfg.padded_vocab / tensor * 4
  capacity = hw.memory_per_device or hardware.host_memory_bytes()
  return {'source': 'estimate', 'mesh': dict(zip(sharding.AXES, shape)),
          'state_bytes': state, 'activation_bytes': acts, 'total_bytes': state + acts,
          'capacity_bytes': capacity, 'sequences_per_device': b}


def _throughput(peak_total, model_fpt, hw_fpt, mfu, hfu, tokens_per_sec) -> float:
  given = [x for x in (mfu, hfu, tokens_per_sec) if x is not None]
  if len(given) > 1:
    raise ConfigError('give one of --mfu, --hfu or --tokens-per-sec, not several')
  for name, value in (('mfu', mfu), ('hfu', hfu)):
    if value is not None and not 0 < value <= 1:
      raise ConfigError(f'--{name}={value}: must be a fraction in (0, 1], e.g. 0.4')
  if tokens_per_sec is not None:
    return tokens_per_sec
  if hfu is not None:
    return hfu * peak_total / hw_fpt
  return (DEFAULT_MFU if mfu is None else mfu) * peak_total / model_fpt


def plan(cfg, hardware_name: str, chips, tokens: float, *, mfu=None, hfu=None,
         tokens_per_sec=None, price=None, remat=None, memory_fn=estimate_memory) -> dict:
  """Everything ``trainer plan`` prints, as one dict."""
  hw = hardware.get(hardware_name)
  if not (isinstance(chips, int) and chips > 0):
    raise ConfigError(f'--chips={chips}: must be a positive whole number of chips')
  if not tokens > 0:
    raise ConfigError(f'--tokens={tokens}: must be positive')
  if price is not None and not 0 <= price < math.inf:
    raise ConfigError(f'--price={price}: dollars per chip-hour must be a finite number >= 0')
  if remat is not None:
    cfg.model.remat = remat
  config_lib.validate(cfg, chips * hw.devices_per_chip)
  mcfg = model.ModelConfig.from_config(cfg.model)
  seq = cfg.train.seq_len
  model_fpt = model.flops_per_token(mcfg, seq)
  hw_fpt = model.hardware_flops_per_token(mcfg, seq)
  if hw.peak_flops:
    peak = hw.peak_flops
  else:
    from trainer import metrics
    peak = metrics.measure_peak_flops(cfg.model.dtype)
  tps = _throughput(peak * chips, model_fpt, hw_fpt, mfu, hfu, tokens_per_sec)
  if price is not None:
    cfg.cost.price_per_chip_hour = float(price)
  rates = hardware.Rates.from_config(cfg.cost, hw, chips)
  hours = tokens / tps / 3600
  memory = memory_fn(cfg, mcfg, hw, chips)
  if memory['state_bytes'] > memory['capacity_bytes']:
    at_least = math.ceil(chips * memory['state_bytes'] / memory['capacity_bytes'])
    raise ConfigError(
        f"cannot fit: parameters, gradients and Adam state need {memory['state_bytes'] / 1e9:,.1f}"
        f" GB per device (rules {cfg.mesh.rules}, mesh {memory['mesh']}) but each {hw.name} "
        f"device holds {memory['capacity_bytes'] / 1e9:,.1f} GB; use at least {at_least:,} chips "
        f"with parameters sharded over fsdp")
  return {
      'params': model.param_count(mcfg), 'tokens': tokens, 'seq_len': seq,
      'hardware': hw.name, 'chips': chips, 'remat': mcfg.remat,
      'model_flops_per_token': model_fpt, 'hardware_flops_per_token': hw_fpt,
      'model_flops': model_fpt * tokens, 'hardware_flops': hw_fpt * tokens,
      'peak_flops_per_chip': peak, 'tokens_per_sec': tps,
      'mfu': model_fpt * tps / (peak * chips), 'hfu': hw_fpt * tps / (peak * chips),
      'hardware_tflops_per_chip': hw_fpt * tps / chips / 1e12,
      'hours': hours, 'days': hours / 24,
      'price_per_chip_hour': rates.price_per_chip_hour, 'dollars_per_hour': rates.dollars(1.0),
      'dollars': rates.dollars(hours), 'kwh': rates.kwh(hours), 'co2e_kg': rates.co2e_kg(hours),
      'power_w_per_chip': rates.power_w, 'pue': rates.pue,
      'kg_co2e_per_kwh': rates.kg_co2e_per_kwh,
      'memory': memory, 'fits': memory['total_bytes'] <= memory['capacity_bytes']}


def format_plan(p: dict) -> str:
  """The human-readable plan."""
  m = p['memory']
  verdict = 'fits' if p['fits'] else 'does NOT fit (try --remat=full or more micro-batches)'
  rows = [
      ('parameters', f"{p['params']:,} (seq_len {p['seq_len']}, remat {p['remat']})"),
      ('hardware', f"{p['chips']:,} x {p['hardware']} at {p['peak_flops_per_chip'] / 1e12:,.0f} "
                   f"TFLOP/s peak per chip"),
      ('tokens', f"{p['tokens']:.3g}"),
      ('FLOPs', f"model {p['model_flops']:.3g} (MFU counts these), hardware "
                f"{p['hardware_flops']:.3g} (HFU: with remat recomputation)"),
      ('throughput', f"{p['tokens_per_sec']:,.0f} tokens/s: MFU {100 * p['mfu']:.1f}%, "
                     f"HFU {100 * p['hfu']:.1f}%, {p['hardware_tflops_per_chip']:,.1f} "
                     f"hardware TFLOP/s per chip"),
      ('time', f"{p['hours']:,.1f} hours = {p['days']:,.2f} days"),
      ('dollars', f"${p['dollars']:,.0f} at ${p['dollars_per_hour']:,.2f}/hour "
                  f"(${p['price_per_chip_hour']:,.3f} per chip-hour)"),
      ('energy', f"{p['kwh']:,.0f} kWh ({p['power_w_per_chip']:.0f} W per chip, PUE {p['pue']})"),
      ('carbon', f"{p['co2e_kg'] / 1000:,.2f} t CO2e at {p['kg_co2e_per_kwh']} kg/kWh"),
      ('memory/device', f"state {m['state_bytes'] / 1e9:,.2f} GB + activations "
                        f"{m['activation_bytes'] / 1e9:,.2f} GB = {m['total_bytes'] / 1e9:,.2f} "
                        f"GB of {m['capacity_bytes'] / 1e9:,.1f} GB ({m['source']}, mesh "
                        f"{m['mesh']}): {verdict}"),
  ]
  return '\n'.join(f'{k:<14} {v}' for k, v in rows)
