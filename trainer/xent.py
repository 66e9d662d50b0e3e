"""Cross-entropy through the LM head a chunk of positions at a time (``model.loss_chunk``).

The [batch, length, vocab] float32 logits of a whole batch are the largest activation of
a GPT-2 step (50,304 x 4 bytes per token). Here the head and the loss run over chunks of
``loss_chunk`` positions (every row of the batch together, so the batch sharding stays),
and a custom VJP computes the gradients in the same pass: softmax minus one-hot, then
the input's and the head's gradient, accumulated over chunks. Nothing is recomputed in
the backward pass and no chunk's logits outlive it. The dots follow ``model.contract``:
compute-dtype operands, float32 accumulation, float32 logits and head gradient.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from trainer.model import ModelConfig, head_logits


def cross_entropy(x_BLW, head_VW, labels_BL, cfg: ModelConfig):
  """Mean next-token cross-entropy of head_logits(x, head) against labels, chunked."""
  return _chunked(cfg, x_BLW, head_VW, labels_BL)


def _split(x_BLW, labels_BL, chunk: int):
  """[n, B, chunk, ...] views over the length; a short last chunk is padded with label -1."""
  B, L = labels_BL.shape
  n = -(-L // chunk)
  pad = n * chunk - L
  x_BLW = jnp.pad(x_BLW, ((0, 0), (0, pad), (0, 0)))
  labels_BL = jnp.pad(labels_BL, ((0, 0), (0, pad)), constant_values=-1)
  x_NBCW = x_BLW.reshape(B, n, chunk, -1).swapaxes(0, 1)
  return x_NBCW, labels_BL.reshape(B, n, chunk).swapaxes(0, 1)


def _chunk_terms(cfg, head_VW, x_BCW, labels_BC):
  """(summed loss, float32 logits, valid mask) of one chunk."""
  logits_BCV = head_logits(cfg, x_BCW, head_VW)
  valid_BC = labels_BC >= 0
  loss_BC = optax.softmax_cross_entropy_with_integer_labels(logits_BCV, jnp.maximum(labels_BC, 0))
  return jnp.where(valid_BC, loss_BC, 0.0).sum(), logits_BCV, valid_BC


def _scan(cfg, x_BLW, head_VW, labels_BL, with_grads: bool):
  """Mean loss and, with_grads, its gradients for x and head (float32 accumulators)."""
  chunk = min(cfg.loss_chunk, labels_BL.shape[1])
  x_NBCW, labels_NBC = _split(x_BLW, labels_BL, chunk)
  count, dt = labels_BL.size, cfg.compute_dtype

  def body(carry, xs):
    loss, dhead_VW = carry
    x_BCW, labels_BC = xs
    chunk_loss, logits_BCV, valid_BC = _chunk_terms(cfg, head_VW, x_BCW, labels_BC)
    if not with_grads:
      return (loss + chunk_loss, dhead_VW), None
    onehot_BCV = jax.nn.one_hot(labels_BC, logits_BCV.shape[-1], dtype=jnp.float32)
    dlogits_BCV = (jax.nn.softmax(logits_BCV, axis=-1) - onehot_BCV) * (valid_BC[..., None] / count)
    dlogits_BCV = dlogits_BCV.astype(dt)
    dx_BCW = jnp.einsum('bcv,vw->bcw', dlogits_BCV, head_VW.astype(dt),
                        preferred_element_type=jnp.float32).astype(x_BCW.dtype)
    dhead_VW = dhead_VW + jnp.einsum('bcv,bcw->vw', dlogits_BCV, x_BCW.astype(dt),
                                     preferred_element_type=jnp.float32)
    return (loss + chunk_loss, dhead_VW), dx_BCW

  zeros = (jnp.zeros((), jnp.float32), jnp.zeros(head_VW.shape, jnp.float32))
  (loss, dhead_VW), dx_NBCW = jax.lax.scan(body, zeros, (x_NBCW, labels_NBC))
  if not with_grads:
    return loss / count
  B, L = labels_BL.shape
  dx_BLW = dx_NBCW.swapaxes(0, 1).reshape(B, -1, x_BLW.shape[-1])[:, :L]
  return loss / count, (dx_BLW, dhead_VW.astype(head_VW.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunked(cfg, x_BLW, head_VW, labels_BL):
  return _scan(cfg, x_BLW, head_VW, labels_BL, with_grads=False)


def _chunked_fwd(cfg, x_BLW, head_VW, labels_BL):
  return _scan(cfg, x_BLW, head_VW, labels_BL, with_grads=True)


def _chunked_bwd(cfg, grads, g):
  dx_BLW, dhead_VW = grads
  return (g * dx_BLW).astype(dx_BLW.dtype), g * dhead_VW, None


_chunked.defvjp(_chunked_fwd, _chunked_bwd)
