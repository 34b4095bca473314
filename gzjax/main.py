r"""The command line: train, evaluate or predict from an experiment config.

  python -m gzjax.main --config=configs/quickstart.py --workdir=/tmp/gz
  python -m gzjax.main --config=configs/quickstart.py --workdir=/tmp/gz \
      --mode=evaluate --split=validation --tta
  python -m gzjax.main --config=configs/quickstart.py --workdir=/tmp/gz \
      --mode=predict --output=/tmp/gz/submission.csv

Any config key can be overridden: ``--config.optimizer.learning_rate=3e-4``.
The logic lives in importable modules (train, evaluate, predict); this file
only parses flags, starts multi-host JAX when asked and turns known failures
into one clear message.
"""

from __future__ import annotations

import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'An experiment config file (configs/*.py).',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Where checkpoints, metrics and plots go.')
_MODE = flags.DEFINE_enum(
    'mode', 'train', ['train', 'evaluate', 'predict'], 'What to do.')
_SPLIT = flags.DEFINE_string('split', 'validation', 'evaluate: which split.')
_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', 'latest',
    'evaluate/predict: "latest", "best" or a step number.')
_TTA = flags.DEFINE_bool(
    'tta', False, 'evaluate/predict: average over 8 rotations and flips.')
_OUTPUT = flags.DEFINE_string(
    'output', None, 'predict: the CSV to write (default WORKDIR/predictions.csv).')
_IMAGES = flags.DEFINE_string(
    'images', None, 'predict: a folder of <GalaxyID>.jpg instead of the test split.')
_ENSEMBLE = flags.DEFINE_list(
    'ensemble', [], 'predict: more workdirs whose predictions are averaged in.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', None,
    'Call jax.distributed.initialize() (default: when JAX_COORDINATOR_ADDRESS'
    ' is set).')

flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  distributed = _DISTRIBUTED.value
  if distributed is None:
    distributed = 'JAX_COORDINATOR_ADDRESS' in os.environ
  if distributed:
    jax.distributed.initialize()
  logging.set_verbosity(logging.WARNING)
  # Imported here so that --help is fast and flags parse before grain starts.
  from gzjax import evaluate  # pylint: disable=g-import-not-at-top
  from gzjax import train  # pylint: disable=g-import-not-at-top
  from gzjax.data import galaxy_zoo  # pylint: disable=g-import-not-at-top
  from gzjax.data import kaggle  # pylint: disable=g-import-not-at-top
  from gzjax.models import weights  # pylint: disable=g-import-not-at-top

  config = _CONFIG.value
  train.use_compilation_cache(config.compilation_cache_dir)
  try:
    if _MODE.value == 'train':
      train.train_and_evaluate(config, _WORKDIR.value)
    elif _MODE.value == 'evaluate':
      evaluate.evaluate(config, _WORKDIR.value, split=_SPLIT.value,
                        checkpoint=_CHECKPOINT.value, tta=_TTA.value)
    else:
      evaluate.predict(config, [_WORKDIR.value, *_ENSEMBLE.value],
                       output=_OUTPUT.value, images=_IMAGES.value,
                       checkpoint=_CHECKPOINT.value, tta=_TTA.value)
  except (galaxy_zoo.DatasetNotBuiltError, kaggle.DataError,
          train.TrainingDiverged, weights.WeightMismatchError,
          FileNotFoundError, ValueError, KeyError) as error:
    print(f'gzjax: {error}', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
