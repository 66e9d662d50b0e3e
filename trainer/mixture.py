"""Weighted mixtures of datasets (``data.mixture``): grain's mix over each source's row order.

Each source keeps its own global row order (trainer/rows.py) with a seed derived from the
run's seed and the source's place in the list. grain's ``MapDataset.mix`` interleaves the
orders with fixed integer proportions: mixture row ``i`` is (source ``k``, row ``j``) by
arithmetic on ``i`` alone, so it is the same on every process and the data position stays
the number of rows consumed. How many of the first ``R`` rows each source gave follows from
``R`` alone (:func:`counts`), so per-source tokens are right after a resume too.

A source with weight 0 is not trained on; it is still evaluated (a held-out domain).
"""
from __future__ import annotations

import dataclasses
import posixpath
import re

import grain
import numpy as np

from trainer import rows

# grain scales weights to integers with the smallest at 100 (mix.py, _float_to_int_proportions).
# We hand it integers already on that scale, so it keeps them as they are and counts() below
# uses the very proportions its selection uses.
SCALE = 100


@dataclasses.dataclass(frozen=True)
class Part:
  name: str      # For metrics: the directory's basename (or the TFDS name), made unique.
  source: str    # A prepared dataset directory (local or gs://) or 'tfds:NAME'.
  weight: float  # Normalised: a mixture's weights sum to 1.


def parts(mixture) -> list[Part]:
  """The sources of a ``data.mixture`` value with unique names and normalised weights."""
  total = sum(float(w) for _, w in mixture)
  seen, out = set(), []
  for source, weight in mixture:
    base = source[5:] if source.startswith('tfds:') else posixpath.basename(source.rstrip('/'))
    base = re.sub(r'[^\w.-]+', '_', base).strip('_') or 'source'
    name, k = base, 2
    while name in seen:
      name, k = f'{base}_{k}', k + 1
    seen.add(name)
    out.append(Part(name, source, float(weight) / total))
  return out


def source_seed(seed: int, k: int) -> int:
  """The row-order seed of source ``k``: distinct per source, fixed by the run's seed."""
  return int(np.random.SeedSequence([seed, k]).generate_state(1)[0])


def proportions(weights) -> tuple[int, ...]:
  """Integer proportions on grain's scale (smallest = SCALE); exact to 1% of the smallest."""
  low = min(weights)
  return tuple(max(SCALE, round(w * SCALE / low)) for w in weights)


def counts(props, n: int) -> list[int]:
  """How many of the first ``n`` mixed rows come from each source, as grain's mix picks them.

  grain's ``_dataset_and_key_of_next_element`` splits the first n rows between source 0
  and the rest as n - floor(n * rest / total), then recurses on the rest; this is that
  recursion for the count itself (tests check it row by row against grain).
  """
  remaining, left, out = sum(props), int(n), []
  for p in props:
    after = left * (remaining - p) // remaining
    out.append(left - after)
    left, remaining = after, remaining - p
  return out


class Mixture:
  """Endless random-access rows of several row orders mixed by weight."""

  def __init__(self, parts_: list[Part], orders: list):
    mixed = [(p, o) for p, o in zip(parts_, orders) if p.weight > 0]
    self.names = [p.name for p in parts_]
    self.mixed_names = [p.name for p, _ in mixed]
    self.props = proportions([p.weight for p, _ in mixed])
    self.row_len = orders[0].row_len
    self.dataset = grain.MapDataset.mix([grain.MapDataset.source(o) for _, o in mixed],
                                        self.props)

  def __len__(self) -> int:
    return rows.ENDLESS

  def __getitem__(self, i: int) -> np.ndarray:
    return self.dataset[int(i)]

  def rows_by_source(self, n: int) -> dict[str, int]:
    """Rows each source gave among the first ``n`` (0 for weight-0 sources)."""
    given = dict(zip(self.mixed_names, counts(self.props, n)))
    return {name: given.get(name, 0) for name in self.names}
