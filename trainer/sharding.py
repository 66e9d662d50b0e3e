"""The device mesh and the rules that map logical axis names to mesh axes.

Model code names axes logically (``embed``, ``heads``, ``act_batch`` ...); this
module alone decides where they live. Parameter axes: vocab, embed, heads, kv,
mlp, layers. Activation axes carry an ``act_`` prefix so that FSDP can shard a
weight's ``embed`` dimension while activations keep theirs whole.
"""
from __future__ import annotations

import jax
import numpy as np
from flax import linen as nn
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from trainer.config import MESH_AXES as AXES, mesh_shape  # noqa: F401  (the mesh's API)
from trainer.errors import ConfigError

BATCH = ('data', 'fsdp')  # The batch is split over both data-parallel axes.

# Each rule set is complete: a logical name absent from it is replicated.
RULES = {
    # Plain data parallelism: every device holds all parameters.
    'dp': (
        ('act_batch', BATCH),
    ),
    # ZeRO-3 style: weights and optimizer state sharded over fsdp along embed.
    'fsdp': (
        ('act_batch', BATCH),
        ('embed', 'fsdp'),
    ),
    # FSDP plus Megatron tensor parallelism over heads, MLP hidden and vocab.
    'fsdp_tp': (
        ('act_batch', BATCH),
        ('embed', 'fsdp'),
        ('heads', 'tensor'), ('mlp', 'tensor'), ('vocab', 'tensor'),
        ('act_heads', 'tensor'), ('act_mlp', 'tensor'), ('act_vocab', 'tensor'),
    ),
}


def make_mesh(shape: tuple[int, int, int], devices=None, slices: int = 1) -> Mesh:
  """A mesh with automatic (GSPMD) sharding propagation over the given devices.

  With ``slices > 1`` the data axis spans the slices (over the data-centre network) and
  fsdp and tensor stay inside each slice, where the interconnect is fast.
  """
  devices = jax.devices() if devices is None else devices
  if slices > 1:
    return Mesh(_hybrid_grid(shape, devices, slices), AXES)
  try:
    grid = mesh_utils.create_device_mesh(shape, devices=devices)
  except (AssertionError, NotImplementedError, ValueError):
    grid = np.asarray(devices).reshape(shape)
  return Mesh(grid, AXES)


def _hybrid_grid(shape, devices, slices: int) -> np.ndarray:
  found = {getattr(d, 'slice_index', None) for d in devices}
  if None in found or len(found) != slices:
    what = 'no slice_index' if None in found else f'{len(found)} slice(s)'
    raise ConfigError(f'--config.mesh.slices={slices}: the {devices[0].platform} devices have '
                      f'{what}; multi-slice needs {slices} TPU slices (or set mesh.slices=1)')
  per_slice = (shape[0] // slices, shape[1], shape[2])
  return mesh_utils.create_hybrid_device_mesh(per_slice, (slices, 1, 1), devices)


def rules(name: str):
  return RULES[name]


def param_table(boxed_params, rule_name: str) -> dict:
  """{'h/attn/c_attn_kernel': (shape, logical spec, mesh spec)} of abstract boxed params."""
  specs = jax.tree.leaves(nn.get_partition_spec(boxed_params), is_leaf=lambda x: isinstance(x, P))
  leaves = jax.tree_util.tree_flatten_with_path(nn.unbox(boxed_params))[0]
  return {'/'.join(p.key for p in path):
          (tuple(leaf.shape), spec, nn.logical_to_mesh_axes(spec, RULES[rule_name]))
          for (path, leaf), spec in zip(leaves, specs)}


def logical_to_sharding(logical_specs, mesh: Mesh, rule_name: str):
  """Maps a tree of logical PartitionSpecs to NamedShardings on the mesh."""
  return nn.logical_to_mesh_sharding(logical_specs, mesh, RULES[rule_name])


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Token batches [batch, length] split over the data-parallel axes."""
  return NamedSharding(mesh, P(BATCH, None))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
