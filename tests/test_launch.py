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


def dry_run(script, *args):
  return subprocess.run([sys.executable, os.path.join(ROOT, 'launch', script), *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=60)


def test_tpu_pod_dry_run_prints_every_command():
  out = dry_run('tpu_pod.py', '--name=xl', '--zone=us-central2-b', '--type=v4-128', '--spot',
                '--dry-run', '--', '--config=configs/gpt2.py:gpt2-xl,paper', '--workdir=gs://b/xl')
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert lines[0] == ('gcloud compute tpus tpu-vm create xl --zone=us-central2-b '
                      '--accelerator-type=v4-128 --version=tpu-ubuntu2204-base --spot')
  assert "'--format=value(state)'` prints READY" in lines[1]
  assert lines[2].endswith(f'-m pip wheel --no-deps -w {ROOT}/dist {ROOT}')
  assert lines[3] == (f"gcloud compute tpus tpu-vm scp {ROOT}/dist/trainer-0.1.0-py3-none-any.whl "
                      "'xl:~/trainer-0.1.0-py3-none-any.whl' --zone=us-central2-b --worker=all")
  assert lines[4] == (f"gcloud compute tpus tpu-vm scp --recurse {ROOT}/configs 'xl:~/' "
                      "--zone=us-central2-b --worker=all")
  assert "--worker=all '--command=pip install -q '\"'\"'jax[tpu]==0.10.2'\"'\"' ~/trainer-0.1.0" in lines[5]
  run = lines[6]
  assert run.startswith('gcloud compute tpus tpu-vm ssh xl --zone=us-central2-b --worker=all')
  assert ('agent-worker-number) = 0 ]; then trainer train --config=configs/gpt2.py:gpt2-xl,paper '
          '--workdir=gs://b/xl 2>&1 | tee ~/train.log; else trainer train') in run
  assert lines[-2] == 'gcloud compute tpus tpu-vm delete xl --zone=us-central2-b --quiet'


def test_tpu_pod_multi_slice_uses_a_queued_resource_and_one_ssh_per_slice():
  out = dry_run('tpu_pod.py', '--name=ms', '--zone=z', '--type=v5e-256', '--slices=2', '--dry-run',
                '--', '--workdir=gs://b/ms', '--config.mesh.data=2')
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert lines[0] == ('gcloud compute tpus queued-resources create ms --zone=z --node-count=2 '
                      '--node-prefix=ms --accelerator-type=v5e-256 --runtime-version=tpu-ubuntu2204-base')
  ssh = [l for l in lines if ' ssh ms-' in l and 'trainer train' in l]
  assert [l.split()[5] for l in ssh] == ['ms-0', 'ms-1'] and all(l.endswith('&') for l in ssh)
  assert all('--config.mesh.data=2 --config.mesh.slices=2' in l for l in ssh)
  assert 'queued-resources delete ms --zone=z --force --quiet' in out.stdout


def test_tpu_pod_needs_a_workdir_that_survives_the_vm():
  out = dry_run('tpu_pod.py', '--name=x', '--zone=z', '--type=v4-8', '--dry-run', '--',
                '--workdir=runs/x')
  assert out.returncode == 2 and '--workdir=gs://BUCKET/PATH' in out.stderr


@pytest.mark.parametrize('per, tasks, comment', [
    ('gpu', 8, '# one process per GPU'), ('node', 1, '# one process per node')])
def test_slurm_dry_run_prints_the_batch_script(per, tasks, comment):
  out = dry_run('slurm.py', '--nodes=4', '--gpus-per-node=8', f'--per={per}', '--partition=gpu',
                '--setup=source ~/venv/bin/activate', '--dry-run', '--',
                '--config=configs/opt.py:opt-6.7b', '--workdir=/shared/opt')
  assert out.returncode == 0, out.stderr
  text = out.stdout
  assert text.startswith('# /shared/opt/slurm_job.sh\n#!/bin/bash\n')
  for line in ('#SBATCH --nodes=4', f'#SBATCH --ntasks-per-node={tasks}', '#SBATCH --gpus-per-node=8',
               '#SBATCH --partition=gpu', '#SBATCH --requeue', f'#SBATCH --chdir={ROOT}', comment,
               'source ~/venv/bin/activate',
               'srun --kill-on-bad-exit=1 trainer train --config=configs/opt.py:opt-6.7b '
               '--workdir=/shared/opt'):
    assert line in text.splitlines() or text.count(line), line
  assert text.splitlines()[-1] == 'sbatch /shared/opt/slurm_job.sh'


def test_slurm_needs_a_shared_absolute_workdir():
  out = dry_run('slurm.py', '--nodes=2', '--dry-run', '--', '--workdir=runs/x')
  assert out.returncode == 2 and 'absolute --workdir=/shared/PATH' in out.stderr


@pytest.mark.slow
def test_checkpoints_move_between_two_processes_and_one(tmp_path):
  """2 x 4 devices -> 1 x 8 and 1 x 8 -> 2 x 4 resume to the losses of one straight run."""
  # A schedule that does not depend on train.steps, which grows from 3 to 6 on resume.
  common = ['--config.optim.schedule=constant', '--config.optim.warmup_steps=2']

  def train(processes, devices, workdir, steps):
    run = local(processes, devices, *common, f'--config.train.steps={steps}', f'--workdir={workdir}',
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = run.communicate(timeout=600)
    assert run.returncode == 0, err[-3000:]
    return out

  train(2, 4, tmp_path / 'a', 3)
  assert 'resuming from step 3' in train(1, 8, tmp_path / 'a', 6)
  train(1, 8, tmp_path / 'b', 3)
  assert 'resuming from step 3' in train(2, 4, tmp_path / 'b', 6)
  train(1, 8, tmp_path / 'straight', 6)
  straight = losses(tmp_path / 'straight')
  assert [r[0] for r in straight] == [1, 2, 3, 4, 5, 6] and straight[0][1] - straight[-1][1] > 0.2
  for moved in (losses(tmp_path / 'a'), losses(tmp_path / 'b')):
    assert [r[0] for r in moved] == [1, 2, 3, 4, 5, 6]
    for (_, la, ea), (_, lb, eb) in zip(moved, straight):
      assert la == pytest.approx(lb, rel=1e-5)
    assert moved[-1][2] == pytest.approx(straight[-1][2], rel=1e-5)
