"""The train step with glibc's default malloc and with trainer/hostmalloc.py's settings.

    python benchmarks/host_malloc.py                      # nanoGPT's CPU shape, then gpt2-124M
    python benchmarks/host_malloc.py --cases nano --rounds 3

Each measurement is a fresh process (the settings are per process and must precede JAX's
threads) that compiles our real train step (float32, dropout off, remat none, one CPU
device), runs warm-up steps, then times --steps steps: wall ms per step, user and kernel
(sys) CPU ms per step, and minor page faults per step. The two settings alternate
(A B A B ...) so drift hits both alike. Cases: 'nano' is nanoGPT's README CPU shape
(4 layers, 4 heads, 128 wide, block 64, batch 12; byte vocabulary), 'gpt2-124m' the
gpt2 preset at sequence 256, batch 4.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[0] = ROOT
CASES = {
    'nano': ('', {'model.vocab_size': 257, 'model.max_len': 64, 'model.embed_dim': 128,
                  'model.num_layers': 4, 'model.num_heads': 4, 'model.mlp_dim': 512,
                  'model.use_bias': False, 'train.batch_size': 12, 'train.seq_len': 64}, 100),
    'gpt2-124m': (f'{ROOT}/configs/gpt2.py:gpt2', {'train.seq_len': 256, 'train.batch_size': 4}, 3),
}


def build(spec: str, overrides: dict, **extra):
  """A case's float32 train setup (dropout off, remat none, one CPU device), plus `extra` keys."""
  import jax
  from trainer import config, train
  cfg = config.load(spec, {k: str(v) for k, v in overrides.items()})
  for key, value in {'mesh.fsdp': 1, 'model.remat': 'none', 'model.dropout': 0.0,
                     'model.embed_dropout': 0.0, 'model.attn_dropout': 0.0, **extra}.items():
    config.set_value(cfg, key, value)
  config.validate(cfg, 1)
  return train.build(cfg, devices=jax.devices()[:1])


def child(case: str, steps: int):
  """Runs in the fresh process: applies the settings as `trainer` does, times the steps."""
  from trainer import cpuflags, hostmalloc
  decision = hostmalloc.apply()
  cpuflags.apply('float32')  # The cases are float32, as `trainer` sets it for them.
  import numpy as np
  from trainer import data
  setup = build(*CASES[case][:2])
  state, step = setup.init_state(0), setup.compile_train_step()
  t = setup.cfg.train
  tokens = np.random.default_rng(0).integers(0, setup.cfg.model.vocab_size, (t.batch_size, t.seq_len + 1))
  batch = data.to_global(tokens.astype(np.int32), setup.batch_sharding)
  for _ in range(2):  # Warm-up: the heap reaches its steady size.
    state, m = step(state, batch)
    float(m['loss'])
  before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
  for _ in range(steps):
    state, m = step(state, batch)
    float(m['loss'])
  wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
  print(json.dumps({'malloc': decision, 'ms_per_step': 1000 * wall / steps,
                    'user_ms': 1000 * (after.ru_utime - before.ru_utime) / steps,
                    'sys_ms': 1000 * (after.ru_stime - before.ru_stime) / steps,
                    'faults': (after.ru_minflt - before.ru_minflt) / steps}))


def measure(case: str, setting: str, steps: int) -> dict:
  env = {**os.environ, 'TRAINER_MALLOC': setting, 'JAX_PLATFORMS': 'cpu'}
  out = subprocess.run([sys.executable, __file__, '--child', case, '--steps', str(steps)],
                       env=env, check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--cases', default='nano,gpt2-124m')
  p.add_argument('--rounds', type=int, default=2)
  p.add_argument('--steps', type=int, default=0, help='timed steps (0: the case\'s default)')
  p.add_argument('--child', help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.child:
    return child(a.child, a.steps)
  from benchmarks.machine import cpu_name
  print(f'date {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}; cpu: {cpu_name()}; '
        f'load average {os.getloadavg()[0]:.1f}')
  for case in a.cases.split(','):
    steps = a.steps or CASES[case][2]
    runs = {'default': [], 'tuned': []}
    for _ in range(a.rounds):
      for setting in runs:
        runs[setting].append(measure(case, setting, steps))
        print(f'  {case} {setting}: {json.dumps(runs[setting][-1])}', file=sys.stderr, flush=True)
    print(f'\n{case}, {steps} steps, median of {a.rounds} processes each\n')
    print('| malloc | ms per step | user CPU ms | kernel (sys) CPU ms | minor faults per step |')
    print('|---|---|---|---|---|')
    for setting, rs in runs.items():
      med = {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != 'malloc'}
      print(f'| {setting} ({rs[0]["malloc"]}) | {med["ms_per_step"]:,.1f} | '
            f'{med["user_ms"]:,.1f} | {med["sys_ms"]:,.1f} | {med["faults"]:,.0f} |')


if __name__ == '__main__':
  main()
