"""trainer/cpuflags.py: when the XLA:CPU flag is set; that it changes the program, not the math."""
import json
import os
import re
import subprocess
import sys

import pytest

from trainer import cli, cpuflags, hostmalloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SET = f'{cpuflags.FLAG}={cpuflags.VALUE}'


@pytest.mark.parametrize('env, expected', [
    ({'JAX_PLATFORMS': 'cpu'}, 'tuned'),
    ({'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}, 'tuned'),
    ({'JAX_PLATFORMS': 'cpu', 'TRAINER_XLA_CPU': 'default'}, 'off'),
    ({'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': f'{cpuflags.FLAG}=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'},
     'user settings'),
    ({'TRAINER_XLA_CPU': 'tuned'}, 'tuned'),
])
def test_decision(env, expected):
  assert cpuflags.decide(env) == expected == cpuflags.decide(env, 'float32')


def test_bfloat16_models_are_left_alone():
  # With the flag, YNNPACK's dot fusions take bfloat16 operands converted to float32.
  assert cpuflags.decide({'JAX_PLATFORMS': 'cpu'}, 'bfloat16') == 'not float32'
  assert cpuflags.decide({'TRAINER_XLA_CPU': 'tuned'}, 'bfloat16') == 'not float32'


def test_accelerator_hosts_and_unknown_jaxlibs_are_left_alone(monkeypatch):
  monkeypatch.setattr(hostmalloc, 'accelerator_host', lambda environ: True)
  assert cpuflags.decide({}) == 'accelerator host'
  assert cpuflags.decide({'TRAINER_XLA_CPU': 'tuned'}) == 'tuned'
  # An XLA that does not know the flag aborts the process: tuned or not, it is never set.
  monkeypatch.setattr(cpuflags, '_jaxlib', lambda: (0, 11))
  assert cpuflags.decide({'TRAINER_XLA_CPU': 'tuned'}) == 'jaxlib not known'


def test_apply_keeps_the_other_flags_and_sets_it_once():
  env = {'JAX_PLATFORMS': 'cpu', 'XLA_FLAGS': '--xla_force_host_platform_device_count=4'}
  assert cpuflags.apply('float32', env) == 'tuned'
  assert env['XLA_FLAGS'] == f'--xla_force_host_platform_device_count=4 {SET}'
  assert cpuflags.apply('float32', env) == 'user settings'  # Set already (a child of a `trainer`).
  assert env['XLA_FLAGS'].count(cpuflags.FLAG) == 1
  env = {'JAX_PLATFORMS': 'cpu'}
  assert cpuflags.apply('bfloat16', env) == 'not float32' and 'XLA_FLAGS' not in env
  assert cpuflags.apply('float32', env) == 'tuned' and env['XLA_FLAGS'] == SET


def test_a_bad_setting_is_one_line_and_exit_2(monkeypatch, capsys):
  monkeypatch.setenv('TRAINER_XLA_CPU', 'fast')
  monkeypatch.setattr(hostmalloc, 'apply', lambda: 'tuned')
  monkeypatch.setattr(cli, '_run', lambda argv: pytest.fail('the verb ran despite the bad setting'))
  assert cli.entry() == 2
  assert capsys.readouterr().err == (
      "error: TRAINER_XLA_CPU='fast': use default (XLA's own) or tuned, or leave it unset\n")


# nanoGPT's shape, smaller, the layer loop unrolled: three steps' losses, and how many of the
# compiled step's YNNPACK fusions hold a dot with other work.
_PROBE = r'''
import json, re, sys
import jax, numpy as np
from trainer import config, data, train
cfg = config.load('', {'model.vocab_size': '257', 'model.max_len': '64', 'model.embed_dim': '64',
                       'model.num_layers': '2', 'model.num_heads': '4', 'model.mlp_dim': '256',
                       'train.batch_size': '4', 'train.seq_len': '64', 'model.scan_unroll': '0',
                       'mesh.fsdp': '1', 'model.dropout': '0.0', 'model.embed_dropout': '0.0',
                       'model.attn_dropout': '0.0', 'model.remat': 'none'})
config.validate(cfg, 1)
setup = train.build(cfg, devices=jax.devices()[:1])
state, step = setup.init_state(0), setup.compile_train_step()
tokens = np.random.default_rng(0).integers(0, 257, (4, 65)).astype(np.int32)
losses = []
for _ in range(3):
  state, m = step(state, data.to_global(tokens, setup.batch_sharding))
  losses.append(float(m['loss']))
hlo = step.as_text()
bodies = dict(re.findall(r'\n%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}', hlo, re.S))
ynn = [re.search(r'calls=%?([\w.\-]+)', l).group(1) for l in hlo.splitlines() if '__ynn_fusion' in l]
company = lambda body: ' dot(' in body and len(re.findall(r' (?!parameter)\w+\(', body)) > 1
print(json.dumps({'losses': losses, 'dots_with_company': sum(company(bodies[c]) for c in ynn)}))
'''


def _probe(setting: str) -> dict:
  env = {**os.environ, 'TRAINER_XLA_CPU': setting, 'XLA_FLAGS': '', 'JAX_PLATFORMS': 'cpu'}
  code = f'from trainer import cpuflags; print(cpuflags.apply("float32"), flush=True)\n{_PROBE}'
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  decision, result = out.stdout.strip().splitlines()[-2:]
  return {'decision': decision, **json.loads(result)}


@pytest.mark.slow
def test_the_flag_fuses_around_the_dots_and_keeps_the_losses():
  tuned, off = _probe('tuned'), _probe('default')
  assert (tuned['decision'], off['decision']) == ('tuned', 'off')
  # The programs differ: YNNPACK takes reshapes, adds and scales in with the dots ...
  assert off['dots_with_company'] == 0 < tuned['dots_with_company']
  # ... and compute the same thing, to the last bit.
  assert tuned['losses'][0] > tuned['losses'][-1]
  assert tuned['losses'] == off['losses']
