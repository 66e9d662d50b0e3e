"""Loading: packing, per-process shares, exact resume, prepared and TFDS sources, bad paths."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from trainer import data, prepare
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
  docs = [np.full(n, 10 + i, np.int32) for i, n in enumerate([3, 1, 9, 4, 15, 2])]
  ds = data.shard_documents(docs, None, 0, 1).map(lambda d: np.append(d, np.int32(EOT)))
  batches = list(zip(range(6), data.PackedStream(ds, row_len=7, batch=2).to_iter_dataset()))
  rows = np.concatenate([b for _, b in batches])
  assert rows.shape == (12, 7) and rows.dtype == np.int32
  stream = np.concatenate([np.append(d, EOT) for d in docs] * 3)  # 40 tokens an epoch.
  np.testing.assert_array_equal(rows.reshape(-1), stream[:84])
  assert rows[0].tolist() == [10, 10, 10, EOT, 11, EOT, 12]  # Rows cross document ends.


def test_process_shares_are_disjoint_and_cover_every_document():
  source = list(range(20))
  shares = [data.shard_documents(source, 7, i, 2) for i in range(2)]
  for epoch in range(2):
    seen = [[s[epoch * 10 + k] for k in range(10)] for s in shares]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == source
  assert [shares[0][k] for k in range(10)] != [shares[0][10 + k] for k in range(10)]  # Reshuffled.
  with pytest.raises(ConfigError, match='fewer than the 30 processes'):
    data.shard_documents(source, 7, 0, 30)


def test_two_processes_read_disjoint_documents(byte_dir):
  cfg = config(byte_dir)
  streams = [data.load(cfg, process_index=i, process_count=2) for i in range(2)]
  iters = [iter(s.train.to_iter_dataset()) for s in streams]
  first = [next(it) for it in iters]
  assert first[0].shape == first[1].shape == (4, 65)  # Half the global batch of 8 each.
  docs = [set().union(*(doc_ids(next(it)) for _ in range(3))) for it in iters]
  assert docs[0] and docs[1] and not docs[0] & docs[1]
  single = next(iter(data.load(cfg, process_index=0, process_count=1).train.to_iter_dataset()))
  assert single.shape == (8, 65)


def test_iterator_resumes_with_exactly_the_next_batch(byte_dir):
  cfg = config(byte_dir)
  it = iter(data.load(cfg).train.to_iter_dataset())
  for _ in range(40):  # Past the end of the first epoch (about 25 batches).
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # What a checkpoint stores.
  expected = [next(it) for _ in range(5)]
  resumed = iter(data.load(cfg).train.to_iter_dataset())
  resumed.set_state(state)
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


def test_two_real_processes_read_disjoint_shares(byte_dir):
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
  docs = [set().union(*(doc_ids(np.array(b)) for b in r['rows'])) for r in results]
  assert docs[0] and docs[1] and not docs[0] & docs[1]
  # The same shares as the emulated processes of test_two_processes_read_disjoint_documents.
  emulated = data.load(config(byte_dir), process_index=1, process_count=2)
  np.testing.assert_array_equal(next(iter(emulated.train.to_iter_dataset())), results[1]['rows'][0])
