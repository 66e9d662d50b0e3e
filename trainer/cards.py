"""MODEL_CARD.md and DATA_CARD.md for exported weights, from a run's workdir and config.

In the spirit of Mitchell et al. 2019 ("Model Cards for Model Reporting") and Gebru et
al. 2021 ("Datasheets for Datasets"): what the model is, what it was trained on and
how that data was cleaned, what the training cost in compute, dollars, energy and
carbon, how it scored, and what it is and is not for.
"""
from __future__ import annotations

import json
import math

from trainer import metrics, model, report, storage

_USE = """## Intended use
Research on language-model pretraining: studying training dynamics, scaling, and the
cost of a run; a starting point for fine-tuning. The model predicts the next token of
text like its training data.

## Limitations
- A base model: not instruction-tuned or aligned, and not evaluated for safety. It can
  produce false, biased, offensive or private text found in or suggested by its data.
- Only as broad as its training data (see DATA_CARD.md): expect poor results on other
  languages and domains.
- Figures for dollars, energy and CO2e are estimates from list prices, average chip
  power, an assumed PUE and grid intensity (trainer/hardware.py cites them), not
  metered values.
- Not for decisions about people, or any use where a wrong answer causes harm.
"""


def _table(rows) -> str:
  lines = ['| | |', '|---|---|']
  lines += [f'| {k} | {v} |' for k, v in rows]
  return '\n'.join(lines)


def _flatten(d: dict, prefix: str = '') -> list[tuple[str, object]]:
  out = []
  for k, v in d.items():
    if isinstance(v, dict):
      out += _flatten(v, f'{prefix}{k}.')
    else:
      out.append((f'{prefix}{k}', v))
  return out


def _read_json(path: str) -> dict:
  if not storage.exists(path):
    return {}
  return json.loads(storage.read_text(path))


def _architecture(cfg, mcfg) -> list[tuple[str, object]]:
  m = cfg.model
  return [('family', m.family), ('parameters', f'{model.param_count(mcfg):,}'),
          ('layers', m.num_layers), ('hidden size', m.embed_dim), ('heads', m.num_heads),
          ('MLP size', m.mlp_dim), ('vocabulary', f'{m.vocab_size:,}'),
          ('context', m.max_len), ('activation', m.activation),
          ('layer norm', 'pre-LN' if m.pre_ln else 'post-LN'),
          ('tied embeddings', m.tie_embeddings), ('compute dtype', m.dtype)]


def _compute(s: dict, acct: dict, mcfg, seq_len: int) -> list[tuple[str, object]]:
  tokens = s['tokens'] or 0
  hours = (s['wall_s'] or 0) / 3600
  chips = acct.get('chips')
  return [
      ('tokens seen', f'{tokens:,}'),
      ('model FLOPs (PaLM convention)', f'{model.flops_per_token(mcfg, seq_len) * tokens:.3g}'),
      ('hardware FLOPs (with remat)',
       f'{model.hardware_flops_per_token(mcfg, seq_len) * tokens:.3g}'),
      ('hardware', acct.get('hardware', 'unknown')),
      ('chips', chips if chips is not None else 'unknown'),
      ('wall time', f'{hours:,.3f} hours'),
      ('chip-hours', f'{chips * hours:,.3f}' if chips is not None else 'unknown'),
      ('goodput', f"{100 * s['goodput']:.1f}%" if s['goodput'] is not None else 'n/a'),
      ('MFU (median)', f"{100 * s['mfu']:.2f}%"),
      ('dollars', f"${s['dollars']:,.{2 if (s['dollars'] or 0) >= 10 else 4}f}"
                  if s['dollars'] is not None else 'n/a'),
      ('energy', f"{s['kwh']:,.3f} kWh" if s['kwh'] is not None else 'n/a'),
      ('CO2e', f"{s['co2e_kg']:,.3f} kg" if s['co2e_kg'] is not None else 'n/a'),
      ('assumptions', f"${acct.get('price_per_chip_hour', '?')}/chip-hour, "
                      f"{acct.get('power_w_per_chip', '?')} W/chip, PUE {acct.get('pue', '?')}, "
                      f"{acct.get('kg_co2e_per_kwh', '?')} kg CO2e/kWh")]


def _evaluation(s: dict, records: list[dict]) -> list[tuple[str, object]]:
  rows = [('final train loss', f"{s['train_loss']:.4f} (perplexity "
                               f"{math.exp(min(s['train_loss'], 50)):,.2f})")]
  if s['eval_loss'] is not None:
    rows.append(('final validation loss', f"{s['eval_loss']:.4f} (perplexity "
                                          f"{math.exp(min(s['eval_loss'], 50)):,.2f})"))
  extra = {k: v for r in records for k, v in r.items()
           if k.startswith('eval_') and k != 'eval_loss'}
  rows += sorted(extra.items())
  return rows


def _zero_shot(workdir: str) -> list[tuple[str, object]]:
  """Rows from ``trainer eval``'s eval.json: value, checkpoint step and convention."""
  details = _read_json(storage.join(workdir, 'eval.json')).get('details', {})
  return [(key, f"{d['value']:.4f} (step {d['step']}; {d['convention']})")
          for key, d in sorted(details.items()) if isinstance(d.get('value'), (int, float))]


def model_card(workdir: str, cfg) -> str:
  records = report.load(workdir)
  s = report.summary(records)
  acct = _read_json(storage.join(workdir, metrics.ACCOUNTING))
  mcfg = model.ModelConfig.from_config(cfg.model)
  o, t = cfg.optim, cfg.train
  training = [('steps', f"{s['steps']:,}"), ('batch', f'{t.batch_size} x {t.seq_len} tokens'),
              ('optimizer', f'AdamW (b1 {o.b1}, b2 {o.b2}, eps {o.eps}, weight decay '
                            f'{o.weight_decay}, clip {o.clip_norm})'),
              ('learning rate', f'{o.lr} peak, {o.warmup_steps} warmup steps, {o.schedule} '
                                f'decay to {o.min_lr_ratio} x peak'), ('seed', cfg.seed)]
  zero_shot = _zero_shot(workdir)  # eval.json says more than the same eval_* metrics lines.
  scores = [r for r in _evaluation(s, records) if r[0][5:] not in dict(zero_shot)] + zero_shot
  return '\n\n'.join([
      f'# Model card: {cfg.model.family} decoder, {model.param_count(mcfg):,} parameters',
      'A decoder-only transformer pretrained with `trainer` '
      '(JAX/Flax). Training data: see DATA_CARD.md.',
      '## Architecture\n' + _table(_architecture(cfg, mcfg)),
      '## Training\n' + _table(training),
      '## Compute, cost and carbon\n' + _table(_compute(s, acct, mcfg, t.seq_len)),
      '## Evaluation\n' + _table(scores),
      _USE])


def data_card(workdir: str, cfg) -> str:
  d = cfg.data
  s = report.summary(report.load(workdir))
  if d.path:
    source = f'prepared dataset at `{d.path}`'
    stats = _read_json(storage.join(d.path, 'stats.json'))
  else:
    source = ("the embedded default corpus: the Python standard library's source files, read "
              f'as bytes (first {d.max_bytes:,} bytes; every {d.val_every_nth_file}th file held '
              'out for validation)')
    stats = {}
  cleaning = (_table(_flatten(stats)) if stats else
              'No `stats.json` beside the data: no cleaning statistics were recorded.')
  rows = [('source', source), ('tokenizer', d.tokenizer or 'the dataset\'s (byte for the '
                                                         'embedded corpus)'),
          ('tokens seen in training', f"{s['tokens'] or 0:,}"),
          ('sequence length', cfg.train.seq_len)]
  return '\n\n'.join([
      '# Data card', '## Dataset\n' + _table(rows),
      '## Collection and cleaning statistics\n' + cleaning,
      '## Known limitations\nThe text reflects its sources: their languages, topics, '
      'licences and biases. Check each source\'s licence before redistributing the data or '
      'the model.'])


def write(out_dir: str, workdir: str, cfg) -> list[str]:
  """Writes MODEL_CARD.md and DATA_CARD.md into ``out_dir``; returns their paths."""
  storage.makedirs(out_dir)
  paths = []
  for name, render in (('MODEL_CARD.md', model_card), ('DATA_CARD.md', data_card)):
    path = storage.join(out_dir, name)
    storage.write_text(path, render(workdir, cfg) + '\n')
    paths.append(path)
  return paths
