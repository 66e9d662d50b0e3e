"""Checkpoints in-process: retention, resharding onto other meshes, bad input, non-finite loss."""
import json
import os

import jax
import numpy as np
import pytest

from conftest import tiny_config
from trainer import checkpoint, cli, data, loop, train


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
  assert json.loads((tmp_path / 'checkpoints/10/data/metadata').read_text()) == {'next_index': 10}


def _one_step(cfg, devices, state=None, ckpts=None, step=None):
  """Loss of the next step after restoring (or with ``state``) on a mesh of ``devices``."""
  setup = train.build(cfg, devices)
  batches = iter(data.load(cfg).train.to_iter_dataset())
  if ckpts is not None:
    state = ckpts.restore(step, setup.abstract_state(), batches)
  else:
    for _ in range(int(state.step)):
      next(batches)
  step_fn = setup.compile_train_step()
  _, m = step_fn(state, data.to_global(next(batches), setup.batch_sharding))
  return float(m['loss'])


def test_resume_on_other_meshes(tmp_path):
  cfg = tiny_config(**{'mesh.fsdp': 8})
  setup = train.build(cfg)
  step_fn = setup.compile_train_step()
  batches = iter(data.load(cfg).train.to_iter_dataset())
  state = setup.init_state(cfg.seed)
  for _ in range(3):
    state, _ = step_fn(state, data.to_global(next(batches), setup.batch_sharding))
  ckpts = checkpoint.Checkpoints(str(tmp_path), cfg)
  ckpts.save(3, state, batches)
  ckpts.wait()
  assert state.params['wte'].sharding.spec[1] == 'fsdp'
  _, m = step_fn(state, data.to_global(next(batches), setup.batch_sharding))
  want = float(m['loss'])
  for data_n, fsdp, tensor, devices in ((2, 4, 1, None), (2, 2, 2, None), (1, 1, 1, 1)):
    other = tiny_config(**{'mesh.data': data_n, 'mesh.fsdp': fsdp, 'mesh.tensor': tensor})
    got = _one_step(other, jax.devices()[:devices] if devices else None, ckpts=ckpts, step=3)
    assert abs(got - want) / abs(want) < 1e-5, (data_n, fsdp, tensor, got, want)
  ckpts.close()


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
  # Mesh, batch and log settings may change: it resumes.
  code, out = run_cli(capsys, *args, '--config.train.steps=3', '--config.mesh.fsdp=4',
                      '--config.mesh.tensor=2', '--config.train.batch_size=16')
  assert code == 0, out.err
  assert f'resuming from step 2: {workdir}/checkpoints/2' in out.out
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
  code, out = run_cli(capsys, *args, '--config.train.steps=4')
  assert code == 2
  assert out.err.count('\n') == 1 and f'{workdir}/checkpoints/2: cannot restore' in out.err
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


def test_config_round_trips_through_json():
  cfg = tiny_config('opt350m', **{'checkpoint.every': 7})
  from trainer import config
  back = config.from_dict(json.loads(json.dumps(cfg.to_dict())), 'test')
  assert back.to_dict() == cfg.to_dict() and back.model.proj_dim == 32
  with pytest.raises(config.ConfigError, match='test: unknown config key'):
    config.from_dict({'model': {'depth': 3}}, 'test')
