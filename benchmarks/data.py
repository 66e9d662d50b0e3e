"""Data throughput: `trainer prepare` (MB of text per second) and the loader (tokens/s per host).

    python benchmarks/data.py                     # ../shared/data texts, prints a Markdown table
    python benchmarks/data.py --input FILE_OR_DIR --separator '\\n\\n' --batches 200
    python benchmarks/data.py --scale_mb 200      # prepare on 1 and 2 workers, ~200 MB corpus
    python benchmarks/data.py --scale_mb 20       # the same, quick
    python benchmarks/data.py --profile_mb 200    # cProfile of a one-worker prepare
    python benchmarks/data.py --serialize         # one output record: TFDS's encoder vs ours

``--scale_mb`` builds a corpus from ../shared/data texts (3 KB documents, copied with
word-level perturbations: light ones make near duplicates, heavy ones new documents),
runs ``trainer prepare --workers N`` on it in a fresh process per N (interleaved:
1, 2, 1, 2 with ``--repeats 2``), and reports MB/s, seconds by phase, the peak RSS of
the largest process, whether the outputs are byte-identical, and the hours 40 GB would
take on 1, 8 and 64 cores (the sequential phases scaled by size, the parallel ones by
size over cores, at the per-worker rate measured with 2 workers). It also measures the
machine's own ceiling for 2 processes: stage 1's loop alone and two copies side by side.

Prepare is timed on the whole pipeline (read, exact dedup, GPT-2 BPE, length filter,
near-dedup, TFDS array_record write), once with and once without the near-duplicate
stage, since that stage costs the most. The loader is timed on the prepared dataset
at the gpt2-124M shape (seq_len 1024, batch 8 on one host) after a warm-up batch; the
figure to beat is 10x what training that shape consumes on this CPU (~180 tokens/s,
docs/benchmarks.md).
"""
import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Replace the script's own directory: benchmarks/profile.py would shadow the stdlib `profile`.
sys.path[0] = ROOT

from trainer import config, data, prepare  # noqa: E402

SHARED = next((p for p in (os.path.join(os.path.dirname(ROOT), 'shared', 'data'),  # main checkout
                           os.path.join(os.path.dirname(os.path.dirname(ROOT)), 'shared', 'data'))
               if os.path.isdir(p)), os.path.join(os.path.dirname(ROOT), 'shared', 'data'))
TRAINING_TOKENS_PER_S = 180  # gpt2-124M shape on this 2-vCPU machine, upper end (docs/benchmarks.md).


def time_prepare(inputs, out, separator, near_threshold, bpe_dir) -> dict:
  started = time.perf_counter()
  stats = prepare.prepare(prepare.Options(inputs=inputs, output=out, separator=separator,
                                          near_threshold=near_threshold, bpe_dir=bpe_dir,
                                          overwrite=True), say=lambda *a: None)
  seconds = time.perf_counter() - started
  return {'mb': stats['bytes_in'] / 1e6, 'seconds': seconds,
          'mb_per_s': stats['bytes_in'] / 1e6 / seconds, 'documents_in': stats['documents_in'],
          'documents_out': stats['documents_out'], 'tokens_out': stats['tokens_out']}


def time_loader(path: str, seq_len: int, batch: int, batches: int) -> float:
  cfg = config.load(f'{ROOT}/configs/gpt2.py:gpt2', {
      'data.path': path, 'train.seq_len': str(seq_len), 'train.batch_size': str(batch)})
  it = iter(data.load(cfg, process_index=0, process_count=1).train.to_iter_dataset())
  next(it)  # Warm-up: opens the files and fills the read-ahead buffer.
  started = time.perf_counter()
  tokens = sum(next(it).size for _ in range(batches))
  return tokens / (time.perf_counter() - started)


def build_corpus(root: str, megabytes: float, seed: int = 0) -> int:
  """~``megabytes`` of JSON Lines documents from ../shared/data, with perturbed copies."""
  import json
  import random
  texts = [open(os.path.join(SHARED, 'tinyshakespeare', 'input.txt')).read(),
           open(os.path.join(SHARED, 'wikitext-2-raw', 'wiki.test.raw')).read()]
  with open(os.path.join(SHARED, 'lambada', 'lambada_test.jsonl')) as f:
    texts.append('\n'.join(json.loads(line)['text'] for line in f))
  base, doc = [], []
  for line in '\n'.join(texts).splitlines():
    doc.append(line)
    if sum(map(len, doc)) > 3000:
      base.append('\n'.join(doc))
      doc = []
  vocab = sorted(set(' '.join(base).split()))
  rng, written, part = random.Random(seed), 0, 0
  os.makedirs(root, exist_ok=True)
  out = open(os.path.join(root, f'part{part:03d}.jsonl'), 'w')
  while written < megabytes * 1e6:
    text = rng.choice(base)
    # 2% of words changed: a near duplicate (5-gram Jaccard ~0.8); 40%: a new document.
    rate = 0.02 if rng.random() < 0.3 else 0.4
    words = [w if rng.random() > rate else rng.choice(vocab) for w in text.split(' ')]
    line = json.dumps({'text': ' '.join(words)}) + '\n'
    out.write(line)
    written += len(line)
    if out.tell() > 20e6:
      out.close()
      part += 1
      out = open(os.path.join(root, f'part{part:03d}.jsonl'), 'w')
  out.close()
  return written


_RUN = '''
import json, resource, sys, time
sys.path.insert(0, {root!r})
from trainer import prepare
if __name__ == '__main__':
  stats = prepare.prepare(prepare.Options(inputs=[{corpus!r}], output={out!r}, bpe_dir={bpe!r},
                                          workers={workers}, overwrite=True), say=lambda *a: None)
  use = [resource.getrusage(r) for r in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
  # Pool workers are the forkserver's children, not ours: CPU time is only whole at 1 worker.
  cpu = sum(u.ru_utime + u.ru_stime for u in use) if {workers} == 1 else float('nan')
  print(json.dumps({{**stats, 'peak_rss_mb': max(u.ru_maxrss for u in use) / 1024,
                    'cpu_seconds': cpu}}))
'''


def time_scale(corpus: str, out: str, workers: int, bpe_dir: str) -> dict:
  """One `prepare --workers N` in a fresh process; its stats plus peak RSS."""
  import subprocess
  code = _RUN.format(root=ROOT, corpus=corpus, out=out, bpe=bpe_dir, workers=workers)
  script = os.path.join(os.path.dirname(out), 'run_prepare.py')
  with open(script, 'w') as f:
    f.write(code)
  done = subprocess.run([sys.executable, script], capture_output=True, text=True, check=True,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  return json.loads(done.stdout.strip().splitlines()[-1])


def _digest_dir(path: str) -> str:
  import hashlib
  h = hashlib.sha256()
  for dirpath, _, files in sorted(os.walk(path)):
    for name in sorted(files):
      if 'array_record' in name:
        h.update(open(os.path.join(dirpath, name), 'rb').read())
  return h.hexdigest()


def _busy_loop(args) -> float:
  """Stage 1's per-document work (GPT-2 BPE, shingles, MinHash) on ``docs``: seconds taken."""
  docs, bpe_dir = args
  from trainer import dedup, stages
  tok, perms = stages.tokenizer('gpt2', bpe_dir), dedup.permutations(stages.NUM_PERM)
  started = time.perf_counter()
  for text in docs:
    tok.encode(text)
    dedup.signature(dedup.shingle_hashes(text, 5), perms)
  return time.perf_counter() - started


def two_process_ceiling(corpus: str, bpe_dir: str) -> float:
  """How much work two processes get done at once on this machine, relative to one alone.

  The same CPU-bound loop in 1 process, then in 2 at the same time: 2 x t1 / t2. Shared
  caches, memory bandwidth and the hypervisor's scheduling of the vCPUs put this below 2;
  no worker count can scale better than it.
  """
  import multiprocessing
  with open(os.path.join(corpus, 'part000.jsonl')) as f:
    docs = [json.loads(line)['text'] for _, line in zip(range(3000), f)]
  with multiprocessing.get_context('forkserver').Pool(2) as pool:
    pool.map(_busy_loop, [(docs[:50], bpe_dir)] * 2)  # Warm: tokenizer loaded in both.
    alone = pool.map(_busy_loop, [(docs, bpe_dir)])[0]
    together = max(pool.map(_busy_loop, [(docs, bpe_dir)] * 2))
  return 2 * alone / together


def scale_main(args):
  with tempfile.TemporaryDirectory() as tmp:
    corpus = os.path.join(tmp, 'corpus')
    mb = build_corpus(corpus, args.scale_mb) / 1e6
    ceiling = two_process_ceiling(corpus, args.bpe_dir)
    rows, digests = [], {}
    for _ in range(args.repeats):
      for workers in (1, 2):
        out = os.path.join(tmp, f'out{workers}')
        rows.append((workers, time_scale(corpus, out, workers, args.bpe_dir)))
        digests[workers] = _digest_dir(out)
  print(f'corpus: {mb:.0f} MB JSON Lines from ../shared/data, '
        f'{rows[0][1]["documents_in"]:,} documents\n')
  print('| workers | MB/s | s read / stages / select / total | CPU s | MB per CPU-s | kept | '
        'near dups removed | peak RSS MB |')
  print('|---|---|---|---|---|---|---|---|')
  for workers, r in rows:
    print(f"| {workers} | {r['mb_per_s']:.2f} | {r['seconds_read']:.0f} / {r['seconds_stages']:.0f}"
          f" / {r['seconds_select']:.0f} / {r['seconds']:.0f} | {r.get('cpu_seconds', 0):.0f} | "
          f"{r['bytes_in'] / 1e6 / r.get('cpu_seconds', float('nan')):.2f} | {r['documents_out']:,} | "
          f"{r['removed_near_duplicates']:,} | {r['peak_rss_mb']:.0f} |")
  ones = [r for w, r in rows if w == 1]
  twos = [r for w, r in rows if w == 2]
  ratios = [b['mb_per_s'] / a['mb_per_s'] for a, b in zip(ones, twos)]  # Each interleaved pair.
  two = twos[-1]
  print(f'\n2 workers / 1 worker: {" ".join(f"{x:.2f}x" for x in ratios)} (mean '
        f'{sum(ratios) / len(ratios):.2f}x); array_record bytes identical: {digests[1] == digests[2]}')
  print(f'this machine\'s ceiling: 2 processes at once do {ceiling:.2f}x the work of one '
        '(the same stage-1 loop, alone and side by side)')
  size = two['bytes_in'] / 1e6
  serial = two['seconds'] - two['seconds_stages']
  for cores in (1, 8, 64):
    hours = 40e3 / size * (serial + two['seconds_stages'] * 2 / cores) / 3600
    print(f'projected 40 GB on {cores} cores: {hours:.1f} h')


def profile_main(args):
  """One-worker prepare of a --profile_mb corpus under cProfile: where the time goes."""
  import cProfile
  import pstats
  with tempfile.TemporaryDirectory() as tmp:
    corpus = os.path.join(tmp, 'corpus')
    build_corpus(corpus, args.profile_mb)
    profiler = cProfile.Profile()
    profiler.enable()
    prepare.prepare(prepare.Options(inputs=[corpus], output=os.path.join(tmp, 'out'),
                                    bpe_dir=args.bpe_dir, workers=1), say=lambda *a: None)
    profiler.disable()
  stats = pstats.Stats(profiler)
  stats.sort_stats('cumulative').print_stats(r'trainer/|encode_ordinary|serializ', 30)


def serialize_main():
  """Microseconds per 1,000-token record: TFDS's serialize_example against stages.serialize."""
  import numpy as np
  import tensorflow_datasets as tfds
  from trainer import stages
  features = tfds.features.FeaturesDict(
      {'tokens': tfds.features.Tensor(shape=(None,), dtype=np.uint16)})
  tokens = np.random.default_rng(0).integers(0, 50257, 1000).astype(np.uint16)
  for name, f in (('FeaturesDict.serialize_example', lambda: features.serialize_example(
      {'tokens': tokens})), ('stages.serialize', lambda: stages.serialize(tokens))):
    f()
    started = time.perf_counter()
    for _ in range(2000):
      f()
    print(f'{name}: {(time.perf_counter() - started) / 2000 * 1e6:.0f} us per record')


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--input', nargs='+', default=[
      os.path.join(SHARED, 'tinyshakespeare', 'input.txt'), os.path.join(SHARED, 'wikitext-2-raw')])
  parser.add_argument('--separator', default=r'\n\n')
  parser.add_argument('--bpe_dir', default=os.path.join(SHARED, 'gpt2_bpe'))
  parser.add_argument('--batches', type=int, default=100)
  parser.add_argument('--scale_mb', type=float, help='prepare on 1 and 2 workers, this big a corpus')
  parser.add_argument('--repeats', type=int, default=1, help='interleaved runs per worker count')
  parser.add_argument('--profile_mb', type=float, help='cProfile a one-worker prepare this big')
  parser.add_argument('--serialize', action='store_true', help='time one record\'s encoding')
  args = parser.parse_args()
  if args.scale_mb:
    return scale_main(args)
  if args.profile_mb:
    return profile_main(args)
  if args.serialize:
    return serialize_main()
  separator = args.separator.encode().decode('unicode_escape')
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'data')
    rows = [('prepare, no near-dedup', time_prepare(args.input, out, separator, 1.0, args.bpe_dir)),
            ('prepare, all stages', time_prepare(args.input, out, separator, 0.5, args.bpe_dir))]
    loader = time_loader(out, 1024, 8, args.batches)
  print('| stage | MB in | documents in / out | tokens out | seconds | MB/s |')
  print('|---|---|---|---|---|---|')
  for name, r in rows:
    print(f"| {name} | {r['mb']:.2f} | {r['documents_in']:,} / {r['documents_out']:,} | "
          f"{r['tokens_out']:,} | {r['seconds']:.2f} | {r['mb_per_s']:.2f} |")
  print(f'\nloader, seq_len 1024 x batch 8, one host: {loader:,.0f} tokens/s = '
        f'{loader / TRAINING_TOKENS_PER_S:,.0f}x the ~{TRAINING_TOKENS_PER_S} tokens/s that '
        'training the gpt2-124M shape consumes here')


if __name__ == '__main__':
  main()
