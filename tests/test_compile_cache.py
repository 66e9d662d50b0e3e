"""train.compile_cache: a re-launched or resumed run loads its programs instead of compiling."""
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

TINY = ['--config=configs/tiny.py', '--config.train.eval_batches=1', '--config.train.log_every=1',
        '--config.optim.schedule=constant', '--config.optim.warmup_steps=0']  # Resumable to more steps.


def train(workdir, steps, *extra, cache_env=None):
  env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  env.update(cache_env or {})
  env['XLA_FLAGS'] = '--xla_force_host_platform_device_count=1'
  return subprocess.run([sys.executable, '-m', 'trainer', 'train', *TINY,
                         f'--config.train.steps={steps}', f'--workdir={workdir}', *extra],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line)['loss'] for line in f]


@pytest.mark.slow
def test_resume_loads_the_step_from_workdir_cache_and_matches(tmp_path):
  first = train(tmp_path / 'run', 2)
  assert first.returncode == 0, first.stderr[-2000:]
  assert 'loaded from the compilation cache' not in first.stdout  # Cold: nothing to load.
  cache = tmp_path / 'run' / 'compile_cache'
  assert any(name.endswith('-cache') for name in os.listdir(cache)), os.listdir(cache)
  resumed = train(tmp_path / 'run', 4)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert 'resuming from step 2' in resumed.stdout
  assert 'loaded from the compilation cache' in resumed.stdout
  # A cached program computes what a compiled one does: same losses as a run without cache.
  straight = train(tmp_path / 'straight', 4, '--config.train.compile_cache=off')
  assert straight.returncode == 0, straight.stderr[-2000:]
  assert not (tmp_path / 'straight' / 'compile_cache').exists()
  assert losses(tmp_path / 'run') == losses(tmp_path / 'straight')
  assert len(set(losses(tmp_path / 'straight'))) == 4


@pytest.mark.slow
def test_a_shared_cache_directory_serves_another_workdir(tmp_path):
  shared = tmp_path / 'xla'
  a = train(tmp_path / 'a', 1, f'--config.train.compile_cache={shared}')
  assert a.returncode == 0 and 'loaded from the compilation cache' not in a.stdout, a.stderr[-2000:]
  # The environment variable JAX documents is honoured by 'auto'.
  b = train(tmp_path / 'b', 1, cache_env={'JAX_COMPILATION_CACHE_DIR': str(shared)})
  assert b.returncode == 0, b.stderr[-2000:]
  assert 'loaded from the compilation cache' in b.stdout
  assert not (tmp_path / 'a' / 'compile_cache').exists()
