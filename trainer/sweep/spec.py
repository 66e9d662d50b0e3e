"""A sweep file read into named points: each point's overrides, workdir and ``trainer train`` command.

``get_sweep()`` returns a dict with these keys (only ``config`` and one search are required):

- ``config``: the base config, ``configs/FILE.py[:VARIANT]``; ``fixed``: overrides every point gets.
- ``grid``: {key: [values]}, every combination; ``zip``: {key: [values]} walked together
  (equal lengths), crossed with the grid.
- ``random``: {key: Distribution}, ``count`` draws from Optuna's seeded RandomSampler;
  ``tpe``: the same for Optuna's TPE sampler (Bayesian; later points depend on results).
- ``seed``: sampler seed (default 0); ``seeds``: [config seeds], every point repeated per seed.
- ``objective``: the metrics.jsonl field to optimise, final value (default ``eval_loss``);
  ``direction``: ``minimize`` (default) or ``maximize``.
- ``scaling_fit``: fit loss = a * C^b + c against training compute (default: when a model
  size key is swept); ``prune_startup_trials`` (default 1) and ``prune_warmup_steps``
  (default 0): when ``--prune`` may start stopping points.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import itertools
import math
import os
import re
import shlex

from trainer import config as config_lib
from trainer.config import ConfigError
from trainer.sweep import Distribution

KEYS = ('config', 'fixed', 'grid', 'zip', 'random', 'tpe', 'count', 'seed', 'seeds', 'objective',
        'direction', 'scaling_fit', 'prune_startup_trials', 'prune_warmup_steps', 'name')
SIZE_KEYS = ('model.embed_dim', 'model.num_layers', 'model.num_heads', 'model.mlp_dim',
             'model.proj_dim')
MAX_NAME = 80  # Longer names are cut and given a hash: well under any filesystem's 255.


@dataclasses.dataclass
class Sweep:
  """A validated sweep file."""
  path: str
  name: str
  config: str
  fixed: dict
  grid: dict
  zipped: dict
  space: dict           # random or tpe axes: {key: Distribution}
  sampler: str          # 'grid', 'random' or 'tpe'
  count: int
  seed: int
  seeds: list
  objective: str = 'eval_loss'
  direction: str = 'minimize'
  scaling_fit: bool | None = None
  prune_startup_trials: int = 1
  prune_warmup_steps: int = 0

  @property
  def axes(self) -> list[str]:
    """Swept keys in name order."""
    return [*self.zipped, *self.grid, *self.space] + (['seed'] if self.seeds else [])

  def wants_fit(self) -> bool:
    if self.scaling_fit is not None:
      return self.scaling_fit
    return any(k in SIZE_KEYS for k in self.axes)


@dataclasses.dataclass(frozen=True)
class Point:
  """One run of the sweep: its swept values (``overrides``) and the name derived from them."""
  name: str
  overrides: dict


def _fail(path: str, message: str):
  raise ConfigError(f'{path}: {message}')


def _module(path: str):
  if not os.path.isfile(path):
    raise ConfigError(f'sweep: no such file {path!r}; give a sweep file like configs/sweeps/tiny_lr.py')
  spec = importlib.util.spec_from_file_location('_trainer_sweep', path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # A sweep file is user code: any error is bad input.
    _fail(path, f'cannot be read ({type(e).__name__}: {e})')
  if not hasattr(module, 'get_sweep'):
    _fail(path, 'defines no get_sweep() function')
  return module


def _check_axes(path: str, what: str, axes, want_list: bool):
  if not isinstance(axes, dict):
    _fail(path, f'{what} must be a dict of config key to values')
  for key, values in axes.items():
    if want_list and (not isinstance(values, (list, tuple)) or not values):
      _fail(path, f'{what}[{key!r}] is empty or not a list; give at least one value')
    if not want_list and not isinstance(values, Distribution):
      _fail(path, f'{what}[{key!r}] must be a distribution: uniform, log_uniform, integer or '
            'choice from trainer.sweep')
    if not want_list:
      _check_distribution(path, f'{what}[{key!r}]', values)


def _check_distribution(path: str, where: str, d: Distribution):
  if d.kind == 'choice':
    if not d.values:
      _fail(path, f'{where}: choice() needs at least one value')
    return
  if not d.low < d.high:
    _fail(path, f'{where}: low {d.low} must be below high {d.high}')
  if d.kind == 'log_uniform' and d.low <= 0:
    _fail(path, f'{where}: log_uniform needs a positive low, not {d.low}')


def load(path: str) -> Sweep:
  """Reads and checks a sweep file (structure only; :func:`check` validates the points)."""
  raw = _module(path).get_sweep()
  if not isinstance(raw, dict):
    _fail(path, 'get_sweep() must return a dict')
  unknown = sorted(set(raw) - set(KEYS))
  if unknown:
    _fail(path, f'unknown sweep key {unknown[0]!r}; sweep keys are {", ".join(KEYS)}')
  if not raw.get('config'):
    _fail(path, "no 'config': name the base config, e.g. 'configs/tiny.py'")
  if not isinstance(raw.get('fixed', {}), dict):
    _fail(path, "'fixed' must be a dict of config key to value")
  for what in ('grid', 'zip'):
    _check_axes(path, what, raw.get(what, {}), want_list=True)
  zipped = {k: list(v) for k, v in raw.get('zip', {}).items()}
  if len({len(v) for v in zipped.values()}) > 1:
    _fail(path, 'zip axes have different lengths ' +
          ', '.join(f'{k}: {len(v)}' for k, v in zipped.items()) + '; give each the same count')
  searches = [s for s in ('random', 'tpe') if s in raw]
  if len(searches) > 1 or (searches and (raw.get('grid') or zipped)):
    _fail(path, 'give grid/zip axes, or random, or tpe: one kind of search per sweep')
  sampler = searches[0] if searches else 'grid'
  space = raw.get(sampler, {}) if searches else {}
  _check_axes(path, sampler, space, want_list=False)
  if not (raw.get('grid') or zipped or space):
    _fail(path, 'no axes: give grid, zip, random or tpe with at least one key')
  count = raw.get('count', 0 if sampler == 'grid' else None)
  if sampler != 'grid' and (not isinstance(count, int) or count < 1):
    _fail(path, f"{sampler} needs 'count', the number of points (a positive integer)")
  seeds = list(raw.get('seeds', []))
  if seeds and sampler == 'tpe':
    _fail(path, "'seeds' does not combine with tpe; put 'seed' in the tpe space as a choice")
  if 'seeds' in raw and (not seeds or not all(isinstance(s, int) for s in seeds)):
    _fail(path, "'seeds' must be a non-empty list of integers")
  sweep = Sweep(path=path, name=raw.get('name') or os.path.splitext(os.path.basename(path))[0],
                config=raw['config'], fixed=dict(raw.get('fixed', {})),
                grid={k: list(v) for k, v in raw.get('grid', {}).items()}, zipped=zipped,
                space=dict(space), sampler=sampler, count=count, seed=int(raw.get('seed', 0)),
                seeds=seeds, objective=raw.get('objective', 'eval_loss'),
                direction=raw.get('direction', 'minimize'), scaling_fit=raw.get('scaling_fit'),
                prune_startup_trials=int(raw.get('prune_startup_trials', 1)),
                prune_warmup_steps=int(raw.get('prune_warmup_steps', 0)))
  if sweep.direction not in ('minimize', 'maximize'):
    _fail(path, f"direction {sweep.direction!r}: choose 'minimize' or 'maximize'")
  if len(set(sweep.axes)) != len(sweep.axes):
    _fail(path, 'a key is swept twice (in grid, zip, random/tpe or seeds); sweep it once')
  clash = sorted(set(sweep.axes) & set(sweep.fixed))
  if clash:
    _fail(path, f'{clash[0]!r} is both fixed and swept; keep it in one place')
  return sweep


def format_value(value) -> str:
  """A value as a name part: 3e-4, 0.05, 256, true."""
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, float):
    if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e5):
      mantissa, exponent = f'{value:.3e}'.split('e')
      mantissa = mantissa.rstrip('0').rstrip('.')
      return f'{mantissa}e{int(exponent)}'
    return f'{value:.4g}'
  return str(value)


def cli_value(value) -> str:
  """A value as ``--config.key=VALUE`` text that parses back to the same value."""
  if isinstance(value, bool):
    return str(value).lower()
  return repr(value) if isinstance(value, float) else str(value)


def short_keys(keys: list[str]) -> dict[str, str]:
  """Each key's last part (optim.lr -> lr), or the whole key where last parts clash."""
  last = [k.rsplit('.', 1)[-1] for k in keys]
  return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def name_of(overrides: dict, keys: list[str]) -> str:
  """``lr=3e-4,embed_dim=256,seed=1``; past MAX_NAME characters, cut and given a hash."""
  short = short_keys(keys)
  name = ','.join(f'{short[k]}={format_value(overrides[k])}' for k in keys)
  name = re.sub(r'[^A-Za-z0-9=,.+_-]', '_', name)  # Safe as a path on any filesystem.
  if len(name) > MAX_NAME:
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    name = f'{name[:MAX_NAME - 9]}~{digest}'
  return name


def round_draw(value):
  """A drawn float to 4 significant digits, so that the name shows the value exactly."""
  if isinstance(value, float) and value != 0 and math.isfinite(value):
    return float(f'{value:.4g}')
  return value


def make_point(sweep: Sweep, overrides: dict) -> Point:
  return Point(name_of(overrides, sweep.axes), dict(overrides))


def grid_points(sweep: Sweep) -> list[Point]:
  """Zip rows x grid combinations x seeds, in declaration order."""
  rows = [dict(zip(sweep.zipped, vals)) for vals in zip(*sweep.zipped.values())] or [{}]
  combos = [dict(zip(sweep.grid, vals)) for vals in itertools.product(*sweep.grid.values())]
  seeds = [{'seed': s} for s in sweep.seeds] or [{}]
  return [make_point(sweep, {**r, **c, **s}) for r in rows for c in combos for s in seeds]


def sampled_points(sweep: Sweep, n: int) -> list[Point]:
  """The first ``n`` draws of the sweep's seeded sampler (random: all of them; TPE: before results)."""
  from trainer.sweep import runner  # Optuna only where a sampler is needed.
  optuna = runner.optuna_module()
  sampler_cls = optuna.samplers.RandomSampler if sweep.sampler == 'random' else optuna.samplers.TPESampler
  study = optuna.create_study(sampler=sampler_cls(seed=sweep.seed))
  dists = runner.distributions(sweep.space)
  out = []
  for _ in range(n):
    trial = study.ask(fixed_distributions=dists)
    draws = {k: round_draw(trial.params[k]) for k in sweep.space}
    out += [make_point(sweep, {**draws, **({'seed': s} if sweep.seeds else {})})
            for s in (sweep.seeds or [None])]
  return out


def points(sweep: Sweep, n: int | None = None) -> list[Point]:
  """Every grid point, every random draw, or the first ``n`` TPE draws (default: count)."""
  if sweep.sampler == 'grid':
    return grid_points(sweep)
  return sampled_points(sweep, sweep.count if n is None else n)


def overrides_of(sweep: Sweep, point: Point) -> dict:
  """Fixed then swept overrides, as config keys."""
  return {**sweep.fixed, **point.overrides}


def train_args(sweep: Sweep, point: Point, workdir: str) -> list[str]:
  """The arguments after ``trainer train`` that run ``point`` in ``workdir``."""
  args = [f'--config={sweep.config}']
  args += [f'--config.{k}={cli_value(v)}' for k, v in overrides_of(sweep, point).items()]
  return args + [f'--workdir={workdir}']


def train_command(sweep: Sweep, point: Point, workdir: str) -> str:
  return shlex.join(['trainer', 'train', *train_args(sweep, point, workdir)])


def point_config(sweep: Sweep, point: Point):
  """The point's config, built from the same override text ``trainer train`` will be given."""
  text = {k: cli_value(v) for k, v in overrides_of(sweep, point).items()}
  return config_lib.load(sweep.config, text)


def check(sweep: Sweep, pts: list[Point], devices: int):
  """Validates every point's config as ``trainer train`` would on ``devices`` devices."""
  try:
    config_lib.load(sweep.config)
  except ConfigError as e:
    _fail(sweep.path, f'config: {e}')
  for point in pts:
    try:
      config_lib.validate(point_config(sweep, point), devices)
    except ConfigError as e:
      _fail(sweep.path, f'point {point.name}: {e}')
  names = [p.name for p in pts]
  if len(set(names)) != len(names):
    twice = next(n for n in names if names.count(n) > 1)
    _fail(sweep.path, f'two points are both named {twice!r}; make the swept values differ')


def probe_points(sweep: Sweep) -> list[Point]:
  """For TPE: points at each axis's ends (the others at their low ends), to validate the space."""
  low = {k: (d.values[0] if d.kind == 'choice' else d.low) for k, d in sweep.space.items()}
  out = [make_point(sweep, {**low, **({'seed': sweep.seeds[0]} if sweep.seeds else {})})]
  for key, d in sweep.space.items():
    for value in (d.values if d.kind == 'choice' else (d.high,)):
      over = {**low, key: value, **({'seed': sweep.seeds[0]} if sweep.seeds else {})}
      out.append(make_point(sweep, over))
  return list({p.name: p for p in out}.values())
