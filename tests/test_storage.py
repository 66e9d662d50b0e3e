"""gs:// workdirs, data, exports and faults against a real GCS JSON API on 127.0.0.1.

The emulator (tests/emulator.py) is gcp-storage-emulator in a subprocess; nothing here
mocks a storage call. The CLI runs in subprocesses on one CPU device so that each
checkpoint is a few dozen objects.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import DATA, ROOT
from emulator import Emulator

LOCAL = os.path.join(ROOT, 'launch', 'local.py')
TINY = ['--config=configs/tiny.py', '--config.train.eval_batches=1']


@pytest.fixture(scope='module')
def gcs(tmp_path_factory):
  emulator = Emulator(tmp_path_factory.mktemp('gcs')).start()
  yield emulator
  emulator.stop()


def env_for(emulator, devices: int = 1) -> dict:
  return {**os.environ, **emulator.env, 'JAX_PLATFORMS': 'cpu',
          'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'}


def cli(emulator, *args, timeout=900):
  return subprocess.run([sys.executable, '-m', 'trainer', *args], cwd=ROOT, env=env_for(emulator),
                        capture_output=True, text=True, timeout=timeout)


def records(emulator, prefix: str) -> list[dict]:
  text = emulator.read(f'{prefix}/metrics.jsonl').decode()
  return [json.loads(line) for line in text.splitlines()]


def committed(emulator, prefix: str) -> list[int]:
  """Steps whose checkpoint holds orbax's commit marker, listed by google-cloud-storage."""
  names = emulator.objects(f'{prefix}/checkpoints/')
  return sorted(int(n.split('/')[-2]) for n in names
                if n.endswith('/commit_success.txt') and n.count('/') == prefix.count('/') + 3)


def test_missing_bucket_is_one_line_before_compiling(gcs, tmp_path):
  out = cli(gcs, 'train', *TINY, '--workdir=gs://no-such-bucket/run', timeout=300)
  assert out.returncode == 2, out.stderr
  assert out.stderr.count('\n') == 1
  assert out.stderr.startswith('error: --workdir=gs://no-such-bucket/run is not writable '
                               '(no such bucket)')
  assert 'compiled' not in out.stdout and 'model:' not in out.stdout
  out = cli(gcs, 'prepare', '--input', os.path.join(DATA, 'tinyshakespeare.txt'), '--output',
            'gs://no-such-bucket/data', '--tokenizer', 'byte', timeout=300)
  assert out.returncode == 2 and out.stderr.count('\n') == 1, out.stderr
  assert 'error: --output=gs://no-such-bucket/data is not writable' in out.stderr


def test_metrics_on_bucket_rewrite_and_trim(gcs, monkeypatch):
  for key, value in gcs.env.items():
    monkeypatch.setenv(key, value)
  from trainer import metrics, storage
  line = lambda step: json.dumps({'step': step, 'loss': 1.0 / step}) + '\n'
  writer = storage.Appendable('gs://bkt/m/metrics.jsonl')
  writer.append(line(1))
  writer.append(line(2))
  assert 'm/metrics.jsonl' not in gcs.objects('m/')  # Held back: one PUT per few seconds.
  writer.append(line(3), flush=True)
  writer.append(line(4))
  assert gcs.read('m/metrics.jsonl').decode() == line(1) + line(2) + line(3)
  writer.close()
  assert [r['step'] for r in metrics.read_records('gs://bkt/m')] == [1, 2, 3, 4]
  metrics.keep_until('gs://bkt/m', 2)  # What a resume from step 2 does.
  assert gcs.read('m/metrics.jsonl').decode() == line(1) + line(2)
  writer = storage.Appendable('gs://bkt/m/metrics.jsonl')
  writer.append(line(3))
  writer.close()
  assert gcs.read('m/metrics.jsonl').decode() == line(1) + line(2) + line(3)


# ---- one run on the bucket: kill -9, resume, report, export -----------------------------------

FLAGS = ['--config.train.steps=20', '--config.checkpoint.every=5', '--config.train.log_every=1']


@pytest.fixture(scope='module')
def bucket_run(gcs, tmp_path_factory):
  """(straight losses, stdout of the resume): a local uninterrupted run; the same run on
  gs://bkt/run killed with SIGKILL after a committed checkpoint, then resumed."""
  local = tmp_path_factory.mktemp('straight')
  out = cli(gcs, 'train', *TINY, *FLAGS, f'--workdir={local}')
  assert out.returncode == 0, out.stderr[-3000:]
  with open(local / 'metrics.jsonl') as f:
    straight = {r['step']: r['loss'] for r in map(json.loads, f)}
  proc = subprocess.Popen([sys.executable, '-m', 'trainer', 'train', *TINY, *FLAGS,
                           '--workdir=gs://bkt/run'], cwd=ROOT, env=env_for(gcs),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    while not committed(gcs, 'run'):
      assert proc.poll() is None, 'ended before a checkpoint: ' + proc.stderr.read()[-3000:]
      time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  killed_at = committed(gcs, 'run')[-1]
  assert killed_at < 20, 'the run finished before the kill'
  resumed = cli(gcs, 'train', *TINY, *FLAGS, '--workdir=gs://bkt/run')
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  return straight, resumed.stdout


@pytest.mark.slow
def test_kill_9_on_bucket_then_resume_is_bit_exact(gcs, bucket_run):
  straight, stdout = bucket_run
  assert 'resuming from step ' in stdout and 'gs://bkt/run/checkpoints/' in stdout
  start = int(stdout.split('resuming from step ')[1].split(':')[0])
  assert 5 <= start < 20 and 'step      1 |' not in stdout
  got = {r['step']: r['loss'] for r in records(gcs, 'run')}
  assert sorted(got) == list(range(1, 21))  # Trimmed at the checkpoint, no step twice.
  assert straight[start] != straight[start + 1]
  assert got == straight
  assert committed(gcs, 'run')[-1] == 20
  assert any(n.startswith('run/tb/events.out.tfevents') for n in gcs.objects('run/tb/'))
  assert json.loads(gcs.read('run/accounting.json'))['tokens_per_step'] > 0
  assert not any('gs:' in n for n in os.listdir(ROOT))  # No local directory named gs:.


@pytest.mark.slow
def test_report_on_bucket_workdir(gcs, bucket_run):
  out = cli(gcs, 'report', 'gs://bkt/run')
  assert out.returncode == 0, out.stderr
  assert 'steps       20' in out.stdout
  assert 'gs://bkt/run/plots/loss.png' in out.stdout
  assert gcs.read('run/plots/loss.png')[:8] == b'\x89PNG\r\n\x1a\n'
  assert gcs.read('run/plots/throughput.png')[:8] == b'\x89PNG\r\n\x1a\n'


@pytest.mark.slow
def test_export_to_bucket_and_init_from_it(gcs, bucket_run, tmp_path):
  straight, _ = bucket_run
  out = cli(gcs, 'export', '--workdir=gs://bkt/run', '--out=gs://bkt/hf')
  assert out.returncode == 0, out.stderr
  local = cli(gcs, 'export', '--workdir=gs://bkt/run', f'--out={tmp_path / "hf"}')
  assert local.returncode == 0, local.stderr
  assert gcs.read('hf/model.safetensors') == (tmp_path / 'hf/model.safetensors').read_bytes()
  assert json.loads(gcs.read('hf/config.json'))['n_layer'] == 2
  assert b'# Model card' in gcs.read('hf/MODEL_CARD.md')
  again = cli(gcs, 'export', '--workdir=gs://bkt/run', '--out=gs://bkt/hf')
  assert again.returncode == 2 and 'gs://bkt/hf already holds config.json' in again.stderr
  run = cli(gcs, 'train', *TINY, '--config.train.steps=1', '--config.init_from=hf:gs://bkt/hf',
            f'--workdir={tmp_path / "init"}')
  assert run.returncode == 0, run.stderr[-3000:]
  assert 'initialised from hf:gs://bkt/hf' in run.stdout
  with open(tmp_path / 'init/metrics.jsonl') as f:
    first = json.loads(f.readline())['loss']
  # Same seed, same first batch: the trained weights score it far better than a fresh init.
  assert first < straight[1] - 0.5


@pytest.mark.slow
def test_prepare_into_bucket_then_train_from_it(gcs):
  out = cli(gcs, 'prepare', '--input', os.path.join(DATA, 'tinyshakespeare.txt'), '--output',
            'gs://bkt/data/shakespeare', '--tokenizer', 'byte', '--separator', r'\n\n',
            '--min_length', '16')
  assert out.returncode == 0, out.stderr
  names = gcs.objects('data/shakespeare/')
  assert 'data/shakespeare/stats.json' in names and 'data/shakespeare/dataset_info.json' in names
  assert not any('incomplete' in n or 'write-test' in n for n in names)
  stats = json.loads(gcs.read('data/shakespeare/stats.json'))
  assert stats['documents_out'] > 100
  again = cli(gcs, 'prepare', '--input', os.path.join(DATA, 'tinyshakespeare.txt'), '--output',
              'gs://bkt/data/shakespeare', '--tokenizer', 'byte')
  assert again.returncode == 2 and 'already exists' in again.stderr
  run = cli(gcs, 'train', *TINY, '--config.train.steps=2',
            '--config.data.path=gs://bkt/data/shakespeare', '--workdir=gs://bkt/from-data')
  assert run.returncode == 0, run.stderr[-3000:]
  losses = [r['loss'] for r in records(gcs, 'from-data')]
  assert len(losses) == 2 and losses[0] > losses[1]


# Extending a run keeps every step's learning rate (a cosine horizon would move: exit 2).
CONSTANT_LR = ('--config.optim.schedule=constant', '--config.optim.warmup_steps=0')


@pytest.mark.slow
def test_two_processes_to_bucket_then_one_resumes(gcs):
  cmd = [sys.executable, LOCAL, '--processes', '2', '--devices-per-process', '1', '--', *TINY,
         '--config.train.steps=4', '--config.checkpoint.every=2', '--workdir=gs://bkt/two',
         *CONSTANT_LR]
  two = subprocess.run(cmd, cwd=ROOT, env=env_for(gcs), capture_output=True, text=True,
                       timeout=900)
  assert two.returncode == 0, two.stderr[-3000:]
  assert committed(gcs, 'two') == [2, 4]
  # One data position for every process count: rows consumed from the global order.
  assert 'two/checkpoints/4/position/metadata' in gcs.objects('two/checkpoints/4/position/')
  one = cli(gcs, 'train', *TINY, '--config.train.steps=6', '--workdir=gs://bkt/two', *CONSTANT_LR)
  assert one.returncode == 0, one.stderr[-3000:]
  assert 'resuming from step 4: gs://bkt/two/checkpoints/4' in one.stdout
  assert [r['step'] for r in records(gcs, 'two')] == [1, 2, 3, 4, 5, 6]


# ---- storage that goes away during a save ------------------------------------------------------

@pytest.mark.slow
def test_storage_lost_during_save_then_back(tmp_path):
  gcs = Emulator(tmp_path / 'gcs').start()  # Its own: this test stops it.
  try:
    proc = subprocess.Popen(
        [sys.executable, '-m', 'trainer', 'train', *TINY, '--config.train.steps=100000',
         '--config.checkpoint.every=5', '--workdir=gs://bkt/lost'], cwd=ROOT, env=env_for(gcs),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
      while not committed(gcs, 'lost'):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.2)
      gcs.stop()
      out, err = proc.communicate(timeout=1200)
    finally:
      if proc.poll() is None:
        proc.kill()
    assert proc.returncode == 1, err[-3000:]
    assert 'Traceback' not in err
    last = err.strip().splitlines()[-1]
    # The first write to meet the dead bucket fails the run: the checkpoint save or (seen
    # under load) the metrics line just before it. Either way the line names the last
    # committed checkpoint, where the run resumes.
    assert last.startswith(('error: gs://bkt/lost/checkpoints: saving step ',
                            'error: gs://bkt/lost/metrics.jsonl: cannot write (')), last
    gcs.start()  # Same port, same data directory: the bucket is back.
    good = committed(gcs, 'lost')[-1]
    said = last.split('; last committed checkpoint: gs://bkt/lost/checkpoints/')[1]
    assert int(said.split(';')[0]) == good
    assert last.endswith('; the run resumes from it once the storage is back')
    run = cli(gcs, 'train', *TINY, f'--config.train.steps={good + 1}',
              '--config.checkpoint.every=5', '--workdir=gs://bkt/lost')
    assert run.returncode == 0, run.stderr[-3000:]
    assert f'resuming from step {good}: gs://bkt/lost/checkpoints/{good}' in run.stdout
    assert records(gcs, 'lost')[-1]['step'] == good + 1
  finally:
    gcs.stop()
