"""Run configuration: every key is defined and documented here, once.

A config file (``configs/*.py``) is a Python module with ``get_config(arg)``
that starts from :func:`default_config` and changes values; it may not add keys.
Command-line overrides (``--config.train.steps=5``) are applied on top, typed by
the default value, and :func:`validate` checks the result before anything compiles.
"""
from __future__ import annotations

import difflib
import importlib.util
import os

import ml_collections


class ConfigError(ValueError):
  """Bad configuration or command-line input; the CLI prints it and exits 2."""


def default_config() -> ml_collections.ConfigDict:
  """The embedded default: a small byte-level GPT on the Python standard library."""
  c = ml_collections.ConfigDict()
  c.seed = 0                 # PRNG seed for init, dropout and data order.
  c.init_from = ''           # 'hf:PATH': start from a local HF directory (same architecture).

  c.model = m = ml_collections.ConfigDict()
  m.family = 'gpt2'          # 'gpt2' or 'opt': naming for Hugging Face export.
  m.vocab_size = 257         # True vocabulary (byte tokenizer: 256 bytes + end-of-text).
  m.vocab_pad_multiple = 128  # Embedding rows are padded to this multiple; logits are not.
  m.max_len = 128            # Rows of the learned position table (n_positions).
  m.pos_offset = 0           # Position ids start here (OPT: 2).
  m.embed_dim = 192          # Hidden size (d_model).
  m.proj_dim = 0             # Word-embedding width if it differs from embed_dim (OPT-350m: 512).
  m.num_layers = 4
  m.num_heads = 6
  m.mlp_dim = 768            # Feed-forward hidden size.
  m.activation = 'gelu_tanh'  # 'gelu_tanh' (GPT-2) or 'relu' (OPT).
  m.pre_ln = True            # Layer norm before each sublayer (False: post-LN, OPT-350m).
  m.final_ln = True          # Layer norm after the last block.
  m.tie_embeddings = True    # Output projection shares the input embedding.
  m.use_bias = True          # Biases in dense layers.
  m.dropout = 0.0            # Dropout on each sublayer's output (residual branch).
  m.embed_dropout = 0.0      # Dropout on the summed embeddings (GPT-2: 0.1; OPT: none).
  m.attn_dropout = 0.0       # Dropout on attention probabilities.
  m.ln_eps = 1e-5            # Layer-norm epsilon (GPT-2 and OPT both use 1e-5).
  m.init_std = 0.02          # Normal init standard deviation.
  m.scale_residual_init = True  # Residual output projections get init_std / sqrt(2 * layers).
  m.dtype = 'float32'        # Compute dtype: 'float32' or 'bfloat16'; parameters stay float32.
  m.scan_layers = True       # nn.scan over blocks: compile time independent of depth.
  m.remat = 'none'           # Rematerialisation: 'none', 'dots' (save matmuls) or 'full'.

  c.train = t = ml_collections.ConfigDict()
  t.steps = 260              # Optimizer steps.
  t.batch_size = 32          # Global batch in sequences.
  t.seq_len = 128            # Tokens per sequence.
  t.micro_batches = 1        # Gradient accumulation: the batch is split into this many parts.
  t.log_every = 25           # Steps between metrics lines.
  t.eval_every = 100         # Steps between validation losses (0: only at the end).
  t.eval_batches = 4         # Validation batches per evaluation.
  t.sample_tokens = 120      # Tokens sampled from the trained model at the end (0: none).
  t.skip_nonfinite = False   # Skip a step with a non-finite loss or gradient instead of stopping.
  t.target_tokens = 0        # Tokens the run is meant to see, for ETA and projected dollars
                             # (0: steps x batch_size x seq_len).

  c.optim = o = ml_collections.ConfigDict()
  o.lr = 2e-3                # Peak learning rate.
  o.warmup_steps = 30        # Linear warmup from 0.
  o.schedule = 'cosine'      # Decay after warmup: 'cosine', 'linear' or 'constant'.
  o.min_lr_ratio = 0.1       # Final learning rate as a fraction of the peak.
  o.b1 = 0.9
  o.b2 = 0.95
  o.eps = 1e-8
  o.weight_decay = 0.1       # Decoupled (AdamW) weight decay on matrices.
  o.decay_embeddings = False  # Also decay the token and position embeddings.
  o.clip_norm = 1.0          # Global gradient-norm clip (0: off).

  c.mesh = ms = ml_collections.ConfigDict()
  ms.data = 1                # Pure data-parallel axis.
  ms.fsdp = -1               # Parameter/optimizer sharding axis; -1 takes the remaining devices.
  ms.tensor = 1              # Megatron-style tensor-parallel axis.
  ms.rules = 'fsdp_tp'       # Logical-to-mesh rule set: 'dp', 'fsdp' or 'fsdp_tp'.
  ms.slices = 1              # TPU slices joined over the data-centre network: mesh.data spans
                             # them (a multiple of slices); fsdp and tensor stay inside a slice.

  c.data = d = ml_collections.ConfigDict()
  d.path = ''                # Prepared dataset directory; '' trains on the embedded default corpus.
  d.tokenizer = ''           # 'byte' or 'gpt2'; '' takes the dataset's (embedded corpus: byte).
  d.max_bytes = 8_000_000    # Embedded corpus: bytes of standard-library source to read.
  d.val_every_nth_file = 50  # Embedded corpus: every n-th file goes to the validation split.
  d.source = ''              # 'tfds:NAME' reads a TFDS text dataset (data.path: its data_dir).

  c.checkpoint = ck = ml_collections.ConfigDict()
  ck.every = 1000            # Steps between async saves to WORKDIR/checkpoints (0: at the end).
  ck.keep = 3                # Most recent checkpoints kept (0: all).
  ck.keep_every = 0          # Also keep every step divisible by this, permanently (0: none).
  # What the run costs; figures and their sources are in trainer/hardware.py.
  c.cost = k = ml_collections.ConfigDict()
  k.hardware = ''            # Table name (tpu-v3, h100, cpu ...); '' detects it from the devices.
  k.chips = 0                # Chips billed; 0: devices / devices per chip (CPU: hosts).
  k.price_per_chip_hour = -1.0  # Dollars per chip-hour; negative: the table's on-demand price.
  k.power_w = -1.0           # Average watts per chip; negative: the table's figure.
  k.pue = 1.1                # Data-centre power usage effectiveness (Google fleet: ~1.1).
  k.kg_co2e_per_kwh = 0.429  # Grid carbon intensity; 0.429 is the US average that
                             # Patterson et al. 2021 use. Set your region's.

  c.log = lg = ml_collections.ConfigDict()
  lg.tensorboard = True      # TensorBoard event files in WORKDIR/tb (tensorboardX).
  lg.wandb_project = ''      # Weights & Biases project; '' is off (needs `pip install wandb`).
  lg.progress = 'auto'       # Console: 'bar' (tqdm), 'lines', or 'auto' (a bar on a terminal).
  lg.profile_steps = ''      # 'START:END': jax.profiler trace of those steps in WORKDIR/profile.
  c.lock()
  return c


def load(spec: str | None, overrides: dict[str, str] | None = None):
  """Loads ``path.py[:arg]`` (or the default), applies overrides, returns the config."""
  if not spec:
    cfg = default_config()
  else:
    path, _, arg = spec.partition(':')
    if not os.path.isfile(path):
      raise ConfigError(f'--config: no such file {path!r}; give a path like configs/gpt2.py:gpt2')
    module_spec = importlib.util.spec_from_file_location('_trainer_config', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, 'get_config'):
      raise ConfigError(f'--config: {path} defines no get_config(arg) function')
    try:
      cfg = module.get_config(arg) if arg else module.get_config()
    except (KeyError, AttributeError) as e:
      raise ConfigError(f'--config: {spec}: {e}') from None
  for key, value in (overrides or {}).items():
    set_value(cfg, key, value)
  return cfg


def from_dict(values: dict, source: str):
  """A config from a nested dict (a saved ``cfg.to_dict()``); unknown keys are errors."""
  cfg = default_config()

  def walk(node, prefix):
    for k, v in node.items():
      if isinstance(v, dict):
        walk(v, f'{prefix}{k}.')
      else:
        try:
          set_value(cfg, prefix + k, v)
        except ConfigError as e:
          raise ConfigError(f'{source}: {e}') from None
  walk(values, '')
  return cfg


def _flat_keys(cfg, prefix=''):
  for k, v in cfg.items():
    if isinstance(v, ml_collections.ConfigDict):
      yield from _flat_keys(v, f'{prefix}{k}.')
    else:
      yield f'{prefix}{k}'


def _parse(key: str, text: str, old):
  if isinstance(old, bool):
    if text.lower() in ('true', '1', 'yes'):
      return True
    if text.lower() in ('false', '0', 'no'):
      return False
    raise ConfigError(f'--config.{key}={text}: expected true or false')
  for typ, name in ((int, 'an integer'), (float, 'a number')):
    if isinstance(old, typ):
      try:
        return typ(text)
      except ValueError:
        raise ConfigError(f'--config.{key}={text}: expected {name}') from None
  return text


def set_value(cfg, key: str, value):
  """Sets ``a.b.c`` to ``value`` (a string is parsed by the key's type)."""
  known = list(_flat_keys(cfg))
  if key not in known:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f'; did you mean --config.{close[0]}?' if close else '; see trainer/config.py'
    raise ConfigError(f'unknown config key {key!r}{hint}')
  *parents, leaf = key.split('.')
  node = cfg
  for p in parents:
    node = node[p]
  old = node[leaf]
  if isinstance(value, str) and not isinstance(old, str):
    value = _parse(key, value, old)
  elif isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  elif type(value) is not type(old):
    raise ConfigError(f'--config.{key}={value!r}: expected {type(old).__name__}')
  node[leaf] = value


def _require(ok: bool, message: str):
  if not ok:
    raise ConfigError(message)


_CHOICES = {
    'model.family': ('gpt2', 'opt'),
    'model.activation': ('gelu_tanh', 'relu'),
    'model.dtype': ('float32', 'bfloat16'),
    'model.remat': ('none', 'dots', 'full'),
    'optim.schedule': ('cosine', 'linear', 'constant'),
    'mesh.rules': ('dp', 'fsdp', 'fsdp_tp'),
    'data.tokenizer': ('', 'byte', 'gpt2'),
    'log.progress': ('auto', 'bar', 'lines'),
}


def validate_cost(cfg):
  """Checks the cost section and target_tokens."""
  from trainer import hardware  # Local import: hardware imports this module.
  k = cfg.cost
  if k.hardware:
    hardware.get(k.hardware)
  _require(cfg.train.target_tokens >= 0,
           f'--config.train.target_tokens={cfg.train.target_tokens}: must be 0 or positive')
  _require(k.chips >= 0, f'--config.cost.chips={k.chips}: must be 0 (from the devices) or positive')
  _require(k.pue >= 1.0, f'--config.cost.pue={k.pue}: a PUE is 1.0 or more')
  _require(k.kg_co2e_per_kwh >= 0, f'--config.cost.kg_co2e_per_kwh={k.kg_co2e_per_kwh}: '
           'must not be negative')


def validate(cfg, num_devices: int) -> tuple[int, int, int]:
  """Checks the config against itself and the device count; returns the mesh shape."""
  from trainer import sharding  # Local import: config must stay importable without jax.
  for key, choices in _CHOICES.items():
    section, leaf = key.split('.')
    value = cfg[section][leaf]
    _require(value in choices, f'--config.{key}={value!r}: choose one of {", ".join(choices)}')
  m, t = cfg.model, cfg.train
  for key in ('embed_dim', 'num_layers', 'num_heads', 'mlp_dim', 'vocab_size', 'max_len'):
    _require(m[key] > 0, f'--config.model.{key}={m[key]}: must be positive')
  for key in ('steps', 'batch_size', 'seq_len', 'micro_batches', 'log_every'):
    _require(t[key] > 0, f'--config.train.{key}={t[key]}: must be positive')
  for key in ('every', 'keep', 'keep_every'):
    _require(cfg.checkpoint[key] >= 0, f'--config.checkpoint.{key}={cfg.checkpoint[key]}: '
             'must be 0 or positive')
  _require(not cfg.init_from or cfg.init_from.startswith('hf:'),
           f'--config.init_from={cfg.init_from!r}: expected hf:PATH (a Hugging Face directory)')
  validate_cost(cfg)
  _require(m.embed_dim % m.num_heads == 0,
           f'--config.model.embed_dim={m.embed_dim} is not divisible by '
           f'--config.model.num_heads={m.num_heads}; change one of them')
  _require(t.seq_len <= m.max_len,
           f'--config.train.seq_len={t.seq_len} is longer than the position table '
           f'(--config.model.max_len={m.max_len}); lower seq_len or raise max_len')
  shape = sharding.mesh_shape(cfg.mesh, num_devices)
  data, fsdp, tensor = shape
  _require(cfg.mesh.slices >= 1 and data % cfg.mesh.slices == 0,
           f'--config.mesh.slices={cfg.mesh.slices}: the data axis ({data}) must be a positive '
           f'multiple of the slice count; set --config.mesh.data to a multiple of it')
  if cfg.mesh.rules in ('dp', 'fsdp'):
    _require(tensor == 1, f'--config.mesh.tensor={tensor} needs --config.mesh.rules=fsdp_tp '
             f'(rules {cfg.mesh.rules!r} leave the tensor axis unused)')
  _require(m.num_heads % tensor == 0,
           f'--config.model.num_heads={m.num_heads} is not divisible by --config.mesh.tensor='
           f'{tensor}; pick a tensor axis that divides the heads')
  _require(m.mlp_dim % tensor == 0,
           f'--config.model.mlp_dim={m.mlp_dim} is not divisible by --config.mesh.tensor='
           f'{tensor}; pick a tensor axis that divides it')
  if cfg.mesh.rules != 'dp':
    width = m.proj_dim or m.embed_dim
    _require(m.embed_dim % fsdp == 0 and width % fsdp == 0,
             f'--config.model.embed_dim={m.embed_dim} is not divisible by --config.mesh.fsdp={fsdp}; '
             f'use an fsdp axis that divides the hidden size')
  _require(t.batch_size % t.micro_batches == 0,
           f'--config.train.batch_size={t.batch_size} is not divisible by '
           f'--config.train.micro_batches={t.micro_batches}')
  shards = data * fsdp
  micro = t.batch_size // t.micro_batches
  _require(micro % shards == 0,
           f'--config.train.batch_size={t.batch_size} ({micro} per micro-batch) is not divisible '
           f'by the {shards} data shards (mesh.data x mesh.fsdp = {data} x {fsdp}); '
           f'use a multiple of {shards * t.micro_batches}')
  return shape
