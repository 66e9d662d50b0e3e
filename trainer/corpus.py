"""Raw text in: plain text files, directories of them, JSON Lines, each maybe gzip or zstd.

A plain file is one document, or several when a separator is given; a JSON Lines
file holds one document per line in a text field. Undecodable bytes are replaced
(U+FFFD) and counted, and JSON lines without the field are skipped and counted:
neither stops a run over a large crawl.
"""
from __future__ import annotations

import dataclasses
import gzip
import io
import json
import pathlib
from typing import Iterator

from trainer.config import ConfigError

COMPRESSED = ('.gz', '.zst', '.zstd')
JSON_LINES = ('.jsonl', '.ndjson', '.json')
_REPLACEMENT = '\ufffd'.encode('utf-8')


@dataclasses.dataclass
class Counts:
  """What reading saw; all of it ends up in stats.json."""
  files: int = 0
  bytes_in: int = 0
  invalid_utf8_sequences: int = 0  # Replaced with U+FFFD.
  documents_with_invalid_utf8: int = 0
  jsonl_lines_skipped: int = 0     # Not JSON, not an object, or without the text field.


def input_files(paths: list[str]) -> list[pathlib.Path]:
  """The files named, and every non-hidden file under the directories named, in a fixed order."""
  files = []
  for path in paths:
    p = pathlib.Path(path)
    if p.is_file():
      files.append(p)
    elif p.is_dir():
      files.extend(sorted(f for f in p.rglob('*') if f.is_file() and not any(
          part.startswith('.') for part in f.relative_to(p).parts)))
    else:
      raise ConfigError(f'--input: no such file or directory {path!r}')
  if not files:
    raise ConfigError(f'--input: found no files in {" ".join(paths)}; give text or JSON Lines files')
  return files


def _open(path: pathlib.Path):
  suffix = path.suffix.lower()
  if suffix == '.gz':
    return gzip.open(path, 'rb')
  if suffix in ('.zst', '.zstd'):
    import zstandard
    return io.BufferedReader(zstandard.open(path, 'rb'))  # Adds line iteration.
  return open(path, 'rb')


def decode(raw: bytes, counts: Counts) -> str:
  """UTF-8 text; invalid sequences become U+FFFD and are counted."""
  try:
    return raw.decode('utf-8')
  except UnicodeDecodeError:
    text = raw.decode('utf-8', errors='replace')
    counts.invalid_utf8_sequences += text.count('\ufffd') - raw.count(_REPLACEMENT)
    counts.documents_with_invalid_utf8 += 1
    return text


def is_json_lines(path: pathlib.Path) -> bool:
  name = path.name.lower()
  for suffix in COMPRESSED:
    name = name.removesuffix(suffix)
  return name.endswith(JSON_LINES)


def _json_documents(f, field: str, counts: Counts) -> Iterator[str]:
  for raw in f:
    counts.bytes_in += len(raw)
    if not raw.strip():
      continue
    try:
      record = json.loads(decode(raw, counts))
    except json.JSONDecodeError:
      record = None
    text = record.get(field) if isinstance(record, dict) else None
    if isinstance(text, str):
      yield text
    else:
      counts.jsonl_lines_skipped += 1


def documents(paths: list[str], text_field: str = 'text', separator: str = '',
              counts: Counts | None = None) -> Iterator[str]:
  """Every document of the inputs, in order; whitespace-only pieces are dropped."""
  counts = counts if counts is not None else Counts()
  for path in input_files(paths):
    counts.files += 1
    try:
      with _open(path) as f:
        if is_json_lines(path):
          yield from (d for d in _json_documents(f, text_field, counts) if d.strip())
          continue
        raw = f.read()
    except (OSError, EOFError) as e:  # Unreadable or corrupt compressed file.
      raise ConfigError(f'--input: cannot read {str(path)!r}: {e}') from None
    counts.bytes_in += len(raw)
    text = decode(raw, counts)
    yield from (d for d in (text.split(separator) if separator else [text]) if d.strip())


def parse_separator(text: str) -> str:
  r"""Turns the escapes a shell leaves alone (``\n``, ``\t``) into the characters."""
  try:
    return text.encode('utf-8').decode('unicode_escape').encode('latin-1').decode('utf-8')
  except UnicodeError as e:  # A broken escape such as '\x' or '\u12'.
    raise ConfigError(f'--separator={text!r}: {e.reason}; write escapes like \\n or \\t') from None

