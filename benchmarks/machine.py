"""The machine a benchmark ran on, named as docs/benchmarks.md records it."""
import os
import platform


def cpu_name() -> str:
  """CPU model, family and model numbers, core count and the vector extensions that matter."""
  info = {}
  with open('/proc/cpuinfo') as f:
    for line in f:
      key, _, value = line.partition(':')
      info.setdefault(key.strip(), value.strip())
  flags = set(info.get('flags', '').split())
  name = (f'{info.get("model name", platform.processor())} (family {info.get("cpu family")}, '
          f'model {info.get("model")})')
  ext = [f for f in ('avx2', 'fma', 'avx512f', 'avx512_bf16', 'amx_bf16', 'amx_tile') if f in flags]
  usable = len(os.sched_getaffinity(0))  # Fewer than the machine's under taskset.
  cpus = f'{os.cpu_count()} cpus' if usable == os.cpu_count() else f'{usable} of {os.cpu_count()} cpus'
  return f'{name}, {cpus}, vector extensions: {" ".join(ext) or "none"}'
