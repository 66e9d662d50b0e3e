"""Hugging Face GPT-2 / OPT weights and configs to ours and back.

One table per family maps each of our parameters to Hugging Face tensor names,
with the reshape each way. Tensors are numpy arrays; nothing here imports torch
or unpickles anything (safetensors only).
"""
from __future__ import annotations

import json

import jax
import numpy as np
from flax import linen as nn

from trainer import storage
from trainer.config import ConfigError
from trainer.model import ModelConfig, abstract_params


class ConversionError(ConfigError):
  """Missing or misshaped tensors, or an architecture the other side cannot express."""


# ---- configs -----------------------------------------------------------------------------------

def model_overrides(hf_config: dict) -> dict:
  """``config.model`` values for a Hugging Face config.json (gpt2 or opt)."""
  kind = hf_config.get('model_type')
  if kind == 'gpt2':
    E = hf_config['n_embd']
    act = hf_config.get('activation_function', 'gelu_new')
    if act not in ('gelu_new', 'gelu_pytorch_tanh'):
      raise ConversionError(f'GPT-2 activation {act!r} is not supported (only the tanh GELU)')
    return dict(family='gpt2', vocab_size=hf_config['vocab_size'], max_len=hf_config['n_positions'],
                pos_offset=0, embed_dim=E, proj_dim=0, num_layers=hf_config['n_layer'],
                num_heads=hf_config['n_head'], mlp_dim=hf_config.get('n_inner') or 4 * E,
                activation='gelu_tanh', pre_ln=True, final_ln=True, tie_embeddings=True,
                use_bias=True, dropout=hf_config.get('resid_pdrop', 0.1),
                embed_dropout=hf_config.get('embd_pdrop', 0.1),
                attn_dropout=hf_config.get('attn_pdrop', 0.1),
                ln_eps=hf_config.get('layer_norm_epsilon', 1e-5),
                init_std=hf_config.get('initializer_range', 0.02))
  if kind == 'opt':
    E = hf_config['hidden_size']
    W = hf_config.get('word_embed_proj_dim') or E
    pre_ln = hf_config.get('do_layer_norm_before', True)
    return dict(family='opt', vocab_size=hf_config['vocab_size'],
                max_len=hf_config['max_position_embeddings'], pos_offset=2, embed_dim=E,
                proj_dim=W if W != E else 0, num_layers=hf_config['num_hidden_layers'],
                num_heads=hf_config['num_attention_heads'], mlp_dim=hf_config['ffn_dim'],
                activation=_opt_activation(hf_config), pre_ln=pre_ln,
                final_ln=pre_ln and not hf_config.get('_remove_final_layer_norm', False),
                tie_embeddings=hf_config.get('tie_word_embeddings', True),
                use_bias=hf_config.get('enable_bias', True), dropout=hf_config.get('dropout', 0.1),
                embed_dropout=0.0, attn_dropout=hf_config.get('attention_dropout', 0.0),
                ln_eps=1e-5, init_std=hf_config.get('init_std', 0.02))
  raise ConversionError(f'model_type {kind!r} is not supported; expected gpt2 or opt')


def _opt_activation(hf_config):
  act = hf_config.get('activation_function', 'relu')
  if act != 'relu':
    raise ConversionError(f'OPT activation {act!r} is not supported (only relu)')
  return 'relu'


def hf_config(cfg: ModelConfig) -> dict:
  """A Hugging Face config.json for our model."""
  if cfg.family == 'gpt2':
    if cfg.proj_dim or not cfg.pre_ln or not cfg.final_ln or cfg.activation != 'gelu_tanh' \
        or cfg.pos_offset or not cfg.use_bias or not cfg.tie_embeddings:
      raise ConversionError('this model is not a GPT-2 architecture; set model.family=opt or '
                            'use GPT-2 fields (pre-LN, final LN, tanh GELU, biases, tied)')
    return dict(model_type='gpt2', architectures=['GPT2LMHeadModel'], vocab_size=cfg.vocab_size,
                n_positions=cfg.max_len, n_embd=cfg.embed_dim, n_layer=cfg.num_layers,
                n_head=cfg.num_heads, n_inner=cfg.mlp_dim, activation_function='gelu_new',
                resid_pdrop=cfg.dropout, embd_pdrop=cfg.embed_dropout, attn_pdrop=cfg.attn_dropout,
                layer_norm_epsilon=cfg.ln_eps, initializer_range=cfg.init_std,
                tie_word_embeddings=True,
                # End-of-text is the last id (50256 in GPT-2's vocabulary, 256 for bytes).
                bos_token_id=cfg.vocab_size - 1, eos_token_id=cfg.vocab_size - 1)
  if cfg.pos_offset != 2 or cfg.activation != 'relu' or (not cfg.pre_ln and cfg.final_ln):
    raise ConversionError('this model is not an OPT architecture (positions offset 2, ReLU, '
                          'no final layer norm when post-LN)')
  return dict(model_type='opt', architectures=['OPTForCausalLM'], vocab_size=cfg.vocab_size,
              hidden_size=cfg.embed_dim, num_hidden_layers=cfg.num_layers, ffn_dim=cfg.mlp_dim,
              max_position_embeddings=cfg.max_len, do_layer_norm_before=cfg.pre_ln,
              _remove_final_layer_norm=cfg.pre_ln and not cfg.final_ln,
              word_embed_proj_dim=cfg.word_dim, dropout=cfg.dropout,
              attention_dropout=cfg.attn_dropout, activation_function='relu',
              num_attention_heads=cfg.num_heads, init_std=cfg.init_std, enable_bias=cfg.use_bias,
              layer_norm_elementwise_affine=True, tie_word_embeddings=cfg.tie_embeddings,
              pad_token_id=1, bos_token_id=2, eos_token_id=2)


# ---- weights -----------------------------------------------------------------------------------
# Each entry: (our path, Hugging Face name, to_ours(hf tensors) and to_hf(ours) ...).

def _layer_table(cfg: ModelConfig):
  E, H, D = cfg.embed_dim, cfg.num_heads, cfg.head_dim
  if cfg.family == 'gpt2':
    p = 'transformer.h.{i}.'
    return [
        ('ln_1/scale', [p + 'ln_1.weight'], lambda w: w, lambda w: [w]),
        ('ln_1/bias', [p + 'ln_1.bias'], lambda b: b, lambda b: [b]),
        ('attn/c_attn_kernel', [p + 'attn.c_attn.weight'],
         lambda w: w.reshape(E, 3, H, D), lambda w: [w.reshape(E, 3 * E)]),
        ('attn/c_attn_bias', [p + 'attn.c_attn.bias'],
         lambda b: b.reshape(3, H, D), lambda b: [b.reshape(3 * E)]),
        ('attn/c_proj_kernel', [p + 'attn.c_proj.weight'],
         lambda w: w.reshape(H, D, E), lambda w: [w.reshape(E, E)]),
        ('attn/c_proj_bias', [p + 'attn.c_proj.bias'], lambda b: b, lambda b: [b]),
        ('ln_2/scale', [p + 'ln_2.weight'], lambda w: w, lambda w: [w]),
        ('ln_2/bias', [p + 'ln_2.bias'], lambda b: b, lambda b: [b]),
        ('mlp/c_fc_kernel', [p + 'mlp.c_fc.weight'], lambda w: w, lambda w: [w]),
        ('mlp/c_fc_bias', [p + 'mlp.c_fc.bias'], lambda b: b, lambda b: [b]),
        ('mlp/c_proj_kernel', [p + 'mlp.c_proj.weight'], lambda w: w, lambda w: [w]),
        ('mlp/c_proj_bias', [p + 'mlp.c_proj.bias'], lambda b: b, lambda b: [b]),
    ]
  p = 'model.decoder.layers.{i}.'
  qkv = [p + f'self_attn.{n}_proj.' for n in 'qkv']
  return [
      ('ln_1/scale', [p + 'self_attn_layer_norm.weight'], lambda w: w, lambda w: [w]),
      ('ln_1/bias', [p + 'self_attn_layer_norm.bias'], lambda b: b, lambda b: [b]),
      ('attn/c_attn_kernel', [n + 'weight' for n in qkv],
       lambda q, k, v: np.stack([q.T, k.T, v.T], 1).reshape(E, 3, H, D),
       lambda w: list(w.reshape(E, 3, E).transpose(1, 2, 0))),
      ('attn/c_attn_bias', [n + 'bias' for n in qkv],
       lambda q, k, v: np.stack([q, k, v]).reshape(3, H, D), lambda b: list(b.reshape(3, E))),
      ('attn/c_proj_kernel', [p + 'self_attn.out_proj.weight'],
       lambda w: w.T.reshape(H, D, E), lambda w: [w.reshape(E, E).T]),
      ('attn/c_proj_bias', [p + 'self_attn.out_proj.bias'], lambda b: b, lambda b: [b]),
      ('ln_2/scale', [p + 'final_layer_norm.weight'], lambda w: w, lambda w: [w]),
      ('ln_2/bias', [p + 'final_layer_norm.bias'], lambda b: b, lambda b: [b]),
      ('mlp/c_fc_kernel', [p + 'fc1.weight'], lambda w: w.T, lambda w: [w.T]),
      ('mlp/c_fc_bias', [p + 'fc1.bias'], lambda b: b, lambda b: [b]),
      ('mlp/c_proj_kernel', [p + 'fc2.weight'], lambda w: w.T, lambda w: [w.T]),
      ('mlp/c_proj_bias', [p + 'fc2.bias'], lambda b: b, lambda b: [b]),
  ]


def _top_table(cfg: ModelConfig):
  if cfg.family == 'gpt2':
    rows = [('wte', 'transformer.wte.weight'), ('wpe', 'transformer.wpe.weight'),
            ('ln_f/scale', 'transformer.ln_f.weight'), ('ln_f/bias', 'transformer.ln_f.bias')]
    return [(ours, [hf], lambda w: w, lambda w: [w]) for ours, hf in rows]
  d = 'model.decoder.'
  rows = [('wte', [d + 'embed_tokens.weight'], lambda w: w, lambda w: [w]),
          ('wpe', [d + 'embed_positions.weight'], lambda w: w, lambda w: [w])]
  if cfg.final_ln:
    rows += [('ln_f/scale', [d + 'final_layer_norm.weight'], lambda w: w, lambda w: [w]),
             ('ln_f/bias', [d + 'final_layer_norm.bias'], lambda b: b, lambda b: [b])]
  if cfg.proj_dim:
    rows += [('project_in', [d + 'project_in.weight'], lambda w: w.T, lambda w: [w.T]),
             ('project_out', [d + 'project_out.weight'], lambda w: w.T, lambda w: [w.T])]
  if not cfg.tie_embeddings:
    rows += [('lm_head', ['lm_head.weight'], lambda w: w, lambda w: [w])]
  return rows


def _set(tree: dict, path: str, value):
  *parents, leaf = path.split('/')
  for p in parents:
    tree = tree.setdefault(p, {})
  tree[leaf] = value


def _get(tree: dict, path: str):
  for p in path.split('/'):
    tree = tree[p]
  return tree


def _pad_vocab(w: np.ndarray, cfg: ModelConfig) -> np.ndarray:
  return np.pad(w, ((0, cfg.padded_vocab - w.shape[0]), (0, 0)))


def params_from_hf(tensors: dict[str, np.ndarray], cfg: ModelConfig, source: str = 'checkpoint'):
  """Our params tree (numpy, float32, layers stacked when scanning) from HF tensors."""
  expected = params_shapes(cfg)

  def take(names, fn, ours):
    missing = [n for n in names if n not in tensors]
    if missing:
      raise ConversionError(f'{source}: missing tensor {missing[0]!r}')
    value = np.asarray(fn(*[np.asarray(tensors[n], np.float32) for n in names]), np.float32)
    want = expected[ours]
    if ours in ('wte', 'lm_head') and value.shape[1:] == want[1:] and value.shape[0] == cfg.vocab_size:
      value = _pad_vocab(value, cfg)
    if value.shape != want:
      raise ConversionError(f'{source}: tensor {names[0]!r} has shape '
                            f'{tuple(tensors[names[0]].shape)}, which does not fit {ours} {want}')
    return value

  params = {}
  for ours, names, to_ours, _ in _top_table(cfg):
    _set(params, ours, take(names, to_ours, ours))
  layers = [{} for _ in range(cfg.num_layers)]
  for i, layer in enumerate(layers):
    for ours, names, to_ours, _ in _layer_table(cfg):
      _set(layer, ours, take([n.format(i=i) for n in names], to_ours, ours))
  _put_layers(params, layers, cfg)
  return params


def params_to_hf(params, cfg: ModelConfig) -> dict[str, np.ndarray]:
  """HF tensors (numpy float32, true vocab; tied lm_head omitted) from our params."""
  params = _to_numpy(params)
  out = {}
  for ours, names, _, to_hf in _top_table(cfg):
    value = _get(params, ours)
    if ours in ('wte', 'lm_head'):
      value = value[:cfg.vocab_size]
    out.update(zip(names, to_hf(value)))
  for i, layer in enumerate(_take_layers(params, cfg)):
    for ours, names, _, to_hf in _layer_table(cfg):
      out.update(zip([n.format(i=i) for n in names], to_hf(_get(layer, ours))))
  return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def params_shapes(cfg: ModelConfig) -> dict[str, tuple]:
  """Shapes of one layer's and the top-level parameters, keyed by our path."""
  flat_cfg = ModelConfig(**{**cfg.__dict__, 'scan_layers': False, 'num_layers': 1})
  boxed = abstract_params(flat_cfg)
  shapes = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(nn.unbox(boxed))[0]:
    keys = [p.key for p in path]
    if keys[0] == 'h_0':
      keys = keys[1:]
    shapes['/'.join(keys)] = tuple(leaf.shape)
  return shapes


def _put_layers(params: dict, layers: list[dict], cfg: ModelConfig):
  if cfg.scan_layers:
    params['h'] = jax.tree.map(lambda *xs: np.stack(xs), *layers)
  else:
    params.update({f'h_{i}': layer for i, layer in enumerate(layers)})


def _take_layers(params: dict, cfg: ModelConfig) -> list[dict]:
  if cfg.scan_layers:
    return [jax.tree.map(lambda x, i=i: x[i], params['h']) for i in range(cfg.num_layers)]
  return [params[f'h_{i}'] for i in range(cfg.num_layers)]


def _to_numpy(params):
  return jax.tree.map(lambda x: np.asarray(jax.device_get(x), np.float32), params)


# ---- directories -------------------------------------------------------------------------------

def load_dir(path: str) -> tuple[dict, dict[str, np.ndarray]]:
  """(config.json, tensors) of a Hugging Face directory (local or a URL); safetensors only."""
  from safetensors.numpy import load_file
  config_path = storage.join(path, 'config.json')
  if not storage.isfile(config_path):
    raise ConversionError(f'{path}: no config.json; give a Hugging Face model directory')
  config = json.loads(storage.read_text(config_path))
  single = storage.join(path, 'model.safetensors')
  index = storage.join(path, 'model.safetensors.index.json')
  if storage.isfile(single):
    files = [single]
  elif storage.isfile(index):
    weight_map = json.loads(storage.read_text(index))['weight_map']
    files = sorted({storage.join(path, n) for n in weight_map.values()})
  else:
    raise ConversionError(f'{path}: no model.safetensors (or index); pickled .bin weights are not '
                          'read, re-save them with save_pretrained(safe_serialization=True)')
  tensors = {}
  for name in files:
    try:
      with storage.local_copy(name) as local:  # safetensors memory-maps a local file.
        tensors.update(load_file(local))
    except Exception as e:  # safetensors raises its own error types for torn files.
      raise ConversionError(f'{name}: unreadable safetensors ({type(e).__name__}: {e})') from None
  return config, tensors


def load_params(spec: str, setup):
  """Params from ``hf:PATH`` for ``setup``, placed with its shardings; the model must match."""
  from trainer import checkpoint
  path = spec.removeprefix('hf:')
  config, tensors = load_dir(path)
  theirs = model_overrides(config)
  theirs['scan_layers'] = setup.cfg.model.scan_layers  # A layout choice, not architecture.
  theirs['vocab_pad_multiple'] = setup.cfg.model.vocab_pad_multiple
  mismatch = checkpoint.architecture_mismatch(theirs, setup.cfg.model)
  if mismatch:
    key, was, now = mismatch
    raise ConversionError(f'{path}/config.json: model.{key} is {was!r} there but {now!r} here; '
                          f'set --config.model.{key}={was} (or use a preset of that model)')
  params = params_from_hf(tensors, setup.model_cfg, source=path)
  return jax.device_put(params, setup.state_shardings.params)


def save_dir(path: str, params, cfg: ModelConfig):
  """Writes config.json and model.safetensors that transformers' from_pretrained loads."""
  from safetensors.numpy import save
  config = hf_config(cfg)
  tensors = params_to_hf(params, cfg)
  for name in ('config.json', 'model.safetensors'):
    if storage.exists(storage.join(path, name)):
      raise ConversionError(f'{path} already holds {name}; export to a new directory')
  try:
    storage.probe(path, '.write-test')  # Creates a local directory; never a bucket.
  except storage.UnusableError as e:
    raise ConversionError(str(e)) from None
  # config.json last: load_dir looks for it first, so a torn export is never taken as whole.
  storage.write_bytes(storage.join(path, 'model.safetensors'),
                      save(tensors, metadata={'format': 'pt'}))
  storage.write_text(storage.join(path, 'config.json'),
                     json.dumps({**config, 'torch_dtype': 'float32'}, indent=2))
