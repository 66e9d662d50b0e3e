"""Run configuration: every key is defined and documented here, once.

A config file (``configs/*.py``) is a Python module with ``get_config(arg)``
that starts from :func:`default_config` and changes values; it may not add keys.
Command-line overrides (``--config.train.steps=5``) are applied on top, typed by
the default value, and :func:`validate` checks the result before anything compiles.

Each key is declared once in :func:`_declare` as ``Key(default, range or choices)``
with a comment saying what it means; a new key is one such line:

    t.sample_every = Key(0, ge=0)  # Steps between samples (0: only at the end).
"""
from __future__ import annotations

import difflib
import importlib.util
import math
import os

import ml_collections

from trainer import hardware
from trainer.errors import ConfigError  # noqa: F401  (everyone imports it from here)
from trainer.spec import Key, as_pairs, show

MESH_AXES = ('data', 'fsdp', 'tensor')


def _declare() -> ml_collections.ConfigDict:
  """Every key, its default and its accepted values, with what it means; defined once here."""
  c = ml_collections.ConfigDict()
  c.seed = Key(0, ge=0, lt=2**32)  # PRNG seed for init, dropout and data order.
  c.init_from = Key('', pattern=r'(hf:.+)?', allowed='hf:PATH (a Hugging Face directory) or empty')
                             # 'hf:PATH': start from a local HF directory (same architecture).

  c.model = m = ml_collections.ConfigDict()
  m.family = Key('gpt2', choices=('gpt2', 'opt'))  # Naming for Hugging Face export.
  m.vocab_size = Key(257, ge=1)  # True vocabulary (byte tokenizer: 256 bytes + end-of-text).
  m.vocab_pad_multiple = Key(128, ge=1)  # Embedding rows are padded to this multiple; logits
                             # are not.
  m.max_len = Key(128, ge=1)     # Rows of the learned position table (n_positions).
  m.pos_offset = Key(0, ge=0)    # Position ids start here (OPT: 2).
  m.embed_dim = Key(192, ge=1)   # Hidden size (d_model).
  m.proj_dim = Key(0, ge=0)      # Word-embedding width if not embed_dim (OPT-350m: 512).
  m.num_layers = Key(4, ge=1)
  m.num_heads = Key(6, ge=1)
  m.mlp_dim = Key(768, ge=1)     # Feed-forward hidden size.
  m.activation = Key('gelu_tanh', choices=('gelu_tanh', 'relu'))  # GPT-2: gelu_tanh; OPT: relu.
  m.pre_ln = Key(True)           # Layer norm before each sublayer (False: post-LN, OPT-350m).
  m.final_ln = Key(True)         # Layer norm after the last block.
  m.tie_embeddings = Key(True)   # Output projection shares the input embedding.
  m.use_bias = Key(True)         # Biases in dense layers.
  m.dropout = Key(0.0, ge=0, lt=1)  # Dropout on each sublayer's output (residual branch).
  m.embed_dropout = Key(0.0, ge=0, lt=1)  # Dropout on the summed embeddings (GPT-2: 0.1; OPT: 0).
  m.attn_dropout = Key(0.0, ge=0, lt=1)  # Dropout on attention probabilities.
  m.ln_eps = Key(1e-5, ge=1e-30)  # Layer-norm epsilon (GPT-2, OPT: 1e-5); float32 keeps it nonzero.
  m.init_std = Key(0.02, gt=0)   # Normal init standard deviation.
  m.scale_residual_init = Key(True)  # Residual output projections get init_std / sqrt(2 * layers).
  m.dtype = Key('float32', choices=('float32', 'bfloat16'))  # Compute dtype; params stay float32.
  m.scan_layers = Key(True)      # nn.scan over blocks: compile time independent of depth.
                             # False: layers in line, each its own parameters (h_0, h_1, ...).
  m.scan_unroll = Key(-1, ge=0, also=(-1,))  # Layers per iteration of that loop; 0: all
                             # of them, so no loop is left but the stacked parameters stay
                             # (checkpoints resume across values). -1: chosen by platform,
                             # 0 on a CPU for at most 8 layers without remat (a 4-layer step
                             # ~1.3x faster), else 1: compiles grow with depth, and on a CPU
                             # remat saves no memory without the loop (docs/performance.md, 9).
  m.remat = Key('none', choices=('none', 'dots', 'full'))  # Rematerialisation; dots: save matmuls.
  m.attention = Key('auto', choices=('auto', 'xla', 'splash', 'cudnn'))  # Causal self-attention
                             # in training and evaluation. xla: softmax attention as XLA ops;
                             # splash: the TPU flash kernel (Pallas splash attention; off TPU,
                             # Pallas's interpreter: slow, for tests); cudnn: cuDNN's fused
                             # attention through jax.nn.dot_product_attention (NVIDIA GPUs,
                             # bfloat16, no attention dropout; not yet measured: benchmarks/gpu.sh);
                             # auto: splash on TPU where it applies (no attention dropout, length
                             # a multiple of 128), else xla.
  m.loss_chunk = Key(0, ge=0)    # Cross-entropy over this many positions at a time (all rows),
                             # so the [batch, length, vocab] logits never exist whole (0: off).

  c.train = t = ml_collections.ConfigDict()
  t.steps = Key(260, ge=1)       # Optimizer steps.
  t.batch_size = Key(32, ge=1)   # Global batch in sequences.
  t.seq_len = Key(128, ge=1)     # Tokens per sequence.
  t.micro_batches = Key(1, ge=1)  # Gradient accumulation: the batch is split into this many parts.
  t.log_every = Key(25, ge=1)    # Steps between metrics lines.
  t.eval_every = Key(100, ge=0)  # Steps between validation losses (0: only at the end).
  t.eval_batches = Key(4, ge=1)  # Validation batches per evaluation.
  t.sample_tokens = Key(120, ge=0)  # Tokens sampled from the model at the end (0: none).
  t.eval_tasks = Key('')         # Also at each evaluation: 'lambada:FILE,wikitext:FILE,harness:T1+T2'
                             # (zero-shot scores logged as eval_<metric>; docs/evaluation.md).
  t.eval_limit = Key(0, ge=0)    # Examples (LAMBADA, harness) or lines (WikiText) per task (0: all).
  t.sample_every = Key(0, ge=0)  # Steps between short samples, printed and logged (0: off).
  t.skip_nonfinite = Key(False)  # Skip a step with a non-finite loss or gradient; don't stop.
  t.allow_order_change = Key(False)  # Resume a checkpoint whose data position counts rows of an
                             # earlier version's row order, going on in this version's order.
  t.target_tokens = Key(0, ge=0, lt=2**63)  # Tokens the run is meant to see, for ETA and projected
                             # dollars (0: steps x batch_size x seq_len).
  t.compile_cache = Key('auto')  # XLA's persistent compilation cache, so a resumed or re-launched
                             # run does not compile again: a directory (gs:// too), 'off', or 'auto'
                             # ($JAX_COMPILATION_CACHE_DIR if set, else WORKDIR/compile_cache).

  c.optim = o = ml_collections.ConfigDict()
  o.lr = Key(2e-3, gt=0)         # Peak learning rate.
  o.warmup_steps = Key(30, ge=0)  # Linear warmup from 0.
  o.schedule = Key('cosine', choices=('cosine', 'linear', 'constant', 'wsd'))  # Decay after
                             # warmup; wsd (warmup-stable-decay): the peak, then a linear decay.
  o.decay_steps = Key(0, ge=0)   # 'wsd': steps of the final decay (0: a fifth of train.steps).
  o.min_lr_ratio = Key(0.1, ge=0, le=1)  # Final learning rate as a fraction of the peak.
  o.allow_lr_change = Key(False)  # Resume even if the schedule now gives the next step another rate.
  o.b1 = Key(0.9, ge=0, lt=1)
  o.b2 = Key(0.95, ge=0, lt=1)
  o.eps = Key(1e-8, ge=1e-30)    # Below ~1e-38 float32 makes it 0, and a zero gradient 0/0.
  o.weight_decay = Key(0.1, ge=0)  # Decoupled (AdamW) weight decay on matrices.
  o.decay_embeddings = Key(False)  # Also decay the token and position embeddings.
  o.clip_norm = Key(1.0, ge=0)   # Global gradient-norm clip (0: off).
  o.mu_dtype = Key('float32', choices=('float32', 'bfloat16'))  # dtype of AdamW's first moment
                             # (bfloat16 saves 2 bytes a parameter; the second stays float32).

  c.mesh = ms = ml_collections.ConfigDict()
  ms.data = Key(1, ge=1, also=(-1,))  # Pure data-parallel axis (-1: the remaining devices).
  ms.fsdp = Key(-1, ge=1, also=(-1,))  # Parameter/optimizer sharding axis; -1 takes the rest.
  ms.tensor = Key(1, ge=1, also=(-1,))  # Megatron-style tensor-parallel axis.
  ms.rules = Key('fsdp_tp', choices=('dp', 'fsdp', 'fsdp_tp'))  # Logical-to-mesh rule set.
  ms.slices = Key(1, ge=1)       # TPU slices joined over the data-centre network: mesh.data spans
                             # them (a multiple of slices); fsdp and tensor stay inside a slice.

  c.data = d = ml_collections.ConfigDict()
  d.path = Key('')               # Prepared dataset directory; '' trains on the embedded corpus.
  d.tokenizer = Key('', choices=('', 'byte', 'gpt2'))  # '' takes the dataset's (embedded: byte).
  d.max_bytes = Key(8_000_000, ge=1)  # Embedded corpus: bytes of standard-library source to read.
  d.val_every_nth_file = Key(50, ge=2)  # Embedded corpus: every n-th file is validation.
  d.source = Key('', pattern=r'(tfds:.+)?', allowed='tfds:NAME (e.g. tfds:lm1b) or empty')
                             # 'tfds:NAME' reads a TFDS text dataset (data.path: its data_dir).
  d.mixture = Key((), ge=0, allowed='a list of [SOURCE, WEIGHT] pairs, e.g. '
                  '[["DIR_A", 0.7], ["DIR_B", 0.3]], with SOURCE a prepared dataset or tfds:NAME '
                  'and WEIGHT >= 0')  # Train on several datasets, weights normalised; () is off.
                             # data.path then only names the data_dir of tfds: sources.

  c.checkpoint = ck = ml_collections.ConfigDict()
  ck.every = Key(1000, ge=0)     # Steps between async saves to WORKDIR/checkpoints (0: at end).
  ck.keep = Key(3, ge=0)         # Most recent checkpoints kept (0: all).
  ck.keep_every = Key(0, ge=0)   # Also keep every step divisible by this, permanently (0: none).
  # What the run costs; figures and their sources are in trainer/hardware.py.
  c.cost = k = ml_collections.ConfigDict()
  k.hardware = Key('', choices=('', *hardware.TABLE))  # '' detects it from the devices.
  k.chips = Key(0, ge=0)         # Chips billed; 0: devices / devices per chip (CPU: hosts).
  k.price_per_chip_hour = Key(-1.0)  # Dollars per chip-hour; negative: the table's price.
  k.power_w = Key(-1.0)          # Average watts per chip; negative: the table's figure.
  k.pue = Key(1.1, ge=1)         # Data-centre power usage effectiveness (Google fleet: ~1.1).
  k.kg_co2e_per_kwh = Key(0.429, ge=0)  # Grid carbon intensity; 0.429 is the US average that
                             # Patterson et al. 2021 use. Set your region's.

  c.log = lg = ml_collections.ConfigDict()
  lg.tensorboard = Key(True)     # TensorBoard event files in WORKDIR/tb (tensorboardX).
  lg.wandb_project = Key('')     # Weights & Biases project; '' is off (needs `pip install wandb`).
  lg.progress = Key('auto', choices=('auto', 'bar', 'lines'))  # Console: tqdm bar, lines, or
                             # auto (a bar on a terminal).
  lg.profile_steps = Key('', pattern=r'(\d+:\d+)?', allowed='START:END (steps) or empty')
                             # jax.profiler trace of steps START..END in WORKDIR/profile.
  return c


def _flatten(node, prefix=''):
  for k, v in node.items():
    if isinstance(v, ml_collections.ConfigDict):
      yield from _flatten(v, f'{prefix}{k}.')
    else:
      yield f'{prefix}{k}', v


SPECS: dict[str, Key] = dict(_flatten(_declare()))  # 'optim.lr' -> Key(2e-3, gt=0)


def default_config() -> ml_collections.ConfigDict:
  """The embedded default: a small byte-level GPT on the Python standard library."""
  values = {}
  for key, spec in SPECS.items():
    *parents, leaf = key.split('.')
    node = values
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = spec.default
  c = ml_collections.ConfigDict(values)
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
    if not path.endswith('.py'):
      raise ConfigError(f'--config: {path!r} is not a Python file; give one like configs/gpt2.py')
    module_spec = importlib.util.spec_from_file_location('_trainer_config', path)
    module = importlib.util.module_from_spec(module_spec)
    try:
      module_spec.loader.exec_module(module)
    except SyntaxError as e:
      raise ConfigError(f'--config: {path}:{e.lineno}: {e.msg}') from None
    if not hasattr(module, 'get_config'):
      raise ConfigError(f'--config: {path} defines no get_config(arg) function')
    try:
      cfg = module.get_config(arg) if arg else module.get_config()
    except (KeyError, AttributeError, TypeError) as e:  # A bad variant, key or value type.
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


def set_value(cfg, key: str, value):
  """Sets ``a.b.c`` to ``value`` (a string is parsed by the key's type)."""
  known = [k for k, _ in _flatten(cfg)]
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
    try:
      value = SPECS.get(key, Key(old)).parse(value)
    except ValueError as e:
      raise ConfigError(f'--config.{key}={show(value)}: {e}') from None
  elif isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  elif isinstance(old, tuple) and isinstance(value, list):  # A saved config's JSON list.
    value = as_pairs(value)
  elif type(value) is not type(old):
    raise ConfigError(f'--config.{key}={value!r}: expected {type(old).__name__}')
  node[leaf] = value


def _require(ok: bool, message: str):
  if not ok:
    raise ConfigError(message)


def check_values(cfg):
  """Checks every key on its own against its Key: type, range or choices (no devices needed)."""
  values = dict(_flatten(cfg))
  for key, key_spec in SPECS.items():
    value = values[key]
    _require(key_spec.accepts(value), f'--config.{key}={value!r}: {key_spec.describe()}')


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
  """Resolves (data, fsdp, tensor) from config; one axis may be -1 (the mesh itself: sharding)."""
  sizes = [mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor]
  free = [i for i, s in enumerate(sizes) if s == -1]
  bad = [MESH_AXES[i] for i, s in enumerate(sizes) if s == 0 or s < -1]
  if bad or len(free) > 1:
    raise ConfigError(f'--config.mesh: axis sizes {dict(zip(MESH_AXES, sizes))} must be positive, '
                      'with at most one -1 (takes the remaining devices)')
  known = math.prod(s for s in sizes if s != -1)
  if free:
    if num_devices % known:
      raise ConfigError(f'--config.mesh: fixed axes multiply to {known}, which does not divide '
                        f'the {num_devices} devices')
    sizes[free[0]] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ConfigError(f'--config.mesh: data x fsdp x tensor = {" x ".join(map(str, sizes))} = '
                      f'{math.prod(sizes)}, but there are {num_devices} devices; make the '
                      'product equal the device count or set one axis to -1')
  return tuple(sizes)


def _check_mixture(d):
  """A mixture needs a positive total weight and owns the data: no data.source beside it."""
  if not d.mixture:
    return
  _require(sum(w for _, w in d.mixture) > 0,
           '--config.data.mixture: the weights sum to 0; give at least one source a positive '
           'weight')
  _require(not d.source, f'--config.data.source={d.source} and --config.data.mixture are both '
           'set; put the source in the mixture as ["tfds:NAME", WEIGHT] and drop data.source')
  tfds = any(s.startswith('tfds:') for s, _ in d.mixture)
  _require(not d.path or tfds, f'--config.data.path={d.path} and --config.data.mixture are both '
           'set; put the dataset in the mixture as ["DIR", WEIGHT] and drop data.path (with a '
           'mixture, data.path only names the data_dir of its tfds: sources)')


def validate(cfg, num_devices: int, platform: str | None = None) -> tuple[int, int, int]:
  """Checks every key, then the keys against each other and the device count; returns the mesh.

  ``platform`` (jax's name for the devices the run will use: 'cpu', 'gpu', 'tpu'), when
  given, is checked against the keys that need one.
  """
  check_values(cfg)
  m, t = cfg.model, cfg.train
  _require(m.embed_dim % m.num_heads == 0,
           f'--config.model.embed_dim={m.embed_dim} is not divisible by '
           f'--config.model.num_heads={m.num_heads}; change one of them')
  _require(t.seq_len <= m.max_len,
           f'--config.train.seq_len={t.seq_len} is longer than the position table '
           f'(--config.model.max_len={m.max_len}); lower seq_len or raise max_len')
  _require(m.scan_unroll <= m.num_layers,
           f'--config.model.scan_unroll={m.scan_unroll} is more than --config.model.num_layers='
           f'{m.num_layers}; use at most {m.num_layers} (0 unrolls all layers)')
  _require(m.scan_layers or m.scan_unroll in (-1, 1),
           f'--config.model.scan_unroll={m.scan_unroll} unrolls the layer loop, but '
           '--config.model.scan_layers=false has none; drop scan_unroll or set scan_layers=true')
  if m.attention == 'splash':
    _require(m.attn_dropout == 0, f'--config.model.attention=splash has no attention dropout '
             f'(--config.model.attn_dropout={m.attn_dropout}); set it to 0 or use attention=auto')
    _require(t.seq_len % 128 == 0, f'--config.model.attention=splash needs a length that is a '
             f'multiple of 128 (--config.train.seq_len={t.seq_len}); change it or use '
             'attention=auto')
  if m.attention == 'cudnn':
    _require(m.dtype == 'bfloat16', f'--config.model.attention=cudnn needs '
             f'--config.model.dtype=bfloat16 (cuDNN fuses 16-bit attention; it is {m.dtype}); '
             'set it or use attention=auto')
    _require(m.attn_dropout == 0, f'--config.model.attention=cudnn has no attention dropout '
             f'(--config.model.attn_dropout={m.attn_dropout}); set it to 0 or use attention=auto')
    _require(platform in (None, 'gpu'), f'--config.model.attention=cudnn needs NVIDIA GPUs; '
             f'these devices are {platform}; use attention=auto')
  _check_mixture(cfg.data)
  shape = mesh_shape(cfg.mesh, num_devices)
  data, fsdp, tensor = shape
  _require(data % cfg.mesh.slices == 0,
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
             f'--config.model.embed_dim={m.embed_dim} is not divisible by '
             f'--config.mesh.fsdp={fsdp}; '
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
