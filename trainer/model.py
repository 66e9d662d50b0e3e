"""One decoder-only transformer for GPT-2 and OPT; their differences are config fields.

Parameter names follow Hugging Face GPT-2 (wte, wpe, c_attn, c_proj, ln_f) so the
conversion in ``hf.py`` is one table. Shapes carry their axes in the name suffix:
B batch, L length, E embed, H heads, D head dim, M mlp, V vocab, T (q, k, v).
Only logical axis names appear here; ``sharding.py`` maps them to the mesh.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.ad_checkpoint import checkpoint_name

# model.scan_unroll=-1 unrolls the layer loop of a CPU model up to this deep (layers_per_trip).
AUTO_UNROLL_LAYERS = 8


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Typed view of ``config.model``; see trainer/config.py for each field."""
  family: str = 'gpt2'
  vocab_size: int = 257
  vocab_pad_multiple: int = 128
  max_len: int = 256
  pos_offset: int = 0
  embed_dim: int = 192
  proj_dim: int = 0
  num_layers: int = 4
  num_heads: int = 6
  mlp_dim: int = 768
  activation: str = 'gelu_tanh'
  pre_ln: bool = True
  final_ln: bool = True
  tie_embeddings: bool = True
  use_bias: bool = True
  dropout: float = 0.0
  embed_dropout: float = 0.0
  attn_dropout: float = 0.0
  ln_eps: float = 1e-5
  init_std: float = 0.02
  scale_residual_init: bool = True
  dtype: str = 'float32'
  scan_layers: bool = True
  scan_unroll: int = -1
  remat: str = 'none'
  attention: str = 'auto'
  loss_chunk: int = 0

  @classmethod
  def from_config(cls, model_cfg) -> 'ModelConfig':
    return cls(**{f.name: model_cfg[f.name] for f in dataclasses.fields(cls)})

  @property
  def padded_vocab(self) -> int:
    k = self.vocab_pad_multiple
    return -(-self.vocab_size // k) * k

  def layers_per_trip(self, platform: str | None) -> int:
    """nn.scan's ``unroll`` on ``platform``: ``scan_unroll``, with 0 read as every layer.

    -1 (the default) chooses by platform: every layer of a model of at most
    AUTO_UNROLL_LAYERS layers without remat on a CPU, where the loop's own cost per step
    shows and such compiles stay short; one layer per trip elsewhere, where the loop keeps
    deep compiles short and, on a CPU, is what lets remat save memory (docs/performance.md, 9).
    """
    unroll = self.scan_unroll
    if unroll == -1:
      shallow_cpu = (platform == 'cpu' and self.remat == 'none'
                     and self.num_layers <= AUTO_UNROLL_LAYERS)
      unroll = 0 if shallow_cpu else 1
    return unroll or self.num_layers

  def layers_in_loop(self, platform: str | None) -> bool:
    """Whether the blocks run in a loop on ``platform``: scanned, and not unrolled into every layer."""
    return self.scan_layers and self.layers_per_trip(platform) < self.num_layers

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads

  @property
  def word_dim(self) -> int:
    """Width of the token embedding (differs from embed_dim for OPT-350m)."""
    return self.proj_dim or self.embed_dim

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)


def _param(module, name, shape, axes, std):
  init = nn.initializers.normal(std) if std else nn.initializers.zeros_init()
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


def _ones(module, name, shape, axes):
  return module.param(name, nn.with_logical_partitioning(nn.initializers.ones_init(), axes),
                      shape, jnp.float32)


def contract(eqn: str, a, b, dtype, out_dtype=jnp.float32):
  """einsum of a and b cast to the compute dtype, accumulated in float32, cast to out_dtype.

  A custom VJP whose backward writes both gradients as einsums in the layouts XLA runs
  fast (weight gradients keep (batch, length) as two contracting dimensions and come out
  in the weight's own layout, with no transposed result). Left to jax.grad, the backward
  differs in two ways that cost:
  * in a narrower dtype the output is accumulated and often kept in float32, so the
    cotangent arrives in float32 and XLA runs both backward dots in float32; here it is
    cast to the compute dtype (each input's gradient still comes back in that input's own
    dtype: float32 master weights get float32 gradients);
  * in float32 too, XLA:CPU lowered the MLP's weight gradient to a plain Eigen dot fed by
    a transposed copy of the cotangent (docs/performance.md, section 7).
  """
  dtypes = tuple(jnp.dtype(t) for t in (dtype, out_dtype, a.dtype, b.dtype))
  return _contract(eqn, dtypes, a, b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _contract(eqn, dtypes, a, b):
  dtype, out_dtype = dtypes[:2]
  return jnp.einsum(eqn, a.astype(dtype), b.astype(dtype),
                    preferred_element_type=jnp.float32).astype(out_dtype)


def _contract_fwd(eqn, dtypes, a, b):
  a_c, b_c = a.astype(dtypes[0]), b.astype(dtypes[0])  # Residuals in the compute dtype.
  return jnp.einsum(eqn, a_c, b_c, preferred_element_type=jnp.float32).astype(dtypes[1]), (a_c, b_c)


def _contract_bwd(eqn, dtypes, res, g):
  (a_c, b_c), (dtype, _, a_dtype, b_dtype) = res, dtypes
  (sa, sb), out = eqn.split('->')[0].split(','), eqn.split('->')[1]
  g = g.astype(dtype)
  da = _einsum_to(sa, (out, g), (sb, b_c)).astype(a_dtype)
  db = _einsum_to(sb, (out, g), (sa, a_c)).astype(b_dtype)
  return da, db


_contract.defvjp(_contract_fwd, _contract_bwd)


def _einsum_to(target: str, x, y):
  """einsum of x = (spec, array) and y into `target`, accumulated in float32.

  Without batch dims the operands are ordered so the result needs no transpose. With batch
  dims (attention), an operand whose axes start with the batch axes goes first: in the
  other order XLA:CPU lowers the key and value gradients to a fallback dot that rejects
  bf16 x bf16 -> f32 ('Unsupported element type for DotThunk').
  """
  (sx, x), (sy, y) = x, y
  batch = ''.join(c for c in sx if c in sy and c in target)
  free = lambda s1, s2: ''.join(c for c in s1 + s2 if c in target)
  if batch:
    swap = sy.startswith(batch) and not sx.startswith(batch)
  else:
    swap = free(sx, sy) != target and free(sy, sx) == target
  if swap:
    (sx, x), (sy, y) = (sy, y), (sx, x)
  return jnp.einsum(f'{sx},{sy}->{target}', x, y, preferred_element_type=jnp.float32)


def dense(eqn: str, x, kernel, bias, dtype):
  """einsum in the compute dtype with float32 accumulation, plus an optional bias.

  The result is named 'dense' for remat=dots, which saves it in the compute dtype.
  """
  if bias is None:
    y = contract(eqn, x, kernel, dtype, dtype)
  else:
    y = (contract(eqn, x, kernel, dtype) + bias).astype(dtype)
  return checkpoint_name(y, 'dense')


class LayerNorm(nn.Module):
  """Layer norm computed in float32 (GPT-2 and OPT: affine, eps 1e-5)."""
  cfg: ModelConfig
  width: int = 0

  @nn.compact
  def __call__(self, x):
    width = self.width or self.cfg.embed_dim
    scale = _ones(self, 'scale', (width,), ('embed',))
    bias = _param(self, 'bias', (width,), ('embed',), 0.0)
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    y = (xf - mean) * jax.lax.rsqrt(var + self.cfg.ln_eps) * scale + bias
    return y.astype(x.dtype)


def _residual_std(cfg: ModelConfig) -> float:
  if cfg.scale_residual_init:
    return cfg.init_std / math.sqrt(2 * cfg.num_layers)
  return cfg.init_std


class Attention(nn.Module):
  cfg: ModelConfig
  deterministic: bool

  @nn.compact
  def __call__(self, x_BLE, cache=None, positions_BL=None):
    """With ``cache`` (this layer's KV cache), also returns the cache with x's keys written."""
    cfg, dt = self.cfg, self.cfg.compute_dtype
    E, H, D = cfg.embed_dim, cfg.num_heads, cfg.head_dim
    w_qkv = _param(self, 'c_attn_kernel', (E, 3, H, D), ('embed', None, 'heads', 'kv'), cfg.init_std)
    b_qkv = _param(self, 'c_attn_bias', (3, H, D), (None, 'heads', 'kv'), 0.0) if cfg.use_bias else None
    w_out = _param(self, 'c_proj_kernel', (H, D, E), ('heads', 'kv', 'embed'), _residual_std(cfg))
    b_out = _param(self, 'c_proj_bias', (E,), ('embed',), 0.0) if cfg.use_bias else None

    qkv_BLTHD = dense('ble,ethd->blthd', x_BLE, w_qkv, b_qkv, dt)
    qkv_BLTHD = nn.with_logical_constraint(
        qkv_BLTHD, ('act_batch', 'act_length', None, 'act_heads', 'act_kv'))
    q_BLHD, k_BLHD, v_BLHD = (qkv_BLTHD[:, :, i] for i in range(3))
    scale = 1.0 / math.sqrt(D)
    if cache is not None:
      o_BLHD, cache = _attend_cached(q_BLHD, k_BLHD, v_BLHD, cache, positions_BL, scale)
      o_BLHD = nn.with_logical_constraint(
          o_BLHD, ('act_batch', 'act_length', 'act_heads', 'act_kv'))
      return dense('blhd,hde->ble', o_BLHD, w_out, b_out, dt), cache
    dropout = not self.deterministic and cfg.attn_dropout > 0.0
    if not dropout and _use_splash(cfg.attention, q_BLHD.shape[1]):
      o_BLHD = splash_attention(q_BLHD, k_BLHD, v_BLHD, scale)
    elif cfg.attention == 'cudnn' and not dropout:  # config.validate: NVIDIA GPUs, bfloat16.
      o_BLHD = jax.nn.dot_product_attention(q_BLHD, k_BLHD, v_BLHD, scale=scale, is_causal=True,
                                            implementation='cudnn')
    else:  # contract()'s backward for the score and value dots too (section 11 of performance.md).
      o_BLHD = self._attend(q_BLHD, k_BLHD, v_BLHD, scale, dropout)
    o_BLHD = nn.with_logical_constraint(o_BLHD, ('act_batch', 'act_length', 'act_heads', 'act_kv'))
    return dense('blhd,hde->ble', o_BLHD, w_out, b_out, dt)

  def _attend(self, q_BLHD, k_BLHD, v_BLHD, scale, dropout: bool):
    """Explicit causal softmax attention (float32 softmax), optionally with GPT-2's attn_pdrop."""
    L, dt = q_BLHD.shape[1], self.cfg.compute_dtype
    s_BHLL = contract('bqhd,bkhd->bhqk', q_BLHD, k_BLHD, dt) * scale
    causal = jnp.tril(jnp.ones((L, L), bool))
    s_BHLL = jnp.where(causal, s_BHLL, jnp.finfo(jnp.float32).min)
    p_BHLL = jax.nn.softmax(s_BHLL, axis=-1)
    if dropout:
      p_BHLL = nn.Dropout(self.cfg.attn_dropout)(p_BHLL, deterministic=False)
    return contract('bhqk,bkhd->bqhd', p_BHLL.astype(v_BLHD.dtype), v_BLHD, dt, v_BLHD.dtype)


SPLASH_BLOCKS = (512, 256, 128)  # Tile sizes tried, largest first.


def splash_block(length: int) -> int | None:
  """The largest splash tile that divides ``length`` (None: none does; XLA's attention then)."""
  return next((b for b in SPLASH_BLOCKS if length % b == 0), None)


def _mesh_platform() -> str | None:
  """The platform of the mesh traced under (under `trainer compile`, the target's); None: no mesh."""
  device = jax.sharding.get_abstract_mesh().abstract_device
  return device and device.platform


def _traced_platform() -> str:
  """The platform this trace is for: the mesh's if there is one, else this process's backend."""
  return _mesh_platform() or jax.default_backend()


def _use_splash(choice: str, length: int) -> bool:
  """Whether causal attention over ``length`` runs in the splash kernel (``model.attention``)."""
  if choice == 'xla' or splash_block(length) is None:
    return False
  # 'auto': on TPU, under a mesh (the train and eval steps set theirs), whose partitioning
  # the kernel's shard_map follows; elsewhere XLA partitions its own attention.
  return choice == 'splash' or _mesh_platform() == 'tpu'


def splash_attention(q_BLHD, k_BLHD, v_BLHD, scale: float):
  """Causal attention through JAX's Pallas TPU splash (flash) kernel, one call per shard.

  The [length, length] scores never exist whole: the kernel walks blocks of queries and
  keys with an online softmax (float32 statistics) and skips the blocks above the diagonal;
  its backward recomputes them. The kernel sees one device's rows and heads, so it runs
  under shard_map with the activations' own partitioning (batch over data and fsdp, heads
  over tensor; the length is never split). Off TPU, Pallas's interpreter runs it.
  """
  from jax.experimental.pallas.ops.tpu.splash_attention import (
      splash_attention_kernel as kernels, splash_attention_mask as masks)
  mesh, (_, L, heads, _) = jax.sharding.get_abstract_mesh(), q_BLHD.shape
  if not mesh.empty:
    spec = nn.logical_to_mesh_axes(('act_batch', 'act_length', 'act_heads', 'act_kv'))
    assert spec[1] is None and spec[3] is None, f'splash attention needs whole rows: {spec}'
    heads_axes = spec[2] if isinstance(spec[2], tuple) else (spec[2],) if spec[2] else ()
    heads //= math.prod(mesh.shape[a] for a in heads_axes)
  block = splash_block(L)
  kernel = kernels.make_splash_mha(
      masks.MultiHeadMask([masks.CausalMask((L, L))] * heads), head_shards=1, q_seq_shards=1,
      block_sizes=kernels.BlockSizes(block, block, block_q_dkv=block, block_kv_dkv=block,
                                     block_q_dq=block, block_kv_dq=block),
      interpret=_traced_platform() != 'tpu')

  def local(q_BLHD, k_BLHD, v_BLHD):  # The kernel takes [heads, length, head_dim] per row.
    to_HLD = lambda x: x.transpose(0, 2, 1, 3)
    o_BHLD = jax.vmap(kernel)(to_HLD(q_BLHD * jnp.asarray(scale, q_BLHD.dtype)),
                              to_HLD(k_BLHD), to_HLD(v_BLHD))
    return o_BHLD.transpose(0, 2, 1, 3)

  if mesh.empty:
    return local(q_BLHD, k_BLHD, v_BLHD)
  return jax.shard_map(local, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec,
                       check_vma=False)(q_BLHD, k_BLHD, v_BLHD)


def _attend_cached(q_BLHD, k_BLHD, v_BLHD, cache, positions_BL, scale):
  """Writes this call's keys and values into the cache at their positions, attends to it.

  The cache holds ``S`` slots per row; query i of row b sees slots <= positions_BL[b, i].
  One new token per row (decoding) goes to each row's own slot; several (prefill) go to
  consecutive slots from row 0's first position, the same for every row.
  """
  k_BSHD, v_BSHD = cache['k'], cache['v']
  S, L = k_BSHD.shape[1], q_BLHD.shape[1]
  slots_S = jnp.arange(S)
  if L == 1:  # A select, not a scatter: stays elementwise under any batch sharding.
    hit_BS11 = (slots_S[None, :] == positions_BL)[:, :, None, None]
    k_BSHD = jnp.where(hit_BS11, k_BLHD.astype(k_BSHD.dtype), k_BSHD)
    v_BSHD = jnp.where(hit_BS11, v_BLHD.astype(v_BSHD.dtype), v_BSHD)
  else:
    start = (0, positions_BL[0, 0], 0, 0)
    k_BSHD = jax.lax.dynamic_update_slice(k_BSHD, k_BLHD.astype(k_BSHD.dtype), start)
    v_BSHD = jax.lax.dynamic_update_slice(v_BSHD, v_BLHD.astype(v_BSHD.dtype), start)
  k_BSHD = nn.with_logical_constraint(k_BSHD, ('act_batch', None, 'act_heads', 'act_kv'))
  v_BSHD = nn.with_logical_constraint(v_BSHD, ('act_batch', None, 'act_heads', 'act_kv'))
  mask_B1LS = (slots_S[None, None, :] <= positions_BL[:, :, None])[:, None]
  o_BLHD = jax.nn.dot_product_attention(q_BLHD, k_BSHD.astype(q_BLHD.dtype),
                                        v_BSHD.astype(q_BLHD.dtype), mask=mask_B1LS, scale=scale)
  return o_BLHD, {'k': k_BSHD, 'v': v_BSHD}


class Mlp(nn.Module):
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BLE):
    cfg, dt = self.cfg, self.cfg.compute_dtype
    E, M = cfg.embed_dim, cfg.mlp_dim
    w_fc = _param(self, 'c_fc_kernel', (E, M), ('embed', 'mlp'), cfg.init_std)
    b_fc = _param(self, 'c_fc_bias', (M,), ('mlp',), 0.0) if cfg.use_bias else None
    w_out = _param(self, 'c_proj_kernel', (M, E), ('mlp', 'embed'), _residual_std(cfg))
    b_out = _param(self, 'c_proj_bias', (E,), ('embed',), 0.0) if cfg.use_bias else None
    h_BLM = dense('ble,em->blm', x_BLE, w_fc, b_fc, dt)
    if cfg.activation == 'gelu_tanh':
      h_BLM = jax.nn.gelu(h_BLM, approximate=True)
    else:
      h_BLM = jax.nn.relu(h_BLM)
    h_BLM = nn.with_logical_constraint(h_BLM, ('act_batch', 'act_length', 'act_mlp'))
    return dense('blm,me->ble', h_BLM, w_out, b_out, dt)


class Block(nn.Module):
  """Transformer block; pre-LN (GPT-2, most OPT) or post-LN (OPT-350m)."""
  cfg: ModelConfig
  deterministic: bool

  @nn.compact
  def __call__(self, x_BLE, cache=None, positions_BL=None):
    cfg = self.cfg
    drop = nn.Dropout(cfg.dropout, deterministic=self.deterministic)
    ln_1, ln_2 = LayerNorm(cfg, name='ln_1'), LayerNorm(cfg, name='ln_2')
    attn, mlp = Attention(cfg, self.deterministic, name='attn'), Mlp(cfg, name='mlp')
    if cache is not None:  # Decoding: the attention also returns the updated KV cache.
      attend = attn
      def attn(h):  # noqa: E306
        nonlocal cache
        out, cache = attend(h, cache, positions_BL)
        return out
    if cfg.pre_ln:
      x_BLE = x_BLE + drop(attn(ln_1(x_BLE)))
      x_BLE = x_BLE + drop(mlp(ln_2(x_BLE)))
    else:
      x_BLE = ln_1(x_BLE + drop(attn(x_BLE)))
      x_BLE = ln_2(x_BLE + drop(mlp(x_BLE)))
    x_BLE = nn.with_logical_constraint(x_BLE, ('act_batch', 'act_length', 'act_embed'))
    return x_BLE, cache


_REMAT_POLICIES = {
    'full': None,  # Save nothing; recompute the whole block in the backward pass.
    # Save the dense layers' outputs (the matmuls without batch dimensions: projections and
    # MLP), recompute attention and the elementwise ops. Named rather than jax's
    # dots_with_no_batch_dims_saveable, which saves the same matmuls as their float32
    # accumulators: in bfloat16 that is twice the bytes (docs/performance.md, section 10).
    'dots': jax.checkpoint_policies.save_only_these_names('dense'),
}


class Decoder(nn.Module):
  """Token ids [B, L] to logits [B, L, padded vocab]; padded columns are -inf-like.

  With ``cache`` (from ``init_cache``) and ``positions_BL``, returns (logits, new cache):
  the tokens' keys and values are written at their positions, for decoding. With
  ``hidden``, returns the LM head's input and weight instead of logits (``xent.py``).
  """
  cfg: ModelConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, tokens_BL, positions_BL=None, cache=None, hidden: bool = False):
    cfg, dt = self.cfg, self.cfg.compute_dtype
    V, E, W = cfg.padded_vocab, cfg.embed_dim, cfg.word_dim
    wte = _param(self, 'wte', (V, W), ('vocab', 'embed'), cfg.init_std)
    wpe = _param(self, 'wpe', (cfg.max_len + cfg.pos_offset, E), (None, 'embed'), cfg.init_std)
    if positions_BL is None:
      positions_BL = jnp.arange(tokens_BL.shape[1])[None, :]
    x_BLE = jnp.take(wte, tokens_BL, axis=0).astype(dt)
    if cfg.proj_dim:
      w_in = _param(self, 'project_in', (W, E), (None, 'embed'), cfg.init_std)
      x_BLE = dense('blw,we->ble', x_BLE, w_in, None, dt)
    x_BLE = x_BLE + jnp.take(wpe, positions_BL + cfg.pos_offset, axis=0).astype(dt)
    x_BLE = nn.Dropout(cfg.embed_dropout, deterministic=self.deterministic)(x_BLE)
    x_BLE = nn.with_logical_constraint(x_BLE, ('act_batch', 'act_length', 'act_embed'))

    block, platform = Block, _traced_platform()
    if cfg.remat != 'none':
      # Inside a loop XLA cannot merge the recomputed forward with the original one; with
      # the layers in line (or the loop fully unrolled) it could, undoing the remat.
      block = nn.remat(Block, policy=_REMAT_POLICIES[cfg.remat],
                       prevent_cse=not cfg.layers_in_loop(platform))
    if cfg.scan_layers:
      stack = nn.scan(block, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
                      in_axes=(0, nn.broadcast), length=cfg.num_layers,
                      unroll=cfg.layers_per_trip(platform),
                      metadata_params={nn.PARTITION_NAME: 'layers'})
      x_BLE, new_cache = stack(cfg, self.deterministic, name='h')(x_BLE, cache, positions_BL)
    else:
      new_cache = None if cache is None else []
      for i in range(cfg.num_layers):
        layer_cache = None if cache is None else jax.tree.map(lambda c, i=i: c[i], cache)
        x_BLE, layer_cache = block(cfg, self.deterministic, name=f'h_{i}')(
            x_BLE, layer_cache, positions_BL)
        if cache is not None:
          new_cache.append(layer_cache)
      if cache is not None:
        new_cache = jax.tree.map(lambda *xs: jnp.stack(xs), *new_cache)

    if cfg.final_ln:
      x_BLE = LayerNorm(cfg, name='ln_f')(x_BLE)
    if cfg.proj_dim:
      w_out = _param(self, 'project_out', (E, W), ('embed', None), cfg.init_std)
      x_BLE = dense('ble,ew->blw', x_BLE, w_out, None, dt)
    if cfg.tie_embeddings:
      head_VW = wte
    else:
      head_VW = _param(self, 'lm_head', (V, W), ('vocab', 'embed'), cfg.init_std)
    if hidden:
      return x_BLE, head_VW
    logits_BLV = head_logits(cfg, x_BLE, head_VW)
    if cache is not None:
      return logits_BLV, new_cache
    return logits_BLV


def head_logits(cfg: ModelConfig, x_BLW, head_VW):
  """The LM head: float32 logits [B, L, padded vocab]; padded columns are -inf-like."""
  logits_BLV = contract('blw,vw->blv', x_BLW, head_VW, cfg.compute_dtype)
  logits_BLV = nn.with_logical_constraint(logits_BLV, ('act_batch', 'act_length', 'act_vocab'))
  if cfg.padded_vocab != cfg.vocab_size:  # Padded rows never win a softmax or an argmax.
    logits_BLV = jnp.where(jnp.arange(cfg.padded_vocab) < cfg.vocab_size, logits_BLV, -1e30)
  return logits_BLV


CACHE_AXES = ('layers', 'act_batch', None, 'act_heads', 'act_kv')  # Logical axes of cache['k'].


def init_cache(cfg: ModelConfig, batch: int, length: int | None = None) -> dict:
  """An empty KV cache: {'k', 'v'} of [layers, batch, length (default max_len), heads, head dim]."""
  shape = (cfg.num_layers, batch, length or cfg.max_len, cfg.num_heads, cfg.head_dim)
  return {'k': jnp.zeros(shape, cfg.compute_dtype), 'v': jnp.zeros(shape, cfg.compute_dtype)}


def abstract_params(cfg: ModelConfig):
  """Parameter shapes with their logical axes (flax boxes), without allocating anything."""
  return jax.eval_shape(lambda k: Decoder(cfg).init(k, jnp.zeros((1, 2), jnp.int32))['params'],
                        jax.random.PRNGKey(0))


def param_count(cfg: ModelConfig) -> int:
  """Parameters as Hugging Face counts them: true vocab, tied weights once."""
  E, M, L, W, V = cfg.embed_dim, cfg.mlp_dim, cfg.num_layers, cfg.word_dim, cfg.vocab_size
  bias = int(cfg.use_bias)
  attn = 4 * E * E + bias * 4 * E
  mlp = 2 * E * M + bias * (M + E)
  block = attn + mlp + 2 * 2 * E
  total = V * W + (cfg.max_len + cfg.pos_offset) * E + L * block
  total += 2 * E if cfg.final_ln else 0
  total += 2 * W * E if cfg.proj_dim else 0
  total += 0 if cfg.tie_embeddings else V * W
  return total


def matmul_params(cfg: ModelConfig) -> int:
  """Weights that take part in a matmul per token: blocks, projections and the LM head."""
  E, M, L, W, V = cfg.embed_dim, cfg.mlp_dim, cfg.num_layers, cfg.word_dim, cfg.vocab_size
  proj = 2 * W * E if cfg.proj_dim else 0
  return L * (4 * E * E + 2 * E * M) + proj + V * W


def flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
  """Training FLOPs per token, PaLM convention (Chowdhery et al. 2022, App. B).

  6 x matmul weights (forward 2, backward 4) plus 12 x layers x embed x seq_len for
  the attention scores and weighted sum, counted without the causal saving.
  Embedding lookups, biases, norms and softmax are left out.
  """
  return 6 * matmul_params(cfg) + 12 * cfg.num_layers * cfg.embed_dim * seq_len


def hardware_flops_per_token(cfg: ModelConfig, seq_len: int, remat: str | None = None) -> int:
  """FLOPs the chips execute per token: model FLOPs plus forward work that remat repeats.

  Full remat recomputes each block's forward pass in the backward pass: 2 x block matmul
  weights plus 4 x layers x embed x seq_len of attention (OPT's 147 TFLOP/s per GPU counts
  these; about 8ND rather than 6ND). 'dots' keeps the weight matmuls' outputs and repeats
  only the attention dots (they have batch dimensions): 4 x layers x embed x seq_len.
  """
  remat = cfg.remat if remat is None else remat
  E, M, L = cfg.embed_dim, cfg.mlp_dim, cfg.num_layers
  attention = 4 * L * E * seq_len
  extra = {'none': 0, 'dots': attention,
           'full': 2 * L * (4 * E * E + 2 * E * M) + attention}[remat]
  return flops_per_token(cfg, seq_len) + extra
