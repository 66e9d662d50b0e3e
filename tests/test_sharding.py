"""One training step gives the same loss and parameters on every mesh; FSDP really shards."""
import json
import os

import jax
import numpy as np
import pytest

from trainer import cli, config, data, sharding, train

from conftest import ROOT, relative, tiny_config, without_key_bias

SNAPSHOT = os.path.join(ROOT, 'tests', 'snapshots', 'partition_specs.json')


def one_step(mesh_shape, devices=None):
  data_, fsdp, tensor = mesh_shape
  cfg = tiny_config(**{'mesh.data': data_, 'mesh.fsdp': fsdp, 'mesh.tensor': tensor,
                       'model.dropout': 0.1, 'model.attn_dropout': 0.1, 'model.embed_dropout': 0.1,
                       'train.batch_size': 8})
  setup = train.build(cfg, devices)
  state = setup.init_state(seed=0)
  init_params = jax.device_get(state.params)  # The step donates (deletes) its input state.
  tokens = np.random.RandomState(0).randint(0, 257, (8, 65)).astype(np.int32)
  new_state, metrics = setup.compile_train_step()(state, data.to_global(tokens, setup.batch_sharding))
  return float(metrics['loss']), jax.device_get(new_state.params), init_params


def test_same_step_on_every_mesh():
  ref_loss, ref_params, ref_init = one_step((1, 1, 1), jax.devices()[:1])
  moved = jax.tree.map(relative, ref_params, ref_init)
  assert min(jax.tree.leaves(moved)) > 1e-4  # The step changed every parameter.
  ref_params = without_key_bias(ref_params)
  for shape in [(1, 8, 1), (8, 1, 1), (2, 2, 2), (1, 4, 2)]:
    loss, params, _ = one_step(shape)
    assert abs(loss - ref_loss) / ref_loss < 1e-5, shape
    diffs = jax.tree.map(relative, ref_params, without_key_bias(params))
    assert max(jax.tree.leaves(diffs)) < 1e-5, (shape, diffs)


def test_fsdp_divides_parameter_and_optimizer_bytes():
  cfg = tiny_config(**{'mesh.fsdp': 8})
  setup = train.build(cfg)
  state = setup.init_state(seed=0)
  leaves = jax.tree.leaves((state.params, state.opt_state))
  total = sum(x.nbytes for x in leaves)
  per_device = {}
  for leaf in leaves:
    for shard in leaf.addressable_shards:
      per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
  assert len(per_device) == 8
  for held in per_device.values():
    assert abs(held / (total / 8) - 1) < 0.05


def test_tensor_parallel_splits_heads_and_mlp():
  cfg = tiny_config(**{'mesh.fsdp': 4, 'mesh.tensor': 2})
  state = train.build(cfg).init_state(seed=0)
  attn, mlp = state.params['h']['attn'], state.params['h']['mlp']
  assert attn['c_attn_kernel'].sharding.spec == jax.sharding.PartitionSpec(None, 'fsdp', None, 'tensor', None)
  assert mlp['c_fc_kernel'].addressable_shards[0].data.shape == (2, 64 // 4, 256 // 2)


def specs_for(spec: str, rules: str) -> dict:
  cfg = config.load(f'{ROOT}/configs/{spec}', {'mesh.rules': rules})
  return {name: str(tuple(row['spec'])) for name, row in cli.info(cfg)['partition_specs'].items()}


def current_snapshot() -> dict:
  return {rules: {spec: specs_for(spec, rules) for spec in ('gpt2.py:gpt2', 'opt.py:opt-125m')}
          for rules in sharding.RULES}


def test_partition_specs_match_snapshot():
  # Regenerate after an intended change: python -c "import tests.test_sharding as t; t.write()"
  with open(SNAPSHOT) as f:
    assert current_snapshot() == json.load(f)


def write():
  with open(SNAPSHOT, 'w') as f:
    json.dump(current_snapshot(), f, indent=1, sort_keys=True)


def test_multi_slice_data_axis_spans_slices_and_the_rest_stays_inside():
  # CPU devices have no slice_index, so the slices come from libtpu's compile-only devices:
  # two v5e-4 slices, 8 chips.
  from trainer import aot
  devices = aot.topology_devices(aot.parse('v5e-4'), slices=2)
  mesh = sharding.make_mesh((4, 2, 1), devices, slices=2)
  slice_of = np.vectorize(lambda d: d.slice_index)(mesh.devices)
  assert slice_of.shape == (4, 2, 1)
  assert (slice_of[:2] == 0).all() and (slice_of[2:] == 1).all()   # data 0-1: slice 0; 2-3: slice 1.
  r = aot.fit_report(tiny_config(**{'mesh.slices': 2, 'mesh.data': 2, 'mesh.fsdp': 4}), 'v5e-4')
  assert (r['devices'], r['slices'], r['fits']) == (8, 2, True)


def test_multi_slice_needs_slice_devices():
  with pytest.raises(config.ConfigError, match='no slice_index; multi-slice needs 2 TPU slices'):
    sharding.make_mesh((2, 4, 1), jax.devices(), slices=2)
  with pytest.raises(config.ConfigError, match='must be a positive multiple of the slice count'):
    config.validate(tiny_config(**{'mesh.slices': 2}), 8)
