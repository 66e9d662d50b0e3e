"""trainer plan: published training runs reproduced within 15%, memory fit, bad input."""
import json
import os

import pytest

from trainer import cli, config, model, plan

from conftest import ROOT


def run_plan(capsys, *args) -> dict:
  assert cli.main(['plan', *args, '--json']) == 0
  return json.loads(capsys.readouterr().out)


def within(value, published, tolerance=0.15):
  return abs(value - published) / published <= tolerance


def test_opt_175b_on_1024_a100s(capsys):
  """OPT: 147 TFLOP/s per GPU of hardware FLOPs with full remat, ~4.3e23 FLOPs, ~33 days."""
  hfu = 147e12 / 312e12
  p = run_plan(capsys, f'--config={ROOT}/configs/opt.py:opt-175b', '--hardware=a100-80gb',
               '--chips=1024', '--tokens=300e9', f'--hfu={hfu}', '--remat=full',
               '--config.train.batch_size=1024')
  assert p['params'] == 174_604_468_224
  assert within(p['hardware_flops'], 4.3e23) and within(p['days'], 33)
  # Model FLOPs (MFU) and hardware FLOPs (HFU) differ by the recomputed forward pass.
  assert p['model_flops'] < 0.8 * p['hardware_flops']
  assert within(p['model_flops'], 6 * p['params'] * 300e9, 0.05)
  assert p['mfu'] < p['hfu'] == pytest.approx(hfu)
  assert p['hardware_tflops_per_chip'] == pytest.approx(147)
  assert p['fits'] and p['memory']['mesh'] == {'data': 1, 'fsdp': 1024, 'tensor': 1}
  # Without remat the activations of 96 layers do not fit in 80 GB.
  no_remat = run_plan(capsys, f'--config={ROOT}/configs/opt.py:opt-175b', '--hardware=a100-80gb',
                      '--chips=1024', '--tokens=300e9', '--remat=none',
                      '--config.train.batch_size=1024')
  assert not no_remat['fits'] and no_remat['hardware_flops'] == no_remat['model_flops']


def test_llm_c_gpt2_xl_on_8_h100s(capsys):
  """llm.c: 2.8 s per 1,048,576-token step, 32B tokens, about 24 hours and $672 at $28/hour."""
  tokens_per_sec = 1_048_576 / 2.8
  args = [f'--config={ROOT}/configs/gpt2.py:gpt2-xl', '--hardware=h100', '--chips=8',
          '--tokens=32B', f'--price={28 / 8}']
  p = run_plan(capsys, *args, f'--tokens-per-sec={tokens_per_sec}')
  assert within(p['hours'], 24) and within(p['dollars'], 672)
  assert p['dollars_per_hour'] == pytest.approx(28)
  # The same run expressed as the MFU it implies gives the same plan.
  implied = p['mfu']
  assert 0.3 < implied < 0.7
  again = run_plan(capsys, *args, f'--mfu={implied}')
  assert again['hours'] == pytest.approx(p['hours']) and again['fits']


def test_gpt2_estimate_256_tpu_v3_at_8_dollars(capsys):
  p = run_plan(capsys, f'--config={ROOT}/configs/gpt2.py:gpt2-xl', '--hardware=tpu-v3',
               '--chips=256', '--tokens=10e9', '--price=8', '--config.train.batch_size=512',
               '--config.mesh.data=64')
  assert p['dollars_per_hour'] == 2048
  assert p['dollars'] == pytest.approx(2048 * p['hours'])
  # A v3 chip is two JAX devices: 256 chips are a 512-device mesh.
  assert p['memory']['mesh'] == {'data': 64, 'fsdp': 8, 'tensor': 1}
  assert p['kwh'] == pytest.approx(220 * 256 * p['hours'] * 1.1 / 1000)
  assert p['co2e_kg'] == pytest.approx(p['kwh'] * 0.429)


def test_hardware_flops_with_full_remat():
  cfg = config.load(os.path.join(ROOT, 'configs', 'gpt2.py') + ':gpt2')
  mcfg = model.ModelConfig.from_config(cfg.model)
  full = model.hardware_flops_per_token(mcfg, 1024, remat='full')
  dots = model.hardware_flops_per_token(mcfg, 1024, remat='dots')
  none = model.hardware_flops_per_token(mcfg, 1024, remat='none')
  assert none == model.flops_per_token(mcfg, 1024)
  assert 1.2 < full / none < 4 / 3 + 1e-9  # ~8ND/6ND; the LM head is not recomputed.
  assert dots - none == 4 * 12 * 768 * 1024  # The attention dots, forward once more.


@pytest.mark.parametrize('args,message', [
    (['--hardware=tpu-v9', '--chips=8', '--tokens=1e9'], 'unknown hardware .* known: tpu-v2'),
    (['--hardware=h100', '--chips=0', '--tokens=1e9'],
     r'--chips=0: must be an integer in \[1, 2\*\*31\)'),
    (['--hardware=h100', '--chips=-4', '--tokens=1e9'], '--chips=-4: must be an integer in'),
    (['--hardware=h100', '--chips=8', '--tokens=0'], '--tokens=0: must be a positive'),
    (['--hardware=h100', '--chips=8', '--tokens=lots'], '--tokens=lots: must be a positive'),
    (['--hardware=h100', '--chips=8', '--tokens=1e9', '--mfu=1.5'], '--mfu=1.5: must be'),
    (['--hardware=h100', '--chips=8', '--tokens=1e9', '--price=-1'],
     r'--price=-1: must be a number in \[0, inf\)'),
    (['--hardware=h100', '--chips=8', '--tokens=1e9', '--price=nan'], '--price=nan: must be'),
    ([f'--config={ROOT}/configs/opt.py:opt-175b', '--hardware=a100-40gb', '--chips=8',
      '--tokens=1e9'], 'cannot fit: .* need 349.3 GB per device .* use at least 70 chips'),
])
def test_bad_input_one_line_exit_2(capsys, args, message):
  import re
  assert cli.main(['plan', *args]) == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and re.search(message, err), err


def test_parse_count():
  assert plan.parse_count('300B', 'tokens') == 300e9
  assert plan.parse_count('1.5T', 'tokens') == 1.5e12
  assert plan.parse_count('32e9', 'tokens') == 32e9


def test_text_output(capsys):
  assert cli.main(['plan', '--hardware=tpu-v5e', '--chips=4', '--tokens=1e9']) == 0
  out = capsys.readouterr().out
  for word in ('parameters', 'MFU 40.0%', 'hours', '$', 'kWh', 't CO2e', 'fits'):
    assert word in out, word
