"""Loading: packing, one global row order for any process count and batch, prepared and TFDS sources, bad paths."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from trainer import data, prepare, rows
from trainer.config import ConfigError

from conftest import DATA, ROOT, tiny_config

EOT = 256


def doc_text(i: int) -> str:
  return f'doc{i:03d} ' * (5 + (i * 7) % 40)  # 35 to 315 bytes.


@pytest.fixture(scope='module')
def byte_dir(tmp_path_factory):
  """A prepared byte-level dataset of 60 documents whose text names them."""
  root = tmp_path_factory.mktemp('byte')
  (root / 'in.txt').write_text('\n\n'.join(doc_text(i) for i in range(60)))
  stats = prepare.prepare(prepare.Options(
      inputs=[str(root / 'in.txt')], output=str(root / 'data'), tokenizer='byte',
      separator='\n\n', min_length=0, val_fraction=0.2), say=lambda *a: None)
  assert stats['documents_out'] == 60
  return str(root / 'data')


def doc_ids(batch) -> set:
  """Which documents a batch's rows came from."""
  return {int(m) for row in batch for m in re.findall(rb'doc(\d{3})', bytes(
      int(t) for t in row if t < 256))}


def config(path, **overrides):
  return tiny_config(**{'data.path': path, 'train.batch_size': 8, **overrides})


def test_packing_is_the_documents_joined_by_end_of_text():
  docs = [np.append(np.full(n, 10 + i, np.int32), EOT) for i, n in enumerate([3, 1, 9, 4, 15, 2])]
  lengths = [len(d) for d in docs]
  packed = rows.Packed(docs, lengths, row_len=7, seed=None)
  stream = np.concatenate(docs * 3)  # 40 tokens an epoch.
  got = np.concatenate([packed[i] for i in range(12)])
  assert got.dtype == np.int32
  np.testing.assert_array_equal(got, stream[:84])
  assert packed[0].tolist() == [10, 10, 10, EOT, 11, EOT, 12]  # Rows cross document ends.
  shuffled = rows.Packed(docs, lengths, row_len=7, seed=3, row_block=40)
  epochs = [np.concatenate([shuffled[i] for i in range(k * 40, (k + 1) * 40)]) for k in range(2)]
  assert not np.array_equal(epochs[0], stream[:280]) and not np.array_equal(epochs[0], epochs[1])
  for epoch in epochs:  # Each epoch (40 rows x 7 = 7 epochs of 40 tokens) holds every document.
    assert sorted(epoch.tolist()) == sorted(np.concatenate(docs * 7).tolist())


def test_rows_of_one_long_document_are_shuffled_within_blocks():
  """A single long text does not reach the batches in reading order; each row comes once."""
  text = np.append(np.arange(50_000, dtype=np.int32), EOT)
  ordered = rows.Packed([text], [len(text)], row_len=5, seed=None)
  shuffled = rows.Packed([text], [len(text)], row_len=5, seed=7, row_block=1000)
  assert ordered[1].tolist() == [5, 6, 7, 8, 9]  # Without a seed: the stored order.
  starts = [int(shuffled[i][0]) for i in range(2000)]
  assert starts[:8] != sorted(starts[:8])  # Neighbouring rows are not neighbouring text.
  for block in (starts[:1000], starts[1000:]):  # Each block holds its own rows, each once.
    first = block == starts[:1000]
    assert sorted(block) == list(range(0 if first else 5000, 5000 if first else 10_000, 5))
  again = rows.Packed([text], [len(text)], row_len=5, seed=7, row_block=1000)
  assert [int(again[i][0]) for i in range(2000)] == starts  # Seeded: the same on every process.


def test_process_shares_are_parts_of_one_global_batch():
  windows = rows.Windows(np.arange(1000, dtype=np.int32), 4, seed=1)
  whole = rows.Stream(windows, 8).batches(start=16)
  for count in (2, 4):
    shares = [rows.Stream(windows, 8, i, count).batches(start=16) for i in range(count)]
    for k in range(3):
      np.testing.assert_array_equal(np.concatenate([s[k] for s in shares]), whole[k])
  assert whole[0].shape == (8, 5) and not np.array_equal(whole[0], whole[1])
  # Windows: each epoch (249 windows) is a new permutation of all of them.
  firsts = [[int(windows[e * 249 + j][0]) // 4 for j in range(249)] for e in range(2)]
  assert sorted(firsts[0]) == sorted(firsts[1]) == list(range(249)) and firsts[0] != firsts[1]
  with pytest.raises(ValueError, match='not divisible by 3 processes'):
    rows.Stream(windows, 8, 0, 3).batches()


def global_tokens(train, schedule) -> np.ndarray:
  """Rows a run reads when it changes processes and batch size: [(processes, batch, steps)]."""
  out, start = [], 0
  for count, batch, steps in schedule:
    shares = [rows.Stream(train.rows, batch, i, count).batches(start) for i in range(count)]
    out += [np.concatenate([s[k] for s in shares]) for k in range(steps)]
    start += batch * steps
  return np.concatenate(out)


ELASTIC = [(1, 8, 3), (2, 8, 2), (4, 16, 2), (2, 16, 1)]  # 1 -> 2 -> 4 processes, 8 -> 16 rows.


def assert_elastic_resume_is_the_same_stream(train):
  straight = global_tokens(train, [(1, 8, 11)])
  elastic = global_tokens(train, ELASTIC)
  assert straight.shape == elastic.shape == (88, train.row_len)
  assert not np.array_equal(straight[:8], straight[8:16])
  per_process = global_tokens(train, [(1, 4, 2)])  # Not the same as a batch of 8.
  assert not np.array_equal(np.concatenate([per_process[:2], per_process[4:6]]), straight[:4])
  np.testing.assert_array_equal(elastic, straight)


def test_elastic_stream_of_a_prepared_dataset(byte_dir):
  streams = data.load(config(byte_dir))
  assert isinstance(streams.train.rows, rows.Packed) and streams.train.row_len == 65
  lengths = np.load(os.path.join(byte_dir, 'lengths_train.npy'))
  source = data.open_prepared(byte_dir)[1]['train']
  assert lengths.tolist() == [len(source[i]['tokens']) for i in range(len(source))]
  assert_elastic_resume_is_the_same_stream(streams.train)


def test_elastic_stream_of_the_embedded_corpus():
  streams = data.load(tiny_config(**{'train.batch_size': 8, 'data.max_bytes': 100_000}))
  assert isinstance(streams.train.rows, rows.Windows)
  assert_elastic_resume_is_the_same_stream(streams.train)


def test_two_processes_read_disjoint_rows(byte_dir):
  cfg = config(byte_dir)
  streams = [data.load(cfg, process_index=i, process_count=2) for i in range(2)]
  first = [s.train.batches()[0] for s in streams]
  assert first[0].shape == first[1].shape == (4, 65)  # Half the global batch of 8 each.
  single = data.load(cfg, process_index=0, process_count=1).train.batches()[0]
  assert single.shape == (8, 65) and not np.array_equal(first[0], first[1])
  np.testing.assert_array_equal(np.concatenate(first), single)
  with pytest.raises(ConfigError, match='batch_size=8 is not divisible by the 3 processes'):
    data.load(cfg, process_index=0, process_count=3)


def test_iterator_resumes_with_exactly_the_next_batch(byte_dir):
  cfg = config(byte_dir)
  it = iter(data.load(cfg).train.to_iter_dataset())
  for _ in range(40):  # Past the end of the first epoch (about 25 batches).
    next(it)
  expected = [next(it) for _ in range(5)]
  resumed = iter(data.load(cfg).train.to_iter_dataset(start=40 * 8))  # Rows consumed.
  for want in expected:
    np.testing.assert_array_equal(next(resumed), want)
  fresh = next(iter(data.load(cfg).train.to_iter_dataset()))
  assert not np.array_equal(fresh, expected[0])


def test_validation_is_fixed_and_held_out(byte_dir):
  cfg = config(byte_dir, **{'train.eval_batches': 3})
  a, b = data.load(cfg), data.load(cfg)
  assert len(a.val) == 3 and a.val[0].shape == (8, 65)
  for x, y in zip(a.val, b.val):
    np.testing.assert_array_equal(x, y)
  val_docs = set().union(*(doc_ids(v) for v in a.val))
  it = iter(a.train.to_iter_dataset())
  train_docs = set().union(*(doc_ids(next(it)) for _ in range(30)))
  assert val_docs and len(train_docs) > 30 and not val_docs & train_docs
  assert a.tokenizer.name == 'byte'


def test_bad_data_dir_tokenizer_and_vocabulary(byte_dir, tmp_path):
  with pytest.raises(ConfigError, match='is not a prepared dataset'):
    data.load(config(str(tmp_path)))
  with pytest.raises(ConfigError, match='tokenized with byte'):
    data.load(config(byte_dir, **{'data.tokenizer': 'gpt2', 'model.vocab_size': 50257}))
  with pytest.raises(ConfigError, match='vocab_size=200 is smaller than the byte'):
    data.load(config(byte_dir, **{'model.vocab_size': 200}))
  with pytest.raises(ConfigError, match='write tfds:NAME'):
    data.load(config('', **{'data.source': 'hf:wikitext'}))
  assert data.load(config(byte_dir, **{'data.tokenizer': 'byte'})).tokenizer.name == 'byte'


def build_text_tfds(data_dir, texts):
  """A local TFDS text dataset, like lm1b's layout (a 'text' feature), built without TF."""
  import tensorflow_datasets as tfds

  class LocalText(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {'text': tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples(texts[1:]), 'test': self._generate_examples(texts[:1])}

    def _generate_examples(self, rows):
      return ((i, {'text': t}) for i, t in enumerate(rows))

  LocalText(data_dir=str(data_dir), file_format='array_record').download_and_prepare()


def test_tfds_text_source(tmp_path):
  texts = [f'text number {i} ' * 10 for i in range(12)]
  build_text_tfds(tmp_path, texts)
  cfg = config(str(tmp_path), **{'data.source': 'tfds:local_text', 'data.tokenizer': 'byte'})
  streams = data.load(cfg)
  batch = next(iter(streams.train.to_iter_dataset()))
  joined = bytes(int(t) for row in batch for t in row if t != EOT).decode()
  assert 'text number' in joined and 'number 0 ' not in joined  # 0 is the held-out test split.
  assert (batch == EOT).sum() >= 2
  assert bytes(int(t) for t in streams.val[0][0] if t != EOT).decode().startswith('text number 0 ')
  assert_elastic_resume_is_the_same_stream(streams.train)
  with pytest.raises(ConfigError, match='tfds:no_such_dataset_xyz'):
    data.load(config(str(tmp_path), **{'data.source': 'tfds:no_such_dataset_xyz'}))


ENV = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}


def trainer(*args):
  return subprocess.run([sys.executable, '-m', 'trainer', *map(str, args)], cwd=ROOT, env=ENV,
                        capture_output=True, text=True, timeout=600)


def test_train_on_a_directory_that_is_not_a_dataset(tmp_path):
  out = trainer('train', '--config=configs/tiny.py', f'--config.data.path={tmp_path}',
                f'--workdir={tmp_path / "run"}')
  assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
  assert 'is not a prepared dataset' in out.stderr and 'trainer prepare' in out.stderr


@pytest.mark.slow
def test_prepare_then_train_end_to_end(tmp_path):
  out = trainer('prepare', '--input', os.path.join(DATA, 'tinyshakespeare.txt'),
                '--output', tmp_path / 'shakespeare', '--separator', r'\n\n', '--min_length', '8')
  assert out.returncode == 0, out.stderr
  assert 'removed exact duplicates' in out.stdout
  stats = json.loads((tmp_path / 'shakespeare' / 'stats.json').read_text())
  assert stats['tokenizer'] == 'gpt2' and stats['documents_out'] == 445
  small_vocab = trainer('train', '--config=configs/tiny.py',
                        f'--config.data.path={tmp_path / "shakespeare"}', f'--workdir={tmp_path}')
  assert small_vocab.returncode == 2 and 'set --config.model.vocab_size=50257' in small_vocab.stderr
  run = trainer('train', '--config=configs/tiny.py', f'--config.data.path={tmp_path / "shakespeare"}',
                '--config.model.vocab_size=50257', '--config.train.steps=12',
                '--config.train.eval_every=6', f'--workdir={tmp_path / "run"}')
  assert run.returncode == 0, run.stderr
  lines = [json.loads(l) for l in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  assert [l['step'] for l in lines] == list(range(1, 13))
  assert 'eval_loss' in lines[5] and 'eval_loss' in lines[11]
  assert lines[0]['loss'] == pytest.approx(np.log(50257), rel=0.05)  # Uniform over GPT-2's ids.
  assert lines[-1]['loss'] < lines[0]['loss'] - 1.0


TWO_PROCESS_SCRIPT = '''
import json, sys
import jax
import numpy as np
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from trainer import config, data
cfg = config.load('configs/tiny.py', {'data.path': sys.argv[3], 'train.batch_size': '8'})
it = iter(data.load(cfg).train.to_iter_dataset())
batches = [next(it) for _ in range(3)]
mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
full = data.to_global(batches[0], sharding)
print(json.dumps({'index': jax.process_index(), 'local': list(batches[0].shape),
                  'global': list(full.shape), 'rows': [b.tolist() for b in batches]}))
'''


def test_two_real_processes_read_their_parts_of_the_global_batches(byte_dir):
  import socket
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    address = f'127.0.0.1:{s.getsockname()[1]}'
  env = {**ENV, 'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
  procs = [subprocess.Popen([sys.executable, '-c', TWO_PROCESS_SCRIPT, address, str(i), byte_dir],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for i in range(2)]
  results = []
  for p in procs:
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
    results.append(json.loads(out.splitlines()[-1]))
  assert [r['index'] for r in results] == [0, 1]
  assert all(r['local'] == [4, 65] and r['global'] == [8, 65] for r in results)
  # Together the two real processes read the global batches of one process.
  single = data.load(config(byte_dir), process_index=0, process_count=1).train.batches()
  assert not np.array_equal(results[0]['rows'][0], results[1]['rows'][0])
  for k in range(3):
    np.testing.assert_array_equal(
        np.concatenate([results[0]['rows'][k], results[1]['rows'][k]]), single[k])
