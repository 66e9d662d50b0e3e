"""Benchmark scripts whose real cases need hardware CI lacks still run end to end here."""
import os
import re
import subprocess
import sys

from conftest import ROOT


def test_gpu_script_runs_its_smoke_case_and_reports_mfu():
  """benchmarks/gpu.sh --smoke: the tiny model on the CPU, through the same throughput.py."""
  env = {**os.environ, 'PYTHON': sys.executable}
  out = subprocess.run(['bash', 'benchmarks/gpu.sh', '--smoke'], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
  rows = re.findall(r'^\| tiny \| bfloat16 \| ([\d,]+) \| ([\d.]+) \| ([\d.]+)% \|', out.stdout, re.M)
  assert len(rows) == 1, out.stdout
  tokens_per_sec, step_s, mfu = float(rows[0][0].replace(',', '')), float(rows[0][1]), float(rows[0][2])
  assert tokens_per_sec > 0 and step_s > 0 and 0 < mfu < 100
  assert 'overrides: model.attention=xla' in out.stdout
