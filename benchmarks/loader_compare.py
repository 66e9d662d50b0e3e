"""Loader throughput of two checkouts on one prepared dataset, interleaved (tokens/s per host).

    git archive COMMIT | tar -x -C /tmp/before
    python benchmarks/loader_compare.py --dataset PREPARED_DIR --before /tmp/before [--after .]

Each measurement runs in a fresh process: the gpt2-124M shape (seq_len 1024, batch 8,
one host), 100 batches after a warm-up batch, as `benchmarks/data.py` times it.
Rounds alternate before/after so that load from other jobs hits both alike.
"""
import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE = '''
import os, sys, time
os.environ['JAX_PLATFORMS'] = 'cpu'
sys.path.insert(0, sys.argv[1])
from trainer import config, data
cfg = config.load(sys.argv[1] + '/configs/gpt2.py:gpt2', {
    'data.path': sys.argv[2], 'train.seq_len': '1024', 'train.batch_size': '8'})
it = iter(data.load(cfg, process_index=0, process_count=1).train.to_iter_dataset())
next(it)
started = time.perf_counter()
tokens = sum(next(it).size for _ in range(int(sys.argv[3])))
print(tokens / (time.perf_counter() - started))
'''


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--dataset', required=True, help='a `trainer prepare` directory')
  parser.add_argument('--before', required=True, help='checkout of the earlier code')
  parser.add_argument('--after', default=ROOT)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--batches', type=int, default=100)
  args = parser.parse_args()
  print('| round | before | after |\n|---|---|---|')
  for r in range(1, args.rounds + 1):
    figures = []
    for root in (args.before, args.after):
      out = subprocess.run([sys.executable, '-c', CODE, os.path.abspath(root), args.dataset,
                            str(args.batches)], capture_output=True, text=True, cwd='/tmp',
                           timeout=900, check=True)
      figures.append(float(out.stdout.strip().splitlines()[-1]))
    print(f'| {r} | {figures[0]:,.0f} | {figures[1]:,.0f} |', flush=True)


if __name__ == '__main__':
  main()
