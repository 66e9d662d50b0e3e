"""Ahead-of-time fit check: topology names, real TPU compiles on this CPU, verdicts, bad input."""
import math

import jax
import pytest

from conftest import tiny_config
from test_cli import trainer
from trainer import aot, cli
from trainer.config import ConfigError


@pytest.mark.parametrize('name, grid, devices', [
    ('v2-32', '4x4', 32), ('v3-8', '2x2', 8), ('v3-256', '8x16', 256), ('v3-512', '16x16', 512),
    ('v4-8', '2x2x1', 4), ('v4-128', '4x4x4', 64), ('v4-4096', '8x16x16', 2048),
    ('v5p-512', '4x8x8', 256), ('v5e-1', '1x1', 1), ('v5e-16', '4x4', 16), ('v5e-8', '2x4', 8),
    ('v6e-64', '8x8', 64), ('v6e-256', '16x16', 256), ('v4:4x4x8', '4x4x8', 128),
])
def test_cloud_tpu_names(name, grid, devices):
  topo = aot.parse(name)
  assert (topo.chips, topo.devices) == (grid, devices)


def test_libtpu_gives_the_devices_the_name_promises():
  for name in ('v3-256', 'v4-128', 'v5e-16', 'v5p-512', 'v6e-64'):
    topo = aot.parse(name)
    devices = aot.topology_devices(topo)
    assert len(devices) == topo.devices, name
  assert devices[0].device_kind == 'TPU v6 lite'


@pytest.mark.parametrize('name, words', [
    ('v3-100', 'power-of-two number of cores'), ('v5e-12', 'power-of-two number of chips'),
    ('v7-64', 'unknown topology'), ('v4:4x4', '3-D grid'), ('v5e:2x2x2', '2-D grid')])
def test_bad_names(name, words):
  with pytest.raises(ConfigError, match=words):
    aot.parse(name)


def state_bytes_per_device(cfg, topology):
  from trainer import train
  state = train.build(cfg, aot.topology_devices(aot.parse(topology))).abstract_state()
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
             for x in jax.tree.leaves(state))


def test_fit_report_of_the_real_train_step():
  cfg = tiny_config(**{'mesh.fsdp': 2, 'mesh.tensor': 2, 'model.scan_layers': False})
  r = aot.fit_report(cfg, 'v4-8')
  assert (r['devices'], r['device_kind'], r['mesh']) == (4, 'TPU v4', {'data': 1, 'fsdp': 2, 'tensor': 2})
  assert r['hbm_bytes_per_device'] == 32 * 2**30 and r['fits'] is True
  # Arguments: the train state's shards plus this device's half of the token batch, padded
  # to TPU tiles (which, for a model this small, nearly doubles them).
  expected = state_bytes_per_device(cfg, 'v4-8') + 8 * 65 * 4 // 2
  assert expected <= r['argument_bytes_per_device'] < 2.5 * expected
  assert r['peak_bytes_per_device'] >= r['argument_bytes_per_device']
  # Without loops XLA counts every FLOP; the model's count leaves out softmax, norms and biases.
  assert r['flops_per_step'] == pytest.approx(r['xla_flops_per_step'], rel=0.25)
  assert 'suggestions' not in r


def test_too_big_does_not_fit_and_says_what_to_change(capsys):
  # 6.4B parameters (12 bytes each with Adam) on a v2-8, half of it replicated over data=2.
  args = ['compile', '--config=configs/tiny.py', '--topology=v2-8', '--config.model.num_layers=128',
          '--config.model.embed_dim=2048', '--config.model.mlp_dim=8192', '--config.model.num_heads=16',
          '--config.mesh.data=2', '--config.mesh.fsdp=4']
  assert cli.main(args + ['--json']) == 0
  import json
  r = json.loads(capsys.readouterr().out)
  assert r['fits'] is False
  assert r['argument_bytes_per_device'] > r['hbm_bytes_per_device'] == 8 * 2**30
  # 6.4B parameters, each with two Adam moments, all float32, split 4 ways by fsdp.
  params = 128 * (12 * 2048**2 + 13 * 2048) + 384 * 2048 + 64 * 2048 + 2 * 2048
  assert r['argument_bytes_per_device'] == pytest.approx(params * 12 / 4, rel=0.01)
  assert r['suggestions'][0].startswith('more FSDP: move data-parallel devices into fsdp '
                                        '(--config.mesh.data=1 --config.mesh.fsdp=8)')
  assert r['largest_arguments'][0][1] > 2**30 and r['temp_bytes_per_device'] > 8 * 2**30
  assert r['compiler_error'].startswith('RESOURCE_EXHAUSTED: Ran out of memory')
  assert cli.main(args) == 0
  text = capsys.readouterr().out
  assert 'verdict:    DOES NOT FIT' in text and 'try: more FSDP' in text


@pytest.mark.parametrize('args, message', [
    (['--topology=v9-8'], 'error: --topology=v9-8: unknown topology'),
    (['--topology=v4-8', '--config.mesh.fsdp=8'],
     'error: --topology=v4-8 has 4 devices: --config.mesh: data x fsdp x tensor = 1 x 8 x 1 = 8, '
     'but there are 4 devices'),
])
def test_bad_input_exits_2_with_one_line(args, message):
  out = trainer('compile', '--config=configs/tiny.py', *args)
  assert out.returncode == 2
  assert len(out.stderr.strip().splitlines()) == 1 and out.stderr.startswith(message)


def test_missing_libtpu_exits_2_with_the_install_command(monkeypatch, capsys):
  monkeypatch.setattr(aot.importlib.util, 'find_spec', lambda name: None)
  assert cli.main(['compile', '--config=configs/tiny.py', '--topology=v4-8']) == 2
  assert capsys.readouterr().err == (
      'error: trainer compile needs libtpu to compile for TPUs; install it with '
      'pip install "libtpu==0.0.42.*" (the version jax[tpu]==0.10.2 pins)\n')


def test_more_fsdp_suggestion_respects_the_hidden_width():
  # gpt2-xl is 1,600 wide: on 256 devices fsdp can grow to 64, not 256.
  from trainer import config
  cfg = config.load('configs/gpt2.py:gpt2-xl,paper', {'mesh.data': '8', 'mesh.fsdp': '32'})
  report = {'hbm_bytes_per_device': 16 * 2**30, 'argument_bytes_per_device': 10 * 2**30,
            'temp_bytes_per_device': 0, 'mesh': {'data': 8, 'fsdp': 32, 'tensor': 1}}
  assert aot._suggestions(cfg, report) == [
      'more FSDP: move data-parallel devices into fsdp (--config.mesh.data=4 --config.mesh.fsdp=64); '
      'parameters and optimizer state shrink by 2x']


def test_the_default_layer_loop_is_chosen_for_the_target_not_this_cpu():
  """model.scan_unroll=-1 unrolls a shallow model on a CPU but keeps the loop for a TPU
  target, though this CPU traces both (the platform comes from the mesh, as under
  `trainer compile`)."""
  from trainer import train
  def loops(devices):
    cfg = tiny_config(**{'mesh.fsdp': len(devices)})
    assert cfg.model.scan_unroll == -1 and cfg.model.remat == 'none'
    return train.build(cfg, devices).lower_train_step().as_text().count('stablehlo.while')
  assert loops(jax.devices()[:4]) == 0
  assert loops(aot.topology_devices(aot.parse('v4-8'))) >= 2  # Forward and backward.
