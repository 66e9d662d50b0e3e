"""Hyperparameter sweeps on Optuna: ``trainer sweep FILE`` and ``trainer sweep-report SWEEPDIR``.

A sweep file (``configs/sweeps/NAME.py``) defines ``get_sweep()`` returning a dict; the
distributions below are what its ``random`` and ``tpe`` axes hold. Modules: ``spec``
(reading a sweep file into named points), ``runner`` (Optuna study, processes, pruning,
budget), ``results`` (results.csv, table, plots, scaling-law fit), ``commands`` (the CLI verbs).
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Distribution:
  """One random or TPE axis: ``kind`` is uniform, log_uniform, integer or choice."""
  kind: str
  low: float | int | None = None
  high: float | int | None = None
  values: tuple = ()


def uniform(low: float, high: float) -> Distribution:
  return Distribution('uniform', float(low), float(high))


def log_uniform(low: float, high: float) -> Distribution:
  return Distribution('log_uniform', float(low), float(high))


def integer(low: int, high: int) -> Distribution:
  """Whole numbers from ``low`` to ``high``, both included."""
  return Distribution('integer', int(low), int(high))


def choice(*values) -> Distribution:
  return Distribution('choice', values=tuple(values))
