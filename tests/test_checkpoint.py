"""Checkpoints in-process: retention, resharding onto other meshes, bad input, non-finite loss."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, tiny_config
from trainer import checkpoint, cli, data, loop, rows, train


def run_cli(capsys, *argv):
  code = cli.main(list(argv))
  return code, capsys.readouterr()


def metrics_steps(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line)['step'] for line in f]


def test_retention_keeps_last_and_every_kth(tmp_path):
  cfg = tiny_config(**{'train.steps': 10, 'checkpoint.every': 2, 'checkpoint.keep': 2,
                       'checkpoint.keep_every': 4})
  loop.run(cfg, str(tmp_path))
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['10', '4', '8']
  saved = json.loads((tmp_path / 'checkpoints/10/config/metadata').read_text())
  assert saved['checkpoint']['keep_every'] == 4 and saved['model']['embed_dim'] == 64
  position = json.loads((tmp_path / 'checkpoints/10/position/metadata').read_text())
  assert position == {'rows': 80, 'seq_len': 64, 'seed': 0, 'tokens': 80 * 64,  # 10 x 8 rows,
                      'order': rows.ORDER}  # counted in this version's row order.


def _one_step(cfg, devices, state=None, ckpts=None, step=None):
  """Loss of the next step after restoring (or with ``state``) on a mesh of ``devices``."""
  setup = train.build(cfg, devices)
  if ckpts is not None:
    state = ckpts.restore(step, setup.abstract_state())
  batches = iter(data.load(cfg).train.to_iter_dataset(int(state.step) * cfg.train.batch_size))
  step_fn = setup.compile_train_step()
  _, m = step_fn(state, data.to_global(next(batches), setup.batch_sharding))
  return float(m['loss'])


@pytest.mark.slow
def test_resume_on_other_meshes(tmp_path):
  cfg = tiny_config(**{'mesh.fsdp': 8})
  setup = train.build(cfg)
  step_fn = setup.compile_train_step()
  batches = iter(data.load(cfg).train.to_iter_dataset())
  state = setup.init_state(cfg.seed)
  for _ in range(3):
    state, _ = step_fn(state, data.to_global(next(batches), setup.batch_sharding))
  ckpts = checkpoint.Checkpoints(str(tmp_path), cfg)
  ckpts.save(3, state, 3 * cfg.train.batch_size)
  ckpts.wait()
  assert state.params['wte'].sharding.spec[1] == 'fsdp'
  _, m = step_fn(state, data.to_global(next(batches), setup.batch_sharding))
  want = float(m['loss'])
  for data_n, fsdp, tensor, devices in ((2, 4, 1, None), (2, 2, 2, None), (1, 1, 1, 1)):
    other = tiny_config(**{'mesh.data': data_n, 'mesh.fsdp': fsdp, 'mesh.tensor': tensor})
    got = _one_step(other, jax.devices()[:devices] if devices else None, ckpts=ckpts, step=3)
    assert abs(got - want) / abs(want) < 1e-5, (data_n, fsdp, tensor, got, want)
  ckpts.close()


@pytest.mark.slow
def test_changed_model_is_refused_and_kept(tmp_path, capsys):
  workdir = str(tmp_path)
  args = ['train', '--config=configs/tiny.py', f'--workdir={workdir}', '--config.train.steps=2']
  assert run_cli(capsys, *args)[0] == 0
  before = sorted(os.listdir(tmp_path / 'checkpoints/2/state'))
  code, out = run_cli(capsys, *args, '--config.model.mlp_dim=128', '--config.train.steps=4')
  assert code == 2
  assert out.err.count('\n') == 1 and 'checkpoints/2 holds another model' in out.err
  assert 'model.mlp_dim is 256 there, 128 now' in out.err
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2']
  assert sorted(os.listdir(tmp_path / 'checkpoints/2/state')) == before
  # Mesh, batch and log settings may change: it resumes (train.steps changes the cosine).
  code, out = run_cli(capsys, *args, '--config.train.steps=3', '--config.mesh.fsdp=4',
                      '--config.mesh.tensor=2', '--config.train.batch_size=16',
                      '--config.optim.allow_lr_change=true')
  assert code == 0, out.err
  assert f'resuming from step 2: {workdir}/checkpoints/2 (16 sequences' in out.out
  assert metrics_steps(workdir) == [1, 2, 3]


def test_corrupt_checkpoint_is_named_and_kept(tmp_path, capsys):
  workdir = str(tmp_path)
  args = ['train', '--config=configs/tiny.py', f'--workdir={workdir}', '--config.train.steps=2']
  assert run_cli(capsys, *args)[0] == 0
  state_dir = tmp_path / 'checkpoints/2/state'
  for root, _, files in os.walk(state_dir):
    for name in files:
      if name != 'commit_success.txt':
        with open(os.path.join(root, name), 'wb') as f:
          f.write(b'\x00garbage')
  code, out = run_cli(capsys, *args, '--config.train.steps=4', '--config.optim.allow_lr_change=true')
  assert code == 2
  assert out.err.count('\n') == 1 and f'{workdir}/checkpoints/2: cannot restore (' in out.err
  assert (state_dir / 'manifest.ocdbt').read_bytes() == b'\x00garbage'
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2']


def test_unwritable_workdir(tmp_path, capsys):
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  code, out = run_cli(capsys, 'train', '--config=configs/tiny.py', f'--workdir={blocker}/run')
  assert code == 2
  assert out.err.count('\n') == 1 and f'--workdir={blocker}/run is not writable' in out.err
  assert blocker.read_text() == 'not a directory'


def test_non_finite_loss_stops_and_keeps_last_good(tmp_path, capsys):
  workdir = str(tmp_path)
  code, out = run_cli(capsys, 'train', '--config=configs/tiny.py', f'--workdir={workdir}',
                      '--config.checkpoint.every=1', '--config.optim.lr=1e30',
                      '--config.optim.clip_norm=0', '--config.optim.warmup_steps=0')
  assert code == 1
  assert 'loss is nan at step 2' in out.err or 'loss is inf at step 2' in out.err
  assert f'last good checkpoint: {workdir}/checkpoints/1' in out.err
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1']
  assert metrics_steps(workdir) == [1]
  with open(tmp_path / 'checkpoints/1/commit_success.txt') as f:
    assert f.read()


def test_lost_storage_on_a_metrics_write_names_where_the_run_resumes(tmp_path, capsys, monkeypatch):
  """Not only a checkpoint save: any write that meets failed storage names the last commit."""
  from trainer import metrics, storage
  workdir, real = str(tmp_path), metrics.Writer.write

  def write(self, record):
    if record['step'] >= 7:  # Once step 5's checkpoint has committed, storage "goes".
      while not (tmp_path / 'checkpoints/5/commit_success.txt').exists():
        time.sleep(0.05)
      raise storage.StorageError(f'{self.path}: cannot write (storage gone)')
    real(self, record)
  monkeypatch.setattr(metrics.Writer, 'write', write)
  flags = ('train', '--config=configs/tiny.py', f'--workdir={workdir}', '--config.checkpoint.every=5')
  code, out = run_cli(capsys, *flags, '--config.train.steps=20')
  assert code == 1 and out.err.count('\n') == 1, out.err
  assert out.err == (f'error: {workdir}/metrics.jsonl: cannot write (storage gone); last committed '
                     f'checkpoint: {workdir}/checkpoints/5; the run resumes from it once the '
                     'storage is back\n')
  monkeypatch.undo()  # The storage is back.
  code, out = run_cli(capsys, *flags, '--config.train.steps=8')
  assert code == 0 and f'resuming from step 5: {workdir}/checkpoints/5' in out.out
  assert metrics_steps(workdir)[-1] == 8


def test_skip_non_finite_keeps_the_weights(tmp_path, capsys):
  workdir = str(tmp_path)
  code, out = run_cli(capsys, 'train', '--config=configs/tiny.py', f'--workdir={workdir}',
                      '--config.train.steps=3', '--config.optim.lr=1e30',
                      '--config.optim.clip_norm=0', '--config.optim.warmup_steps=0',
                      '--config.train.skip_nonfinite=true', '--config.checkpoint.every=1',
                      '--config.checkpoint.keep=0')
  assert code == 0, out.err
  with open(tmp_path / 'metrics.jsonl') as f:
    records = [json.loads(line) for line in f]
  assert [r['skipped'] for r in records] == [0.0, 1.0, 1.0]
  assert np.isfinite(records[0]['loss']) and not np.isfinite(records[1]['loss'])
  cfg = tiny_config(**{'train.steps': 3, 'optim.clip_norm': 0.0})  # Same optimizer structure.
  setup = train.build(cfg)
  ckpts = checkpoint.Checkpoints(workdir, cfg)
  after_1, after_3 = (ckpts.restore(s, setup.abstract_state()) for s in (1, 3))
  ckpts.close()
  assert int(after_3.step) == 3
  for a, b in zip(jax.tree.leaves(after_1.params), jax.tree.leaves(after_3.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_config_round_trips_through_json():
  cfg = tiny_config('opt350m', **{'checkpoint.every': 7})
  from trainer import config
  back = config.from_dict(json.loads(json.dumps(cfg.to_dict())), 'test')
  assert back.to_dict() == cfg.to_dict() and back.model.proj_dim == 32
  with pytest.raises(config.ConfigError, match='test: unknown config key'):
    config.from_dict({'model': {'depth': 3}}, 'test')


# ---- the real command line in subprocesses: kill -9, SIGTERM -----------------------------------

ENV = {**os.environ, 'JAX_PLATFORMS': 'cpu',
       'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}


def train_cmd(workdir, *extra):
  return [sys.executable, '-m', 'trainer', 'train', '--config=configs/tiny.py',
          f'--workdir={workdir}', *extra]


def finish(cmd):
  out = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr
  return out


def start_until(cmd, ready, signum):
  """Starts ``cmd`` and sends ``signum`` as soon as ``ready()``; returns the finished process."""
  proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  while not ready():
    assert proc.poll() is None, 'the run ended before the signal: ' + proc.stderr.read()[-2000:]
    time.sleep(0.005)
  proc.send_signal(signum)
  proc.wait(timeout=600)
  return proc


def losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return {r['step']: r['loss'] for r in map(json.loads, f)}


def last_logged_step(workdir) -> int:
  """The highest step in metrics.jsonl so far; 0 while it is missing or empty (polling)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  steps = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          steps.append(json.loads(line)['step'])
        except json.JSONDecodeError:  # A line still being written.
          pass
  return max(steps, default=0)


@pytest.mark.slow
def test_kill_9_then_resume_is_bit_exact(tmp_path):
  flags = ['--config.checkpoint.every=10', '--config.train.batch_size=32']
  straight, killed = tmp_path / 'straight', tmp_path / 'killed'
  finish(train_cmd(straight, *flags))

  def after_step_10_checkpoint():
    committed = (killed / 'checkpoints/10/commit_success.txt').exists()
    return committed and last_logged_step(killed) >= 12
  proc = start_until(train_cmd(killed, *flags), after_step_10_checkpoint, signal.SIGKILL)
  assert proc.returncode == -signal.SIGKILL
  logged = max(losses(killed))
  assert 12 <= logged < 20  # Killed while later steps ran; they were logged and are redone.
  out = finish(train_cmd(killed, *flags))
  assert f'resuming from step 10: {killed}/checkpoints/10' in out.stdout
  assert 'step      1 |' not in out.stdout and 'step     11 |' in out.stdout
  assert metrics_steps(killed) == list(range(1, 21))
  want, got = losses(straight), losses(killed)
  assert want[11] != want[12]
  assert [got[s] for s in range(11, 21)] == [want[s] for s in range(11, 21)]


@pytest.mark.slow
def test_kill_9_during_async_save(tmp_path):
  big = ['--config.model.embed_dim=512', '--config.model.mlp_dim=2048',
         '--config.model.num_heads=8', '--config.train.steps=6', '--config.checkpoint.every=2']
  ckpt_dir = tmp_path / 'checkpoints'
  saving_4 = lambda: ckpt_dir.exists() and any(
      n.startswith('4.orbax-checkpoint-tmp') for n in os.listdir(ckpt_dir))
  proc = start_until(train_cmd(tmp_path, *big), saving_4, signal.SIGKILL)
  assert proc.returncode == -signal.SIGKILL
  names = os.listdir(ckpt_dir)
  assert '2' in names and '4' not in names, names  # Step 4 was cut short mid-write.
  assert any(n.startswith('4.orbax-checkpoint-tmp') for n in names)
  out = finish(train_cmd(tmp_path, *big))
  assert f'resuming from step 2: {ckpt_dir}/2' in out.stdout
  assert sorted(os.listdir(ckpt_dir)) == ['2', '4', '6']
  assert (ckpt_dir / '4/commit_success.txt').exists()
  assert metrics_steps(tmp_path) == list(range(1, 7))


@pytest.mark.slow
def test_sigterm_saves_and_exits_zero(tmp_path):
  # A schedule that does not depend on train.steps, which shrinks from 500 on resume.
  flags = ['--config.train.steps=500', '--config.checkpoint.every=0',
           '--config.optim.schedule=constant', '--config.optim.warmup_steps=0']
  running = lambda: last_logged_step(tmp_path) >= 3
  proc = start_until(train_cmd(tmp_path, *flags), running, signal.SIGTERM)
  assert proc.returncode == 0, proc.stderr.read()
  stopped = max(losses(tmp_path))
  assert stopped < 500 and f'preempted (SIGTERM): saved step {stopped}' in proc.stdout.read()
  assert os.listdir(tmp_path / 'checkpoints') == [str(stopped)]
  assert (tmp_path / f'checkpoints/{stopped}/commit_success.txt').exists()
  out = finish(train_cmd(tmp_path, *flags, '--config.train.steps=' + str(stopped + 2)))
  assert f'resuming from step {stopped}' in out.stdout
  assert metrics_steps(tmp_path) == list(range(1, stopped + 3))
