"""``--budget=DOLLARS``: what the sweep's points have spent, and what the next one would cost.

Spent dollars are the points' own cost accounting (the last ``dollars`` in each
metrics.jsonl). A running point adds what its ``projected_dollars`` says is still to come.
A point not yet started is priced at the dollars per model FLOP its finished siblings
measured; before any has run, ``trainer plan`` prices it (an assumed MFU).
"""
from __future__ import annotations

import json

from etils import epath

from trainer.config import ConfigError


def _last(records: list[dict], key: str) -> float:
  values = [r[key] for r in records if key in r]
  return float(values[-1]) if values else 0.0


def point_flops(cfg) -> float:
  """Model FLOPs of a whole run of ``cfg`` (the MFU convention)."""
  from trainer import model
  t = cfg.train
  tokens = t.target_tokens or t.steps * t.batch_size * t.seq_len
  return float(model.flops_per_token(model.ModelConfig.from_config(cfg.model), t.seq_len)) * tokens


def dollars_per_flop(records_by_dir: dict[str, list[dict]]) -> float | None:
  """Dollars over model FLOPs of the points that have records and an accounting.json."""
  dollars = flops = 0.0
  for workdir, records in records_by_dir.items():
    path = epath.Path(workdir) / 'accounting.json'
    if not records or not path.exists():
      continue
    per_token = json.loads(path.read_text())['model_flops_per_token']
    dollars += _last(records, 'dollars')
    flops += per_token * _last(records, 'tokens')
  return dollars / flops if flops else None


def planned_dollars(cfg, cpu_host: bool) -> float:
  """``trainer plan``'s dollars for ``cfg`` on its cost.hardware (a CPU host: 'cpu')."""
  from trainer import plan
  hardware = cfg.cost.hardware or ('cpu' if cpu_host else '')
  if not hardware:
    raise ConfigError('--budget: no point has run yet, so the first is priced by trainer plan, '
                      'which needs cost.hardware; set it in the sweep\'s fixed overrides')
  t = cfg.train
  tokens = t.target_tokens or t.steps * t.batch_size * t.seq_len
  return plan.plan(cfg.copy_and_resolve_references(), hardware, cfg.cost.chips or 1,
                   float(tokens))['dollars']


class Budget:
  """Decides whether one more point may start."""

  def __init__(self, limit: float, cpu_host: bool):
    self.limit, self.cpu_host = limit, cpu_host
    self.stopped = ''

  def check(self, cfg, name: str, records_by_dir: dict, running: list[str]) -> str:
    """'' if ``name`` may start, else the reason it may not (also kept in ``stopped``)."""
    spent = sum(_last(r, 'dollars') for r in records_by_dir.values())
    ahead = sum(max(_last(records_by_dir.get(w, []), 'projected_dollars') -
                    _last(records_by_dir.get(w, []), 'dollars'), 0.0) for w in running)
    rate = dollars_per_flop(records_by_dir)
    cost = rate * point_flops(cfg) if rate else planned_dollars(cfg, self.cpu_host)
    if spent + ahead + cost <= self.limit:
      return ''
    self.stopped = (f'budget ${self.limit:,.4f} reached: spent ${spent:,.4f} + ${ahead:,.4f} still '
                    f'to come on running points + ${cost:,.4f} projected for {name} would pass it')
    return self.stopped
