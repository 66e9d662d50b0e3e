"""Start-up cost of the TensorBoard writer: tensorboardX imported as is (it pulls in torch when
torch is installed) against metrics._summary_writer (torch masked).

    python benchmarks/tensorboard_import.py            # 3 interleaved fresh processes each

Each figure is the wall time of one fresh `python -c` that only does the import.
"""
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.machine import cpu_name  # noqa: E402

VARIANTS = {
    'import tensorboardX': 'from tensorboardX import SummaryWriter',
    'metrics._summary_writer()': 'from trainer import metrics; metrics._summary_writer()',
    'baseline: import trainer.metrics': 'from trainer import metrics',
}


def once(code: str) -> float:
  start = time.perf_counter()
  subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True,
                 env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  return time.perf_counter() - start


def main():
  print(f'{cpu_name()}; {time.strftime("%Y-%m-%d")}\n')
  times = {name: [] for name in VARIANTS}
  for _ in range(3):  # Interleaved, so drift hits every variant alike.
    for name, code in VARIANTS.items():
      times[name].append(once(code))
  print('| import | median wall (s) |\n|---|---:|')
  for name, values in times.items():
    print(f'| {name} | {statistics.median(values):.2f} |')


if __name__ == '__main__':
  main()
