"""Whole-logits against chunked cross-entropy (model.loss_chunk): step time and memory, CPU.

    python benchmarks/loss_chunk.py                          # gpt2-124M, seq 256, batch 4
    python benchmarks/loss_chunk.py --seq-len 1024 --batch 2 --chunks 0 256 --rounds 3

Each variant is the real train step (trainer/train.py, AdamW, donated state) on one CPU
device, gpt2 preset with dropout off. Memory is XLA's compiled figure for the step's
temporaries (memory_analysis; on CPU the peak field is not trustworthy, see
../shared/API_NOTES.md); time is the median over interleaved rounds (A B A B ...).
The TPU side of the same question is `trainer compile` (docs/benchmarks.md).
"""
import argparse
import os
import statistics
import sys
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from trainer import config, data, train  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(a, chunk: int):
  cfg = config.load(f'{ROOT}/configs/gpt2.py:gpt2')
  for key, value in {'model.dtype': a.dtype, 'model.dropout': 0.0, 'model.embed_dropout': 0.0,
                     'model.attn_dropout': 0.0, 'model.loss_chunk': chunk, 'mesh.fsdp': 1,
                     'train.seq_len': a.seq_len, 'train.batch_size': a.batch}.items():
    config.set_value(cfg, key, value)
  config.validate(cfg, 1)
  setup = train.build(cfg, devices=jax.devices()[:1])
  start = time.perf_counter()
  step = setup.compile_train_step()
  compile_s = time.perf_counter() - start
  temp_gb = step.memory_analysis().temp_size_in_bytes / 1e9
  return setup, step, setup.init_state(0), compile_s, temp_gb


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--seq-len', type=int, default=256)
  p.add_argument('--batch', type=int, default=4)
  p.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  p.add_argument('--chunks', type=int, nargs='+', default=[0, 128])
  p.add_argument('--rounds', type=int, default=4)
  a = p.parse_args()
  rng = np.random.RandomState(0)
  stream = [rng.randint(0, 50257, (a.batch, a.seq_len + 1)).astype(np.int32)
            for _ in range(a.rounds + 1)]
  runs, times, losses = {}, {}, {}
  for chunk in a.chunks:
    setup, step, state, compile_s, temp_gb = build(a, chunk)
    state, m = step(state, data.to_global(stream[0], setup.batch_sharding))
    runs[chunk], times[chunk], losses[chunk] = [setup, step, state], [], [float(m['loss'])]
    print(f'loss_chunk {chunk}: compile {compile_s:.1f} s, step temporaries {temp_gb:.2f} GB',
          flush=True)
  for i in range(1, a.rounds + 1):
    for chunk, run in runs.items():
      setup, step, state = run
      start = time.perf_counter()
      run[2], m = step(state, data.to_global(stream[i], setup.batch_sharding))
      losses[chunk].append(float(m['loss']))
      times[chunk].append(time.perf_counter() - start)
  tokens = a.batch * a.seq_len
  print(f'gpt2-124M, seq {a.seq_len}, batch {a.batch}, {a.dtype}, {a.rounds} rounds:')
  for chunk, ts in times.items():
    print(f'  loss_chunk {chunk}: {tokens / statistics.median(ts):.1f} tokens/s '
          f'(median step {statistics.median(ts):.2f} s); losses '
          + ', '.join(f'{x:.5f}' for x in losses[chunk]))


if __name__ == '__main__':
  main()
