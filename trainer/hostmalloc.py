"""glibc malloc settings for CPU runs, applied once at process start (before JAX's threads).

XLA:CPU allocates each step's temporaries afresh and frees them when the step ends. With
glibc's defaults every one of those frees hands the memory back to the kernel (a buffer
above the mmap threshold is unmapped; a thread arena's heap is trimmed), so the next step
faults the same pages in again and the kernel zeroes them: on the 2 Zen 3 cores of the
development machines, 68 of a small model's 125 ms per step was kernel time, and a
gpt2-124M step faulted in 2.6 GB (docs/performance.md, section 7). Three settings keep the
memory in the process, where the next step reuses it:

* one arena (M_ARENA_MAX=1): XLA's worker threads no longer each keep an arena whose heap
  grows and shrinks with every step;
* no mmap'ed chunks (M_MMAP_MAX=0): large buffers come from the heap, not from mappings
  that are unmapped when freed;
* no trimming (M_TRIM_THRESHOLD=-1): the heap's free top is kept for the next step.

The process keeps its peak heap (it reuses it each step anyway). Applied only on hosts
without accelerators (no TPU or GPU device files, or ``JAX_PLATFORMS=cpu``), only with
glibc, and never when the user set malloc tuning of their own (``GLIBC_TUNABLES`` or any
``MALLOC_*`` variable). ``TRAINER_MALLOC=default`` turns it off; ``=tuned`` forces it on.
"""
from __future__ import annotations

import ctypes
import glob
import os
import platform

from trainer import distributed

# mallopt(3) parameter numbers, from glibc's <malloc.h>.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))
ENV = 'TRAINER_MALLOC'


def accelerator_host(environ) -> bool:
  if environ.get('JAX_PLATFORMS', '').strip().lower() == 'cpu':
    return False
  return bool(distributed.tpu_chips() or glob.glob('/dev/nvidia[0-9]*'))  # NVIDIA: /dev/nvidiaN.


def setting(environ, name: str, whose: str) -> str:
  """The variable `name`: 'auto' when unset, else 'default' (`whose` own settings) or 'tuned'.

  Raises ValueError, one line naming the variable and the fix, for any other value.
  """
  value = environ.get(name, 'auto')
  if value not in ('auto', 'default', 'tuned'):
    raise ValueError(f'{name}={value!r}: use default ({whose} own) or tuned, or leave it unset')
  return value


def decide(environ=os.environ) -> str:
  """'tuned' or why not: 'off', 'user settings', 'not glibc', 'accelerator host'.

  Raises ValueError for a TRAINER_MALLOC value other than 'default' or 'tuned'.
  """
  choice = setting(environ, ENV, "glibc's")
  if choice == 'default':
    return 'off'
  if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
    return 'not glibc'
  if choice == 'tuned':
    return 'tuned'
  if 'GLIBC_TUNABLES' in environ or any(k.startswith('MALLOC_') for k in environ):
    return 'user settings'
  return 'accelerator host' if accelerator_host(environ) else 'tuned'


def apply() -> str:
  """Applies SETTINGS when decide() says so; returns the decision."""
  decision = decide()
  if decision == 'tuned':
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if not all(mallopt(param, value) == 1 for param, value in SETTINGS):
      return 'refused by glibc'
  return decision
