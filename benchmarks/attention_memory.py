"""TPU memory of the train step with XLA's attention and with the splash kernel (`trainer compile`).

    python benchmarks/attention_memory.py                       # gpt2-124M, v5e-4, 1024 and 2048
    python benchmarks/attention_memory.py --topology v4-8 --remat dots
    python benchmarks/attention_memory.py --seq 1024 --remat dots --set model.num_layers=2 model.vocab_size=257

Compiles our real train step for a TPU topology on this machine (libtpu's compile-only
devices; no TPU needed) with `--config.model.attention=xla` and `=auto` (the splash
kernel on TPU), for each sequence length and remat policy, the same tokens per device
(batch x length constant), bfloat16, dropout off, and prints XLA's per-device
temporaries and peak. Each compile takes minutes on a 2-core machine; libtpu's
convolution-window search needs a large stack, so the script raises its own limit.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[0] = ROOT
from benchmarks.machine import cpu_name  # noqa: E402

GIB = 2**30


def compile_report(args, seq: int, attention: str, remat: str) -> dict:
  batch = args.tokens_per_step // seq
  cmd = [sys.executable, '-m', 'trainer', 'compile', f'--config={args.config}',
         f'--topology={args.topology}', '--json', '--config.model.dtype=bfloat16',
         f'--config.train.seq_len={seq}', f'--config.model.max_len={max(seq, 1024)}',
         f'--config.train.batch_size={batch}', f'--config.model.remat={remat}',
         '--config.model.dropout=0', '--config.model.attn_dropout=0',
         '--config.model.embed_dropout=0', f'--config.model.attention={attention}',
         *[f'--config.{kv}' for kv in args.set]]
  start = time.perf_counter()
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
  report = json.loads(out.stdout)
  report['compile_s'] = time.perf_counter() - start
  report['batch'] = batch
  return report


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', default='configs/gpt2.py:gpt2')
  p.add_argument('--topology', default='v5e-4')
  p.add_argument('--seq', default='1024,2048')
  p.add_argument('--remat', default='dots,none')
  p.add_argument('--tokens_per_step', type=int, default=16384, help='global batch x length')
  p.add_argument('--set', nargs='*', default=[], metavar='KEY=VALUE',
                 help='more config overrides, e.g. model.num_layers=2')
  args = p.parse_args()
  soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
  want = 256 * 2**20
  if soft != resource.RLIM_INFINITY and soft < want:
    resource.setrlimit(resource.RLIMIT_STACK, (want if hard == resource.RLIM_INFINITY
                                               else min(want, hard), hard))
  print(f'{time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}; cpu: {cpu_name()}; '
        f'{args.config} {" ".join(args.set)} on {args.topology}, bfloat16, '
        f'{args.tokens_per_step} tokens per step')
  print('\n| length x batch | remat | attention | temporaries GiB | peak GiB | compile s |')
  print('|---|---|---|---|---|---|')
  for remat in args.remat.split(','):
    for seq in map(int, args.seq.split(',')):
      for attention in ('xla', 'auto'):
        r = compile_report(args, seq, attention, remat)
        name = 'splash (auto)' if attention == 'auto' else 'xla'
        print(f'| {seq} x {r["batch"]} | {remat} | {name} | {r["temp_bytes_per_device"] / GIB:.2f} '
              f'| {r["peak_bytes_per_device"] / GIB:.2f} | {r["compile_s"]:.0f} |', flush=True)


if __name__ == '__main__':
  main()
