"""Start a multi-process run on this machine: N processes x D fake CPU devices on 127.0.0.1.

    python launch/local.py --processes 2 --devices-per-process 4 -- --config=configs/tiny.py --workdir=runs/mp

Everything after ``--`` is passed to ``trainer train``. Each process gets its own
``XLA_FLAGS`` device count and the ``--coordinator/--num_processes/--process_id`` flags,
exactly as on a real cluster. Process 0's output is streamed; the others write to
``process_I.log`` in a temporary folder whose tail is printed when they fail. Exits non-zero
if any process fails, after stopping the rest.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRACE_S = 120   # After one process fails, how long the others get to notice and exit.


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def commands(processes: int, port: int, train_args: list[str]) -> list[list[str]]:
  """The ``trainer train`` command line of each process."""
  if train_args[:1] == ['train']:
    train_args = train_args[1:]
  return [[sys.executable, '-m', 'trainer', 'train', *train_args,
           f'--coordinator=127.0.0.1:{port}', f'--num_processes={processes}', f'--process_id={i}']
          for i in range(processes)]


def environment(devices: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  if os.path.isdir(os.path.join(ROOT, 'trainer')):  # Run this checkout's package, installed or not.
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [ROOT, env.get('PYTHONPATH')]))
  return env


def tail(path: str, lines: int = 20) -> str:
  with open(path, errors='replace') as f:
    return ''.join(f.readlines()[-lines:])


def run(processes: int, devices: int, train_args: list[str]) -> int:
  """Starts every process, waits for all; returns 0 only if every one succeeded."""
  env, logs = environment(devices), tempfile.mkdtemp(prefix='trainer-local-')
  procs, files = [], []
  for i, cmd in enumerate(commands(processes, free_port(), train_args)):
    out = None if i == 0 else open(os.path.join(logs, f'process_{i}.log'), 'w')
    files.append(out)
    procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else None))
    print(f'local.py: process {i} pid {procs[-1].pid}: {shlex.join(cmd)}', file=sys.stderr, flush=True)
  failed, deadline = [], None
  while True:
    codes = [p.poll() for p in procs]
    for i, code in enumerate(codes):
      if code and i not in failed:
        failed.append(i)
        print(f'local.py: process {i} exited with code {code}', file=sys.stderr, flush=True)
        deadline = deadline or time.monotonic() + GRACE_S
    if None not in codes:
      break
    if deadline and time.monotonic() > deadline:
      for p in procs:
        if p.poll() is None:
          p.send_signal(signal.SIGKILL)
    time.sleep(0.2)
  for f in files:
    if f:
      f.close()
  bad = [i for i, c in enumerate(codes) if c]
  for i in bad:
    if i:
      print(f'--- process {i} (exit {codes[i]}), last lines of {logs}/process_{i}.log ---\n'
            f'{tail(os.path.join(logs, f"process_{i}.log"))}', file=sys.stderr)
  if bad:
    print(f'local.py: failed: processes {bad} exited with codes {[codes[i] for i in bad]}',
          file=sys.stderr)
    return 1
  return 0


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  ours, train_args = (argv[:argv.index('--')], argv[argv.index('--') + 1:]) if '--' in argv else (argv, [])
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--processes', type=int, default=2)
  parser.add_argument('--devices-per-process', type=int, default=4)
  args = parser.parse_args(ours)
  if args.processes < 1 or args.devices_per_process < 1:
    parser.error('--processes and --devices-per-process must be positive')
  return run(args.processes, args.devices_per_process, train_args)


if __name__ == '__main__':
  sys.exit(main())
