"""Greedy decoding speed, gpt2-124M shape, on this machine: KV cache vs full recomputation vs
transformers' generate (its own KV cache), batch 1 and 8, interleaved in one run.

    python benchmarks/generate.py                 # prompt 16, 16 new tokens; Markdown table
    python benchmarks/generate.py --new 32 --repeats 3

Weights are random (speed does not depend on them). "recompute" runs the whole padded
sequence (prompt + new tokens) through the model for every token, as trainer/generate.py did
before the cache; its buffer is only prompt + new long, not the 1,024-token context, so it is
the most favourable recomputation. Each figure: new tokens x batch / seconds, after a warm-up
(compile) call; medians over the repeats.
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from trainer import config, generate, hf, train  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def recompute_fn(setup, total: int):
  """Greedy decoding by full recomputation on a fixed [batch, total] buffer (one compile)."""
  @jax.jit
  def step(params, buf, pos):
    logits = setup.eval_model.apply({'params': params}, buf)
    nxt = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, pos - 1, 1, False), -1)
    return jax.lax.dynamic_update_index_in_dim(buf, nxt.astype(buf.dtype)[:, None], pos, 1)

  def run(params, prompts, new):
    buf = np.zeros((len(prompts), total), np.int32)
    buf[:, :prompts.shape[1]] = prompts
    buf = jnp.asarray(buf)
    for pos in range(prompts.shape[1], prompts.shape[1] + new):
      buf = step(params, buf, pos)
    return np.asarray(buf)
  return run


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--prompt', type=int, default=16)
  p.add_argument('--new', type=int, default=16)
  p.add_argument('--repeats', type=int, default=2)
  p.add_argument('--batches', default='1,8')
  args = p.parse_args()
  import torch
  import transformers
  torch.set_num_threads(os.cpu_count() or 1)
  cfg = config.load(os.path.join(ROOT, 'configs', 'gpt2.py') + ':gpt2')
  cfg.mesh.fsdp, cfg.mesh.rules = 1, 'dp'
  setup = train.build(cfg, jax.devices()[:1])
  params = setup.init_state(0).params
  hf_model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{
      k: v for k, v in hf.hf_config(setup.model_cfg).items() if k not in ('architectures',)}))
  hf_model.load_state_dict({k: torch.tensor(v) for k, v in
                            hf.params_to_hf(params, setup.model_cfg).items()}, strict=False)
  hf_model.tie_weights()
  hf_model.eval()
  greedy = generate.Sampling(max_new_tokens=args.new, temperature=0.0)
  rows = []
  for batch in map(int, args.batches.split(',')):
    prompts = np.random.RandomState(batch).randint(0, 50257, (batch, args.prompt))
    cached = generate.Generator(setup, batch)
    recompute = recompute_fn(setup, args.prompt + args.new)
    ways = {
        'trainer, KV cache': lambda: cached.generate(params, prompts.tolist(), greedy),
        'trainer, recompute': lambda: recompute(params, prompts, args.new),
        'transformers generate': lambda: hf_model.generate(
            torch.tensor(prompts), max_new_tokens=args.new, min_new_tokens=args.new,
            do_sample=False, pad_token_id=0),
    }
    times = {k: [] for k in ways}
    for k, fn in ways.items():
      fn()  # Warm-up: compiles.
    for _ in range(args.repeats):  # Interleaved, so load from others hits all alike.
      for k, fn in ways.items():
        start = time.perf_counter()
        with torch.no_grad():
          fn()
        times[k].append(time.perf_counter() - start)
    for k, ts in times.items():
      rows.append((batch, k, args.new * batch / statistics.median(ts)))
  print(f'gpt2-124M shape, prompt {args.prompt}, {args.new} new tokens, greedy, '
        f'{jax.device_count()} JAX device(s), torch threads {torch.get_num_threads()}')
  print('| batch | method | tokens/s |\n|---|---|---|')
  for batch, k, tps in rows:
    print(f'| {batch} | {k} | {tps:,.1f} |')


if __name__ == '__main__':
  main()
