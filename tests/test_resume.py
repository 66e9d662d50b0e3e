"""Elastic resume: another batch size or process count continues the same token stream; the
learning-rate schedule never jumps silently; SIGTERM on several processes saves once."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import pytest

from conftest import ROOT, tiny_config
from trainer import checkpoint, cli, data, optimizer, prepare, rows, train


def run_cli(capsys, workdir, *flags):
  code = cli.main(['train', '--config=configs/tiny.py', f'--workdir={workdir}', *flags])
  return code, capsys.readouterr()


def records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_a_resume_that_changes_the_next_learning_rate_stops(tmp_path, capsys):
  assert run_cli(capsys, tmp_path, '--config.train.steps=2')[0] == 0
  before = records(tmp_path)
  code, out = run_cli(capsys, tmp_path, '--config.train.steps=4')  # Cosine: a longer horizon.
  assert code == 2 and out.err.count('\n') == 1 and 'Traceback' not in out.err
  assert f'resuming {tmp_path}/checkpoints/2 would change the learning rate of step 3' in out.err
  assert 'train.steps is 2 there, 4 now' in out.err and 'optim.allow_lr_change=true' in out.err
  code, out = run_cli(capsys, tmp_path, '--config.train.steps=2', '--config.optim.lr=1e-3')
  assert code == 2 and 'optim.lr is 0.003 there, 0.001 now' in out.err
  assert records(tmp_path) == before and os.listdir(tmp_path / 'checkpoints') == ['2']
  # The data position counts rows of one length: another seq_len is refused too.
  code, out = run_cli(capsys, tmp_path, '--config.train.steps=2', '--config.train.seq_len=32')
  assert code == 2 and out.err.count('\n') == 1
  assert 'data position with train.seq_len=64 (32 now); resume with --config.train.seq_len=64' in out.err
  # Asked for, the jump is taken.
  code, out = run_cli(capsys, tmp_path, '--config.train.steps=3', '--config.optim.allow_lr_change=true')
  assert code == 0, out.err
  lr_3 = float(optimizer.schedule(tiny_config(**{'train.steps': 3}).optim, 3)(2))
  assert records(tmp_path)[-1]['lr'] == pytest.approx(lr_3) and records(tmp_path)[:2] == before
  # A position counted in another version's row order is refused; asked for, it goes on.
  meta = tmp_path / 'checkpoints/3/position/metadata'
  position = json.loads(meta.read_text())
  assert position['order'] == rows.ORDER == 2
  kept, lines = sorted(os.listdir(tmp_path / 'checkpoints')), records(tmp_path)
  for order in (None, 3):  # None: written before orders had versions (rows in reading order).
    meta.write_text(json.dumps({k: v for k, v in position.items() if k != 'order'}
                               | ({'order': order} if order else {})))
    code, out = run_cli(capsys, tmp_path, '--config.train.steps=4',
                        '--config.optim.allow_lr_change=true')
    assert code == 2 and out.err.count('\n') == 1 and 'Traceback' not in out.err
    assert (f'checkpoints/3 counts its data position in row order {order or 1}, from an earlier '
            'version; this one reads order 2') in out.err
    assert 'pass --config.train.allow_order_change=true' in out.err
    assert sorted(os.listdir(tmp_path / 'checkpoints')) == kept and records(tmp_path) == lines
  code, out = run_cli(capsys, tmp_path, '--config.train.steps=4', '--config.optim.allow_lr_change=true',
                      '--config.train.allow_order_change=true')
  assert code == 0, out.err
  assert 'resuming from step 3' in out.out and [r['step'] for r in records(tmp_path)] == [1, 2, 3, 4]
  # A checkpoint from before global data positions is refused with one line.
  shutil.rmtree(tmp_path / 'checkpoints/4/position')
  code, out = run_cli(capsys, tmp_path, '--config.train.steps=4', '--config.optim.allow_lr_change=true')
  assert code == 2 and out.err.count('\n') == 1 and 'per-process data states' in out.err


def test_wsd_extends_a_run_without_a_jump(tmp_path, capsys):
  wsd = ['--config.optim.schedule=wsd', '--config.optim.decay_steps=2',
         '--config.optim.warmup_steps=1', '--config.checkpoint.every=2']
  assert run_cli(capsys, tmp_path, *wsd, '--config.train.steps=4')[0] == 0
  short = records(tmp_path)
  peak = 3e-3
  assert [r['lr'] for r in short][:3] == pytest.approx([peak] * 3) and short[3]['lr'] < peak * 0.99
  shutil.rmtree(tmp_path / 'checkpoints/4')  # Extend from before the decay began.
  code, out = run_cli(capsys, tmp_path, *wsd, '--config.train.steps=8')
  assert code == 0, out.err
  assert 'resuming from step 2' in out.out
  long = records(tmp_path)
  assert [r['step'] for r in long] == list(range(1, 9)) and long[:2] == short[:2]
  assert [r['lr'] for r in long[2:6]] == pytest.approx([peak] * 4) and long[7]['lr'] < peak * 0.99
  # The first line after a resume says how many tokens were consumed before it.
  assert long[2]['resumed_tokens'] == 2 * 8 * 64 and 'resumed_tokens' not in long[3]
  assert [r['tokens'] for r in long] == [s * 8 * 64 for s in range(1, 9)]


def test_another_batch_size_continues_at_the_same_token(tmp_path, capsys):
  flags = ['--config.optim.schedule=constant', '--config.optim.warmup_steps=0']
  assert run_cli(capsys, tmp_path, *flags, '--config.train.steps=2')[0] == 0
  code, out = run_cli(capsys, tmp_path, *flags, '--config.train.steps=3',
                      '--config.train.batch_size=16')
  assert code == 0, out.err
  logged = records(tmp_path)[2]
  assert logged['step'] == 3 and logged['resumed_tokens'] == 16 * 64
  assert logged['tokens'] == 16 * 64 + 16 * 64
  # Step 3 trained on global rows 16..31: the parameters of step 2 give its loss on them.
  cfg = tiny_config(**{'train.batch_size': 16})
  setup = train.build(cfg)
  ckpts = checkpoint.Checkpoints(str(tmp_path), cfg)
  params = ckpts.restore(2, setup.abstract_state()).params
  ckpts.close()
  stream = data.load(cfg).train
  loss = lambda start: float(train.loss_fn(params, stream.batches(start)[0], None, setup.eval_model))
  assert abs(loss(0) - loss(16)) > 1e-3  # Rows 0..15 were seen already and give another loss.
  assert logged['loss'] == pytest.approx(loss(16), rel=1e-5)


def test_a_run_resumes_with_another_scan_unroll(tmp_path, capsys):
  """model.scan_unroll changes the compiled loop, not the checkpoint: a resumed run that
  unrolls it logs the uninterrupted scanned run's losses."""
  straight, split = tmp_path / 'straight', tmp_path / 'split'
  flags = ['--config.optim.schedule=constant', '--config.optim.warmup_steps=0',
           '--config.model.scan_unroll=1']
  assert run_cli(capsys, straight, *flags, '--config.train.steps=4')[0] == 0
  assert run_cli(capsys, split, *flags, '--config.train.steps=2')[0] == 0
  code, out = run_cli(capsys, split, *flags[:-1], '--config.train.steps=4',
                      '--config.model.scan_unroll=0')
  assert code == 0, out.err
  want, got = records(straight), records(split)
  assert [r['step'] for r in got] == [1, 2, 3, 4]
  assert want[3]['loss'] != want[2]['loss']  # Steps differ, so equal losses mean the same step.
  for a, b in zip(want[2:], got[2:]):
    assert b['loss'] == pytest.approx(a['loss'], rel=1e-5)


def test_skipped_steps_keep_the_schedule_on_the_step_counter():
  cfg = tiny_config(**{'optim.warmup_steps': 10, 'optim.clip_norm': 0.0})
  setup = train.build(cfg)
  tokens = np.random.RandomState(0).randint(0, 257, (8, 65)).astype(np.int32)
  state = setup.init_state(0)
  step = jax.jit(lambda s, t: train.train_step(s, t, model=setup.model, tx=setup.tx,
                                               lr_schedule=setup.lr_schedule, micro_batches=1,
                                               skip_nonfinite=True))
  poisoned = state.replace(params=jax.tree.map(lambda x: x * np.nan, state.params))
  skipped, m = step(poisoned, tokens)
  assert float(m['skipped']) == 1.0 and int(skipped.step) == 1
  counts = lambda s: [int(x.count) for x in jax.tree.leaves(
      s.opt_state, is_leaf=lambda x: isinstance(x, (optax.ScaleByScheduleState,
                                                    optax.ScaleByAdamState)))]
  assert counts(skipped) == [0, 1]  # Adam: no update yet; schedule: one step taken.
  # The next update (clean weights) uses the rate of step 2, as the log says.
  after_skip, m = step(skipped.replace(params=state.params), tokens)
  assert float(m['skipped']) == 0.0 and float(m['lr']) == pytest.approx(float(setup.lr_schedule(1)))
  at_step_1, _ = step(state.replace(step=1, opt_state=train.with_schedule_count(
      state.opt_state, skipped.opt_state)), tokens)
  first, _ = step(state, tokens)  # Step 1's rate, half of step 2's in warmup.
  delta = lambda s: np.asarray(s.params['wte']) - np.asarray(state.params['wte'])
  np.testing.assert_allclose(delta(after_skip), delta(at_step_1), rtol=1e-6, atol=1e-12)
  np.testing.assert_allclose(delta(after_skip), 2 * delta(first), rtol=1e-4, atol=1e-9)


# ---- real processes (launch/local.py on 127.0.0.1) ---------------------------------------------

FLAGS = ['--config=configs/tiny.py', '--config.train.eval_batches=1', '--config.train.eval_every=0',
         '--config.optim.schedule=constant', '--config.optim.warmup_steps=0']


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """A prepared byte-level dataset of 60 small documents."""
  root = tmp_path_factory.mktemp('prepared')
  (root / 'in.txt').write_text('\n\n'.join(f'doc{i:03d} ' * (5 + (i * 7) % 40) for i in range(60)))
  prepare.prepare(prepare.Options(inputs=[str(root / 'in.txt')], output=str(root / 'data'),
                                  tokenizer='byte', separator='\n\n', min_length=0,
                                  val_fraction=0.2), say=lambda *a: None)
  return str(root / 'data')


def local(processes, workdir, *flags, **popen):
  """launch/local.py with `processes` x (8 / processes) fake CPU devices."""
  cmd = [sys.executable, os.path.join(ROOT, 'launch', 'local.py'), '--processes', str(processes),
         '--devices-per-process', str(8 // processes), '--', *FLAGS, f'--workdir={workdir}', *flags]
  popen = {'stdout': subprocess.PIPE, 'stderr': subprocess.PIPE, **popen}
  return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, text=True,
                          **popen)


def finish(processes, workdir, *flags) -> str:
  run = local(processes, workdir, *flags)
  out, err = run.communicate(timeout=900)
  assert run.returncode == 0, err[-3000:]
  return out


def losses(workdir):
  return {r['step']: r['loss'] for r in records(workdir)}


@pytest.fixture(scope='module')
def straight(prepared, tmp_path_factory):
  """Losses of one uninterrupted single-process run of 8 steps on the prepared data."""
  workdir = tmp_path_factory.mktemp('straight')
  finish(1, workdir, f'--config.data.path={prepared}', '--config.train.steps=8')
  result = losses(workdir)
  assert sorted(result) == list(range(1, 9)) and result[1] - result[8] > 0.2
  return result


@pytest.mark.slow
def test_prepared_data_resumes_on_one_then_two_then_four_processes(prepared, straight, tmp_path):
  data_flag = f'--config.data.path={prepared}'
  finish(1, tmp_path, data_flag, '--config.train.steps=2')
  out = finish(2, tmp_path, data_flag, '--config.train.steps=4')
  assert 'resuming from step 2' in out and '16 sequences' in out
  assert 'resuming from step 4' in finish(4, tmp_path, data_flag, '--config.train.steps=6')
  got = records(tmp_path)
  assert [r['step'] for r in got] == list(range(1, 7))
  assert got[2]['resumed_tokens'] == 2 * 8 * 64 and got[4]['resumed_tokens'] == 4 * 8 * 64
  for r in got:
    assert r['loss'] == pytest.approx(straight[r['step']], rel=1e-5), r['step']


def logged_steps(workdir) -> int:
  """Lines in metrics.jsonl so far (a line still being written does not count)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return sum(1 for line in f if line.endswith('\n'))


@pytest.mark.slow
def test_sigterm_to_both_processes_saves_once_and_resumes_exactly(prepared, straight, tmp_path):
  """Preemption on a pod: every host gets SIGTERM; they agree on one step and save it."""
  workdir, log = tmp_path / 'run', tmp_path / 'stderr.txt'
  flags = [f'--config.data.path={prepared}', '--config.train.steps=8',
           '--config.checkpoint.every=0', '--config.train.log_every=1']
  with open(log, 'w') as err:
    run = local(2, workdir, *flags, '--config.train.steps=100000', stderr=err)
    try:
      while logged_steps(workdir) < 2:
        assert run.poll() is None, log.read_text()[-3000:]
        time.sleep(0.05)
      pids = [int(p) for p in re.findall(r'process \d pid (\d+)', log.read_text())]
      assert len(pids) == 2
      for pid in pids:
        os.kill(pid, signal.SIGTERM)
      out, _ = run.communicate(timeout=600)
    finally:
      if run.poll() is None:
        run.kill()
  assert run.returncode == 0, log.read_text()[-3000:]
  saved = os.listdir(workdir / 'checkpoints')
  assert len(saved) == 1 and (workdir / 'checkpoints' / saved[0] / 'commit_success.txt').exists()
  stopped = int(saved[0])
  assert 2 <= stopped < 8 and f'preempted (SIGTERM): saved step {stopped}' in out
  out = finish(1, workdir, *flags)
  assert f'resuming from step {stopped}' in out
  got = losses(workdir)
  assert sorted(got) == list(range(1, 9))
  assert got == pytest.approx(straight, rel=1e-5)
