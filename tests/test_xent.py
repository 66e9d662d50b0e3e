"""Chunked cross-entropy (model.loss_chunk) equals the whole-logits loss, and never builds them."""
import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from trainer import data, train
from trainer.model import Decoder, ModelConfig

from conftest import relative, tiny_config, without_key_bias
from test_model import _dot_operand_types

HEADS = {  # GPT-2: tied head; OPT-350m style: own head behind a projection, relu, offset.
    'gpt2': {},
    'opt': {'tie_embeddings': False, 'proj_dim': 32, 'activation': 'relu', 'pos_offset': 2},
}


def _setup(family, dtype):
  cfg = ModelConfig(vocab_size=300, embed_dim=64, num_heads=4, mlp_dim=128, num_layers=2,
                    dtype=dtype, **HEADS[family])
  params = nn.unbox(Decoder(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32)))
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 24), 0, 300)
  return cfg, params['params'], tokens


def _value_and_grad(params, tokens, cfg):
  fn = jax.jit(jax.value_and_grad(train.loss_fn), static_argnums=3)
  return fn(params, tokens, None, Decoder(cfg))


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
@pytest.mark.parametrize('family', ['gpt2', 'opt'])
def test_chunked_loss_and_gradients_equal_whole(family, dtype):
  cfg, params, tokens = _setup(family, dtype)
  ref_loss, ref_grads = _value_and_grad(params, tokens, cfg)
  # 23 positions in chunks of 5: four full chunks and a padded one.
  loss, grads = _value_and_grad(params, tokens, dataclasses.replace(cfg, loss_chunk=5))
  assert float(loss) == pytest.approx(float(ref_loss), rel=1e-6)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ref_grads), jax.tree.leaves(grads)):
    assert b.dtype == a.dtype == jnp.float32, path
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6 * float(jnp.abs(a).max()),
                               err_msg=jax.tree_util.keystr(path))
  assert float(jnp.abs(ref_grads['wte']).max()) > 0  # The head's gradient reaches the embedding.


def _shapes(hlo: str) -> set[str]:
  return set(s.replace(' ', '') for s in re.findall(r'f32\[([\d,]+)\]', hlo))


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_chunked_gradient_never_holds_whole_logits(dtype):
  cfg, params, tokens = _setup('gpt2', dtype)

  def compiled(c):
    fn = jax.jit(jax.grad(train.loss_fn), static_argnums=3)
    return fn.lower(params, tokens, None, Decoder(c)).compile().as_text()
  whole, chunked = compiled(cfg), compiled(dataclasses.replace(cfg, loss_chunk=8))
  logits = '2,23,384'  # [batch, length, padded vocab]
  assert logits in _shapes(whole)
  assert logits not in _shapes(chunked) and '2,8,384' in _shapes(chunked)
  if dtype == 'bfloat16':  # The head's dots follow model.contract: bf16 operands.
    assert set(_dot_operand_types(chunked)) == {('bf16', 'bf16')}


def test_chunked_train_and_eval_steps_on_a_sharded_mesh():
  """One AdamW step and the eval loss on the 8-device test mesh (batch split over fsdp)."""
  tokens = np.random.RandomState(1).randint(0, 257, (16, 65)).astype(np.int32)
  results = []
  for chunk in (0, 24):
    setup = train.build(tiny_config(**{'train.batch_size': 16, 'model.loss_chunk': chunk}))
    assert setup.model_cfg.loss_chunk == chunk
    state = setup.init_state(seed=0)
    batch = data.to_global(tokens, setup.batch_sharding)
    eval_loss = float(setup.jit_eval_step()(state.params, batch))
    new_state, metrics = setup.compile_train_step()(state, batch)
    results.append((eval_loss, float(metrics['loss']), jax.device_get(new_state.params)))
  (eval0, loss0, params0), (eval1, loss1, params1) = results
  assert eval1 == pytest.approx(eval0, rel=1e-6) and loss1 == pytest.approx(loss0, rel=1e-6)
  diffs = jax.tree.map(relative, without_key_bias(params0), without_key_bias(params1))
  assert max(jax.tree.leaves(diffs)) < 1e-5, diffs
