"""One 124M MLP layer (x [4, 256, 768] bf16, w [768, 3072]), forward + backward, interleaved.

    python benchmarks/dense_backward.py

'old f32-backward' is dense() as it was (f32 cotangent: both backward dots in f32);
'contract' is today's dense() (bf16 backward, f32 accumulation); 'f32 model' is float32
compute. Median of 10 interleaved rounds.
"""
import os
import statistics
import sys
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from trainer.model import dense  # noqa: E402

x = jnp.asarray(np.random.randn(4,256,768), jnp.bfloat16)
w = jnp.asarray(np.random.randn(768,3072)*0.02, jnp.float32)
b = jnp.zeros((3072,), jnp.float32)
r = jnp.asarray(np.random.randn(4,256,3072), jnp.float32)
def old(x,w,b):
  y = jnp.einsum('ble,em->blm', x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), preferred_element_type=jnp.float32) + b
  return y.astype(jnp.bfloat16)
def loss(f): return lambda x,w,b: jnp.sum(f(x,w,b).astype(jnp.float32)*r)
fns = {'old f32-backward': jax.jit(jax.grad(loss(old), argnums=(0,1,2))),
       'contract': jax.jit(jax.grad(loss(lambda x,w,b: dense('ble,em->blm', x, w, b, jnp.bfloat16)), argnums=(0,1,2))),
       'f32 model': jax.jit(jax.grad(loss(lambda x,w,b: dense('ble,em->blm', x.astype(jnp.float32), w, b, jnp.float32)), argnums=(0,1,2)))}
for f in fns.values(): jax.block_until_ready(f(x,w,b))
t = {k: [] for k in fns}
for _ in range(10):
  for k,f in fns.items():
    s=time.perf_counter(); jax.block_until_ready(f(x,w,b)); t[k].append(time.perf_counter()-s)
fl = 3*2*4*256*768*3072
for k,v in t.items(): print(f'{k}: {1e3*statistics.median(v):.1f} ms, {fl/statistics.median(v)/1e9:.0f} GFLOP/s')
