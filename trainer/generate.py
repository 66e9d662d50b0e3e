"""Sampling with a KV cache: prefill the prompts once, then one token per step.

Shapes are fixed within a call (prompts are padded to a power-of-two bucket, the cache
holds a power-of-two bucket of prompt + new tokens, at most ``max_len`` slots), so a
Generator compiles its prefill and decode step once per bucket, never per token. Params,
cache and tokens are sharded on the training mesh with the training rules.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import PartitionSpec as P

from trainer import sharding
from trainer.config import ConfigError
from trainer.model import CACHE_AXES, init_cache


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How each next token is drawn; temperature 0 is greedy (argmax)."""
  max_new_tokens: int = 64
  temperature: float = 0.8
  top_k: int = 0            # Keep the k most likely tokens (0: all).
  top_p: float = 1.0        # Keep the smallest set with at least this probability (1: all).
  seed: int = 0


def filter_logits(logits_BV, temperature, top_k, top_p):
  """Temperature, then top-k, then top-p (nucleus), as Hugging Face orders them; -inf outside."""
  logits_BV = logits_BV / jnp.maximum(temperature, 1e-6)
  V = logits_BV.shape[-1]
  sorted_BV = -jnp.sort(-logits_BV, axis=-1)  # Descending.
  k = jnp.clip(jnp.where(top_k > 0, top_k, V), 1, V)
  kth_B1 = jnp.take_along_axis(sorted_BV, jnp.broadcast_to(k - 1, (sorted_BV.shape[0], 1)), -1)
  logits_BV = jnp.where(logits_BV >= kth_B1, logits_BV, -jnp.inf)
  sorted_BV = jnp.where(jnp.arange(V) < k, sorted_BV, -jnp.inf)
  probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
  before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV  # Mass of the more likely tokens.
  keep_BV = (before_BV < top_p) | (jnp.arange(V) == 0)  # The most likely token always stays.
  cut_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits_BV >= cut_B1, logits_BV, -jnp.inf)


def next_token(logits_BV, keys_B, temperature, top_k, top_p):
  """One token per row; each row draws with its own key, so batching never changes a draw."""
  filtered_BV = filter_logits(logits_BV, temperature, top_k, top_p)
  drawn_B = jax.vmap(jax.random.categorical)(keys_B, filtered_BV)
  greedy_B = jnp.argmax(logits_BV, axis=-1)
  return jnp.where(temperature > 0, drawn_B, greedy_B).astype(jnp.int32)


def bucket(length: int, cap: int) -> int:
  """Padded prompt length: the next power of two (at least 8), at most ``cap``."""
  return min(cap, max(8, 1 << (max(length, 1) - 1).bit_length()))


class Generator:
  """Jitted prefill and decode step for one setup (mesh, model) and batch size."""

  def __init__(self, setup, batch: int):
    self.setup, self.cfg = setup, setup.model_cfg
    shards = setup.mesh.shape['data'] * setup.mesh.shape['fsdp']
    self.rows = -(-batch // shards) * shards  # Every batch shard gets whole rows.
    self.batch = batch
    with setup.rules_context():
      cache_sh = nn.logical_to_mesh_sharding(P(*CACHE_AXES), setup.mesh,
                                             sharding.rules(setup.cfg.mesh.rules))
    cache_sh = {'k': cache_sh, 'v': cache_sh}
    params_sh, rows_sh = setup.state_shardings.params, setup.batch_sharding
    repl = sharding.replicated(setup.mesh)  # Small per-row vectors: every process reads them.
    self._prefills = {}  # One jitted prefill per cache size.
    self._prefill_jit = lambda slots: jax.jit(
        functools.partial(self._prefill_fn, slots=slots),
        in_shardings=(params_sh, rows_sh) + (repl,) * 6, out_shardings=(cache_sh, repl, repl))
    self._step = jax.jit(self._step_fn, in_shardings=(params_sh, cache_sh) + (repl,) * 8,
                         out_shardings=(cache_sh, repl, repl), donate_argnums=(1,))

  def _keys(self, key, row_seeds_B, t):
    return jax.vmap(lambda s: jax.random.fold_in(jax.random.fold_in(key, s), t))(row_seeds_B)

  def _prefill_fn(self, params, tokens_BP, lengths_B, key, row_seeds_B, temperature, top_k, top_p,
                  slots):
    B, Pl = tokens_BP.shape
    positions_BP = jnp.broadcast_to(jnp.arange(Pl), (B, Pl))
    cache = init_cache(self.cfg, B, slots)
    logits_BPV, cache = self.setup.eval_model.apply({'params': params}, tokens_BP, positions_BP,
                                                    cache)
    last_BV = jnp.take_along_axis(logits_BPV, (lengths_B - 1)[:, None, None], 1)[:, 0]
    last_BV = last_BV[:, :self.cfg.vocab_size]
    keys_B = self._keys(key, row_seeds_B, 0)
    return cache, next_token(last_BV, keys_B, temperature, top_k, top_p), last_BV

  def _step_fn(self, params, cache, tokens_B, positions_B, key, row_seeds_B, t, temperature,
               top_k, top_p):
    logits_B1V, cache = self.setup.eval_model.apply(
        {'params': params}, tokens_B[:, None], positions_B[:, None], cache)
    logits_BV = logits_B1V[:, 0, :self.cfg.vocab_size]
    keys_B = self._keys(key, row_seeds_B, t)
    return cache, next_token(logits_BV, keys_B, temperature, top_k, top_p), logits_BV

  def check_prompts(self, prompts) -> None:
    """Every prompt must be non-empty and leave room for at least one new token."""
    for i, p in enumerate(prompts):
      if len(p) == 0:
        raise ConfigError(f'prompt {i} is empty; give some text to continue')
      if len(p) >= self.cfg.max_len:
        raise ConfigError(f'prompt {i} has {len(p)} tokens but the model\'s context is '
                          f'{self.cfg.max_len}; shorten the prompt to under {self.cfg.max_len}')

  def generate(self, params, prompts, sampling: Sampling, *, eot: int | None = None, row_seeds=None,
               on_tokens=None, return_logits: bool = False):
    """New token ids per prompt (up to end-of-text, which is left out); logits too if asked.

    ``on_tokens(step, tokens)`` sees each step's tokens (one per prompt) as they arrive.
    """
    self.check_prompts(prompts)
    n = len(prompts)
    if n > self.batch:
      raise ValueError(f'{n} prompts for a generator built for {self.batch}')
    lengths = np.ones(self.rows, np.int32)
    lengths[:n] = [len(p) for p in prompts]
    steps = max(0, min(sampling.max_new_tokens, self.cfg.max_len - int(lengths.max())))
    buf = np.zeros((self.rows, bucket(int(lengths.max()), self.cfg.max_len)), np.int32)
    for i, p in enumerate(prompts):
      buf[i, :len(p)] = p
    seeds = np.arange(self.rows, dtype=np.int32) if row_seeds is None else np.resize(
        np.asarray(row_seeds, np.int32), self.rows)
    knobs = (np.float32(sampling.temperature), np.int32(sampling.top_k),
             np.float32(sampling.top_p))
    key = jax.random.PRNGKey(sampling.seed)
    out, logits, done = [[] for _ in range(n)], [], np.zeros(n, bool)
    if steps == 0:
      return (out, np.zeros((0, n, self.cfg.vocab_size), np.float32)) if return_logits else out
    with self.setup.rules_context():
      rows = jax.make_array_from_callback(buf.shape, self.setup.batch_sharding,
                                          lambda idx: buf[idx])
      # Cache slots: a power-of-two bucket of what this call needs, not the whole context.
      slots = max(buf.shape[1], bucket(int(lengths.max()) + steps, self.cfg.max_len))
      if slots not in self._prefills:
        self._prefills[slots] = self._prefill_jit(slots)
      cache, tok, lg = self._prefills[slots](params, rows, lengths, key, seeds, *knobs)
      for t in range(steps):
        if t + 1 < steps:  # Dispatch the next step before reading this one's tokens.
          nxt = self._step(params, cache, tok, lengths + t, key, seeds, np.int32(t + 1),
                           *knobs)
        host = np.asarray(jax.device_get(tok))[:n]
        if return_logits:
          logits.append(np.asarray(jax.device_get(lg))[:n])
        for i in np.flatnonzero(~done):
          if eot is not None and host[i] == eot:
            done[i] = True
          else:
            out[i].append(int(host[i]))
        if on_tokens:
          on_tokens(t, np.where(done, -1, host))
        if done.all() or t + 1 == steps:
          break
        cache, tok, lg = nxt
    return (out, np.stack(logits)) if return_logits else out


def sample(setup, params, prompt: list[int], num_tokens: int, *, temperature: float = 0.8,
           seed: int = 0, eot: int | None = None) -> list[int]:
  """Prompt + up to ``num_tokens`` sampled tokens (one sequence); used at the end of training."""
  how = Sampling(max_new_tokens=num_tokens, temperature=temperature, seed=seed)
  new = Generator(setup, 1).generate(params, [prompt], how, eot=eot)[0]
  return list(prompt) + new


def check_sampling(s: Sampling, num_samples: int = 1):
  """Sampling settings a user typed; ConfigError names the bad one."""
  bad = [(s.max_new_tokens <= 0, f'--max_new_tokens={s.max_new_tokens}: must be positive'),
         (s.temperature < 0, f'--temperature={s.temperature}: must be 0 (greedy) or positive'),
         (s.top_k < 0, f'--top_k={s.top_k}: must be 0 (off) or positive'),
         (not 0 < s.top_p <= 1, f'--top_p={s.top_p}: must be in (0, 1]'),
         (num_samples <= 0, f'--num_samples={num_samples}: must be positive')]
  for is_bad, message in bad:
    if is_bad:
      raise ConfigError(message)


def run(workdir: str, texts: list[str], sampling: Sampling, *, num_samples: int = 1,
        step: int | None = None, as_json: bool = False, out=None) -> dict:
  """``trainer generate``: samples from a checkpoint, streaming one sequence to ``out``."""
  import json
  import sys
  from trainer import evaluate, evalrun
  out = out or sys.stdout
  check_sampling(sampling, num_samples)
  if not texts or any(not t for t in texts):
    raise ConfigError('the prompt is empty; give --prompt "TEXT" or a non-empty --prompt_file')
  cfg, step, setup, params = evalrun.load(workdir, step)
  tok = evaluate.model_tokenizer(cfg)
  prompts = [tok.encode(t).tolist() for t in texts for _ in range(num_samples)]
  gen = Generator(setup, len(prompts))
  gen.check_prompts(prompts)
  stream = not as_json and len(prompts) == 1
  shown = []

  def show(_, tokens):  # Decode everything so far: a character may span several tokens.
    if tokens[0] >= 0:
      shown.append(int(tokens[0]))
      text = tok.decode(shown)
      out.write(text[show.printed:])
      out.flush()
      show.printed = len(text)
  show.printed = 0
  if stream:
    out.write(texts[0])
  new = gen.generate(params, prompts, sampling, eot=tok.eot, row_seeds=range(len(prompts)),
                     on_tokens=show if stream else None)
  samples = [{'prompt': texts[i // num_samples], 'ids': ids, 'text': tok.decode(ids)}
             for i, ids in enumerate(new)]
  report = {'step': step, 'ids': samples[0]['ids'], 'text': samples[0]['text'],
            'samples': samples}
  if as_json:
    out.write(json.dumps(report) + '\n')
  elif stream:
    out.write('\n')
  else:
    for i, s in enumerate(samples):
      out.write(f'--- sample {i + 1} ---\n{s["prompt"]}{s["text"]}\n')
  return report
