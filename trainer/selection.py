"""Which documents ``trainer prepare`` keeps, and which split each goes to.

Runs once, after the parallel stages, on what they left: per document a 16-byte content
hash, a token count and a one-byte fate (about 25 bytes a document in memory), plus the
confirmed near-duplicate edges. Removals are decided in the order the stages are
reported: exact duplicates (every copy after the first), language, length, overlap
with the validation documents (``--val_input``), near duplicates.
"""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from trainer import dedup, shards, stages
from trainer.config import ConfigError

STAGES = ('exact_duplicates', 'language', 'short', 'val_overlap', 'near_duplicates')


@dataclasses.dataclass
class Selection:
  splits: dict[str, np.ndarray]  # Split -> global ids of its documents, ascending.
  stats: dict
  ntokens: np.ndarray  # Per global id.


def _load(work: pathlib.Path, manifest: dict):
  digests, ntokens, fate = [], [], []
  for shard in range(len(shards.sizes(manifest))):
    meta = np.load(work / 'meta' / f'{shard:05d}.npz')
    digests.append(meta['digest'])
    ntokens.append(meta['ntokens'])
    fate.append(meta['fate'])
  edges = [np.load(p) for p in sorted((work / 'edges').glob('*.npy'))]
  edges = np.concatenate(edges) if edges else np.zeros((0, 2), np.int64)
  return np.concatenate(digests), np.concatenate(ntokens), np.concatenate(fate), edges


def _first_copies(digest: np.ndarray) -> np.ndarray:
  """True for each document whose content has not appeared before it."""
  first = np.zeros(len(digest), bool)
  _, index = np.unique(digest.view('V16').ravel(), return_index=True)
  first[index] = True
  return first


def select(work: pathlib.Path, manifest: dict, val_fraction: float) -> Selection:
  """Applies every removal and splits the rest; counts documents and tokens per stage."""
  digest, ntokens, fate, edges = _load(work, manifest)
  n_train = sum(manifest['train']['sizes'])
  train = np.arange(len(digest)) < n_train
  removed = {}
  first = _first_copies(digest[:n_train])
  removed['exact_duplicates'] = np.flatnonzero(~first)
  removed['language'] = np.flatnonzero(first & (fate[:n_train] == stages.LANGUAGE))
  removed['short'] = np.flatnonzero(first & (fate[:n_train] == stages.SHORT))
  alive = np.zeros(len(digest), bool)
  alive[:n_train] = first & (fate[:n_train] == stages.KEEP)
  # An edge to a validation document removes the training one (test-set contamination).
  to_val = edges[~train[edges[:, 1]] & alive[edges[:, 0]], 0]
  removed['val_overlap'] = np.unique(to_val)
  alive[removed['val_overlap']] = False
  inner = edges[alive[edges[:, 0]] & alive[edges[:, 1]]]
  involved = np.unique(inner)
  halves = digest[involved].view('>u8')  # Big-endian: sorting them sorts the hash bytes.
  order = involved[np.lexsort((halves[:, 1], halves[:, 0]))]
  removed['near_duplicates'] = np.asarray(sorted(dedup.near_removed(order, inner)), np.int64)
  alive[removed['near_duplicates']] = False
  kept = np.flatnonzero(alive)
  if manifest['validation']['sizes']:
    splits = {'train': kept, 'validation': np.arange(n_train, len(digest))}
  else:
    to_val = digest[kept, :8].copy().view(np.uint64).ravel() < val_fraction * 2.0**64
    splits = {'train': kept[~to_val], 'validation': kept[to_val]}
  stats = {'documents_in': n_train, 'tokens_in': int(ntokens[:n_train].sum())}
  for stage in STAGES:
    stats[f'removed_{stage}'] = len(removed[stage])
    stats[f'removed_{stage}_tokens'] = int(ntokens[removed[stage]].sum())
  stats.update(documents_out=len(kept), tokens_out=int(ntokens[kept].sum()),
               val_documents_in=len(digest) - n_train,
               val_tokens_in=int(ntokens[n_train:].sum()))
  return Selection(splits, stats, ntokens)


def balance(sel: Selection, val_fraction: float):
  """Makes sure each split asked for holds at least one document."""
  train, val = sel.splits['train'], sel.splits['validation']
  if val_fraction > 0 and len(train) + len(val) < 2:
    raise ConfigError('only one document is left after cleaning, and a validation split needs '
                      'another; split the text with --separator or pass --val_fraction 0')
  if val_fraction > 0 and not len(val):
    train, val = train[:-1], train[-1:]
  if not len(train):
    train, val = val[-1:], val[:-1]
  sel.splits = {'train': train, 'validation': val}
