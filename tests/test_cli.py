"""The real command line, in subprocesses, as a user runs it."""
import json
import os
import subprocess
import sys

from conftest import ROOT

ENV = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}


def trainer(*args, **kwargs):
  return subprocess.run([sys.executable, '-m', 'trainer', *args], cwd=ROOT, env=ENV,
                        capture_output=True, text=True, timeout=600, **kwargs)


def test_train_tiny_on_eight_devices(tmp_path):
  out = trainer('train', '--config=configs/tiny.py', f'--workdir={tmp_path}',
                '--config.mesh.fsdp=4', '--config.mesh.tensor=2', '--config.train.sample_tokens=20')
  assert out.returncode == 0, out.stderr
  lines = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [l['step'] for l in lines] == list(range(1, 21))
  assert lines[-1]['loss'] < lines[0]['loss'] - 1.0
  assert "'fsdp': 4, 'tensor': 2" in out.stdout and '--- sample ---' in out.stdout


def test_info_json_for_opt_175b_without_allocating():
  out = trainer('info', '--config=configs/opt.py:opt-175b', '--json', '--config.mesh.tensor=8',
                '--config.mesh.fsdp=1')
  assert out.returncode == 0, out.stderr
  report = json.loads(out.stdout)
  assert report['params'] == 174_604_468_224
  assert report['mesh'] == {'data': 1, 'fsdp': 1, 'tensor': 8}
  assert report['partition_specs']['h/mlp/c_fc_kernel']['shape'] == [96, 12288, 49152]
  assert report['partition_specs']['h/mlp/c_fc_kernel']['spec'] == [None, 'fsdp', 'tensor']
  assert report['flops_per_token'] > 6 * report['params']
