"""KV-cache generation equals full recomputation, Hugging Face's generate, and itself batched."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from conftest import tiny_config
from test_hf import TINY_HF, hf_model
from trainer import config, generate, hf, train
from trainer.config import ConfigError

GREEDY = generate.Sampling(max_new_tokens=12, temperature=0.0)


def tiny_setup(variant='gpt2'):
  """A tiny model with larger weights than its init (so logits are far from uniform)."""
  setup = train.build(tiny_config(variant, **{'model.init_std': 0.3}))
  return setup, setup.init_state(0).params


def setup_from_hf(model):
  """Our Setup and params (sharded on 8 devices) for a tiny transformers model."""
  cfg = tiny_config()
  for key, value in hf.model_overrides(model.config.to_dict()).items():
    config.set_value(cfg, f'model.{key}', value)
  for key in ('dropout', 'embed_dropout', 'attn_dropout'):
    cfg.model[key] = 0.0
  setup = train.build(cfg)
  tensors = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  params = hf.params_from_hf(tensors, setup.model_cfg)
  return setup, jax.device_put(params, setup.state_shardings.params)


def full_recompute(setup, params, prompt, tokens):
  """Logits of a full forward pass over prompt + tokens, at each position that chose a token.

  The model is causal, so position i's logits are what recomputing the prefix up to i gives.
  """
  seq = jnp.asarray([list(prompt) + list(tokens)])
  logits = jax.jit(setup.eval_model.apply)({'params': params}, seq)
  return np.asarray(logits[0, len(prompt) - 1:-1, :setup.model_cfg.vocab_size])


@pytest.mark.slow
@pytest.mark.parametrize('variant', ['gpt2', 'opt', 'opt350m'])
def test_cache_equals_full_recomputation(variant):
  setup, params = tiny_setup(variant)
  prompt = [5, 17, 99, 3, 250, 41, 7]
  gen = generate.Generator(setup, 1)
  got, got_logits = gen.generate(params, [prompt], GREEDY, return_logits=True)
  want_logits = full_recompute(setup, params, prompt, got[0])
  assert len(got[0]) == GREEDY.max_new_tokens and len(set(got[0])) > 2  # Not constant.
  assert got[0] == want_logits.argmax(-1).tolist()  # Each token is the recomputed argmax.
  np.testing.assert_allclose(got_logits[:, 0], want_logits, atol=2e-5, rtol=1e-5)
  assert np.ptp(want_logits) > 1.0


@pytest.mark.slow
def test_batched_prompts_of_different_lengths_equal_one_at_a_time():
  setup, params = tiny_setup()
  prompts = [[1, 2, 3], [40, 50, 60, 70, 80, 90, 100, 110, 120, 130], [7]]
  assert len({generate.bucket(len(p), 64) for p in prompts}) > 1  # Different prompt buckets too.
  batched = generate.Generator(setup, 3)
  single = generate.Generator(setup, 1)
  sampled = generate.Sampling(max_new_tokens=10, temperature=1.0, top_k=50, seed=3)
  for how in (GREEDY, sampled):
    together = batched.generate(params, prompts, how, row_seeds=[0, 1, 2])
    alone = [single.generate(params, [p], how, row_seeds=[i])[0] for i, p in enumerate(prompts)]
    assert together == alone
    assert together[0] != together[1]


@pytest.mark.slow
def test_same_seed_same_sample_and_end_of_text_stops():
  setup, params = tiny_setup()
  gen = generate.Generator(setup, 2)
  how = generate.Sampling(max_new_tokens=16, temperature=1.0, seed=7)
  first = gen.generate(params, [[1, 2, 3], [4, 5]], how)
  assert first == gen.generate(params, [[1, 2, 3], [4, 5]], how)
  other = gen.generate(params, [[1, 2, 3], [4, 5]], generate.Sampling(16, 1.0, seed=8))
  assert other != first
  eot = first[0][4]  # Pretend the fifth token is end-of-text: row 0 stops before it.
  stopped = gen.generate(params, [[1, 2, 3], [4, 5]], how, eot=eot)
  assert stopped[0] == first[0][:first[0].index(eot)]
  assert len(stopped[0]) < len(first[0])


def test_top_k_and_top_p_keep_what_hugging_face_keeps():
  logits = np.random.RandomState(0).randn(4, 300).astype(np.float32) * 3
  for temperature, top_k, top_p in ((1.0, 20, 1.0), (1.0, 0, 0.9), (0.7, 50, 0.8), (1.3, 5, 0.3)):
    ours = np.asarray(generate.filter_logits(jnp.asarray(logits), temperature, top_k, top_p))
    warpers = [transformers.TemperatureLogitsWarper(temperature)]
    warpers += [transformers.TopKLogitsWarper(top_k)] if top_k else []
    warpers += [transformers.TopPLogitsWarper(top_p)] if top_p < 1 else []
    theirs = torch.tensor(logits)
    for w in warpers:
      theirs = w(None, theirs)
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(theirs.numpy()))
    assert 0 < np.isfinite(ours).sum() < ours.size
  probs = np.asarray(jax.nn.softmax(jnp.log(jnp.asarray([[0.5, 0.2, 0.15, 0.1, 0.05]]))))
  kept = lambda k, p: np.isfinite(generate.filter_logits(jnp.log(probs), 1.0, k, p))[0].tolist()
  assert kept(2, 1.0) == [True, True, False, False, False]
  assert kept(0, 0.6) == [True, True, False, False, False]   # 0.5 < 0.6 <= 0.7.
  assert kept(0, 0.5) == [True, False, False, False, False]  # The top token alone holds 0.5.
  assert kept(0, 0.96) == [True] * 5


def test_sampled_frequencies_follow_the_kept_mass():
  """Draws from top-p 0.8 over [0.5, 0.2, 0.15, 0.1, 0.05]: tokens 0-2 renormalised."""
  logits = jnp.log(jnp.asarray([[0.5, 0.2, 0.15, 0.1, 0.05]] * 4000))
  keys = jax.random.split(jax.random.PRNGKey(0), 4000)
  draws = np.asarray(generate.next_token(logits, keys, 1.0, 0, 0.8))
  freq = np.bincount(draws, minlength=5) / draws.size
  np.testing.assert_allclose(freq, [0.5 / 0.85, 0.2 / 0.85, 0.15 / 0.85, 0, 0], atol=0.03)


@pytest.mark.parametrize('name', ['gpt2', 'opt-350m-shaped'])
def test_greedy_equals_transformers_generate(name):
  model = hf_model(TINY_HF[name])
  setup, params = setup_from_hf(model)
  prompts = [[11, 200, 34, 999, 5], [300, 301]]
  ours = generate.Generator(setup, 2).generate(params, prompts, GREEDY)
  for prompt, got in zip(prompts, ours):
    with torch.no_grad():
      out = model.generate(torch.tensor([prompt]), max_new_tokens=GREEDY.max_new_tokens,
                           do_sample=False, eos_token_id=None, pad_token_id=0)
    assert got == out[0, len(prompt):].tolist()
  assert ours[0] != ours[1]


def test_bad_prompts_are_config_errors():
  setup, params = tiny_setup()
  gen = generate.Generator(setup, 1)
  with pytest.raises(ConfigError, match='empty'):
    gen.generate(params, [[]], GREEDY)
  with pytest.raises(ConfigError, match='context is 64'):
    gen.generate(params, [list(range(64))], GREEDY)
