"""`trainer eval` and `trainer generate` as a user runs them, and their bad-input errors."""
import io
import json
import shutil
import subprocess
import sys

import pytest

from conftest import DATA, ROOT
from test_cli import ENV
from trainer import cards, cli, generate, report

LAMBADA = f'{DATA}/lambada_test.jsonl'
WIKI = f'{DATA}/wiki.test.raw'


def trainer(*args):
  return subprocess.run([sys.executable, '-m', 'trainer', *args], cwd=ROOT, env=ENV,
                        capture_output=True, text=True, timeout=600)


@pytest.fixture
def workdir(tiny_workdir, tmp_path):
  """A copy of the shared 4-step tiny run (byte tokenizer), so eval.json starts empty."""
  shutil.copytree(tiny_workdir[0], tmp_path / 'run')
  return tmp_path / 'run'


@pytest.mark.slow
def test_eval_lambada_then_wikitext_merge_into_eval_json(workdir):
  out = trainer('eval', f'--workdir={workdir}', '--task=lambada', f'--data={LAMBADA}',
                '--limit', '10')
  assert out.returncode == 0, out.stderr
  first = json.loads((workdir / 'eval.json').read_text())
  assert set(first) == {'lambada_acc', 'lambada_acc_word', 'lambada_ppl', 'details'}
  assert first['details']['lambada_acc']['step'] == 4
  assert first['details']['lambada_acc']['lambada_examples'] == 10
  assert first['lambada_ppl'] > 257 and 0 <= first['lambada_acc_word'] <= first['lambada_acc']
  out = trainer('eval', f'--workdir={workdir}', '--task=wikitext', f'--data={WIKI}', '--limit=20',
                '--detokenizer=megatron')
  assert out.returncode == 0, out.stderr
  both = json.loads((workdir / 'eval.json').read_text())
  assert both['lambada_acc'] == first['lambada_acc']  # Merged, not replaced.
  assert both['wikitext_ppl_word'] > both['wikitext_ppl_token'] > 1  # Bytes: many per word.
  assert both['details']['wikitext_ppl_token']['wikitext_detokenizer'] == 'megatron'
  assert both['details']['wikitext_ppl_token']['wikitext_context'] == 64  # The model's max_len.
  records = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert records[-1]['step'] == 4 and 'eval_wikitext_ppl_word' in records[-1]
  assert report.summary(records)['train_loss'] == records[-3]['loss']  # Report still reads it.
  card = cards.model_card(str(workdir), tiny_cfg(workdir))
  assert 'lambada_acc | ' in card and 'GPT-2 paper' in card


def tiny_cfg(workdir):
  from trainer import checkpoint
  return checkpoint.latest(str(workdir))[0]


@pytest.mark.slow
def test_generate_json_is_one_object_and_seeded(workdir):
  args = ('generate', f'--workdir={workdir}', '--prompt', 'def ', '--max_new_tokens', '12',
          '--seed', '3', '--json')
  out = trainer(*args)
  assert out.returncode == 0, out.stderr
  got = json.loads(out.stdout)
  assert 0 < len(got['ids']) <= 12 and got['step'] == 4
  assert all(0 <= i < 257 for i in got['ids'])
  how = generate.Sampling(max_new_tokens=12, temperature=0.8, seed=3)
  again = generate.run(str(workdir), ['def '], how, as_json=True, out=open('/dev/null', 'w'))
  assert again['ids'] == got['ids'] and again['text'] == got['text']
  other = generate.run(str(workdir), ['def '], generate.Sampling(12, 0.8, seed=4), as_json=True,
                       out=open('/dev/null', 'w'))
  assert other['ids'] != got['ids']
  streamed = io.StringIO()
  generate.run(str(workdir), ['def '], how, out=streamed)
  assert streamed.getvalue() == 'def ' + got['text'] + '\n'  # Streamed token by token.


def error_line(capsys, *argv):
  assert cli.main(list(argv)) == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and err.startswith('error: ') and 'Traceback' not in err
  return err


def test_bad_input_is_one_line_and_exit_2(workdir, tmp_path, capsys):
  w = f'--workdir={workdir}'
  assert 'no such directory' in error_line(capsys, 'eval', f'--workdir={tmp_path}/none',
                                           '--task=lambada', f'--data={LAMBADA}')
  assert 'no such directory' in error_line(capsys, 'generate', f'--workdir={tmp_path}/none',
                                           '--prompt', 'hi')
  assert 'unknown task' in error_line(capsys, 'eval', w, '--task=squad')
  assert 'needs --data' in error_line(capsys, 'eval', w, '--task=lambada')
  assert 'prompt is empty' in error_line(capsys, 'generate', w, '--prompt', '')
  assert 'prompt is empty' in error_line(capsys, 'generate', w)
  assert "context is 64" in error_line(capsys, 'generate', w, '--prompt', 'x' * 80)
  assert '--top_p=1.5' in error_line(capsys, 'generate', w, '--prompt', 'a', '--top_p', '1.5')
  bad = tmp_path / 'bad.jsonl'
  bad.write_text('{"text": "a fine line"}\n{"id": 3}\n')
  assert 'bad.jsonl:2: no "text"' in error_line(capsys, 'eval', w, '--task=lambada',
                                                f'--data={bad}')
  assert 'no such file' in error_line(capsys, 'eval', w, '--task=wikitext',
                                      f'--data={tmp_path}/missing.raw')
  prepared = tmp_path / 'bpe_data'
  prepared.mkdir()
  (prepared / 'stats.json').write_text('{"tokenizer": "gpt2"}')
  assert 'tokenized with gpt2 but the model uses byte' in error_line(
      capsys, 'eval', w, '--task=loss', f'--data={prepared}')
  assert not (workdir / 'eval.json').exists()  # Nothing written by a failed call.


def test_eval_loss_covers_the_whole_validation_split(workdir):
  from trainer import evalrun
  result = evalrun.run(str(workdir), evalrun.Request(task='loss'))
  cfg = tiny_cfg(workdir)
  from trainer import data, tokenizer
  _, val = data.stdlib_corpus(cfg.data.max_bytes, cfg.data.val_every_nth_file,
                              tokenizer.get('byte'))
  assert result['val_tokens'] == len(val) - 1  # Every token but the first is predicted.
  records = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  eval_losses = [r['eval_loss'] for r in records if 'eval_loss' in r]
  assert abs(result['val_loss'] - eval_losses[-1]) < 0.3  # Whole split vs 2 batches of it.
  assert result['val_loss'] != eval_losses[-1]
