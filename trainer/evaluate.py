"""Zero-shot evaluation as the GPT-2 paper did it: LAMBADA, WikiText, validation loss.

Every task reduces to scoring token sequences: for each target token, its log-probability
and whether it is the argmax. ``Scorer`` does that on the training mesh, a fixed batch of
rows padded on the right to a power-of-two length bucket (one compile per bucket); causal
attention makes the padding invisible to the real tokens. docs/evaluation.md says which
number follows which convention.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np

from trainer import sharding
from trainer import tokenizer as tokenizer_lib
from trainer.config import ConfigError

TASKS = ('lambada', 'wikitext', 'loss', 'harness')
CONVENTIONS = {
    'lambada_acc': 'last BPE token predicted by argmax (OpenAI, GPT-2 paper)',
    'lambada_acc_word': 'every token of the last word predicted by argmax (lm-eval)',
    'lambada_ppl': 'exp(-mean log-likelihood of the last word) (lm-eval lambada perplexity)',
    'wikitext_ppl_token': 'exp(mean NLL per BPE token), sliding window, end-of-text first',
    'wikitext_ppl_word': 'exp(total NLL / whitespace words of the original text) '
                         '(GPT-2 paper, Megatron adjusted perplexity)',
    'val_loss': 'mean next-token cross-entropy over the whole validation split',
}


def model_tokenizer(cfg):
  """The tokenizer the checkpoint's model was trained with."""
  d = cfg.data
  name = d.tokenizer
  if not name and d.path and not d.source:
    stats = os.path.join(d.path, 'stats.json')
    if os.path.isfile(stats):
      with open(stats) as f:
        name = json.load(f).get('tokenizer', '')
  name = name or ('gpt2' if d.source else 'byte')
  tok = tokenizer_lib.get(name)
  if tok.vocab_size > cfg.model.vocab_size:
    raise ConfigError(f'the model has {cfg.model.vocab_size} outputs but its {name} tokenizer has '
                      f'{tok.vocab_size} ids; this checkpoint does not fit its tokenizer')
  return tok


def bucket(length: int, cap: int) -> int:
  """Padded row length: the next power of two (at least 16), at most ``cap``."""
  return min(cap, max(16, 1 << (max(length, 1) - 1).bit_length()))


class Scorer:
  """Log-probability and argmax hit of every target token of many sequences, batched."""

  def __init__(self, setup, batch: int = 8, progress: bool = True):
    self.setup, self.vocab = setup, setup.model_cfg.vocab_size
    shards = setup.mesh.shape['data'] * setup.mesh.shape['fsdp']
    self.batch = -(-batch // shards) * shards
    self.progress = progress
    self._fn = jax.jit(self._score_fn,
                       in_shardings=(setup.state_shardings.params, setup.batch_sharding),
                       out_shardings=sharding.replicated(setup.mesh))

  def _score_fn(self, params, tokens_BL1):
    logits_BLV = self.setup.eval_model.apply({'params': params}, tokens_BL1[:, :-1])
    logits_BLV = logits_BLV[..., :self.vocab].astype(jnp.float32)
    targets_BL = tokens_BL1[:, 1:]
    logp_BLV = jax.nn.log_softmax(logits_BLV, axis=-1)
    logp_BL = jnp.take_along_axis(logp_BLV, targets_BL[..., None], -1)[..., 0]
    return logp_BL, jnp.argmax(logits_BLV, axis=-1) == targets_BL

  def score(self, params, seqs, desc: str = 'scoring'):
    """For each sequence of ids, (log-probs, argmax hits) of ids[1:] given what precedes.

    Sequences longer than the context keep their last max_len + 1 ids (the earliest
    tokens are dropped, as lm-eval does); the arrays then cover only those.
    """
    from tqdm import tqdm
    cap = self.setup.model_cfg.max_len
    seqs = [np.asarray(s[-(cap + 1):], np.int32) for s in seqs]
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))  # Similar lengths together.
    out = [None] * len(seqs)
    batches = [order[i:i + self.batch] for i in range(0, len(order), self.batch)]
    bar = tqdm(batches, desc=desc, unit='batch', file=sys.stderr,
               disable=None if self.progress else True, leave=False)
    with self.setup.rules_context():
      for rows in bar:
        length = bucket(max(len(seqs[i]) - 1 for i in rows), cap)
        buf = np.zeros((self.batch, length + 1), np.int32)
        for r, i in enumerate(rows):
          buf[r, :len(seqs[i])] = seqs[i]
        tokens = jax.make_array_from_callback(buf.shape, self.setup.batch_sharding,
                                              lambda idx: buf[idx])
        logp, hit = jax.device_get(self._fn(params, tokens))
        for r, i in enumerate(rows):
          n = len(seqs[i]) - 1
          out[i] = (np.asarray(logp[r, :n], np.float64), np.asarray(hit[r, :n]))
    return out


# ---- LAMBADA ----------------------------------------------------------------------------------

def read_lambada(path: str, limit: int | None = None) -> list[str]:
  """Texts of a LAMBADA JSON Lines file ({"text": ...} per line), local or gs://."""
  texts = []
  for n, line in enumerate(read_text(path).splitlines(), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      raise ConfigError(f'{path}:{n}: not a JSON object; LAMBADA data is JSON Lines of '
                        '{"text": ...}') from None
    text = record.get('text') if isinstance(record, dict) else None
    if not isinstance(text, str) or ' ' not in text.strip():
      raise ConfigError(f'{path}:{n}: no "text" of two or more words; each line must be '
                        '{"text": "... last_word"}')
    texts.append(text.strip())
    if limit and len(texts) == limit:
      break
  if not texts:
    raise ConfigError(f'{path}: holds no examples; give a LAMBADA JSON Lines file')
  return texts


def lambada_requests(texts, tok):
  """(whole ids, tokens in the last word) per text, split as lm-eval splits context/target."""
  out = []
  for text in texts:
    context, word = text.rsplit(' ', 1)
    whole = tok.encode(context + ' ' + word)
    n_word = len(whole) - len(tok.encode(context))
    out.append((whole, max(n_word, 1)))
  return out


def lambada(scorer, params, texts, tok) -> dict:
  """lambada_acc (last token), lambada_acc_word (whole last word) and lambada_ppl."""
  requests = lambada_requests(texts, tok)
  scores = scorer.score(params, [whole for whole, _ in requests], desc='lambada')
  last = [hit[-1] for _, hit in scores]
  word = [hit[-n:].all() for (_, n), (_, hit) in zip(requests, scores)]
  loglik = [logp[-n:].sum() for (_, n), (logp, _) in zip(requests, scores)]
  return {'lambada_acc': float(np.mean(last)), 'lambada_acc_word': float(np.mean(word)),
          'lambada_ppl': float(math.exp(-np.mean(loglik))), 'lambada_examples': len(texts)}


# ---- WikiText ---------------------------------------------------------------------------------

def wikitext_detokenize(text: str) -> str:
  """Undoes WikiText's tokenization spacing (Megatron-LM's detokenizer, as lm-eval uses it)."""
  s = text.replace("s '", "s'")
  s = re.sub(r"/' [0-9]/", r"/'[0-9]/", s)
  s = s.replace(' @-@ ', '-').replace(' @,@ ', ',').replace(' @.@ ', '.')
  s = s.replace(' : ', ': ').replace(' ; ', '; ').replace(' . ', '. ').replace(' ! ', '! ')
  s = s.replace(' ? ', '? ').replace(' , ', ', ')
  s = re.sub(r'\(\s*([^\)]*?)\s*\)', r'(\1)', s)
  s = re.sub(r'\[\s*([^\]]*?)\s*\]', r'[\1]', s)
  s = re.sub(r'{\s*([^}]*?)\s*}', r'{\1}', s)
  s = re.sub(r'\"\s*([^\"]*?)\s*\"', r'"\1"', s)
  s = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", s)
  s = s.replace('= = = =', '====').replace('= = =', '===').replace('= =', '==')
  s = s.replace(' ' + chr(176) + ' ', chr(176)).replace(' \n', '\n').replace('\n ', '\n')
  s = s.replace(' N ', ' 1 ').replace(" 's", "'s")
  return s


DETOKENIZERS = {'none': lambda s: s, 'megatron': wikitext_detokenize}


def sliding_windows(ids, context: int, stride: int):
  """(window ids, targets scored) covering ids[1:] once each; a window sees ``context`` ids.

  Each window after the first starts ``stride`` later and scores only the targets that
  earlier windows did not, so every token but the first is predicted with at least
  ``context - stride`` tokens before it (Hugging Face's perplexity recipe).
  """
  n, out, begin, done = len(ids), [], 0, 0
  while done < n - 1:
    end = min(begin + context, n - 1)  # Inputs ids[begin:end], targets ids[begin + 1:end + 1].
    out.append((ids[begin:end + 1], end - done))
    done, begin = end, begin + stride
  return out


def wikitext(scorer, params, text: str, tok, context: int, stride: int,
             detokenizer: str = 'none') -> dict:
  """Token and word perplexity of one raw text, end-of-text prepended (scored from token 1)."""
  words = len(text.split())
  ids = np.concatenate([[tok.eot], tok.encode(DETOKENIZERS[detokenizer](text))]).astype(np.int32)
  windows = sliding_windows(ids, context, stride)
  scores = scorer.score(params, [w for w, _ in windows], desc='wikitext')
  nll = -sum(logp[-k:].sum() for (_, k), (logp, _) in zip(windows, scores))
  tokens = len(ids) - 1
  return {'wikitext_ppl_token': float(math.exp(nll / tokens)),
          'wikitext_ppl_word': float(math.exp(nll / words)), 'wikitext_tokens': tokens,
          'wikitext_words': words, 'wikitext_context': context, 'wikitext_stride': stride,
          'wikitext_detokenizer': detokenizer}


def read_text(path: str) -> str:
  from etils import epath
  p = epath.Path(path)
  if not p.is_file():
    raise ConfigError(f'--data={path}: no such file; give the evaluation data file')
  try:
    return p.read_text(encoding='utf-8')
  except UnicodeDecodeError:
    raise ConfigError(f'--data={path}: not UTF-8 text; give a text or JSON Lines file') from None
