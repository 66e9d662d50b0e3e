"""XLA:CPU compiler settings for float32 CPU runs, put in XLA_FLAGS before JAX starts.

XLA:CPU hands each dot of a step to YNNPACK (its successor to XNNPACK) as a fusion of its
own. By default (jaxlib 0.10) that fusion holds the dot alone, so the reshapes around it,
a bias or gradient-accumulation add and the attention's scale multiply each run as a
separate loop fusion that writes its result to memory. With
``--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE``
YNNPACK takes the dot together with those neighbours (and keeps the reductions it already
took). At nanoGPT's README shape with the layer loop unrolled, the compiled step has 23
loop fusions fewer and ran 1.16x faster (CPU time 7-19% lower across four interleaved
runs), with the same losses to the last bit; the same shape in the nn.scan loop, and
gpt2-124M, ran as fast as without it (docs/performance.md, section 12).

The flag is experimental: an XLA that does not know it aborts the process at start, so it
is set only for the jaxlib versions it was measured on (KNOWN_JAXLIB). Like
trainer/hostmalloc.py, it is set only where JAX runs on the CPU (no TPU or GPU device files,
or ``JAX_PLATFORMS=cpu``), never over the user's own setting of that flag in XLA_FLAGS, and
only before JAX has started its CPU backend (XLA reads XLA_FLAGS once, then).
``TRAINER_XLA_CPU=default`` turns it off; ``=tuned`` sets it on an accelerator host too.

Only for float32 models: with the flag, YNNPACK's dot fusions take bfloat16 operands
converted to float32, so a bfloat16 model's dots would run in float32 (the compiled step
shows it; tests/test_model.py's bfloat16 checks caught it). The flag is process-wide and
read once, so the command sets it after reading the config and before JAX starts.
"""
from __future__ import annotations

import importlib.metadata
import os

from trainer import hostmalloc

FLAG = '--xla_cpu_experimental_ynn_fusion_type'
VALUE = 'LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE'
KNOWN_JAXLIB = ((0, 10),)  # (major, minor) of the jaxlib releases whose XLA knows FLAG.
ENV = 'TRAINER_XLA_CPU'


def _jaxlib() -> tuple[int, ...] | None:
  try:
    return tuple(int(p) for p in importlib.metadata.version('jaxlib').split('.')[:2])
  except (importlib.metadata.PackageNotFoundError, ValueError):
    return None


def decide(environ=os.environ, dtype: str = 'float32') -> str:
  """'tuned' or why not: 'off', 'not float32', 'user settings', 'accelerator host',
  'jaxlib not known'. `dtype` is the model's compute dtype (``model.dtype``).

  Raises ValueError for a TRAINER_XLA_CPU value other than 'default' or 'tuned'.
  """
  choice = hostmalloc.setting(environ, ENV, "XLA's")
  if choice == 'default':
    return 'off'
  if dtype != 'float32':  # YNNPACK's dot fusions would run bfloat16 dots in float32.
    return 'not float32'
  if any(f.split('=', 1)[0] == FLAG for f in environ.get('XLA_FLAGS', '').split()):
    return 'user settings'
  if _jaxlib() not in KNOWN_JAXLIB:
    return 'jaxlib not known'
  if choice == 'auto' and hostmalloc.accelerator_host(environ):
    return 'accelerator host'
  return 'tuned'


def apply(dtype: str, environ=os.environ) -> str:
  """Adds FLAG to XLA_FLAGS when decide() says so; returns the decision."""
  decision = decide(environ, dtype)
  if decision == 'tuned':
    environ['XLA_FLAGS'] = ' '.join(filter(None, [environ.get('XLA_FLAGS', ''),
                                                  f'{FLAG}={VALUE}']))
  return decision
