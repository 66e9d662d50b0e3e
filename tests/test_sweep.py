"""Sweeps: sweep files, point names, dry runs, budget and fit checks, the report and scaling fit;
end to end on CPU (the 4-point sweep killed and re-run, two workers, pruning)."""
import contextlib
import csv
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT
from trainer import cli
from trainer.sweep import results, runner, spec

TINY_LR = os.path.join(ROOT, 'configs', 'sweeps', 'tiny_lr.py')
FAST = {'train.eval_batches': 1, 'log.tensorboard': False, 'log.progress': 'lines'}


def sweep_file(tmp_path, body: dict, name='s.py') -> str:
  path = tmp_path / name
  path.write_text('from trainer.sweep import *\n\ndef get_sweep():\n  return ' + repr(body) + '\n')
  return str(path)


def main(*argv):
  """``trainer ARGV`` in this process: (exit code, stdout, stderr)."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = cli.main(list(argv))
  return code, out.getvalue(), err.getvalue()


def run_sweep(*args, **popen):
  return subprocess.Popen([sys.executable, '-m', 'trainer', 'sweep', *args], cwd=ROOT,
                          env={**os.environ, 'JAX_PLATFORMS': 'cpu'}, text=True, **popen)


def rows(sweepdir) -> dict:
  with open(os.path.join(sweepdir, 'results.csv')) as f:
    return {r['name']: r for r in csv.DictReader(f)}


def snapshot(workdir) -> dict:
  """Every file's mtime in a workdir, and its checkpoint steps."""
  files = {}
  for root, _, names in os.walk(workdir):
    for n in names:
      files[os.path.join(root, n)] = os.stat(os.path.join(root, n)).st_mtime_ns
  steps = sorted(os.listdir(os.path.join(workdir, 'checkpoints')))
  return {'files': files, 'steps': steps}


def wait_for(condition, proc, timeout=900, what=''):
  for _ in range(int(timeout / 0.5)):
    if condition():
      return
    assert proc.poll() is None, f'sweep exited ({proc.returncode}) before {what}'
    time.sleep(0.5)
  raise AssertionError(f'timed out waiting for {what}')


# --- declaring ---------------------------------------------------------------------------------
def test_point_names_are_readable_stable_and_shortened():
  keys = ['optim.lr', 'model.embed_dim', 'seed']
  assert spec.name_of({'optim.lr': 3e-4, 'model.embed_dim': 256, 'seed': 1}, keys) == \
      'lr=3e-4,embed_dim=256,seed=1'
  assert spec.name_of({'optim.lr': 0.05, 'model.embed_dim': 64, 'seed': 0}, keys) == \
      'lr=0.05,embed_dim=64,seed=0'
  # Clashing last parts keep the whole key.
  assert spec.short_keys(['model.dropout', 'attn.dropout', 'optim.lr'])['optim.lr'] == 'lr'
  assert spec.short_keys(['model.dropout', 'x.dropout'])['x.dropout'] == 'x.dropout'
  long_keys = [f'model.k{i}' for i in range(20)]
  a = spec.name_of({k: 1000 + i for i, k in enumerate(long_keys)}, long_keys)
  b = spec.name_of({k: 1000 + i + (i == 19) for i, k in enumerate(long_keys)}, long_keys)
  assert len(a) == spec.MAX_NAME and len(b) == spec.MAX_NAME and a != b
  assert a[:spec.MAX_NAME - 9] == b[:spec.MAX_NAME - 9]  # Same readable start, different hash.
  assert a == spec.name_of({k: 1000 + i for i, k in enumerate(long_keys)}, long_keys)


@pytest.mark.parametrize('name', sorted(n for n in os.listdir(os.path.join(ROOT, 'configs', 'sweeps'))
                                         if n.endswith('.py')))
def test_every_shipped_sweep_file_loads_and_validates(name):
  sweep = spec.load(os.path.join('configs', 'sweeps', name))
  points = spec.points(sweep)
  spec.check(sweep, points, 8)
  assert len(points) == 4
  if name == 'tiny_sizes.py':
    assert sweep.wants_fit()
    sizes = [spec.point_config(sweep, p).model.embed_dim for p in points]
    assert sizes == sorted(set(sizes))      # Four different sizes, for the fit.


def test_grid_zip_and_seeds_make_every_combination(tmp_path):
  path = sweep_file(tmp_path, {'config': 'configs/tiny.py',
                               'zip': {'model.embed_dim': [32, 64], 'optim.lr': [4e-3, 2e-3]},
                               'grid': {'train.batch_size': [8, 16]}, 'seeds': [0, 1]})
  points = spec.points(spec.load(path))
  assert len(points) == 2 * 2 * 2
  assert points[0].name == 'embed_dim=32,lr=4e-3,batch_size=8,seed=0'
  assert points[-1].overrides == {'model.embed_dim': 64, 'optim.lr': 2e-3,
                                  'train.batch_size': 16, 'seed': 1}


def test_random_and_tpe_draws_are_seeded(tmp_path):
  space = {'optim.lr': spec.Distribution('log_uniform', 1e-4, 1e-1),
           'model.num_layers': spec.Distribution('integer', 1, 4),
           'optim.schedule': spec.Distribution('choice', values=('cosine', 'linear'))}
  draws = {}
  for kind in ('random', 'tpe'):
    for seed in (0, 1):
      path = sweep_file(tmp_path, {'config': 'configs/tiny.py', kind: space, 'count': 5,
                                   'seed': seed}, name=f'{kind}{seed}.py')
      draws[kind, seed] = [p.overrides for p in spec.points(spec.load(path))]
      assert draws[kind, seed] == [p.overrides for p in spec.points(spec.load(path))]
  assert draws['random', 0] != draws['random', 1]
  assert draws['tpe', 0] != draws['tpe', 1]
  for point in draws['random', 0]:
    assert 1e-4 <= point['optim.lr'] <= 1e-1 and point['model.num_layers'] in (1, 2, 3, 4)
    assert point['optim.lr'] == float(f"{point['optim.lr']:.4g}")  # As its name shows it.


def test_dry_run_lists_points_and_exact_commands(tmp_path):
  code, out, err = main('sweep', TINY_LR, f'--workdir={tmp_path / "sw"}', '--dry-run')
  assert code == 0, err
  names = ['lr=1e-3', 'lr=3e-3', 'lr=0.01', 'lr=0.03']
  for i, name in enumerate(names, 1):
    assert f'[{i}/4] {name}\n' in out
  line = next(l.strip() for l in out.splitlines() if "--workdir=" in l and 'lr=3e-3' in l)
  assert line.startswith('trainer train --config=configs/tiny.py --config.train.steps=40')
  assert line.endswith(f"--config.optim.lr=0.003 --workdir={tmp_path / 'sw' / 'lr=3e-3'}")
  assert not (tmp_path / 'sw').exists()  # A dry run writes nothing.
  code, slurm, _ = main('sweep', TINY_LR, '--workdir=/shared/sw', '--dry-run',
                        '--launcher=slurm', '--launcher-args=--nodes=1 --partition=gpu')
  assert code == 0
  cmd = next(l.strip() for l in slurm.splitlines() if 'lr=0.03' in l and 'slurm' in l)
  assert cmd.startswith('python launch/slurm.py --nodes=1 --partition=gpu -- --config=')
  # The printed launcher command itself works (dry-run, as tests/test_launch.py runs it).
  argv = shlex.split(cmd)[2:]
  argv.insert(argv.index('--'), '--dry-run')
  out = subprocess.run([sys.executable, os.path.join(ROOT, 'launch', 'slurm.py'), *argv],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  assert '--config.optim.lr=0.03' in out.stdout and 'sbatch /shared/sw/lr=0.03/slurm_job.sh' in out.stdout
  code, tpu, _ = main('sweep', TINY_LR, '--workdir=/shared/sw', '--dry-run', '--launcher=tpu',
                      '--launcher-args=--name=sw --zone=us-central2-b --type=v4-8')
  cmds = [shlex.split(l.strip()) for l in tpu.splitlines() if 'tpu_pod.py' in l]
  assert len(cmds) == 4 and len({c[2] for c in cmds}) == 4   # One TPU VM name per point.
  argv = cmds[3][2:]
  argv.insert(argv.index('--'), '--dry-run')
  out = subprocess.run([sys.executable, os.path.join(ROOT, 'launch', 'tpu_pod.py'), *argv],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  assert f'tpu-vm create {cmds[3][2][7:]} --zone=us-central2-b' in out.stdout
  assert '--config.optim.lr=0.03' in out.stdout


@pytest.mark.parametrize('body, message', [
    ({'config': 'configs/tiny.py', 'grid': {'optim.lr': [1e-3]}, 'gird': {}},
     "unknown sweep key 'gird'"),
    ({'config': 'configs/tiny.py', 'grid': {'optim.lr': []}}, "grid['optim.lr'] is empty"),
    ({'config': 'configs/tiny.py'}, 'no axes'),
    # The rest of these messages is trainer.config's, whatever its wording.
    ({'config': 'configs/tiny.py', 'grid': {'optim.lrr': [1e-3]}}, "point lrr=1e-3: "),
    ({'config': 'configs/tiny.py', 'grid': {'model.num_heads': [4, 5]}},
     'point num_heads=5: --config.model.'),
    ({'config': 'configs/tiny.py', 'grid': {'optim.lr': ['fast']}}, 'point lr=fast: '),
    ({'config': 'configs/tiny.py', 'zip': {'optim.lr': [1e-3, 2e-3], 'seed': [1]}},
     'zip axes have different lengths'),
    ({'config': 'configs/tiny.py', 'grid': {'optim.lr': [1e-3]}, 'fixed': {'optim.lr': 1e-3}},
     "'optim.lr' is both fixed and swept"),
    ({'config': 'configs/tiny.py', 'random': {'optim.lr': [1e-3]}, 'count': 2},
     "random['optim.lr'] must be a distribution"),
    ({'config': 'configs/nope.py', 'grid': {'optim.lr': [1e-3]}}, "no such file 'configs/nope.py'"),
])
def test_bad_sweep_files_are_one_line_exit_2_before_anything_runs(tmp_path, body, message):
  path = sweep_file(tmp_path, body)
  code, out, err = main('sweep', path, f'--workdir={tmp_path / "sw"}')
  assert code == 2
  assert err.startswith('error: ') and err.count('\n') == 1, err
  assert message in err, err
  assert not (tmp_path / 'sw').exists()


def test_bad_sweep_flags_and_files(tmp_path):
  (tmp_path / 'nofn.py').write_text('X = 1\n')
  assert 'defines no get_sweep()' in main('sweep', str(tmp_path / 'nofn.py'), '--workdir=x')[2]
  for flags, message in ((['--check-fit'], '--check-fit and --topology go together'),
                         (['--budget=-1'], '--budget=-1: must be a number in [0, inf)'),
                         (['--parallel=0'], '--parallel=0: must be an integer in [1, 2**31)'),
                         (['--config.train.steps=3'], "put them in the sweep file's 'fixed'")):
    code, _, err = main('sweep', TINY_LR, f'--workdir={tmp_path / "sw"}', *flags)
    assert code == 2 and message in err and err.count('\n') == 1, err
  code, _, err = main('sweep-report', str(tmp_path / 'missing'))
  assert code == 2 and 'has no sweep.json' in err


# --- budget and check-fit (nothing trains) ----------------------------------------------------
def test_budget_stops_launching_and_says_so(tmp_path):
  path = sweep_file(tmp_path, {'config': 'configs/tiny.py', 'fixed': FAST,
                               'grid': {'optim.lr': [1e-3, 2e-3, 3e-3]}})
  sw = tmp_path / 'sw'
  code, out, err = main('sweep', path, f'--workdir={sw}', '--budget=1e-9', '--devices-per-point=1')
  assert code == 0, err
  assert 'sweep: budget $0.0000 reached: spent $0.0000' in err
  assert 'projected for lr=1e-3 would pass it; launching no more points' in err
  table = rows(sw)
  assert [r['status'] for r in table.values()] == ['skipped'] * 3
  assert all('budget' in r['reason'] for r in table.values())
  assert not (sw / 'lr=1e-3').exists()
  # A later sweep with a budget that allows it would launch them: skips by budget are not final.
  from trainer.sweep import worker
  sweep = spec.load(path)
  study = runner.open_study(sweep, runner.storage_url(runner.Options(workdir=str(sw))))
  w = worker.Worker(sweep, runner.Options(workdir=str(sw)), study, spec.points(sweep))
  groups = runner.group_by_name(study.get_trials())
  assert [p.name for p in w.todo(groups)] == ['lr=1e-3', 'lr=2e-3', 'lr=3e-3']


def test_budget_prices_the_next_point_from_what_points_measured(tmp_path):
  from conftest import tiny_config
  from trainer.sweep import budget
  fake_point(tmp_path, 'a', 1e6, [5.0, 4.0], 4.0)     # 2,000 tokens, $0.02 spent: $1e-11 / FLOP.
  fake_point(tmp_path, 'b', 1e6, [5.0], 5.0, projected=0.02)  # Running: $0.01 spent, $0.01 to come.
  records = {str(tmp_path / n): runner.read_records(str(tmp_path / n)) for n in 'ab'}
  cfg = tiny_config(**{'train.steps': 10})
  cost = 1e-11 * budget.point_flops(cfg)
  assert budget.point_flops(tiny_config(**{'train.steps': 20})) == 2 * budget.point_flops(cfg)
  spent, ahead = 0.03, 0.01
  assert budget.Budget(spent + ahead + cost * 1.01, True).check(
      cfg, 'c', records, [str(tmp_path / 'b')]) == ''
  b = budget.Budget(spent + ahead + cost * 0.99, True)
  reason = b.check(cfg, 'c', records, [str(tmp_path / 'b')])
  assert reason == b.stopped and reason.startswith(
      f'budget ${spent + ahead + cost * 0.99:,.4f} reached: spent $0.0300 + $0.0100 still to come')
  assert f'${cost:,.4f} projected for c would pass it' in reason


def test_check_fit_skips_points_that_do_not_fit(tmp_path, monkeypatch):
  path = sweep_file(tmp_path, {'config': 'configs/tiny.py', 'fixed': FAST,
                               'grid': {'model.embed_dim': [64, 128]}})
  compiled = []

  def fake_compile(sweep, point, topology):
    compiled.append((point.name, topology))
    if point.overrides['model.embed_dim'] == 128:
      return False, f'does not fit {topology}: peak 40.00 GiB of 31.25 GiB per device'
    return True, ''
  monkeypatch.setattr(runner, 'compile_fit', fake_compile)
  sw = tmp_path / 'sw'
  code, _, err = main('sweep', path, f'--workdir={sw}', '--check-fit', '--topology=v4-128',
                      '--budget=0', '--devices-per-point=1')
  assert code == 0, err
  assert compiled == [('embed_dim=64', 'v4-128'), ('embed_dim=128', 'v4-128')]
  table = rows(sw)
  assert table['embed_dim=128']['status'] == 'skipped'
  assert table['embed_dim=128']['reason'] == 'does not fit v4-128: peak 40.00 GiB of 31.25 GiB per device'
  assert 'budget' in table['embed_dim=64']['reason']   # It fits; the zero budget held it back.


# --- claiming ------------------------------------------------------------------------------------
def test_claiming_lowest_trial_wins_and_stale_trials_are_taken_over(tmp_path):
  from trainer.sweep import worker
  path = sweep_file(tmp_path, {'config': 'configs/tiny.py', 'grid': {'optim.lr': [1e-3, 2e-3]}})
  sweep = spec.load(path)
  points = spec.points(sweep)
  opts = runner.Options(workdir=str(tmp_path / 'sw'), heartbeat_s=1)
  (tmp_path / 'sw').mkdir()
  url = runner.storage_url(opts)
  one, two = (worker.Worker(sweep, opts, runner.open_study(sweep, url, 1), points)
              for _ in range(2))
  first = one.claim(points[0])
  assert first is not None
  assert two.claim(points[0]) is None       # Taken: the later trial gives way ...
  trials = two.study.get_trials()
  assert [t.user_attrs.get('status') for t in trials] == [None, 'duplicate']
  groups = runner.group_by_name(trials)
  assert [p.name for p in two.todo(groups)] == ['lr=2e-3']   # ... and is ignored.
  assert runner.point_status(groups['lr=1e-3']) == ('running', '')
  time.sleep(4.5)                           # No heartbeat for 3 x 1 s: the trial is stale.
  runner.optuna_module().storages.fail_stale_trials(two.study)
  groups = runner.group_by_name(two.study.get_trials())
  assert [p.name for p in two.todo(groups)] == ['lr=1e-3', 'lr=2e-3']
  taken = two.claim(points[0])
  assert taken is not None and taken != first
  assert runner.point_status(runner.group_by_name(two.study.get_trials())['lr=1e-3'])[0] == 'running'


def test_tpe_asks_count_points_and_no_more(tmp_path):
  from trainer.sweep import worker
  path = sweep_file(tmp_path, {'config': 'configs/tiny.py', 'count': 2,
                               'tpe': {'optim.lr': spec.Distribution('log_uniform', 1e-4, 1e-2)}})
  sweep = spec.load(path)
  opts = runner.Options(workdir=str(tmp_path / 'sw'))
  (tmp_path / 'sw').mkdir()
  study = runner.open_study(sweep, runner.storage_url(opts), sampler=runner.make_sampler(sweep))
  w = worker.Worker(sweep, opts, study, [])
  got = [w._ask_tpe(), w._ask_tpe()]
  assert all(g is not None for g in got) and got[0][0].name != got[1][0].name
  assert not w._tpe_room(runner.group_by_name(study.get_trials()))
  assert w._ask_tpe() is None               # A third would pass the count.
  # A killed worker's TPE point is known by name and overrides from its trial.
  w._finish(got[0][1], 'FAIL')
  groups = runner.group_by_name(study.get_trials())
  assert [p.name for p in w.todo(groups)] == [got[0][0].name]
  assert w.todo(groups)[0].overrides == got[0][0].overrides


# --- report and fit ---------------------------------------------------------------------------
def test_power_law_fit_recovers_known_parameters():
  compute = np.geomspace(1e15, 1e19, 6)
  a, b, c = 300.0, -0.12, 1.7
  fit = results.fit_power_law(list(compute), list(a * compute**b + c))
  assert fit['a'] == pytest.approx(a, rel=1e-4)
  assert fit['b'] == pytest.approx(b, rel=1e-4)
  assert fit['c'] == pytest.approx(c, rel=1e-4)
  assert fit['loss_at_10x'] == pytest.approx(a * 1e20**b + c, rel=1e-6)
  with pytest.raises(results.ConfigError, match='at least 3'):
    results.fit_power_law([1e15, 1e16], [3.0, 2.5])


def fake_point(sweepdir, name, per_token, losses, eval_loss, tokens_per_step=1000, projected=None):
  workdir = sweepdir / name
  workdir.mkdir(parents=True)
  lines = []
  for i, loss in enumerate(losses, 1):
    r = {'step': i, 'loss': loss, 'tokens': i * tokens_per_step, 'tokens_per_sec': 100.0 * i,
         'mfu': 0.1, 'dollars': 0.01 * i, 'kwh': 0.001 * i, 'co2e_kg': 0.0004 * i,
         'projected_dollars': projected or 0.01 * len(losses)}
    if i == len(losses):
      r['eval_loss'] = eval_loss
    lines.append(json.dumps(r))
  (workdir / 'metrics.jsonl').write_text('\n'.join(lines) + '\n')
  (workdir / 'accounting.json').write_text(json.dumps({'model_flops_per_token': per_token}))


def test_report_table_csv_plots_and_scaling_fit(tmp_path):
  """Four model sizes whose final eval losses follow a known power law in compute."""
  a, b, c = 50.0, -0.1, 1.2
  sw = tmp_path / 'sw'
  sizes = [32, 64, 128, 256]
  path = sweep_file(tmp_path, {'config': 'configs/tiny.py', 'grid': {'model.embed_dim': sizes}})
  sweep = spec.load(path)
  points = spec.points(sweep)
  sw.mkdir()
  url = runner.storage_url(runner.Options(workdir=str(sw)))
  from trainer.sweep import commands, worker
  commands.write_meta(sweep, runner.Options(workdir=str(sw)), url, points)
  study = runner.open_study(sweep, url)
  w = worker.Worker(sweep, runner.Options(workdir=str(sw)), study, points)
  expected = {}
  for i, point in enumerate(points):
    per_token = 1e6 * 4**i
    compute = per_token * 3000
    expected[point.name] = a * compute**b + c
    fake_point(sw, point.name, per_token, [6.0, 5.0, 4.0 + i / 10], expected[point.name])
    w._finish(w.claim(point), 'COMPLETE', expected[point.name])
  pruned = spec.make_point(sweep, {'model.embed_dim': 512})  # Not planned: named by a trial.
  fake_point(sw, pruned.name, 1e9, [6.0, 5.9], 5.9)
  w._finish(w.claim(pruned), 'PRUNED')
  code, out, err = main('sweep-report', str(sw))
  assert code == 0, err
  table = rows(sw)
  with open(sw / 'results.csv') as f:
    header = f.readline().strip().split(',')
  assert header[:11] == ['name', 'status', 'steps', 'tokens', 'final_loss', 'eval_loss',
                         'tokens_per_sec', 'mfu', 'dollars', 'kwh', 'co2e_kg']
  assert list(table) == ['embed_dim=32', 'embed_dim=64', 'embed_dim=128', 'embed_dim=256',
                         'embed_dim=512']
  assert [r['status'] for r in table.values()] == ['done'] * 4 + ['pruned']
  assert float(table['embed_dim=256']['eval_loss']) == pytest.approx(expected['embed_dim=256'])
  assert table['embed_dim=64']['steps'] == '3' and table['embed_dim=64']['dollars'] == '0.03'
  assert float(table['embed_dim=64']['compute_flops']) == 4e6 * 3000
  md = (sw / 'results.md').read_text()
  assert '| **best** | embed_dim=256 | 256 | done |' in md   # The largest has the lowest loss.
  fit = json.loads((sw / 'results.json').read_text())['fit']
  assert fit['a'] == pytest.approx(a, rel=1e-3) and fit['b'] == pytest.approx(b, rel=1e-3)
  assert fit['c'] == pytest.approx(c, rel=1e-3)
  assert f"it predicts loss {fit['loss_at_10x']:.4f}" in out
  for png in ('final_loss_vs_embed_dim.png', 'loss_curves.png', 'scaling_fit.png'):
    data = (sw / 'plots' / png).read_bytes()
    assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 5000, png


# --- end to end ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_four_point_sweep_killed_and_rerun_finishes_only_what_is_missing(tmp_path):
  sw = str(tmp_path / 'sw')
  args = [TINY_LR, f'--workdir={sw}', '--parallel=2', '--heartbeat=1']
  names = ['lr=1e-3', 'lr=3e-3', 'lr=0.01', 'lr=0.03']
  log = open(tmp_path / 'first.log', 'w')
  first = run_sweep(*args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
  done = lambda n: runner.finished(os.path.join(sw, n), 40, 'eval_loss')
  ckpt = lambda n: os.path.isdir(os.path.join(sw, n, 'checkpoints', '10'))
  try:
    wait_for(lambda: sum(bool(done(n)) for n in names) >= 1 and
             any(ckpt(n) and not done(n) for n in names), first, what='one done, one part-way')
  finally:
    os.killpg(first.pid, signal.SIGKILL)   # The sweep and its trainer processes, at once.
    first.wait(timeout=60)
  finished = [n for n in names if done(n)]
  partial = [n for n in names if ckpt(n) and not done(n)]
  assert finished and partial, (finished, partial)
  before = {n: snapshot(os.path.join(sw, n)) for n in finished}
  assert '4 devices' in open(os.path.join(sw, finished[0], 'train.log')).read()  # 8 split by 2.

  second = run_sweep(*args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  out, _ = second.communicate(timeout=900)
  assert second.returncode == 0, out[-3000:]
  for n in finished:   # Not re-run: same checkpoint steps, no file touched.
    assert snapshot(os.path.join(sw, n)) == before[n], n
    assert f'{n}: started' not in out
  for n in partial:    # Resumed from its own checkpoint.
    assert 'resuming from step' in open(os.path.join(sw, n, 'train.log')).read()
  table = rows(sw)
  assert list(table) == names and all(r['status'] == 'done' for r in table.values())
  losses = [float(table[n]['eval_loss']) for n in names]
  assert len(set(losses)) == 4 and all(2.0 < l < 6.0 for l in losses)
  best = names[int(np.argmin(losses))]
  assert f'| **best** | {best} |' in (tmp_path / 'sw' / 'results.md').read_text()
  for n in names:
    assert int(table[n]['steps']) == 40 and float(table[n]['dollars']) > 0
    assert float(table[n]['tokens_per_sec']) > 0
  assert (tmp_path / 'sw' / 'plots' / 'final_loss_vs_lr.png').exists()
  assert (tmp_path / 'sw' / 'plots' / 'loss_curves.png').exists()


@pytest.mark.slow
def test_two_workers_share_one_study_without_running_a_point_twice(tmp_path):
  path = sweep_file(tmp_path, {'config': 'configs/tiny.py',
                               'fixed': {**FAST, 'train.steps': 6, 'train.eval_every': 3},
                               'grid': {'optim.lr': [1e-3, 3e-3]}})
  sw = tmp_path / 'sw'
  storage = f'sqlite:///{tmp_path / "shared.db"}'
  args = [path, f'--workdir={sw}', f'--storage={storage}', '--devices-per-point=1']
  workers = [run_sweep(*args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
  outs = [w.communicate(timeout=900)[0] for w in workers]
  assert [w.returncode for w in workers] == [0, 0], outs
  started = [line.split(':')[1].strip() for o in outs for line in o.splitlines()
             if line.startswith('sweep: ') and ': started (' in line]
  assert sorted(started) == ['lr=1e-3', 'lr=3e-3'], outs   # Each point launched exactly once.
  for name in ('lr=1e-3', 'lr=3e-3'):
    assert open(sw / name / 'train.log').read().count('model: ') == 1
  study = runner.optuna_module().load_study(study_name='s', storage=storage)
  complete = [t.user_attrs['name'] for t in study.get_trials() if t.state.name == 'COMPLETE']
  assert sorted(complete) == ['lr=1e-3', 'lr=3e-3']
  assert all(r['status'] == 'done' for r in rows(sw).values())


@pytest.mark.slow
def test_pruning_stops_the_point_with_an_absurd_learning_rate(tmp_path):
  path = sweep_file(tmp_path, {
      'config': 'configs/tiny.py',
      'fixed': {**FAST, 'train.eval_every': 4, 'checkpoint.every': 0},
      'zip': {'optim.lr': [3e-3, 1e-7], 'train.steps': [8, 400]}})
  sw = tmp_path / 'sw'
  proc = run_sweep(path, f'--workdir={sw}', '--prune=median', '--devices-per-point=1',
                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  out, _ = proc.communicate(timeout=900)
  assert proc.returncode == 0, out[-3000:]
  table = rows(sw)
  good, bad = table['lr=3e-3,steps=8'], table['lr=1e-7,steps=400']
  assert good['status'] == 'done' and bad['status'] == 'pruned', table
  assert 'lr=1e-7,steps=400: pruned at step' in out
  records = runner.read_records(str(sw / 'lr=1e-7,steps=400'))
  evals = [r['eval_loss'] for r in records if 'eval_loss' in r]
  good_evals = [r['eval_loss'] for r in runner.read_records(str(sw / 'lr=3e-3,steps=8'))
                if 'eval_loss' in r]
  assert evals[0] > good_evals[0] + 0.2      # It was losing when it was stopped.
  assert 4 <= int(bad['steps']) < 400       # Stopped early ...
  ckpts = os.listdir(sw / 'lr=1e-7,steps=400' / 'checkpoints')
  assert [int(s) for s in ckpts] == [int(bad['steps'])]   # ... with its checkpoint saved (SIGTERM).
  study = runner.optuna_module().load_study(study_name='s', storage=f'sqlite:///{sw}/sweep.db')
  pruned = next(t for t in study.get_trials() if t.state.name == 'PRUNED')
  assert pruned.intermediate_values[4] == pytest.approx(evals[0])
