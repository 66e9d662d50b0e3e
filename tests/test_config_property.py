"""Property: any value of any config key or verb flag either starts the verb or stops it with
exit 2 and one line, never a traceback. Values come from each Key's range (trainer/spec.py).

Training itself is replaced by a sentinel, so "starts" means every check passed and the
verb was about to begin its work; the subprocess and real-run tests below cover the rest.
"""
import math
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from trainer import aot, checkpoint, cli, config, distributed, loop, prepare
from trainer.sweep import worker as sweep_worker
from trainer.spec import INT_LIMIT, Key

from conftest import DATA, ROOT

TINY = f'--config={ROOT}/configs/tiny.py'
# Deterministic and bounded, so CI runs the same examples every time.
PROFILE = settings(derandomize=True, max_examples=300, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture,
                                          HealthCheck.too_slow])
BOOL_TEXT = ('true', 'false', 'True', 'FALSE', '1', '0', 'yes', 'no')
ARGV_TEXT = st.text(st.characters(blacklist_characters='\x00'), max_size=12)  # argv has no NUL.
JUNK = st.sampled_from(['', ' ', 'abc', 'None', '1e', '--', '0x10', '1_0_', 'true', '\n', '-'])


class Started(Exception):
  """Raised where the verb's real work would begin."""


def _text(value) -> str:
  return repr(value) if isinstance(value, float) else str(value)  # repr: floats round-trip.


SOURCE = st.text(st.characters(min_codepoint=33, max_codepoint=126, blacklist_characters='"\\'),
                 min_size=1, max_size=12)


def _pairs(weights: st.SearchStrategy) -> st.SearchStrategy:
  """Text of a list of [SOURCE, WEIGHT] pairs (a tuple key such as data.mixture)."""
  pair = st.tuples(SOURCE, weights).map(lambda p: f'["{p[0]}", {_text(p[1])}]')
  return st.lists(pair, max_size=3).map(lambda ps: '[' + ', '.join(ps) + ']')


def valid(key: Key) -> st.SearchStrategy:
  """Text of values the key accepts."""
  if key.type is tuple:
    lo, _ = key.lower()
    return _pairs(st.integers(int(lo), 100) | st.floats(lo, 1e6, allow_nan=False))
  if key.type is bool:
    return st.sampled_from(BOOL_TEXT)
  if key.choices:
    return st.sampled_from(key.choices)
  if key.type is str:
    prefix = key.pattern.split(':')[0].strip('(') + ':' if ':' in key.pattern else ''
    body = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
    if prefix and not prefix[0].isalpha():  # A pattern of digits such as START:END.
      return st.from_regex(key.pattern, fullmatch=True, alphabet=st.characters(
          min_codepoint=33, max_codepoint=126)).filter(key.accepts)
    if prefix:  # 'hf:PATH' or 'tfds:NAME', or empty.
      return st.just('') | body.map(lambda b: prefix + b)
    return body
  (lo, lo_in), (hi, hi_in) = key.lower(), key.upper()
  also = [st.just(_text(a)) for a in key.also]
  if key.type is int:
    lo, hi = int(max(lo, -INT_LIMIT)) + (not lo_in), int(hi) - (not hi_in)
    edges = st.sampled_from([lo, hi, min(lo + 1, hi)])
    return st.one_of(edges, st.integers(lo, min(hi, lo + 10**6)), *also).map(_text)
  lo = max(lo, -1e300)
  numbers = st.floats(lo, min(hi, 1e300), exclude_min=not lo_in, exclude_max=not hi_in,
                      allow_nan=False, allow_infinity=False)
  return st.one_of(numbers, *also).map(_text)


def invalid(key: Key) -> st.SearchStrategy:
  """Text of values the key refuses: out of range, wrong type, NaN, infinite, huge, empty."""
  if key.type is tuple:
    lo, _ = key.lower()
    bad_pair = st.sampled_from(['["a"]', '["a", 1, 2]', '[1, 2]', '["", 1]', '["a", "1"]',
                                '["a", true]', '"a"'])
    return st.one_of(
        JUNK.filter(lambda t: not _parses(key, t)), ARGV_TEXT.filter(lambda t: not _parses(key, t)),
        _pairs(st.floats(-1e6, lo, exclude_max=True) | st.sampled_from([math.inf, 1e400])).filter(
            lambda t: not _parses(key, t)),
        bad_pair.map(lambda p: f'[{p}]'), st.just('{"a": 1}'))
  if key.type is bool:
    return JUNK.filter(lambda t: t.lower() not in BOOL_TEXT) | st.sampled_from(['2', 'on', 'nan'])
  if key.type is str:
    if key.choices:
      return (JUNK | ARGV_TEXT).filter(lambda t: t not in key.choices)
    if key.pattern:
      return (JUNK | ARGV_TEXT).filter(lambda t: not key.accepts(t))
    return st.nothing()
  (lo, lo_in), (hi, hi_in) = key.lower(), key.upper()
  out = [JUNK.filter(lambda t: not _parses(key, t)), st.sampled_from(['nan', 'inf', '-inf'])]
  if key.type is int:
    out.append(st.sampled_from(['1.5', '1e3', str(10**30)]))
    if hi < math.inf:
      out.append(st.integers(int(hi) + hi_in, int(hi) + 10**6))
    if lo > -math.inf:
      out.append(st.integers(int(lo) - 10**6, int(lo) - lo_in))
  else:
    out.append(st.just('1e400'))
    if hi < math.inf:
      out.append(st.floats(hi, 1e300, exclude_min=hi_in))
    if lo > -math.inf:
      out.append(st.floats(-1e300, lo, exclude_max=lo_in))
  return st.one_of(*out).map(_text).filter(lambda t: not _parses(key, t))


def _parses(key: Key, text: str) -> bool:
  try:
    return key.accepts(key.parse(text))
  except ValueError:
    return False


def value_for(key: Key) -> st.SearchStrategy:
  """(text, whether the key alone accepts it)."""
  return valid(key).map(lambda t: (t, True)) | invalid(key).map(lambda t: (t, False))


def run(argv, capsys) -> tuple[str, str]:
  """('started' | 'exit 0' | 'exit 2', stderr); anything else (a traceback) fails the test."""
  try:
    code = cli.main(argv)
  except Started as e:
    run.started_with = e.args
    return 'started', capsys.readouterr().err
  err = capsys.readouterr().err
  assert code in (0, 2), (argv, code, err)
  if code == 2:
    assert err.startswith('error: ') and err.count('\n') == 1, (argv, err)
  return f'exit {code}', err


@pytest.fixture
def no_work(monkeypatch):
  """Every verb stops with Started where its expensive or irreversible part would begin."""
  def raise_started(*args, **kwargs):
    raise Started(*args)

  def initialize(settings):
    distributed.check(settings)  # The flag checks run; joining a cluster does not.
  monkeypatch.setattr(loop, 'run', raise_started)
  monkeypatch.setattr(distributed, 'initialize', initialize)
  monkeypatch.setattr(checkpoint, 'latest', raise_started)
  monkeypatch.setattr(aot, 'topology_devices', raise_started)
  # prepare: after the options, tokenizer and language filter load, before any work directory.
  monkeypatch.setattr(prepare, '_open_work', raise_started)
  monkeypatch.setattr(sweep_worker, 'Worker', raise_started)  # Before a point runs.


@PROFILE
@given(data=st.data())
def test_strategies_agree_with_the_keys(data):
  """The test's own generators: valid text is accepted by the key, invalid text is refused."""
  name = data.draw(st.sampled_from(sorted(config.SPECS)), label='key')
  text, ok = data.draw(value_for(config.SPECS[name]), label='value')
  assert _parses(config.SPECS[name], text) == ok


@PROFILE
@given(data=st.data())
def test_any_single_key_starts_or_exits_2(data, no_work, capsys, tmp_path):
  name = data.draw(st.sampled_from(sorted(config.SPECS)), label='key')
  text, ok = data.draw(value_for(config.SPECS[name]), label='value')
  outcome, err = run(['train', TINY, f'--workdir={tmp_path}/run', f'--config.{name}={text}'],
                     capsys)
  if not ok:
    assert outcome == 'exit 2' and f'--config.{name}=' in err, (name, text, outcome, err)
  elif outcome == 'exit 2':  # Only a conflict with another key may stop a value the key accepts.
    assert config.SPECS[name].describe() not in err, (name, text, err)
  else:  # loop.run(cfg, workdir) got the value.
    section, _, leaf = name.rpartition('.')
    cfg = run.started_with[0]
    got = (cfg[section] if section else cfg)[leaf]
    assert got == config.SPECS[name].parse(text), (name, text, got)
  assert not os.path.exists(f'{tmp_path}/run')


@PROFILE
@given(data=st.data())
def test_many_keys_at_once(data, no_work, capsys, tmp_path):
  names = data.draw(st.lists(st.sampled_from(sorted(config.SPECS)), min_size=2, max_size=8,
                             unique=True), label='keys')
  drawn = {n: data.draw(value_for(config.SPECS[n]), label=n) for n in names}
  argv = ['train', TINY, f'--workdir={tmp_path}/run',
          *(f'--config.{n}={text}' for n, (text, _) in drawn.items())]
  outcome, err = run(argv, capsys)
  if not all(ok for _, ok in drawn.values()):
    assert outcome == 'exit 2', (drawn, outcome)


def test_every_key_has_a_spec_and_a_valid_default():
  cfg = config.default_config()
  assert sorted(config.SPECS) == sorted(k for k, _ in config._flatten(cfg))
  config.check_values(cfg)
  for spec in ('tiny.py', 'tiny.py:opt350m', 'gpt2.py:gpt2-xl,paper', 'opt.py:opt-175b,paper'):
    config.check_values(config.load(os.path.join(ROOT, 'configs', spec)))


# Each verb's required arguments, valid; one flag at a time is then replaced by a drawn value.
def _base(tmp_path) -> dict[str, list[str]]:
  return {
      'train': [TINY, f'--workdir={tmp_path}/run'],
      'info': [TINY, '--json'],
      'plan': [TINY, '--hardware=h100', '--chips=8', '--tokens=1e9'],
      'compile': [TINY, '--topology=v4-8'],
      'export': [f'--workdir={tmp_path}/run', f'--out={tmp_path}/hf'],
      'prepare': [f'--input={DATA}/tinyshakespeare.txt', f'--output={tmp_path}/data',
                  '--tokenizer=byte'],
      'report': [str(tmp_path)],
      'eval': [f'--workdir={tmp_path}/run', '--task=lambada', f'--data={DATA}/lambada_test.jsonl'],
      'generate': [f'--workdir={tmp_path}/run', '--prompt=Hello'],
      'sweep': [f'{ROOT}/configs/sweeps/tiny_lr.py', f'--workdir={tmp_path}/sweep', '--dry-run'],
      'sweep-report': [str(tmp_path)],
  }


# Flags whose text is parsed by the verb itself (no Key): valid examples beside random text.
FREE = {
    '--config': [TINY, f'{TINY[9:]}:opt', f'{ROOT}/configs/gpt2.py:gpt3', 'nope.py', ''],
    '--hardware': ['h100', 'tpu-v4', 'tpu-v9', ''],
    '--tokens': ['300B', '1e9', '0', '-5', 'lots', '1e400'],
    '--tokens-per-sec': ['1e6', '0', 'nan'],
    '--topology': ['v4-8', 'v5e-16', 'v4:2x2x1', 'v9-8', 'v4-7', ''],
    '--coordinator': ['127.0.0.1:1234', 'host', ':1', ''],
    '--separator': [r'\n\n', r'\x', r'\u12', '---'],
    '--language_filter': ['', 'nope:fn', 'os:getcwd', ':'],
    '--bpe_dir': ['', '/nope'],
    '--text_field': ['text', ''],
}


def _flags():
  """(verb, flag, strategy of (text, known-ok or None)) for every flag of every verb."""
  verbs = next(a for a in cli._parser()._actions if a.dest == 'verb').choices
  for verb, parser in verbs.items():
    for action in parser._actions:
      name = action.option_strings[-1] if action.option_strings else action.dest
      if name in ('-h', '--help'):
        continue
      if action.nargs == 0:
        yield verb, name, st.just((None, True))
      elif hasattr(action.type, 'key'):
        yield verb, name, value_for(action.type.key)
      elif action.choices:
        choices = list(action.choices)
        yield verb, name, (st.sampled_from(choices).map(lambda t: (t, True)) |
                           JUNK.filter(lambda t, c=choices: t not in c).map(lambda t: (t, False)))
      else:
        examples = st.sampled_from(FREE[name]) if name in FREE else st.nothing()
        yield verb, name, (examples | ARGV_TEXT).map(lambda t: (t, None))


FLAGS = list(_flags())


def _argv(verb, flag, text, base):
  """The verb's base arguments with ``flag`` set to ``text`` (None: a switch, given)."""
  if not flag.startswith('-'):  # A positional argument: the drawn text replaces the base's.
    return [verb, *(a for a in base if a.startswith('-')), text]
  rest = [a for a in base if not a.startswith(flag + '=')]
  return [verb, *rest, flag if text is None else f'{flag}={text}']


def test_every_verb_and_flag_is_drawn(tmp_path):
  verbs = {v for v, _, _ in FLAGS}
  assert verbs == set(_base(tmp_path)), 'give each new verb its valid base arguments in _base'
  assert {(v, f) for v, f, _ in FLAGS} >= {('train', '--num_processes'), ('prepare', '--ngram'),
                                            ('plan', '--mfu'), ('export', '--out'),
                                            ('report', 'workdir'), ('compile', '--topology')}
  assert len(FLAGS) > 30


@settings(PROFILE, max_examples=150)  # Each example loads a tokenizer or builds a plan.
@given(data=st.data())
def test_any_flag_value_starts_or_exits_2(data, no_work, capsys, tmp_path):
  verb, flag, strategy = data.draw(st.sampled_from([f for f in FLAGS if f[0] in
                                                   _base(tmp_path)]), label='flag')
  text, ok = data.draw(strategy, label='value')
  if verb in ('report', 'sweep-report') and ok:
    text = str(tmp_path)  # A drawn path would point report at arbitrary directories.
  outcome, err = run(_argv(verb, flag, text, _base(tmp_path)[verb]), capsys)
  if ok is False:
    assert outcome == 'exit 2' and flag in err, (verb, flag, text, err)
  assert not os.path.exists(f'{tmp_path}/data') and not os.path.exists(f'{tmp_path}/hf')


# Real processes, one per family of mistakes: the installed entry point prints one line.
@pytest.mark.parametrize('args, expected', [
    (['--config.optim.lr=-1'], '--config.optim.lr=-1.0: must be a number in (0, inf)'),
    (['--config.seed=-1'], '--config.seed=-1: must be an integer in [0, 2**32)'),
    (['--config.model.dropout=1.5'], '--config.model.dropout=1.5: must be a number in [0, 1)'),
    (['--config.optim.b2=nan'], '--config.optim.b2=nan: must be a number in [0, 1)'),
    (['--config.train.eval_every=1e3'], '--config.train.eval_every=1e3: expected an integer'),
    (['--config.model.dtype=float16'], "--config.model.dtype='float16': choose one of float32"),
    (['--config.init_from=gpt2'], "--config.init_from='gpt2': expected hf:PATH"),
    (['--config.optim.lr=\n'], r"--config.optim.lr='\n': expected a number"),
    (['--num_processes=-3'], 'trainer train: --num_processes=-3: must be an integer in [0, 2**31)'),
])
def test_real_process_one_line_exit_2(args, expected, tmp_path):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-m', 'trainer', 'train', TINY,
                        f'--workdir={tmp_path}/run', *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 2, out.stderr
  assert expected in out.stderr and out.stderr.count('\n') == 1, out.stderr
  assert 'Traceback' not in out.stderr and not (tmp_path / 'run').exists()


@pytest.mark.slow
def test_values_at_the_edges_really_train(tmp_path, capsys):
  """Valid extremes start and finish a real run: the ranges are not wider than the code."""
  edges = {'seed': 2**32 - 1, 'model.dropout': 0.99, 'model.attn_dropout': 0.5,
           'model.embed_dropout': 0.5, 'model.ln_eps': 1e-12, 'model.init_std': 1e-6,
           'optim.b1': 0.0, 'optim.b2': 0.0, 'optim.eps': 1e-30, 'optim.min_lr_ratio': 1.0,
           'optim.warmup_steps': 10**6, 'optim.clip_norm': 0.0, 'optim.weight_decay': 0.0,
           'train.steps': 2, 'train.eval_every': INT_LIMIT - 1, 'train.eval_batches': 1,
           'train.sample_tokens': 1, 'data.val_every_nth_file': 2, 'data.max_bytes': 50_000,
           'checkpoint.keep_every': INT_LIMIT - 1, 'log.tensorboard': False}
  argv = ['train', TINY, f'--workdir={tmp_path}/run', *(f'--config.{k}={v}' for k, v in
                                                         edges.items())]
  assert cli.main(argv) == 0, capsys.readouterr().err
  lines = (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()
  assert len(lines) == 2 and all('NaN' not in line for line in lines)
