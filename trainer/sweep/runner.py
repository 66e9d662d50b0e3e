"""Runs a sweep: one Optuna trial per point, one ``trainer train`` process per trial.

Claiming is ours, on Optuna's storage: a worker creates a RUNNING trial named after the
point, then re-reads the point's trials and keeps it only if no earlier live trial has the
same name (lowest trial number wins), so workers sharing a study never run a point twice.
Optuna's heartbeat marks the trials of a killed worker FAIL; their points are claimed again
and ``trainer train`` resumes from the point's checkpoints.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import time
import warnings

from etils import epath

from trainer.config import ConfigError
from trainer.sweep import spec

# FAIL trials with these statuses are final; any other FAIL (a stale heartbeat, a stopped
# sweep) leaves its point to be run again. 'over_budget' is final for one invocation only.
FINAL_FAIL = ('failed', 'skipped')
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCHERS = {'slurm': 'launch/slurm.py', 'tpu': 'launch/tpu_pod.py'}


def optuna_module():
  """Optuna, quiet; a one-line error where the ``sweep`` extra is not installed."""
  try:
    import optuna
  except ImportError:
    raise ConfigError('trainer sweep needs optuna: pip install "trainer[sweep]"') from None
  # Heartbeats and fail_stale_trials are marked experimental; we rely on them knowingly.
  warnings.filterwarnings('ignore', category=optuna.exceptions.ExperimentalWarning)
  # We record heartbeats ourselves (Worker.step), without Study.optimize.
  warnings.filterwarnings('ignore', message='Heartbeat of storage is supposed to be used')
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  return optuna


def distributions(space: dict) -> dict:
  """Our Distribution objects as Optuna's."""
  d = optuna_module().distributions
  out = {}
  for key, dist in space.items():
    if dist.kind == 'choice':
      out[key] = d.CategoricalDistribution(dist.values)
    elif dist.kind == 'integer':
      out[key] = d.IntDistribution(dist.low, dist.high)
    else:
      out[key] = d.FloatDistribution(dist.low, dist.high, log=dist.kind == 'log_uniform')
  return out


@dataclasses.dataclass
class Options:
  """Command-line choices of ``trainer sweep``."""
  workdir: str
  storage: str = ''
  parallel: int = 1
  devices_per_point: int = 0   # 0: this host's devices split between the parallel points.
  prune: str = ''              # '', 'median' or 'hyperband'.
  launcher: str = 'local'      # 'local', 'slurm' or 'tpu'.
  launcher_args: tuple = ()
  check_fit: bool = False
  topology: str = ''
  budget: float | None = None
  retry_failed: bool = False
  heartbeat_s: int = 10
  poll_s: float = 1.0


def storage_url(opts: Options) -> str:
  if opts.storage:
    return opts.storage
  if '://' in opts.workdir:
    raise ConfigError(f'--workdir={opts.workdir}: SQLite needs a local disk; give --storage '
                      '(e.g. postgresql://USER@HOST/DB) for a sweep dir on object storage')
  return f'sqlite:///{os.path.abspath(os.path.join(opts.workdir, "sweep.db"))}'


def open_study(sweep: spec.Sweep, url: str, heartbeat_s: int = 10, pruner=None, sampler=None):
  """The sweep's study in ``url`` (created if new), with heartbeats on."""
  optuna = optuna_module()
  engine = {'connect_args': {'timeout': 60}} if url.startswith('sqlite') else {}
  for attempt in range(3):  # Workers starting together race to create the tables and study.
    try:
      storage = optuna.storages.RDBStorage(url, engine_kwargs=engine,
                                           heartbeat_interval=heartbeat_s,
                                           grace_period=3 * heartbeat_s)
      return optuna.create_study(storage=storage, study_name=sweep.name,
                                 direction=sweep.direction, load_if_exists=True, pruner=pruner,
                                 sampler=sampler)
    except Exception as e:  # SQLAlchemy raises many kinds for a bad URL or a busy server.
      error = e
      time.sleep(1 + attempt)
  first = str(error).strip().splitlines()[0] if str(error).strip() else ''
  raise ConfigError(f'--storage={url}: cannot open ({type(error).__name__}: {first})')


def make_pruner(sweep: spec.Sweep, kind: str):
  pruners = optuna_module().pruners
  if kind == 'median':
    return pruners.MedianPruner(n_startup_trials=sweep.prune_startup_trials,
                                n_warmup_steps=sweep.prune_warmup_steps)
  if kind == 'hyperband':
    return pruners.HyperbandPruner(min_resource=max(sweep.prune_warmup_steps, 1))
  return pruners.NopPruner()


def make_sampler(sweep: spec.Sweep):
  samplers = optuna_module().samplers
  if sweep.sampler == 'tpe':
    return samplers.TPESampler(seed=sweep.seed, n_startup_trials=max(1, min(10, sweep.count // 3)))
  return samplers.RandomSampler(seed=sweep.seed)  # Unused: grid and random points are planned.


def is_live(trial) -> bool:
  """A trial that holds its point: running, finished, or failed for good."""
  if trial.state.name in ('FAIL', 'WAITING'):
    return trial.user_attrs.get('status') in FINAL_FAIL
  return True


def point_status(trials: list) -> tuple[str, str]:
  """(status, reason) of a point from its trials: done, pruned, skipped, failed, running, pending."""
  states = {t.state.name for t in trials}
  for state, label in (('COMPLETE', 'done'), ('PRUNED', 'pruned')):
    if state in states:
      return label, ''
  for status in ('skipped', 'failed', 'over_budget'):
    hit = [t for t in trials if t.state.name == 'FAIL' and t.user_attrs.get('status') == status]
    if hit and (status != 'failed' or 'RUNNING' not in states):
      return ('skipped' if status == 'over_budget' else status), hit[-1].user_attrs.get('reason', '')
  return ('running', '') if 'RUNNING' in states else ('pending', '')


def group_by_name(trials) -> dict[str, list]:
  out = {}
  for t in trials:
    if 'name' in t.user_attrs and t.user_attrs.get('status') != 'duplicate':
      out.setdefault(t.user_attrs['name'], []).append(t)
  return out


def cpu_host() -> bool:
  """No accelerator here: on a CPU host the points split the fake devices between them."""
  if os.environ.get('JAX_PLATFORMS', '').startswith('cpu'):
    return True
  return not (os.path.exists('/dev/accel0') or os.path.exists('/dev/vfio') or
              subprocess.run(['sh', '-c', 'command -v nvidia-smi'], capture_output=True).returncode == 0)


def host_devices() -> int:
  """CPU devices a process gets here (XLA_FLAGS' forced count, else 1)."""
  for flag in os.environ.get('XLA_FLAGS', '').split():
    if flag.startswith('--xla_force_host_platform_device_count='):
      return int(flag.split('=', 1)[1])
  return 1


def devices_per_point(opts: Options) -> int:
  return opts.devices_per_point or max(1, host_devices() // opts.parallel)


def point_env(opts: Options) -> dict:
  """The environment of a point's process: on a CPU host, its share of the devices."""
  env = dict(os.environ)
  if opts.launcher == 'local' and cpu_host():
    flags = [f for f in env.get('XLA_FLAGS', '').split()
             if not f.startswith('--xla_force_host_platform_device_count=')]
    flags.append(f'--xla_force_host_platform_device_count={devices_per_point(opts)}')
    env['XLA_FLAGS'] = ' '.join(flags)
  return env


def launcher_args(opts: Options, args: list[str]) -> list[str]:
  """The launcher's flags; a TPU VM name gets a suffix per point, so points never share a VM."""
  if opts.launcher != 'tpu':
    return list(opts.launcher_args)
  import hashlib
  workdir = next((a.split('=', 1)[1] for a in args if a.startswith('--workdir=')), '')
  suffix = hashlib.sha1(workdir.encode()).hexdigest()[:6]
  return [f'{a}-{suffix}' if a.startswith('--name=') else a for a in opts.launcher_args]


def command(opts: Options, args: list[str]) -> list[str]:
  """``trainer train ARGS`` locally, or handed to a launcher script."""
  if opts.launcher == 'local':
    return [sys.executable, '-m', 'trainer', 'train', *args]
  return [sys.executable, os.path.join(ROOT, LAUNCHERS[opts.launcher]),
          *launcher_args(opts, args), '--', *args]


def shown_command(opts: Options, args: list[str]) -> str:
  if opts.launcher == 'local':
    return shlex.join(['trainer', 'train', *args])
  return shlex.join(['python', LAUNCHERS[opts.launcher], *launcher_args(opts, args), '--', *args])


def compile_fit(sweep: spec.Sweep, point: spec.Point, topology: str) -> tuple[bool, str]:
  """Compiles ``point`` for ``topology`` (``trainer compile``): (fits, reason if not)."""
  args = [a for a in spec.train_args(sweep, point, '') if not a.startswith('--workdir')]
  cmd = [sys.executable, '-m', 'trainer', 'compile', *args, f'--topology={topology}', '--json']
  out = subprocess.run(cmd, capture_output=True, text=True, cwd=os.getcwd())
  if out.returncode != 0:
    lines = (out.stderr.strip() or out.stdout.strip() or 'no output').splitlines()
    return False, f'{topology}: {lines[-1][:300]}'
  import json
  report = json.loads(out.stdout.strip().splitlines()[-1])
  if report['fits']:
    return True, ''
  gib = 2**30
  return False, (f"does not fit {topology}: peak {report['peak_bytes_per_device'] / gib:.2f} GiB "
                 f"of {report['hbm_bytes_per_device'] / gib:.2f} GiB per device")


def _die_with_parent():
  """In the child: SIGTERM (save and stop) when the sweep process dies, even by kill -9.

  Ctrl-C is left to the sweep, which sends SIGTERM, so that the points save a checkpoint.
  """
  import ctypes
  ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
  signal.signal(signal.SIGINT, signal.SIG_IGN)


def read_records(workdir: str) -> list[dict]:
  """A point's metrics.jsonl records; a line cut short by a kill is skipped."""
  import json
  path = epath.Path(workdir) / 'metrics.jsonl'
  if not path.exists():
    return []
  out = []
  for line in path.read_text().splitlines():
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return out


def finished(workdir: str, steps: int, objective: str):
  """The final objective value if the point's run is complete, else None.

  Complete: metrics.jsonl reaches ``steps`` and the final checkpoint is committed (a kill
  between the last metrics line and the commit leaves a run that must resume).
  """
  records = read_records(workdir)
  if not records or records[-1].get('step', 0) < steps:
    return None
  if not (epath.Path(workdir) / 'checkpoints' / str(steps)).exists():
    return None
  values = [r[objective] for r in records if objective in r]
  return values[-1] if values else None
