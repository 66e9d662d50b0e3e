"""Side by side, interleaved: our train step against Hugging Face GPT-2 on torch, f32 and bf16.

    python benchmarks/compare.py                      # gpt2-124M shape (seq 256, batch 4) and tiny
    python benchmarks/compare.py --quick              # 3 timed steps per variant, no torch.compile
    python benchmarks/compare.py --json --cases gpt2-124m   # one JSON object on stdout
    python benchmarks/compare.py --skip gpt2-124m:torch_bf16  # a variant this CPU cannot finish

Variants, same shape, same initial weights (ours converted with trainer.hf), same token
stream, no dropout, AdamW (b2 0.95, weight decay 0.1 on matrices, clip 1.0, constant lr):
ours float32; ours bfloat16 compute with float32 master weights; transformers
GPT2LMHeadModel + torch.optim.AdamW in float32 and under torch.autocast(bfloat16)
(--torch-compile adds torch.compile'd copies). Each round runs one step of every variant
in turn (A B C D A B C D ...), so drift from other jobs on the machine hits all alike;
tokens/s comes from the median step. Matmul ceilings (2048^3 by default) are measured
interleaved in the same run for each framework and precision (torch's bf16 at most 512^3:
on a CPU without bf16 instructions it runs ~100x below its float32). Peak RSS is the process's
high-water mark after each variant is built and has stepped once (cumulative: one process).
--skip CASE:VARIANT leaves a variant out (reported as not run; null in --json). The process
applies trainer/hostmalloc.py's glibc settings as `trainer` does (torch shares them; run with
TRAINER_MALLOC=default for glibc's defaults everywhere).
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Replace the script's own directory: benchmarks/profile.py would shadow the stdlib `profile`.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from trainer import hostmalloc  # noqa: E402

# As the `trainer` command does, before any thread starts. Torch runs in this process and gets
# the same allocator; TRAINER_MALLOC=default measures every variant with glibc's defaults.
MALLOC = hostmalloc.apply()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from benchmarks.machine import cpu_name  # noqa: E402
from trainer import config, data, hf, model, train  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = {
    'gpt2-124m': (f'{ROOT}/configs/gpt2.py:gpt2', {'train.seq_len': 256, 'train.batch_size': 4}),
    'tiny': (f'{ROOT}/configs/tiny.py', {'train.batch_size': 8}),
}
BF16_LOSS_TOL = 0.02   # bf16 first-step losses within 2% of float32 (rounding of activations).
F32_LOSS_TOL = 1e-4


def log(*args):
  print(*args, file=sys.stderr, flush=True)


def peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def build_config(case: str, dtype: str, lr: float):
  spec, overrides = CASES[case]
  cfg = config.load(spec, {k: str(v) for k, v in overrides.items()})
  for key, value in {'model.dtype': dtype, 'model.dropout': 0.0, 'model.embed_dropout': 0.0,
                     'model.attn_dropout': 0.0, 'model.remat': 'none', 'mesh.fsdp': 1,
                     'optim.schedule': 'constant', 'optim.warmup_steps': 0, 'optim.lr': lr,
                     'optim.b2': 0.95, 'optim.weight_decay': 0.1, 'optim.clip_norm': 1.0}.items():
    config.set_value(cfg, key, value)
  config.validate(cfg, 1)
  return cfg


class Ours:
  """Our compiled, donated train step on one CPU device."""

  def __init__(self, cfg, params0):
    self.setup = train.build(cfg, devices=jax.devices()[:1])
    state = self.setup.init_state(cfg.seed)
    self.state = state.replace(params=jax.tree.map(jnp.asarray, params0))
    start = time.perf_counter()
    self.step_fn = self.setup.compile_train_step()
    self.compile_s = time.perf_counter() - start

  def step(self, tokens: np.ndarray) -> float:
    batch = data.to_global(tokens, self.setup.batch_sharding)
    self.state, m = self.step_fn(self.state, batch)
    return float(m['loss'])  # Blocks until the step is done.


class Torch:
  """transformers GPT2LMHeadModel with torch.optim.AdamW; bf16 through autocast."""

  def __init__(self, cfg, model_cfg, params0, bf16: bool, compile_: bool):
    spec = hf.hf_config(model_cfg)
    spec.pop('model_type'), spec.pop('architectures')
    self.model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**spec))
    tensors = {k: torch.from_numpy(v.copy()) for k, v in hf.params_to_hf(params0, model_cfg).items()}
    missing, unexpected = self.model.load_state_dict(tensors, strict=False)
    assert not unexpected and all('attn.bias' in k or 'masked_bias' in k or k == 'lm_head.weight'
                                  for k in missing), (missing, unexpected)
    self.model.tie_weights()
    self.model.train()
    o = cfg.optim
    named = list(self.model.named_parameters())
    decay = [p for n, p in named if p.dim() >= 2 and 'wte' not in n and 'wpe' not in n]
    rest = [p for n, p in named if not (p.dim() >= 2 and 'wte' not in n and 'wpe' not in n)]
    self.opt = torch.optim.AdamW([{'params': decay, 'weight_decay': o.weight_decay},
                                  {'params': rest, 'weight_decay': 0.0}],
                                 lr=o.lr, betas=(o.b1, o.b2), eps=o.eps)
    self.clip, self.bf16 = o.clip_norm, bf16
    self.forward = torch.compile(self.model) if compile_ else self.model
    self.compile_s = 0.0

  def step(self, tokens: np.ndarray) -> float:
    t = torch.from_numpy(tokens.astype(np.int64))
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=self.bf16):
      logits = self.forward(input_ids=t[:, :-1]).logits
      loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), t[:, 1:].flatten())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
    self.opt.step()
    self.opt.zero_grad(set_to_none=True)
    return float(loss.detach())


TORCH_BF16_MATMUL_MAX = 512  # Slow path on CPUs without bf16 instructions: 2048^3 takes minutes.


def matmul_ceilings(n: int, reps: int) -> dict:
  """GFLOP/s of an n^3 matmul per framework and precision, interleaved, median of reps."""
  a = np.random.RandomState(0).randn(n, n).astype(np.float32)
  ja32, jb16 = jnp.asarray(a), jnp.asarray(a, jnp.bfloat16)
  f32 = jax.jit(lambda x, y: x @ y)
  bf16 = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
  m = min(n, TORCH_BF16_MATMUL_MAX)
  ta32, ta16 = torch.from_numpy(a), torch.from_numpy(a[:m, :m]).bfloat16()
  fns = {'ours_f32': lambda: f32(ja32, ja32).block_until_ready(),
         'ours_bf16': lambda: bf16(jb16, jb16).block_until_ready(),
         'torch_f32': lambda: ta32 @ ta32, 'torch_bf16': lambda: ta16 @ ta16}
  sizes = {k: m if k == 'torch_bf16' else n for k in fns}
  times = {k: [] for k in fns}
  for k, fn in fns.items():
    fn()
  for _ in range(reps):
    for k, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - start)
  return {k: 2 * sizes[k]**3 / statistics.median(v) / 1e9 for k, v in times.items()}


def run_case(case: str, steps: int, torch_compile: bool, lr: float, skip=()) -> dict:
  cfgs = {dt: build_config(case, dt, lr) for dt in ('float32', 'bfloat16')}
  model_cfg = model.ModelConfig.from_config(cfgs['float32'].model)
  t = cfgs['float32'].train
  params0 = jax.device_get(train.build(cfgs['float32'], jax.devices()[:1]).init_state(0).params)
  makers = {
      'ours_f32': lambda: Ours(cfgs['float32'], params0),
      'ours_bf16': lambda: Ours(cfgs['bfloat16'], params0),
      'torch_f32': lambda: Torch(cfgs['float32'], model_cfg, params0, False, False),
      'torch_bf16': lambda: Torch(cfgs['float32'], model_cfg, params0, True, False),
  }
  if torch_compile:
    makers['torch_compile_f32'] = lambda: Torch(cfgs['float32'], model_cfg, params0, False, True)
    makers['torch_compile_bf16'] = lambda: Torch(cfgs['float32'], model_cfg, params0, True, True)
  makers = {n: m for n, m in makers.items() if f'{case}:{n}' not in skip}
  rng = np.random.RandomState(1)
  stream = [rng.randint(0, model_cfg.vocab_size, (t.batch_size, t.seq_len + 1)).astype(np.int32)
            for _ in range(steps + 1)]
  variants, losses, rss, times = {}, {}, {}, {}
  for name, make in makers.items():
    log(f'[{case}] building {name} ...')
    variants[name] = make()
    losses[name] = [variants[name].step(stream[0])]  # Warm-up step (compiles torch.compile).
    rss[name] = peak_rss_gb()
    times[name] = []
  for i in range(1, steps + 1):  # Interleaved: one step of every variant per round.
    for name, v in variants.items():
      start = time.perf_counter()
      losses[name].append(v.step(stream[i]))
      times[name].append(time.perf_counter() - start)
    log(f'[{case}] round {i}: ' + ', '.join(f'{n} {times[n][-1]:.2f}s' for n in variants))
  tokens = t.batch_size * t.seq_len
  return {'tokens_per_sec': {n: tokens / statistics.median(ts) for n, ts in times.items()},
          'step_times_s': times, 'losses': losses, 'peak_rss_gb': rss,
          'compile_s': {n: v.compile_s for n, v in variants.items()},
          'flops_per_token': model.flops_per_token(model_cfg, t.seq_len),
          'shape': f'{model_cfg.num_layers} layers x {model_cfg.embed_dim}, seq {t.seq_len}, '
                   f'batch {t.batch_size}'}


def check_losses(r: dict) -> list[str]:
  """First steps' losses: ours against torch in the same precision, bf16 against f32."""
  problems = []
  ref = r['losses']['torch_f32']
  for name, ls in r['losses'].items():
    tol = F32_LOSS_TOL if name.endswith('f32') else BF16_LOSS_TOL
    for i, (a, b) in enumerate(zip(ls[:3], ref[:3])):
      if abs(a - b) > tol * abs(b):
        problems.append(f'{name} step {i}: loss {a:.5f} vs torch_f32 {b:.5f} (tol {tol:.0e} rel)')
  return problems


def report(case: str, r: dict, ceil: dict):
  tps, fpt = r['tokens_per_sec'], r['flops_per_token']
  tps = {**dict.fromkeys(('ours_f32', 'ours_bf16', 'torch_f32', 'torch_bf16')), **tps}
  print(f'\n### {case}: {r["shape"]}\n')
  print('| variant | tokens/s | vs torch same precision | GFLOP/s achieved | % of its matmul '
        'ceiling | peak RSS GB (cumulative) | first losses |')
  print('|---|---|---|---|---|---|---|')
  for n, v in tps.items():
    if v is None:
      print(f'| {n} | not run (--skip) | | | | | |')
      continue
    prec = 'bf16' if n.endswith('bf16') else 'f32'
    base = tps[f'torch_{prec}'] or float('nan')
    gf = v * fpt / 1e9
    c = ceil[f'ours_{prec}' if n.startswith('ours') else f'torch_{prec}']
    first = ', '.join(f'{x:.4f}' for x in r['losses'][n][:3])
    print(f'| {n} | {v:,.1f} | {v / base:.2f}x | {gf:,.0f} | {100 * gf / c:.0f}% | '
          f'{r["peak_rss_gb"][n]:.2f} | {first} |')
  ratio = lambda a, b: f'{tps[a] / tps[b]:.2f}x' if tps[a] and tps[b] else 'n/a'  # noqa: E731
  print(f'\nours bf16 / ours f32: {ratio("ours_bf16", "ours_f32")}; '
        f'torch bf16 / torch f32: {ratio("torch_bf16", "torch_f32")}; ours f32 / torch f32: '
        f'{ratio("ours_f32", "torch_f32")}; '
        f'ours bf16 / torch bf16: {ratio("ours_bf16", "torch_bf16")}')
  problems = check_losses(r)
  print('losses agree (f32 within 1e-4 rel, bf16 within 2% rel of torch f32)' if not problems
        else 'LOSS MISMATCH: ' + '; '.join(problems))


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--cases', nargs='*', default=['gpt2-124m', 'tiny'], choices=list(CASES))
  p.add_argument('--steps', type=int, default=8, help='timed steps (rounds) per variant')
  p.add_argument('--quick', action='store_true', help='3 timed steps, 1024^3 ceilings')
  p.add_argument('--torch-compile', action='store_true', help='also torch.compile variants')
  p.add_argument('--matmul', type=int, default=2048, help='ceiling matmul size n (n^3)')
  p.add_argument('--lr', type=float, default=6e-4)
  p.add_argument('--json', action='store_true', help='print one JSON object (first case)')
  p.add_argument('--skip', nargs='*', default=[], metavar='CASE:VARIANT',
                 help='leave a variant out of a case, e.g. gpt2-124m:torch_bf16')
  a = p.parse_args()
  if a.quick:
    a.steps, a.matmul = 3, 1024
  torch.set_num_threads(os.cpu_count())
  cpu = cpu_name()
  log(f'cpu: {cpu}; jax {jax.__version__}, torch {torch.__version__}, '
      f'transformers {transformers.__version__}')
  ceil = matmul_ceilings(a.matmul, 5)
  results = {case: run_case(case, a.steps, a.torch_compile, a.lr, a.skip) for case in a.cases}
  ceil_after = matmul_ceilings(a.matmul, 5)  # Again after: the load may have moved.
  ceil = {k: max(ceil[k], ceil_after[k]) for k in ceil}
  if a.json:
    first = results[a.cases[0]]
    print(json.dumps({**{k: first['tokens_per_sec'].get(k) for k in
                         ('ours_bf16', 'ours_f32', 'torch_bf16', 'torch_f32')},
                      'case': a.cases[0], 'cpu': cpu, 'matmul_ceiling_gflops': ceil,
                      'malloc': MALLOC,
                      'cases': results}))
    return
  print(f'date {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}; cpu: {cpu}; '
        f'load average {os.getloadavg()[0]:.1f}; jax {jax.__version__}, torch {torch.__version__}; '
        f'malloc: {MALLOC} (trainer/hostmalloc.py)')
  print(f'matmul ceilings ({a.matmul}^3; torch bf16 {min(a.matmul, TORCH_BF16_MATMUL_MAX)}^3), '
        'GFLOP/s, best of before/after: '
        + ', '.join(f'{k} {v:,.0f}' for k, v in ceil.items()))
  for case, r in results.items():
    report(case, r, ceil)


if __name__ == '__main__':
  main()
