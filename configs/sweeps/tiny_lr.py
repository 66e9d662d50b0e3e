"""Four learning rates for the tiny model, 40 steps each; startup and compiling dominate.

    trainer sweep configs/sweeps/tiny_lr.py --workdir=runs/sweeps/tiny_lr
    trainer sweep configs/sweeps/tiny_lr.py --workdir=runs/sweeps/tiny_lr --dry-run
"""


def get_sweep():
  return {
      'config': 'configs/tiny.py',
      'fixed': {'train.steps': 40, 'train.eval_every': 10, 'train.log_every': 5,
                'checkpoint.every': 10, 'log.tensorboard': False, 'log.progress': 'lines'},
      'grid': {'optim.lr': [1e-3, 3e-3, 1e-2, 3e-2]},
  }
