"""The ``trainer sweep`` and ``trainer sweep-report`` verbs (cli.py registers them here)."""
from __future__ import annotations

import json
import os
import shlex

from trainer.config import ConfigError
from trainer.spec import PATH, Key, add_flag
from trainer.sweep import results, runner, spec


def add_parsers(verbs):
  p = verbs.add_parser('sweep', help='run a sweep file (grid, random or TPE) on Optuna')
  p.add_argument('file', help='configs/sweeps/NAME.py with get_sweep()')
  add_flag(p, '--workdir', PATH, required=True,
           help='SWEEPDIR: one workdir per point, sweep.db, results')
  p.add_argument('--dry-run', action='store_true', help='list the points and their commands')
  add_flag(p, '--parallel', Key(1, ge=1), help='points run at once by this worker')
  p.add_argument('--storage', default='', help='Optuna storage URL shared by workers '
                 '(default sqlite:///SWEEPDIR/sweep.db; postgresql://... for a cluster)')
  p.add_argument('--prune', choices=('median', 'hyperband'), help='stop losing points early')
  p.add_argument('--launcher', choices=('local', 'slurm', 'tpu'), default='local',
                 help='run each point here, or hand it to launch/slurm.py or launch/tpu_pod.py')
  p.add_argument('--launcher-args', default='', help="the launcher's own flags, e.g. '--nodes=1'")
  p.add_argument('--check-fit', action='store_true', help='compile each point for --topology '
                 'first; skip those that do not fit')
  p.add_argument('--topology', default='', help='TPU topology for --check-fit, e.g. v4-128')
  add_flag(p, '--budget', Key(0.0, ge=0), default=None,
           help='dollars: launch no point that would pass it')
  p.add_argument('--retry-failed', action='store_true', help='run failed points again')
  add_flag(p, '--devices-per-point', Key(0, ge=0),
                 help='devices each point gets (default: this host\'s, split by --parallel)')
  add_flag(p, '--heartbeat', Key(10, ge=1),
                 help='seconds between trial heartbeats; a trial silent for 3x is taken over')
  p.set_defaults(run=cmd_sweep)
  r = verbs.add_parser('sweep-report', help="a sweep's results table, CSV, plots and scaling fit")
  add_flag(r, 'workdir', PATH, help='the SWEEPDIR of trainer sweep')
  r.add_argument('--storage', default='', help='the storage URL if not the recorded one')
  r.add_argument('--no-plots', action='store_true', help='tables only')
  r.set_defaults(run=cmd_sweep_report)


def options(args) -> runner.Options:
  """The command line as Options; bad combinations are ConfigErrors."""
  if args.check_fit != bool(args.topology):
    raise ConfigError('--check-fit and --topology go together: --check-fit --topology=v4-128')
  if args.launcher_args and args.launcher == 'local':
    raise ConfigError('--launcher-args needs --launcher=slurm or --launcher=tpu')
  workdir = args.workdir if '://' in args.workdir else os.path.abspath(args.workdir)
  return runner.Options(
      workdir=workdir, storage=args.storage, parallel=args.parallel,
      devices_per_point=args.devices_per_point, prune=args.prune or '', launcher=args.launcher,
      launcher_args=tuple(shlex.split(args.launcher_args)), check_fit=args.check_fit,
      topology=args.topology, budget=args.budget, retry_failed=args.retry_failed,
      heartbeat_s=args.heartbeat)


def dry_run(sweep: spec.Sweep, opts: runner.Options, points: list[spec.Point]) -> str:
  what = {'grid': f'{len(points)} points (grid)',
          'random': f'{len(points)} random draws (seed {sweep.seed})',
          'tpe': f'the first {len(points)} TPE draws (seed {sweep.seed}, before any result; '
                 'later draws follow the results)'}[sweep.sampler]
  lines = [f'sweep {sweep.name}: {what}; objective final {sweep.objective} ({sweep.direction}); '
           f'workdir {opts.workdir}']
  for i, p in enumerate(points, 1):
    args = spec.train_args(sweep, p, os.path.join(opts.workdir, p.name))
    over = ' '.join(f'{k}={spec.cli_value(v)}' for k, v in p.overrides.items())
    lines += [f'[{i}/{len(points)}] {p.name}', f'    overrides: {over}',
              f'    {runner.shown_command(opts, args)}']
  return '\n'.join(lines)


def _masked(url: str) -> str:
  from sqlalchemy.engine import make_url
  return make_url(url).render_as_string(hide_password=True)


def write_meta(sweep: spec.Sweep, opts: runner.Options, url: str, planned: list[spec.Point]):
  from etils import epath
  out = epath.Path(opts.workdir)
  out.mkdir(parents=True, exist_ok=True)
  meta = {'file': os.path.abspath(sweep.path), 'study': sweep.name, 'config': sweep.config,
          'sampler': sweep.sampler, 'axes': sweep.axes, 'fixed': sweep.fixed,
          'objective': sweep.objective, 'direction': sweep.direction,
          'scaling_fit': sweep.wants_fit(), 'storage': _masked(url),
          'points': [{'name': p.name, 'overrides': p.overrides} for p in planned]}
  (out / results.META).write_text(json.dumps(meta, indent=1))


def cmd_sweep(args, overrides) -> int:
  from trainer.sweep import worker
  if overrides:
    raise ConfigError("sweep takes no --config.* overrides; put them in the sweep file's 'fixed'")
  sweep = spec.load(args.file)
  opts = options(args)
  points = spec.points(sweep)
  devices = runner.devices_per_point(opts)
  spec.check(sweep, points if sweep.sampler != 'tpe' else spec.probe_points(sweep), devices)
  if args.dry_run:
    print(dry_run(sweep, opts, points))
    return 0
  url = runner.storage_url(opts)
  planned = [] if sweep.sampler == 'tpe' else points
  write_meta(sweep, opts, url, planned)
  pruner = runner.make_pruner(sweep, opts.prune)
  study = runner.open_study(sweep, url, opts.heartbeat_s, pruner, runner.make_sampler(sweep))
  code = worker.Worker(sweep, opts, study, planned).run()
  print(results.report(opts.workdir, url))
  return code


def cmd_sweep_report(args, overrides) -> int:
  if overrides:
    raise ConfigError('sweep-report takes no --config.* overrides')
  print(results.report(args.workdir, args.storage, plots=not args.no_plots))
  return 0
