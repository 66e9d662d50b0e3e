"""Cold compile seconds of the CPU train step as depth grows (gpt2 shapes, small width).

    python benchmarks/compile_time.py                        # 12 and 48 layers, scan on
    python benchmarks/compile_time.py --layers 48 --no-scan  # the unrolled comparison

gpt2 preset (vocab 50,257, seq 256, batch 4, AdamW) with the width cut to 128 (4 heads,
mlp 512) so only depth varies; remat as the preset ('dots'). Each depth is built and
compiled in this process with no persistent compilation cache, so every figure is a cold
compile: `Setup.compile_train_step()` (trace, lower, XLA compile) wall seconds.
"""
import argparse
import os
import sys
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

from trainer import config, train  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def compile_seconds(layers: int, scan: bool, dtype: str) -> float:
  cfg = config.load(f'{ROOT}/configs/gpt2.py:gpt2')
  for key, value in {'model.num_layers': layers, 'model.embed_dim': 128, 'model.num_heads': 4,
                     'model.mlp_dim': 512, 'model.scan_layers': scan, 'model.dtype': dtype,
                     'mesh.fsdp': 1, 'train.seq_len': 256, 'train.batch_size': 4}.items():
    config.set_value(cfg, key, value)
  config.validate(cfg, 1)
  setup = train.build(cfg, devices=jax.devices()[:1])
  start = time.perf_counter()
  setup.compile_train_step()
  return time.perf_counter() - start


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--layers', type=int, nargs='+', default=[12, 48])
  p.add_argument('--no-scan', action='store_true', help='unroll the layers (scan_layers=False)')
  p.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  a = p.parse_args()
  assert not jax.config.jax_compilation_cache_dir, 'a persistent cache would make this warm'
  for layers in a.layers:
    s = compile_seconds(layers, not a.no_scan, a.dtype)
    print(f'{layers} layers, scan_layers={not a.no_scan}, {a.dtype}: compile {s:.1f} s', flush=True)


if __name__ == '__main__':
  main()
