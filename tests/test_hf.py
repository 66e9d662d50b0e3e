"""Logits equal Hugging Face GPT-2 / OPT after converting their weights into ours."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from trainer import hf
from trainer.model import Decoder, ModelConfig

TINY_HF = {
    'gpt2': dict(model_type='gpt2', vocab_size=1000, n_positions=64, n_embd=64, n_layer=2,
                 n_head=4, activation_function='gelu_new', initializer_range=0.1),
    'opt': dict(model_type='opt', vocab_size=1000, hidden_size=64, num_hidden_layers=2,
                ffn_dim=256, max_position_embeddings=64, num_attention_heads=4,
                word_embed_proj_dim=64, do_layer_norm_before=True, init_std=0.1),
    'opt-350m-shaped': dict(model_type='opt', vocab_size=1000, hidden_size=64,
                            num_hidden_layers=2, ffn_dim=256, max_position_embeddings=64,
                            num_attention_heads=4, word_embed_proj_dim=32,
                            do_layer_norm_before=False, init_std=0.1),
}


def hf_model(spec: dict):
  spec = dict(spec)
  kind = spec.pop('model_type')
  config = transformers.AutoConfig.for_model(kind, **spec)
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(config).eval()
  with torch.no_grad():  # Random LN and bias values, so the test sees them.
    for name, p in model.named_parameters():
      if 'norm' in name or 'ln' in name or name.endswith('bias'):
        p.add_(0.1 * torch.randn_like(p))
  return model


def ours_from(model, scan_layers=True):
  overrides = hf.model_overrides(model.config.to_dict())
  cfg = ModelConfig(**overrides, scan_layers=scan_layers)
  tensors = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  return cfg, hf.params_from_hf(tensors, cfg)


@pytest.mark.parametrize('name', list(TINY_HF))
@pytest.mark.parametrize('scan_layers', [True, False])
def test_logits_match_hugging_face(name, scan_layers):
  model = hf_model(TINY_HF[name])
  cfg, params = ours_from(model, scan_layers)
  assert cfg.vocab_size == 1000 and cfg.padded_vocab == 1024
  tokens = np.random.RandomState(0).randint(0, 1000, (2, 48))
  with torch.no_grad():
    want = model(torch.tensor(tokens)).logits.numpy()
  got = Decoder(cfg).apply({'params': params}, jnp.asarray(tokens))
  got = np.asarray(got)[..., :cfg.vocab_size]
  assert np.abs(got - want).max() < 1e-4
  assert np.abs(want).max() > 0.1  # The comparison is not between two near-zero tensors.


@pytest.mark.parametrize('name', list(TINY_HF))
def test_weights_round_trip(name):
  model = hf_model(TINY_HF[name])
  cfg, params = ours_from(model)
  back = hf.params_to_hf(params, cfg)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  assert set(back) == set(state) - {'lm_head.weight'}  # Tied: written once.
  for key, value in back.items():
    np.testing.assert_array_equal(value, state[key], err_msg=key)
  assert hf.model_overrides(hf.hf_config(cfg)) == hf.model_overrides(model.config.to_dict())


def test_misshaped_tensor_is_named():
  model = hf_model(TINY_HF['gpt2'])
  cfg, _ = ours_from(model)
  tensors = {k: v.numpy() for k, v in model.state_dict().items()}
  tensors['transformer.h.1.mlp.c_fc.weight'] = tensors['transformer.h.1.mlp.c_fc.weight'][:, :10]
  with pytest.raises(hf.ConversionError, match=r"'transformer.h.1.mlp.c_fc.weight' has shape"):
    hf.params_from_hf(tensors, cfg)
  del tensors['transformer.ln_f.bias']
  with pytest.raises(hf.ConversionError, match="missing tensor 'transformer.ln_f.bias'"):
    hf.params_from_hf(tensors, cfg)
