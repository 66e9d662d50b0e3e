"""Duplicate removal: exact (content hash) and near (MinHash LSH over word 5-gram shingles).

Near duplicates follow OpenWebText: two documents are duplicates when the Jaccard
similarity of their sets of word n-gram shingles exceeds a threshold (0.5). MinHash
LSH band keys propose candidates; each candidate is then checked with the exact Jaccard
of the two shingle sets, so the threshold is exact and LSH only decides what to compare.

``NearDuplicates`` is the in-memory, in-order index (datasketch's LSH); the parallel
pipeline (stages.py) uses ``band_keys`` and ``survivors`` instead, which hold only
fixed-size keys per document and choose survivors by content hash, not input order.
"""
from __future__ import annotations

import hashlib

import numpy as np

# Seen by every run: MinHash permutations come from this seed, so results are reproducible.
SEED = 1
_POLY = 1_000_003  # Multiplier of the n-gram hash polynomial (an odd prime).


def digest(text: str) -> bytes:
  """A 16-byte content hash (exact duplicates, split assignment)."""
  return hashlib.blake2b(text.encode('utf-8', 'surrogatepass'), digest_size=16).digest()


_SPACE = np.zeros(256, bool)
_SPACE[[9, 10, 11, 12, 13, 32]] = True  # ASCII whitespace separates words.
_WORD_BASE = np.uint64(0x100000001B3)   # Odd, so invertible modulo 2**64.
_WORD_BASE_INV = np.uint64(pow(0x100000001B3, -1, 2**64))


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
  """BASE**k and BASE**-k for k < n (modulo 2**64), kept and grown on demand up to
  _POWERS_KEPT; a longer document gets its own, dropped after it."""
  global _POWERS
  if len(_POWERS[0]) >= n:
    return _POWERS
  size = max(n, min(2 * len(_POWERS[0]), _POWERS_KEPT))
  powers = tuple(np.concatenate([[np.uint64(1)], np.cumprod(np.full(size - 1, base, np.uint64),
                                                            dtype=np.uint64)])
                 for base in (_WORD_BASE, _WORD_BASE_INV))
  if size <= _POWERS_KEPT:
    _POWERS = powers
  return powers


_POWERS_KEPT = 1 << 22  # 4 MiB documents: 64 MiB of tables at most stay in memory.


_POWERS = (np.zeros(0, np.uint64), np.zeros(0, np.uint64))


def word_hashes(text: str) -> np.ndarray:
  """A 64-bit hash of every word (run of non-whitespace bytes), all computed in numpy.

  Polynomial prefix sums over the UTF-8 bytes: word [s, e) hashes to
  (H[e] - H[s]) * BASE**-s, arithmetic modulo 2**64, with no Python loop per word.
  """
  data = np.frombuffer(text.encode('utf-8', 'surrogatepass'), np.uint8)
  word = np.empty(len(data) + 2, np.int8)
  word[0] = word[-1] = 0
  np.logical_not(_SPACE[data], out=word[1:-1].view(bool))
  edges = np.diff(word)
  starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
  powers, inverse = _powers(len(data) + 1)
  prefix = np.empty(len(data) + 1, np.uint64)
  prefix[0] = 0
  np.cumsum(data * powers[:len(data)], dtype=np.uint64, out=prefix[1:])
  return (prefix[ends] - prefix[starts]) * inverse[starts]


def shingle_hashes(text: str, n: int) -> np.ndarray:
  """Sorted unique 32-bit hashes of the word n-grams of ``text`` (one shingle if shorter).

  An n-gram's hash is a polynomial in its words' hashes (word_hashes), computed with
  numpy rather than by joining strings.
  """
  w = word_hashes(text)
  count = max(len(w) - n + 1, 1)
  h = np.zeros(count, np.uint64)
  for k in range(min(n, len(w))):
    h *= np.uint64(_POLY)
    h += w[k:k + count]
  h = h.astype(np.uint32)  # The low 32 bits.
  h.sort()
  return h[np.concatenate([[True], h[1:] != h[:-1]])] if len(h) > 1 else h


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
  """Exact Jaccard similarity of two sorted unique hash arrays."""
  inter = len(np.intersect1d(a, b, assume_unique=True))
  return inter / (len(a) + len(b) - inter)


def lsh_bands(threshold: float, num_perm: int, recall: float = 0.99) -> tuple[int, int]:
  """(bands, rows): the most rows per band that still propose a pair at ``threshold``
  with probability >= recall (fewest needless candidates; exact checking removes the rest)."""
  best = (num_perm, 1)
  for rows in range(1, num_perm // 2 + 1):  # datasketch needs at least two bands.
    bands = num_perm // rows
    if 1 - (1 - threshold ** rows) ** bands >= recall:
      best = (bands, rows)
  return best


class NearDuplicates:
  """An index of kept documents; ``seen(text)`` says whether a near duplicate is already in."""

  def __init__(self, threshold: float = 0.5, ngram: int = 5, num_perm: int = 128):
    from datasketch import MinHashLSH  # Imported here: it takes seconds, and only this needs it.
    self.threshold, self.ngram, self.num_perm = threshold, ngram, num_perm
    self.lsh = MinHashLSH(num_perm=num_perm, params=lsh_bands(threshold, num_perm))
    self.shingles: list[np.ndarray] = []  # Of kept documents, indexed by LSH key.
    from datasketch import MinHash
    self.permutations = MinHash(num_perm=num_perm, seed=SEED).permutations

  def _sketch(self, shingles: np.ndarray):
    """The MinHash of already-hashed shingles (permutations drawn once, not per document)."""
    from datasketch import MinHash
    sketch = MinHash(num_perm=self.num_perm, seed=SEED, hashfunc=int, scheme='affine32',
                     permutations=self.permutations)
    sketch.update_batch(shingles.tolist())
    return sketch

  def seen(self, text: str) -> bool:
    """True if ``text`` is a near duplicate of an indexed document; else indexes it."""
    shingles = shingle_hashes(text, self.ngram)
    sketch = self._sketch(shingles)
    for key in self.lsh.query(sketch):
      if jaccard(shingles, self.shingles[key]) > self.threshold:
        return True
    self.lsh.insert(len(self.shingles), sketch, check_duplication=False)
    self.shingles.append(shingles)
    return False


_BAND_MIX = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9],
                     np.uint64)  # Odd multipliers that fold a band's rows into one 64-bit key.
_BLOCK = 2048  # Shingles per step: bounds the (shingles x permutations) temporary.


def permutations(num_perm: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
  """(a, b) of ``num_perm`` multiply-shift hash functions h -> ((a*h + b) mod 2**64) >> 32."""
  gen = np.random.default_rng(seed)
  a = gen.integers(0, 2**63, num_perm, np.uint64) * np.uint64(2) + np.uint64(1)  # Odd.
  return a, gen.integers(0, 2**63, num_perm, np.uint64)


def signature(shingles: np.ndarray, perms) -> np.ndarray:
  """The MinHash of already-hashed shingles: per function, the least hash. (num_perm,) uint64.

  Multiply-shift (a universal family) needs no division, unlike datasketch's mod-prime
  permutations; shingles go in blocks to bound the (shingles x functions) temporary.
  """
  a, b = perms
  least = np.full(len(a), 2**64 - 1, np.uint64)
  h = shingles.astype(np.uint64)[:, None]
  for start in range(0, len(h), _BLOCK):
    values = h[start:start + _BLOCK] * a
    values += b
    np.minimum(least, values.min(axis=0), out=least)
  return least >> np.uint64(32)  # Shifting is monotonic: the least of the shifted values.


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
  """One 64-bit key per LSH band: documents sharing any key are candidate pairs."""
  grid = sig[:bands * rows].reshape(bands, rows)
  with np.errstate(over='ignore'):  # Wrapping multiplication is the point.
    return (grid * _BAND_MIX[:rows]).sum(axis=1, dtype=np.uint64)


def near_removed(order: np.ndarray, edges: np.ndarray) -> set:
  """Documents removed as near duplicates: visiting ``order`` (ascending content hash), a
  document goes when an edge joins it to one already kept.

  This is OpenWebText's in-order rule with the order fixed by content, so which member of
  a cluster survives depends neither on input order nor on how the work was split.
  """
  neighbours: dict[int, list[int]] = {}
  for i, j in edges.tolist():
    neighbours.setdefault(i, []).append(j)
    neighbours.setdefault(j, []).append(i)
  kept, removed = set(), set()
  for doc in order.tolist():
    if doc not in neighbours:
      continue
    (removed if any(n in kept for n in neighbours[doc]) else kept).add(doc)
  return removed
