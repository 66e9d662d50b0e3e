"""PNG plots of a sweep: final loss against each swept axis, all loss curves, the scaling fit."""
from __future__ import annotations

import io

from etils import epath

from trainer.sweep import spec


def _pyplot():
  import matplotlib
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt
  return plt


def _save(fig, path: epath.Path) -> epath.Path:
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=100, bbox_inches='tight')
  _pyplot().close(fig)
  path.write_bytes(buf.getvalue())  # Through epath: a sweep dir may be on gs://.
  return path


def _numeric(values) -> bool:
  return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def final_loss_vs_axis(rows: list[dict], axis: str, objective: str, out: epath.Path):
  """Final train loss and final objective of finished points against one swept axis."""
  plt = _pyplot()
  done = [r for r in rows if r['status'] == 'done' and axis in r['overrides']]
  fig, ax = plt.subplots(figsize=(6, 4))
  xs = [r['overrides'][axis] for r in done]
  if not _numeric(xs):
    labels = list(dict.fromkeys(str(x) for x in xs))
    xs = [labels.index(str(x)) for x in xs]
    ax.set_xticks(range(len(labels)), labels)
  elif xs and min(xs) > 0 and max(xs) / min(xs) >= 10:
    ax.set_xscale('log')
  series = [('final_loss', 'final train loss')]
  if objective != 'loss':
    series.append(('eval_loss' if objective == 'eval_loss' else objective, f'final {objective}'))
  for key, label in series:
    pts = sorted((x, r[key]) for x, r in zip(xs, done) if isinstance(r.get(key), (int, float)))
    if pts:
      ax.plot(*zip(*pts), 'o-', label=label)
  ax.set(xlabel=axis, ylabel='loss', title=f'Final loss against {axis}')
  if done:
    ax.legend()
  name = 'final_loss_vs_' + spec.short_keys([axis])[axis].replace('/', '_') + '.png'
  return _save(fig, out / name)


def loss_curves(rows: list[dict], out: epath.Path):
  """Every point's train loss against tokens on one figure."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(8, 5))
  for r in rows:
    if r['curve']:
      ax.plot(*zip(*r['curve']), label=f"{r['name']} ({r['status']})", linewidth=1)
  ax.set(xlabel='tokens', ylabel='train loss', title='Loss curves')
  if any(r['curve'] for r in rows):
    ax.legend(fontsize='small')
  return _save(fig, out / 'loss_curves.png')


def scaling_fit(rows: list[dict], fit: dict, out: epath.Path):
  """Final loss against training compute, with the fitted power law out to 10x."""
  import numpy as np
  from trainer.sweep import results
  plt = _pyplot()
  done = [r for r in rows if r['status'] == 'done' and r['compute_flops'] != '']
  key = 'eval_loss' if all(isinstance(r['eval_loss'], float) for r in done) else 'final_loss'
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot([r['compute_flops'] for r in done], [r[key] for r in done], 'o', label='points')
  grid = np.geomspace(min(r['compute_flops'] for r in done), fit['compute_10x'], 100)
  ax.plot(grid, results.power_law(grid, fit['a'], fit['b'], fit['c']), '-',
          label=f"{fit['a']:.3g} C^{fit['b']:.3f} + {fit['c']:.3f}")
  ax.plot([fit['compute_10x']], [fit['loss_at_10x']], 'x', label='prediction at 10x')
  ax.set(xscale='log', xlabel='training compute (model FLOPs)', ylabel=key,
         title='Scaling law fit')
  ax.legend()
  return _save(fig, out / 'scaling_fit.png')


def write_all(out: epath.Path, rows: list[dict], axes: list[str], objective: str,
              fit: dict | None) -> list[epath.Path]:
  out = out / 'plots'
  out.mkdir(parents=True, exist_ok=True)
  paths = [final_loss_vs_axis(rows, a, objective, out) for a in axes]
  paths.append(loss_curves(rows, out))
  if fit:
    paths.append(scaling_fit(rows, fit, out))
  return paths
