"""trainer prepare: reading, each cleaning stage, the TFDS output, and every bad input."""
import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import zstandard

from trainer import cli, dedup, prepare

from conftest import DATA, ROOT



def words(tag, n):
  return [f'{tag}{i}' for i in range(n)]


BASE = words('a', 100)


def sharing(shared: int, tag: str) -> str:
  """BASE's first ``shared`` words, then fresh ones: Jaccard (shared-4)/(192-(shared-4)) to BASE."""
  return ' '.join(BASE[:shared] + words(tag, 100 - shared))


def run(*args):
  return cli.main(['prepare', *[str(a) for a in args]])


def read_split(out, split):
  """A split's token arrays, read back in a fresh process without TensorFlow."""
  code = ('import json, sys, tensorflow_datasets as tfds\n'
          f'src = tfds.builder_from_directory({str(out)!r}).as_data_source()[{split!r}]\n'
          'rows = [src[i]["tokens"].tolist() for i in range(len(src))]\n'
          'print(json.dumps({"tf": "tensorflow" in sys.modules, "rows": rows}))')
  done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT,
                        check=True)
  result = json.loads(done.stdout.splitlines()[-1])
  assert not result['tf']
  return result['rows']


def test_near_duplicates_just_above_and_below_threshold():
  base = ' '.join(BASE)
  shingles = lambda t: dedup.shingle_hashes(t, 5)
  above, at, below = sharing(69, 'b'), sharing(68, 'c'), sharing(67, 'd')
  assert dedup.jaccard(shingles(base), shingles(above)) == pytest.approx(65 / 127)  # 0.512
  assert dedup.jaccard(shingles(base), shingles(at)) == 0.5
  assert dedup.jaccard(shingles(base), shingles(below)) == pytest.approx(63 / 129)  # 0.488
  for text, duplicate in ((above, True), (at, False), (below, False)):
    index = dedup.NearDuplicates(threshold=0.5)
    assert not index.seen(base)
    assert index.seen(text) is duplicate
  assert dedup.NearDuplicates(threshold=0.45).seen(below) is False  # Empty index: nothing seen.


def test_lsh_proposes_pairs_at_the_threshold():
  bands, rows = dedup.lsh_bands(0.5, 128)
  assert (bands, rows) == (42, 3) and 1 - (1 - 0.5 ** rows) ** bands >= 0.99


def write_mixed_corpus(root):
  """Every input kind; returns the texts that cleaning must keep."""
  root.mkdir()
  long1, long2 = ' '.join(words('e', 60)), ' '.join(words('f', 60))
  bad = b'ok ' * 60 + b'\xff\xfe bad bytes'
  plain = [' '.join(BASE), sharing(69, 'b'), sharing(68, 'c'), ' '.join(BASE), 'x' * 127]
  (root / 'docs.txt').write_text('\n\n'.join(plain))
  with gzip.open(root / 'web.jsonl.gz', 'wt') as f:
    f.write('\n'.join([json.dumps({'text': long1}), json.dumps({'body': 'no text field'}),
                       'not json', json.dumps({'text': 5}), '']))
  with zstandard.open(root / 'more.jsonl.zst', 'wt') as f:
    f.write(json.dumps({'text': long2}) + '\n')
  (root / 'sub').mkdir()
  (root / 'sub' / 'bad.txt').write_bytes(bad)
  (root / 'sub' / '.hidden.txt').write_text('never read ' * 50)
  return [plain[0], plain[2], long1, long2, bad.decode('utf-8', 'replace')]


def test_every_stage_on_a_mixed_corpus(tmp_path):
  kept = write_mixed_corpus(tmp_path / 'in')
  out = tmp_path / 'data'
  assert run('--input', tmp_path / 'in', '--output', out, '--tokenizer', 'byte',
             '--separator', r'\n\n', '--val_fraction', '0.3') == 0
  stats = json.loads((out / 'stats.json').read_text())
  lengths = [len(t.encode('utf-8')) for t in kept]
  expected = {'documents_in': 8, 'removed_exact_duplicates': 1, 'removed_near_duplicates': 1,
              'removed_short': 1, 'removed_short_tokens': 127, 'removed_language': 0,
              'documents_out': 5, 'tokens_out': sum(lengths), 'tokenizer': 'byte', 'files': 4,
              'jsonl_lines_skipped': 3, 'invalid_utf8_sequences': 2,
              'documents_with_invalid_utf8': 1}
  assert {k: stats[k] for k in expected} == expected
  assert stats['removed_exact_duplicates_tokens'] == len(' '.join(BASE))
  removed = sum(stats[f'removed_{s}_tokens'] for s in
                ('exact_duplicates', 'near_duplicates', 'short', 'language'))
  assert stats['tokens_in'] == stats['tokens_out'] + removed
  splits = {s: read_split(out, s) for s in ('train', 'validation')}
  rows = splits['train'] + splits['validation']
  assert stats['documents_train'] >= 1 and stats['documents_validation'] >= 1
  for split, docs in splits.items():  # In the order the dataset stores them (the loader's).
    assert np.load(out / f'lengths_{split}.npy').tolist() == [len(d) for d in docs]
  assert sorted(bytes(r).decode('utf-8') for r in rows) == sorted(kept)
  assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]  # No leftovers.


def test_real_text_with_gpt2(tmp_path):
  out = tmp_path / 'data'
  stats = prepare.prepare(prepare.Options(
      inputs=[os.path.join(DATA, 'tinyshakespeare.txt'), os.path.join(DATA, 'wiki.test.raw')],
      output=str(out), separator='\n\n', min_length=16), say=lambda *a: None)
  expected = {'documents_in': 455, 'removed_exact_duplicates': 0, 'removed_short': 139,
              'removed_near_duplicates': 0, 'documents_out': 316, 'tokens_out': 28_478,
              'tokenizer': 'gpt2'}
  assert {k: stats[k] for k in expected} == expected
  assert stats['tokens_train'] + stats['tokens_validation'] == 28_478
  assert 0.02 < stats['documents_validation'] / 316 < 0.08  # About val_fraction = 0.05.


def keep_without_digits(text):
  return not any(c.isdigit() for c in text)


def fail_on_third(text, seen=[]):  # noqa: B006  (counts calls across the run)
  seen.append(text)
  if len(seen) == 3:
    raise RuntimeError('killed mid-run')
  return True


def test_language_filter_hook(tmp_path):
  (tmp_path / 'a.txt').write_text('plain words only ' * 10)
  (tmp_path / 'b.txt').write_text('numbers 123 here ' * 10)
  (tmp_path / 'c.txt').write_text('more plain words to keep ' * 10)
  stats = prepare.prepare(prepare.Options(
      inputs=[str(tmp_path / n) for n in ('a.txt', 'b.txt', 'c.txt')], output=str(tmp_path / 'd'),
      tokenizer='byte', language_filter='test_prepare:keep_without_digits'), say=lambda *a: None)
  assert (stats['removed_language'], stats['removed_language_tokens']) == (1, 170)
  assert stats['documents_out'] == 2


def test_interrupted_run_leaves_nothing(tmp_path):
  for i in range(4):
    (tmp_path / f'{i}.txt').write_text(f'document {i} ' * 40)
  with pytest.raises(RuntimeError, match='killed'):
    prepare.prepare(prepare.Options(inputs=[str(tmp_path)], output=str(tmp_path / 'out'),
                                    tokenizer='byte', language_filter='test_prepare:fail_on_third'),
                    say=lambda *a: None)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['0.txt', '1.txt', '2.txt', '3.txt']


def one_line_error(capsys, code):
  assert code == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1 and err.startswith('error: ')
  return err


def test_bad_input(tmp_path, capsys):
  (tmp_path / 'empty.txt').write_text('')
  (tmp_path / 'blank.txt').write_text('\n  \n')
  (tmp_path / 'one.txt').write_text('a single document ' * 20)
  (tmp_path / 'nofield.jsonl').write_text(json.dumps({'body': 'x'}) + '\n')
  out = tmp_path / 'out'
  assert 'no such file' in one_line_error(capsys, run('--input', tmp_path / 'nope', '--output', out))
  assert 'no documents' in one_line_error(capsys, run(
      '--input', tmp_path / 'empty.txt', tmp_path / 'blank.txt', '--output', out))
  assert "'text' field" in one_line_error(capsys, run(
      '--input', tmp_path / 'nofield.jsonl', '--output', out, '--tokenizer', 'byte'))
  err = one_line_error(capsys, run('--input', tmp_path / 'one.txt', '--output', out,
                                   '--tokenizer', 'byte', '--min_length', '1000'))
  assert 'removed all 1 documents' in err and '--min_length' in err
  assert 'validation split' in one_line_error(capsys, run(
      '--input', tmp_path / 'one.txt', '--output', out, '--tokenizer', 'byte'))
  assert '--val_fraction=1: must be a number in [0, 1)' in one_line_error(capsys, run(
      '--input', tmp_path / 'one.txt', '--output', out, '--val_fraction', '1'))
  assert 'cannot import' in one_line_error(capsys, run(
      '--input', tmp_path / 'one.txt', '--output', out, '--language_filter', 'nomodule:f'))
  assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith('.')]


def test_existing_output_needs_overwrite(tmp_path, capsys):
  (tmp_path / 'one.txt').write_text('a single document ' * 20)
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'precious.txt').write_text('keep me')
  args = ('--input', tmp_path / 'one.txt', '--output', out, '--tokenizer', 'byte',
          '--val_fraction', '0')
  assert '--overwrite' in one_line_error(capsys, run(*args))
  assert (out / 'precious.txt').read_text() == 'keep me'
  assert run(*args, '--overwrite') == 0
  assert not (out / 'precious.txt').exists()
  stats = json.loads((out / 'stats.json').read_text())
  assert (stats['documents_train'], stats['documents_validation']) == (1, 0)
  assert read_split(out, 'train') == [list(np.frombuffer(b'a single document ' * 20, np.uint8))]
