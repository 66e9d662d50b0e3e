"""Data throughput: `trainer prepare` (MB of text per second) and the loader (tokens/s per host).

    python benchmarks/data.py                     # ../shared/data texts, prints a Markdown table
    python benchmarks/data.py --input FILE_OR_DIR --separator '\\n\\n' --batches 200

Prepare is timed on the whole pipeline (read, exact dedup, GPT-2 BPE, length filter,
near-dedup, TFDS array_record write), once with and once without the near-duplicate
stage, since that stage costs the most. The loader is timed on the prepared dataset
at the gpt2-124M shape (seq_len 1024, batch 8 on one host) after a warm-up batch; the
figure to beat is 10x what training that shape consumes on this CPU (~180 tokens/s,
docs/benchmarks.md).
"""
import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from trainer import config, data, prepare  # noqa: E402

SHARED = os.path.join(os.path.dirname(ROOT), 'shared', 'data')
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


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--input', nargs='+', default=[
      os.path.join(SHARED, 'tinyshakespeare', 'input.txt'), os.path.join(SHARED, 'wikitext-2-raw')])
  parser.add_argument('--separator', default=r'\n\n')
  parser.add_argument('--bpe_dir', default=os.path.join(SHARED, 'gpt2_bpe'))
  parser.add_argument('--batches', type=int, default=100)
  args = parser.parse_args()
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
