"""Zero-shot tasks and samples during training, logged like the loss, equal to `trainer eval`."""
import pytest

from conftest import DATA, tiny_config
from trainer import evalrun, loop
from trainer.config import ConfigError

LAMBADA, WIKI = f'{DATA}/lambada_test.jsonl', f'{DATA}/wiki.test.raw'


@pytest.mark.slow
def test_eval_tasks_and_samples_during_training(tmp_path):
  cfg = tiny_config(**{'train.steps': 4, 'train.eval_every': 2, 'train.sample_every': 2,
                       'train.eval_tasks': f'lambada:{LAMBADA},wikitext:{WIKI}',
                       'train.eval_limit': 6, 'checkpoint.every': 2, 'checkpoint.keep': 0})
  records = loop.run(cfg, str(tmp_path))['records']
  at = {r['step']: r for r in records}
  for step in (2, 4):
    assert {'eval_loss', 'eval_lambada_acc', 'eval_lambada_acc_word', 'eval_lambada_ppl',
            'eval_wikitext_ppl_token', 'eval_wikitext_ppl_word'} <= set(at[step])
    assert isinstance(at[step]['sample'], str)
  assert 'eval_lambada_ppl' not in at[3] and 'sample' not in at[3]
  assert at[4]['eval_wikitext_ppl_token'] < at[2]['eval_wikitext_ppl_token']  # It learns.
  assert at[2]['sample'] != at[4]['sample']
  for step in (2, 4):  # The same numbers as `trainer eval` on that step's checkpoint.
    got = evalrun.run(str(tmp_path), evalrun.Request(task='lambada', data=LAMBADA, limit=6,
                                                     step=step))
    assert got['lambada_ppl'] == pytest.approx(at[step]['eval_lambada_ppl'], rel=1e-5)
    assert got['lambada_acc'] == at[step]['eval_lambada_acc']


@pytest.mark.parametrize('spec, message', [('squad:x', 'write lambada:FILE'),
                                           ('lambada', 'write lambada:FILE'),
                                           ('lambada:/no/such.jsonl', 'no such file')])
def test_bad_eval_tasks_stop_before_training(spec, message):
  cfg = tiny_config(**{'train.eval_tasks': spec})
  with pytest.raises(ConfigError, match=message):
    evalrun.DuringTraining(cfg, None, None)
