"""LAMBADA and WikiText scores equal the same quantities computed with transformers directly."""
import json
import math
import os

import numpy as np
import pytest
import torch

from conftest import DATA
from test_generate import setup_from_hf
from test_hf import hf_model
from trainer import evaluate, tokenizer
from trainer.config import ConfigError

BPE_HF = {  # GPT-2's vocabulary, so the real BPE ids of the committed slices fit.
    'gpt2': dict(model_type='gpt2', vocab_size=50257, n_positions=128, n_embd=32, n_layer=2,
                 n_head=4, activation_function='gelu_new', initializer_range=0.2),
    'opt-350m-shaped': dict(model_type='opt', vocab_size=50272, hidden_size=32,
                            num_hidden_layers=2, ffn_dim=64, max_position_embeddings=128,
                            num_attention_heads=4, word_embed_proj_dim=16,
                            do_layer_norm_before=False, init_std=0.2),
}
LIMIT = 16


@pytest.fixture(scope='module')
def tok():
  return tokenizer.get('gpt2')


def hf_token_scores(model, ids):
  """(log-probs, argmax hits) of ids[1:] from one transformers forward pass."""
  with torch.no_grad():
    logits = model(torch.tensor(np.asarray([ids[:-1]]))).logits[0].double()
  logp = torch.log_softmax(logits, -1)
  target = torch.tensor(ids[1:])
  return (logp[torch.arange(len(target)), target].numpy(),
          (logits.argmax(-1) == target).numpy())


def loud_the(model, tok):
  """Scales the embedding row of " the" (tied to the output): it wins the argmax at about half
  the positions, so an untrained model gets some tokens, and some last words, right."""
  the = int(tok.encode(' the')[0])
  with torch.no_grad():
    model.get_input_embeddings().weight[the] *= 30
  return model


@pytest.mark.slow
@pytest.mark.parametrize('name', list(BPE_HF))
def test_lambada_equals_transformers(name, tok):
  model = loud_the(hf_model(BPE_HF[name]), tok)
  setup, params = setup_from_hf(model)
  texts = evaluate.read_lambada(os.path.join(DATA, 'lambada_test.jsonl'), LIMIT)
  texts += [t.rsplit(' ', 1)[0] + ' the' for t in texts[:6]]  # Last words it can get right.
  requests = evaluate.lambada_requests(texts, tok)
  assert max(len(w) for w, _ in requests) <= 128  # No truncation on either side.
  assert any(n > 1 for _, n in requests)  # Some last words span several tokens.
  scorer = evaluate.Scorer(setup, batch=8)
  ours = scorer.score(params, [w for w, _ in requests])
  last, word, loglik = [], [], []
  for (got_logp, got_hit), (whole, n) in zip(ours, requests):  # Per example, per token.
    logp, hit = hf_token_scores(model, whole)
    np.testing.assert_allclose(got_logp, logp, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(got_hit, hit)
    last.append(hit[-1])
    word.append(hit[-n:].all())
    loglik.append(logp[-n:].sum())
  got = evaluate.lambada(scorer, params, texts, tok)
  assert 0 < np.mean(last) < 1 and 0 < np.mean(word) < 1  # Accuracies that can differ.
  assert got['lambada_acc'] == np.mean(last) and got['lambada_acc_word'] == np.mean(word)
  assert got['lambada_ppl'] == pytest.approx(math.exp(-np.mean(loglik)), rel=1e-4)


def hf_sliding_window_nll(model, ids, context, stride):
  """Hugging Face's perplexity recipe (docs: perplexity of fixed-length models)."""
  nll, prev_end = 0.0, 0
  for begin in range(0, len(ids), stride):
    end = min(begin + context + 1, len(ids))
    window = ids[begin:end]
    fresh = end - 1 - prev_end  # Targets not scored by an earlier window.
    logp, _ = hf_token_scores(model, window)
    nll -= logp[-fresh:].sum()
    prev_end = end - 1
    if end == len(ids):
      break
  return nll


@pytest.mark.slow
@pytest.mark.parametrize('name', list(BPE_HF))
def test_wikitext_equals_transformers(name, tok):
  model = hf_model(BPE_HF[name])
  setup, params = setup_from_hf(model)
  with open(os.path.join(DATA, 'wiki.test.raw'), encoding='utf-8') as f:
    text = ''.join(f.readlines()[:8])
  for detok, context, stride in (('none', 128, 64), ('megatron', 64, 48)):
    ids = [tok.eot] + tok.encode(evaluate.DETOKENIZERS[detok](text)).tolist()
    assert len(ids) > 3 * context  # Several windows.
    nll = hf_sliding_window_nll(model, ids, context, stride)
    got = evaluate.wikitext(evaluate.Scorer(setup), params, text, tok, context, stride, detok)
    assert got['wikitext_ppl_token'] == pytest.approx(math.exp(nll / (len(ids) - 1)), rel=1e-4)
    assert got['wikitext_ppl_word'] == pytest.approx(math.exp(nll / len(text.split())), rel=1e-4)
    assert got['wikitext_ppl_word'] > got['wikitext_ppl_token']  # More tokens than words.


def test_sliding_windows_score_each_token_once():
  ids = list(range(100))
  windows = evaluate.sliding_windows(ids, 32, 16)
  scored = [t for w, k in windows for t in w[-k:]]
  assert scored == ids[1:]
  assert all(len(w) <= 33 for w, _ in windows)
  assert [w[0] for w, _ in windows] == [0, 16, 32, 48, 64, 80]
  assert all(len(w) - 1 - k >= 16 for w, k in windows[1:])  # Context of at least 16 each.


def test_detokenizer_equals_lm_eval():
  from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer
  with open(os.path.join(DATA, 'wiki.test.raw'), encoding='utf-8') as f:
    page = f.read()
  ours = evaluate.wikitext_detokenize(page)
  assert ours != page and ours == wikitext_detokenizer({'page': page})


@pytest.mark.parametrize('line, message', [
    ('{"txt": "a b"}', 'no "text"'), ('not json', 'not a JSON object'),
    ('{"text": "oneword"}', 'no "text" of two or more words'), ('[1, 2]', 'no "text"')])
def test_bad_lambada_lines(tmp_path, line, message):
  path = tmp_path / 'bad.jsonl'
  path.write_text('{"text": "fine line"}\n' + line + '\n')
  with pytest.raises(ConfigError, match=f'bad.jsonl:2: {message}'):
    evaluate.read_lambada(str(path))


def test_tokenizer_that_does_not_fit_the_model(tiny_workdir):
  from trainer import checkpoint
  _, cfg = tiny_workdir
  cfg = cfg.copy_and_resolve_references()
  cfg.data.tokenizer = 'gpt2'  # 50,257 ids for a 257-output byte model.
  with pytest.raises(ConfigError, match='does not fit its tokenizer'):
    evaluate.model_tokenizer(cfg)
  assert json.dumps(checkpoint.ARCHITECTURE)  # Module imports stay cheap.
