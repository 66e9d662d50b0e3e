"""Start-up of one `trainer train` on a CPU: where the seconds before the first step go.

    python benchmarks/startup.py                                  # this interpreter, 5 rounds
    python benchmarks/startup.py --python /tmp/v07/bin/python     # and another, interleaved

Each round runs, in fresh processes, for every interpreter in turn (A B A B ...):
* `import ml_dtypes` and `import jax`: the cumulative microseconds of `python -X importtime`;
* the CPU peak measurement the trainer runs at start (metrics.measure_peak_flops) at the
  size it uses and at the 2048 it used before, in float32 (tiny's dtype): seconds and
  GFLOP/s;
* a 4-step tiny run (configs/tiny.py, one CPU device, a fresh workdir, a persistent
  compilation cache warmed before the first round, so the step compiles are cache hits as
  in a resumed run or a test session): seconds from the start to the `model:` line, to
  `compiled`, to step 1, to the last step, and to the process's exit.

Another interpreter (--python) is how to compare library versions: e.g.
`python -m venv --system-site-packages /tmp/v07 && /tmp/v07/bin/pip install ml_dtypes==0.7.0`
makes one that differs from this one in ml_dtypes alone. Every run uses this checkout's
trainer (run from the repository root).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[0] = ROOT
from benchmarks.machine import cpu_name  # noqa: E402

STEPS = 4
# Each phase ends when the run prints the line that starts so; 'exit' when the process ends.
LINES = {'model': 'model:', 'compiled': 'compiled', 'step 1': 'step      1 |',
         'last step': f'step {STEPS:6d} |'}
PHASES = (*LINES, 'exit')
PEAK = ('import sys, time; from trainer import metrics\n'
        'for size, repeats in ((1024, 8), (2048, 3)):\n'
        '  start = time.perf_counter(); flops = metrics.measure_peak_flops("float32", size, repeats)\n'
        '  print(size, time.perf_counter() - start, flops / 1e9)')


def env(cache: str) -> dict:
  return {**os.environ, 'JAX_PLATFORMS': 'cpu', 'JAX_COMPILATION_CACHE_DIR': cache,
          'XLA_FLAGS': '--xla_force_host_platform_device_count=1'}


def import_times(python: str) -> dict:
  """Seconds of `import ml_dtypes` (inside jax's import) and of `import jax`."""
  err = subprocess.run([python, '-X', 'importtime', '-c', 'import jax'], cwd=ROOT,
                       capture_output=True, text=True, check=True).stderr
  cumulative = {m.group(2): int(m.group(1)) / 1e6
                for m in re.finditer(r'^import time:\s+\d+ \|\s+(\d+) \| +(\S+)$', err, re.M)}
  return {'import ml_dtypes': cumulative['ml_dtypes'], 'import jax': cumulative['jax']}


def peak(python: str, cache: str) -> dict:
  out = subprocess.run([python, '-c', PEAK], cwd=ROOT, env=env(cache), capture_output=True,
                       text=True, check=True).stdout.split()
  return {f'peak {out[i]} s': float(out[i + 1]) for i in (0, 3)} | {
      f'peak {out[i]} GFLOP/s': float(out[i + 2]) for i in (0, 3)}


def tiny_run(python: str, cache: str, work: str) -> dict:
  """Seconds from the process's start to each phase of a 4-step tiny run."""
  workdir = tempfile.mkdtemp(dir=work)
  cmd = [python, '-u', '-m', 'trainer', 'train', '--config=configs/tiny.py',
         f'--config.train.steps={STEPS}', '--config.train.eval_batches=1', f'--workdir={workdir}']
  seen, start = {}, time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env(cache), stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
  for line in proc.stdout:
    now = time.perf_counter() - start
    for phase, prefix in LINES.items():
      if line.startswith(prefix):
        seen.setdefault(phase, now)
  if proc.wait():
    sys.exit(f'error: {" ".join(cmd)} exited {proc.returncode}')
  seen['exit'] = time.perf_counter() - start
  assert set(seen) == set(PHASES), f'missing lines: {set(PHASES) - set(seen)}'
  return seen


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--python', action='append', default=[],
                 help='another interpreter to compare (repeatable); this one always runs')
  p.add_argument('--rounds', type=int, default=5)
  p.add_argument('--json', action='store_true', help='one JSON object on stdout')
  args = p.parse_args()
  pythons = [sys.executable, *args.python]
  results = {py: [] for py in pythons}
  with tempfile.TemporaryDirectory(prefix='startup-bench-') as work:
    cache = os.path.join(work, 'xla-cache')
    for py in pythons:  # Warms the compilation cache; not counted.
      tiny_run(py, cache, work)
    for r in range(args.rounds):
      for py in pythons:
        results[py].append(import_times(py) | peak(py, cache) | tiny_run(py, cache, work))
        print(f'round {r + 1} {py}: ' + ', '.join(f'{k} {v:.2f}' for k, v in
                                                    results[py][-1].items()), file=sys.stderr)
  summary = {py: {k: statistics.median(x[k] for x in rs) for k in rs[0]}
             for py, rs in results.items()}
  versions = {py: subprocess.run([py, '-c', 'import ml_dtypes, jax; print(ml_dtypes.__version__, '
                                  'jax.__version__)'], capture_output=True, text=True,
                                 check=True).stdout.split() for py in pythons}
  if args.json:
    print(json.dumps({'cpu': cpu_name(), 'rounds': args.rounds, 'medians': summary,
                      'versions': versions}))
    return
  keys = list(summary[sys.executable])
  print('| interpreter (ml_dtypes, jax) | ' + ' | '.join(keys) + ' |')
  print('|---' * (len(keys) + 1) + '|')
  for py, s in summary.items():
    print(f'| {py} ({", ".join(versions[py])}) | ' + ' | '.join(f'{s[k]:.2f}' for k in keys) + ' |')
  print(f'(medians of {args.rounds} rounds, seconds unless named; {cpu_name()})')


if __name__ == '__main__':
  main()
