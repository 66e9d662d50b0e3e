"""Mixtures (data.mixture): grain's mix proportions, one global order on any process count,
exact resume, per-source tokens and evaluation losses, and refused input."""
import json
import os
import signal

import numpy as np
import pytest

from trainer import cli, data, mixture, prepare, rows
from trainer.config import ConfigError

from conftest import DATA, tiny_config


def _prepare(root, name, text_file, separator, tokenizer='byte'):
  out = str(root / name)
  prepare.prepare(prepare.Options(
      inputs=[os.path.join(DATA, text_file)], output=out, tokenizer=tokenizer,
      separator=separator, min_length=0, val_fraction=0.1), say=lambda *a: None)
  return out


@pytest.fixture(scope='module')
def sources(tmp_path_factory):
  """Two byte-level prepared datasets of different text: Shakespeare and WikiText lines."""
  root = tmp_path_factory.mktemp('sources')
  return (_prepare(root, 'shakespeare', 'tinyshakespeare.txt', '\n\n'),
          _prepare(root, 'wiki', 'wiki.test.raw', '\r\n'))


def mix_value(*pairs) -> str:
  return json.dumps([list(p) for p in pairs])


def config(pairs, **overrides):
  return tiny_config(**{'data.mixture': mix_value(*pairs), **overrides})


class Tagged:
  """A row order whose row j of source k is [k, j]: shows where each mixed row came from."""
  row_len = 2

  def __init__(self, k):
    self.k = k

  def __len__(self):
    return rows.ENDLESS

  def __getitem__(self, j):
    return np.array([self.k, j])


@pytest.mark.parametrize('weights', [(0.7, 0.3), (5, 3, 2), (0.001, 1.0)])
def test_proportions_within_1_percent_over_10k_sequences(weights):
  parts = mixture.parts([(f's{k}', w) for k, w in enumerate(weights)])
  mix = mixture.Mixture(parts, [Tagged(k) for k in range(len(weights))])
  got = np.stack([mix[i] for i in range(10_000)])
  want = np.array(weights) / sum(weights)
  share = np.bincount(got[:, 0], minlength=len(weights)) / 10_000
  assert np.abs(share - want).max() < 0.01 * want.max(), (share, want)
  assert np.abs(share - want).max() <= 1 / 10_000 + 0.01 * want.min()  # Grain's rounding only.
  for k in range(len(weights)):  # Each source's rows in order, none skipped or repeated.
    assert got[got[:, 0] == k, 1].tolist() == list(range(int((got[:, 0] == k).sum())))
  # counts() is grain's selection in closed form: right for every prefix.
  seen = np.zeros(len(weights), int)
  for n in range(10_000):
    assert mixture.counts(mix.props, n) == seen.tolist()
    seen[got[n, 0]] += 1
  # Endless: rows far past any epoch are still defined and in proportion.
  far = [int(mix[10**15 + i][0]) for i in range(1000)]
  assert abs(far.count(0) / 1000 - want[0]) < 0.01


def test_names_are_basenames_made_unique_and_weights_normalised():
  parts = mixture.parts([('gs://b/web/', 7), ('/d/web', 2), ('tfds:lm1b', 1), ('/x/web', 0)])
  assert [p.name for p in parts] == ['web', 'web_2', 'lm1b', 'web_3']
  assert [p.weight for p in parts] == [0.7, 0.2, 0.1, 0.0]
  assert mixture.proportions([0.7, 0.3]) == (233, 100)


def test_one_global_order_on_1_and_2_processes_and_from_any_row(sources):
  shakespeare, wiki = sources
  cfg = config([(shakespeare, 0.7), (wiki, 0.3)])
  single = data.load(cfg, process_index=0, process_count=1)
  assert isinstance(single.train.rows, mixture.Mixture) and single.train.row_len == 65
  whole = single.train.batches()
  halves = [data.load(cfg, process_index=i, process_count=2).train.batches() for i in range(2)]
  assert halves[0][0].shape == (4, 65) and not np.array_equal(halves[0][0], halves[1][0])
  for k in range(6):
    np.testing.assert_array_equal(np.concatenate([halves[0][k], halves[1][k]]), whole[k])
  # A resume at row 24 (3 batches) reads exactly the rows an uninterrupted run reads next.
  resumed = single.train.batches(start=24)
  assert not np.array_equal(resumed[0], whole[0])
  for k in range(3):
    np.testing.assert_array_equal(resumed[k], whole[3 + k])
  # Each source keeps its own seeded order: the mixture is neither source alone.
  alone = data.load(tiny_config(**{'data.path': shakespeare})).train.batches()[0]
  assert not np.array_equal(alone, whole[0])
  # Equal configs give equal streams; another seed another one.
  np.testing.assert_array_equal(data.load(cfg).train.batches()[5], whole[5])
  other = data.load(config([(shakespeare, 0.7), (wiki, 0.3)], seed=1)).train.batches()[0]
  assert not np.array_equal(other, whole[0])


def test_per_source_tokens_and_validation(sources):
  shakespeare, wiki = sources
  streams = data.load(config([(shakespeare, 0.7), (wiki, 0.3), (wiki, 0.0)]))
  tokens = streams.source_tokens(10_000)
  # grain's integer proportions 233:100 give 6,997 of 10,000 rows, not 7,000.
  assert tokens == {'tokens/shakespeare': 6_997 * 64, 'tokens/wiki': 3_003 * 64,
                    'tokens/wiki_2': 0}
  assert sum(streams.source_tokens(8 * 37).values()) == 8 * 37 * 64
  assert list(streams.val_sources) == ['shakespeare', 'wiki', 'wiki_2']
  a, b = streams.val_sources['shakespeare'][0], streams.val_sources['wiki'][0]
  assert a.shape == b.shape == (8, 65) and not np.array_equal(a, b)
  np.testing.assert_array_equal(b, streams.val_sources['wiki_2'][0])  # Unshuffled either way.
  assert data.load(tiny_config(**{'data.path': shakespeare})).source_tokens(100) == {}


def test_a_tfds_source_beside_a_prepared_one(sources, tmp_path):
  """tfds:NAME in a mixture reads from data.path as its data_dir, like data.source does."""
  from test_data import build_text_tfds
  build_text_tfds(tmp_path, [f'text number {i} ' * 10 for i in range(12)])
  shakespeare, _ = sources
  cfg = config([(shakespeare, 1), ('tfds:local_text', 1)],
               **{'data.path': str(tmp_path), 'data.tokenizer': 'byte'})
  streams = data.load(cfg)
  assert streams.weights == {'shakespeare': 0.5, 'local_text': 0.5}
  batch = streams.train.batches()[0]
  text = [bytes(int(t) for t in row if t < 256).decode() for row in batch]
  assert sum('text number' in t for t in text) == 4  # 100:100, alternating.
  val = bytes(int(t) for t in streams.val_sources['local_text'][0][0] if t < 256).decode()
  assert val.startswith('text number 0 ')  # Its own held-out (test) split.
  with pytest.raises(ConfigError, match='tokenized with gpt2 but'):  # TFDS default: gpt2.
    data.load(config([(shakespeare, 1), ('tfds:local_text', 1)],
                     **{'data.path': str(tmp_path), 'model.vocab_size': 50257}))


def records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow  # Three real runs: one here, one killed with SIGKILL, its resumption.
def test_kill_9_and_resume_gives_the_uninterrupted_stream(sources, tmp_path):
  """`trainer train` on a mixture, killed with SIGKILL after a checkpoint and run again, logs
  the uninterrupted run's losses, per-source token counts and evaluation losses bit for bit."""
  from test_checkpoint import finish, last_logged_step, start_until, train_cmd
  shakespeare, wiki = sources
  flags = {'data.mixture': mix_value((shakespeare, 0.7), (wiki, 0.3)), 'train.steps': 12,
           'train.eval_every': 4, 'checkpoint.every': 4, 'log.tensorboard': False}
  # The uninterrupted run goes through the command as well: a `trainer` process sets
  # trainer/cpuflags.py's XLA:CPU flag, which moves evaluation losses in their last bits.
  straight = tmp_path / 'straight'
  finish(train_cmd(straight, *[f'--config.{k}={v}' for k, v in flags.items()]))
  want = records(straight)
  assert [r['step'] for r in want] == list(range(1, 13))
  assert len({r['loss'] for r in want}) == 12
  for r in want:  # Per-source tokens add up to the total, and follow grain's counts.
    assert r['tokens/shakespeare'] + r['tokens/wiki'] == r['tokens'] == r['step'] * 8 * 64
    n = mixture.counts(mixture.proportions([0.7, 0.3]), r['step'] * 8)
    assert [r['tokens/shakespeare'], r['tokens/wiki']] == [n[0] * 64, n[1] * 64]
  evals = [r for r in want if 'eval_loss' in r]
  assert [r['step'] for r in evals] == [4, 8, 12]
  for r in evals:
    per = r['eval_loss/shakespeare'], r['eval_loss/wiki']
    assert abs(per[0] - per[1]) > 0.01
    assert r['eval_loss'] == pytest.approx(0.7 * per[0] + 0.3 * per[1])

  killed = tmp_path / 'killed'
  cmd = train_cmd(killed, *[f'--config.{k}={v}' for k, v in flags.items()])
  ready = lambda: (killed / 'checkpoints/4/commit_success.txt').exists() and (
      last_logged_step(killed) >= 5)
  proc = start_until(cmd, ready, signal.SIGKILL)
  assert proc.returncode == -signal.SIGKILL
  assert last_logged_step(killed) < 12, 'the run finished before the kill'
  out = finish(cmd)
  assert 'resuming from step ' in out.stdout
  got = records(killed)
  keys = ('step', 'loss', 'grad_norm', 'tokens', 'tokens/shakespeare', 'tokens/wiki',
          'eval_loss', 'eval_loss/shakespeare', 'eval_loss/wiki')
  strip = lambda rs: [{k: r[k] for k in keys if k in r} for r in rs]
  assert strip(got) == strip(want)


BAD = [
    ('[["A", -0.5], ["B", 1]]', 'WEIGHT >= 0'),
    ('[["A", 0], ["B", 0.0]]', 'the weights sum to 0'),
    ('[["A", 1], "B"]', 'a list of [SOURCE, WEIGHT] pairs'),
    ('[["A", "heavy"]]', 'a list of [SOURCE, WEIGHT] pairs'),
    ('A:0.7,B:0.3', 'a list of [SOURCE, WEIGHT] pairs'),
    ('[["", 1]]', 'a list of [SOURCE, WEIGHT] pairs'),
]


@pytest.fixture(scope='module')
def gpt2_source(tmp_path_factory):
  return _prepare(tmp_path_factory.mktemp('gpt2'), 'gpt2wiki', 'wiki.test.raw', '\r\n', 'gpt2')


def test_bad_mixtures_stop_with_one_line_and_write_nothing(sources, gpt2_source, tmp_path,
                                                           capsys):
  shakespeare, wiki = sources
  cases = BAD + [
      (mix_value((shakespeare, 1), (str(tmp_path / 'missing'), 1)),
       f"source '{tmp_path / 'missing'}' is not a prepared dataset"),
      (mix_value((shakespeare, 1), (gpt2_source, 1)),
       f'{gpt2_source} is tokenized with gpt2 but {shakespeare} with byte'),
      (mix_value((gpt2_source, 1),), 'vocab_size=257 is smaller than the gpt2'),
  ]
  for value, message in cases:
    workdir = tmp_path / 'run'
    code = cli.main(['train', '--config=configs/tiny.py', f'--workdir={workdir}',
                     f'--config.data.mixture={value}'])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith('error: ') and err.count('\n') == 1, (value, err)
    assert message in err, (value, err)
    assert not workdir.exists()
  for flag, message in ((f'--config.data.path={wiki}', 'data.path'),
                        ('--config.data.source=tfds:lm1b', 'data.source')):
    code = cli.main(['train', '--config=configs/tiny.py', f'--workdir={tmp_path / "run"}',
                     f'--config.data.mixture={mix_value((shakespeare, 1))}', flag])
    err = capsys.readouterr().err
    assert code == 2 and err.count('\n') == 1 and f'--config.{message}=' in err
    assert 'and --config.data.mixture are both set' in err
  assert not (tmp_path / 'run').exists()


def test_config_file_form(tmp_path, sources):
  """A config file may write the mixture as a list of tuples; it survives a JSON round trip."""
  from trainer import config
  shakespeare, wiki = sources
  path = tmp_path / 'mix.py'
  path.write_text('from trainer.config import default_config\n'
                  'def get_config():\n  c = default_config()\n'
                  f'  c.data.mixture = [({shakespeare!r}, 7), ({wiki!r}, 3)]\n  return c\n')
  cfg = config.load(str(path))
  assert cfg.data.mixture == ((shakespeare, 7), (wiki, 3))
  config.check_values(cfg)
  back = config.from_dict(json.loads(json.dumps(cfg.to_dict())), 'test')
  assert back.data.mixture == cfg.data.mixture
  streams = data.load(back)
  assert streams.weights == {'shakespeare': 0.7, 'wiki': 0.3}
  with pytest.raises(ConfigError, match='expected a list of'):
    config.set_value(cfg, 'data.mixture', '[["A", nan]]')
