"""What values a setting accepts: config keys (trainer/config.py) and verbs' flags alike.

A :class:`Key` is a default, which fixes the type, plus a range or choices. The config
declares each key as one; a verb declares a flag with :func:`add_flag`. One checker and
one wording of the error ("must be a number in [0, 1)") serve both.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import math
import re

INT_LIMIT = 2**31  # Counts and sizes reach the device as int32.


@dataclasses.dataclass(frozen=True)
class Key:
  """A key's default (which fixes its type) and the values it accepts.

  Bounds read like pydantic's: ``gt``/``ge``/``lt``/``le``; integers without an upper
  bound stop below INT_LIMIT. ``also`` lists special values outside the range (mesh
  -1: take the rest). Strings take ``choices`` or a ``pattern`` (a full-match regex,
  described by ``allowed``). Floats are always finite. A tuple default makes a list of
  ``[TEXT, NUMBER]`` pairs (``data.mixture``): each number within the bounds, each text
  non-empty; the command line writes it as a Python or JSON literal.
  """
  default: bool | int | float | str | tuple
  gt: float | None = None
  ge: float | None = None
  lt: float | None = None
  le: float | None = None
  choices: tuple = ()
  also: tuple = ()
  pattern: str = ''
  allowed: str = ''

  @property
  def type(self) -> type:
    return type(self.default)

  def upper(self) -> tuple[float, bool]:
    """(bound, inclusive); integers are capped at INT_LIMIT."""
    if self.le is not None:
      return self.le, True
    if self.lt is not None:
      return self.lt, False
    return (INT_LIMIT, False) if self.type is int else (math.inf, False)

  def lower(self) -> tuple[float, bool]:
    if self.ge is not None:
      return self.ge, True
    return (-math.inf, False) if self.gt is None else (self.gt, False)

  def describe(self) -> str:
    """What the key accepts, as the error message says it."""
    if self.type is bool:
      return 'expected true or false'
    if self.choices:
      return 'choose one of ' + ', '.join(c or "''" for c in self.choices)
    if self.type in (str, tuple):
      return f'expected {self.allowed or "a string"}'
    (lo, lo_in), (hi, hi_in) = self.lower(), self.upper()
    span = f'{"[" if lo_in else "("}{_number(lo)}, {_number(hi)}{"]" if hi_in else ")"}'
    also = ''.join(f'{_number(a)} or ' for a in self.also)
    if span == '(-inf, inf)':
      return f'must be {also}a finite number'
    return f'must be {also}{"an integer" if self.type is int else "a number"} in {span}'

  def accepts(self, value) -> bool:
    if self.type is tuple:
      return isinstance(value, (tuple, list)) and all(self._accepts_pair(p) for p in value)
    if self.type is bool or isinstance(value, bool):
      return isinstance(value, bool) and self.type is bool
    if self.type is str:
      if self.choices:
        return value in self.choices
      return isinstance(value, str) and re.fullmatch(self.pattern or '.*', value, re.S) is not None
    if not isinstance(value, (int, float)) or (self.type is int and not isinstance(value, int)):
      return False
    if value in self.also:
      return True
    (lo, lo_in), (hi, hi_in) = self.lower(), self.upper()
    return (math.isfinite(value) and (lo <= value if lo_in else lo < value) and
            (value <= hi if hi_in else value < hi))

  def _accepts_pair(self, pair) -> bool:
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
      return False
    text, number = pair
    number_key = dataclasses.replace(self, default=0.0, allowed='')
    return (isinstance(text, str) and bool(text.strip()) and isinstance(number, (int, float))
            and number_key.accepts(number))

  def parse(self, text: str):
    """The key's type read from command-line text; a ValueError says what was expected."""
    if self.type is tuple:
      try:
        value = ast.literal_eval(text.strip())
      except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ValueError(f'expected {self.allowed}') from None
      if not isinstance(value, (tuple, list)):
        raise ValueError(f'expected {self.allowed}')
      return as_pairs(value)
    if self.type is bool:
      if text.lower() in ('true', '1', 'yes'):
        return True
      if text.lower() in ('false', '0', 'no'):
        return False
      raise ValueError('expected true or false')
    for typ, name in ((int, 'an integer'), (float, 'a number')):
      if self.type is typ:
        try:
          return typ(text)
        except ValueError:
          raise ValueError(f'expected {name}') from None
    return text


PATH = Key('', pattern=r'\S.*', allowed='a non-empty path')  # '' would silently mean the cwd.


def show(text: str) -> str:
  """Command-line text as a message quotes it: bare if plain, else repr (newlines stay escaped)."""
  return text if text.strip() and text.isprintable() and ' ' not in text else repr(text)


def _number(x) -> str:
  if x in (math.inf, -math.inf):
    return '-inf' if x < 0 else 'inf'
  if isinstance(x, int) and x >= 2**16 and x & (x - 1) == 0:
    return f'2**{x.bit_length() - 1}'
  return str(x)


def add_flag(parser, name: str, key: Key, **kwargs):
  """``parser.add_argument`` with the key's default; a bad value names the flag and the range."""
  kwargs.setdefault('default', key.default)
  if key.choices:
    kwargs.setdefault('choices', key.choices)
    return parser.add_argument(name, **kwargs)

  def typed(text: str):
    shown = show(text)
    try:
      value = key.parse(text)
    except ValueError as e:
      raise argparse.ArgumentTypeError(f'{name}={shown}: {e}') from None
    if not key.accepts(value):
      raise argparse.ArgumentTypeError(f'{name}={shown}: {key.describe()}')
    return value
  typed.key = key  # For tests that draw every flag's values.
  return parser.add_argument(name, type=typed, **kwargs)


def as_pairs(value) -> tuple:
  """A list-of-pairs value as tuples (JSON and literals give lists); checking is accepts()'s."""
  return tuple(tuple(p) if isinstance(p, list) else p for p in value)
