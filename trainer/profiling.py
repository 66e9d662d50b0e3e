"""--config.log.profile_steps=START:END: a jax.profiler trace of those steps in WORKDIR/profile.

The trace (an .xplane.pb per host) opens in TensorBoard's profile plugin or Perfetto;
benchmarks/profile.py turns one into a table of where a step's time goes.
"""
from __future__ import annotations

import os

import jax

from trainer.config import ConfigError


def parse_steps(spec: str) -> tuple[int, int] | None:
  """'START:END' (inclusive, 1-based steps) to a pair; '' to None."""
  if not spec:
    return None
  start, sep, end = spec.partition(':')
  try:
    first, last = int(start), int(end)
  except ValueError:
    first = last = -1
  if not sep or first < 1 or last < first:
    raise ConfigError(f'--config.log.profile_steps={spec!r}: expected START:END with '
                      f'1 <= START <= END, e.g. 5:7')
  return first, last


class StepProfiler:
  """Starts the trace before step START is dispatched and stops it once step END is done."""

  def __init__(self, spec: str, workdir: str):
    self.steps = parse_steps(spec)
    self.dir = os.path.join(workdir, 'profile')
    self.active = False

  def annotate(self, step: int):
    """Context for dispatching `step`: starts the trace at START and marks the step in it."""
    if self.steps and step == self.steps[0]:
      jax.profiler.start_trace(self.dir)
      self.active = True
    return jax.profiler.StepTraceAnnotation('train', step_num=step)

  def finish(self, step: int, step_metrics, force: bool = False):
    """After dispatching `step`: at END (or when the run ends early) waits and writes the trace."""
    if self.active and (force or step == self.steps[1]):
      jax.block_until_ready(step_metrics)
      jax.profiler.stop_trace()
      self.active = False
