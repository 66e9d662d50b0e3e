"""Eight fake CPU devices for every test; set before JAX initialises."""
import atexit
import os
import shutil
import sys
import tempfile

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# One persistent compilation cache for the session, inherited by every `trainer` subprocess
# (train.compile_cache=auto reads it): the same tiny programs are compiled once, not per run.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix='trainer-test-xla-cache-')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

from trainer import hostmalloc  # noqa: E402

hostmalloc.apply()  # As the `trainer` command does: the in-process tests' steps run faster.
# Not trainer/cpuflags.py's flag: it is set per run by model dtype, and the in-process tests
# mix float32 and bfloat16 in one process (the `trainer` subprocesses get it as users do).

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, 'tests', 'data')  # Small real fixtures; see tests/data/README.md.
sys.path.insert(0, ROOT)


@pytest.fixture(autouse=True)
def xla_flags_restored():
  """An in-process `trainer train` sets trainer/cpuflags.py's flag in this process's
  XLA_FLAGS; later tests' subprocesses must not inherit it (a bfloat16 run would keep it)."""
  before = os.environ.get('XLA_FLAGS')
  yield
  os.environ.pop('XLA_FLAGS', None)
  if before is not None:
    os.environ['XLA_FLAGS'] = before


@pytest.fixture(scope='session', autouse=True)
def eight_devices():
  assert jax.device_count() == 8, 'tests need 8 fake CPU devices (XLA_FLAGS set too late?)'


def tiny_config(variant: str = 'gpt2', **overrides):
  """configs/tiny.py with dotted-key overrides, e.g. tiny_config(**{'train.steps': 3})."""
  from trainer import config
  cfg = config.load(os.path.join(ROOT, 'configs', 'tiny.py') + ':' + variant)
  for key, value in overrides.items():
    config.set_value(cfg, key, value)
  return cfg


def relative(a, b):
  return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def without_key_bias(params):
  """The key bias gets a zero gradient (softmax ignores a per-query constant), so after one
  Adam step it holds only normalised rounding noise, which differs by reduction order."""
  bias = params['h']['attn']['c_attn_bias']
  assert np.abs(bias[:, 1]).max() <= 0.0031  # lr = 3e-3 of configs/tiny.py bounds the noise step.
  params['h']['attn']['c_attn_bias'] = bias[:, ::2]
  return params


@pytest.fixture(scope='session')
def tiny_workdir(tmp_path_factory):
  """A real 4-step tiny run (evaluations at steps 2 and 4), shared by the report and card tests."""
  from trainer import loop
  workdir = tmp_path_factory.mktemp('tiny_run')
  cfg = tiny_config(**{'train.steps': 4, 'train.eval_every': 2, 'cost.price_per_chip_hour': 3.0,
                       'cost.power_w': 250.0})
  loop.run(cfg, str(workdir))
  return workdir, cfg
