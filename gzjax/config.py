"""The base experiment config that every file in ``configs/`` starts from.

One place lists every key with its meaning; an experiment file changes only
what differs.  Command-line overrides (``--config.optimizer.learning_rate=…``)
apply on top, and the config is locked afterwards, so a misspelt key is an
error rather than a silently ignored setting.
"""

from __future__ import annotations

import os
import pathlib
import sys

import ml_collections

from gzjax import optimizers
from gzjax.data import labels
from gzjax.data import pipeline


def base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # galaxy_zoo/kaggle (real data) or galaxy_zoo/synthetic.
  config.dataset = 'galaxy_zoo/kaggle'
  config.data_dir = '~/tensorflow_datasets'
  # kaggle: where the download is; when set, a missing dataset is built.
  config.manual_dir = ''
  # synthetic: what to render when the dataset is not built yet.
  config.synthetic = ml_collections.ConfigDict(dict(
      num_labelled=3000, num_test=300, image_size=424, seed=0))
  # votes (37 Kaggle outputs), 3class (question 1) or 7class (morphology).
  config.task = 'votes'

  config.model = ml_collections.ConfigDict()
  config.model.name = 'cnn'
  # '' picks votes for the votes task and classes for the classifiers.
  config.model.head = ''
  config.model.hidden = ()
  config.model.dropout = 0.0
  # Compute dtype. auto: bfloat16 on GPUs and TPUs, float32 on CPUs; or
  # bfloat16 / float32 anywhere.  Parameters, optimizer state, batch-norm
  # statistics, the loss and the votes head's normalisation stay float32.
  config.model.dtype = 'auto'
  # A weight file from python -m gzjax.tools.convert_weights.
  config.model.pretrained = ''

  config.input = pipeline.default_config()
  config.optimizer = optimizers.default_config()
  # Fine-tuning on a label catalogue instead of config.task (gzjax.finetune);
  # an empty labels.catalog means the built-in Galaxy Zoo tasks.
  config.labels = labels.default_config()
  # mse (votes), bce (votes through sigmoid outputs) or softmax (classes).
  config.loss = 'mse'
  config.label_smoothing = 0.0
  config.class_weights = ()
  # Evaluate with an exponential moving average of the parameters (0: off).
  config.ema_decay = 0.0

  config.num_train_steps = 1000
  config.log_every_steps = 50
  config.eval_every_steps = 500
  config.checkpoint_every_steps = 500
  config.keep_checkpoints = 2
  config.best_metric = 'validation/rmse'
  config.best_mode = 'min'
  # 0: the training batch size.
  config.eval_batch_size = 0
  config.seed = 0
  # JAX's persistent compilation cache: a later process (a resumed run,
  # --mode=evaluate or predict) loads the programs an earlier one compiled,
  # and the traced steps from its gzjax_programs/ folder (gzjax.programs).
  # '' turns both off.
  config.compilation_cache_dir = os.path.join(
      os.environ.get('XDG_CACHE_HOME') or '~/.cache', 'gzjax', 'jax')
  return config


def make_importable(config_path: str | os.PathLike) -> None:
  """Lets a config file in a ``configs/`` folder import its siblings as
  ``from configs import common`` wherever the command runs from: puts the
  folder's parent (the checkout) first on ``sys.path``."""
  folder = pathlib.Path(config_path).resolve().parent
  if folder.name == 'configs' and str(folder.parent) not in sys.path:
    sys.path.insert(0, str(folder.parent))
