"""GPT-2 presets: gpt2 (124M), gpt2-medium (355M), gpt2-large (774M), gpt2-xl (1.5B).

    trainer train --config=configs/gpt2.py:gpt2 --config.train.steps=5 --workdir=runs/gpt2

Architecture: Radford et al. 2019, "Language Models are Unsupervised Multitask
Learners", Table 2 and section 2.3 (1024-token context, 50,257-token vocabulary,
pre-LN, final layer norm, GELU, init N(0, 0.02) with residual projections scaled
by 1/sqrt(2 x layers), dropout 0.1), as in Hugging Face GPT2LMHeadModel.
Optimizer: the GPT-2 paper gives no learning rates, so these follow GPT-3
(Brown et al. 2020, Table 2.1, the model of closest size; Adam b1 0.9, b2 0.95,
eps 1e-8, clip 1.0, weight decay 0.1, warmup 375M tokens, cosine decay to 10%
over 300B tokens).

Batch: the paper trained with 512 sequences of 1024 tokens (524,288 tokens per
step). That is hours per step on a CPU, so the plain preset runs 8 sequences per
step; append ',paper' (configs/gpt2.py:gpt2,paper) for the published batch, taken
in 64 micro-batches of 8 sequences.
"""
from trainer.config import default_config

# name: (layers, hidden, heads, GPT-3 learning rate for the closest size)
PRESETS = {
    'gpt2': (12, 768, 12, 6.0e-4),
    'gpt2-medium': (24, 1024, 16, 3.0e-4),
    'gpt2-large': (36, 1280, 20, 2.5e-4),
    'gpt2-xl': (48, 1600, 25, 2.0e-4),
}
PAPER_BATCH = 512           # Sequences per step (GPT-2 paper, section 2.3).
PAPER_TOKENS = 300e9        # GPT-3's token budget, used for the step count.


def get_config(arg: str = 'gpt2'):
  name, _, modifier = arg.partition(',')
  if name not in PRESETS:
    raise KeyError(f'unknown GPT-2 preset {name!r}; choose one of {", ".join(PRESETS)}')
  layers, hidden, heads, lr = PRESETS[name]
  c = default_config()
  m = c.model
  m.family, m.vocab_size, m.max_len, m.pos_offset = 'gpt2', 50257, 1024, 0
  m.num_layers, m.embed_dim, m.num_heads, m.mlp_dim = layers, hidden, heads, 4 * hidden
  m.activation, m.pre_ln, m.final_ln, m.tie_embeddings, m.use_bias = 'gelu_tanh', True, True, True, True
  m.dropout, m.embed_dropout, m.attn_dropout = 0.1, 0.1, 0.1
  m.init_std, m.scale_residual_init = 0.02, True
  m.remat = 'dots'  # Keep weight-matmul outputs, recompute attention: fits 1024+ tokens.
  t = c.train
  t.seq_len, t.batch_size, t.micro_batches = 1024, 8, 1
  t.log_every, t.eval_every, t.sample_tokens = 1, 1000, 0
  if modifier == 'paper':
    t.batch_size, t.micro_batches = PAPER_BATCH, PAPER_BATCH // 8
  elif modifier:
    raise KeyError(f'unknown modifier {modifier!r}; the only one is ",paper"')
  tokens_per_step = PAPER_BATCH * t.seq_len
  t.steps = int(PAPER_TOKENS // tokens_per_step)
  o = c.optim
  o.lr, o.b1, o.b2, o.eps, o.weight_decay, o.clip_norm = lr, 0.9, 0.95, 1e-8, 0.1, 1.0
  o.warmup_steps = int(375e6 // tokens_per_step)
  o.schedule, o.min_lr_ratio = 'cosine', 0.1
  return c
