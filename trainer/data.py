"""Token streams for training and evaluation, read with grain.

The embedded default corpus is the running interpreter's own standard library:
real text that exists wherever Python does, so the first run needs no download.
Documents are joined with the end-of-text token and cut into windows of
``seq_len + 1`` tokens; grain shuffles them per epoch, gives each process its
share, and its iterator state is small enough to live in a checkpoint.

A prepared dataset (``trainer prepare``, ``--config.data.path``) or a TFDS text
dataset (``--config.data.source=tfds:NAME``) is read document by document: the
documents are shuffled with the seed (afresh each epoch), each process takes every
``process_count``-th one, and grain's concat-then-split packing joins them, each
ending with end-of-text, into rows of ``seq_len + 1`` tokens.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import pathlib
import sysconfig

import grain
import jax
import numpy as np

from trainer import storage
from trainer import tokenizer as tokenizer_lib
from trainer.config import ConfigError
from trainer.tokenizer import ByteTokenizer  # noqa: F401  (kept importable from here)


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
    if total >= max_bytes and len(docs) >= 2:  # Two files at least: one per split.
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


def _local_batch(global_batch: int, count: int | None = None) -> int:
  count = jax.process_count() if count is None else count
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


def shard_documents(source, seed: int | None, index: int, count: int) -> grain.MapDataset:
  """Process ``index`` of ``count``'s documents, endless; shuffled by ``seed`` (None: in order).

  The shuffle is global and the same on every process, and process i takes positions
  i, i + count, ... of it, so the shares are disjoint and together hold every
  document once per epoch; each epoch draws a new permutation.
  """
  if len(source) < count:  # Checked on every process alike, so all of them stop.
    raise ConfigError(f'the dataset has {len(source)} documents, fewer than the {count} '
                      'processes reading it; prepare more documents')
  ds = grain.MapDataset.source(source)
  if seed is not None:
    ds = ds.seed(seed).shuffle()
  return ds[index::count].repeat(None)


@dataclasses.dataclass
class PackedStream:
  """Documents (1-D int32 ids, each ending with end-of-text) packed into rows and batched."""
  documents: grain.MapDataset
  row_len: int             # seq_len + 1: inputs and targets overlap by all but one token.
  batch: int               # Rows per batch on this process.
  read_threads: int = 4    # Documents are read (and tokenized, for text) on these threads
  prefetch: int = 256      # this many documents ahead of the packer.

  def to_iter_dataset(self) -> grain.IterDataset:
    """The batches [batch, row_len]; its iterator has get_state/set_state for checkpoints."""
    ds = self.documents.map(lambda ids: {'tokens': ids})
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=self.read_threads,
                                              prefetch_buffer_size=self.prefetch))
    ds = grain.experimental.ConcatThenSplitIterDataset(ds, length_struct={'tokens': self.row_len})
    return ds.map(lambda row: row['tokens']).batch(self.batch, drop_remainder=True)


@dataclasses.dataclass
class Streams:
  tokenizer: object        # tokenizer.ByteTokenizer or tokenizer.GPT2Tokenizer.
  train: grain.MapDataset | PackedStream
  val: list


def open_prepared(path: str) -> tuple[dict, dict]:
  """(stats.json, {split: data source}) of a ``trainer prepare`` directory."""
  stats_path = storage.join(path, 'stats.json')
  if not storage.isfile(stats_path) or not storage.isfile(storage.join(path, 'dataset_info.json')):
    raise ConfigError(f'--config.data.path={path!r} is not a prepared dataset (no stats.json and '
                      f'dataset_info.json); create one with: trainer prepare --input FILES '
                      f'--output {path}')
  import tensorflow_datasets as tfds
  stats = json.loads(storage.read_text(stats_path))
  local = storage.local_dir(path)  # array_record reads local files only.
  return stats, tfds.builder_from_directory(local).as_data_source()


def open_tfds(name: str, data_dir: str) -> tuple[dict, str]:
  """({split: data source}, text feature) of a TFDS text dataset; prepares it if needed."""
  import tensorflow_datasets as tfds
  flag = f'--config.data.source=tfds:{name}'
  try:
    builder = tfds.builder(name, data_dir=data_dir or None, file_format='array_record')
  except Exception as e:  # TFDS raises several types for unknown names and versions.
    raise ConfigError(f'{flag}: {str(e).splitlines()[0]}') from None
  if not builder.is_prepared():
    try:
      builder.download_and_prepare(file_format='array_record')
    except Exception as e:
      raise ConfigError(f'{flag}: not in {builder.data_dir} and could not be prepared here '
                        f'({type(e).__name__}); build it with `tfds build {name} '
                        '--file_format=array_record` and pass its data_dir as --config.data.path'
                        ) from None
  if storage.is_remote(str(builder.data_dir)):  # array_record reads local files only.
    builder = tfds.builder_from_directory(storage.local_dir(str(builder.data_dir)))
  features = builder.info.features
  text = [k for k, v in features.items() if isinstance(v, tfds.features.Text)]
  if not text:
    raise ConfigError(f'{flag}: has no text feature (features: {", ".join(features)})')
  return builder.as_data_source(), 'text' if 'text' in text else text[0]


def _validation_split(sources: dict, where: str) -> str:
  for split in ('validation', 'test'):
    if split in sources:
      return split
  raise ConfigError(f'{where} has no validation split (splits: {", ".join(sources)}); '
                    'prepare it with --val_fraction > 0')


def _document_ids(cfg):
  """(tokenizer, {split: source}, element -> ids ending with end-of-text) for data.path/source."""
  d = cfg.data
  if d.source:
    kind, _, name = d.source.partition(':')
    if kind != 'tfds' or not name:
      raise ConfigError(f'--config.data.source={d.source!r}: write tfds:NAME (e.g. tfds:lm1b)')
    sources, field = open_tfds(name, d.path)
    tok = tokenizer_lib.get(d.tokenizer or 'gpt2')

    def ids(example):
      text = example[field]
      text = text.decode('utf-8', 'replace') if isinstance(text, bytes) else str(text)
      return np.append(tok.encode(text), np.int32(tok.eot))
    return tok, sources, ids
  stats, sources = open_prepared(d.path)
  if d.tokenizer and d.tokenizer != stats['tokenizer']:
    raise ConfigError(f'--config.data.tokenizer={d.tokenizer} but {d.path} was tokenized with '
                      f'{stats["tokenizer"]}; drop the flag or prepare the data again')
  tok = tokenizer_lib.get(stats['tokenizer'])
  return tok, sources, lambda example: np.append(example['tokens'].astype(np.int32),
                                                 np.int32(tok.eot))


def check_vocab(cfg, tok):
  """The model must have an output for every id the tokenizer can produce."""
  if cfg.model.vocab_size < tok.vocab_size:
    raise ConfigError(f'--config.model.vocab_size={cfg.model.vocab_size} is smaller than the '
                      f'{tok.name} tokenizer\'s {tok.vocab_size} ids; set '
                      f'--config.model.vocab_size={tok.vocab_size}')


def load(cfg, process_index: int | None = None, process_count: int | None = None) -> Streams:
  """The training and validation streams a config asks for."""
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  t = cfg.train
  if not cfg.data.path and not cfg.data.source:
    tokenizer = tokenizer_lib.get(cfg.data.tokenizer or 'byte')
    check_vocab(cfg, tokenizer)
    train, val = stdlib_corpus(cfg.data.max_bytes, cfg.data.val_every_nth_file, tokenizer)
    for split, tokens in (('train', train), ('validation', val)):
      if len(tokens) <= t.seq_len * count:  # Every process needs one window of seq_len + 1.
        raise ConfigError(f'--config.data.max_bytes={cfg.data.max_bytes}: the embedded corpus '
                          f'has {len(tokens)} {split} tokens, too few for {count} process(es) x '
                          f'--config.train.seq_len={t.seq_len}; raise max_bytes')
    return Streams(tokenizer=tokenizer,
                   train=train_dataset(train, t.seq_len, t.batch_size, cfg.seed),
                   val=eval_batches(val, t.seq_len, t.batch_size, t.eval_batches))
  tokenizer, sources, ids = _document_ids(cfg)
  check_vocab(cfg, tokenizer)
  where = cfg.data.path or cfg.data.source
  if 'train' not in sources:
    raise ConfigError(f'{where} has no train split (splits: {", ".join(sources)})')
  batch = _local_batch(t.batch_size, count)
  train = PackedStream(shard_documents(sources['train'], cfg.seed, index, count).map(ids),
                       t.seq_len + 1, batch)
  val_docs = shard_documents(sources[_validation_split(sources, where)], None, index, count)
  val = PackedStream(val_docs.map(ids), t.seq_len + 1, batch)
  return Streams(tokenizer=tokenizer, train=train,
                 val=list(itertools.islice(val.to_iter_dataset(), t.eval_batches)))


def to_global(local_batch: np.ndarray, batch_sharding) -> jax.Array:
  """Assembles each process's rows into one global array sharded over the batch axes."""
  return jax.make_array_from_process_local_data(batch_sharding, np.asarray(local_batch, np.int32))
