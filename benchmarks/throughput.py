"""Training throughput and MFU on this machine: gpt2-124M shape (seq 256) and the tiny model.

    python benchmarks/throughput.py            # the CPU cases, prints a Markdown table
    python benchmarks/throughput.py --steps 3 --cases tiny
    python benchmarks/throughput.py --cases gpt2-1024 --dtypes bfloat16 --set model.attention=cudnn

The `-1024` cases are one GPU's (benchmarks/gpu.sh runs them): gpt2 (124M) and gpt2-xl
(1.5B) at sequence 1024, their batch and remat set so a step fits an 80 GB H100.

Each case compiles the real sharded train step, runs one warm-up step, then times
`--steps` steps (median step time). MFU = model FLOPs per token (PaLM convention,
trainer/model.py) x tokens/s / the peak the training log uses (metrics.Accountant:
the hardware table, or on CPU a matmul measured in the same compute dtype).
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from trainer import hostmalloc  # noqa: E402

hostmalloc.apply()  # As the `trainer` command does.

import jax  # noqa: E402
import numpy as np  # noqa: E402

from trainer import config, data, metrics, train  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = {
    'gpt2-124m': (f'{ROOT}/configs/gpt2.py:gpt2', {'train.seq_len': 256, 'train.batch_size': 4}),
    'tiny': (f'{ROOT}/configs/tiny.py', {'train.batch_size': 8}),
    'default': ('', {}),
    # One GPU, sequence 1024 (issue 13's MFU targets). Batch and remat for an 80 GB H100:
    # 124M without remat; gpt2-xl's 24 GB of float32 weights and AdamW state leave room
    # for its activations only with remat=dots.
    'gpt2-1024': (f'{ROOT}/configs/gpt2.py:gpt2',
                  {'train.seq_len': 1024, 'train.batch_size': 16, 'model.remat': 'none'}),
    'gpt2-xl-1024': (f'{ROOT}/configs/gpt2.py:gpt2-xl',
                     {'train.seq_len': 1024, 'train.batch_size': 8, 'model.remat': 'dots'}),
}
CPU_CASES = ('gpt2-124m', 'tiny', 'default')


def measure(spec: str, overrides: dict, dtype: str, steps: int) -> dict:
  cfg = config.load(spec, {k: str(v) for k, v in overrides.items()})
  config.set_value(cfg, 'model.dtype', dtype)
  config.set_value(cfg, 'model.dropout', 0.0)
  config.set_value(cfg, 'model.embed_dropout', 0.0)
  config.set_value(cfg, 'model.attn_dropout', 0.0)
  config.validate(cfg, jax.device_count(), jax.devices()[0].platform)
  setup = train.build(cfg)
  state = setup.init_state(cfg.seed)
  step = setup.compile_train_step()
  t = cfg.train
  tokens = np.random.RandomState(0).randint(0, cfg.model.vocab_size,
                                            (t.batch_size, t.seq_len + 1)).astype(np.int32)
  batch = data.to_global(tokens, setup.batch_sharding)
  state, m = step(state, batch)
  jax.block_until_ready(m)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - start)
  step_time = statistics.median(times)
  tokens_per_sec = t.batch_size * t.seq_len / step_time
  # The same MFU the training log reports (peak: hardware table, or measured on CPU).
  acct = metrics.Accountant(cfg, setup.model_cfg, setup.mesh.size)
  return {'tokens_per_sec': tokens_per_sec, 'step_time_s': step_time,
          'mfu': acct.model_flops * tokens_per_sec / acct.peak_total,
          'peak_gflops': acct.peak_total / 1e9}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--cases', nargs='*', default=list(CPU_CASES), choices=list(CASES))
  parser.add_argument('--dtypes', nargs='*', default=['float32', 'bfloat16'])
  parser.add_argument('--set', nargs='*', default=[], metavar='KEY=VALUE',
                      help='config overrides for every case, e.g. model.attention=cudnn')
  args = parser.parse_args()
  extra = dict(kv.split('=', 1) for kv in args.set)
  print(f'devices: {jax.device_count()} x {jax.devices()[0].device_kind}, cpus: {os.cpu_count()}; '
        f'jax {jax.__version__}; overrides: {" ".join(args.set) or "none"}')
  print('| case | dtype | tokens/s | step time (s) | MFU | peak GFLOP/s |')
  print('|---|---|---|---|---|---|')
  for case in args.cases:
    spec, overrides = CASES[case]
    for dtype in args.dtypes:
      r = measure(spec, {**overrides, **extra}, dtype, args.steps)
      print(f"| {case} | {dtype} | {r['tokens_per_sec']:,.0f} | {r['step_time_s']:.3f} | "
            f"{100 * r['mfu']:.1f}% | {r['peak_gflops']:,.0f} |", flush=True)


if __name__ == '__main__':
  main()
