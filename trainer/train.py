"""Train state, loss and the pure train step; sharded init and the one place they are jitted."""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct
from jax.sharding import Mesh, NamedSharding

from trainer import optimizer, sharding, xent
from trainer.model import Decoder, ModelConfig, abstract_params


class TrainState(struct.PyTreeNode):
  """Everything a step reads and writes. ``rng`` is a base key; step k uses fold_in(rng, k)."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array


def loss_fn(params, tokens_BL1, rng, model: Decoder):
  """Mean next-token cross-entropy over a [batch, seq_len + 1] block of tokens."""
  rngs = {} if rng is None else {'dropout': rng}
  if model.cfg.loss_chunk:  # The [B, L, V] logits never materialise whole.
    x_BLW, head_VW = model.apply({'params': params}, tokens_BL1[:, :-1], rngs=rngs, hidden=True)
    return xent.cross_entropy(x_BLW, head_VW, tokens_BL1[:, 1:], model.cfg)
  logits_BLV = model.apply({'params': params}, tokens_BL1[:, :-1], rngs=rngs)
  return optax.softmax_cross_entropy_with_integer_labels(logits_BLV, tokens_BL1[:, 1:]).mean()


def _grads(params, tokens_BL1, rng, model, micro_batches: int):
  grad_fn = jax.value_and_grad(loss_fn)
  if micro_batches == 1:
    return grad_fn(params, tokens_BL1, rng, model)
  B, L1 = tokens_BL1.shape
  # Row r of micro-batch i is row r * m + i: each micro-batch keeps the batch sharding.
  micro_MBL1 = tokens_BL1.reshape(B // micro_batches, micro_batches, L1).swapaxes(0, 1)
  micro_MBL1 = nn.with_logical_constraint(micro_MBL1, (None, 'act_batch', None))

  def accumulate(carry, xs):
    i, tokens = xs
    loss, grads = grad_fn(params, tokens, jax.random.fold_in(rng, i), model)
    return jax.tree.map(jnp.add, carry, (loss, grads)), None

  zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
  (loss, grads), _ = jax.lax.scan(accumulate, zeros, (jnp.arange(micro_batches), micro_MBL1))
  return jax.tree.map(lambda x: x / micro_batches, (loss, grads))


def train_step(state: TrainState, tokens_BL1, *, model, tx, lr_schedule, micro_batches: int,
               skip_nonfinite: bool = False):
  """One optimizer step on a global batch; returns the new state and scalar metrics."""
  rng = jax.random.fold_in(state.rng, state.step)
  loss, grads = _grads(state.params, tokens_BL1, rng, model, micro_batches)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {'loss': loss, 'grad_norm': optax.global_norm(grads), 'lr': lr_schedule(state.step)}
  new = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  if skip_nonfinite:  # A bad batch moves the step (and the data) on but leaves the weights.
    ok = jnp.isfinite(loss) & jnp.isfinite(metrics['grad_norm'])
    kept = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state.replace(step=new.step))
    new = kept.replace(opt_state=with_schedule_count(kept.opt_state, opt_state))
    metrics['skipped'] = (~ok).astype(jnp.float32)
  return new, metrics


def with_schedule_count(kept_opt_state, stepped_opt_state):
  """``kept_opt_state`` with the schedule's step counter of ``stepped_opt_state``.

  The schedule counts every step, skipped or not, like ``state.step`` (so the logged
  rate is the one used); Adam's own count, for its bias correction, counts only updates.
  """
  is_count = lambda x: isinstance(x, optax.ScaleByScheduleState)
  return jax.tree.map(lambda k, s: s if is_count(k) else k, kept_opt_state, stepped_opt_state,
                      is_leaf=is_count)


def eval_step(params, tokens_BL1, *, model):
  return loss_fn(params, tokens_BL1, None, model)


@dataclasses.dataclass
class Setup:
  """What a config turns into: mesh, model, optimizer, shardings and jitted functions."""
  cfg: Any
  model_cfg: ModelConfig
  mesh: Mesh
  model: Decoder           # Training model (dropout active).
  eval_model: Decoder      # Deterministic model for evaluation and sampling.
  tx: optax.GradientTransformation
  lr_schedule: optax.Schedule
  logical_specs: Any       # Params tree of logical PartitionSpecs.
  state_shardings: TrainState
  batch_sharding: NamedSharding

  @contextlib.contextmanager
  def rules_context(self):
    """Mesh and logical rules in force while tracing model code."""
    with jax.set_mesh(self.mesh), nn.logical_axis_rules(sharding.rules(self.cfg.mesh.rules)):
      yield

  def abstract_state(self) -> TrainState:
    """Shapes, dtypes and shardings of the train state, without allocating it."""
    # An abstract key: under a compile-only (AOT) mesh nothing may be placed on a device.
    shapes = jax.eval_shape(self._init_fn, jax.ShapeDtypeStruct((2,), jnp.uint32))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, self.state_shardings)

  def init_state(self, seed: int) -> TrainState:
    """Initialises every shard where it lives; nothing full-size is built on one device."""
    with self.rules_context():
      init = jax.jit(self._init_fn, out_shardings=self.state_shardings)
      return init(jax.random.PRNGKey(seed))

  def _init_fn(self, key) -> TrainState:
    init_key, dropout_key = jax.random.split(key)
    params = nn.unbox(self.eval_model.init(init_key, jnp.zeros((1, 2), jnp.int32))['params'])
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.tx.init(params), rng=dropout_key)

  def abstract_batch(self, batch_size: int | None = None) -> jax.ShapeDtypeStruct:
    t = self.cfg.train
    return jax.ShapeDtypeStruct((batch_size or t.batch_size, t.seq_len + 1), jnp.int32,
                                sharding=self.batch_sharding)

  def compile_train_step(self):
    """jit with shardings and donation, compiled ahead of time for the configured batch."""
    return self.lower_train_step().compile()

  def lower_train_step(self):
    """The train step lowered for the mesh's devices (``.as_text()``: its StableHLO)."""
    step = jax.jit(
        lambda state, tokens: train_step(state, tokens, model=self.model, tx=self.tx,
                                         lr_schedule=self.lr_schedule,
                                         micro_batches=self.cfg.train.micro_batches,
                                         skip_nonfinite=self.cfg.train.skip_nonfinite),
        in_shardings=(self.state_shardings, self.batch_sharding),
        out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
        donate_argnums=(0,))
    with self.rules_context():
      return step.lower(self.abstract_state(), self.abstract_batch())

  def jit_eval_step(self):
    fn = jax.jit(lambda params, tokens: eval_step(params, tokens, model=self.eval_model),
                 in_shardings=(self.state_shardings.params, self.batch_sharding),
                 out_shardings=sharding.replicated(self.mesh))

    def run(params, tokens):
      with self.rules_context():
        return fn(params, tokens)
    return run


def build(cfg, devices=None) -> Setup:
  """Turns a validated config into a Setup on the given (default: all) devices."""
  devices = jax.devices() if devices is None else devices
  shape = sharding.mesh_shape(cfg.mesh, len(devices))
  mesh = sharding.make_mesh(shape, devices, cfg.mesh.slices)
  model_cfg = ModelConfig.from_config(cfg.model)
  model, eval_model = Decoder(model_cfg, deterministic=False), Decoder(model_cfg, deterministic=True)
  tx, lr_schedule = optimizer.make(cfg.optim, cfg.train.steps)

  boxed = abstract_params(model_cfg)
  logical_specs = nn.get_partition_spec(boxed)
  param_sh = sharding.logical_to_sharding(logical_specs, mesh, cfg.mesh.rules)
  repl = sharding.replicated(mesh)
  abstract_opt = jax.eval_shape(tx.init, nn.unbox(boxed))
  opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, param_sh,
                                 transform_non_params=lambda _: repl)
  state_sh = TrainState(step=repl, params=param_sh, opt_state=opt_sh, rng=repl)
  return Setup(cfg=cfg, model_cfg=model_cfg, mesh=mesh, model=model, eval_model=eval_model,
               tx=tx, lr_schedule=lr_schedule, logical_specs=logical_specs,
               state_shardings=state_sh, batch_sharding=sharding.batch_sharding(mesh))
