"""``trainer eval``: a checkpoint scored on one task; results go to eval.json, metrics, TensorBoard.

``WORKDIR/eval.json`` holds the latest value of each metric at its top level and, under
``details``, the step, convention and settings that produced it; calls merge into it.
"""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np

from trainer import evaluate
from trainer.config import ConfigError

EVAL_FILE = 'eval.json'


@dataclasses.dataclass
class Request:
  """What ``trainer eval`` was asked for."""
  task: str
  data: str = ''
  limit: int = 0               # Examples (LAMBADA, harness), lines (WikiText), rows (loss).
  tasks: str = ''              # Harness task names, comma-separated.
  context: int = 0             # WikiText window (0: the model's max_len).
  stride: int = 0              # WikiText stride (0: half the window).
  detokenizer: str = 'none'    # WikiText: 'none' or 'megatron'.
  batch: int = 8
  step: int | None = None
  include_path: str = ''       # Harness: a directory of extra task YAML files.


def check(req: Request):
  """Bad requests stop here, before a checkpoint is read."""
  if req.task not in evaluate.TASKS:
    raise ConfigError(f'--task={req.task}: unknown task; choose one of {", ".join(evaluate.TASKS)}')
  if req.task in ('lambada', 'wikitext') and not req.data:
    raise ConfigError(f'--task={req.task} needs --data=FILE (LAMBADA JSON Lines or WikiText raw)')
  if req.task == 'harness' and not req.tasks:
    raise ConfigError('--task=harness needs --tasks=NAME[,NAME...] (lm-evaluation-harness tasks)')
  if req.detokenizer not in evaluate.DETOKENIZERS:
    raise ConfigError(f'--detokenizer={req.detokenizer}: choose one of '
                      f'{", ".join(evaluate.DETOKENIZERS)}')
  for name in ('limit', 'context', 'stride'):
    if getattr(req, name) < 0:
      raise ConfigError(f'--{name}={getattr(req, name)}: must be 0 (default) or positive')
  if req.batch <= 0:
    raise ConfigError(f'--batch={req.batch}: must be positive')


def load(workdir: str, step: int | None = None):
  """(config, step, setup, params) of a workdir's newest (or given) checkpoint."""
  from trainer import checkpoint, train
  cfg, step, state = checkpoint.latest(workdir, step=step)
  return cfg, step, train.build(cfg), state.params


def run(workdir: str, req: Request) -> dict:
  """Scores the checkpoint, records the results, returns {'step', metric: value ...}."""
  check(req)
  cfg, step, setup, params = load(workdir, req.step)
  tok = evaluate.model_tokenizer(cfg)
  if req.task == 'harness':
    from trainer import harness
    values, info = harness.evaluate_tasks(setup, params, tok, req)
  else:
    values = task_values(req, setup, params, tok, cfg)
    info = {k: v for k, v in values.items() if k not in evaluate.CONVENTIONS}
    values = {k: v for k, v in values.items() if k in evaluate.CONVENTIONS}
  record(workdir, cfg, step, values, {**info, 'task': req.task, 'data': req.data or None})
  return {'step': step, **values, **info}


def task_values(req: Request, setup, params, tok, cfg) -> dict:
  """One of the built-in tasks, on a fresh scorer."""
  scorer = evaluate.Scorer(setup, req.batch)
  if req.task == 'lambada':
    return evaluate.lambada(scorer, params, evaluate.read_lambada(req.data, req.limit), tok)
  if req.task == 'wikitext':
    context = req.context or setup.model_cfg.max_len
    if context > setup.model_cfg.max_len:
      raise ConfigError(f'--context={context} is longer than the model\'s '
                        f'{setup.model_cfg.max_len}; lower it')
    stride = req.stride or max(1, context // 2)
    text = evaluate.read_text(req.data)
    if req.limit:  # The first lines only.
      text = ''.join(text.splitlines(keepends=True)[:req.limit])
    return evaluate.wikitext(scorer, params, text, tok, context, stride, req.detokenizer)
  return validation_loss(scorer, params, cfg, tok, req.data, req.limit)


def validation_rows(cfg, tok, path: str):
  """The validation split as one token stream (documents end with end-of-text)."""
  from etils import epath
  from trainer import data
  path = path or cfg.data.path
  if not path:
    _, val = data.stdlib_corpus(cfg.data.max_bytes, cfg.data.val_every_nth_file, tok)
    return val
  stats_file = epath.Path(path) / 'stats.json'
  if stats_file.is_file():  # Checked first: a mismatch needs no dataset opened.
    name = json.loads(stats_file.read_text()).get('tokenizer')
    if name != tok.name:
      raise ConfigError(f'--data={path} was tokenized with {name} but the model uses '
                        f'{tok.name}; prepare the data with --tokenizer {tok.name}')
  _, sources = data.open_prepared(path)
  split = sources[data._validation_split(sources, path)]
  docs = [np.append(split[i]['tokens'].astype(np.int32), np.int32(tok.eot))
          for i in range(len(split))]
  return np.concatenate(docs)


def validation_loss(scorer, params, cfg, tok, path: str, limit: int) -> dict:
  """Mean next-token loss over every token of the validation split, in seq_len rows."""
  tokens = validation_rows(cfg, tok, path)
  L = cfg.train.seq_len
  rows = [tokens[i:i + L + 1] for i in range(0, len(tokens) - 1, L)]  # Overlap by one id.
  rows = rows[:limit] if limit else rows
  scores = scorer.score(params, rows, desc='validation')
  nll = -sum(logp.sum() for logp, _ in scores)
  count = sum(len(logp) for logp, _ in scores)
  return {'val_loss': float(nll / count), 'val_tokens': int(count)}


def record(workdir: str, cfg, step: int, values: dict, info: dict):
  """Merges into WORKDIR/eval.json; appends eval_* at ``step`` to metrics.jsonl and TensorBoard."""
  import jax
  from etils import epath
  from trainer import metrics
  if jax.process_index() != 0:
    return
  path = epath.Path(workdir) / EVAL_FILE
  saved = json.loads(path.read_text()) if path.exists() else {}
  details = saved.setdefault('details', {})
  conventions = info.get('conventions', {})
  for key, value in values.items():
    saved[key] = value
    details[key] = {'value': value, 'step': step,
                    'convention': evaluate.CONVENTIONS.get(key, conventions.get(key, '')),
                    **{k: v for k, v in info.items() if k != 'conventions'}}
  path.write_text(json.dumps(saved, indent=2, sort_keys=True) + '\n')
  row = {'step': step, **{f'eval_{k}': v for k, v in values.items()
                          if isinstance(v, (int, float)) and math.isfinite(v)}}
  writers = [metrics.Writer(workdir)]
  if cfg.log.tensorboard:
    writers.append(metrics.TensorBoardWriter(workdir))
  for writer in writers:
    writer.write(row)
    writer.close()


class DuringTraining:
  """``train.eval_tasks`` read and tokenized once, scored at each evaluation step.

  The spec is comma-separated ``lambada:FILE``, ``wikitext:FILE`` or ``harness:TASK+TASK``;
  ``train.eval_limit`` caps examples (lines for WikiText). Results are ``eval_<metric>``.
  """

  def __init__(self, cfg, setup, tok):
    self.setup, self.tok, self.jobs = setup, tok, []
    limit = cfg.train.eval_limit
    for item in filter(None, (s.strip() for s in cfg.train.eval_tasks.split(','))):
      task, _, arg = item.partition(':')
      if task not in ('lambada', 'wikitext', 'harness') or not arg:
        raise ConfigError(f'--config.train.eval_tasks: {item!r}; write lambada:FILE, '
                          'wikitext:FILE or harness:TASK+TASK, comma-separated')
      if task == 'lambada':
        self.jobs.append((task, evaluate.read_lambada(arg, limit)))
      elif task == 'wikitext':
        lines = evaluate.read_text(arg).splitlines(keepends=True)
        self.jobs.append((task, ''.join(lines[:limit] if limit else lines)))
      else:
        self.jobs.append((task, Request(task='harness', tasks=arg.replace('+', ','),
                                        limit=limit)))
    self.scorer = evaluate.Scorer(setup, progress=False) if self.jobs else None

  def __call__(self, params) -> dict:
    out, context = {}, self.setup.model_cfg.max_len
    for task, job in self.jobs:
      if task == 'lambada':
        values = evaluate.lambada(self.scorer, params, job, self.tok)
      elif task == 'wikitext':
        values = evaluate.wikitext(self.scorer, params, job, self.tok, context, context // 2)
      else:
        from trainer import harness
        values = harness.evaluate_tasks(self.setup, params, self.tok, job)[0]
      out.update({f'eval_{k}': v for k, v in values.items() if isinstance(v, float)})
    return out
