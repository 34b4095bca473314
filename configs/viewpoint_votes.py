r"""Dieleman et al. 2015's winning network: rotation-invariant views, maxout.

  python -m gzjax.main --config=configs/viewpoint_votes.py --workdir=/tmp/vp \
      --config.manual_dir=/path/to/galaxy-zoo-the-galaxy-challenge

The centre 207 px of each image downscaled to 69x69, 16 rotated/mirrored
45x45 parts through one shared convnet, two maxout layers of 2048, the
decision-tree votes head (42,303,237 parameters).  SGD with Nesterov momentum
0.9, learning rate 0.04 divided by 10 after 18M and 23M examples as the paper
(at batch 16: steps 1.125M and 1.4375M, ending at 1.5M), the full rotation,
flip, zoom and translation augmentation, and dropout 0.5 in the dense layers.

Runtime: the paper trained ~67 hours on a GTX 680; one H100 with the
on-device augmentation of the performance issue should need a few hours.
Expected: Kaggle RMSE near 0.078 for one network, 0.0749 for Dieleman's
ensemble of 17 with test-time augmentation.  Not yet measured here.

Precision (inherited, ``model.dtype='auto'``): bfloat16 compute on GPUs
and TPUs, float32 on CPUs; weights, optimizer state, batch-norm statistics
and the loss stay float32.
"""

from gzjax import config as base


def get_config():
  config = base.base_config()
  config.model.name = 'viewpoint'
  config.model.dropout = 0.0  # The backbone's own dropout option is used.
  config.input.crop_size = 207
  config.input.image_size = 69
  config.input.batch_size = 16
  config.input.augment.zoom = (1 / 1.3, 1.3)
  config.input.augment.translation = 4.0
  config.optimizer.name = 'sgd'
  config.optimizer.momentum = 0.9
  config.optimizer.learning_rate = 0.04
  config.optimizer.schedule = 'piecewise'
  config.optimizer.boundaries = {'1125000': 0.1, '1437500': 0.01}
  config.num_train_steps = 1_500_000
  config.eval_every_steps = 25_000
  config.checkpoint_every_steps = 25_000
  return config
