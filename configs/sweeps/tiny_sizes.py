"""Four tiny model sizes at one token budget, for the scaling-law fit (loss = a * C^b + c).

    trainer sweep configs/sweeps/tiny_sizes.py --workdir=runs/sweeps/tiny_sizes

Width, heads and MLP go together (zipped), the learning rate falling with width; the report
fits the final eval loss against training compute and prints the loss it predicts at 10x.
"""


def get_sweep():
  return {
      'config': 'configs/tiny.py',
      'fixed': {'train.steps': 60, 'train.eval_every': 20, 'train.log_every': 10,
                'train.eval_batches': 4, 'checkpoint.every': 20, 'log.tensorboard': False,
                'log.progress': 'lines'},
      'zip': {'model.embed_dim': [16, 32, 64, 128],
              'model.num_heads': [2, 2, 4, 4],
              'model.mlp_dim': [64, 128, 256, 512],
              'optim.lr': [6e-3, 4e-3, 3e-3, 2e-3]},
  }
