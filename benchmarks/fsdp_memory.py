"""Per-device memory of parameters plus optimizer state as the fsdp axis grows (docs/scaling.md).

    python benchmarks/fsdp_memory.py     # prints Markdown tables (needs libtpu: pip install ".[tpu-aot]")

For gpt2-xl on a v3-256 and opt-175b on a v5p-512, builds the real train setup on the
topology's compile-only devices with mesh data = devices / fsdp and sums the bytes of
each train-state leaf's shard (the shard shapes the shardings give; XLA's TPU tile
padding adds under 1% at these sizes, see the compiled figures in docs/scaling.md).
Nothing is compiled or allocated.
"""
import math
import os
import sys

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from trainer import aot, config, train  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = [('configs/gpt2.py:gpt2-xl', 'v3-256', 64), ('configs/opt.py:opt-175b', 'v5p-512', 256)]


def state_bytes(cfg, devices) -> tuple[int, int]:
  """(parameter bytes, optimizer-state bytes) held by one device."""
  state = train.build(cfg, devices).abstract_state()
  size = lambda tree: sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
                          for x in jax.tree.leaves(tree))
  return size(state.params), size(state.opt_state)


def main():
  for spec, topology, max_fsdp in CASES:
    devices = aot.topology_devices(aot.parse(topology))
    hbm = aot.parse(topology).hbm_bytes
    print(f'\n{spec} on {topology} ({len(devices)} devices, {hbm / 2**30:.0f} GiB HBM each)\n')
    print('| fsdp | data | params GiB | optimizer GiB | together, % of HBM |\n|---|---|---|---|---|')
    fsdp = 1
    while fsdp <= max_fsdp:
      cfg = config.load(os.path.join(ROOT, spec), {'mesh.fsdp': str(fsdp), 'mesh.data': '-1'})
      params, opt = state_bytes(cfg, devices)
      print(f'| {fsdp} | {len(devices) // fsdp} | {params / 2**30:.2f} | {opt / 2**30:.2f} | '
            f'{100 * (params + opt) / hbm:.0f}% |', flush=True)
      fsdp *= 2


if __name__ == '__main__':
  main()
