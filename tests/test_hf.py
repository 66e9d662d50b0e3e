"""Logits equal Hugging Face GPT-2 / OPT after converting their weights into ours."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from conftest import tiny_config
from trainer import checkpoint, cli, data, hf, loop
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


# ---- trainer export and --config.init_from=hf:PATH ---------------------------------------------

def _run_cli(capsys, *argv):
  code = cli.main(list(argv))
  return code, capsys.readouterr()


@pytest.mark.slow
@pytest.mark.parametrize('variant', ['gpt2', 'opt', 'opt350m'])
def test_export_loads_in_transformers(variant, tmp_path, capsys):
  workdir, out = tmp_path / 'run', tmp_path / 'hf'
  loop.run(tiny_config(variant, **{'train.steps': 2}), str(workdir))
  code, printed = _run_cli(capsys, 'export', f'--workdir={workdir}', f'--out={out}')
  assert code == 0, printed.err
  assert sorted(os.listdir(out)) == ['config.json', 'model.safetensors']
  model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  cfg, step, state = checkpoint.latest(str(workdir))
  assert step == 2 and model.config.model_type == cfg.model.family
  tokens = np.random.RandomState(0).randint(0, 257, (2, 48))
  with torch.no_grad():
    want = model(torch.tensor(tokens)).logits.numpy()
  ours = Decoder(ModelConfig.from_config(cfg.model))
  got = np.asarray(ours.apply({'params': jax.device_get(state.params)}, jnp.asarray(tokens)))
  diff = np.abs(got[..., :257] - want).max()
  assert diff < 1e-4 and diff < 1e-3 * np.abs(want).max()  # OPT's 0.006 init keeps logits small.
  # Nothing is overwritten: a second export to the same directory is refused.
  code, printed = _run_cli(capsys, 'export', f'--workdir={workdir}', f'--out={out}')
  assert code == 2 and f'{out} already holds config.json' in printed.err


@pytest.mark.slow
@pytest.mark.parametrize('name,variant', [('gpt2', 'gpt2'), ('opt-350m-shaped', 'opt350m')])
def test_init_from_hugging_face(name, variant, tmp_path):
  model = hf_model(TINY_HF[name])
  model.save_pretrained(tmp_path / 'hf', safe_serialization=True)
  cfg = tiny_config(variant, **{'train.steps': 1, 'model.vocab_size': 1000,
                                'init_from': f'hf:{tmp_path}/hf'})
  first = next(iter(data.load(cfg).train.to_iter_dataset()))
  with torch.no_grad():
    logits = model(torch.tensor(first[:, :-1])).logits
    targets = torch.tensor(first[:, 1:].astype(np.int64)).reshape(-1)
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, 1000), targets).item()
  got = loop.run(cfg, str(tmp_path / 'run'))['records'][0]['loss']
  fresh = loop.run(tiny_config(variant, **{'train.steps': 1, 'model.vocab_size': 1000}),
                   str(tmp_path / 'fresh'))['records'][0]['loss']
  assert abs(fresh - want) > 0.01  # Random init gives another loss: the import mattered.
  assert abs(got - want) / want < 1e-5


def _saved_tiny_gpt2(path):
  model = hf_model(TINY_HF['gpt2'])
  model.save_pretrained(path, safe_serialization=True)
  return safetensors.numpy.load_file(str(path / 'model.safetensors'))


def test_bad_hugging_face_directories(tmp_path, capsys):
  hf_dir = tmp_path / 'hf'
  tensors = _saved_tiny_gpt2(hf_dir)
  capsys.readouterr()  # Drop transformers' progress bar.
  train = ['train', '--config=configs/tiny.py', f'--workdir={tmp_path}/run',
           f'--config.init_from=hf:{hf_dir}', '--config.train.steps=1']

  def fails(*extra):
    code, printed = _run_cli(capsys, *train, *extra)
    assert code == 2 and printed.err.count('\n') == 1
    return printed.err
  assert f'{hf_dir}/config.json: model.vocab_size is 1000 there but 257 here; set ' \
         '--config.model.vocab_size=1000' in fails()
  tensors['transformer.h.1.mlp.c_fc.weight'] = tensors['transformer.h.1.mlp.c_fc.weight'][:, :7]
  del tensors['transformer.ln_f.bias']
  safetensors.numpy.save_file(tensors, str(hf_dir / 'model.safetensors'))
  assert "missing tensor 'transformer.ln_f.bias'" in fails('--config.model.vocab_size=1000')
  tensors['transformer.ln_f.bias'] = np.zeros(64, np.float32)
  safetensors.numpy.save_file(tensors, str(hf_dir / 'model.safetensors'))
  assert "tensor 'transformer.h.1.mlp.c_fc.weight' has shape (64, 7)" in fails(
      '--config.model.vocab_size=1000')
  os.remove(hf_dir / 'model.safetensors')
  (hf_dir / 'pytorch_model.bin').write_bytes(b'pickle')
  assert f'{hf_dir}: no model.safetensors' in fails('--config.model.vocab_size=1000')
  assert not os.path.exists(tmp_path / 'run/checkpoints/1')


def test_export_needs_a_checkpoint(tmp_path, capsys):
  code, printed = _run_cli(capsys, 'export', f'--workdir={tmp_path}', f'--out={tmp_path}/hf')
  assert code == 2 and printed.err.count('\n') == 1
  assert f'{tmp_path}/checkpoints: no such directory' in printed.err
  (tmp_path / 'checkpoints').mkdir()
  code, printed = _run_cli(capsys, 'export', f'--workdir={tmp_path}', f'--out={tmp_path}/hf')
  assert code == 2 and f'{tmp_path}/checkpoints: holds no complete checkpoint' in printed.err
  assert not os.path.exists(tmp_path / 'hf')
