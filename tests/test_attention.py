"""model.attention: the TPU splash (flash) kernel against XLA's softmax attention.

On this CPU the kernel runs in Pallas's interpreter (the same kernel code, run as XLA
ops), so its numbers, its sharding under shard_map and its choice by 'auto' are tested
here; that it lowers to the Mosaic TPU kernel is checked against libtpu's compile-only
devices.
"""
import jax
import numpy as np
import pytest

from conftest import tiny_config
from test_cli import trainer
from trainer import aot, config, data, model, train

LONG = {'train.seq_len': 128, 'model.max_len': 128}  # Splash tiles are multiples of 128.


def losses(devices: int, **overrides) -> list[float]:
  """Two train steps of the tiny model on ``devices`` CPU devices, from the same init and batch."""
  cfg = tiny_config(**LONG, **overrides)
  config.validate(cfg, devices)
  setup = train.build(cfg, jax.devices()[:devices])
  state, step = setup.init_state(0), setup.compile_train_step()
  tokens = np.random.default_rng(0).integers(0, cfg.model.vocab_size, (cfg.train.batch_size, 129))
  batch = data.to_global(tokens.astype(np.int32), setup.batch_sharding)
  out = []
  for _ in range(2):
    state, metrics = step(state, batch)
    out.append(float(metrics['loss']))
  return out


@pytest.mark.parametrize('dtype, rules, mesh', [
    ('float32', 'fsdp', (2, 2, 1)),     # Batch split four ways, every head on each device.
    ('float32', 'fsdp_tp', (1, 2, 2)),  # Heads split over tensor too: two per device.
    ('bfloat16', 'fsdp', (2, 1, 1)),
])
def test_splash_attention_trains_like_xla_attention(monkeypatch, dtype, rules, mesh):
  seen = []  # The shapes each device's kernel call sees.
  real = model.splash_attention
  monkeypatch.setattr(model, 'splash_attention', lambda q, *a: seen.append(q.shape) or real(q, *a))
  keys = {'model.dtype': dtype, 'mesh.rules': rules, 'mesh.data': mesh[0], 'mesh.fsdp': mesh[1],
          'mesh.tensor': mesh[2]}
  devices = int(np.prod(mesh))
  xla = losses(devices, **keys, **{'model.attention': 'xla'})
  assert not seen
  splash = losses(devices, **keys, **{'model.attention': 'splash'})
  assert seen and seen[0] == (8, 128, 4, 16)  # Traced whole; shard_map gives each device its part.
  assert xla[0] != xla[1]  # The step moved the weights; both paths follow the same two losses.
  assert splash == pytest.approx(xla, rel=1e-5 if dtype == 'float32' else 1e-3)


@pytest.mark.parametrize('length', [256, 384])  # One 256 tile; three 128 tiles.
def test_splash_kernel_equals_softmax_attention_with_gradients(length):
  r = np.random.default_rng(0)
  q, k, v, w = (jax.numpy.asarray(r.normal(size=(2, length, 2, 32)), np.float32) for _ in range(4))
  scale = 32 ** -0.5

  def loss(attend, q, k, v):
    return (attend(q, k, v) * w).sum()

  xla = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, scale=scale, is_causal=True)
  splash = lambda q, k, v: model.splash_attention(q, k, v, scale)
  want = jax.jit(jax.value_and_grad(lambda *a: loss(xla, *a), argnums=(0, 1, 2)))(q, k, v)
  got = jax.jit(jax.value_and_grad(lambda *a: loss(splash, *a), argnums=(0, 1, 2)))(q, k, v)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_allclose(b, a, rtol=2e-4, atol=2e-5)
  # Not causal would be another function: the test can tell them apart.
  full = jax.nn.dot_product_attention(q, k, v, scale=scale)
  assert not np.allclose(full, splash(q, k, v), atol=1e-3)


def lowered_text(**overrides) -> str:
  """The train step's StableHLO for a v4-8 (libtpu's compile-only devices; nothing compiled)."""
  cfg = tiny_config(**{'mesh.fsdp': 4, **LONG, **overrides})
  config.validate(cfg, 4)
  return train.build(cfg, aot.topology_devices(aot.parse('v4-8'))).lower_train_step().as_text()


def test_auto_picks_the_tpu_kernel_where_it_applies():
  kernel = 'tpu_custom_call'  # How a Pallas kernel reaches XLA on TPU (Mosaic).
  assert kernel in lowered_text()  # attention=auto on TPU devices.
  assert kernel not in lowered_text(**{'model.attention': 'xla'})
  assert kernel not in lowered_text(**{'model.attn_dropout': 0.1})  # Dropout: XLA's attention.
  assert kernel not in lowered_text(**{'train.seq_len': 96, 'model.max_len': 96})  # No tile fits.


@pytest.mark.parametrize('flags, message', [
    (['--config.model.attn_dropout=0.1'],
     'error: --config.model.attention=splash has no attention dropout '
     '(--config.model.attn_dropout=0.1); set it to 0 or use attention=auto'),
    (['--config.train.seq_len=100', '--config.model.max_len=128'],
     'error: --config.model.attention=splash needs a length that is a multiple of 128 '
     '(--config.train.seq_len=100); change it or use attention=auto'),
])
def test_splash_that_cannot_apply_exits_2_with_one_line(tmp_path, flags, message):
  out = trainer('train', '--config=configs/tiny.py', f'--workdir={tmp_path}',
                '--config.model.attention=splash', *flags)
  assert out.returncode == 2 and out.stderr.strip() == message
  assert not list(tmp_path.iterdir())  # Nothing written.


def test_splash_off_tpu_says_it_runs_in_the_interpreter(tmp_path, capsys):
  from trainer import cli
  flags = ['--config.train.steps=1', '--config.train.seq_len=128', '--config.model.max_len=128']
  assert cli.main(['train', '--config=configs/tiny.py', f'--workdir={tmp_path}', *flags,
                   '--config.model.attention=splash']) == 0
  note = "note: model.attention=splash off TPU runs the kernel in Pallas's interpreter"
  assert note in capsys.readouterr().out
  assert cli.main(['train', '--config=configs/tiny.py', f'--workdir={tmp_path}/auto', *flags]) == 0
  assert note not in capsys.readouterr().out


def test_cudnn_choice_hands_jax_the_same_causal_attention(monkeypatch):
  """attention=cudnn asks jax for its cuDNN kernel; with XLA's in its place it trains like xla.

  No GPU here: the kernel's own numerics are jax's and cuDNN's (benchmarks/gpu.sh runs it).
  """
  calls, real = [], jax.nn.dot_product_attention

  def stand_in(q, k, v, **kw):
    calls.append(kw)
    return real(q, k, v, **{**kw, 'implementation': 'xla'})
  monkeypatch.setattr(jax.nn, 'dot_product_attention', stand_in)
  keys = {'model.dtype': 'bfloat16', 'mesh.fsdp': 2}
  xla = losses(2, **keys, **{'model.attention': 'xla'})
  assert not calls
  cudnn = losses(2, **keys, **{'model.attention': 'cudnn'})
  assert calls and all(c['implementation'] == 'cudnn' and c['is_causal'] for c in calls)
  assert xla[0] != xla[1]
  assert cudnn == pytest.approx(xla, rel=1e-3)
