"""Checkpoints in ``WORKDIR/checkpoints/``: Orbax async saves, retention, resume and its checks.

A checkpoint step directory holds three items: ``state`` (the TrainState: step,
params, optimizer state, RNG key), ``data`` (each process's grain iterator
position, one JSON file per process) and ``config`` (the resolved config, JSON,
readable without this code).
Orbax writes into ``STEP.orbax-checkpoint-tmp*`` and renames on commit, so a
save cut short by kill -9 is never mistaken for a checkpoint.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import threading

import grain
import jax
import orbax.checkpoint as ocp

from trainer import config as config_lib

# Model fields that define parameter shapes or the function computed; a resumed run
# or an imported checkpoint must agree on all of them (dropout, dtype, remat may change).
ARCHITECTURE = ('family', 'vocab_size', 'vocab_pad_multiple', 'max_len', 'pos_offset',
                'embed_dim', 'proj_dim', 'num_layers', 'num_heads', 'mlp_dim', 'activation',
                'pre_ln', 'final_ln', 'tie_embeddings', 'use_bias', 'ln_eps', 'scan_layers')


class CheckpointError(config_lib.ConfigError):
  """An unusable workdir or checkpoint; the CLI prints it and exits 2."""


def ensure_writable(workdir: str):
  """Creates the workdir and proves a file can be written there, before anything compiles."""
  # One probe per process: processes sharing a workdir must not remove each other's.
  probe = os.path.join(workdir, f'.write-test-{jax.process_index()}')
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    raise CheckpointError(f'--workdir={workdir} is not writable ({e.strerror}); '
                          'choose a directory you can write to') from None


def architecture_mismatch(saved_model: dict, model_cfg) -> tuple | None:
  """(key, saved value, current value) for the first architecture field that differs."""
  for key in ARCHITECTURE:
    if key in saved_model and saved_model[key] != model_cfg[key]:
      return key, saved_model[key], model_cfg[key]
  return None


class Checkpoints:
  """The checkpoints of one workdir."""

  def __init__(self, workdir: str, cfg):
    self.cfg = cfg
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    c = cfg.checkpoint
    options = ocp.CheckpointManagerOptions(
        max_to_keep=c.keep or None, keep_period=c.keep_every or None,
        enable_async_checkpointing=True, create=True)
    handlers = {'state': ocp.StandardCheckpointHandler(),
                'data': grain.checkpoint.CheckpointHandler(),
                'config': ocp.JsonCheckpointHandler()}
    try:
      self.manager = ocp.CheckpointManager(self.directory, options=options,
                                           item_handlers=handlers)
    except (OSError, ValueError) as e:
      raise CheckpointError(f'{self.directory}: cannot open checkpoints ({e})') from None
    self.last_saved = self.manager.latest_step()

  def path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def latest_step(self) -> int | None:
    """The newest committed step (half-written saves are ignored)."""
    return self.manager.latest_step()

  def saved_config(self, step: int) -> dict:
    """The resolved config stored with ``step``, as a nested dict."""
    try:
      return self.manager.restore(step, args=ocp.args.Composite(
          config=ocp.args.JsonRestore()))['config']
    except Exception as e:  # Orbax raises many types for unreadable files.
      raise CheckpointError(f'{self.path(step)}: unreadable config ({_first_line(e)}); '
                            'move this step directory away to resume from an earlier one') from None

  def restore(self, step: int, abstract_state, data_iter):
    """The state at ``step`` laid out as ``abstract_state``; ``data_iter`` is repositioned."""
    mismatch = architecture_mismatch(self.saved_config(step).get('model', {}), self.cfg.model)
    if mismatch:
      key, was, now = mismatch
      raise CheckpointError(f'{self.path(step)} holds another model (model.{key} is {was!r} '
                            f'there, {now!r} now); use another --workdir or set '
                            f'--config.model.{key}={was}')
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    moved = data_iter is not None and not os.path.exists(self._data_file(step))
    if data_iter is not None and not moved:  # Repositioned in place.
      items['data'] = grain.checkpoint.CheckpointRestore(data_iter)
    try:
      state = self.manager.restore(step, args=ocp.args.Composite(**items))['state']
    except Exception as e:  # Orbax raises many types for corrupt or misshaped files.
      raise CheckpointError(f'{self.path(step)}: cannot restore ({_first_line(e)}); use the '
                            'settings it was saved with (see its config/), or move this step '
                            'directory away to resume from an earlier one') from None
    if moved:
      data_iter.set_state(self._shared_data_state(step))
    return state

  def _data_file(self, step: int) -> str:
    name = f'process_{jax.process_index()}-of-{jax.process_count()}.json'
    return os.path.join(self.path(step), 'data', name)

  def _shared_data_state(self, step: int) -> dict:
    """The data position saved by another number of processes, if they all agree.

    Every process slices the same shuffled order and has taken the same number of
    batches, so one position serves any process count (the global batches stay the same).
    """
    folder = os.path.join(self.path(step), 'data')
    names = sorted(n for n in os.listdir(folder) if n.startswith('process_')) if os.path.isdir(folder) else []
    states = set()
    for name in names:
      with open(os.path.join(folder, name)) as f:
        states.add(json.dumps(json.load(f), sort_keys=True))
    if len(states) != 1:
      raise CheckpointError(f'{folder}: no data position that {jax.process_count()} process(es) '
                            f'can share ({len(names)} files, {len(states)} different); resume '
                            'with the process count it was saved with')
    return json.loads(states.pop())

  def due(self, step: int) -> bool:
    every = self.cfg.checkpoint.every
    return bool(every) and step % every == 0

  def save(self, step: int, state, data_iter):
    """Starts an async save; returns once the state is copied off the devices."""
    if step == self.last_saved:
      return
    self.manager.save(step, force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iter),  # Written before save() returns.
        config=ocp.args.JsonSave(self.cfg.to_dict())))
    self.last_saved = step

  def wait(self):
    """Blocks until every started save has committed."""
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()


def _first_line(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0] if text else ""}'[:300]


def latest(workdir: str, devices=None, step: int | None = None):
  """(config, step, state) of the newest (or the given) checkpoint in ``workdir``, on a mesh
  that fits ``devices``."""
  from trainer import train  # Local import: train pulls in the model.
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    raise CheckpointError(f'{directory}: no such directory; train first or fix --workdir')
  probe = Checkpoints(workdir, config_lib.default_config())
  if step is not None and step not in probe.manager.all_steps():
    saved = ', '.join(map(str, sorted(probe.manager.all_steps()))) or 'none'
    raise CheckpointError(f'--step={step}: {directory} holds no such checkpoint (steps: {saved})')
  step = probe.latest_step() if step is None else step
  if step is None:
    raise CheckpointError(f'{directory}: holds no complete checkpoint')
  cfg = config_lib.from_dict(probe.saved_config(step), f'{probe.path(step)} config')
  with cfg.unlocked():
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, cfg.mesh.rules = 1, -1, 1, 'dp'
  setup = train.build(cfg, devices)
  probe.cfg = cfg
  state = probe.restore(step, setup.abstract_state(), None)
  probe.close()
  return cfg, step, state


class Preemption:
  """Turns SIGTERM into a request to save and stop after the current step."""

  def __init__(self):
    self.requested = False

  @contextlib.contextmanager
  def installed(self):
    def handler(signum, frame):
      self.requested = True
    if threading.current_thread() is not threading.main_thread() or jax.process_count() > 1:
      # Signals reach only the main thread; with several processes jax's own preemption
      # notifier (set up by jax.distributed.initialize) handles SIGTERM for stop_now().
      yield self
      return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
      yield self
    finally:
      signal.signal(signal.SIGTERM, previous)

  def stop_now(self, step: int) -> bool:
    """Whether to stop after ``step``; all processes agree (they must save together)."""
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils
    return multihost_utils.reached_preemption_sync_point(step)
