"""``trainer sweep-report SWEEPDIR``: results.csv, results.md, results.json, plots, scaling-law fit."""
from __future__ import annotations

import csv
import io
import json
import math
import os

from etils import epath

from trainer.config import ConfigError

COLUMNS = ('name', 'status', 'steps', 'tokens', 'final_loss', 'eval_loss', 'tokens_per_sec', 'mfu',
           'dollars', 'kwh', 'co2e_kg', 'compute_flops')
META = 'sweep.json'


def point_row(name: str, overrides: dict, status: str, reason: str, workdir: str) -> dict:
  """One point's figures from its metrics.jsonl and accounting.json (blank where it has none)."""
  from trainer import report
  from trainer.sweep import runner
  row = {c: '' for c in COLUMNS}
  row.update(name=name, status=status, reason=reason, overrides=overrides)
  records = runner.read_records(workdir)
  if records:
    s = report.summary(records)
    row.update(steps=s['steps'], tokens=s['tokens'], final_loss=s['train_loss'],
               eval_loss=s['eval_loss'], tokens_per_sec=s['tokens_per_sec'], mfu=s['mfu'],
               dollars=s['dollars'], kwh=s['kwh'], co2e_kg=s['co2e_kg'])
    accounting = epath.Path(workdir) / 'accounting.json'
    if accounting.exists() and s['tokens']:
      per_token = json.loads(accounting.read_text())['model_flops_per_token']
      row['compute_flops'] = float(per_token) * s['tokens']
  row['curve'] = [(r.get('tokens', r['step']), r['loss']) for r in records]
  return row


def collect(sweepdir: str, storage: str = '') -> tuple[dict, list[dict]]:
  """The sweep's description and one row per point (planned points and every trial's point)."""
  from trainer.sweep import runner
  meta_path = epath.Path(sweepdir) / META
  if not meta_path.exists():
    raise ConfigError(f'sweep-report: {sweepdir} has no {META}; give the --workdir of a trainer sweep')
  meta = json.loads(meta_path.read_text())
  url = storage or meta['storage']
  if '***' in url:
    raise ConfigError(f'sweep-report: the storage URL needs its password; pass --storage={url}')
  optuna = runner.optuna_module()
  try:
    study = optuna.load_study(study_name=meta['study'], storage=url)
  except Exception as e:  # A missing study or an unreachable server.
    raise ConfigError(f'sweep-report: cannot load study {meta["study"]!r} from {url} ({e})') from None
  groups = runner.group_by_name(study.get_trials(deepcopy=False))
  points = {p['name']: p['overrides'] for p in meta['points']}
  from trainer.sweep import worker
  for name, trials in groups.items():
    points.setdefault(name, worker.overrides_of(trials[0]))
  rows = []
  for name, overrides in points.items():
    status, reason = runner.point_status(groups.get(name, []))
    rows.append(point_row(name, overrides, status, reason, os.path.join(sweepdir, name)))
  return meta, rows


def best(rows: list[dict], objective: str, direction: str) -> str:
  """Name of the best finished point ('' if none)."""
  key = 'final_loss' if objective == 'loss' else objective
  done = [r for r in rows if r['status'] == 'done' and isinstance(r.get(key), (int, float))]
  if not done:
    return ''
  pick = min if direction == 'minimize' else max
  return pick(done, key=lambda r: r[key])['name']


def power_law(compute, a, b, c):
  return a * compute**b + c


def fit_power_law(compute: list[float], loss: list[float]) -> dict:
  """Least-squares loss = a * C^b + c (Kaplan et al. 2020; Hoffmann et al. 2022), b < 0 < c."""
  import numpy as np
  from scipy import optimize
  x, y = np.asarray(compute, float), np.asarray(loss, float)
  if len(x) < 3 or len(set(x)) < 3:
    raise ConfigError('scaling fit: needs at least 3 finished points of different compute')
  scale = x.max()  # Fit in C / C_max: raw compute (1e12..1e24) is badly conditioned.
  lo = float(y.min())
  (a_s, b, c), _ = optimize.curve_fit(
      power_law, x / scale, y, p0=(max(float(y.max()) - lo, 1e-3), -0.3, 0.5 * lo),
      bounds=([0.0, -5.0, 0.0], [np.inf, 0.0, lo]), maxfev=20000)
  a = float(a_s * scale**(-b))
  big = 10 * float(x.max())
  return {'a': a, 'b': float(b), 'c': float(c), 'compute_10x': big,
          'loss_at_10x': float(power_law(big, a, b, c)), 'points': len(x)}


def _write(path: epath.Path, text: str):
  path.write_text(text)


def _csv(rows: list[dict], axes: list[str]) -> str:
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow([*COLUMNS, *axes, 'reason'])
  for r in rows:
    writer.writerow([r[c] for c in COLUMNS] + [r['overrides'].get(a, '') for a in axes]
                    + [r['reason']])
  return out.getvalue()


def _cell(value, spec: str = '.4g') -> str:
  return format(value, spec) if isinstance(value, (int, float)) and value != '' else str(value or '')


def markdown(rows: list[dict], axes: list[str], best_name: str, fit: dict | None) -> str:
  """The table: overrides, status, steps, tokens, losses, tokens/s, MFU, dollars, kWh, CO2e."""
  head = ['', 'name', *axes, 'status', 'steps', 'tokens', 'final loss', 'eval loss', 'tokens/s',
          'MFU', 'dollars', 'kWh', 'kg CO2e']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    mfu = f"{100 * r['mfu']:.1f}%" if r['mfu'] != '' else ''
    cells = ['**best**' if r['name'] == best_name else '', r['name'],
             *[_cell(r['overrides'].get(a, '')) for a in axes],
             r['status'] + (f" ({r['reason']})" if r['reason'] else ''), _cell(r['steps'], 'd'),
             _cell(r['tokens'], ','), _cell(r['final_loss']), _cell(r['eval_loss']),
             _cell(r['tokens_per_sec'], ',.0f'), mfu, _cell(r['dollars'], '.4f'),
             _cell(r['kwh'], '.4f'), _cell(r['co2e_kg'], '.4f')]
    lines.append('| ' + ' | '.join(cells) + ' |')
  if fit:
    lines.append(f"\nScaling fit: loss = {fit['a']:.4g} * C^{fit['b']:.4f} + {fit['c']:.4f} "
                 f"({fit['points']} points); at C = {fit['compute_10x']:.3g} FLOPs (10x the largest) "
                 f"it predicts loss {fit['loss_at_10x']:.4f}")
  return '\n'.join(lines) + '\n'


def report(sweepdir: str, storage: str = '', plots: bool = True) -> str:
  """Writes results.csv, results.md, results.json and plots; returns the table."""
  from trainer.sweep import plots as plots_lib
  meta, rows = collect(sweepdir, storage)
  axes = meta['axes']
  objective = meta['objective']
  best_name = best(rows, objective, meta['direction'])
  fit, fit_error = None, ''
  if meta.get('scaling_fit'):
    done = [r for r in rows if r['status'] == 'done' and r['compute_flops'] != ''
            and isinstance(r['eval_loss' if objective == 'eval_loss' else 'final_loss'], float)]
    key = 'eval_loss' if objective == 'eval_loss' else 'final_loss'
    try:
      fit = fit_power_law([r['compute_flops'] for r in done], [r[key] for r in done])
    except (ConfigError, RuntimeError, ValueError) as e:  # curve_fit raises RuntimeError.
      fit_error = str(e)
  out = epath.Path(sweepdir)
  _write(out / 'results.csv', _csv(rows, axes))
  table = markdown(rows, axes, best_name, fit)
  counts = ', '.join(f'{sum(r["status"] == s for r in rows)} {s}' for s in
                     dict.fromkeys(r['status'] for r in rows))
  head = (f"Sweep {meta['study']}: {len(rows)} points ({counts}); objective final {objective} "
          f"({meta['direction']}); best: {best_name or 'none finished'}.")
  _write(out / 'results.md', f'# {head}\n\n{table}')
  clean = [{k: v for k, v in r.items() if k != 'curve'} for r in rows]
  _write(out / 'results.json', json.dumps({'study': meta['study'], 'objective': objective,
                                           'direction': meta['direction'], 'best': best_name,
                                           'fit': fit, 'fit_error': fit_error or None,
                                           'points': clean}, indent=1, default=_json_default))
  text = head + '\n' + table + (f'scaling fit: {fit_error}\n' if fit_error else '')
  if plots:
    paths = plots_lib.write_all(out, rows, axes, objective, fit)
    text += 'plots: ' + ', '.join(str(p) for p in paths) + '\n'
  return text + f"results: {out / 'results.csv'}, {out / 'results.md'}, {out / 'results.json'}\n"


def _json_default(value):
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return str(value)
