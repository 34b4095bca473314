"""Recipe pieces that several experiment configs share.

Each function takes a base config (``gzjax.config.base_config()``) and
returns it with one published recipe's settings; an experiment file then
changes only what is its own.  Import it as ``from configs import common``
(the repository root is on the path when ``python -m gzjax.main`` runs from
it, as every command in configs/ does).
"""

from __future__ import annotations

import ml_collections


def kalvankar_efficientnet(config: ml_collections.ConfigDict,
                           num_train_steps: int) -> ml_collections.ConfigDict:
  """Kalvankar et al. 2020's EfficientNet-B0 recipe, shared by the votes and
  7-class configs: crop 212 -> 224, Keras ImageNet normalisation (what the
  converted Keras weights expect), Adam 1.5e-4 halved on plateaus."""
  from gzjax.models import efficientnet  # pylint: disable=g-import-not-at-top
  config.model.name = 'efficientnet_b0'
  config.input.crop_size = 212
  config.input.image_size = 224
  config.input.batch_size = 64
  mean, std = efficientnet.PRETRAINED_NORMALIZATION['keras']
  config.input.normalization.mean = mean
  config.input.normalization.std = std
  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = 1.5e-4
  config.optimizer.schedule = 'plateau'
  config.optimizer.plateau_factor = 0.5
  config.optimizer.plateau_window = 500
  config.optimizer.plateau_patience = 4
  config.num_train_steps = num_train_steps
  return config
