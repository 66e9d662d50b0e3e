"""Where one train step's time goes: a jax.profiler trace of real steps, grouped by phase and op.

    python benchmarks/profile.py                                  # gpt2-124M, seq 256, batch 4
    python benchmarks/profile.py --config configs/tiny.py --dtype float32 --steps 3
    python benchmarks/profile.py --config '' --seq-len 64 --batch 12 --dtype float32 --steps 5 \
        --set model.vocab_size=257 model.max_len=64 model.embed_dim=128 model.num_layers=4 \
        model.num_heads=4 model.mlp_dim=512 model.use_bias=False     # nanoGPT's CPU shape

Compiles the real train step (dropout off), traces --steps steps with jax.profiler into
--out, and maps each traced XLA op back to its HLO instruction: forward ('jvp'),
backward ('transpose(jvp)', including remat recompute), or the rest of the step (optimizer
update, gradient norm, metrics); within each, matmuls (by operand dtype, and whether they
ran in an XNNPACK/YNNPACK fusion or fell back to a plain Eigen dot) and other ops. Host
time to fetch and place a batch, and to read and write one metrics record, is timed apart.
The trainer writes the same kind of trace with --config.log.profile_steps=START:END.
"""
import argparse
import collections
import glob
import os
import re
import statistics
import sys
import tempfile
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Replace the script's own directory: benchmarks/profile.py would shadow the stdlib `profile`.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from trainer import hostmalloc  # noqa: E402

hostmalloc.apply()  # As the `trainer` command does.

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.profiler import ProfileData  # noqa: E402

from trainer import config, data, metrics, train  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def hlo_index(hlo: str) -> dict:
  """Instruction name -> (phase, kind, op_name) from compiled HLO text."""
  comp_ops, comp_has_dot, types, current = {}, {}, {}, None
  lines = hlo.splitlines()
  for line in lines:  # Pass 1: each computation's first op_name and whether it holds a dot.
    if line and not line.startswith(' ') and '{' in line:
      current = line.split()[1 if line.startswith('ENTRY') else 0].lstrip('%')
    m = re.match(r'\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[', line)
    if m:
      types[m.group(1)] = m.group(2)
    if current and ' dot(' in line:
      comp_has_dot[current] = line
    name = re.search(r'op_name="([^"]*)"', line)
    if current and name:
      comp_ops.setdefault(current, name.group(1))
  index = {}
  for line in lines:
    m = re.match(r'\s*(?:ROOT )?%([\w.\-]+) = \S+ (\w[\w\-]*)\(', line)
    if not m:
      continue
    inst, opcode = m.groups()
    if opcode in ('while', 'call', 'conditional'):
      continue  # Containers: the ops inside them are traced (and counted) on their own.
    called = re.search(r'calls=%([\w.\-]+)', line)
    op_name = re.search(r'op_name="([^"]*)"', line)
    op_name = op_name.group(1) if op_name else comp_ops.get(called.group(1) if called else '', '')
    dot_line = line if opcode == 'dot' else comp_has_dot.get(called.group(1) if called else '')
    if dot_line:
      ops = re.search(r'dot\(%([\w.\-]+), %([\w.\-]+)\)', dot_line)
      dt = types.get(ops.group(1), '?') if ops else '?'
      path = 'Eigen dot (off the fast path)' if opcode == 'dot' else 'XNN/YNN fusion'
      kind = f'matmul {dt}, {path}'
    else:
      kind = {'fusion': 'elementwise/reduce fusion', 'copy': 'copy/transpose',
              'transpose': 'copy/transpose'}.get(opcode, opcode)
    if not op_name:
      phase = 'unattributed (XLA-inserted copies, e.g. scan carry init)'
    elif 'transpose(jvp(' in op_name:
      phase = 'backward'
    elif 'jvp(' in op_name:
      phase = 'forward'
    else:
      phase = 'update (optimizer, grad norm, metrics)'
    index[inst] = (phase, kind, op_name)
  return index


def trace_ops(trace_dir: str) -> collections.Counter:
  """Summed duration (s) per XLA op name on the host CPU plane of the newest trace."""
  path = sorted(glob.glob(f'{trace_dir}/**/*.xplane.pb', recursive=True))[-1]
  plane = ProfileData.from_file(path).find_plane_with_name('/host:CPU')
  totals = collections.Counter()
  for line in plane.lines:
    if line.name.startswith('tf_XLA') and 'PjRt' not in line.name:
      for e in line.events:
        if not e.name.startswith(('ThunkExecutor', '$')):
          totals[e.name] += e.duration_ns / 1e9
  return totals


def host_times(cfg, setup, step_metrics, reps: int = 5) -> dict:
  """Seconds to fetch + place one batch from the real pipeline, and to log one record."""
  streams = data.load(cfg)
  it = iter(streams.train.to_iter_dataset())
  next(it)
  fetch = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(data.to_global(next(it), setup.batch_sharding))
    fetch.append(time.perf_counter() - start)
  with tempfile.TemporaryDirectory() as d:
    writer = metrics.writers(cfg, d)[0]
    start = time.perf_counter()
    record = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
    writer.write({'step': 1, **record})
    writer.close()
    log_s = time.perf_counter() - start
  return {'data': statistics.median(fetch), 'logging': log_s}


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', default=f'{ROOT}/configs/gpt2.py:gpt2')
  p.add_argument('--seq-len', type=int, default=256)
  p.add_argument('--batch', type=int, default=4)
  p.add_argument('--dtype', default='bfloat16')
  p.add_argument('--remat', default='none')
  p.add_argument('--steps', type=int, default=2)
  p.add_argument('--top', type=int, default=12)
  p.add_argument('--out', default=tempfile.mkdtemp(prefix='profile-'))
  p.add_argument('--set', nargs='*', default=[], metavar='KEY=VALUE',
                 help='more config overrides, e.g. model.num_layers=4')
  a = p.parse_args()
  overrides = {'train.seq_len': a.seq_len, 'train.batch_size': a.batch, 'model.dtype': a.dtype,
               'model.remat': a.remat, 'model.dropout': 0.0, 'model.embed_dropout': 0.0,
               'model.attn_dropout': 0.0, 'mesh.fsdp': 1, 'log.tensorboard': False,
               **dict(kv.split('=', 1) for kv in a.set)}
  cfg = config.load(a.config, {k: str(v) for k, v in overrides.items()})
  config.validate(cfg, 1)
  setup = train.build(cfg, devices=jax.devices()[:1])
  state = setup.init_state(cfg.seed)
  step_fn = setup.compile_train_step()
  index = hlo_index(step_fn.as_text())
  tokens = np.random.RandomState(0).randint(0, cfg.model.vocab_size,
                                            (a.batch, a.seq_len + 1)).astype(np.int32)
  batch = data.to_global(tokens, setup.batch_sharding)
  state, m = step_fn(state, batch)
  jax.block_until_ready(m)
  start = time.perf_counter()
  with jax.profiler.trace(a.out):
    for _ in range(a.steps):
      state, m = step_fn(state, batch)
    jax.block_until_ready(m)
  step_s = (time.perf_counter() - start) / a.steps
  ops = trace_ops(a.out)
  host = host_times(cfg, setup, m)
  report(a, index, ops, host, step_s)


def report(a, index, ops, host, step_s):
  by_phase, by_kind = collections.Counter(), collections.Counter()
  ops = collections.Counter({n: s for n, s in ops.items() if not n.startswith(('while', 'call'))})
  for name, sec in ops.items():
    phase, kind, _ = index.get(name, ('unmapped', 'unmapped', ''))
    by_phase[phase] += sec / a.steps
    by_kind[(phase, kind)] += sec / a.steps
  traced = sum(by_phase.values())
  print(f'{a.config} dtype {a.dtype} remat {a.remat}, seq {a.seq_len} x batch {a.batch}; '
        f'{os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}; trace in {a.out}')
  print(f'wall time per step (traced run): {step_s:.3f} s; op time summed over threads: '
        f'{traced:.3f} s\n')
  print('| phase | op kind | s per step | share of op time |\n|---|---|---|---|')
  for (phase, kind), sec in sorted(by_kind.items(), key=lambda kv: -kv[1]):
    print(f'| {phase} | {kind} | {sec:.3f} | {100 * sec / traced:.1f}% |')
  for phase, sec in by_phase.most_common():
    print(f'| **{phase}** | all | {sec:.3f} | {100 * sec / traced:.1f}% |')
  print(f'| host | fetch + place one batch | {host["data"]:.4f} | (outside the step) |')
  print(f'| host | read + write one metrics record | {host["logging"]:.4f} | (outside the step) |')
  print(f'\ntop {a.top} ops:\n\n| op | phase | kind | s per step | HLO op_name |\n|---|---|---|---|---|')
  for name, sec in ops.most_common(a.top):
    phase, kind, op_name = index.get(name, ('?', '?', ''))
    print(f'| {name} | {phase} | {kind} | {sec / a.steps:.3f} | {op_name[-70:]} |')


if __name__ == '__main__':
  main()
