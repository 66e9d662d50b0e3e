"""Parameter counts equal Hugging Face's for every preset; initialisation follows the papers."""
import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import linen as nn

from trainer import config, hf, model
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

  grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  ref_loss, ref_grads = grad(params, cfg)
  for remat, unroll in [('dots', 1), ('full', 1), ('none', 0), ('dots', 0), ('full', 2)]:
    c = dataclasses.replace(cfg, remat=remat, scan_unroll=unroll)
    l, g = grad(params, c)
    assert float(l) == pytest.approx(float(ref_loss), rel=1e-6)
    for a, b in zip(jax.tree.leaves(ref_grads), jax.tree.leaves(g)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  unrolled = {k: v for k, v in params.items() if k != 'h'}
  unrolled.update({f'h_{i}': jax.tree.map(lambda x, i=i: x[i], params['h']) for i in range(3)})
  flat = dataclasses.replace(cfg, scan_layers=False)
  assert float(loss(unrolled, flat)) == pytest.approx(float(ref_loss), rel=1e-6)


def test_scan_unroll_keeps_the_parameters_and_drops_the_loop():
  """scan_unroll=0: the same stacked parameters from the same seed, and no loop compiled."""
  cfg = ModelConfig(vocab_size=300, embed_dim=64, num_heads=4, mlp_dim=128, num_layers=3,
                    scan_unroll=1)
  unrolled = dataclasses.replace(cfg, scan_unroll=0)
  tokens = jnp.zeros((1, 2), jnp.int32)
  params = nn.unbox(Decoder(cfg).init(jax.random.PRNGKey(0), tokens))
  same = nn.unbox(Decoder(unrolled).init(jax.random.PRNGKey(0), tokens))
  assert jax.tree.structure(params) == jax.tree.structure(same)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(same)):
    np.testing.assert_array_equal(a, b)  # A checkpoint resumes whatever the unroll.

  def loops(c):
    grad = jax.jit(jax.grad(lambda p: Decoder(c).apply(p, tokens).sum()))
    return grad.lower(params).compile().as_text().count(' while(')
  assert loops(cfg) >= 2  # The forward loop and its transpose.
  assert loops(unrolled) == 0
  # -1 (the default) on this CPU: unrolled up to AUTO_UNROLL_LAYERS layers without remat.
  auto = dataclasses.replace(cfg, scan_unroll=-1)
  assert jax.default_backend() == 'cpu' and cfg.num_layers <= model.AUTO_UNROLL_LAYERS
  assert loops(auto) == 0
  assert loops(dataclasses.replace(auto, remat='dots')) >= 2


def test_scan_unroll_minus_one_chooses_by_platform_depth_and_remat():
  cfg = ModelConfig(num_layers=model.AUTO_UNROLL_LAYERS)
  assert cfg.scan_unroll == -1  # The default.
  assert cfg.layers_per_trip('cpu') == cfg.num_layers and not cfg.layers_in_loop('cpu')
  for other in ('tpu', 'gpu', None):
    assert cfg.layers_per_trip(other) == 1 and cfg.layers_in_loop(other)
  deeper = dataclasses.replace(cfg, num_layers=cfg.num_layers + 1)
  assert deeper.layers_per_trip('cpu') == 1
  for remat in ('dots', 'full'):  # On a CPU remat saves memory only in the loop.
    assert dataclasses.replace(cfg, remat=remat).layers_per_trip('cpu') == 1
  for unroll, want in ((0, cfg.num_layers), (1, 1), (2, 2)):  # Set values are kept everywhere.
    c = dataclasses.replace(cfg, scan_unroll=unroll)
    assert c.layers_per_trip('cpu') == c.layers_per_trip('tpu') == want
  assert not dataclasses.replace(cfg, scan_layers=False).layers_in_loop('tpu')


@pytest.mark.parametrize('remat', ['none', 'dots', 'full'])
def test_flops_per_token_matches_xla_cost_analysis(remat):
  """Our tally against XLA's count of the compiled train step (one device, float32).

  Layers are unrolled (XLA's cost analysis counts a while-loop body once) and the vocabulary
  needs no padding (XLA would count the padded rows). XLA counts a few percent more without
  remat: biases, layer norms, GELU, softmax, cross-entropy and the AdamW update; 'dots'
  repeats the attention dots. With full remat XLA counts a few percent less than our hardware FLOPs, which follow Megatron's
  convention of one whole recomputed forward pass: XLA drops as dead code the recomputed
  output projections, whose results the backward pass does not need.
  """
  from conftest import tiny_config
  from trainer import model, train
  cfg = tiny_config(**{'model.vocab_size': 256, 'model.embed_dim': 128, 'model.mlp_dim': 512,
                       'model.scan_layers': False, 'model.remat': remat, 'mesh.fsdp': 1})
  setup = train.build(cfg, devices=jax.devices()[:1])
  assert setup.model_cfg.padded_vocab == setup.model_cfg.vocab_size
  xla = setup.compile_train_step().cost_analysis()['flops']
  ours = model.hardware_flops_per_token(setup.model_cfg, cfg.train.seq_len)
  ours *= cfg.train.batch_size * cfg.train.seq_len
  assert abs(xla - ours) / ours < 0.10, (xla, ours)
  if remat == 'none':
    assert ours == model.flops_per_token(setup.model_cfg, cfg.train.seq_len) * 8 * 64


def _tiny_loss_and_params(**overrides):
  cfg = ModelConfig(vocab_size=300, embed_dim=64, num_heads=4, mlp_dim=128, num_layers=2,
                    **overrides)
  params = nn.unbox(Decoder(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32)))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 33), 0, 300)

  def loss(p, c):
    logits = Decoder(c).apply({'params': p}, tokens[:, :-1])
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1))
  return cfg, params['params'], loss


@pytest.mark.parametrize('remat', ['none', 'dots', 'full'])
def test_bfloat16_gradients_match_float32(remat):
  """bf16 compute with f32 master weights: f32 gradients within bf16 rounding of the f32 model."""
  cfg, params, loss = _tiny_loss_and_params(remat=remat)
  grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)  # jit: the XLA:CPU dots, as trained.
  l32, g32 = grad(params, cfg)
  l16, g16 = grad(params, dataclasses.replace(cfg, dtype='bfloat16'))
  assert float(l16) != float(l32)  # bf16 really ran.
  assert float(l16) == pytest.approx(float(l32), rel=1e-2)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g32), jax.tree.leaves(g16)):
    assert b.dtype == jnp.float32, path  # Master-weight gradients are not rounded to bf16.
    err = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))
    assert err < 3e-2, (jax.tree_util.keystr(path), err)


def test_remat_dots_saves_activations_in_the_compute_dtype(capsys):
  """remat=dots keeps the dense layers' outputs as bf16 in a bf16 model, not float32 accumulators."""
  cfg, params, loss = _tiny_loss_and_params(remat='dots')

  def saved_activations(c):  # The residuals the layer loop stacks for the backward pass.
    jax.ad_checkpoint.print_saved_residuals(lambda p: loss(p, c), params)
    return [line.split()[0] for line in capsys.readouterr().out.splitlines()
            if 'output of scan' in line]
  f32 = saved_activations(cfg)
  bf16 = saved_activations(dataclasses.replace(cfg, dtype='bfloat16'))
  assert len(f32) == 4 and all(s.startswith('f32[2,2,32,') for s in f32), f32  # 2 layers, [2, 32].
  assert bf16 == [s.replace('f32', 'bf16') for s in f32]


def _dot_operand_types(hlo: str) -> list[tuple[str, str]]:
  """(lhs, rhs) element types of every dot in compiled HLO text."""
  types = dict(re.findall(r'(%[\w.\-]+) = (\w+)\[', hlo))
  return [(types[a], types[b]) for a, b in
          re.findall(r' dot\((%[\w.\-]+), (%[\w.\-]+)\)', hlo)]


@pytest.mark.parametrize('remat', ['none', 'dots'])
def test_bfloat16_backward_runs_no_float32_dots(remat):
  """Every dot of the compiled bf16 gradient, forward and backward, takes bf16 operands."""
  cfg, params, loss = _tiny_loss_and_params(remat=remat)

  def dots(c):
    return _dot_operand_types(jax.jit(jax.grad(loss), static_argnums=1)
                              .lower(params, c).compile().as_text())
  f32_dots = dots(cfg)
  assert f32_dots and set(f32_dots) == {('f32', 'f32')}  # The parser sees dots and their types.
  bf16_dots = dots(dataclasses.replace(cfg, dtype='bfloat16'))
  # Forward: qkv, scores, values, out, fc, proj per layer, LM head; backward has two per dot.
  assert len(bf16_dots) >= 3 * 7
  assert set(bf16_dots) == {('bf16', 'bf16')}


def _unfused_dots(hlo: str) -> int:
  """Dots that XLA:CPU runs as plain Eigen dots: those outside every fusion's computation."""
  fused = set(re.findall(r'fusion\(.*calls=(%[\w.\-]+)', hlo))
  count, inside = 0, False
  for line in hlo.splitlines():
    if line and not line.startswith(' ') and '{' in line:  # A computation starts.
      inside = line.split()[1 if line.startswith('ENTRY') else 0] in fused
    count += not inside and ' dot(' in line
  return count


def test_float32_backward_equals_plain_einsum_on_fused_dots(monkeypatch):
  """contract's float32 backward: jax.grad's gradients, without its unfused transposed dots."""
  from trainer import model
  cfg = ModelConfig(vocab_size=300, embed_dim=128, num_heads=4, mlp_dim=512, num_layers=2)
  params = nn.unbox(Decoder(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32)))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (12, 65), 0, 300)

  def loss(p):
    logits = Decoder(cfg).apply(p, tokens[:, :-1])
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1))

  def grads():
    fn = jax.jit(jax.grad(loss))
    return fn(params), fn.lower(params).compile().as_text()
  ours, ours_hlo = grads()
  monkeypatch.setattr(model, 'contract', lambda eqn, a, b, dtype, out_dtype=jnp.float32: jnp.einsum(
      eqn, a, b, preferred_element_type=jnp.float32).astype(out_dtype))
  plain, plain_hlo = grads()
  assert _unfused_dots(plain_hlo) > 0  # jax.grad's layout: the parser sees the Eigen dots.
  assert _unfused_dots(ours_hlo) == 0
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(plain), jax.tree.leaves(ours)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))
