"""The train step at two commits, side by side: what a change to the model did to a step.

    python benchmarks/ab_step.py --base HEAD~1                       # nano, then gpt2-124M
    python benchmarks/ab_step.py --base 3813cae --cases nano --set model.scan_unroll=0

A git worktree of --base is made in a temporary directory. Two child processes, one per
tree (the base and this checkout, with its uncommitted changes), each build our real train
step for a case (float32 unless --set says otherwise, dropout off, remat none, one CPU
device, trainer/hostmalloc.py's and trainer/cpuflags.py's settings as that tree's
`trainer` command applies them), compile it and warm it up. The parent then has them run
blocks of --steps steps in turn (A B A B ...), one child at a time, so drift hits both
alike, and prints each tree's median wall ms per step, the speed ratio, the CPU time per
step (user and system, all threads: less hit by a busy neighbour than wall time), XLA's
temporaries, and the losses of the two warm-up steps (the same math gives the same
losses). Cases, steps per block and the step's set-up are benchmarks/layer_loop.py's:
'nano' is nanoGPT's README CPU shape, 'nano8' the same 8 layers deep, 'gpt2-124m' the gpt2
preset at sequence 256, batch 4.
"""
import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[0] = ROOT
from benchmarks import layer_loop  # noqa: E402
from benchmarks.machine import cpu_name  # noqa: E402


def child(tree: str, case: str, steps: int, sets: list):
  """Runs in a fresh process with `tree`'s trainer; answers 'run' lines with one block's ms."""
  sys.path[0] = tree
  sys.modules.pop('trainer', None)
  from trainer import hostmalloc
  hostmalloc.apply()
  extra = dict(kv.split('=', 1) for kv in sets)  # Strings: the config parses them by type.
  try:  # A tree from before trainer/cpuflags.py runs without it, as its `trainer` did.
    from trainer import cpuflags
  except ImportError:
    cpuflags = None
  if cpuflags and 'dtype' in inspect.signature(cpuflags.apply).parameters:
    cpuflags.apply(extra.get('model.dtype', 'float32'))
  elif cpuflags:  # Before 07ebe18 its `trainer` set the flag whatever the dtype.
    cpuflags.apply()
  setup, state, step, compile_s = layer_loop.build(case, extra)
  batches = layer_loop.random_batches(setup)
  losses = []
  for b in batches[:2]:  # Warm-up: the heap reaches its steady size.
    state, m = step(state, b)
    losses.append(float(m['loss']))
  print(json.dumps({'compile_s': compile_s, 'losses': losses,
                    'temp_mb': step.memory_analysis().temp_size_in_bytes / 1e6}), flush=True)
  for line in sys.stdin:
    if line.strip() != 'run':
      break
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(steps):
      state, m = step(state, batches[i % 4])
      float(m['loss'])  # As the loop's logging does: the step has finished.
    print(json.dumps({'ms': 1000 * (time.perf_counter() - start) / steps,
                      'cpu_ms': 1000 * (time.process_time() - cpu) / steps}), flush=True)


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--base', default='HEAD', help='the commit to compare this checkout with')
  p.add_argument('--cases', default='nano,gpt2-124m')
  p.add_argument('--rounds', type=int, default=8)
  p.add_argument('--steps', type=int, default=0, help="steps per timed block (0: the case's)")
  p.add_argument('--set', nargs='*', default=[], metavar='KEY=VALUE',
                 help='config overrides for both trees, e.g. model.scan_unroll=0')
  p.add_argument('--child', nargs=2, metavar=('TREE', 'CASE'), help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.child:
    return child(a.child[0], a.child[1], a.steps, a.set)
  base = subprocess.run(['git', 'rev-parse', '--short', a.base], cwd=ROOT, check=True,
                        capture_output=True, text=True).stdout.strip()
  head = subprocess.run(['git', 'describe', '--always', '--dirty'], cwd=ROOT, check=True,
                        capture_output=True, text=True).stdout.strip()
  work = tempfile.mkdtemp(prefix='ab-step-')
  tree = os.path.join(work, base)
  subprocess.run(['git', 'worktree', 'add', '--detach', tree, base], cwd=ROOT, check=True,
                 capture_output=True)
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  print(f'date {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}; cpu: {cpu_name()}; '
        f'load average {os.getloadavg()[0]:.1f}; base {base}, this checkout {head}; '
        f'overrides {" ".join(a.set) or "none"}')
  print('\n| case | tree | compile s | temporaries MB | first losses | median ms per step | '
        'min ms | speed vs base | median CPU ms per step (both threads) |')
  print('|---|---|---|---|---|---|---|---|---|')
  try:
    for case in a.cases.split(','):
      steps = a.steps or layer_loop.CASES[case][2]
      kids = {}
      for name, root in ((base, tree), (head, ROOT)):
        proc = subprocess.Popen(
            [sys.executable, __file__, '--child', root, case, '--steps', str(steps),
             '--set', *a.set], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        kids[name] = (proc, json.loads(proc.stdout.readline()), [], [])
      for _ in range(a.rounds):
        for proc, _, ms, cpu in kids.values():
          proc.stdin.write('run\n')
          proc.stdin.flush()
          block = json.loads(proc.stdout.readline())
          ms.append(block['ms'])
          cpu.append(block['cpu_ms'])
      ref = statistics.median(kids[base][2])
      for name, (proc, info, ms, cpu) in kids.items():
        proc.stdin.close()
        proc.wait()
        med = statistics.median(ms)
        print(f'| {case} | {name} | {info["compile_s"]:.1f} | {info["temp_mb"]:,.0f} | '
              f'{", ".join(f"{x:.5f}" for x in info["losses"])} | {med:,.1f} | {min(ms):,.1f} | '
              f'{ref / med:.2f}x | {statistics.median(cpu):,.1f} |', flush=True)
  finally:
    subprocess.run(['git', 'worktree', 'remove', '--force', tree], cwd=ROOT, capture_output=True)


if __name__ == '__main__':
  main()
