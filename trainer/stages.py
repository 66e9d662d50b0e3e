"""The parallel stages of ``trainer prepare``, as datatrove pipeline steps.

datatrove (Hugging Face's web-data library) runs them: its LocalPipelineExecutor on one
machine (``--workers`` processes), and the same steps under its Slurm or Ray executors
on a cluster. Each stage has a fixed number of tasks that depends only on the data
(never on the worker count), every task writes its files under a temporary name and
renames them, and datatrove marks a task done only after it returns: a killed run
re-run skips the finished tasks.

1. ``Clean``, one task per shard: content hash, tokens, language and length filters,
   MinHash band keys of the documents that survive them. Writes ``meta/NNNNN.npz`` and
   ``tok/NNNNN.bin``; the text itself is not kept.
2. ``Candidates``, one task per LSH band: documents sharing that band's key are candidate
   pairs (exact copies collapse to their first occurrence first).
3. ``Confirm``: exact Jaccard of each candidate pair's word n-gram sets, from the shard
   text; pairs above the threshold are the edges ``prepare`` removes duplicates along.
"""
from __future__ import annotations

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
    for step in self.pipeline:
      step(None, rank, self.world_size)
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
    digests, ntokens, fate, keys = [], [], [], []
    (self.work / 'tok').mkdir(exist_ok=True)
    with open(self.work / 'tok' / f'{rank:05d}.bin.tmp', 'wb') as out:
      for text in shards.Reader(self.work / 'shards', rank):
        ids = tok.encode(text)
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
            sig = dedup.signature(dedup.shingle_hashes(text, cfg['ngram']), permutations)
            keys.append(dedup.band_keys(sig, cfg['bands'], cfg['rows']))
    os.replace(self.work / 'tok' / f'{rank:05d}.bin.tmp', self.work / 'tok' / f'{rank:05d}.bin')
    n = len(ntokens)
    self._save(f'meta/{rank:05d}.npz', digest=np.asarray(digests, np.uint8).reshape(n, 16),
               ntokens=np.asarray(ntokens, np.int64), fate=np.asarray(fate, np.uint8),
               keys=np.asarray(keys, np.uint64).reshape(len(keys), cfg['bands']))


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
    columns.append((meta['keys'][:, band], kept + first,
                    meta['digest'][kept, :8].copy().view(np.uint64).ravel(),
                    np.full(len(kept), shard >= cfg['train_shards'])))
    first += size
  return [np.concatenate(c) for c in zip(*columns)]


def _bucket_pairs(members: np.ndarray) -> np.ndarray:
  """Pairs within one bucket: all of them, or each member with the first MAX_BUCKET."""
  a, b = np.triu_indices(len(members), 1)
  keep = a < MAX_BUCKET
  return np.stack([members[a[keep]], members[b[keep]]], axis=1)


class Candidates(_Step):
  """Stage 2 for one LSH band: pairs of documents with equal band keys."""
  name = 'candidates'

  def run(self, data=None, rank: int = 0, world_size: int = 1):
    key, ids, digest, is_val = _shard_columns(self.work, self.cfg, rank)
    order = np.lexsort((ids, key))
    key, ids, digest, is_val = key[order], ids[order], digest[order], is_val[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    ends = np.r_[starts[1:], len(key)]
    pairs = []
    for s, e in zip(starts[ends - starts > 1].tolist(), ends[ends - starts > 1].tolist()):
      # Exact copies are one candidate: the first occurrence (smallest id) stands for all.
      _, first = np.unique(np.stack([digest[s:e], is_val[s:e]], axis=1), axis=0,
                           return_index=True)
      if len(first) > 1:
        pairs.append(_bucket_pairs(np.sort(ids[s:e][first])))
    pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), np.int64)
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
    readers, shingles, edges = {}, {}, []

    def shingles_of(doc: int) -> np.ndarray:
      if doc not in shingles:
        if len(shingles) > 4096:
          shingles.clear()  # Bounded memory; pairs are sorted, so reuse is mostly local.
        shard = int(np.searchsorted(bounds, doc, side='right') - 1)
        if shard not in readers:
          readers[shard] = shards.Reader(self.work / 'shards', shard)
        text = readers[shard][doc - int(bounds[shard])]
        shingles[doc] = dedup.shingle_hashes(text, cfg['ngram'])
      return shingles[doc]

    for i, j in pairs.tolist():
      if dedup.jaccard(shingles_of(i), shingles_of(j)) > cfg['threshold']:
        edges.append((i, j))
    self._save(f'edges/{rank:03d}.npy', edges=np.asarray(edges, np.int64).reshape(-1, 2))
    return iter(())


def run(work: pathlib.Path, cfg: dict, workers: int):
  """Runs the three stages (skipping tasks a killed run finished).

  A corpus of one shard runs in this process: starting a pool costs more than it saves.
  """
  workers = min(workers, len(cfg['sizes']))
  stages = [(Clean, len(cfg['sizes']))]
  if cfg['near']:
    stages += [(Candidates, cfg['bands']), (Confirm, CONFIRM_TASKS)]
  for step, tasks in stages:
    Executor([step(str(work), cfg)], tasks=tasks, workers=max(1, min(workers, tasks)),
             logging_dir=str(work / 'logs' / step.name)).run()
