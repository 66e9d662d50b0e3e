"""The train step, gradient accumulation, the optimizer and the loop's metrics."""
import json

import jax
import numpy as np
import pytest

from trainer import data, loop, optimizer, train

from conftest import relative, tiny_config, without_key_bias


def step_once(cfg, tokens):
  setup = train.build(cfg)
  state = setup.init_state(seed=0)
  new_state, metrics = setup.compile_train_step()(state, data.to_global(tokens, setup.batch_sharding))
  return float(metrics['loss']), jax.device_get(new_state.params)


def test_gradient_accumulation_equals_full_batch():
  tokens = np.random.RandomState(1).randint(0, 257, (16, 65)).astype(np.int32)
  loss1, params1 = step_once(tiny_config(**{'train.batch_size': 16}), tokens)
  loss4, params4 = step_once(tiny_config(**{'train.batch_size': 16, 'train.micro_batches': 2}), tokens)
  assert abs(loss1 - loss4) / loss1 < 1e-5
  diffs = jax.tree.map(relative, without_key_bias(params1), without_key_bias(params4))
  assert max(jax.tree.leaves(diffs)) < 1e-5, diffs


def test_weight_decay_mask():
  cfg = tiny_config()
  setup = train.build(cfg)
  mask = optimizer.decay_mask(setup.abstract_state().params, decay_embeddings=False)
  flat = {'/'.join(k.key for k in path): v
          for path, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
  assert flat['h/attn/c_attn_kernel'] and flat['h/mlp/c_proj_kernel']
  assert not any(flat[k] for k in ('wte', 'wpe', 'h/attn/c_attn_bias', 'h/ln_1/scale', 'ln_f/bias'))
  with_emb = optimizer.decay_mask(setup.abstract_state().params, decay_embeddings=True)
  assert with_emb['wte'] and with_emb['wpe']


def test_schedule_warmup_and_decay():
  cfg = tiny_config(**{'optim.warmup_steps': 10, 'optim.lr': 1e-3, 'optim.min_lr_ratio': 0.1})
  lr = optimizer.schedule(cfg.optim, 100)
  assert float(lr(0)) == pytest.approx(1e-4)  # Step 1 already learns.
  assert float(lr(9)) == pytest.approx(1e-3)
  assert float(lr(99)) == pytest.approx(1e-4, rel=1e-2)


def test_loop_logs_the_loss_of_each_step(tmp_path):
  cfg = tiny_config(**{'train.steps': 4, 'train.log_every': 1, 'train.eval_every': 2})
  summary = loop.run(cfg, str(tmp_path))
  lines = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [l['step'] for l in lines] == [1, 2, 3, 4]
  for key in ('loss', 'lr', 'grad_norm', 'tokens_per_sec', 'step_time_s', 'mfu'):
    assert all(np.isfinite(l[key]) for l in lines), key
  assert 'eval_loss' in lines[1] and 'eval_loss' in lines[3] and 'eval_loss' not in lines[0]
  assert lines == summary['records']
  # Step 1's loss is the loss of the initial parameters on the first batch.
  setup = train.build(cfg)
  first = next(iter(data.load(cfg).train.to_iter_dataset()))
  params = setup.init_state(seed=cfg.seed).params
  expected = train.loss_fn(params, np.asarray(first), None, setup.eval_model)
  assert lines[0]['loss'] == pytest.approx(float(expected), rel=1e-6)
  assert lines[3]['loss'] < lines[0]['loss']


def test_embedded_corpus_is_real_held_out_text():
  train_ids, val_ids = data.stdlib_corpus(300_000, 10)
  assert train_ids.max() <= 256 and val_ids.max() <= 256
  assert (train_ids == 256).sum() > 5 and (val_ids == 256).sum() >= 1
  text = data.ByteTokenizer().decode(train_ids[:20_000])
  assert 'def ' in text and 'import' in text
  # The held-out files are not part of training.
  assert data.ByteTokenizer().decode(val_ids[:400]) not in data.ByteTokenizer().decode(train_ids)


def test_adamw_first_moment_dtype():
  def moments(cfg):
    state = train.build(cfg).abstract_state().opt_state
    is_adam = lambda x: hasattr(x, 'mu')  # noqa: E731
    adam = [s for s in jax.tree.leaves(state, is_leaf=is_adam) if is_adam(s)]
    return adam[0].mu['wte'].dtype, adam[0].nu['wte'].dtype
  assert moments(tiny_config()) == (np.float32, np.float32)
  assert moments(tiny_config(**{'optim.mu_dtype': 'bfloat16'})) == (jax.numpy.bfloat16, np.float32)


def test_remat_without_the_layer_loop_on_a_cpu_says_it_saves_nothing(tmp_path, capsys):
  """XLA:CPU schedules the recomputation early without a loop (docs/performance.md, 9)."""
  from trainer import cli
  note = 'saves no memory on a CPU without the layer loop'
  for unroll, said in (('0', True), ('1', False), ('-1', False)):  # -1 keeps the loop for remat.
    assert cli.main(['train', '--config=configs/tiny.py', f'--workdir={tmp_path}/{unroll}',
                     '--config.train.steps=1', '--config.model.remat=dots',
                     f'--config.model.scan_unroll={unroll}']) == 0
    assert (note in capsys.readouterr().out) == said
