"""Checkpoint cost on this machine for a gpt2-124M train state (params + AdamW moments).

    python benchmarks/checkpoint.py        # 3 saves and 3 restores; prints a Markdown table
    python benchmarks/checkpoint.py --repeats 1 --config configs/tiny.py

The Adam moments are filled with noise (they are zero at init and would compress away).
"blocked" is how long ``save()`` holds the training loop (device-to-host copy and
bookkeeping); "write" is from the call until the checkpoint is committed on disk.
Restores go onto the same abstract (sharded) target the loop uses. Medians reported.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import zlib

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from trainer import checkpoint, config, train  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _trained_like(setup, state):
  """Fills the (all-zero at init) Adam moments with noise, as after training, so they do not
  compress to nothing on disk."""
  def noise(path, x):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      return x
    name = jax.tree_util.keystr(path).encode()
    key = jax.random.fold_in(jax.random.PRNGKey(1), zlib.crc32(name))
    return x + 1e-3 * jax.random.normal(key, x.shape, x.dtype)
  fill = jax.jit(
      lambda s: s.replace(opt_state=jax.tree_util.tree_map_with_path(noise, s.opt_state)),
      out_shardings=setup.state_shardings)
  return fill(state)


def _dir_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def measure(spec: str, repeats: int, directory: str) -> dict:
  cfg = config.load(spec)
  config.validate(cfg, jax.device_count())
  setup = train.build(cfg)
  state = jax.block_until_ready(_trained_like(setup, setup.init_state(cfg.seed)))
  size = sum(x.nbytes for x in jax.tree.leaves(state))
  ckpts = checkpoint.Checkpoints(directory, cfg)
  blocked, write, read = [], [], []
  for step in range(1, repeats + 1):
    start = time.perf_counter()
    ckpts.save(step, state, 0)  # Data position: rows consumed (the state is what is timed).
    blocked.append(time.perf_counter() - start)
    ckpts.wait()
    write.append(time.perf_counter() - start)
  on_disk = _dir_bytes(ckpts.path(repeats))
  abstract = setup.abstract_state()
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(ckpts.restore(repeats, abstract))
    read.append(time.perf_counter() - start)
  ckpts.close()
  med = statistics.median
  return {'state_gb': size / 1e9, 'disk_gb': on_disk / 1e9, 'blocked_s': med(blocked),
          'write_s': med(write), 'save_gbps': size / 1e9 / med(write),
          'restore_s': med(read), 'restore_gbps': size / 1e9 / med(read)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default=f'{ROOT}/configs/gpt2.py:gpt2')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--dir', default='', help='where to write (default: a temporary directory)')
  args = parser.parse_args()
  directory = args.dir or tempfile.mkdtemp(prefix='ckpt-bench-')
  try:
    r = measure(args.config, args.repeats, directory)
  finally:
    if not args.dir:
      shutil.rmtree(directory, ignore_errors=True)
  print('| state | on disk | loop blocked by save | save (to commit) | save GB/s | restore | '
        'restore GB/s |')
  print('|---|---|---|---|---|---|---|')
  print(f"| {r['state_gb']:.2f} GB | {r['disk_gb']:.2f} GB | {r['blocked_s']:.2f} s "
        f"({100 * r['blocked_s'] / r['write_s']:.1f}% of the write) | {r['write_s']:.2f} s | "
        f"{r['save_gbps']:.2f} | {r['restore_s']:.2f} s | {r['restore_gbps']:.2f} |")


if __name__ == '__main__':
  main()
