"""The optimizer update alone over the gpt2-124M parameters, variants interleaved.

    python benchmarks/adamw.py                 # gpt2 preset, 8 rounds
    python benchmarks/adamw.py --rounds 3

The update is what the train step runs after the gradients: clip_by_global_norm(1.0) then
AdamW with the weight-decay mask (trainer/optimizer.py), then apply_updates. Variants:
the first moment in float32 (as shipped) or bfloat16 (`optim.mu_dtype`), each jitted with
the params and optimizer state donated (as the train step does) or not. Each round runs
every variant once in turn; the median per variant is printed with GB of state.
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import linen as nn  # noqa: E402

from trainer import config, model, optimizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_variant(cfg, mu_dtype: str, donate: bool):
  config.set_value(cfg, 'optim.mu_dtype', mu_dtype)
  tx, _ = optimizer.make(cfg.optim, cfg.train.steps)

  def update(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
  return tx, jax.jit(update, donate_argnums=(0, 1) if donate else ())


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', default=f'{ROOT}/configs/gpt2.py:gpt2')
  p.add_argument('--rounds', type=int, default=8)
  a = p.parse_args()
  cfg = config.load(a.config)
  shapes = nn.unbox(model.abstract_params(model.ModelConfig.from_config(cfg.model)))
  keys = iter(jax.random.split(jax.random.PRNGKey(0), 1000))
  init = lambda s: 0.02 * jax.random.normal(next(keys), s.shape, jnp.float32)  # noqa: E731
  params0 = jax.tree.map(init, shapes)
  grads = jax.tree.map(lambda s: 1e-3 * init(s), shapes)
  n = sum(x.size for x in jax.tree.leaves(params0))
  variants, state, times = {}, {}, {}
  for mu in ('float32', 'bfloat16'):
    for donate in (True, False):
      name = f'mu {mu}, {"donated" if donate else "not donated"}'
      tx, fn = make_variant(cfg, mu, donate)
      params = jax.tree.map(jnp.copy, params0)
      opt_state = tx.init(params)
      params, opt_state = fn(params, opt_state, grads)  # Compile and warm up.
      jax.block_until_ready(params)
      variants[name], state[name], times[name] = fn, (params, opt_state), []
      gb = sum(x.nbytes for x in jax.tree.leaves((params, opt_state))) / 1e9
      print(f'{name}: params + optimizer state {gb:.2f} GB', file=sys.stderr)
  for r in range(a.rounds):
    for name, fn in variants.items():
      start = time.perf_counter()
      state[name] = fn(*state[name], grads)
      jax.block_until_ready(state[name])
      times[name].append(time.perf_counter() - start)
  print(f'{n / 1e6:.1f}M float32 parameters, {a.rounds} rounds, median ms per update:')
  for name, ts in times.items():
    print(f'  {name}: {1e3 * statistics.median(ts):.0f} ms (min {1e3 * min(ts):.0f})')


if __name__ == '__main__':
  main()
