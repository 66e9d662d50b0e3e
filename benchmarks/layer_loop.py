"""The layer loop three ways: nn.scan, the scan unrolled away, in line.

    python benchmarks/layer_loop.py                          # nano, nano8, then gpt2-124M
    python benchmarks/layer_loop.py --cases nano --rounds 10

One process, with trainer/hostmalloc.py's and trainer/cpuflags.py's settings as the
`trainer` command applies them, builds our real train step (float32, dropout off, remat
--remat, one CPU device) three ways for a case: the layers in one nn.scan loop
(`model.scan_layers=True`, `scan_unroll=1`, the default beyond 8 layers or off a CPU), the
same stacked layers with the loop unrolled away (`scan_unroll=0`, the default for these
cases but gpt2-124m on a CPU), and the layers as separate modules in line
(`scan_layers=False`). It times each compile (no persistent compilation cache), then runs
them in alternating blocks of --steps steps (A B C A B C ...) so drift hits all alike, and
prints the median ms per step, XLA's temporaries for the step (`memory_analysis`) and how
many slices, concatenates, dynamic slices and dynamic-update-slices its compiled HLO
holds. Cases: 'nano' is nanoGPT's README CPU shape (4 layers, 4 heads, 128 wide, block 64,
batch 12; byte vocabulary), 'nano8' the same 8 layers deep, 'gpt2-124m' the gpt2 preset
(12 layers) at sequence 256, batch 4.
"""
import argparse
import os
import re
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[0] = ROOT
from benchmarks import host_malloc  # noqa: E402
from benchmarks.machine import cpu_name  # noqa: E402

CASES = {
    'nano': host_malloc.CASES['nano'][:2] + (25,),
    'nano8': (host_malloc.CASES['nano'][0], {**host_malloc.CASES['nano'][1], 'model.num_layers': 8}, 12),
    'gpt2-124m': host_malloc.CASES['gpt2-124m'][:2] + (1,),
}


HLO_OPS = ('slice', 'concatenate', 'dynamic-slice', 'dynamic-update-slice')
VARIANTS = {'scan': {'model.scan_unroll': 1}, 'scan_unroll=0': {'model.scan_unroll': 0},
            'in line': {'model.scan_layers': False}}


def build(case: str, layers: dict, remat: str = 'none'):
  """(setup, initial state, compiled step, compile seconds) with the extra keys `layers`."""
  setup = host_malloc.build(*CASES[case][:2], **{'model.remat': remat, **layers})
  state = setup.init_state(0)
  start = time.perf_counter()
  step = setup.compile_train_step()
  return setup, state, step, time.perf_counter() - start


def random_batches(setup, count: int = 4) -> list:
  """`count` seeded batches of random tokens, placed as the train step takes them."""
  import numpy as np
  from trainer import data
  t, rng = setup.cfg.train, np.random.default_rng(0)
  return [data.to_global(rng.integers(0, setup.cfg.model.vocab_size,
                                      (t.batch_size, t.seq_len + 1)).astype(np.int32),
                         setup.batch_sharding) for _ in range(count)]


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--cases', default='nano,nano8,gpt2-124m')
  p.add_argument('--rounds', type=int, default=6)
  p.add_argument('--steps', type=int, default=0, help="steps per timed block (0: the case's)")
  p.add_argument('--remat', default='none', choices=('none', 'dots', 'full'))
  a = p.parse_args()
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  from trainer import cpuflags, hostmalloc
  decision = hostmalloc.apply()
  flags = cpuflags.apply('float32')  # float32 steps, as `trainer` sets it for them.
  import jax
  print(f'date {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}; cpu: {cpu_name()}; '
        f'load average {os.getloadavg()[0]:.1f}; malloc {decision}; XLA:CPU flags {flags}; '
        f'jax {jax.__version__}; '
        f'remat {a.remat}')
  print('\n| case | layers | layer loop | compile s | temporaries MB | slices, concatenates, dynamic '
        'slices, dynamic updates | median ms per step | min ms | speed vs scan |')
  print('|---|---|---|---|---|---|---|---|---|')
  for case in a.cases.split(','):
    steps = a.steps or CASES[case][2]
    runs = {}
    for variant, layers in VARIANTS.items():
      setup, state, step, compile_s = build(case, layers, a.remat)
      batches = random_batches(setup)
      for b in batches[:2]:  # Warm-up: the heap reaches its steady size.
        state, m = step(state, b)
        float(m['loss'])
      hlo = step.as_text()
      runs[variant] = {'state': state, 'step': step, 'batches': batches, 'compile_s': compile_s,
                       'temp_mb': step.memory_analysis().temp_size_in_bytes / 1e6,
                       'ops': ', '.join(str(len(re.findall(rf'= \S+ {op}\(', hlo)))
                                        for op in HLO_OPS),
                       'ms': [], 'layers': setup.cfg.model.num_layers}
    for _ in range(a.rounds):
      for r in runs.values():
        start = time.perf_counter()
        for i in range(steps):
          r['state'], m = r['step'](r['state'], r['batches'][i % 4])
          float(m['loss'])  # As the loop's logging does: the step has finished.
        r['ms'].append(1000 * (time.perf_counter() - start) / steps)
    ref = statistics.median(runs['scan']['ms'])
    for variant, r in runs.items():
      med = statistics.median(r['ms'])
      print(f'| {case} | {r["layers"]} | {variant} | {r["compile_s"]:.1f} | {r["temp_mb"]:,.0f} | '
            f'{r["ops"]} | {med:,.1f} | {min(r["ms"]):,.1f} | {ref / med:.2f}x |', flush=True)
    runs.clear()


if __name__ == '__main__':
  main()
