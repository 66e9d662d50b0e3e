"""Bad input: one line naming the key and the fix, exit code 2, before anything compiles."""
import pytest

from trainer import cli, config

from conftest import ROOT

TINY = f'--config={ROOT}/configs/tiny.py'


@pytest.mark.parametrize('args, expected', [
    (['--config.train.stepz=5'], "unknown config key 'train.stepz'; did you mean --config.train.steps?"),
    (['--config.train.steps=five'], '--config.train.steps=five: expected an integer'),
    (['--config.model.scan_layers=maybe'], 'expected true or false'),
    (['--config.model.scan_unroll=9'], '--config.model.scan_unroll=9 is more than --config.model.num_layers='),
    (['--config.model.scan_unroll=0', '--config.model.scan_layers=false'],
     'but --config.model.scan_layers=false has none'),
    (['--config.model.scan_unroll=-2'], '--config.model.scan_unroll=-2: must be -1 or an integer'),
    (['--config.model.attention=cudnn'], '--config.model.attention=cudnn needs '
     '--config.model.dtype=bfloat16'),
    (['--config.model.attention=cudnn', '--config.model.dtype=bfloat16',
      '--config.model.attn_dropout=0.1'], 'attention=cudnn has no attention dropout'),
    (['--config.model.attention=cudnn', '--config.model.dtype=bfloat16'],
     '--config.model.attention=cudnn needs NVIDIA GPUs; these devices are cpu'),
    (['--config.mesh.data=3'], 'does not divide the 8 devices'),
    (['--config.mesh.data=2', '--config.mesh.fsdp=2', '--config.mesh.tensor=1'],
     'data x fsdp x tensor = 2 x 2 x 1 = 4, but there are 8 devices'),
    (['--config.mesh.tensor=8', '--config.mesh.fsdp=1'],
     '--config.model.num_heads=4 is not divisible by --config.mesh.tensor=8'),
    (['--config.mesh.tensor=2', '--config.mesh.fsdp=4', '--config.model.mlp_dim=255'],
     '--config.model.mlp_dim=255 is not divisible by --config.mesh.tensor=2'),
    (['--config.train.batch_size=12'], 'is not divisible by the 8 data shards'),
    (['--config.train.seq_len=100'], '--config.train.seq_len=100 is longer than the position table'),
    (['--config.mesh.rules=zero3'], "--config.mesh.rules='zero3': choose one of dp, fsdp, fsdp_tp"),
    (['--config.mesh.rules=fsdp', '--config.mesh.tensor=2'], 'needs --config.mesh.rules=fsdp_tp'),
    (['--config.train.steps'], '--config.train.steps: missing value'),
    (['--config.optim.schedule=step'], 'choose one of cosine, linear, constant, wsd'),
    (['--config.optim.decay_steps=-1'], '--config.optim.decay_steps=-1: must be an integer in [0'),
])
def test_bad_train_input_exits_2_with_one_line(args, expected, capsys, tmp_path):
  code = cli.main(['train', TINY, f'--workdir={tmp_path}/run', *args])
  err = capsys.readouterr().err
  assert code == 2
  assert expected in err
  assert err.count('\n') == 1, err
  assert not (tmp_path / 'run').exists(), 'nothing may be written for bad input'


def test_missing_config_file(capsys):
  assert cli.main(['info', '--config=configs/nope.py']) == 2
  assert "no such file 'configs/nope.py'" in capsys.readouterr().err


def test_unknown_preset_names_choices(capsys):
  assert cli.main(['info', f'--config={ROOT}/configs/gpt2.py:gpt3']) == 2
  assert 'choose one of gpt2, gpt2-medium, gpt2-large, gpt2-xl' in capsys.readouterr().err


def test_override_types_follow_defaults():
  cfg = config.load(None, {'optim.lr': '3e-4', 'train.steps': '7', 'model.scan_layers': 'false',
                           'model.dtype': 'bfloat16', 'optim.weight_decay': '0'})
  assert (cfg.optim.lr, cfg.train.steps, cfg.model.scan_layers) == (3e-4, 7, False)
  assert cfg.model.dtype == 'bfloat16' and isinstance(cfg.optim.weight_decay, float)


def test_mesh_minus_one_takes_the_rest():
  cfg = config.load(None, {'mesh.data': '2', 'mesh.fsdp': '-1', 'mesh.tensor': '2',
                           'train.batch_size': '32'})
  assert config.validate(cfg, 8) == (2, 2, 2)


@pytest.mark.parametrize('override, allowed', [  # The values issue 9 found starting training.
    ('optim.lr=-1', '(0, inf)'), ('model.dropout=1.5', '[0, 1)'),
    ('optim.warmup_steps=-5', '[0, 2**31)'), ('optim.min_lr_ratio=3', '[0, 1]'),
    ('optim.b2=1.5', '[0, 1)'), ('optim.clip_norm=-1', '[0, inf)'),
    ('model.init_std=-1', '(0, inf)'), ('train.eval_every=-1', '[0, 2**31)'),
    ('seed=-1', '[0, 2**32)'), ('optim.eps=0', '[1e-30, inf)'), ('optim.b1=nan', '[0, 1)'),
    ('optim.lr=inf', '(0, inf)'), ('data.val_every_nth_file=1', '[2, 2**31)'),
])
def test_out_of_range_values_stop_before_anything_runs(override, allowed, capsys, tmp_path):
  code = cli.main(['train', TINY, f'--workdir={tmp_path}/run', f'--config.{override}'])
  err = capsys.readouterr().err
  key = override.split('=')[0]
  assert code == 2 and err.startswith(f'error: --config.{key}=') and err.count('\n') == 1, err
  assert err.rstrip().endswith(allowed) and not (tmp_path / 'run').exists()


def test_import_order_has_no_circles():
  """config, hardware and sharding import each other only one way; config needs no JAX."""
  import subprocess
  import sys
  for first in ('trainer.config', 'trainer.hardware', 'trainer.sharding', 'trainer.errors'):
    code = f'import {first}, sys; print("jax" in sys.modules)'
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(first == 'trainer.sharding'), first
