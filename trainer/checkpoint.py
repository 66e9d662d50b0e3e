"""Checkpoints in ``WORKDIR/checkpoints/``: Orbax async saves, retention, resume and its checks.

A checkpoint step directory holds three items: ``state`` (the TrainState: step,
params, optimizer state, RNG key), ``position`` (the data position: rows consumed
from the global row order of trainer/rows.py, the same for every process, JSON)
and ``config`` (the resolved config, JSON, readable without this code).
Orbax writes into ``STEP.orbax-checkpoint-tmp*`` and renames on commit (on object
stores, which cannot rename, it writes ``STEP/commit_success.txt`` last), so a save
cut short by kill -9 is never mistaken for a checkpoint. The workdir may be a URL
(``gs://``); see storage.py.
"""
from __future__ import annotations

import contextlib
import signal
import threading

import jax
import numpy as np
import orbax.checkpoint as ocp

from trainer import config as config_lib
from trainer import optimizer, storage
from trainer.rows import ORDER as ROW_ORDER

# Model fields that define parameter shapes or the function computed; a resumed run
# or an imported checkpoint must agree on all of them (dropout, dtype, remat may change).
ARCHITECTURE = ('family', 'vocab_size', 'vocab_pad_multiple', 'max_len', 'pos_offset',
                'embed_dim', 'proj_dim', 'num_layers', 'num_heads', 'mlp_dim', 'activation',
                'pre_ln', 'final_ln', 'tie_embeddings', 'use_bias', 'ln_eps', 'scan_layers')


# Keys that define the learning-rate schedule; a resume may not silently change the next rate.
SCHEDULE = ('optim.schedule', 'optim.lr', 'optim.warmup_steps', 'optim.min_lr_ratio',
            'optim.decay_steps', 'train.steps')


class CheckpointError(config_lib.ConfigError):
  """An unusable workdir or checkpoint; the CLI prints it and exits 2."""


def ensure_writable(workdir: str):
  """Creates the workdir and proves a file can be written there, before anything compiles."""
  # One probe per process: processes sharing a workdir must not remove each other's.
  try:
    storage.probe(workdir, f'.write-test-{jax.process_index()}')
  except storage.UnusableError as e:
    raise CheckpointError(f'--workdir={e}') from None


def architecture_mismatch(saved_model: dict, model_cfg) -> tuple | None:
  """(key, saved value, current value) for the first architecture field that differs."""
  for key in ARCHITECTURE:
    if key in saved_model and saved_model[key] != model_cfg[key]:
      return key, saved_model[key], model_cfg[key]
  return None


class SaveFailed(storage.StorageError):
  """A checkpoint save met failed storage; the message names the last committed checkpoint."""


class Checkpoints:
  """The checkpoints of one workdir."""

  def __init__(self, workdir: str, cfg):
    self.cfg = cfg
    self.directory = storage.join(storage.absolute(workdir), 'checkpoints')
    c = cfg.checkpoint
    remote = storage.is_remote(self.directory)
    # On object stores the step directory is made before save() returns: made in the
    # background, a lost bucket would surface only when orbax's signal wait times out (minutes).
    options = ocp.CheckpointManagerOptions(
        max_to_keep=c.keep or None, keep_period=c.keep_every or None,
        enable_async_checkpointing=True, create=True,
        async_options=ocp.AsyncOptions(create_directories_asynchronously=not remote))
    # On object stores, one zarr array per leaf instead of OCDBT: OCDBT commits its manifest
    # with generation-conditional writes, which storage emulators get wrong (docs/design.md).
    ocdbt = not remote
    handlers = {'state': ocp.StandardCheckpointHandler(use_ocdbt=ocdbt),
                'position': ocp.JsonCheckpointHandler(),
                'config': ocp.JsonCheckpointHandler()}
    try:
      self.manager = ocp.CheckpointManager(self.directory, options=options,
                                           item_handlers=handlers)
    except (OSError, ValueError) as e:
      raise CheckpointError(f'{self.directory}: cannot open checkpoints ({e})') from None
    self.last_saved = self.manager.latest_step()
    self.committed = self.last_saved  # The newest step known to be committed.

  def path(self, step: int) -> str:
    return storage.join(self.directory, str(step))

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

  def check_resumable(self, step: int):
    """Stops (exit 2) before a resume that would change the model or, unasked, the next LR."""
    saved = self.saved_config(step)
    mismatch = architecture_mismatch(saved.get('model', {}), self.cfg.model)
    if mismatch:
      key, was, now = mismatch
      raise CheckpointError(f'{self.path(step)} holds another model (model.{key} is {was!r} '
                            f'there, {now!r} now); use another --workdir or set '
                            f'--config.model.{key}={was}')
    old = config_lib.from_dict(saved, f'{self.path(step)} config')
    change = schedule_change(old, self.cfg, step)
    if change and not self.cfg.optim.allow_lr_change:
      raise CheckpointError(f'resuming {self.path(step)} would change the learning rate of step '
                            f'{step + 1} from {change[0]:.4g} to {change[1]:.4g} ({change[2]}); '
                            'set them back, or pass --config.optim.allow_lr_change=true')

  def restore(self, step: int, abstract_state):
    """The state at ``step`` laid out as ``abstract_state`` (any mesh)."""
    try:
      return self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))['state']
    except Exception as e:  # Orbax raises many types for corrupt or misshaped files.
      raise CheckpointError(f'{self.path(step)}: cannot restore ({_first_line(e)}); use the '
                            'settings it was saved with (see its config/), or move this step '
                            'directory away to resume from an earlier one') from None

  def data_position(self, step: int) -> dict:
    """The rows consumed at ``step`` ({'rows', 'seq_len', 'seed', 'tokens'}), checked against now."""
    if not storage.exists(storage.join(self.path(step), 'position')):
      raise CheckpointError(f'{self.path(step)} holds per-process data states from an older '
                            'version, which this one cannot place; resume it with the version '
                            'that wrote it, or start a new --workdir')
    position = self.manager.restore(step, args=ocp.args.Composite(
        position=ocp.args.JsonRestore()))['position']
    t = self.cfg.train
    for key, now in (('train.seq_len', t.seq_len), ('seed', self.cfg.seed)):
      was = position[key.split('.')[-1]]
      if was != now:
        raise CheckpointError(f'{self.path(step)} counts its data position with {key}={was} '
                              f'({now} now); resume with --config.{key}={was}')
    order = position.get('order', 1)  # Written before the order had a version: the first.
    if order != ROW_ORDER and not t.allow_order_change:
      raise CheckpointError(f'{self.path(step)} counts its data position in row order {order}, '
                            f'from an earlier version; this one reads order {ROW_ORDER}, so '
                            'the same count would repeat some rows and skip others: resume with '
                            'the version that wrote it, or pass '
                            '--config.train.allow_order_change=true to go on in the new order')
    return position

  def due(self, step: int) -> bool:
    every = self.cfg.checkpoint.every
    return bool(every) and step % every == 0

  def save(self, step: int, state, rows: int):
    """Starts an async save; returns once the state is copied off the devices.

    ``rows``: global rows (sequences) consumed so far, the whole data position.
    """
    if step == self.last_saved:
      return
    t = self.cfg.train
    position = {'rows': rows, 'seq_len': t.seq_len, 'seed': self.cfg.seed,
                'tokens': rows * t.seq_len, 'order': ROW_ORDER}
    self.wait()  # The previous async save; orbax's save would wait for it anyway.
    with self._storage_errors(f'saving step {step}'):
      self.manager.save(step, force=True, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), position=ocp.args.JsonSave(position),
          config=ocp.args.JsonSave(self.cfg.to_dict())))
    self.last_saved = step

  def wait(self):
    """Blocks until every started save has committed."""
    with self._storage_errors(f'saving step {self.last_saved}'):
      self.manager.wait_until_finished()
    self.committed = self.last_saved

  @contextlib.contextmanager
  def _storage_errors(self, what: str):
    """A failed write (storage gone, disk full) becomes one line naming the last good step."""
    try:
      yield
    except Exception as e:  # Orbax and tensorstore raise many types from their threads.
      raise SaveFailed(f'{self.directory}: {what} failed ({storage.first_line(e)}); '
                       f'{self._resumes_from(self.committed)}') from None

  def resume_note(self) -> str:
    """Where a run stopped by lost storage elsewhere (not in a save) resumes."""
    if not self.manager.is_saving_in_progress():
      try:  # The last save has ended: this returns at once, or raises if it failed.
        self.wait()
      except SaveFailed:
        pass
    return self._resumes_from(self.committed)

  def _resumes_from(self, step: int | None) -> str:
    last = 'none' if step is None else self.path(step)
    return f'last committed checkpoint: {last}; the run resumes from it once the storage is back'

  def close(self):
    self.manager.close()


def schedule_change(old, new, step: int) -> tuple | None:
  """(old lr, new lr, what changed) if the two configs give step ``step + 1`` another rate."""
  rates = [float(optimizer.schedule(c.optim, c.train.steps)(step)) for c in (old, new)]
  if np.isclose(rates[0], rates[1], rtol=1e-6, atol=0):
    return None
  keys = [k for k in SCHEDULE if _get(old, k) != _get(new, k)]
  what = ', '.join(f'{k} is {_get(old, k)!r} there, {_get(new, k)!r} now' for k in keys)
  return rates[0], rates[1], what or 'the schedule code changed'


def _get(cfg, key: str):
  section, leaf = key.split('.')
  return cfg[section][leaf]


def _first_line(e: Exception) -> str:
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0] if text else ""}'[:300]


def latest(workdir: str, devices=None, step: int | None = None):
  """(config, step, state) of the newest (or the given) checkpoint in ``workdir``, on a mesh
  that fits ``devices``."""
  from trainer import train  # Local import: train pulls in the model.
  directory = storage.join(workdir, 'checkpoints')
  if not storage.isdir(directory):
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
  state = probe.restore(step, setup.abstract_state())
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
