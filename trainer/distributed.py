"""Multi-process start-up: one ``jax.distributed.initialize`` call, before any other JAX use.

Three cases, decided once at the start of ``trainer train``:

* explicit: ``--coordinator=HOST:PORT --num_processes=N --process_id=I`` (any machines);
* automatic: under SLURM with more than one task, or on a Cloud TPU VM, JAX's own cluster
  detection finds the coordinator, the process count and this process's id;
* otherwise one process, and nothing to do.

The runtime's coordination service does the failure detection: a process that stops sending
heartbeats for ``heartbeat_timeout`` seconds is declared dead and every other process is
stopped with an error instead of waiting forever in a collective.
"""
from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os

from trainer.config import ConfigError
from trainer.spec import Key, add_flag


@dataclasses.dataclass(frozen=True)
class Settings:
  coordinator: str = ''      # HOST:PORT of process 0; '' means detect (or run alone).
  num_processes: int = 0     # 0: detect.
  process_id: int = -1       # -1: detect.
  heartbeat_timeout: int = 60   # Seconds without a heartbeat before a process counts as dead.
  init_timeout: int = 300       # Seconds to wait for every process to join.


def tpu_chips() -> list[str]:
  """This host's TPU chips: /dev/accel* (v2-v4) or /dev/vfio/N (v5 and newer) on a TPU VM."""
  return glob.glob('/dev/accel*') or glob.glob('/dev/vfio/[0-9]*')


def detected_cluster() -> str:
  """'slurm' or 'tpu' when JAX's automatic detection applies here, else ''."""
  if 'SLURM_JOB_ID' in os.environ and int(os.environ.get('SLURM_NTASKS', '1')) > 1:
    return 'slurm'
  if tpu_chips() and importlib.util.find_spec('libtpu') is not None:
    return 'tpu'
  return ''


def check(s: Settings):
  """Bad flag combinations, caught before JAX starts."""
  explicit = (bool(s.coordinator), s.num_processes > 0, s.process_id >= 0)
  if any(explicit) and not all(explicit):
    raise ConfigError('--coordinator, --num_processes and --process_id go together; give all '
                      'three (e.g. --coordinator=10.0.0.1:8476 --num_processes=2 --process_id=0)')
  if s.coordinator:
    host, _, port = s.coordinator.rpartition(':')
    if not host or not port.isdigit():
      raise ConfigError(f'--coordinator={s.coordinator}: expected HOST:PORT, e.g. 10.0.0.1:8476')
    if not 0 <= s.process_id < s.num_processes:
      raise ConfigError(f'--process_id={s.process_id}: must be in 0..{s.num_processes - 1} '
                        f'for --num_processes={s.num_processes}')
  if s.heartbeat_timeout <= 0 or s.init_timeout <= 0:
    raise ConfigError('--heartbeat_timeout and --init_timeout must be positive seconds')


def initialize(s: Settings) -> str:
  """Joins the process group if there is one; returns how ('explicit', 'slurm', 'tpu' or '')."""
  check(s)
  how = 'explicit' if s.coordinator else detected_cluster()
  if not how:
    return ''
  import jax
  timeouts = dict(initialization_timeout=s.init_timeout,
                  heartbeat_timeout_seconds=s.heartbeat_timeout)
  if how == 'explicit':
    jax.distributed.initialize(s.coordinator, s.num_processes, s.process_id, **timeouts)
  else:
    jax.distributed.initialize(local_device_ids=_slurm_node_devices(), **timeouts)
  return how


def _slurm_node_devices() -> list[int] | None:
  """All of the node's GPUs when SLURM runs one process per node, else None (JAX's default).

  JAX's SLURM detection gives each process only GPU number SLURM_LOCALID, which is right
  for one process per GPU and wrong for one process per node.
  """
  gpus = os.environ.get('SLURM_GPUS_ON_NODE', '')
  if os.environ.get('SLURM_NTASKS_PER_NODE') == '1' and gpus.isdigit():
    return list(range(int(gpus)))
  return None


def add_flags(parser):
  """The multi-host flags of ``trainer train`` (all optional)."""
  d = Settings()
  parser.add_argument('--coordinator', default=d.coordinator,
                      help='HOST:PORT of process 0 (explicit multi-process start)')
  add_flag(parser, '--num_processes', Key(d.num_processes, ge=0), help='processes (0: detect)')
  add_flag(parser, '--process_id', Key(d.process_id, ge=0, also=(-1,)),
           help="this process's index (-1: detect)")
  add_flag(parser, '--heartbeat_timeout', Key(d.heartbeat_timeout, ge=1),
           help='seconds before a silent process counts as dead (default 60)')
  add_flag(parser, '--init_timeout', Key(d.init_timeout, ge=1),
           help='seconds to wait for all processes to join (default 300)')


def from_args(args) -> Settings:
  return Settings(args.coordinator, args.num_processes, args.process_id,
                  args.heartbeat_timeout, args.init_timeout)
