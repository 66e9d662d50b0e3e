"""OPT presets: opt-125m, opt-350m, opt-1.3b, opt-2.7b, opt-6.7b, opt-13b, opt-30b, opt-66b, opt-175b.

    trainer info --config=configs/opt.py:opt-175b
    trainer train --config=configs/opt.py:opt-125m --config.train.steps=5 --workdir=runs/opt

Architecture and hyperparameters: Zhang et al. 2022, "OPT: Open Pre-trained
Transformer Language Models", Table 1 (layers, heads, width, peak learning rate,
batch in tokens) and section 2.2 (2048-token context, ReLU, AdamW b1 0.9, b2 0.95,
weight decay 0.1, clip 1.0, dropout 0.1 but none on embeddings, linear warmup over
2000 steps for 175B and 375M tokens otherwise, linear decay to 10% of the peak over
300B tokens, init N(0, 0.006) with output layers scaled by 1/sqrt(2 x layers) as in
Megatron-LM). As in Hugging Face OPTForCausalLM: learned positions offset by 2,
vocabulary 50,272, tied embeddings, final layer norm; opt-350m is post-LN with a
512-wide embedding projected to 1024 and no final layer norm.

Batch: the plain preset runs 8 sequences per step so it works on a CPU; append
',paper' (configs/opt.py:opt-125m,paper) for the published batch, taken in
micro-batches of 8 sequences.
"""
from trainer.config import default_config

# name: (layers, heads, hidden, peak learning rate, batch in tokens)
PRESETS = {
    'opt-125m': (12, 12, 768, 6.0e-4, 0.5e6),
    'opt-350m': (24, 16, 1024, 3.0e-4, 0.5e6),
    'opt-1.3b': (24, 32, 2048, 2.0e-4, 1e6),
    'opt-2.7b': (32, 32, 2560, 1.6e-4, 1e6),
    'opt-6.7b': (32, 32, 4096, 1.2e-4, 2e6),
    'opt-13b': (40, 40, 5120, 1.0e-4, 4e6),
    'opt-30b': (48, 56, 7168, 1.0e-4, 4e6),
    'opt-66b': (64, 72, 9216, 0.8e-4, 2e6),
    'opt-175b': (96, 96, 12288, 1.2e-4, 2e6),
}
SEQ_LEN = 2048
TOTAL_TOKENS = 300e9


def get_config(arg: str = 'opt-125m'):
  name, _, modifier = arg.partition(',')
  if name not in PRESETS:
    raise KeyError(f'unknown OPT preset {name!r}; choose one of {", ".join(PRESETS)}')
  layers, heads, hidden, lr, batch_tokens = PRESETS[name]
  c = default_config()
  m = c.model
  m.family, m.vocab_size, m.max_len, m.pos_offset = 'opt', 50272, SEQ_LEN, 2
  m.num_layers, m.embed_dim, m.num_heads, m.mlp_dim = layers, hidden, heads, 4 * hidden
  m.activation, m.tie_embeddings, m.use_bias = 'relu', True, True
  m.pre_ln = m.final_ln = name != 'opt-350m'
  m.proj_dim = 512 if name == 'opt-350m' else 0
  m.dropout, m.embed_dropout, m.attn_dropout = 0.1, 0.0, 0.0
  m.init_std, m.scale_residual_init = 0.006, True
  m.remat = 'dots'  # Keep weight-matmul outputs, recompute attention: fits 1024+ tokens.
  paper_batch = int(round(batch_tokens / SEQ_LEN / 256)) * 256   # 0.5M tokens = 256 sequences.
  t = c.train
  t.seq_len, t.batch_size, t.micro_batches = SEQ_LEN, 8, 1
  t.log_every, t.eval_every, t.sample_tokens = 1, 1000, 0
  if modifier == 'paper':
    t.batch_size, t.micro_batches = paper_batch, paper_batch // 8
  elif modifier:
    raise KeyError(f'unknown modifier {modifier!r}; the only one is ",paper"')
  tokens_per_step = paper_batch * SEQ_LEN
  t.steps = int(TOTAL_TOKENS // tokens_per_step)
  o = c.optim
  o.lr, o.b1, o.b2, o.eps, o.weight_decay, o.clip_norm = lr, 0.9, 0.95, 1e-8, 0.1, 1.0
  o.warmup_steps = 2000 if name == 'opt-175b' else int(375e6 // tokens_per_step)
  o.schedule, o.min_lr_ratio = 'linear', 0.1
  return c
