"""Throughput, MFU and the metrics log (``WORKDIR/metrics.jsonl``, one JSON object a line)."""
from __future__ import annotations

import json
import math
import os
import time

import jax
import jax.numpy as jnp


def measure_peak_flops(dtype: str, size: int = 2048, repeats: int = 3) -> float:
  """Best dense-matmul FLOP/s of one device in the compute dtype (float32 accumulation)."""
  dt = jnp.dtype(dtype)
  a = jnp.ones((size, size), dt)
  matmul = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
  matmul(a, a).block_until_ready()
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best


def peak_flops_total(dtype: str) -> float:
  """Peak FLOP/s of all devices. Fake CPU devices share one host, so CPU counts hosts."""
  per_device = measure_peak_flops(dtype)
  if jax.devices()[0].platform == 'cpu':
    return per_device * jax.process_count()
  return per_device * jax.device_count()


class Writer:
  """Appends metrics lines; only process 0 writes."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.active = jax.process_index() == 0

  def write(self, record: dict):
    if self.active:
      with open(self.path, 'a') as f:
        f.write(json.dumps(record) + '\n')


def format_line(r: dict) -> str:
  parts = [f"step {r['step']:>6}", f"loss {r['loss']:.4f}"]
  if 'eval_loss' in r:
    parts.append(f"eval {r['eval_loss']:.4f}")
  parts += [f"lr {r['lr']:.2e}", f"gnorm {r['grad_norm']:.3f}",
            f"{r['tokens_per_sec']:,.0f} tok/s", f"{r['step_time_s']:.3f} s/step",
            f"MFU {100 * r['mfu']:.1f}%"]
  return ' | '.join(parts)


def keep_until(workdir: str, step: int):
  """Drops lines after ``step`` (and a torn last line): a resumed run never repeats a step."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if jax.process_index() != 0 or not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue  # A line cut short by a kill.
    if record.get('step', 0) <= step:
      kept.append(line if line.endswith('\n') else line + '\n')
  if kept != lines:
    with open(path + '.tmp', 'w') as f:
      f.writelines(kept)
    os.replace(path + '.tmp', path)
