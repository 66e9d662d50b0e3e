"""Cold and warm start of `trainer train`: compile time with and without the persistent cache.

    python benchmarks/compile_cache.py                      # tiny and gpt2-124M (seq 256)
    python benchmarks/compile_cache.py --cases tiny --repeats 2
    python benchmarks/compile_cache.py --cases tiny --processes 2   # launch/local.py, 1 device each

For each case, in one temporary workdir: a first run of 1 step (cold: compiles and fills
WORKDIR/compile_cache), then a resumed run to step 2 (warm: loads the programs). Each is a
real `trainer train` subprocess; the table shows the "compiled the train step in X s"
figure the run prints and the wall time of the whole process (imports, data, restore,
compile, one step, checkpoint). A third run with --config.train.compile_cache=off in a fresh
workdir gives the uncached figure again, measured after the warm one. "first step" is the
s/step that run prints for its first step: with --processes above 1 it includes waiting for
the other processes, whose own compile figures are not printed (only process 0's is).
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

from machine import cpu_name  # benchmarks/machine.py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = {
    'tiny': ['--config=configs/tiny.py'],
    'gpt2-124m': ['--config=configs/gpt2.py:gpt2', '--config.train.seq_len=256',
                  '--config.train.batch_size=4'],
    'gpt2-48-layer': ['--config=configs/gpt2.py:gpt2', '--config.model.num_layers=48',
                      '--config.train.seq_len=256', '--config.train.batch_size=4'],
}
COMMON = ['--config.train.eval_batches=1', '--config.train.sample_tokens=0',
          '--config.optim.schedule=constant', '--config.optim.warmup_steps=0',
          '--config.log.tensorboard=false', '--config.model.dropout=0']


def run(args: list[str], workdir: str, steps: int, *extra,
        processes: int = 1) -> tuple[float, float, bool, float]:
  env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  env.setdefault('JAX_PLATFORMS', 'cpu')
  train = [*args, *COMMON, f'--config.train.steps={steps}', f'--workdir={workdir}', *extra]
  cmd = ([sys.executable, 'launch/local.py', '--processes', str(processes),
          '--devices-per-process', '1', '--', *train] if processes > 1 else
         [sys.executable, '-m', 'trainer', 'train', *train])
  start = time.perf_counter()
  out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
  wall = time.perf_counter() - start
  if out.returncode:
    sys.exit(f'trainer train failed:\n{out.stderr[-3000:]}')
  found = re.search(r'compiled the train step in ([0-9.]+) s', out.stdout)
  first = re.search(r'^step +\d+ \|.*?\| ([0-9.]+) s/step', out.stdout, re.M)
  return (float(found.group(1)), wall, 'loaded from the compilation cache' in out.stdout,
          float(first.group(1)))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--cases', default='tiny,gpt2-124m', help=f'of {",".join(CASES)}')
  parser.add_argument('--repeats', type=int, default=1)
  parser.add_argument('--processes', type=int, default=1,
                      help='above 1: that many processes of one CPU device each (launch/local.py)')
  args = parser.parse_args()
  print(f'{cpu_name()}; {time.strftime("%Y-%m-%d")}; {args.processes} process(es)\n')
  print('| case | run | compile (s) | first step (s) | wall (s) | from cache |')
  print('|---|---|---:|---:|---:|---|')
  for name in args.cases.split(','):
    for _ in range(args.repeats):
      with tempfile.TemporaryDirectory() as tmp:
        work = os.path.join(tmp, 'run')
        n = args.processes
        rows = [('cold (fills the cache)', run(CASES[name], work, 1, processes=n)),
                ('resumed (warm)', run(CASES[name], work, 2, processes=n)),
                ('cache off', run(CASES[name], os.path.join(tmp, 'off'), 1,
                                  '--config.train.compile_cache=off', processes=n))]
        for label, (compile_s, wall, cached, first) in rows:
          print(f'| {name} | {label} | {compile_s:.1f} | {first:.2f} | {wall:.1f} | '
                f'{"yes" if cached else "no"} |', flush=True)


if __name__ == '__main__':
  main()
