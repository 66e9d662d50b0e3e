"""trainer prepare at scale: workers, determinism, kill -9 and resume, --language, --val_input."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from trainer import dedup, language, prepare, stages

from conftest import ROOT
from test_prepare import one_line_error, read_split, run, words

QUIET = dict(say=lambda *a: None)


def record_bytes(out) -> dict:
  """Every array_record file of a prepared dataset, by name."""
  return {p.name: p.read_bytes() for p in out.rglob('*') if 'array_record' in p.name}


def near_copy(text: str, tag: str) -> str:
  """The same words with the last tenth replaced: Jaccard of 5-grams ~0.8."""
  w = text.split()
  return ' '.join(w[:len(w) * 9 // 10] + words(tag, len(w) - len(w) * 9 // 10))


def write_clusters(root, n=12):
  """n distinct documents, each with a near copy and an exact copy; several files."""
  root.mkdir()
  for i in range(n):
    doc = ' '.join(words(f'd{i}w', 80))
    (root / f'{i:02d}.txt').write_text('\n\n'.join([doc, near_copy(doc, f'n{i}x'), doc]))


def reference_shingles(text: str, n: int) -> set:
  """shingle_hashes written plainly: Python integers, one word and one n-gram at a time."""
  mask, base = 2**64 - 1, 0x100000001B3
  words_ = text.encode('utf-8', 'surrogatepass').replace(b'\t', b' ').replace(b'\n', b' ')
  for space in (b'\x0b', b'\x0c', b'\r'):
    words_ = words_.replace(space, b' ')
  hashes = [sum(byte * pow(base, k, 2**64) for k, byte in enumerate(w)) & mask
            for w in words_.split(b' ') if w]
  grams = [hashes[i:i + n] for i in range(max(len(hashes) - n + 1, 1))]
  return {sum(h * pow(1_000_003, len(g) - 1 - k, 2**64) for k, h in enumerate(g)) & 0xFFFFFFFF
          for g in grams}


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('ab \t\n\r\x0b\x0cé日')), max_size=60),
       st.integers(1, 5))
def test_shingle_hashes_equal_a_plain_python_reference(text, n):
  got = dedup.shingle_hashes(text, n)
  assert got.tolist() == sorted(reference_shingles(text, n))
  a, b = dedup.permutations(8)
  expected = [min(((int(x) * int(ai) + int(bi)) % 2**64) >> 32 for x in got) for ai, bi in zip(a, b)]
  assert dedup.signature(got, (a, b)).tolist() == expected


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(2, stages.MAX_BUCKET + 6), max_size=6), st.randoms())
def test_bucket_pairs_equal_the_nested_loop(sizes, rng):
  members = np.asarray(rng.sample(range(10_000), sum(sizes)), np.int64)
  starts = np.cumsum([0] + sizes[:-1]).astype(np.int64)
  got = stages._bucket_pairs(members, starts, np.asarray(sizes, np.int64))
  expected = [(members[s + i], members[s + j]) for s, m in zip(starts, sizes)
              for i in range(min(m, stages.MAX_BUCKET)) for j in range(i + 1, m)]
  assert sorted(map(tuple, got.tolist())) == sorted(expected)
  assert len(got) == len(expected)


@pytest.mark.slow
def test_output_identical_for_any_worker_count_and_shard_size(tmp_path):
  write_clusters(tmp_path / 'in')
  opts = dict(inputs=[str(tmp_path / 'in')], tokenizer='byte', separator='\n\n', min_length=16,
              val_fraction=0.2)
  stats = {}
  for name, workers, shard_bytes in (('w1', 1, 2000), ('w2', 2, 2000), ('one', 1, 1 << 20)):
    stats[name] = prepare.prepare(prepare.Options(
        output=str(tmp_path / name), workers=workers, shard_bytes=shard_bytes, **opts), **QUIET)
  assert stats['w2']['workers'] == 2
  assert (stats['w1']['removed_exact_duplicates'], stats['w1']['removed_near_duplicates'],
          stats['w1']['documents_out']) == (12, 12, 12)
  assert stats['w1']['bytes_in'] > 5 * 2000  # Several shards.
  w1, w2, one = (record_bytes(tmp_path / n) for n in ('w1', 'w2', 'one'))
  assert w1 and w1 == w2 == one
  assert read_split(tmp_path / 'w1', 'train') != read_split(tmp_path / 'w1', 'validation')


@pytest.mark.parametrize('dtype', [np.uint16, np.int32])
def test_serialize_equals_tfds(dtype):
  import tensorflow_datasets as tfds
  features = tfds.features.FeaturesDict({'tokens': tfds.features.Tensor(shape=(None,), dtype=dtype)})
  rng = np.random.default_rng(0)
  for tokens in (np.zeros(0, dtype), np.asarray([0, 1, 127, 128, 16383, 16384], dtype),
                 rng.integers(0, 50257, 1000).astype(dtype)):
    assert stages.serialize(tokens) == features.serialize_example({'tokens': tokens})


def test_write_plan_cuts_each_split_into_files_of_whole_documents(monkeypatch):
  monkeypatch.setattr(stages, 'WRITE_SHARD_BYTES', 100)
  ntokens = np.asarray([10, 30, 0, 120, 5, 5, 5, 60, 1])
  splits = {'train': np.asarray([0, 1, 2, 3, 4, 5, 7]), 'validation': np.asarray([6, 8]),
            'empty': np.zeros(0, np.int64)}
  plan = stages.write_plan(splits, ntokens, itemsize=2)
  # train: 20, 60, 0, 240, 10, 10, 120 bytes start at 0, 20, 80, 80, 320, 330, 340. Files
  # start at the first document starting at or after 0, 100, ..., 400 bytes: 0, 4, 4, 4, 7
  # (the 240-byte document leaves 100..300 to nobody; 7 is past the end).
  assert plan == [('train', 0, 2, 0, 4), ('train', 1, 2, 4, 7), ('validation', 0, 1, 0, 2)]


@pytest.mark.slow
def test_many_output_files_read_back_as_one(tmp_path, monkeypatch):
  write_clusters(tmp_path / 'in')
  opts = dict(inputs=[str(tmp_path / 'in')], tokenizer='byte', separator='\n\n', min_length=16,
              val_fraction=0.2, workers=2, shard_bytes=2000)
  prepare.prepare(prepare.Options(output=str(tmp_path / 'one'), **opts), **QUIET)
  monkeypatch.setattr(stages, 'WRITE_SHARD_BYTES', 1000)  # The plan is made in this process.
  prepare.prepare(prepare.Options(output=str(tmp_path / 'many'), **opts), **QUIET)
  assert len(record_bytes(tmp_path / 'one')) == 2 and len(record_bytes(tmp_path / 'many')) > 4
  for split in ('train', 'validation'):
    rows = read_split(tmp_path / 'many', split)
    assert rows == read_split(tmp_path / 'one', split)
    assert np.load(tmp_path / 'many' / f'lengths_{split}.npy').tolist() == list(map(len, rows))


@pytest.mark.slow
def test_cluster_survivor_does_not_depend_on_input_order(tmp_path):
  base = ' '.join(words('a', 100))
  cluster = [base, near_copy(base, 'b'), near_copy(base, 'c')]
  assert all(dedup.jaccard(dedup.shingle_hashes(x, 5), dedup.shingle_hashes(y, 5)) > 0.5
             for x in cluster for y in cluster)
  smallest = min(cluster, key=dedup.digest)
  kept = []
  for order in ((0, 1, 2), (2, 1, 0), (1, 2, 0)):
    d = tmp_path / ''.join(map(str, order))
    d.mkdir()
    (d / 'docs.txt').write_text('\n\n'.join(cluster[i] for i in order))
    prepare.prepare(prepare.Options(inputs=[str(d / 'docs.txt')], output=str(d / 'out'),
                                    tokenizer='byte', separator='\n\n', val_fraction=0),
                    **QUIET)
    kept.append([bytes(r).decode() for r in read_split(d / 'out', 'train')])
  assert kept == [[smallest]] * 3  # Each order starts with another member.


def slow_keep(text):
  time.sleep(0.2)
  return True


def _prepare_command(inputs, out):
  code = ('import sys\nfrom trainer import prepare\nif __name__ == "__main__":\n'
          f'  prepare.prepare(prepare.Options(inputs=[{inputs!r}], output={out!r}, '
          'tokenizer="byte", separator="\\n\\n", min_length=16, shard_bytes=1500, workers=1, '
          'language_filter="test_prepare_scale:slow_keep"))\n')
  env = {**os.environ, 'PYTHONPATH': os.path.join(ROOT, 'tests'), 'JAX_PLATFORMS': 'cpu'}
  return [sys.executable, '-c', code], env


@pytest.mark.slow
def test_kill_9_then_rerun_continues_from_finished_shards(tmp_path):
  write_clusters(tmp_path / 'in', n=16)
  out = tmp_path / 'out'
  work = tmp_path / '.out.incomplete'
  done = work / 'logs' / 'clean' / 'completions'
  cmd, env = _prepare_command(str(tmp_path / 'in'), str(out))
  proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 120
  while not (done.is_dir() and len(list(done.iterdir())) >= 3) and time.monotonic() < deadline:
    time.sleep(0.05)
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait(timeout=30)
  finished = len(list(done.iterdir()))
  total = len(json.loads((work / 'shards' / 'manifest.json').read_text())['train']['sizes'])
  assert 3 <= finished < total and not out.exists()
  resumed = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert f'({finished} shards done before)' in resumed.stdout
  assert not work.exists()
  cmd2, _ = _prepare_command(str(tmp_path / 'in'), str(tmp_path / 'fresh'))
  subprocess.run(cmd2, cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
  stats = json.loads((out / 'stats.json').read_text())
  assert stats['removed_near_duplicates'] == 16 and stats['documents_out'] == 16
  assert record_bytes(out) == record_bytes(tmp_path / 'fresh') != {}


ENGLISH = ('The committee met on Tuesday to discuss the new budget for the public library, and '
           'after a long debate the members agreed to extend the opening hours in the winter. ')
GERMAN = ('Der Ausschuss traf sich am Dienstag, um den neuen Haushalt der Stadtbibliothek zu '
          'besprechen, und nach langer Debatte wurden die Öffnungszeiten im Winter verlängert. ')
ENGLISH2 = ('Heavy rain is expected across the north of the country this weekend, so drivers '
            'should check the roads before they travel and allow extra time for the journey. ')
FRENCH = ('Le comité s\'est réuni mardi pour discuter du nouveau budget de la bibliothèque '
          'publique, et après un long débat les membres ont prolongé les horaires d\'hiver. ')


def test_language_en_keeps_english_only(tmp_path):
  for name, text in (('en.txt', ENGLISH), ('de.txt', GERMAN), ('fr.txt', FRENCH),
                     ('en2.txt', ENGLISH2)):
    (tmp_path / name).write_text(text * 3)
  stats = prepare.prepare(prepare.Options(
      inputs=[str(tmp_path / n) for n in ('en.txt', 'de.txt', 'fr.txt', 'en2.txt')],
      output=str(tmp_path / 'out'), tokenizer='byte', language='en', val_fraction=0), **QUIET)
  assert language.detect(GERMAN) == 'de' and language.detect(ENGLISH) == 'en'
  assert (stats['removed_language'], stats['documents_out'], stats['language']) == (2, 2, 'en')
  assert stats['removed_language_tokens'] == len((GERMAN * 3 + FRENCH * 3).encode())
  assert sorted(bytes(r).decode() for r in read_split(tmp_path / 'out', 'train')) == sorted(
      [ENGLISH * 3, ENGLISH2 * 3])


def test_language_codes_are_langids():
  assert language.detect(ENGLISH) == 'en'  # Loads the model (once per process).
  assert language.CODES == list(language._IDENTIFIER.nb_classes)


def test_val_input_removes_its_near_duplicates_from_train(tmp_path):
  v1, v2, t2 = (' '.join(words(tag, 60)) for tag in ('v', 'u', 't'))
  (tmp_path / 'val.txt').write_text(f'{v1}\n\n{v2}')
  (tmp_path / 'train.txt').write_text('\n\n'.join([near_copy(v1, 'x'), t2, v2]))
  stats = prepare.prepare(prepare.Options(
      inputs=[str(tmp_path / 'train.txt')], val_inputs=[str(tmp_path / 'val.txt')],
      output=str(tmp_path / 'out'), tokenizer='byte', separator='\n\n', min_length=16), **QUIET)
  assert (stats['removed_val_overlap'], stats['removed_near_duplicates']) == (2, 0)
  assert stats['removed_val_overlap_tokens'] == len(near_copy(v1, 'x')) + len(v2)
  assert (stats['documents_train'], stats['documents_validation']) == (1, 2)
  assert [bytes(r).decode() for r in read_split(tmp_path / 'out', 'train')] == [t2]
  assert [bytes(r).decode() for r in read_split(tmp_path / 'out', 'validation')] == [v1, v2]


def test_bad_scale_flags(tmp_path, capsys):
  (tmp_path / 'one.txt').write_text('a single document ' * 20)
  out = tmp_path / 'out'
  base = ('--input', tmp_path / 'one.txt', '--output', out, '--tokenizer', 'byte')
  assert '--workers=0' in one_line_error(capsys, run(*base, '--workers', '0'))
  assert "--language='xx'" in one_line_error(capsys, run(*base, '--language', 'xx'))
  err = one_line_error(capsys, run(*base, '--val_input', tmp_path / 'nope.txt'))
  assert '--val_input' in err and 'nope.txt' in err
  (tmp_path / 'empty.txt').write_text(' \n')
  assert '--val_input: found no documents' in one_line_error(
      capsys, run(*base, '--val_input', tmp_path / 'empty.txt'))
  assert sorted(p.name for p in tmp_path.iterdir()) == ['empty.txt', 'one.txt']
