"""The parallel stages of ``trainer prepare``, as datatrove pipeline steps.

datatrove (Hugging Face's web-data library) runs them: its LocalPipelineExecutor on one
machine (``--workers`` processes), and the same steps under its Slurm or Ray executors
on a cluster. Each stage has a fixed number of tasks that depends only on the data
(never on the worker count), every task writes its files under a temporary name and
renames them, and datatrove marks a task done only after it returns: a killed run
re-run skips the finished tasks.

1. ``Clean``, one task per shard: content hash, tokens, language and length filters,
   MinHash band keys of the documents that survive them. Writes ``meta/NNNNN.npz``,
   ``keys/NNNNN.npy``, ``tok/NNNNN.bin`` and ``shingles/NNNNN.bin``; no text is kept.
2. ``Candidates``, one task per LSH band: documents sharing that band's key are candidate
   pairs (exact copies collapse to their first occurrence first).
3. ``Confirm``: exact Jaccard of each candidate pair's word n-gram sets (stage 1 stored
   each sketched document's sorted shingle hashes, 4 bytes each, ~0.7x the text on disk);
   pairs above the threshold are the edges ``prepare`` removes duplicates along.
4. ``Write``, after the selection, one task per output file: the kept documents' tokens
   as TFDS array_record records (files of ~WRITE_SHARD_BYTES of tokens each, cut by the
   data alone); ``prepare`` then writes the TFDS metadata beside them.
"""
from __future__ import annotations

import functools
import gc
import os
import pathlib

import multiprocess
import numpy as np
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.utils.logging import logger
from datatrove.utils.stats import PipelineStats

from trainer import dedup, language, shards
from trainer import tokenizer as tokenizer_lib

NUM_PERM = 128
CONFIRM_TASKS = 16   # Partitions of the candidate pairs (fixed: output must not depend on workers).
MAX_BUCKET = 64      # Documents of one LSH bucket compared with every other member of it.
KEEP, LANGUAGE, SHORT = 0, 1, 2  # A document's fate after stage 1.
DATASET_NAME = 'tokenized_corpus'
WRITE_SHARD_BYTES = 8 << 20  # Tokens per output file; fixed, so files never depend on workers.

_TOKENIZERS: dict = {}  # One per process and name: loading GPT-2's BPE takes a second.


class Executor(LocalPipelineExecutor):
  """datatrove's local executor, without its per-task console logging (prepare reports)."""

  def run(self):
    if self.workers == 1:  # datatrove's own loop for one worker, minus its Manager process.
      for rank in self.get_incomplete_ranks():
        self._run_for_rank(rank)
      return
    # datatrove's Manager() takes the default start method, fork; a process that runs
    # threads (JAX, tiktoken) must not fork, so it gets the pool's method too.
    old = multiprocess.get_start_method(allow_none=True)
    multiprocess.set_start_method(self.start_method, force=True)
    logger.disable('datatrove')
    try:
      return super().run()
    finally:
      multiprocess.set_start_method(old, force=True)

  def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
    # datatrove's version adds three loguru sinks per task (~0.1 s each) and per-task stats
    # files; prepare reports for itself. Completion marking is datatrove's own.
    logger.disable('datatrove')  # In a pool worker too.
    if self.is_rank_completed(rank):
      return PipelineStats()
    # What exists before the task is never garbage of the task's: keeping it out of the
    # collector's scans made a one-worker prepare 1.3x faster (2.43 -> 3.14 MB/s,
    # `benchmarks/data.py --scale_mb 200`; the collector kept rescanning TFDS's objects).
    gc.freeze()
    try:
      for step in self.pipeline:
        step(None, rank, self.world_size)
    finally:
      gc.unfreeze()
    self.mark_rank_as_completed(rank)
    return PipelineStats(self.pipeline)


class _Step(PipelineStep):
  """A step that reads what earlier stages left in the work directory."""
  type = 'prepare'

  def __init__(self, work: str, cfg: dict):
    super().__init__()
    self.work, self.cfg = pathlib.Path(work), cfg

  def _save(self, relative: str, **arrays):
    path = self.work / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f'{path}.tmp', 'wb') as f:
      np.savez(f, **arrays) if len(arrays) > 1 else np.save(f, *arrays.values())
    os.replace(f'{path}.tmp', path)


class Clean(_Step):
  """Stage 1 for one shard: hash, tokenize, filter, sketch."""
  name = 'clean'

  def run(self, data=None, rank: int = 0, world_size: int = 1):
    from threadpoolctl import threadpool_limits
    # One worker per core: BLAS threads (langid's matrix products) would only contend;
    # measured 4x slower language detection with them on a busy machine.
    with threadpool_limits(1):
      self._clean(rank)
    return iter(())

  def _clean(self, rank: int):
    cfg = self.cfg
    is_val = rank >= cfg['train_shards']
    tok = tokenizer(cfg['tokenizer'], cfg['bpe_dir'])
    keep_text = None if is_val else language.keeper(cfg['language'], cfg['language_filter'])
    permutations = dedup.permutations(NUM_PERM)
    digests, ntokens, fate, keys, nshingles = [], [], [], [], []
    for folder in ('tok', 'shingles'):
      (self.work / folder).mkdir(exist_ok=True)
    tok_path, shingle_path = (self.work / d / f'{rank:05d}.bin' for d in ('tok', 'shingles'))
    with open(f'{tok_path}.tmp', 'wb') as out, open(f'{shingle_path}.tmp', 'wb') as out_shingles:
      for text in shards.Reader(self.work / 'shards', rank):
        ids, sketched = tok.encode(text), 0
        digests.append(np.frombuffer(dedup.digest(text), np.uint8))
        ntokens.append(len(ids))
        if keep_text is not None and not keep_text(text):
          fate.append(LANGUAGE)
        elif not is_val and len(ids) < cfg['min_length']:
          fate.append(SHORT)
        else:
          fate.append(KEEP)
          out.write(np.asarray(ids, cfg['dtype']).tobytes())
          if cfg['near']:
            shingles = dedup.shingle_hashes(text, cfg['ngram'])
            keys.append(dedup.band_keys(dedup.signature(shingles, permutations), cfg['bands'],
                                        cfg['rows']))
            out_shingles.write(shingles.tobytes())  # For Confirm: hashing again costs more.
            sketched = len(shingles)
        nshingles.append(sketched)
    os.replace(f'{tok_path}.tmp', tok_path)
    os.replace(f'{shingle_path}.tmp', shingle_path)
    n = len(ntokens)
    # Band-major, so that each Candidates task reads only its own band's row.
    self._save(f'keys/{rank:05d}.npy',
               keys=np.asarray(keys, np.uint64).reshape(len(keys), cfg['bands']).T.copy())
    self._save(f'meta/{rank:05d}.npz', digest=np.asarray(digests, np.uint8).reshape(n, 16),
               ntokens=np.asarray(ntokens, np.int64), fate=np.asarray(fate, np.uint8),
               nshingles=np.asarray(nshingles, np.int64))


def tokenizer(name: str, bpe_dir: str):
  """This process's tokenizer called ``name``, loaded once."""
  if name not in _TOKENIZERS:
    _TOKENIZERS[name] = tokenizer_lib.get(name, bpe_dir or None)
  return _TOKENIZERS[name]


def _shard_columns(work: pathlib.Path, cfg: dict, band: int):
  """(key, document id, first 8 hash bytes, is validation) of every sketched document."""
  columns, first = [], 0
  for shard, size in enumerate(cfg['sizes']):
    meta = np.load(work / 'meta' / f'{shard:05d}.npz')
    kept = np.flatnonzero(meta['fate'] == KEEP)
    columns.append((np.load(work / 'keys' / f'{shard:05d}.npy', mmap_mode='r')[band], kept + first,
                    meta['digest'][kept, :8].copy().view(np.uint64).ravel(),
                    np.full(len(kept), shard >= cfg['train_shards'])))
    first += size
  return [np.concatenate(c) for c in zip(*columns)]


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(start, length) of each run of equal neighbours in ``values``."""
  starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]]) if len(values) else values[:0]
  return starts, np.diff(np.r_[starts, len(values)])


def _bucket_pairs(members: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
  """Pairs within each bucket ``members[start:start + size]``: all of them, or each member with
  the first MAX_BUCKET. Vectorised over buckets: one step per position in a bucket."""
  pairs = []
  for a in range(min(int(sizes.max(initial=0)) - 1, MAX_BUCKET)):
    big = sizes > a + 1
    left, counts = starts[big] + a, sizes[big] - a - 1  # members[left] with each one after it.
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    pairs.append(np.stack([members[np.repeat(left, counts)],
                           members[np.repeat(left + 1, counts) + offsets]], axis=1))
  return np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)


class Candidates(_Step):
  """Stage 2 for one LSH band: pairs of documents with equal band keys."""
  name = 'candidates'

  def run(self, data=None, rank: int = 0, world_size: int = 1):
    key, ids, digest, is_val = _shard_columns(self.work, self.cfg, rank)
    # Exact copies within a bucket are one candidate: the first occurrence (smallest id)
    # stands for all. Sorted by content, a copy is a row equal to the one before it.
    order = np.lexsort((ids, is_val, digest, key))
    key, ids, digest, is_val = key[order], ids[order], digest[order], is_val[order]
    first = np.ones(len(key), bool)
    first[1:] = (key[1:] != key[:-1]) | (digest[1:] != digest[:-1]) | (is_val[1:] != is_val[:-1])
    key, ids = key[first], ids[first]
    order = np.lexsort((ids, key))
    key, ids = key[order], ids[order]
    starts, sizes = _runs(key)
    pairs = _bucket_pairs(ids, starts[sizes > 1], sizes[sizes > 1])
    for part in range(CONFIRM_TASKS):
      self._save(f'pairs/{rank:03d}-{part:03d}.npy', pairs=pairs[pairs[:, 0] % CONFIRM_TASKS == part])
    return iter(())


class Confirm(_Step):
  """Stage 3 for one partition of the candidate pairs: the exact-Jaccard check."""
  name = 'confirm'

  def run(self, data=None, rank: int = 0, world_size: int = 1):
    cfg = self.cfg
    parts = [np.load(self.work / 'pairs' / f'{b:03d}-{rank:03d}.npy') for b in range(cfg['bands'])]
    pairs = np.unique(np.concatenate(parts).reshape(-1, 2), axis=0)
    first_val = sum(cfg['sizes'][:cfg['train_shards']])
    pairs = pairs[pairs[:, 0] < first_val]  # Two validation documents: not our business.
    bounds = np.cumsum([0] + cfg['sizes'])
    edges = []

    @functools.lru_cache(64)  # Memory-mapped, a bounded number open at once (an fd each).
    def shard_shingles(shard: int) -> tuple[np.ndarray, np.ndarray]:
      counts = np.load(self.work / 'meta' / f'{shard:05d}.npz')['nshingles']
      path = self.work / 'shingles' / f'{shard:05d}.bin'
      data = np.memmap(path, np.uint32, 'r') if counts.sum() else np.zeros(0, np.uint32)
      return data, np.concatenate([[0], np.cumsum(counts)])

    def shingles_of(doc: int) -> np.ndarray:
      shard = int(np.searchsorted(bounds, doc, side='right') - 1)
      data, offsets = shard_shingles(shard)
      local = doc - int(bounds[shard])
      return data[offsets[local]:offsets[local + 1]]

    for i, j in pairs.tolist():
      if dedup.jaccard(shingles_of(i), shingles_of(j)) > cfg['threshold']:
        edges.append((i, j))
    self._save(f'edges/{rank:03d}.npy', edges=np.asarray(edges, np.int64).reshape(-1, 2))
    return iter(())


def token_arrays(work: pathlib.Path, sizes: list[int], ids: np.ndarray, dtype):
  """The tokens of the kept documents ``ids`` (ascending), read shard by shard."""
  first = 0
  for shard, size in enumerate(sizes):
    mine = ids[(ids >= first) & (ids < first + size)] - first
    if len(mine):
      meta = np.load(work / 'meta' / f'{shard:05d}.npz')
      lengths = np.where(meta['fate'] == KEEP, meta['ntokens'], 0)
      starts = np.cumsum(lengths) - lengths
      tokens = np.memmap(work / 'tok' / f'{shard:05d}.bin', dtype, 'r') if lengths.sum() else None
      for doc in mine.tolist():
        yield tokens[starts[doc]:starts[doc] + lengths[doc]] if lengths[doc] else np.zeros(0, dtype)
    first += size


def write_plan(splits: dict, ntokens: np.ndarray, itemsize: int) -> list[tuple]:
  """Output files as (split, index, count, first, end): each split's ids in order, cut into
  files of about WRITE_SHARD_BYTES of tokens; a document starting in a file's range is in it."""
  tasks = []
  for split, ids in splits.items():
    if not len(ids):
      continue
    sizes = ntokens[ids] * itemsize
    starts = np.cumsum(sizes) - sizes
    files = max(1, -(-int(sizes.sum()) // WRITE_SHARD_BYTES))
    cuts = np.unique(np.searchsorted(starts, np.arange(files) * WRITE_SHARD_BYTES))
    cuts = cuts[cuts < len(ids)]  # A long document can leave a range with none starting in it.
    ranges = list(zip(cuts.tolist(), cuts[1:].tolist() + [len(ids)]))
    tasks += [(split, i, len(ranges), a, b) for i, (a, b) in enumerate(ranges)]
  return tasks


def serialize(tokens: np.ndarray) -> bytes:
  """A document as TFDS stores a ``Tensor(shape=(None,))`` feature: a tf.train.Example with
  one int64 list. Built directly with the protobuf classes TFDS ships (2.5-2.8x faster
  than ``FeaturesDict.serialize_example``, which feeds numpy scalars one by one:
  benchmarks/data.py --serialize; the bytes are the same, tested)."""
  from tensorflow_datasets.proto import tf_example_pb2
  example = tf_example_pb2.Example()
  example.features.feature['tokens'].int64_list.value.extend(tokens.tolist())
  return example.SerializeToString()


def output_file(root: pathlib.Path, split: str, index: int, count: int) -> pathlib.Path:
  return root / f'{DATASET_NAME}-{split}.array_record-{index:05d}-of-{count:05d}'


class Write(_Step):
  """After the selection, one output file: its documents' records, and their byte count."""
  name = 'write'

  def run(self, data=None, rank: int = 0, world_size: int = 1):
    from array_record.python.array_record_module import ArrayRecordWriter
    split, index, count, first, end = self.cfg['write_tasks'][rank]
    ids = np.load(self.work / 'write' / f'{split}.npy', mmap_mode='r')[first:end]
    path = output_file(pathlib.Path(self.cfg['write_dir']), split, index, count)
    writer, size = ArrayRecordWriter(f'{path}.tmp', 'group_size:1'), 0  # TFDS's options.
    for tokens in token_arrays(self.work, self.cfg['sizes'], np.asarray(ids), self.cfg['dtype']):
      record = serialize(tokens)
      writer.write(record)
      size += len(record)
    writer.close()
    os.replace(f'{path}.tmp', path)
    self._save(f'write/{rank:05d}.bytes.npy', size=np.asarray(size, np.int64))
    return iter(())


def _execute(step, tasks: int, work: pathlib.Path, cfg: dict, workers: int):
  """One stage: ``tasks`` tasks on at most ``workers`` processes (skipping finished ones).

  A stage of one task runs in this process: starting a pool costs more than it saves.
  """
  Executor([step(str(work), cfg)], tasks=tasks, workers=max(1, min(workers, tasks)),
           logging_dir=str(work / 'logs' / step.name)).run()


def run(work: pathlib.Path, cfg: dict, workers: int):
  """Runs the three stages before the selection (skipping tasks a killed run finished)."""
  workers = min(workers, len(cfg['sizes']))
  _execute(Clean, len(cfg['sizes']), work, cfg, workers)
  if cfg['near']:
    _execute(Candidates, cfg['bands'], work, cfg, workers)
    _execute(Confirm, CONFIRM_TASKS, work, cfg, workers)


def write(work: pathlib.Path, cfg: dict, splits: dict, ntokens: np.ndarray, out: pathlib.Path,
          workers: int) -> dict:
  """Writes the selected documents' array_record files into ``out``, in parallel.

  Returns {split: (records per file, bytes)} for the TFDS metadata.
  """
  (work / 'write').mkdir(exist_ok=True)
  out.mkdir(parents=True, exist_ok=True)
  for split, ids in splits.items():
    np.save(work / 'write' / f'{split}.npy', ids)
  tasks = write_plan(splits, ntokens, np.dtype(cfg['dtype']).itemsize)
  _execute(Write, len(tasks), work, {**cfg, 'write_tasks': tasks, 'write_dir': str(out)}, workers)
  result = {}
  for rank, (split, _, _, first, end) in enumerate(tasks):
    lengths, size = result.get(split, ([], 0))
    result[split] = (lengths + [end - first],
                     size + int(np.load(work / 'write' / f'{rank:05d}.bytes.npy')))
  return result
