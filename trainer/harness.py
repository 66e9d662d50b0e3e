"""lm-evaluation-harness on our model: an adapter for its LM interface, and `--task=harness`.

Optional extra (``pip install ".[eval]"``). The adapter subclasses lm-eval's TemplateLM,
which tokenizes (context, continuation) pairs exactly as its Hugging Face backend does;
we score the token sequences with ``evaluate.Scorer`` and generate with the KV cache.
"""
from __future__ import annotations

import numpy as np

from trainer import evaluate, generate
from trainer.config import ConfigError

try:
  from lm_eval.api.model import TemplateLM
except ImportError:  # The optional extra is missing; evaluate_tasks says how to add it.
  TemplateLM = object


class TrainerLM(TemplateLM):
  """lm-eval's LM interface (loglikelihood, loglikelihood_rolling, generate_until) for a Setup."""

  def __init__(self, setup, params, tok, batch: int = 8):
    super().__init__()
    self.setup, self.params, self.tok = setup, params, tok
    self.scorer = evaluate.Scorer(setup, batch)
    self.batch, self.max_length = batch, setup.model_cfg.max_len
    self._generators = {}

  @property
  def eot_token_id(self):
    return self.tok.eot

  def tok_encode(self, string: str, **kwargs):
    return self.tok.encode(string).tolist()

  def tok_decode(self, ids, **kwargs):
    return self.tok.decode(ids)

  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
    """(sum of log-probs, all greedy) of each continuation; long inputs keep their end."""
    pairs = [(list(ctx), list(cont)) for _, ctx, cont in requests]
    return self._score_pairs(pairs)

  def _score_pairs(self, pairs):
    scores = self.scorer.score(self.params, [ctx + cont for ctx, cont in pairs], desc='lm-eval')
    return [(float(logp[-len(cont):].sum()), bool(hit[-len(cont):].all()))
            for (_, cont), (logp, hit) in zip(pairs, scores)]

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
    """Whole-text log-likelihoods in disjoint windows of max_len, end-of-text first (as HFLM)."""
    from lm_eval import utils
    pairs, owner = [], []
    for i, req in enumerate(requests):
      windows = utils.get_rolling_token_windows(
          token_list=self.tok_encode(req.args[0]), prefix_token=self.prefix_token_id,
          max_seq_len=self.max_length, context_len=1)
      for ctx, cont in map(utils.make_disjoint_window, windows):
        pairs.append((list(ctx), list(cont)))
        owner.append(i)
    totals = np.zeros(len(requests))
    for i, (logp, _) in zip(owner, self._score_pairs(pairs)):
      totals[i] += logp
    return [float(t) for t in totals]

  def generate_until(self, requests, disable_tqdm: bool = False):
    """Greedy (or sampled, if asked) continuations, cut at the first stop string."""
    out = []
    for start in range(0, len(requests), self.batch):
      chunk = requests[start:start + self.batch]
      for context, kwargs in (r.args for r in chunk):
        out.append(self._generate_one(context, dict(kwargs)))
    return out

  def _generate_one(self, context: str, kwargs: dict) -> str:
    until = kwargs.pop('until', None) or [self.tok.decode([self.tok.eot])]
    until = [until] if isinstance(until, str) else list(until)
    max_new = int(kwargs.pop('max_gen_toks', 256))
    do_sample = bool(kwargs.pop('do_sample', False))
    temperature = float(kwargs.pop('temperature', 0.0)) if do_sample else 0.0
    room = max(1, self.max_length - max_new)
    ids = self.tok_encode(context)[-room:] or [self.tok.eot]
    gen = self._generators.setdefault(1, generate.Generator(self.setup, 1))
    how = generate.Sampling(max_new_tokens=max_new, temperature=temperature,
                            top_k=int(kwargs.pop('top_k', 0) or 0),
                            top_p=float(kwargs.pop('top_p', 1.0) or 1.0))
    text = self.tok.decode(gen.generate(self.params, [ids], how, eot=self.tok.eot)[0])
    for stop in until:
      if stop and stop in text:
        text = text[:text.index(stop)]
    return text


def evaluate_tasks(setup, params, tok, req) -> tuple[dict, dict]:
  """Runs lm-eval tasks offline; ({task_metric: value}, info with each metric's convention)."""
  try:
    import lm_eval
    from lm_eval.tasks import TaskManager
  except ImportError:
    raise ConfigError('--task=harness needs lm-evaluation-harness: pip install ".[eval]"') from None
  names = [t.strip() for t in req.tasks.split(',') if t.strip()]
  manager = TaskManager(include_path=req.include_path or None)
  unknown = [n for n in names if n not in manager.all_tasks]
  if unknown:
    raise ConfigError(f'--tasks: unknown lm-eval task {unknown[0]!r}; check the name, or give '
                      '--include_path=DIR with its YAML')
  lm = TrainerLM(setup, params, tok, req.batch)
  try:
    results = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=manager,
                                      limit=req.limit or None, bootstrap_iters=0,
                                      log_samples=False)
  except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
    raise ConfigError(f'--tasks={req.tasks}: lm-eval could not run it ({type(e).__name__}: '
                      f'{str(e).splitlines()[0] if str(e) else ""}); check the task YAML') from None
  values, conventions = {}, {}
  for task, metrics in results['results'].items():
    for key, value in metrics.items():
      metric, _, filt = key.partition(',')
      if 'stderr' in metric or not isinstance(value, (int, float)):
        continue
      name = f'{task}_{metric}'
      values[name] = float(value)
      conventions[name] = f'lm-evaluation-harness {task} {metric} (filter {filt or "none"})'
  return values, {'tasks': names, 'conventions': conventions}
