"""``trainer report WORKDIR``: a run's summary table and plots, from its metrics.jsonl."""
from __future__ import annotations

import io
import statistics

from trainer import storage
from trainer.config import ConfigError

PLOTS = ('loss.png', 'throughput.png')


def load(workdir: str) -> list[dict]:
  """The run's records; a workdir without any is a ConfigError."""
  from trainer import metrics
  if not storage.isdir(workdir):
    raise ConfigError(f'report: no such directory {workdir!r}; give a trainer train --workdir')
  records = metrics.read_records(workdir)
  if not records:
    raise ConfigError(f'report: {workdir} has no metrics.jsonl records; give the --workdir '
                      'of a trainer train run')
  return records


def summary(records: list[dict]) -> dict:
  """Totals from the last record, medians of the rates, the final losses."""
  # `trainer eval` appends records of eval_* scores only; the training records carry the rest.
  records = [r for r in records if 'loss' in r] or records
  last = records[-1]
  steady = records[1:] or records  # The first record's step time includes warm-up.
  evals = [r['eval_loss'] for r in records if 'eval_loss' in r]
  out = {'steps': last['step'], 'tokens': last.get('tokens'),
         'wall_s': last.get('time_wall_s'), 'goodput': last.get('goodput'),
         'tokens_per_sec': statistics.median(r['tokens_per_sec'] for r in steady),
         'mfu': statistics.median(r['mfu'] for r in steady),
         'dollars': last.get('dollars'), 'kwh': last.get('kwh'), 'co2e_kg': last.get('co2e_kg'),
         'train_loss': last['loss'], 'eval_loss': evals[-1] if evals else None}
  out['overheads_s'] = {k[5:-2]: v for k, v in last.items()
                        if k.startswith('time_') and k not in ('time_wall_s', 'time_step_s')}
  return out


def _fmt(value, spec: str) -> str:
  return 'n/a' if value is None else format(value, spec)


def format_summary(s: dict) -> str:
  hours = None if s['wall_s'] is None else s['wall_s'] / 3600
  overheads = ', '.join(f'{k} {v:,.1f} s' for k, v in s['overheads_s'].items() if v)
  rows = [
      ('steps', f"{s['steps']:,}"), ('tokens', _fmt(s['tokens'], ',')),
      ('wall time', f"{_fmt(hours, ',.3f')} hours"),
      ('goodput', f"{_fmt(None if s['goodput'] is None else 100 * s['goodput'], '.1f')}% "
                  f"({overheads or 'no overheads recorded'})"),
      ('tokens/s', f"{s['tokens_per_sec']:,.0f} (median)"),
      ('MFU', f"{100 * s['mfu']:.2f}% (median)"),
      ('dollars', f"${_fmt(s['dollars'], ',.4f')}"), ('energy', f"{_fmt(s['kwh'], ',.4f')} kWh"),
      ('CO2e', f"{_fmt(s['co2e_kg'], ',.4f')} kg"),
      ('train loss', f"{s['train_loss']:.4f} (final)"),
      ('val loss', f"{_fmt(s['eval_loss'], '.4f')} (final)"),
  ]
  return '\n'.join(f'{k:<11} {v}' for k, v in rows)


def _save_png(fig, path: str):
  from matplotlib import pyplot as plt
  buffer = io.BytesIO()  # Rendered in memory: the path may be a URL.
  fig.savefig(buffer, format='png', dpi=100, bbox_inches='tight')
  plt.close(fig)
  storage.write_bytes(path, buffer.getvalue())


def plot(records: list[dict], out_dir: str) -> list[str]:
  """Loss against tokens; tokens/s and MFU against step. Returns the PNG paths."""
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt
  storage.makedirs(out_dir)
  tokens = [r.get('tokens', r['step']) for r in records]
  fig, ax = plt.subplots(figsize=(7, 4))
  ax.plot(tokens, [r['loss'] for r in records], label='train')
  evals = [(t, r['eval_loss']) for t, r in zip(tokens, records) if 'eval_loss' in r]
  if evals:
    ax.plot(*zip(*evals), 'o-', label='validation')
  ax.set(xlabel='tokens' if 'tokens' in records[-1] else 'step', ylabel='loss',
         title='Loss against tokens')
  ax.legend()
  loss_path = storage.join(out_dir, PLOTS[0])
  _save_png(fig, loss_path)

  steps = [r['step'] for r in records]
  fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
  top.plot(steps, [r['tokens_per_sec'] for r in records])
  top.set(ylabel='tokens/s', title='Throughput and MFU')
  bottom.plot(steps, [100 * r['mfu'] for r in records])
  bottom.set(xlabel='step', ylabel='MFU (%)')
  speed_path = storage.join(out_dir, PLOTS[1])
  _save_png(fig, speed_path)
  return [loss_path, speed_path]


def report(workdir: str, plots: bool = True) -> str:
  """The summary table, and where the plots went."""
  records = load(workdir)
  text = format_summary(summary(records))
  if plots:
    paths = plot(records, storage.join(workdir, 'plots'))
    text += '\nplots       ' + ', '.join(paths)
  return text
