r"""Quickstart: the seed CNN on synthetic galaxies, minutes on 2 CPU cores.

  python -m gzjax.main --config=configs/quickstart.py --workdir=/tmp/quickstart

Builds galaxy_zoo/synthetic (3,000 labelled 424 px galaxies, about 45 s) when
it is not there, then trains the seed CNN at 64 px with the decision-tree
votes head for 600 steps of 32 (about 3 minutes on 2 cores).  Expected: a
validation RMSE near 0.12, against about 0.22 for predicting the training mean.
"""

from gzjax import config as base


def get_config():
  config = base.base_config()
  config.dataset = 'galaxy_zoo/synthetic'
  config.data_dir = 'demo_workdir/data'
  config.model.name = 'cnn'
  config.input.image_size = 64
  config.input.batch_size = 32
  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = 2e-3
  config.optimizer.warmup_steps = 50
  config.num_train_steps = 600
  config.log_every_steps = 50
  config.eval_every_steps = 200
  config.checkpoint_every_steps = 200
  return config
