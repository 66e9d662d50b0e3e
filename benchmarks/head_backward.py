"""The LM head's backward at the gpt2-124M shape, float32: which weight-gradient layout is fast.

    python benchmarks/head_backward.py

The profile of the 124M float32 train step (benchmarks/profile.py --dtype float32) puts
the LM head's two backward dots ([4, 256, 50,304] logits gradient against the [50,304,
768] embedding and the [4, 256, 768] hidden state) at the top. This times, on this CPU,
each dot alone in the layouts XLA can be asked for, then the head plus cross-entropy
forward and backward as jax.grad writes it against a custom VJP that computes the weight
gradient transposed (x^T g, then a transpose), and checks both give the same gradients.
With --step it also times the whole compiled 124M float32 train step (benchmarks/compare.py's
setup: no dropout, remat none, AdamW) with each head, interleaved A B A B.

    python benchmarks/head_backward.py --step
"""
import os
import sys
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks.machine import cpu_name  # noqa: E402

B, L, E, V, VOCAB = 4, 256, 768, 50304, 50257


def best(f, *args, repeats=4) -> float:
  jax.block_until_ready(f(*args))
  times = []
  for _ in range(repeats):
    started = time.perf_counter()
    jax.block_until_ready(f(*args))
    times.append(time.perf_counter() - started)
  return min(times)


@jax.custom_vjp
def head_transposed(x, w):
  return jnp.einsum('blw,vw->blv', x, w)


def _fwd(x, w):
  return head_transposed(x, w), (x, w)


def _bwd(res, g):
  x, w = res
  return jnp.einsum('blv,vw->blw', g, w), jnp.einsum('blw,blv->wv', x, g).T


head_transposed.defvjp(_fwd, _bwd)


def step_ab(rounds: int = 6):
  """The compiled 124M float32 train step with model.head_logits as shipped (A) and with the
  transposed weight gradient (B), interleaved; median seconds per step of each."""
  import statistics
  import numpy as np
  from benchmarks import compare
  from trainer import model, train
  cfg = compare.build_config('gpt2-124m', 'float32', 6e-4)
  params0 = jax.device_get(train.build(cfg, devices=jax.devices()[:1]).init_state(0).params)
  shipped = compare.Ours(cfg, params0)
  head_logits = model.head_logits

  def transposed_head(cfg_, x, w):
    logits = head_transposed(x.astype(jnp.float32), w.astype(jnp.float32))
    return jnp.where(jnp.arange(cfg_.padded_vocab) < cfg_.vocab_size, logits, -1e30)
  model.head_logits = transposed_head
  try:
    other = compare.Ours(cfg, params0)
  finally:
    model.head_logits = head_logits
  tokens = np.random.default_rng(0).integers(0, VOCAB, (4, 257)).astype(np.int32)
  times = {'shipped': [], 'transposed': []}
  for _ in range(rounds + 1):  # The first round warms up.
    for name, ours in (('shipped', shipped), ('transposed', other)):
      started = time.perf_counter()
      ours.step(tokens)
      times[name].append(time.perf_counter() - started)
  print('\n| whole train step, 124M float32 | median seconds |\n|---|---|')
  for name, t in times.items():
    print(f'| head {name} | {statistics.median(t[1:]):.2f} |')


def main():
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  g = jax.random.normal(keys[0], (B, L, V))
  w = jax.random.normal(keys[1], (V, E)) * 0.02
  x = jax.random.normal(keys[2], (B, L, E))
  y = jax.random.randint(keys[3], (B, L), 0, VOCAB)
  flop = 2 * B * L * E * V
  print(f'{cpu_name()}; jax {jax.__version__}; [{B}, {L}] tokens, width {E}, vocab {V}\n')
  print('| dot | layout | seconds | GFLOP/s |\n|---|---|---|---|')
  dots = [('logits (forward)', 'blw,vw->blv', lambda g, w, x: jnp.einsum('blw,vw->blv', x, w)),
          ('hidden gradient', 'blv,vw->blw', lambda g, w, x: jnp.einsum('blv,vw->blw', g, w)),
          ('weight gradient', 'blv,blw->vw (as jax.grad asks)',
           lambda g, w, x: jnp.einsum('blv,blw->vw', g, x)),
          ('weight gradient', 'blw,blv->wv, then transposed',
           lambda g, w, x: jnp.einsum('blw,blv->wv', x, g).T)]
  for name, layout, f in dots:
    s = best(jax.jit(f), g, w, x)
    print(f'| {name} | `{layout}` | {s:.3f} | {flop / s / 1e9:.0f} |')

  def loss(head):
    def f(x, w):
      logits = jnp.where(jnp.arange(V) < VOCAB, head(x, w), -1e30)
      picked = jnp.take_along_axis(logits, y[..., None], -1)[..., 0]
      return jnp.mean(jax.nn.logsumexp(logits, -1) - picked)
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))
  plain = loss(lambda x, w: jnp.einsum('blw,vw->blv', x, w))
  transposed = loss(head_transposed)
  print('\n| head + cross-entropy, forward and backward | seconds |\n|---|---|')
  for name, f in (('as jax.grad writes it', plain), ('weight gradient transposed', transposed)):
    print(f'| {name} | {best(f, x, w):.3f} |')
  (_, a), (_, b) = plain(x, w), transposed(x, w)
  print('\nrelative difference of the gradients (x, w): ' + ', '.join(
      f'{float(jnp.max(jnp.abs(p - q)) / jnp.max(jnp.abs(p))):.1e}' for p, q in zip(a, b)))


if __name__ == '__main__':
  main()
  if '--step' in sys.argv:
    step_ab()
