"""Sampling from a trained model (full recomputation per token; a KV cache is on the roadmap)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from trainer import sharding


def sample(setup, params, prompt: list[int], num_tokens: int, *, temperature: float = 0.8,
           seed: int = 0) -> list[int]:
  """Plain temperature sampling; returns prompt + new tokens (one sequence)."""
  max_len = setup.model_cfg.max_len
  num_tokens = max(0, min(num_tokens, max_len - len(prompt)))
  rows = setup.mesh.shape['data'] * setup.mesh.shape['fsdp']  # One row per batch shard.
  buf = np.zeros((rows, max_len), np.int32)
  buf[:, :len(prompt)] = prompt
  vocab = setup.model_cfg.vocab_size

  @functools.partial(jax.jit, out_shardings=sharding.replicated(setup.mesh))
  def run(params, tokens, key):
    def body(i, carry):
      tokens, key = carry
      pos = len(prompt) + i
      logits = setup.eval_model.apply({'params': params}, tokens)
      logits = jax.lax.dynamic_index_in_dim(logits, pos - 1, axis=1, keepdims=False)[:, :vocab]
      key, sub = jax.random.split(key)
      nxt = jax.random.categorical(sub, logits / temperature, axis=-1).astype(jnp.int32)
      return jax.lax.dynamic_update_index_in_dim(tokens, nxt, pos, axis=1), key
    return jax.lax.fori_loop(0, num_tokens, body, (tokens, key))[0]

  with setup.rules_context():
    tokens = jax.make_array_from_callback(buf.shape, setup.batch_sharding, lambda idx: buf[idx])
    out = run(params, tokens, jax.random.PRNGKey(seed))
  return np.asarray(out.addressable_data(0))[0, :len(prompt) + num_tokens].tolist()
