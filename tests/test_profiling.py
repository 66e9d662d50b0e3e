"""--config.log.profile_steps writes a jax.profiler trace of exactly the asked steps."""
import glob
import os
import subprocess
import sys

import pytest
from jax.profiler import ProfileData

from conftest import ROOT
from trainer import profiling
from trainer.config import ConfigError

ENV = {**os.environ, 'JAX_PLATFORMS': 'cpu'}


def trainer(*args):
  return subprocess.run([sys.executable, '-m', 'trainer', *args], cwd=ROOT, env=ENV,
                        capture_output=True, text=True, timeout=600)


def test_parse_steps():
  assert profiling.parse_steps('') is None
  assert profiling.parse_steps('3:5') == (3, 5)
  assert profiling.parse_steps('4:4') == (4, 4)
  for bad in ('5', '0:2', '5:3', 'a:b', '2:', ':3'):
    with pytest.raises(ConfigError, match='profile_steps'):
      profiling.parse_steps(bad)


def test_bad_profile_steps_is_one_line_exit_2(tmp_path):
  out = trainer('train', '--config=configs/tiny.py', f'--workdir={tmp_path}',
                '--config.log.profile_steps=7')
  assert out.returncode == 2
  assert out.stderr.strip().count('\n') == 0 and 'profile_steps' in out.stderr
  assert not glob.glob(f'{tmp_path}/profile/**/*.xplane.pb', recursive=True)


def test_trace_holds_the_asked_steps(tmp_path):
  out = trainer('train', '--config=configs/tiny.py', f'--workdir={tmp_path}',
                '--config.train.steps=4', '--config.log.profile_steps=2:3',
                '--config.log.tensorboard=false')
  assert out.returncode == 0, out.stderr
  [path] = glob.glob(f'{tmp_path}/profile/**/*.xplane.pb', recursive=True)
  plane = ProfileData.from_file(path).find_plane_with_name('/host:CPU')
  names = [e.name for line in plane.lines for e in line.events]
  assert names.count('train') == 2  # StepTraceAnnotation of steps 2 and 3 only.
  assert any(n.startswith(('ynn_fusion', 'dot', 'fusion')) for n in names)  # XLA ops inside.
