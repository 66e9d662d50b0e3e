"""Ahead-of-time fit check: compile the real train step for a TPU topology on this machine.

``trainer compile --config=... --topology=v3-256`` asks libtpu for compile-only devices of
that topology (``jax.experimental.topologies``), builds the configured mesh and rules on
them, lowers the same jitted train step that ``trainer train`` runs, and reads XLA's
per-device memory and cost analysis. Nothing is allocated and no TPU is needed.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re

from trainer.config import ConfigError

GIB = 1024**3
# Per generation: HBM per device in GiB, TensorCores per device (v2/v3 cores are separate
# devices; v4 and v5p join a chip's two cores into one), whether Cloud TPU names count
# cores (v2-v4, v5p) or chips (v5e, v6e), and whether chips form a 2-D or 3-D torus.
GENERATIONS = {
    'v2': dict(hbm_gib=8, devices_per_chip=2, name_counts='cores', dims=2),
    'v3': dict(hbm_gib=16, devices_per_chip=2, name_counts='cores', dims=2),
    'v4': dict(hbm_gib=32, devices_per_chip=1, name_counts='cores', dims=3, megacore=True),
    'v5p': dict(hbm_gib=95, devices_per_chip=1, name_counts='cores', dims=3, megacore=True),
    'v5e': dict(hbm_gib=16, devices_per_chip=1, name_counts='chips', dims=2),
    'v6e': dict(hbm_gib=32, devices_per_chip=1, name_counts='chips', dims=2),
}
_NAME = re.compile(r'^(v2|v3|v4|v5p|v5e|v6e)-(\d+)$')
_SHAPE = re.compile(r'^(v2|v3|v4|v5p|v5e|v6e):(\d+(?:x\d+){1,2})$')


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str            # As the user wrote it: 'v3-256' or 'v3:8x16'.
  generation: str
  chips: str           # The chip grid libtpu understands, e.g. '8x16'.
  devices: int         # JAX devices in one slice.
  hbm_bytes: int       # Per device.


def chip_grid(chips: int, dims: int) -> str:
  """The usual Cloud TPU chip grid for a power-of-two chip count (v4-8: 2x2x1, v3-256: 8x16)."""
  k = chips.bit_length() - 1
  exps = [k // dims + (i >= dims - k % dims) for i in range(dims)]
  sizes = sorted(2**e for e in exps)
  if dims == 3 and sizes[0] == 1:
    sizes = sizes[1:] + [1]   # Cloud TPU writes the flat v4/v5p slices as 2x2x1.
  return 'x'.join(map(str, sizes))


def parse(name: str) -> Topology:
  """'v3-256' (Cloud TPU name) or 'v3:8x16' (chip grid) -> Topology; ConfigError if unknown."""
  gens = ', '.join(GENERATIONS)
  if m := _NAME.match(name):
    gen, count = m.group(1), int(m.group(2))
    g = GENERATIONS[gen]
    per_chip = 2 if g['name_counts'] == 'cores' else 1
    chips = count // per_chip
    if chips < 1 or count % per_chip or chips & (chips - 1):
      raise ConfigError(f'--topology={name}: {gen} slices have a power-of-two number of '
                        f'{g["name_counts"]} ({per_chip * 4}, {per_chip * 8}, {per_chip * 16} ...); '
                        f'for other shapes give the chip grid, e.g. --topology={gen}:4x4x12')
    grid = chip_grid(chips, g['dims'])
  elif m := _SHAPE.match(name):
    gen, grid = m.group(1), m.group(2)
    g = GENERATIONS[gen]
    if grid.count('x') + 1 != g['dims']:
      raise ConfigError(f'--topology={name}: {gen} chips form a {g["dims"]}-D grid '
                        f'(e.g. {gen}:{chip_grid(16, g["dims"])})')
    chips = math.prod(int(s) for s in grid.split('x'))
  else:
    raise ConfigError(f'--topology={name}: unknown topology; write GENERATION-COUNT as Cloud TPU '
                      f'does (v3-256, v4-128, v5e-16, v5p-512, v6e-64; generations {gens}) '
                      f'or GENERATION:CHIPGRID (v4:4x4x8)')
  return Topology(name, gen, grid, chips * g['devices_per_chip'], g['hbm_gib'] * GIB)


def topology_devices(topo: Topology, slices: int = 1) -> list:
  """Compile-only devices of ``slices`` copies of the topology (needs libtpu, not a TPU)."""
  if importlib.util.find_spec('libtpu') is None:
    raise ConfigError('trainer compile needs libtpu to compile for TPUs; install it with '
                      'pip install "libtpu==0.0.42.*" (the version jax[tpu]==0.10.2 pins)')
  # Compile-only use opens no chip, so several compiles (and tests) may run side by side.
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  from jax.experimental import topologies
  # v4 and v5p run one device per chip (megacore), as JAX sees them on the real machines.
  mode = 'megacore' if GENERATIONS[topo.generation].get('megacore') else 'default'
  desc = topologies.get_topology_desc(platform='tpu', topology_name=f'{topo.generation}:{topo.chips}',
                                      chip_config_name=mode, num_slices=slices)
  return list(desc.devices)


def _largest_arguments(setup, n: int | None = 5) -> list[tuple[str, int]]:
  """Per-device bytes of the biggest train-state shards, by parameter path."""
  import jax
  rows = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(setup.abstract_state())[0]:
    shard = leaf.sharding.shard_shape(leaf.shape)
    rows.append((jax.tree_util.keystr(path), math.prod(shard) * leaf.dtype.itemsize))
  return sorted(rows, key=lambda r: -r[1])[:n]


_HLO_VALUE = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = (pred|[fsu]\d+|bf16)\[([\d,]*)\]')
_BYTES = {'pred': 1, 'bf16': 2}


def _largest_temporaries(hlo_text: str, n: int = 5) -> list[tuple[str, int]]:
  """The biggest values the compiled (per-device) program computes, from its HLO text."""
  sizes = {}
  for line in hlo_text.splitlines():
    if m := _HLO_VALUE.match(line):
      name, dtype, dims = m.groups()
      itemsize = _BYTES.get(dtype) or int(dtype[1:]) // 8
      shape = f'{dtype}[{dims}]'
      size = math.prod(int(d) for d in dims.split(',') if d) * itemsize
      sizes[shape] = max(sizes.get(shape, 0), size)
  return sorted(sizes.items(), key=lambda r: -r[1])[:n]


def _suggestions(cfg, r: dict) -> list[str]:
  """What to change when the step does not fit, largest lever first."""
  out = []
  hbm, args, temp = r['hbm_bytes_per_device'], r['argument_bytes_per_device'], r['temp_bytes_per_device']
  mesh = r['mesh']
  shards, widths = mesh['data'] * mesh['fsdp'], (cfg.model.embed_dim, cfg.model.proj_dim or cfg.model.embed_dim)
  fsdp = max(f for f in range(1, shards + 1)   # fsdp must divide the hidden width.
             if shards % f == 0 and all(w % f == 0 for w in widths))
  if args > 0.4 * hbm and cfg.mesh.rules != 'dp' and fsdp > mesh['fsdp']:
    out.append(f'more FSDP: move data-parallel devices into fsdp (--config.mesh.data='
               f'{shards // fsdp} --config.mesh.fsdp={fsdp}); parameters and optimizer state '
               f'shrink by {fsdp // mesh["fsdp"]}x')
  if args > 0.4 * hbm and cfg.mesh.rules == 'dp':
    out.append('shard the parameters: --config.mesh.rules=fsdp (dp replicates them)')
  if temp > 0.3 * hbm and cfg.model.remat != 'full':
    out.append(f'rematerialise: --config.model.remat={"dots" if cfg.model.remat == "none" else "full"}'
               ' keeps fewer activations for the backward pass')
  micro = cfg.train.batch_size // cfg.train.micro_batches
  if temp > 0.3 * hbm and micro // 2 >= mesh['data'] * mesh['fsdp'] and micro % 2 == 0:
    out.append(f'smaller micro-batch: --config.train.micro_batches={2 * cfg.train.micro_batches} '
               f'({micro // 2} sequences per micro-batch) roughly halves the activations')
  if args > hbm:
    out.append('the parameters and optimizer state alone exceed HBM: use a larger topology')
  return out or ['use a larger topology or a smaller model']


_OOM = re.compile(r'HLO temporaries \(([\d.]+)([KMGT])\)')


def _compile(setup) -> dict:
  """Per-device memory and XLA FLOPs of the compiled step, or what an out-of-memory error says."""
  from jax.errors import JaxRuntimeError
  try:
    compiled = setup.compile_train_step()
  except JaxRuntimeError as e:
    # XLA:TPU refuses to compile a program whose temporaries exceed HBM: that is the verdict.
    if 'RESOURCE_EXHAUSTED' not in str(e):
      raise
    m = _OOM.search(str(e))
    temp = int(float(m.group(1)) * 1024**'KMGT'.index(m.group(2)) * 1024) if m else 0
    args = sum(b for _, b in _largest_arguments(setup, n=None))
    batch = setup.abstract_batch()
    args += math.prod(batch.sharding.shard_shape(batch.shape)) * batch.dtype.itemsize
    return {'argument_bytes_per_device': args, 'temp_bytes_per_device': temp,
            'output_bytes_per_device': 0, 'peak_bytes_per_device': args + temp,
            'xla_flops_per_step': 0.0, 'fits': False, 'largest_temporaries': [],
            'compiler_error': str(e).splitlines()[0]}
  mem, cost = compiled.memory_analysis(), compiled.cost_analysis() or {}
  args, temp = mem.argument_size_in_bytes, mem.temp_size_in_bytes
  # Arguments stay live for the whole step and the temporaries are one block, so their sum
  # (plus outputs not donated into arguments) is what must fit; XLA's own peak can be lower.
  total = args + temp + mem.output_size_in_bytes - mem.alias_size_in_bytes
  return {'argument_bytes_per_device': int(args), 'temp_bytes_per_device': int(temp),
          'output_bytes_per_device': int(mem.output_size_in_bytes),
          'peak_bytes_per_device': int(max(total, mem.peak_memory_in_bytes)),
          'xla_flops_per_step': float(cost.get('flops', 0.0)), 'fits': True,
          'largest_temporaries': _largest_temporaries(compiled.as_text())}


def fit_report(cfg, topology: str) -> dict:
  """Compiles the configured train step for ``topology`` and reports per-device memory and FLOPs."""
  from trainer import config as config_lib, model, sharding, train
  topo = parse(topology)
  count = topo.devices * cfg.mesh.slices
  try:  # Before libtpu starts, so that a bad mesh costs nothing and prints one line.
    config_lib.validate(cfg, count, 'tpu')
  except ConfigError as e:
    raise ConfigError(f'--topology={topology} has {count} devices: {e}') from None
  devices = topology_devices(topo, cfg.mesh.slices)
  assert len(devices) == count, f'libtpu gave {len(devices)} devices for {topology}, expected {count}'
  setup = train.build(cfg, devices)
  tokens = cfg.train.batch_size * cfg.train.seq_len
  report = {
      'topology': topology, 'chips': f'{topo.generation}:{topo.chips}', 'slices': cfg.mesh.slices,
      'devices': len(devices), 'device_kind': devices[0].device_kind,
      'mesh': dict(zip(sharding.AXES, setup.mesh.devices.shape)), 'rules': cfg.mesh.rules,
      'hbm_bytes_per_device': topo.hbm_bytes,
      # The model's training FLOPs (the MFU convention). XLA's count is kept beside it, but
      # XLA counts a loop body once, so it is low with scan_layers or micro-batches.
      'flops_per_step': float(model.flops_per_token(setup.model_cfg, cfg.train.seq_len)) * tokens,
      **_compile(setup),
      'largest_arguments': _largest_arguments(setup),
  }
  report['xla_flops_per_step'] *= len(devices)
  report['fits'] = bool(report['fits'] and report['peak_bytes_per_device'] <= topo.hbm_bytes)
  if not report['fits']:
    report['suggestions'] = _suggestions(cfg, report)
  return report


def format_report(r: dict) -> str:
  gib = lambda b: f'{b / GIB:.2f} GiB'
  hbm = r['hbm_bytes_per_device']
  lines = [
      f"topology:   {r['topology']} = {r['slices']} x {r['chips']}: {r['devices']} x {r['device_kind']}, "
      f"{gib(hbm)} HBM each",
      f"mesh:       {r['mesh']} (rules {r['rules']})",
      f"per device: arguments {gib(r['argument_bytes_per_device'])} | temporaries "
      f"{gib(r['temp_bytes_per_device'])} | peak {gib(r['peak_bytes_per_device'])} of "
      f"{gib(hbm)} ({100 * r['peak_bytes_per_device'] / hbm:.0f}%)",
      f"FLOPs/step: {r['flops_per_step']:.3e} (model, all devices" +
      (f"; XLA counts {r['xla_flops_per_step']:.3e}, each loop body once)"
       if r['xla_flops_per_step'] else ')'),
      f"verdict:    {'FITS' if r['fits'] else 'DOES NOT FIT'}",
  ]
  if not r['fits']:
    lines.append('largest state shards per device: ' +
                 ', '.join(f'{n} {gib(b)}' for n, b in r['largest_arguments'][:3]))
    if r['largest_temporaries']:
      lines.append('largest temporaries per device:  ' +
                   ', '.join(f'{n} {gib(b)}' for n, b in r['largest_temporaries'][:3]))
    if 'compiler_error' in r:
      lines.append(f"XLA: {r['compiler_error']}")
    lines += [f'try: {s}' for s in r['suggestions']]
  return '\n'.join(lines)
