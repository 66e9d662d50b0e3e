"""The training loop: data in, steps dispatched, metrics out. The step itself is in train.py."""
from __future__ import annotations

import math
import time

import jax
import numpy as np

from trainer import checkpoint, data, generate, hf, metrics, model, train


def _say(*args):
  if jax.process_index() == 0:
    print(*args, flush=True)


class _Logger:
  """Turns step metrics into records; never waits on a step it has not yet dispatched past."""

  def __init__(self, setup, workdir: str, start_step: int):
    cfg = setup.cfg
    self.tokens_per_step = cfg.train.batch_size * cfg.train.seq_len
    self.flops_per_token = model.flops_per_token(setup.model_cfg, cfg.train.seq_len)
    self.peak = metrics.peak_flops_total(cfg.model.dtype)
    self.writer = metrics.Writer(workdir)
    self.last_time, self.last_step, self.paused = time.perf_counter(), start_step, 0.0
    self.records = []

  def emit(self, step: int, device_metrics, extra: dict):
    values = jax.device_get(device_metrics)  # Blocks until `step` has finished.
    now = time.perf_counter()
    step_time = (now - self.last_time - self.paused) / max(step - self.last_step, 1)
    self.last_time, self.last_step, self.paused = now, step, 0.0
    tokens_per_sec = self.tokens_per_step / step_time
    record = {'step': step, **{k: float(v) for k, v in values.items()},
              'tokens_per_sec': tokens_per_sec, 'step_time_s': step_time,
              'mfu': self.flops_per_token * tokens_per_sec / self.peak, **extra}
    self.writer.write(record)
    self.records.append(record)
    _say(metrics.format_line(record))


def evaluate(eval_fn, params, batches, batch_sharding) -> float:
  losses = [eval_fn(params, data.to_global(b, batch_sharding)) for b in batches]
  return float(np.mean(jax.device_get(losses)))


class TrainingStopped(RuntimeError):
  """The loss went non-finite; the CLI prints this and exits 1."""


def _start(cfg, setup, ckpts, batches):
  """(state, step) to continue from: the latest checkpoint, a Hugging Face import, or init."""
  step = ckpts.latest_step()
  if step is not None:
    state = ckpts.restore(step, setup.abstract_state(), batches)
    _say(f'resuming from step {step}: {ckpts.path(step)}')
    return state, step
  state = setup.init_state(cfg.seed)
  if cfg.init_from:
    state = state.replace(params=hf.load_params(cfg.init_from, setup))
    _say(f'initialised from {cfg.init_from}')
  return state, 0


def _check_finite(step: int, loss, ckpts):
  if ckpts.cfg.train.skip_nonfinite:
    return  # The step itself left the weights alone; metrics.jsonl shows `skipped`.
  value = float(jax.device_get(loss))
  if not math.isfinite(value):
    good = 'none' if ckpts.last_saved is None else ckpts.path(ckpts.last_saved)
    raise TrainingStopped(f'loss is {value} at step {step}; stopped without saving it '
                          f'(last good checkpoint: {good}); lower optim.lr or check the data')


def run(cfg, workdir: str) -> dict:
  """Trains as configured, resuming from WORKDIR; returns a summary (losses, sample)."""
  checkpoint.ensure_writable(workdir)
  ckpts = checkpoint.Checkpoints(workdir, cfg)
  try:
    with checkpoint.Preemption().installed() as preemption:
      return _run(cfg, workdir, ckpts, preemption)
  finally:
    ckpts.wait()  # Exit only once every started save has committed.
    ckpts.close()


def _run(cfg, workdir: str, ckpts, preemption) -> dict:
  streams = data.load(cfg)  # First: a bad data path or vocabulary fails before any compiling.
  setup = train.build(cfg)
  t = cfg.train
  _say(f'model: {model.param_count(setup.model_cfg):,} parameters | mesh '
       f'{dict(setup.mesh.shape)} | rules {cfg.mesh.rules} | {jax.device_count()} devices')
  batches = iter(streams.train.to_iter_dataset())
  state, start_step = _start(cfg, setup, ckpts, batches)
  metrics.keep_until(workdir, start_step)
  compile_start = time.perf_counter()
  step_fn = setup.compile_train_step()
  eval_fn = setup.jit_eval_step()
  _say(f'compiled the train step in {time.perf_counter() - compile_start:.1f} s')
  logger = _Logger(setup, workdir, start_step)

  pending = unchecked = None
  for step in range(start_step + 1, t.steps + 1):
    state, step_metrics = step_fn(state, data.to_global(next(batches), setup.batch_sharding))
    if unchecked:  # The previous step's loss, read while this step runs.
      _check_finite(*unchecked, ckpts)
    unchecked = (step, step_metrics['loss'])
    if pending:
      logger.emit(*pending)
    extra = {}
    if (t.eval_every and step % t.eval_every == 0) or step == t.steps:
      jax.block_until_ready(step_metrics)  # Training time ends here; evaluation is not counted.
      pause = time.perf_counter()
      extra['eval_loss'] = evaluate(eval_fn, state.params, streams.val, setup.batch_sharding)
      logger.paused += time.perf_counter() - pause
    due = step % t.log_every == 0 or step == t.steps or bool(extra)
    pending = (step, step_metrics, extra) if due else None
    stop = preemption.stop_now(step)
    if ckpts.due(step) or stop or step == t.steps:
      _check_finite(*unchecked, ckpts)  # Never save a state that a non-finite step produced.
      unchecked = None
      ckpts.save(step, state, batches)
    if stop:
      _say(f'preempted (SIGTERM): saved step {step} to {ckpts.path(step)}; exiting')
      break
  if pending:
    logger.emit(*pending)

  summary = {'records': logger.records}
  if t.sample_tokens and not preemption.requested:
    prompt = streams.tokenizer.encode('def ')
    ids = generate.sample(setup, state.params, prompt.tolist(), t.sample_tokens, seed=cfg.seed)
    summary['sample'] = streams.tokenizer.decode(ids)
    _say('--- sample ---\n' + summary['sample'] + '\n--------------')
  return summary
