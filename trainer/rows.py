"""One global order of training rows that does not depend on the process count or batch size.

Row ``i`` of the order is the same on every process, so the data position of a run is
one number, the rows (sequences) consumed so far, and a run resumes at the same token
on any number of processes and with any global batch size: global batch ``k`` after
a resume at ``start`` holds rows ``start + k*B ... start + (k+1)*B - 1``, and process
``p`` of ``P`` reads rows ``p*B/P ... (p+1)*B/P - 1`` of it (OLMo-core and MaxText's
grain path do the same). Two orders:

* :class:`Packed`: documents (each ending with end-of-text) in a seeded permutation
  drawn afresh each epoch, virtually concatenated epoch after epoch and cut into rows
  of ``row_len`` tokens; row ``i`` is found through the cumulative document lengths.
  The rows are then shuffled within blocks of ``ROW_BLOCK`` (as Megatron-LM and OLMo
  shuffle packed samples): without it the rows of one long document (a book, or a whole
  corpus given as one text) would reach a batch side by side, in reading order.
* :class:`Windows`: windows of ``length + 1`` tokens of one token array (the embedded
  corpus), in a seeded permutation drawn afresh each epoch.

``seed=None`` keeps the stored order (evaluation).
"""
from __future__ import annotations

import dataclasses
import functools
import sys
import threading

import grain
import numpy as np

ENDLESS = sys.maxsize  # Length of an endless order (grain's repeat(None) uses the same).
ROW_BLOCK = 16384  # Packed rows are shuffled within blocks of this many (16.8M tokens at 1,024).
# The version of these orders, saved with every data position (checkpoint.py): a row count
# means the same rows only under the order that counted it. Raise it whenever row i changes.
# 1: packed rows in reading order (checkpoints without 'order'); 2: shuffled within blocks.
ORDER = 2


def permutation(seed: int | None, epoch: int, n: int, stream: int = 0) -> np.ndarray:
  """The order of ``n`` items in ``epoch``; the same on every process.

  ``stream`` keeps independent orders apart (documents: 0, rows within a block: 1).
  """
  if seed is None:
    return np.arange(n)
  return np.random.default_rng([seed % 2**32, epoch, *([stream] if stream else [])]).permutation(n)


class _Epochs:
  """Per-epoch arrays, computed once and shared by the reading threads (the last two kept)."""

  def __init__(self, make):
    self.make, self.cache, self.lock = make, {}, threading.Lock()

  def __getitem__(self, epoch: int):
    with self.lock:
      if epoch not in self.cache:
        if len(self.cache) >= 2:
          del self.cache[min(self.cache)]
        self.cache[epoch] = self.make(epoch)
      return self.cache[epoch]


class Packed:
  """Documents packed into rows of ``row_len`` tokens; row i is random access."""

  def __init__(self, documents, lengths: np.ndarray, row_len: int, seed: int | None,
               cache_documents: int = 256, row_block: int = ROW_BLOCK):
    """``documents[i]`` is document i's ids (ending with end-of-text), ``lengths[i]`` its length."""
    self.lengths = np.asarray(lengths, np.int64)
    if not len(self.lengths) or self.lengths.min() < 1:
      raise ValueError('every document needs at least one token (its end-of-text)')
    self.row_len, self.seed, self.total = row_len, seed, int(self.lengths.sum())
    # A document longer than a row, or crossing a row end, is read by several rows.
    self.document = functools.lru_cache(cache_documents)(lambda i: np.asarray(documents[i], np.int32))
    self.epochs = _Epochs(self._order)
    self.row_block = row_block
    self.blocks = _Epochs(lambda block: permutation(seed, block, row_block, stream=1))

  def _order(self, epoch: int):
    order = permutation(self.seed, epoch, len(self.lengths))
    return order, np.cumsum(self.lengths[order])

  def __len__(self) -> int:
    return ENDLESS

  def tokens(self, start: int, stop: int) -> np.ndarray:
    """Tokens ``start:stop`` of the endless stream (epoch after epoch)."""
    pieces = []
    while start < stop:
      epoch, offset = divmod(start, self.total)
      order, ends = self.epochs[epoch]
      k = int(np.searchsorted(ends, offset, side='right'))
      begin = int(ends[k]) - int(self.lengths[order[k]])
      piece = self.document(int(order[k]))[offset - begin:offset - begin + stop - start]
      pieces.append(piece)
      start += len(piece)
    return np.concatenate(pieces) if len(pieces) > 1 else pieces[0]

  def __getitem__(self, i: int) -> np.ndarray:
    block, j = divmod(int(i), self.row_block)
    i = block * self.row_block + int(self.blocks[block][j])  # seed None: the stored order.
    return self.tokens(i * self.row_len, (i + 1) * self.row_len)


class Windows:
  """Non-overlapping windows of ``length + 1`` tokens of one array, shuffled each epoch."""

  def __init__(self, tokens: np.ndarray, length: int, seed: int | None = None):
    self.tokens, self.length, self.seed = tokens, length, seed
    self.count = (len(tokens) - 1) // length
    if self.count < 1:
      raise ValueError(f'{len(tokens)} tokens hold no window of {length + 1}')
    self.epochs = _Epochs(lambda epoch: permutation(seed, epoch, self.count))

  def __len__(self) -> int:
    return ENDLESS

  def __getitem__(self, i: int) -> np.ndarray:
    epoch, j = divmod(int(i), self.count)
    start = int(self.epochs[epoch][j]) * self.length
    return np.asarray(self.tokens[start:start + self.length + 1], np.int32)


@dataclasses.dataclass
class Share:
  """Process ``index`` of ``count``'s rows of each global batch, from global row ``start`` on."""
  rows: Packed | Windows   # Or a mixture.Mixture: any endless random access to rows.
  start: int
  global_batch: int
  index: int
  count: int

  def __post_init__(self):
    if self.global_batch % self.count:
      raise ValueError(f'global batch {self.global_batch} is not divisible by '
                       f'{self.count} processes')
    self.batch = self.global_batch // self.count

  def __len__(self) -> int:
    return ENDLESS

  def global_row(self, j: int) -> int:
    """The global row that is this process's j-th."""
    k, r = divmod(int(j), self.batch)
    return self.start + k * self.global_batch + self.index * self.batch + r

  def __getitem__(self, j: int) -> np.ndarray:
    return self.rows[self.global_row(j)]


@dataclasses.dataclass
class Stream:
  """The training batches of one process; ``start`` is the global rows already consumed."""
  rows: Packed | Windows   # Or a mixture.Mixture: any endless random access to rows.
  global_batch: int
  index: int = 0
  count: int = 1
  read_threads: int = 4    # Rows are read (and tokenized, for text) on these threads,
  prefetch: int = 16       # this many batches ahead of the step.

  @property
  def row_len(self) -> int:
    return self.rows.length + 1 if isinstance(self.rows, Windows) else self.rows.row_len

  def batches(self, start: int = 0) -> grain.MapDataset:
    """Random access to this process's batches [global_batch / count, row_len]."""
    share = Share(self.rows, start, self.global_batch, self.index, self.count)
    return grain.MapDataset.source(share).batch(share.batch, drop_remainder=True)

  def to_iter_dataset(self, start: int = 0) -> grain.IterDataset:
    """The batches from global row ``start`` on, read ahead on threads."""
    return self.batches(start).to_iter_dataset(grain.ReadOptions(
        num_threads=self.read_threads, prefetch_buffer_size=self.prefetch))


def fixed_batches(rows, global_batch: int, index: int, count: int, n: int) -> list:
  """This process's share of the first ``n`` global batches of an unshuffled order."""
  ds = Stream(rows, global_batch, index, count).batches()
  return [ds[k] for k in range(n)]
