"""Token streams for training and evaluation, read with grain.

The embedded default corpus is the running interpreter's own standard library:
real text that exists wherever Python does, so the first run needs no download.
Documents are joined with the end-of-text token and cut into windows of
``seq_len + 1`` tokens, shuffled with the seed afresh each epoch.

A prepared dataset (``trainer prepare``, ``--config.data.path``) or a TFDS text
dataset (``--config.data.source=tfds:NAME``) is read document by document: the
documents, each ending with end-of-text, are shuffled with the seed (afresh each
epoch), joined and cut into rows of ``seq_len + 1`` tokens.

Either way the rows form one global order (trainer/rows.py): each process reads its
part of each global batch, and the data position is the number of rows consumed,
valid for any process count and batch size. A mixture (``data.mixture``) of several
such datasets is one global order too (trainer/mixture.py).
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sysconfig

import jax
import numpy as np
from etils import epath

from trainer import mixture, rows, storage
from trainer import tokenizer as tokenizer_lib
from trainer.config import ConfigError
from trainer.tokenizer import ByteTokenizer  # noqa: F401  (kept importable from here)


def stdlib_files() -> list[pathlib.Path]:
  """The .py files of the running interpreter's standard library, in a fixed order."""
  root = pathlib.Path(sysconfig.get_paths()['stdlib'])
  skip = {'site-packages', 'dist-packages', '__pycache__'}
  files = []
  for folder, subfolders, names in os.walk(root):
    subfolders[:] = [d for d in subfolders if d not in skip]  # Never walks installed packages.
    files.extend(pathlib.Path(folder, n) for n in names if n.endswith('.py'))
  return sorted(files)


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


@dataclasses.dataclass
class Streams:
  tokenizer: object        # tokenizer.ByteTokenizer or tokenizer.GPT2Tokenizer.
  train: rows.Stream       # .to_iter_dataset(start) from any global row on.
  val: list                # This process's share of fixed validation batches (a mixture: []).
  # A mixture: each source's validation batches and normalised weight, by source name.
  val_sources: dict = dataclasses.field(default_factory=dict)
  weights: dict = dataclasses.field(default_factory=dict)

  def source_tokens(self, rows_consumed: int) -> dict:
    """{'tokens/NAME': tokens} of each mixture source in the first rows; {} for one dataset."""
    if not isinstance(self.train.rows, mixture.Mixture):
      return {}
    seq_len = self.train.row_len - 1  # Tokens trained on per row, as the `tokens` field counts.
    return {f'tokens/{name}': n * seq_len
            for name, n in self.train.rows.rows_by_source(rows_consumed).items()}


def open_prepared(path: str, flag: str = '--config.data.path=') -> tuple[dict, dict]:
  """(stats.json, {split: data source}) of a ``trainer prepare`` directory."""
  stats_path = storage.join(path, 'stats.json')
  if not storage.isfile(stats_path) or not storage.isfile(storage.join(path, 'dataset_info.json')):
    raise ConfigError(f'{flag}{path!r} is not a prepared dataset (no stats.json and '
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


@dataclasses.dataclass
class _Dataset:
  """One opened dataset: its tokenizer, splits, and how an element becomes ids."""
  tokenizer: object
  splits: dict             # {split: data source}
  ids: object              # element -> ids ending with end-of-text
  lengths_dir: str         # Where `trainer prepare` stored lengths_SPLIT.npy ('': TFDS, counted).
  where: str               # How messages name it.


def _open(source: str, path: str, tokenizer: str, flag: str = '--config.data.path=') -> _Dataset:
  """``source`` 'tfds:NAME' (data_dir ``path``), else the prepared dataset at ``path``."""
  if source:
    kind, _, name = source.partition(':')
    if kind != 'tfds' or not name:
      raise ConfigError(f'--config.data.source={source!r}: write tfds:NAME (e.g. tfds:lm1b)')
    splits, field = open_tfds(name, path)
    tok = tokenizer_lib.get(tokenizer or 'gpt2')

    def ids(example):
      text = example[field]
      text = text.decode('utf-8', 'replace') if isinstance(text, bytes) else str(text)
      return np.append(tok.encode(text), np.int32(tok.eot))
    return _Dataset(tok, splits, ids, '', source)
  stats, splits = open_prepared(path, flag)
  if tokenizer and tokenizer != stats['tokenizer']:
    raise ConfigError(f'--config.data.tokenizer={tokenizer} but {path} was tokenized with '
                      f'{stats["tokenizer"]}; drop the flag or prepare the data again')
  tok = tokenizer_lib.get(stats['tokenizer'])
  return _Dataset(tok, splits, lambda example: np.append(example['tokens'].astype(np.int32),
                                                         np.int32(tok.eot)), path, path)


def check_vocab(cfg, tok):
  """The model must have an output for every id the tokenizer can produce."""
  if cfg.model.vocab_size < tok.vocab_size:
    raise ConfigError(f'--config.model.vocab_size={cfg.model.vocab_size} is smaller than the '
                      f'{tok.name} tokenizer\'s {tok.vocab_size} ids; set '
                      f'--config.model.vocab_size={tok.vocab_size}')


def document_lengths(source, ids, stored: epath.Path | None = None) -> np.ndarray:
  """Each document's length with its end-of-text: from ``trainer prepare``'s file, else counted.

  Counting reads (for text: tokenizes) every document once, at start-up.
  """
  if stored is not None and stored.exists():
    with stored.open('rb') as f:
      lengths = np.load(f).astype(np.int64) + 1
    if len(lengths) == len(source):
      return lengths
  return np.array([len(ids(source[i])) for i in range(len(source))], np.int64)


@dataclasses.dataclass
class _Mapped:
  """source[i] turned into ids ending with end-of-text."""
  source: object
  ids: object

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, i: int) -> np.ndarray:
    return self.ids(self.source[i])


def _packed(cfg, ds: _Dataset, split: str, seed: int | None) -> rows.Packed:
  """The global row order of one split's documents."""
  # `trainer prepare` records the lengths; a TFDS source's are counted.
  stored = epath.Path(ds.lengths_dir) / f'lengths_{split}.npy' if ds.lengths_dir else None
  lengths = document_lengths(ds.splits[split], ds.ids, stored)
  return rows.Packed(_Mapped(ds.splits[split], ds.ids), lengths, cfg.train.seq_len + 1, seed)


def _train_and_val(cfg, ds: _Dataset, seed: int) -> tuple[rows.Packed, rows.Packed]:
  """The shuffled train order and the fixed validation order of one dataset."""
  if 'train' not in ds.splits:
    raise ConfigError(f'{ds.where} has no train split (splits: {", ".join(ds.splits)})')
  return (_packed(cfg, ds, 'train', seed),
          _packed(cfg, ds, _validation_split(ds.splits, ds.where), None))


def _load_mixture(cfg, index: int, count: int) -> Streams:
  """The streams of a ``data.mixture``: grain's mix of the sources' train orders."""
  d, t = cfg.data, cfg.train
  parts = mixture.parts(d.mixture)
  opened = []
  for part in parts:
    tfds = part.source.startswith('tfds:')
    opened.append(_open(part.source if tfds else '', d.path if tfds else part.source,
                        d.tokenizer, '--config.data.mixture source '))
    first, this = opened[0].tokenizer.name, opened[-1].tokenizer.name
    if this != first:
      raise ConfigError(f'--config.data.mixture: {part.source} is tokenized with {this} but '
                        f'{parts[0].source} with {first}; prepare every source with one tokenizer')
  check_vocab(cfg, opened[0].tokenizer)
  orders = [_train_and_val(cfg, ds, mixture.source_seed(cfg.seed, k))
            for k, ds in enumerate(opened)]
  train = mixture.Mixture(parts, [tr for tr, _ in orders])
  val = {p.name: rows.fixed_batches(v, t.batch_size, index, count, t.eval_batches)
         for p, (_, v) in zip(parts, orders)}
  return Streams(tokenizer=opened[0].tokenizer,
                 train=rows.Stream(train, t.batch_size, index, count),
                 val=[], val_sources=val, weights={p.name: p.weight for p in parts})


def load(cfg, process_index: int | None = None, process_count: int | None = None) -> Streams:
  """The training and validation streams a config asks for."""
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  t = cfg.train
  if t.batch_size % count:
    raise ConfigError(f'--config.train.batch_size={t.batch_size} is not divisible by the {count} '
                      'processes; use a multiple of the process count')
  if not cfg.data.path and not cfg.data.source and not cfg.data.mixture:
    tokenizer = tokenizer_lib.get(cfg.data.tokenizer or 'byte')
    check_vocab(cfg, tokenizer)
    train, val = stdlib_corpus(cfg.data.max_bytes, cfg.data.val_every_nth_file, tokenizer)
    for split, tokens in (('train', train), ('validation', val)):
      if len(tokens) <= t.seq_len * count:  # Every process needs one window of seq_len + 1.
        raise ConfigError(f'--config.data.max_bytes={cfg.data.max_bytes}: the embedded corpus '
                          f'has {len(tokens)} {split} tokens, too few for {count} process(es) x '
                          f'--config.train.seq_len={t.seq_len}; raise max_bytes')
    val_rows = rows.Windows(val, t.seq_len)
    return Streams(tokenizer=tokenizer,
                   train=rows.Stream(rows.Windows(train, t.seq_len, cfg.seed), t.batch_size,
                                     index, count),
                   val=rows.fixed_batches(val_rows, t.batch_size, index, count, t.eval_batches))
  if cfg.data.mixture:
    return _load_mixture(cfg, index, count)
  ds = _open(cfg.data.source, cfg.data.path, cfg.data.tokenizer)
  check_vocab(cfg, ds.tokenizer)
  train, val = _train_and_val(cfg, ds, cfg.seed)
  return Streams(tokenizer=ds.tokenizer, train=rows.Stream(train, t.batch_size, index, count),
                 val=rows.fixed_batches(val, t.batch_size, index, count, t.eval_batches))


def to_global(local_batch: np.ndarray, batch_sharding) -> jax.Array:
  """Assembles each process's rows into one global array sharded over the batch axes."""
  return jax.make_array_from_process_local_data(batch_sharding, np.asarray(local_batch, np.int32))
