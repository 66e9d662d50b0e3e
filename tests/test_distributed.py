"""Multi-host start-up: flag checks, cluster detection, and the CLI's exit code on bad flags."""
import pytest

from test_cli import trainer
from trainer import distributed
from trainer.config import ConfigError


@pytest.mark.parametrize('settings, words', [
    (distributed.Settings(coordinator='10.0.0.1:8476'), 'go together'),
    (distributed.Settings(num_processes=2, process_id=0), 'go together'),
    (distributed.Settings('10.0.0.1', 2, 0), 'HOST:PORT'),
    (distributed.Settings('10.0.0.1:8476', 2, 2), 'must be in 0..1'),
    (distributed.Settings(heartbeat_timeout=0), 'positive'),
])
def test_bad_flag_combinations(settings, words):
  with pytest.raises(ConfigError, match=words):
    distributed.check(settings)


def test_one_process_is_a_no_op(monkeypatch):
  for var in ('SLURM_JOB_ID', 'SLURM_NTASKS'):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setattr(distributed.glob, 'glob', lambda pattern: [])
  assert distributed.initialize(distributed.Settings()) == ''


def test_slurm_detected_only_with_several_tasks(monkeypatch):
  monkeypatch.setattr(distributed.glob, 'glob', lambda pattern: [])
  monkeypatch.setenv('SLURM_JOB_ID', '42')
  monkeypatch.setenv('SLURM_NTASKS', '1')
  assert distributed.detected_cluster() == ''
  monkeypatch.setenv('SLURM_NTASKS', '16')
  assert distributed.detected_cluster() == 'slurm'


def test_tpu_vm_detected_by_its_chips_and_libtpu(monkeypatch):
  monkeypatch.delenv('SLURM_JOB_ID', raising=False)
  monkeypatch.setattr(distributed.glob, 'glob', lambda p: ['/dev/vfio/0'] if 'vfio' in p else [])
  monkeypatch.setattr(distributed.importlib.util, 'find_spec', lambda name: None)
  assert distributed.detected_cluster() == ''   # VFIO devices without libtpu: not a TPU VM.
  monkeypatch.setattr(distributed.importlib.util, 'find_spec', lambda name: object())
  assert distributed.detected_cluster() == 'tpu'


def test_cli_rejects_half_the_flags_with_exit_2():
  out = trainer('train', '--config=configs/tiny.py', '--coordinator=127.0.0.1:1234')
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == [
      'error: --coordinator, --num_processes and --process_id go together; give all three '
      '(e.g. --coordinator=10.0.0.1:8476 --num_processes=2 --process_id=0)']


def test_slurm_one_process_per_node_drives_all_its_gpus(monkeypatch):
  monkeypatch.setenv('SLURM_GPUS_ON_NODE', '8')
  monkeypatch.setenv('SLURM_NTASKS_PER_NODE', '1')
  assert distributed._slurm_node_devices() == list(range(8))
  monkeypatch.setenv('SLURM_NTASKS_PER_NODE', '8')   # One per GPU: JAX's own choice.
  assert distributed._slurm_node_devices() is None
