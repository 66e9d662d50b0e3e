"""The lm-eval adapter equals lm-eval's own Hugging Face backend; local task YAMLs run offline."""
import os

os.environ.setdefault('HF_DATASETS_OFFLINE', '1')  # Local json/text files only: no hub.
os.environ.setdefault('HF_HUB_OFFLINE', '1')

import shutil  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import transformers  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

from conftest import DATA  # noqa: E402
from test_evaluate import BPE_HF, loud_the  # noqa: E402
from test_generate import setup_from_hf  # noqa: E402
from test_hf import hf_model  # noqa: E402
from trainer import cli, evalrun, evaluate, harness, tokenizer  # noqa: E402

TASKS = """\
task: lambada_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}/lambada_test.jsonl
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{text.split(' ')[:-1]|join(' ')}}}}"
doc_to_target: "{{{{' '+text.split(' ')[-1]}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
---
task: wikitext_local
dataset_path: text
dataset_kwargs:
  sample_by: paragraph
  data_files:
    test: {data}/wiki.test.raw
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
"""


def write_tasks(folder):
  folder.mkdir(exist_ok=True)
  for i, doc in enumerate(TASKS.format(data=DATA).split('---\n')):
    (folder / f'task_{i}.yaml').write_text(doc)
  return folder


def requests(kind, args):
  return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


@pytest.mark.slow
def test_adapter_equals_lm_eval_hugging_face_backend():
  from lm_eval.models.huggingface import HFLM
  tok = tokenizer.get('gpt2')
  model = loud_the(hf_model(BPE_HF['gpt2']), tok)
  setup, params = setup_from_hf(model)
  bpe = tokenizer.default_bpe_dir()
  hf_tok = transformers.GPT2TokenizerFast(vocab=f'{bpe}/encoder.json', merges=f'{bpe}/vocab.bpe')
  assert hf_tok.encode(' the cat') == tok.encode(' the cat').tolist() == [262, 3797]
  theirs = HFLM(pretrained=model, tokenizer=hf_tok, batch_size=4, max_length=128)
  ours = harness.TrainerLM(setup, params, tok)
  texts = evaluate.read_lambada(f'{DATA}/lambada_test.jsonl', 6)
  pairs = [tuple(t.rsplit(' ', 1)) for t in texts]
  ll = [(c, ' ' + w) for c, w in pairs] + [('', 'The'), ('A long way ', 'home')]
  got = ours.loglikelihood(requests('loglikelihood', ll))
  want = theirs.loglikelihood(requests('loglikelihood', ll))
  np.testing.assert_allclose([g for g, _ in got], [w for w, _ in want], rtol=1e-4)
  assert [g for _, g in got] == [w for _, w in want]
  with open(f'{DATA}/wiki.test.raw', encoding='utf-8') as f:
    lines = [l for l in f.readlines()[:12] if l.strip()]
  docs = [(lines[0],), (''.join(lines[1:6]),)]
  assert len(tok.encode(docs[1][0])) > 2 * 128  # Several rolling windows.
  got = ours.loglikelihood_rolling(requests('loglikelihood_rolling', docs))
  want = theirs.loglikelihood_rolling(requests('loglikelihood_rolling', docs))
  np.testing.assert_allclose(got, want, rtol=1e-4)
  gen = [(texts[0], {'until': ['\n'], 'max_gen_toks': 8, 'do_sample': False}),
         ('Robert Boulter is', {'until': [' the'], 'max_gen_toks': 8})]
  got = ours.generate_until(requests('generate_until', gen))
  want = theirs.generate_until(requests('generate_until', gen))
  assert got == want and any(got)


@pytest.mark.slow
def test_local_tasks_through_trainer_eval(tiny_workdir, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(tiny_workdir[0], workdir)
  folder = write_tasks(tmp_path / 'tasks')
  req = evalrun.Request(task='harness', tasks='lambada_local,wikitext_local',
                        include_path=str(folder), limit=4)
  result = evalrun.run(str(workdir), req)
  assert 0 <= result['lambada_local_acc'] <= 1 and result['lambada_local_perplexity'] > 1
  assert result['wikitext_local_word_perplexity'] > result['wikitext_local_byte_perplexity'] > 1
  saved = (workdir / 'eval.json').read_text()
  assert 'lm-evaluation-harness wikitext_local word_perplexity' in saved


@pytest.mark.slow
def test_unknown_and_malformed_tasks_exit_2(tiny_workdir, tmp_path, capsys):
  folder = write_tasks(tmp_path / 'tasks')
  (folder / 'broken.yaml').write_text('task: broken_local\ndataset_path: json\n'
                                      'output_type: not_a_type\n')
  for tasks, message in (('no_such_task_xyz', 'unknown lm-eval task'),
                         ('broken_local', 'broken_local')):
    assert cli.main(['eval', f'--workdir={tiny_workdir[0]}', '--task=harness',
                     f'--tasks={tasks}', f'--include_path={folder}']) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1 and message in err, err
