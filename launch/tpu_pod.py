"""Run ``trainer train`` on a Cloud TPU VM slice (or several slices), re-creating it on preemption.

    python launch/tpu_pod.py --name=gpt2xl --zone=us-central2-b --type=v4-128 --spot \\
        --dry-run -- --config=configs/gpt2.py:gpt2-xl,paper --workdir=gs://BUCKET/runs/gpt2xl

Steps (each one a ``gcloud`` command, printed by ``--dry-run`` instead of run):
1. create the TPU VM (``tpu-vm create``) or, with ``--queued`` or ``--slices`` > 1, a queued
   resource, and wait until it is ready;
2. build this checkout's wheel, copy it and ``configs/`` to every worker, install it with
   ``jax[tpu]``;
3. start the same ``trainer train`` on every worker (``jax.distributed`` finds its peers on
   its own); worker 0's output is streamed, the others log to ``~/train.log``;
4. if the run fails and the TPU was preempted, delete it and go back to 1: the run resumes
   from its checkpoint in ``--workdir`` (a ``gs://`` bucket or a shared disk), up to
   ``--max-restarts`` times.
"""
from __future__ import annotations

import argparse
import configparser
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JAX_TPU = 'jax[tpu]==0.10.2'
_WORKER_ID = ('$(curl -s -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/'
              'v1/instance/attributes/agent-worker-number)')


class Pod:
  """The gcloud commands for one launch; ``dry_run`` prints them instead of running them."""

  def __init__(self, args, train_args: list[str]):
    self.a, self.train_args = args, train_args
    self.where = [f'--zone={args.zone}'] + ([f'--project={args.project}'] if args.project else [])
    self.queued = args.queued or args.slices > 1
    self.nodes = ([f'{args.name}-{i}' for i in range(args.slices)] if args.slices > 1
                  else [args.name])

  def create(self) -> list[list[str]]:
    a, spot = self.a, ['--spot'] if self.a.spot else []
    if not self.queued:
      return [['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', a.name, *self.where,
               f'--accelerator-type={a.type}', f'--version={a.runtime}', *spot]]
    nodes = ([f'--node-count={a.slices}', f'--node-prefix={a.name}'] if a.slices > 1
             else [f'--node-id={a.name}'])
    return [['gcloud', 'compute', 'tpus', 'queued-resources', 'create', a.name, *self.where,
             *nodes, f'--accelerator-type={a.type}', f'--runtime-version={a.runtime}', *spot]]

  def state(self) -> list[str]:
    """Prints the state: READY/PREEMPTED (TPU VM) or ACTIVE/SUSPENDED/FAILED (queued resource)."""
    if self.queued:
      return ['gcloud', 'compute', 'tpus', 'queued-resources', 'describe', self.a.name,
              *self.where, '--format=value(state.state)']
    return ['gcloud', 'compute', 'tpus', 'tpu-vm', 'describe', self.a.name, *self.where,
            '--format=value(state)']

  def delete(self) -> list[str]:
    if self.queued:
      return ['gcloud', 'compute', 'tpus', 'queued-resources', 'delete', self.a.name, *self.where,
              '--force', '--quiet']
    return ['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', self.a.name, *self.where, '--quiet']

  def ssh(self, node: str, command: str) -> list[str]:
    return ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', node, *self.where, '--worker=all',
            f'--command={command}']

  def install(self, wheel: str) -> list[list[str]]:
    name = os.path.basename(wheel)
    out = [[sys.executable, '-m', 'pip', 'wheel', '--no-deps', '-w', os.path.dirname(wheel), ROOT]]
    for node in self.nodes:
      out.append(['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', wheel, f'{node}:~/{name}',
                  *self.where, '--worker=all'])
      out.append(['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', '--recurse',
                  os.path.join(ROOT, 'configs'), f'{node}:~/', *self.where, '--worker=all'])
      out.append(self.ssh(node, f"pip install -q '{JAX_TPU}' ~/{name}"))
    return out

  def run(self) -> list[list[str]]:
    """One ssh per slice; worker 0 of slice 0 prints, every other worker writes ~/train.log."""
    extra = [f'--config.mesh.slices={self.a.slices}'] if self.a.slices > 1 else []
    train = shlex.join(['trainer', 'train', *self.train_args, *extra])
    out = []
    for i, node in enumerate(self.nodes):
      show = f'[ {_WORKER_ID} = 0 ]' if i == 0 else 'false'
      out.append(self.ssh(node, f'set -o pipefail; if {show}; then {train} 2>&1 | tee ~/train.log; '
                                f'else {train} > ~/train.log 2>&1; fi'))
    return out


def execute(cmds: list[list[str]], dry_run: bool, parallel: bool = False) -> int:
  """Runs (or prints) commands in order, or side by side; returns the first failure's code."""
  for cmd in cmds:
    print(shlex.join(cmd) + (' &' if parallel and len(cmds) > 1 else ''), flush=True)
  if dry_run:
    return 0
  if parallel:
    procs = [subprocess.Popen(c) for c in cmds]
    return next((c for c in (p.wait() for p in procs) if c), 0)
  return next((c for c in (subprocess.call(c) for c in cmds) if c), 0)


def wait_ready(pod: Pod, dry_run: bool, poll_s: int = 30):
  ready = ('ACTIVE',) if pod.queued else ('READY',)
  print(f'# wait until `{shlex.join(pod.state())}` prints {ready[0]}')
  while not dry_run:
    state = subprocess.run(pod.state(), capture_output=True, text=True).stdout.strip()
    if state in ready:
      return
    if state in ('FAILED', 'SUSPENDED', 'PREEMPTED'):
      raise SystemExit(f'tpu_pod.py: {pod.a.name} is {state} before the run started')
    time.sleep(poll_s)


def version() -> str:
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(ROOT, 'setup.cfg'))
  return cfg['metadata']['version']


def launch(pod: Pod, dry_run: bool) -> int:
  """Create, install, run; on preemption delete and start again (the run resumes)."""
  wheel = os.path.join(ROOT, 'dist', f'trainer-{version()}-py3-none-any.whl')
  for attempt in range(pod.a.max_restarts + 1):
    if execute(pod.create(), dry_run):
      return 1
    wait_ready(pod, dry_run)
    if execute(pod.install(wheel), dry_run):
      return 1
    code = execute(pod.run(), dry_run, parallel=True)
    if dry_run:
      print(f'# if the run fails and `{shlex.join(pod.state())}` says PREEMPTED or SUSPENDED:\n'
            f'{shlex.join(pod.delete())}\n# then everything above again (at most '
            f'{pod.a.max_restarts} times); the run resumes from its checkpoint')
      return 0
    if code == 0:
      return 0
    state = subprocess.run(pod.state(), capture_output=True, text=True).stdout.strip()
    if state not in ('PREEMPTED', 'SUSPENDED', 'FAILED'):
      print(f'tpu_pod.py: the run failed (exit {code}) on a {state} TPU; not restarting',
            file=sys.stderr)
      return code
    print(f'tpu_pod.py: {pod.a.name} is {state}; re-creating (restart {attempt + 1})',
          file=sys.stderr)
    execute([pod.delete()], dry_run)
  return 1


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  ours, train_args = (argv[:argv.index('--')], argv[argv.index('--') + 1:]) if '--' in argv else (argv, [])
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--name', required=True, help='TPU VM (or queued resource) name')
  p.add_argument('--zone', required=True)
  p.add_argument('--project', default='')
  p.add_argument('--type', required=True, help='accelerator type, e.g. v4-128, v5e-16, v5p-512')
  p.add_argument('--runtime', default='tpu-ubuntu2204-base', help='TPU VM runtime version')
  p.add_argument('--spot', action='store_true', help='spot (preemptible) capacity')
  p.add_argument('--queued', action='store_true', help='create through a queued resource')
  p.add_argument('--slices', type=int, default=1, help='multi-slice: this many slices of --type')
  p.add_argument('--max-restarts', type=int, default=10, help='re-creations after preemption')
  p.add_argument('--dry-run', action='store_true', help='print the commands, run nothing')
  args = p.parse_args(ours)
  workdir = next((a.split('=', 1)[1] for a in train_args if a.startswith('--workdir=')), '')
  if not (workdir.startswith('gs://') or workdir.startswith('/')):
    p.error('give the run a --workdir=gs://BUCKET/PATH (or an absolute path on a shared disk) '
            'after --, so that a re-created TPU resumes from the checkpoint')
  if args.slices < 1:
    p.error('--slices must be at least 1')
  return launch(Pod(args, train_args), args.dry_run)


if __name__ == '__main__':
  sys.exit(main())
