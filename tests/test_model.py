"""Parameter counts equal Hugging Face's for every preset; initialisation follows the papers."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import linen as nn

from trainer import config, hf
from trainer.model import Decoder, ModelConfig, flops_per_token, param_count

from conftest import ROOT

PRESETS = [('gpt2', n) for n in ('gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl')] + [
    ('opt', n) for n in ('opt-125m', 'opt-350m', 'opt-1.3b', 'opt-2.7b', 'opt-6.7b', 'opt-13b',
                         'opt-30b', 'opt-66b', 'opt-175b')]
PUBLISHED = {'gpt2': 124_439_808, 'gpt2-xl': 1_557_611_200, 'opt-125m': 125_239_296,
             'opt-350m': 331_196_416}


def preset(family, name) -> ModelConfig:
  return ModelConfig.from_config(config.load(f'{ROOT}/configs/{family}.py:{name}').model)


@pytest.mark.parametrize('family, name', PRESETS)
def test_param_count_equals_hugging_face(family, name):
  cfg = preset(family, name)
  spec = hf.hf_config(cfg)
  kind = spec.pop('model_type')
  spec.pop('architectures')
  with torch.device('meta'):  # Shapes only: opt-175b allocates nothing.
    model = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(kind, **spec))
  hf_count = sum(p.numel() for p in model.parameters())  # Tied weights counted once.
  assert param_count(cfg) == hf_count
  if name in PUBLISHED:
    assert hf_count == PUBLISHED[name]
  # Our own tree, abstractly, holds the same minus nothing but the vocab padding.
  shapes = jax.eval_shape(lambda k: Decoder(cfg).init(k, jnp.zeros((1, 2), jnp.int32)),
                          jax.random.PRNGKey(0))
  ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.unbox(shapes)))
  assert ours - (cfg.padded_vocab - cfg.vocab_size) * cfg.word_dim == hf_count


def test_flops_per_token_gpt2_124m():
  cfg = preset('gpt2', 'gpt2')
  # 6 x (85M block weights + 38.6M LM head) + 12 x 12 x 768 x 1024.
  assert flops_per_token(cfg, 1024) == 6 * (12 * 12 * 768**2 + 50257 * 768) + 12 * 12 * 768 * 1024


def test_init_follows_gpt2():
  cfg = ModelConfig(embed_dim=256, num_heads=4, mlp_dim=1024, num_layers=8, vocab_size=1000)
  params = nn.unbox(Decoder(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32)))
  p = params['params']
  residual = 0.02 / np.sqrt(2 * 8)
  for leaf, std in [(p['wte'], 0.02), (p['wpe'], 0.02), (p['h']['attn']['c_attn_kernel'], 0.02),
                    (p['h']['mlp']['c_fc_kernel'], 0.02),
                    (p['h']['attn']['c_proj_kernel'], residual),
                    (p['h']['mlp']['c_proj_kernel'], residual)]:
    assert abs(np.std(np.asarray(leaf)) / std - 1) < 0.03
  assert np.all(np.asarray(p['h']['mlp']['c_fc_bias']) == 0)
  assert np.all(np.asarray(p['h']['ln_1']['scale']) == 1)
  # Layers are initialised independently.
  assert not np.allclose(p['h']['mlp']['c_fc_kernel'][0], p['h']['mlp']['c_fc_kernel'][1])


def test_presets_carry_paper_details():
  gpt2, opt = preset('gpt2', 'gpt2'), preset('opt', 'opt-125m')
  assert (gpt2.activation, gpt2.ln_eps, gpt2.dropout, gpt2.attn_dropout) == ('gelu_tanh', 1e-5, 0.1, 0.1)
  assert (opt.activation, opt.pos_offset, opt.embed_dropout, opt.init_std) == ('relu', 2, 0.0, 0.006)
  opt350 = preset('opt', 'opt-350m')
  assert (opt350.pre_ln, opt350.final_ln, opt350.proj_dim) == (False, False, 512)
  paper = config.load(f'{ROOT}/configs/opt.py:opt-175b,paper')
  assert paper.train.batch_size * paper.train.seq_len == 1024 * 2048  # 2M tokens (OPT Table 1).
  assert paper.optim.warmup_steps == 2000 and paper.optim.lr == 1.2e-4


def test_padded_vocab_never_predicted():
  cfg = ModelConfig(vocab_size=300, embed_dim=32, num_heads=2, mlp_dim=64, num_layers=1)
  params = Decoder(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32))
  logits = Decoder(cfg).apply(params, jnp.zeros((1, 4), jnp.int32))
  assert logits.shape[-1] == 384
  assert np.all(np.asarray(logits[..., 300:]) < -1e29)
  assert np.all(np.asarray(jax.nn.softmax(logits)[..., 300:]) == 0)


def test_scan_and_remat_do_not_change_the_math():
  cfg = ModelConfig(vocab_size=300, embed_dim=32, num_heads=4, mlp_dim=64, num_layers=3)
  params = Decoder(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32))['params']
  params = nn.unbox(params)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 17), 0, 300)

  def loss(p, c):
    logits = Decoder(c).apply({'params': p}, tokens[:, :-1])
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1))

  ref_loss, ref_grads = jax.value_and_grad(loss)(params, cfg)
  for remat in ('dots', 'full'):
    c = dataclasses.replace(cfg, remat=remat)
    l, g = jax.value_and_grad(loss)(params, c)
    assert float(l) == pytest.approx(float(ref_loss), rel=1e-6)
    for a, b in zip(jax.tree.leaves(ref_grads), jax.tree.leaves(g)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  unrolled = {k: v for k, v in params.items() if k != 'h'}
  unrolled.update({f'h_{i}': jax.tree.map(lambda x, i=i: x[i], params['h']) for i in range(3)})
  flat = dataclasses.replace(cfg, scan_layers=False)
  assert float(loss(unrolled, flat)) == pytest.approx(float(ref_loss), rel=1e-6)
