"""Token streams for training and evaluation, read with grain.

The embedded default corpus is the running interpreter's own standard library:
real text that exists wherever Python does, so the first run needs no download.
Documents are joined with the end-of-text token and cut into windows of
``seq_len + 1`` tokens; grain shuffles them per epoch, gives each process its
share, and its iterator state is small enough to live in a checkpoint.
"""
from __future__ import annotations

import dataclasses
import pathlib
import sysconfig

import grain
import jax
import numpy as np


class ByteTokenizer:
  """Bytes 0-255 are their own ids; 256 is end-of-text. Valid ids for every vocabulary."""
  name = 'byte'
  vocab_size = 257
  eot = 256

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32)

  def decode(self, ids) -> str:
    return bytes(int(i) for i in ids if 0 <= i < 256).decode('utf-8', errors='replace')


def stdlib_files() -> list[pathlib.Path]:
  """The .py files of the running interpreter's standard library, in a fixed order."""
  root = pathlib.Path(sysconfig.get_paths()['stdlib'])
  skip = ('site-packages', 'dist-packages', '__pycache__')
  return sorted(p for p in root.rglob('*.py') if not any(s in p.parts for s in skip))


def stdlib_corpus(max_bytes: int, val_every_nth_file: int, tokenizer=ByteTokenizer()):
  """(train ids, validation ids) from about max_bytes of source; every n-th file is held out.

  Files are taken in a fixed pseudo-random order (so a small budget still spans the
  library); each document ends with the end-of-text token.
  """
  files = stdlib_files()
  if not files:
    raise ValueError('found no standard-library source files next to this interpreter; '
                     'set --config.data.path to a prepared dataset')
  docs, total = [], 0
  for i in np.random.RandomState(0).permutation(len(files)):
    docs.append(tokenizer.encode(files[i].read_text('utf-8', errors='replace')))
    total += len(docs[-1])
    if total >= max_bytes:
      break
  n = min(val_every_nth_file, len(docs))
  eot = np.array([tokenizer.eot], np.int32)
  join = lambda parts: np.concatenate([x for d in parts for x in (d, eot)])
  held_out = set(range(n - 1, len(docs), n))
  return (join([d for i, d in enumerate(docs) if i not in held_out]),
          join([d for i, d in enumerate(docs) if i in held_out]))


class Windows:
  """Non-overlapping windows of ``length + 1`` tokens from one long token array."""

  def __init__(self, tokens: np.ndarray, length: int):
    self.tokens, self.length = tokens, length

  def __len__(self) -> int:
    return (len(self.tokens) - 1) // self.length

  def __getitem__(self, i: int) -> np.ndarray:
    start = int(i) * self.length
    return np.asarray(self.tokens[start:start + self.length + 1], np.int32)


def _local_batch(global_batch: int) -> int:
  count = jax.process_count()
  if global_batch % count:
    raise ValueError(f'global batch {global_batch} is not divisible by {count} processes')
  return global_batch // count


def train_dataset(tokens: np.ndarray, seq_len: int, global_batch: int, seed: int):
  """Endless, shuffled (reshuffled every epoch), per-process batches of [b, seq_len + 1]."""
  ds = grain.MapDataset.source(Windows(tokens, seq_len)).seed(seed).shuffle()
  ds = ds[jax.process_index()::jax.process_count()]
  return ds.repeat(None).batch(_local_batch(global_batch), drop_remainder=True)


def eval_batches(tokens: np.ndarray, seq_len: int, global_batch: int, count: int) -> list:
  """A fixed list of validation batches (the first windows, in order)."""
  ds = grain.MapDataset.source(Windows(tokens, seq_len))
  ds = ds[jax.process_index()::jax.process_count()].repeat(None)
  ds = ds.batch(_local_batch(global_batch), drop_remainder=True)
  return [ds[i] for i in range(count)]


@dataclasses.dataclass
class Streams:
  tokenizer: ByteTokenizer
  train: grain.MapDataset
  val: list


def load(cfg) -> Streams:
  """The training and validation streams a config asks for."""
  tokenizer = ByteTokenizer()
  if cfg.data.path:
    raise ValueError('--config.data.path: prepared datasets are not supported yet; '
                     'leave it empty to train on the embedded corpus')
  train, val = stdlib_corpus(cfg.data.max_bytes, cfg.data.val_every_nth_file, tokenizer)
  t = cfg.train
  return Streams(tokenizer=tokenizer,
                 train=train_dataset(train, t.seq_len, t.batch_size, cfg.seed),
                 val=eval_batches(val, t.seq_len, t.batch_size, t.eval_batches))


def to_global(local_batch: np.ndarray, batch_sharding) -> jax.Array:
  """Assembles each process's rows into one global array sharded over the batch axes."""
  return jax.make_array_from_process_local_data(batch_sharding, np.asarray(local_batch, np.int32))
