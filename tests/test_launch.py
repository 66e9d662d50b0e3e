"""Launchers: real multi-process runs on this machine, and the exact commands of the cluster ones."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT

LOCAL = os.path.join(ROOT, 'launch', 'local.py')
TINY = ['--config=configs/tiny.py', '--config.train.eval_batches=1']


def local(processes, devices, *train_args, **popen):
  cmd = [sys.executable, LOCAL, '--processes', str(processes), '--devices-per-process',
         str(devices), '--', *TINY, *train_args]
  return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, text=True,
                          **popen)


def losses(workdir):
  rows = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return [(r['step'], r['loss'], r.get('eval_loss')) for r in rows]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
  steps = '--config.train.steps=4'
  two = local(2, 4, steps, f'--workdir={tmp_path / "two"}', stdout=subprocess.PIPE,
              stderr=subprocess.PIPE)
  out, err = two.communicate(timeout=600)
  assert two.returncode == 0, err[-3000:]
  assert 'process 1 pid' in err and '--num_processes=2 --process_id=1' in err
  one = local(1, 8, steps, f'--workdir={tmp_path / "one"}', stdout=subprocess.PIPE,
              stderr=subprocess.PIPE)
  assert one.wait(timeout=600) == 0, one.stderr.read()[-3000:]
  a, b = losses(tmp_path / 'two'), losses(tmp_path / 'one')
  assert [r[0] for r in a] == [1, 2, 3, 4]          # Process 0 alone wrote the metrics.
  assert a[0][1] - a[-1][1] > 0.2                    # The losses move, so equality means something.
  assert a[-1][2] is not None
  for (_, la, ea), (_, lb, eb) in zip(a, b):
    assert la == pytest.approx(lb, rel=1e-5)
  assert a[-1][2] == pytest.approx(b[-1][2], rel=1e-5)


@pytest.mark.slow
def test_killing_one_process_stops_the_other_with_a_clear_error(tmp_path):
  err_path = tmp_path / 'stderr.txt'
  with open(err_path, 'w') as err:
    run = local(2, 4, '--config.train.steps=100000', '--config.train.log_every=5',
                f'--workdir={tmp_path / "w"}', '--heartbeat_timeout=10',
                stdout=subprocess.DEVNULL, stderr=err)
    try:
      for _ in range(300):   # Wait until training is under way (metrics written).
        if (tmp_path / 'w' / 'metrics.jsonl').exists() or run.poll() is not None:
          break
        time.sleep(1)
      assert run.poll() is None, err_path.read_text()[-3000:]
      pid = int(err_path.read_text().split('process 1 pid ')[1].split(':')[0])
      os.kill(pid, signal.SIGKILL)
      code = run.wait(timeout=300)
    finally:
      if run.poll() is None:
        run.kill()
  text = err_path.read_text()
  assert code == 1
  assert 'process 1 exited with code -9' in text
  assert 'stopped sending heartbeats' in text     # Process 0's own error, from the runtime.
  assert 'local.py: failed: processes [0, 1]' in text
