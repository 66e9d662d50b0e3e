"""Throughput, MFU, goodput, dollars and carbon per record, and where records go.

Records go to ``WORKDIR/metrics.jsonl`` (one JSON object a line, always), TensorBoard
event files in ``WORKDIR/tb``, Weights & Biases when enabled, and the console. On object
storage metrics.jsonl is rewritten whole rather than appended (see storage.Appendable).
"""
from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
import time

import jax
import jax.numpy as jnp

from trainer import hardware, model, storage


def measure_peak_flops(dtype: str, size: int = 1024, repeats: int = 8) -> float:
  """Best dense-matmul FLOP/s of one device in the compute dtype (float32 accumulation).

  Every CPU run measures it at start. At 1024 x 8 it took 0.42-0.53 s against 0.78 s at
  2048 x 3, compile included, and found as high a ceiling (higher in the medians of five
  rounds, 1% lower in one later round: benchmarks/startup.py; docs/benchmarks.md).
  """
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


ACCOUNTING = 'accounting.json'


def read_records(workdir: str) -> list[dict]:
  """The records of ``WORKDIR/metrics.jsonl`` (empty if there is none)."""
  path = storage.join(workdir, 'metrics.jsonl')
  if not storage.exists(path):
    return []
  return [json.loads(line) for line in storage.read_text(path).splitlines() if line.strip()]


class Goodput:
  """Wall time by kind; training steps get what no overhead claims.

  Overheads are fed by the loop (``add`` or ``timing``). Totals are cumulative over the
  workdir's runs: a resumed run starts from the last record's totals (``carry_over``).
  """
  OVERHEADS = ('startup', 'compile', 'data', 'eval', 'checkpoint', 'restart')

  def __init__(self):
    self.start = time.perf_counter()
    self.carried = {'wall': 0.0, **{k: 0.0 for k in self.OVERHEADS}}
    self.seconds = {k: 0.0 for k in self.OVERHEADS}

  def add(self, kind: str, seconds: float):
    self.seconds[kind] += seconds

  @contextlib.contextmanager
  def timing(self, kind: str):
    start = time.perf_counter()
    try:
      yield
    finally:
      self.add(kind, time.perf_counter() - start)

  def totals(self) -> dict:
    """Seconds by kind (plus 'wall' and 'step'), cumulative over restarts."""
    out = {'wall': self.carried['wall'] + time.perf_counter() - self.start}
    for k in self.OVERHEADS:
      out[k] = self.carried[k] + self.seconds[k]
    out['step'] = max(out['wall'] - sum(out[k] for k in self.OVERHEADS), 0.0)
    return out

  def fields(self) -> dict:
    totals = self.totals()
    return {'goodput': totals['step'] / max(totals['wall'], 1e-9),
            **{f'time_{k}_s': v for k, v in totals.items()}}

  def carry_over(self, workdir: str, start_step: int):
    """Adds the totals of earlier runs in ``workdir``; steps after the checkpoint become restart.

    Call once the step to resume from is known (0: a fresh run, nothing is carried).
    """
    records = [r for r in read_records(workdir) if 'time_wall_s' in r]
    if not start_step or not records:
      return
    last = records[-1]
    for k in ('wall',) + self.OVERHEADS:
      self.carried[k] += last[f'time_{k}_s']
    at_checkpoint = [r for r in records if r['step'] <= start_step]
    lost = last['time_step_s'] - (at_checkpoint[-1]['time_step_s'] if at_checkpoint else 0.0)
    self.carried['restart'] += max(lost, 0.0)


class Accountant:
  """Turns throughput and wall time into MFU, dollars, energy, carbon and ETA."""

  def __init__(self, cfg, model_cfg, num_devices: int):
    device = jax.devices()[0]
    self.hw = hardware.get(cfg.cost.hardware or hardware.detect(device))
    if self.hw.name == 'cpu':  # Fake CPU devices share one host: a host is the chip.
      chips, peak = jax.process_count(), measure_peak_flops(cfg.model.dtype)
    else:
      chips, peak = num_devices / self.hw.devices_per_chip, self.hw.peak_flops
    self.chips, self.peak_total, self.num_devices = chips, peak * chips, num_devices
    self.rates = hardware.Rates.from_config(cfg.cost, self.hw, chips)
    seq = cfg.train.seq_len
    self.tokens_per_step = cfg.train.batch_size * seq
    self.model_flops = model.flops_per_token(model_cfg, seq)
    self.hardware_flops = model.hardware_flops_per_token(model_cfg, seq)
    self.target_tokens = cfg.train.target_tokens or cfg.train.steps * self.tokens_per_step

  def describe(self) -> dict:
    """The figures behind the accounting, saved once per run as WORKDIR/accounting.json."""
    r = self.rates
    return {'hardware': self.hw.name, 'chips': self.chips, 'devices': self.num_devices,
            'billed_chips': r.chips, 'peak_flops_total': self.peak_total,
            'price_per_chip_hour': r.price_per_chip_hour, 'power_w_per_chip': r.power_w,
            'pue': r.pue, 'kg_co2e_per_kwh': r.kg_co2e_per_kwh,
            'tokens_per_step': self.tokens_per_step, 'model_flops_per_token': self.model_flops,
            'hardware_flops_per_token': self.hardware_flops, 'target_tokens': self.target_tokens}

  def save(self, workdir: str):
    if jax.process_index() == 0:
      storage.write_text(storage.join(workdir, ACCOUNTING), json.dumps(self.describe(), indent=1))

  def fields(self, step: int, tokens_per_sec: float, wall_s: float) -> dict:
    tokens = step * self.tokens_per_step
    hours = wall_s / 3600
    dollars = self.rates.dollars(hours)
    eta_s = max(self.target_tokens - tokens, 0) / max(tokens_per_sec, 1e-9)
    return {
        'tokens': tokens, 'tokens_per_sec_per_device': tokens_per_sec / self.num_devices,
        'tflops_per_device': self.model_flops * tokens_per_sec / self.num_devices / 1e12,
        'mfu': self.model_flops * tokens_per_sec / self.peak_total,
        'hfu': self.hardware_flops * tokens_per_sec / self.peak_total,
        'dollars': dollars, 'dollars_per_mtok': dollars / max(tokens / 1e6, 1e-9),
        'eta_s': eta_s, 'projected_dollars': dollars + self.rates.dollars(eta_s / 3600),
        'kwh': self.rates.kwh(hours), 'co2e_kg': self.rates.co2e_kg(hours)}


class Writer:
  """Appends metrics lines; only process 0 writes.

  On object storage the file is rewritten every few seconds; a checkpoint step's line
  (and the last) is written at once, so a checkpoint never outlives its metrics.
  """

  def __init__(self, workdir: str, checkpoint_every: int = 0):
    self.path = storage.join(workdir, 'metrics.jsonl')
    self.active = jax.process_index() == 0
    self.every = checkpoint_every
    self.file = storage.Appendable(self.path) if self.active else None

  def write(self, record: dict):
    if self.active:
      urgent = bool(self.every) and record['step'] % self.every == 0
      self.file.append(json.dumps(record) + '\n', flush=urgent)

  def close(self):
    if self.active:
      self.file.close()


def _summary_writer():
  """tensorboardX's SummaryWriter, imported without torch.

  tensorboardX imports torch when it is installed, only to accept torch tensors (seconds
  of start-up per run there: benchmarks/tensorboard_import.py); we log Python floats.
  """
  if 'torch' in sys.modules or 'tensorboardX' in sys.modules:
    from tensorboardX import SummaryWriter
    return SummaryWriter
  sys.modules['torch'] = None  # Makes `import torch` raise ImportError, which it handles.
  try:
    from tensorboardX import SummaryWriter
  finally:
    del sys.modules['torch']
  return SummaryWriter


class TensorBoardWriter:
  """One scalar per numeric field at the record's step, in ``WORKDIR/tb``."""

  def __init__(self, workdir: str):
    SummaryWriter = _summary_writer()
    # tensorboardX's own gs:// writer fails; it writes locally and the files are copied up.
    self.dir = storage.MirroredDir(storage.join(workdir, 'tb'))
    self.writer = SummaryWriter(self.dir.local)

  def write(self, record: dict):
    for key, value in record.items():
      if key != 'step' and isinstance(value, (int, float)):
        self.writer.add_scalar(key, value, record['step'])
    self.writer.flush()
    self.dir.sync()

  def close(self):
    self.writer.close()
    self.dir.close()


class WandbWriter:
  """Logs each record to a Weights & Biases run (optional dependency)."""

  def __init__(self, project: str, workdir: str, cfg):
    import wandb
    local = None if storage.is_remote(workdir) else workdir  # wandb keeps its files locally.
    self.run = wandb.init(project=project, dir=local, config=cfg.to_dict())

  def write(self, record: dict):
    self.run.log({k: v for k, v in record.items() if k != 'step'}, step=record['step'])

  def close(self):
    self.run.finish()


def writers(cfg, workdir: str) -> list:
  """JSON Lines always; TensorBoard and W&B as configured. Only process 0 writes."""
  out = [Writer(workdir, cfg.checkpoint.every)]
  if jax.process_index() != 0:
    return out
  if cfg.log.tensorboard:
    out.append(TensorBoardWriter(workdir))
  if cfg.log.wandb_project:
    try:
      out.append(WandbWriter(cfg.log.wandb_project, workdir, cfg))
    except ImportError:
      print('log.wandb_project is set but wandb is not installed (pip install wandb); '
            'logging to metrics.jsonl and TensorBoard only', file=sys.stderr)
  return out


class Console:
  """A tqdm progress bar on a terminal, plain lines otherwise (CI, log files)."""

  def __init__(self, mode: str, total_steps: int, start_step: int, stream=None):
    self.stream = stream or sys.stdout
    use_bar = mode == 'bar' or (mode == 'auto' and self.stream.isatty())
    self.active = jax.process_index() == 0
    self.bar = None
    if use_bar and self.active:
      from tqdm import tqdm
      size = shutil.get_terminal_size((120, 20))  # tqdm hides its bar on a 0-row pty.
      self.bar = tqdm(total=total_steps, initial=start_step, file=self.stream, unit='step',
                      ncols=size.columns, nrows=size.lines)

  def show(self, record: dict):
    if not self.active:
      return
    if self.bar is None:
      print(format_line(record), file=self.stream, flush=True)
      return
    self.bar.update(record['step'] - self.bar.n)
    self.bar.set_postfix_str(short_line(record), refresh=True)
    if 'eval_loss' in record:
      self.bar.write(format_line(record), file=self.stream)

  def close(self):
    if self.bar is not None:
      self.bar.close()


def _duration(seconds: float) -> str:
  seconds = int(seconds)
  d, rest = divmod(seconds, 86400)
  h, rest = divmod(rest, 3600)
  m, s = divmod(rest, 60)
  return f'{d}d{h:02d}h' if d else f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'


def short_line(r: dict) -> str:
  """What the progress bar shows beside the step count."""
  dollars = f"${r['dollars']:,.2f}" if r['dollars'] >= 1 else f"${r['dollars']:.4f}"
  return (f"loss {r['loss']:.3f} | {r['tokens_per_sec']:,.0f} tok/s | "
          f"MFU {100 * r['mfu']:.1f}% | {dollars}")


def format_line(r: dict) -> str:
  parts = [f"step {r['step']:>6}", f"loss {r['loss']:.4f}"]
  if 'eval_loss' in r:
    parts.append(f"eval {r['eval_loss']:.4f}")
  parts += [f"lr {r['lr']:.2e}", f"gnorm {r['grad_norm']:.3f}",
            f"{r['tokens_per_sec']:,.0f} tok/s ({r['tokens_per_sec_per_device']:,.0f}/dev)",
            f"{r['step_time_s']:.3f} s/step", f"{r['tflops_per_device']:.2f} TFLOP/s/dev",
            f"MFU {100 * r['mfu']:.1f}%",
            f"${r['dollars']:,.4f} (${r['dollars_per_mtok']:,.3f}/Mtok)",
            f"ETA {_duration(r['eta_s'])} -> ${r['projected_dollars']:,.2f}",
            f"{r['kwh']:.4f} kWh {r['co2e_kg']:.4f} kgCO2e", f"goodput {100 * r['goodput']:.0f}%"]
  return ' | '.join(parts)


def keep_until(workdir: str, step: int):
  """Drops lines after ``step`` (and a torn last line): a resumed run never repeats a step."""
  path = storage.join(workdir, 'metrics.jsonl')
  if jax.process_index() != 0 or not storage.exists(path):
    return
  lines = storage.read_text(path).splitlines(keepends=True)
  kept = []
  for line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue  # A line cut short by a kill.
    if record.get('step', 0) <= step:
      kept.append(line if line.endswith('\n') else line + '\n')
  if kept != lines:  # One whole-file write: a rename locally, one PUT on object storage.
    storage.write_text(path, ''.join(kept))
