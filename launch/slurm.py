"""Submit ``trainer train`` to a SLURM GPU cluster: one process per GPU or one per node.

    python launch/slurm.py --nodes=4 --gpus-per-node=8 --partition=gpu --time=24:00:00 \\
        --setup='source ~/venv/bin/activate' --dry-run -- --config=configs/opt.py:opt-6.7b \\
        --workdir=/shared/runs/opt67b

writes the batch script to ``--script`` (default ``WORKDIR/slurm_job.sh``) and runs
``sbatch`` on it; ``--dry-run`` prints the script and the sbatch command instead. Inside
the job, ``srun`` starts the processes and ``trainer train`` finds its peers from SLURM's
variables (``jax.distributed`` cluster detection, see trainer/distributed.py). The job
asks to be requeued on preemption or node failure and resumes from its checkpoint in
WORKDIR, which must be on a disk every node sees.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

TEMPLATE = """#!/bin/bash
#SBATCH --job-name={name}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node={tasks_per_node}
#SBATCH --gpus-per-node={gpus}
#SBATCH --cpus-per-task={cpus}
#SBATCH --time={time}
#SBATCH --output={workdir}/slurm-%j.out
#SBATCH --chdir={cwd}
#SBATCH --requeue
#SBATCH --open-mode=append
{extra}
# {per_text}
set -euo pipefail
{setup}
# A port free on the first node; every process derives the same one.
export JAX_COORDINATOR_PORT=$((20000 + SLURM_JOB_ID % 20000))
# --kill-on-bad-exit: one failed process ends the step instead of leaving the rest waiting.
srun --kill-on-bad-exit=1 {train}
"""


def script(args, train_args: list[str], workdir: str) -> str:
  per_gpu = args.per == 'gpu'
  extra = [f'#SBATCH --partition={args.partition}'] if args.partition else []
  extra += [f'#SBATCH --account={args.account}'] if args.account else []
  return TEMPLATE.format(
      name=args.name, nodes=args.nodes, tasks_per_node=args.gpus_per_node if per_gpu else 1,
      gpus=args.gpus_per_node, cpus=args.cpus_per_task, time=args.time, workdir=workdir,
      extra='\n'.join(extra), cwd=os.getcwd(),
      per_text=('one process per GPU: JAX gives each process GPU number SLURM_LOCALID' if per_gpu
                else 'one process per node drives all the node\'s GPUs'),
      setup=args.setup, train=shlex.join(['trainer', 'train', *train_args]))


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  ours, train_args = (argv[:argv.index('--')], argv[argv.index('--') + 1:]) if '--' in argv else (argv, [])
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--nodes', type=int, required=True)
  p.add_argument('--gpus-per-node', type=int, default=8)
  p.add_argument('--per', choices=('gpu', 'node'), default='gpu',
                 help='one process per GPU (default) or one per node')
  p.add_argument('--cpus-per-task', type=int, default=8)
  p.add_argument('--time', default='24:00:00')
  p.add_argument('--partition', default='')
  p.add_argument('--account', default='')
  p.add_argument('--name', default='trainer')
  p.add_argument('--setup', default='', help='shell lines run first, e.g. activating a venv')
  p.add_argument('--script', default='', help='where to write the batch script')
  p.add_argument('--dry-run', action='store_true', help='print the script and the command')
  args = p.parse_args(ours)
  workdir = next((a.split('=', 1)[1] for a in train_args if a.startswith('--workdir=')), '')
  if not workdir.startswith('/'):
    p.error('give the run an absolute --workdir=/shared/PATH after --, on a disk every node '
            'sees: the job log and the checkpoints go there, and a requeued job resumes from it')
  if args.nodes < 1 or args.gpus_per_node < 1:
    p.error('--nodes and --gpus-per-node must be positive')
  text = script(args, train_args, workdir)
  path = args.script or os.path.join(workdir, 'slurm_job.sh')
  cmd = ['sbatch', path]
  if args.dry_run:
    print(f'# {path}\n{text}\n{shlex.join(cmd)}')
    return 0
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    f.write(text)
  print(shlex.join(cmd), flush=True)
  return subprocess.call(cmd)


if __name__ == '__main__':
  sys.exit(main())
