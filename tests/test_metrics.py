"""Goodput across restarts, live accounting fields, TensorBoard, W&B and the console."""
import io
import json
import sys
import types

import pytest

from trainer import metrics

from conftest import tiny_config


def write_records(workdir, records):
  with open(workdir / 'metrics.jsonl', 'w') as f:
    for r in records:
      f.write(json.dumps(r) + '\n')


def record(step, wall, step_s, compile_s=10.0):
  times = {'wall': wall, 'step': step_s, 'startup': 2.0, 'compile': compile_s, 'data': 1.0,
           'eval': 0.0, 'checkpoint': 0.0, 'restart': 0.0}
  return {'step': step, 'loss': 1.0, **{f'time_{k}_s': v for k, v in times.items()}}


def test_goodput_counts_overheads_and_steps():
  g = metrics.Goodput()
  g.add('compile', 3.0)
  with g.timing('data'):
    pass
  totals = g.totals()
  assert totals['compile'] == 3.0 and totals['data'] >= 0
  assert totals['step'] == pytest.approx(max(totals['wall'] - 3.0 - totals['data'], 0), abs=1e-6)
  assert 0 <= g.fields()['goodput'] <= 1


def test_goodput_resume_adds_up_and_charges_lost_steps_to_restart(tmp_path):
  # Run 1 logged steps 10 and 20, checkpointed at 10, then died; run 2 resumes from 10.
  write_records(tmp_path, [record(10, 100.0, 50.0), record(20, 160.0, 110.0)])
  g = metrics.Goodput()
  g.carry_over(str(tmp_path), start_step=10)
  totals = g.totals()
  assert totals['wall'] >= 160.0 and totals['compile'] == 10.0
  assert totals['restart'] == pytest.approx(60.0)  # Steps 11-20 are done again.
  assert totals['step'] == pytest.approx(totals['wall'] - 10 - 2 - 1 - 60, abs=1e-6)
  # A fresh run (step 0) in the same workdir carries nothing.
  fresh = metrics.Goodput()
  fresh.carry_over(str(tmp_path), start_step=0)
  assert fresh.totals()['wall'] < 1.0


def test_accountant_fields(monkeypatch):
  cfg = tiny_config(**{'cost.hardware': 'tpu-v3', 'train.target_tokens': 1_000_000})
  from trainer import model
  mcfg = model.ModelConfig.from_config(cfg.model)
  acct = metrics.Accountant(cfg, mcfg, num_devices=8)  # 8 TPU v3 cores are 4 chips.
  assert acct.chips == 4 and acct.peak_total == 4 * 123e12
  f = acct.fields(step=10, tokens_per_sec=1000.0, wall_s=3600.0)
  assert f['tokens'] == 10 * 8 * 64
  assert f['tokens_per_sec_per_device'] == 125.0
  assert f['mfu'] == pytest.approx(acct.model_flops * 1000 / (4 * 123e12))
  assert f['tflops_per_device'] == pytest.approx(acct.model_flops * 1000 / 8 / 1e12)
  assert f['dollars'] == pytest.approx(4 * 2.00)
  assert f['dollars_per_mtok'] == pytest.approx(8.0 / (5120 / 1e6))
  assert f['eta_s'] == pytest.approx((1_000_000 - 5120) / 1000)
  assert f['projected_dollars'] == pytest.approx(8.0 + 4 * 2.0 * f['eta_s'] / 3600)
  assert f['kwh'] == pytest.approx(220 * 4 * 1.0 * 1.1 / 1000)
  assert f['co2e_kg'] == pytest.approx(f['kwh'] * 0.429)


def full_record(**extra):
  r = {'step': 7, 'loss': 2.5, 'lr': 1e-3, 'grad_norm': 0.5, 'tokens_per_sec': 1234.0,
       'tokens_per_sec_per_device': 154.25, 'step_time_s': 0.4, 'tflops_per_device': 0.01,
       'mfu': 0.123, 'dollars': 1.5, 'dollars_per_mtok': 0.2, 'eta_s': 3725.0,
       'projected_dollars': 9.0, 'kwh': 0.1, 'co2e_kg': 0.04, 'goodput': 0.8}
  return {**r, **extra}


def test_console_plain_lines_when_not_a_terminal():
  out = io.StringIO()
  console = metrics.Console('auto', total_steps=10, start_step=0, stream=out)
  console.show(full_record())
  console.close()
  line = out.getvalue()
  assert line.count('\n') == 1 and line.startswith('step      7 | loss 2.5000')
  for text in ('1,234 tok/s (154/dev)', 'MFU 12.3%', '$1.5000 ($0.200/Mtok)',
               'ETA 1h02m -> $9.00', '0.1000 kWh', 'goodput 80%'):
    assert text in line, text


def test_console_progress_bar():
  out = io.StringIO()
  console = metrics.Console('bar', total_steps=10, start_step=0, stream=out)
  console.show(full_record())
  console.show(full_record(step=10, eval_loss=2.0))
  console.close()
  text = out.getvalue()
  assert '10/10' in text and 'MFU 12.3%' in text and '$1.50' in text and '1,234 tok/s' in text
  assert 'eval 2.0000' in text  # Evaluations are printed as lines above the bar.


def test_wandb_when_installed_and_enabled(tmp_path, monkeypatch, capsys):
  logged = []
  fake = types.SimpleNamespace(init=lambda **kw: types.SimpleNamespace(
      log=lambda d, step: logged.append((step, d)), finish=lambda: logged.append('done'), **kw))
  monkeypatch.setitem(sys.modules, 'wandb', fake)
  cfg = tiny_config(**{'log.wandb_project': 'proj', 'log.tensorboard': False})
  writers = metrics.writers(cfg, str(tmp_path))
  assert [type(w).__name__ for w in writers] == ['Writer', 'WandbWriter']
  for w in writers:
    w.write(full_record())
    w.close()
  assert logged[0][0] == 7 and logged[0][1]['mfu'] == 0.123 and logged[-1] == 'done'
  # Not installed: a warning, and the run goes on with the other writers.
  monkeypatch.setitem(sys.modules, 'wandb', None)
  writers = metrics.writers(cfg, str(tmp_path))
  assert [type(w).__name__ for w in writers] == ['Writer']
  assert 'wandb is not installed' in capsys.readouterr().err


def test_live_records_of_a_real_run(tiny_workdir):
  """Every record carries the accounting, consistent with the run's accounting.json."""
  workdir, cfg = tiny_workdir
  records = metrics.read_records(str(workdir))
  acct = json.loads((workdir / 'accounting.json').read_text())
  assert acct['hardware'] == 'cpu' and acct['chips'] == 1 and acct['price_per_chip_hour'] == 3.0
  assert [r['step'] for r in records] == [1, 2, 3, 4]
  for r in records:
    hours = r['time_wall_s'] / 3600
    assert r['tokens'] == r['step'] * 8 * 64
    assert r['dollars'] == pytest.approx(3.0 * hours)
    assert r['kwh'] == pytest.approx(250 * hours * 1.1 / 1000)
    assert r['co2e_kg'] == pytest.approx(r['kwh'] * 0.429)
    assert 0 < r['goodput'] < 1 and r['time_compile_s'] > 0 and r['time_startup_s'] > 0
    assert r['step_time_s'] > 0 and r['tokens_per_sec'] == pytest.approx(512 / r['step_time_s'])
    assert r['mfu'] == pytest.approx(acct['model_flops_per_token'] * r['tokens_per_sec']
                                     / acct['peak_flops_total'])
  assert records[-1]['eta_s'] == 0 and records[0]['eta_s'] > 0
  assert records[-1]['projected_dollars'] == pytest.approx(records[-1]['dollars'])
  assert records[-1]['time_eval_s'] > 0 and records[0]['time_eval_s'] == 0


def test_tensorboard_events_read_back_with_tbparse(tiny_workdir):
  from tbparse import SummaryReader
  workdir, _ = tiny_workdir
  records = metrics.read_records(str(workdir))
  scalars = SummaryReader(str(workdir / 'tb')).scalars
  loss = scalars[scalars.tag == 'loss'].sort_values('step')
  assert list(loss.step) == [1, 2, 3, 4]
  assert list(loss.value) == pytest.approx([r['loss'] for r in records], rel=1e-6)
  assert {'mfu', 'dollars', 'kwh', 'co2e_kg', 'goodput', 'eval_loss'} <= set(scalars.tag)
