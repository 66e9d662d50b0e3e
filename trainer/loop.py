"""The training loop: data in, steps dispatched, metrics out. The step itself is in train.py."""
from __future__ import annotations

import math
import os
import time

import jax
import numpy as np

from trainer import (checkpoint, data, evalrun, generate, hf, metrics, model, profiling, storage,
                     train)


def _say(*args):
  if jax.process_index() == 0:
    print(*args, flush=True)


class _Logger:
  """Turns step metrics into records; never waits on a step it has not yet dispatched past."""

  def __init__(self, setup, workdir: str, start_step: int, goodput: metrics.Goodput,
               start_tokens: int):
    cfg = setup.cfg
    # Tokens consumed before this run: the first line after a resume says so, and every
    # line counts from there (the batch size may have changed).
    self.start_step, self.start_tokens = start_step, start_tokens
    self.first = {'resumed_tokens': start_tokens} if start_step else {}
    self.goodput = goodput
    with goodput.timing('startup'):  # Measuring the CPU peak and opening W&B take seconds.
      self.accountant = metrics.Accountant(cfg, setup.model_cfg, setup.mesh.size)
      self.accountant.save(workdir)
      self.writers = metrics.writers(cfg, workdir)
      self.console = metrics.Console(cfg.log.progress, cfg.train.steps, start_step)
    self.last_train_s, self.last_step = self._train_seconds(), start_step
    self.records = []

  def _train_seconds(self) -> float:
    """Wall time in steps and data waits, without compile, evaluation or checkpoints."""
    totals = self.goodput.totals()
    return totals['step'] + totals['data']

  def emit(self, step: int, device_metrics, extra: dict):
    values = jax.device_get(device_metrics)  # Blocks until `step` has finished.
    train_s = self._train_seconds()
    step_time = (train_s - self.last_train_s) / max(step - self.last_step, 1)
    self.last_train_s, self.last_step = train_s, step
    tokens_per_sec = self.accountant.tokens_per_step / max(step_time, 1e-9)
    good = self.goodput.fields()
    record = {'step': step, **{k: float(v) for k, v in values.items()},
              'tokens_per_sec': tokens_per_sec, 'step_time_s': step_time,
              **self.accountant.fields(step, tokens_per_sec, good['time_wall_s']), **good, **extra,
              'tokens': self.start_tokens + (step - self.start_step) * self.accountant.tokens_per_step,
              **self.first}
    self.first = {}
    for writer in self.writers:
      writer.write(record)
    self.records.append(record)
    self.console.show(record)

  def close(self):
    for writer in self.writers:
      writer.close()
    self.console.close()


def evaluate(eval_fn, params, batches, batch_sharding) -> float:
  losses = [eval_fn(params, data.to_global(b, batch_sharding)) for b in batches]
  return float(np.mean(jax.device_get(losses)))


def evaluate_streams(eval_fn, params, streams: data.Streams, batch_sharding) -> dict:
  """{'eval_loss': ...}; a mixture adds each source's eval_loss/NAME and weights them into it."""
  if not streams.val_sources:
    return {'eval_loss': evaluate(eval_fn, params, streams.val, batch_sharding)}
  out = {f'eval_loss/{name}': evaluate(eval_fn, params, batches, batch_sharding)
         for name, batches in streams.val_sources.items()}
  # The expected loss on held-out data drawn as training draws it (weight-0 sources count 0).
  out['eval_loss'] = sum(w * out[f'eval_loss/{name}'] for name, w in streams.weights.items())
  return out


def _sample(sampler, params, tok, step: int) -> str:
  """32 tokens from end-of-text (unconditional), printed and logged; seeded by the step."""
  how = generate.Sampling(max_new_tokens=32, temperature=0.8, seed=step)
  text = tok.decode(sampler.generate(params, [[tok.eot]], how, eot=tok.eot)[0])
  _say(f'--- sample at step {step} ---\n{text}\n---')
  return text


class TrainingStopped(RuntimeError):
  """The loss went non-finite; the CLI prints this and exits 1."""


def _start(cfg, setup, ckpts):
  """(state, step, rows consumed) to continue from: the latest checkpoint, an HF import, or init."""
  step = ckpts.latest_step()
  if step is not None:
    ckpts.check_resumable(step)
    position = ckpts.data_position(step)
    state = ckpts.restore(step, setup.abstract_state())
    _say(f'resuming from step {step}: {ckpts.path(step)} ({position["rows"]:,} sequences, '
         f'{position["tokens"]:,} tokens consumed)')
    return state, step, position['rows']
  state = setup.init_state(cfg.seed)
  if cfg.init_from:
    state = state.replace(params=hf.load_params(cfg.init_from, setup))
    _say(f'initialised from {cfg.init_from}')
  return state, 0, 0


def _check_finite(step: int, loss, ckpts):
  if ckpts.cfg.train.skip_nonfinite:
    return  # The step itself left the weights alone; metrics.jsonl shows `skipped`.
  value = float(jax.device_get(loss))
  if not math.isfinite(value):
    good = 'none' if ckpts.last_saved is None else ckpts.path(ckpts.last_saved)
    raise TrainingStopped(f'loss is {value} at step {step}; stopped without saving it '
                          f'(last good checkpoint: {good}); lower optim.lr or check the data')


def compilation_cache(setting: str, workdir: str) -> str | None:
  """Points XLA's persistent compilation cache at the configured directory (None: off)."""
  if setting == 'off':
    return None
  path = setting
  if setting == 'auto':
    path = os.environ.get('JAX_COMPILATION_CACHE_DIR') or storage.join(workdir, 'compile_cache')
  from jax.experimental.compilation_cache import compilation_cache as cache
  cache.reset_cache()  # Another run in this process may have opened another directory.
  cache.set_cache_dir(path)
  return path


_CACHE_HITS = [0]  # Programs this process has loaded from the persistent compilation cache.


def _count_cache_hits(event: str, **kwargs):
  if event == '/jax/compilation_cache/cache_hits':
    _CACHE_HITS[0] += 1


jax.monitoring.register_event_listener(_count_cache_hits)


def run(cfg, workdir: str) -> dict:
  """Trains as configured, resuming from WORKDIR; returns a summary (losses, sample)."""
  goodput = metrics.Goodput()
  # First: a bad data path, mixture or vocabulary fails before anything is written or compiled.
  streams = data.load(cfg)
  checkpoint.ensure_writable(workdir)
  compilation_cache(cfg.train.compile_cache, workdir)
  ckpts = checkpoint.Checkpoints(workdir, cfg)
  storage_lost = False
  try:
    with checkpoint.Preemption().installed() as preemption:
      return _run(cfg, workdir, ckpts, preemption, goodput, streams)
  except checkpoint.SaveFailed:
    storage_lost = True  # Waiting for the started saves could then take many minutes.
    raise
  except storage.StorageError as e:  # Another write (metrics, samples) met it first.
    storage_lost = True
    raise storage.StorageError(f'{e}; {ckpts.resume_note()}') from None
  finally:
    if not storage_lost:
      ckpts.wait()  # Exit only once every started save has committed.
      ckpts.close()


def _run(cfg, workdir: str, ckpts, preemption, goodput, streams) -> dict:
  profiler = profiling.StepProfiler(cfg.log.profile_steps, workdir)  # Checks the spec early.
  setup = train.build(cfg)
  t = cfg.train
  _say(f'model: {model.param_count(setup.model_cfg):,} parameters | mesh '
       f'{dict(setup.mesh.shape)} | rules {cfg.mesh.rules} | {jax.device_count()} devices')
  platform, m = setup.mesh.devices.flat[0].platform, setup.model_cfg
  if m.attention == 'splash' and platform != 'tpu':
    _say('note: model.attention=splash off TPU runs the kernel in Pallas\'s interpreter, many '
         'times slower than attention=auto (meant for tests)')
  if m.remat != 'none' and platform == 'cpu' and not m.layers_in_loop(platform):
    _say(f'note: model.remat={m.remat} saves no memory on a CPU without the layer loop '
         '(scan_layers=false or scan_unroll unrolling every layer); it only repeats work here')
  task_evals = evalrun.DuringTraining(cfg, setup, streams.tokenizer)  # Bad files fail here.
  sampler = generate.Generator(setup, 1) if t.sample_every else None
  state, start_step, start_rows = _start(cfg, setup, ckpts)
  batches = iter(streams.train.to_iter_dataset(start_rows))
  rows_after = lambda step: start_rows + (step - start_step) * t.batch_size
  goodput.carry_over(workdir, start_step)  # Reads the lines that keep_until drops.
  metrics.keep_until(workdir, start_step)
  goodput.add('restart' if start_step else 'startup', time.perf_counter() - goodput.start)
  with goodput.timing('compile'):
    compile_start, hits = time.perf_counter(), _CACHE_HITS[0]
    step_fn = setup.compile_train_step()
    eval_fn = setup.jit_eval_step()
  cached = ' (loaded from the compilation cache)' if _CACHE_HITS[0] > hits else ''
  _say(f'compiled the train step in {time.perf_counter() - compile_start:.1f} s{cached}')
  logger = _Logger(setup, workdir, start_step, goodput, start_rows * t.seq_len)

  pending = unchecked = None
  for step in range(start_step + 1, t.steps + 1):
    with goodput.timing('data'):
      batch = data.to_global(next(batches), setup.batch_sharding)
    with profiler.annotate(step):
      state, step_metrics = step_fn(state, batch)
    profiler.finish(step, step_metrics, force=step == t.steps)
    if unchecked:  # The previous step's loss, read while this step runs.
      _check_finite(*unchecked, ckpts)
    unchecked = (step, step_metrics['loss'])
    if pending:
      logger.emit(*pending)
    extra = {}
    if (t.eval_every and step % t.eval_every == 0) or step == t.steps:
      jax.block_until_ready(step_metrics)  # Training time ends here; evaluation is not counted.
      with goodput.timing('eval'):
        extra.update(evaluate_streams(eval_fn, state.params, streams, setup.batch_sharding))
        extra.update(task_evals(state.params))
    if t.sample_every and step % t.sample_every == 0:
      with goodput.timing('eval'):
        extra['sample'] = _sample(sampler, state.params, streams.tokenizer, step)
    due = step % t.log_every == 0 or step == t.steps or bool(extra)
    if due:  # A mixture's tokens per source follow from the rows consumed (right after resumes).
      extra.update(streams.source_tokens(rows_after(step)))
    pending = (step, step_metrics, extra) if due else None
    stop = preemption.stop_now(step)
    if ckpts.due(step) or stop or step == t.steps:
      _check_finite(*unchecked, ckpts)  # Never save a state that a non-finite step produced.
      unchecked = None
      with goodput.timing('checkpoint'):
        ckpts.save(step, state, rows_after(step))
    if stop:
      _say(f'preempted (SIGTERM): saved step {step} to {ckpts.path(step)}; exiting')
      break
  if pending:
    logger.emit(*pending)
  logger.close()

  summary = {'records': logger.records}
  if t.sample_tokens and not preemption.requested:
    prompt = streams.tokenizer.encode('def ')
    ids = generate.sample(setup, state.params, prompt.tolist(), t.sample_tokens, seed=cfg.seed,
                          eot=streams.tokenizer.eot)
    summary['sample'] = streams.tokenizer.decode(ids)
    _say('--- sample ---\n' + summary['sample'] + '\n--------------')
  return summary
