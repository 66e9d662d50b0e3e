"""AdamW with warmup and decay, global-norm clipping and a weight-decay mask."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

_EMBEDDINGS = ('wte', 'wpe', 'lm_head')
_MATRICES = ('project_in', 'project_out')


def schedule(optim_cfg, steps: int) -> optax.Schedule:
  """Linear warmup to the peak (step 1 already moves), then decay to min_lr_ratio x peak.

  Its argument is the number of steps taken before the update, skipped ones included.
  """
  peak, warmup = optim_cfg.lr, min(optim_cfg.warmup_steps, steps)
  end = peak * optim_cfg.min_lr_ratio
  decay_steps = max(steps - warmup, 1)
  boundaries = [warmup]
  if optim_cfg.schedule == 'cosine':
    decay = [optax.cosine_decay_schedule(peak, decay_steps, alpha=optim_cfg.min_lr_ratio)]
  elif optim_cfg.schedule == 'linear':
    decay = [optax.linear_schedule(peak, end, decay_steps)]
  elif optim_cfg.schedule == 'wsd':
    # Stable at the peak, then a linear decay over the last decay_steps steps: a longer run
    # keeps the same rates until its own decay starts, so it can extend a shorter one.
    length = min(optim_cfg.decay_steps or max(steps // 5, 1), steps - warmup)
    boundaries.append(steps - length)
    decay = [optax.constant_schedule(peak), optax.linear_schedule(peak, end, max(length, 1))]
  else:
    decay = [optax.constant_schedule(peak)]
  warm = optax.linear_schedule(peak / max(warmup, 1), peak, max(warmup - 1, 0))
  return optax.join_schedules([warm, *decay], boundaries)


def decay_mask(params, decay_embeddings: bool):
  """True for weights that get weight decay: matrices, never biases or layer norms."""
  def wants_decay(path, _):
    name = path[-1].key
    if name in _EMBEDDINGS:
      return decay_embeddings
    return name.endswith('_kernel') or name in _MATRICES
  return jax.tree_util.tree_map_with_path(wants_decay, params)


def make(optim_cfg, steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  lr = schedule(optim_cfg, steps)
  adamw = optax.adamw(lr, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                      weight_decay=optim_cfg.weight_decay, mu_dtype=jnp.dtype(optim_cfg.mu_dtype),
                      mask=lambda p: decay_mask(p, optim_cfg.decay_embeddings))
  if optim_cfg.clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(optim_cfg.clip_norm), adamw), lr
  return adamw, lr
