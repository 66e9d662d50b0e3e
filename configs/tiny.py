"""A tiny GPT-2-style model for quick CPU runs and tests (a few seconds per 20 steps).

    trainer train --config=configs/tiny.py --config.train.steps=20 --workdir=runs/tiny

Variants: 'gpt2' (default) and 'opt' (OPT block: ReLU, positions offset by 2),
'opt350m' (post-LN with an embedding projection, like OPT-350m).
"""
from trainer.config import default_config


def get_config(arg: str = 'gpt2'):
  c = default_config()
  m = c.model
  m.max_len, m.embed_dim, m.num_layers, m.num_heads, m.mlp_dim = 64, 64, 2, 4, 256
  m.dropout = m.embed_dropout = m.attn_dropout = 0.0
  if arg in ('opt', 'opt350m'):
    m.family, m.activation, m.pos_offset, m.init_std = 'opt', 'relu', 2, 0.006
  if arg == 'opt350m':
    m.pre_ln, m.final_ln, m.proj_dim = False, False, 32
  elif arg not in ('gpt2', 'opt'):
    raise KeyError(f'unknown tiny variant {arg!r}; choose gpt2, opt or opt350m')
  t = c.train
  t.steps, t.batch_size, t.seq_len, t.log_every = 20, 8, 64, 1
  t.eval_every, t.eval_batches, t.sample_tokens = 0, 2, 0
  c.optim.lr, c.optim.warmup_steps = 3e-3, 5
  c.data.max_bytes = 400_000
  return c
