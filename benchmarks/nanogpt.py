"""Side by side with nanoGPT: its README's CPU run on tinyshakespeare, char level, and ours.

    git clone https://github.com/karpathy/nanoGPT /tmp/nanoGPT    # its public source, not vendored
    python benchmarks/nanogpt.py --nanogpt /tmp/nanoGPT            # 2000 iterations each, 1 round
    python benchmarks/nanogpt.py --nanogpt /tmp/nanoGPT --iters 300 --rounds 2 --json

nanoGPT's README CPU command (4 layers, 4 heads, 128 wide, block 64, batch 12, no
dropout, 2000 iterations, lr 1e-3 with 100 warm-up steps and a cosine to 1e-4, AdamW
b2 0.99, weight decay 0.1 on every matrix, clip 1.0) runs on its 90/10 split of
tinyshakespeare (data/shakespeare_char/prepare.py; the text is copied in from --text so
nothing is downloaded). Ours is `trainer train` on the same two halves, prepared with
`trainer prepare --tokenizer byte` (the text is ASCII, so one byte is one character; our
vocabulary is 257 ids against nanoGPT's 65, and our layer norms keep their bias) with the
same shape, batch, schedule and optimizer, logging every step as nanoGPT does, no
TensorBoard. Ours runs three times per round: as shipped (`ours`: on a CPU the default
`model.scan_unroll=-1` unrolls this 4-layer model's layer loop away, keeping the stacked
parameters), with `--config.model.scan_unroll=1` (`ours_scan`: the layers in one nn.scan
loop, the default on accelerators and for deeper models) and with
`--config.model.scan_layers=False` (`ours_in_line`: four separate layers; docs/performance.md,
section 9). Rounds alternate nanoGPT and ours (A B C D A B C D) so drift hits all alike.

Per-iteration time: nanoGPT's median "iter N: ... time X ms" line; ours, the median
step_time_s of metrics.jsonl (steps and data waits, without compile and evaluation).

Validation loss, nats per character, two ways:
* `val_loss`, each framework's own figure: nanoGPT's last "val loss" (the mean of
  --eval_iters random batches: 200 by default, 150k characters drawn from the
  111k-character validation half); ours, the last eval_loss of metrics.jsonl.
* `val_loss_rows`, one evaluator for both, the figure the loss target compares: the
  validation half cut into consecutive rows of 65 characters (64 predicted per row), as
  many whole batches of 12 as it holds. Ours evaluates exactly those rows during training
  (eval_batches covers them); nanoGPT's final weights (its ckpt.pt, saved at the last
  iteration with --always_save_checkpoint=True) are scored on the same rows here with its
  own model.py.
"""
import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[0] = ROOT
from benchmarks.machine import cpu_name  # noqa: E402

# Our runs: name, the summary keys' suffix, the layer-loop overrides.
OURS = (('ours', '', {}),
        ('ours_scan', '_scan', {'model.scan_unroll': 1}),
        ('ours_in_line', '_in_line', {'model.scan_layers': False}))
SHARED_TEXT = os.path.join(ROOT, '..', 'shared', 'data', 'tinyshakespeare', 'input.txt')
NEEDED = ('train.py', 'model.py', 'configurator.py', 'config/train_shakespeare_char.py',
          'data/shakespeare_char/prepare.py')
BATCH, BLOCK, LAYERS, HEADS, WIDTH = 12, 64, 4, 4, 128


def eval_interval(iters: int) -> int:
  """nanoGPT's config evaluates every 250 iterations; a shorter run evaluates at its end."""
  return 250 if iters % 250 == 0 else iters


def log(*args):
  print(*args, file=sys.stderr, flush=True)


def prepare_nanogpt(nano: str, text: str):
  """nanoGPT's own prepare.py on our copy of the text: train.bin, val.bin, meta.pkl."""
  missing = [f for f in NEEDED if not os.path.isfile(os.path.join(nano, f))]
  if missing:
    sys.exit(f'error: --nanogpt {nano}: no {", ".join(missing)}; clone '
             'https://github.com/karpathy/nanoGPT there')
  data = os.path.join(nano, 'data', 'shakespeare_char')
  shutil.copyfile(text, os.path.join(data, 'input.txt'))
  subprocess.run([sys.executable, 'prepare.py'], cwd=data, check=True, capture_output=True)


def prepare_ours(text: str, work: str) -> str:
  """The same 90/10 character split as nanoGPT's prepare.py, as one document per half."""
  with open(text) as f:
    chars = f.read()
  cut = int(len(chars) * 0.9)
  for name, part in (('train.txt', chars[:cut]), ('val.txt', chars[cut:])):
    with open(os.path.join(work, name), 'w') as f:
      f.write(part)
  out = os.path.join(work, 'data')
  subprocess.run([sys.executable, '-m', 'trainer', 'prepare', '--input', f'{work}/train.txt',
                  '--val_input', f'{work}/val.txt', '--output', out, '--tokenizer', 'byte',
                  '--min_length', '1', '--near_threshold', '1'], check=True, capture_output=True)
  return out


def val_rows(work: str) -> int:
  """Rows of BLOCK + 1 characters that both evaluate: whole batches within the validation half."""
  return os.path.getsize(os.path.join(work, 'val.txt')) // (BLOCK + 1) // BATCH * BATCH


def nanogpt_rows_loss(nano: str, out_dir: str, rows: int) -> tuple[float, int]:
  """(mean loss, iteration) of nanoGPT's ckpt.pt on the first `rows` consecutive rows of its
  val.bin, scored by its own model.py in batches of BATCH."""
  import numpy as np
  import torch
  sys.path.insert(0, nano)
  try:
    from model import GPT, GPTConfig
  finally:
    sys.path.remove(nano)
  ckpt = torch.load(os.path.join(out_dir, 'ckpt.pt'), map_location='cpu')
  with contextlib.redirect_stdout(sys.stderr):  # It prints its parameter count.
    net = GPT(GPTConfig(**ckpt['model_args']))
  net.load_state_dict({k.removeprefix('_orig_mod.'): v for k, v in ckpt['model'].items()})
  net.eval()
  val = np.fromfile(os.path.join(nano, 'data', 'shakespeare_char', 'val.bin'), np.uint16)
  windows = torch.from_numpy(val[:rows * (BLOCK + 1)].astype(np.int64).reshape(rows, BLOCK + 1))
  with torch.no_grad():
    losses = [net(w[:, :-1].contiguous(), w[:, 1:].contiguous())[1].item()
              for w in windows.split(BATCH)]
  return statistics.fmean(losses), ckpt['iter_num']


def run_nanogpt(nano: str, iters: int, eval_iters: int, work: str) -> dict:
  cmd = [sys.executable, 'train.py', 'config/train_shakespeare_char.py', '--device=cpu',
         '--compile=False', f'--eval_iters={eval_iters}', '--log_interval=1',
         '--always_save_checkpoint=True',
         f'--block_size={BLOCK}', f'--batch_size={BATCH}', f'--n_layer={LAYERS}',
         f'--n_head={HEADS}', f'--n_embd={WIDTH}', f'--max_iters={iters}',
         f'--lr_decay_iters={iters}', '--dropout=0.0', f'--out_dir={work}/nano-out',
         f'--eval_interval={eval_interval(iters)}']
  start = time.perf_counter()
  out = subprocess.run(cmd, cwd=nano, check=True, capture_output=True, text=True).stdout
  wall = time.perf_counter() - start
  times = [float(t) for t in re.findall(r'^iter \d+: loss [\d.]+, time ([\d.]+)ms', out, re.M)]
  vals = re.findall(r'^step (\d+): train loss ([\d.]+), val loss ([\d.]+)', out, re.M)
  rows_loss, rows_step = nanogpt_rows_loss(nano, f'{work}/nano-out', val_rows(work))
  assert rows_step == int(vals[-1][0]) == iters, (rows_step, vals[-1], iters)
  return {'ms_per_iter': statistics.median(times[1:]), 'val_loss': float(vals[-1][2]),
          'val_loss_rows': rows_loss, 'val_step': int(vals[-1][0]), 'wall_s': wall}


def run_ours(data_dir: str, iters: int, work: str, layers: dict) -> dict:
  workdir = os.path.join(work, f'ours-{time.monotonic_ns()}')
  overrides = {
      'data.path': data_dir, 'model.vocab_size': 257, 'model.max_len': BLOCK,
      'model.embed_dim': WIDTH, 'model.num_layers': LAYERS, 'model.num_heads': HEADS,
      'model.mlp_dim': 4 * WIDTH, 'model.use_bias': False, 'model.dropout': 0.0,
      'model.embed_dropout': 0.0, 'model.attn_dropout': 0.0,
      'train.steps': iters, 'train.batch_size': BATCH, 'train.seq_len': BLOCK,
      'train.log_every': 1, 'train.eval_every': eval_interval(iters),
      'train.eval_batches': val_rows(work) // BATCH,
      'train.sample_tokens': 0, 'optim.lr': 1e-3, 'optim.warmup_steps': 100,
      'optim.schedule': 'cosine', 'optim.min_lr_ratio': 0.1, 'optim.b1': 0.9,
      'optim.b2': 0.99, 'optim.weight_decay': 0.1, 'optim.decay_embeddings': True,
      'optim.clip_norm': 1.0, 'checkpoint.every': 0, 'log.tensorboard': False,
      'log.progress': 'lines', 'mesh.fsdp': 1, **layers}
  cmd = [sys.executable, '-m', 'trainer', 'train', f'--workdir={workdir}',
         *[f'--config.{k}={v}' for k, v in overrides.items()]]
  start = time.perf_counter()
  subprocess.run(cmd, check=True, capture_output=True, text=True)
  wall = time.perf_counter() - start
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  steps = [r['step_time_s'] for r in records if 'loss' in r and r['step'] > 1]
  evals = [r for r in records if 'eval_loss' in r]
  loss = evals[-1]['eval_loss']  # Exactly the val_rows(work) rows: the same for both.
  return {'ms_per_iter': 1000 * statistics.median(steps), 'val_loss': loss,
          'val_loss_rows': loss, 'val_step': evals[-1]['step'], 'wall_s': wall}


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--nanogpt', required=True, help='a checkout of karpathy/nanoGPT')
  p.add_argument('--text', default=SHARED_TEXT, help="tinyshakespeare's input.txt")
  p.add_argument('--iters', type=int, default=2000)
  p.add_argument('--eval_iters', type=int, default=200)
  p.add_argument('--rounds', type=int, default=1)
  p.add_argument('--json', action='store_true', help='one JSON object on stdout')
  args = p.parse_args()
  if not os.path.isfile(args.text):
    sys.exit(f'error: --text {args.text}: no such file; give tinyshakespeare\'s input.txt')
  log(f'cpu: {cpu_name()}')
  prepare_nanogpt(args.nanogpt, args.text)
  with tempfile.TemporaryDirectory(prefix='nanogpt-bench-') as work:
    data_dir = prepare_ours(args.text, work)
    runs = {'nanogpt': [], **{name: [] for name, _, _ in OURS}}
    layers = {name: overrides for name, _, overrides in OURS}
    for r in range(args.rounds):
      for name in runs:
        res = (run_nanogpt(args.nanogpt, args.iters, args.eval_iters, work) if name == 'nanogpt'
               else run_ours(data_dir, args.iters, work, layers[name]))
        runs[name].append(res)
        log(f'round {r + 1} {name}: {res["ms_per_iter"]:.1f} ms/iter, val loss '
            f'{res["val_loss"]:.4f} (same rows {res["val_loss_rows"]:.4f}) at step '
            f'{res["val_step"]}, {res["wall_s"]:.0f} s wall')
  summary = {name: {k: statistics.median(x[k] for x in rs) for k in rs[0]}
             for name, rs in runs.items()}
  for name, suffix, _ in OURS:
    summary['speed_ratio' + suffix] = summary['nanogpt']['ms_per_iter'] / summary[name]['ms_per_iter']
    summary['val_loss_diff' + suffix] = (summary[name]['val_loss_rows'] -
                                         summary['nanogpt']['val_loss_rows'])
  summary['cpu'], summary['iters'], summary['rounds'] = cpu_name(), args.iters, args.rounds
  if args.json:
    print(json.dumps(summary))
    return
  print('| | ms per iteration | val loss, same rows | val loss, own figure | wall s |\n'
        '|---|---|---|---|---|')
  for name in runs:
    s = summary[name]
    print(f'| {name} | {s["ms_per_iter"]:.1f} | {s["val_loss_rows"]:.4f} | {s["val_loss"]:.4f} '
          f'| {s["wall_s"]:.0f} |')
  for name, suffix, _ in OURS:
    print(f'{name} speed / nanoGPT speed: {summary["speed_ratio" + suffix]:.2f}x; val loss '
          f'{name} - nanoGPT on the same rows: {summary["val_loss_diff" + suffix]:+.4f}')
  print(f'({args.iters} iterations, {args.rounds} rounds, {cpu_name()})')


if __name__ == '__main__':
  main()
