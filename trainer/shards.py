"""Stage 0 of ``trainer prepare``: the inputs, cut into fixed-size text shards.

Shards are the unit of parallel work. Their boundaries depend only on the inputs and
``shard_bytes`` (never on the worker count), which is what makes the output identical
for any ``--workers``. Each shard is ``NNNNN.txt`` (documents back to back, UTF-8) and
``NNNNN.offsets.npy`` (where each document starts and ends), so a later stage can read
one document without reading the rest. Validation documents (``--val_input``) get
shards of their own after the training ones.

Reading is sequential (decompression and decoding run at hundreds of MB/s, far
ahead of tokenizing); ``manifest.json`` is written last and marks the stage done.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import numpy as np

from trainer import corpus

MANIFEST = 'manifest.json'


class _Writer:
  """Appends documents to shards, starting a new shard every ``shard_bytes``."""

  def __init__(self, root: pathlib.Path, shard_bytes: int, start: int):
    self.root, self.shard_bytes, self.index = root, shard_bytes, start
    self.sizes: list[int] = []  # Documents per finished shard.
    self.file, self.offsets = None, [0]

  def add(self, text: str):
    if self.file is None:
      self.file = open(self.root / f'{self.index:05d}.txt.tmp', 'wb')
    data = text.encode('utf-8', 'surrogatepass')
    self.file.write(data)
    self.offsets.append(self.offsets[-1] + len(data))
    if self.offsets[-1] >= self.shard_bytes:
      self.close()

  def close(self):
    if self.file is None:
      return
    self.file.close()
    np.save(self.root / f'{self.index:05d}.offsets.npy', np.asarray(self.offsets, np.int64))
    os.replace(self.root / f'{self.index:05d}.txt.tmp', self.root / f'{self.index:05d}.txt')
    self.sizes.append(len(self.offsets) - 1)
    self.file, self.offsets, self.index = None, [0], self.index + 1


def write(root: pathlib.Path, inputs: list[str], val_inputs: list[str], text_field: str,
          separator: str, shard_bytes: int) -> dict:
  """Cuts the inputs into shards under ``root`` (unless done before); returns the manifest."""
  if (root / MANIFEST).exists():
    return json.loads((root / MANIFEST).read_text())
  root.mkdir(parents=True, exist_ok=True)
  manifest = {}
  for split, paths in (('train', inputs), ('validation', val_inputs)):
    counts = corpus.Counts()
    writer = _Writer(root, shard_bytes, sum(len(m['sizes']) for m in manifest.values()))
    for text in corpus.documents(paths, text_field, separator, counts) if paths else ():
      writer.add(text)
    writer.close()
    manifest[split] = {'sizes': writer.sizes, 'counts': dataclasses.asdict(counts)}
  (root / (MANIFEST + '.tmp')).write_text(json.dumps(manifest))
  os.replace(root / (MANIFEST + '.tmp'), root / MANIFEST)
  return manifest


def sizes(manifest: dict) -> list[int]:
  """Documents per shard, all shards in order (training first)."""
  return manifest['train']['sizes'] + manifest['validation']['sizes']


class Reader:
  """Random access to the documents of one shard."""

  def __init__(self, root: pathlib.Path, shard: int):
    self.offsets = np.load(root / f'{shard:05d}.offsets.npy')
    self.path = root / f'{shard:05d}.txt'

  def __len__(self):
    return len(self.offsets) - 1

  def __iter__(self):
    data = self.path.read_bytes()  # One shard (a few MB) at a time.
    for start, end in zip(self.offsets[:-1].tolist(), self.offsets[1:].tolist()):
      yield data[start:end].decode('utf-8', 'surrogatepass')

  def __getitem__(self, i: int) -> str:
    start, end = int(self.offsets[i]), int(self.offsets[i + 1])
    with open(self.path, 'rb') as f:
      f.seek(start)
      return f.read(end - start).decode('utf-8', 'surrogatepass')
