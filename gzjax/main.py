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


# Survey prediction (gzjax/predict.py): chosen by --catalog or --output_dir.
_CATALOG = flags.DEFINE_string(
    'catalog', None,
    'predict: a CSV or Parquet table of images to label (see --id_column,'
    ' --path_column); needs --output_dir.')
_ID_COLUMN = flags.DEFINE_string(
    'id_column', 'id', 'predict --catalog: the column of galaxy ids.')
_PATH_COLUMN = flags.DEFINE_string(
    'path_column', 'path',
    'predict --catalog: the column of image paths (relative to the table).')
_OUTPUT_DIR = flags.DEFINE_string(
    'output_dir', None,
    'predict: write sharded predictions of --catalog or --images (a folder,'
    ' searched recursively, or a glob) here; rerunning resumes.')
_SHARD_SIZE = flags.DEFINE_integer(
    'shard_size', 100_000, 'predict --output_dir: rows per output shard.')
_FORMAT = flags.DEFINE_enum(
    'format', 'parquet', ['parquet', 'csv'],
    'predict --output_dir: the shards\' file format.')
_STRICT = flags.DEFINE_bool(
    'strict', False,
    'predict --output_dir: stop at the first unreadable image instead of'
    ' listing it in errors.csv.')
_NUM_WORKERS = flags.DEFINE_integer(
    'num_workers', 0,
    'predict --output_dir: image-decoding processes (0: in this process).')

flags.mark_flags_as_required(['config', 'workdir'])


def _predict_survey(config, workdirs):
  from gzjax import predict  # pylint: disable=g-import-not-at-top
  if not _OUTPUT_DIR.value:
    raise ValueError('--catalog writes sharded predictions: give --output_dir.')
  predict.run(config, workdirs, images=_IMAGES.value, catalog=_CATALOG.value,
              id_column=_ID_COLUMN.value, path_column=_PATH_COLUMN.value,
              output_dir=_OUTPUT_DIR.value, shard_size=_SHARD_SIZE.value,
              format=_FORMAT.value, strict=_STRICT.value,
              num_workers=_NUM_WORKERS.value, checkpoint=_CHECKPOINT.value,
              tta=_TTA.value)


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
  try:
    if _MODE.value == 'train' and 'labels' in config and config.labels.catalog:
      from gzjax import finetune  # pylint: disable=g-import-not-at-top
      finetune.run(config, _WORKDIR.value)
    elif _MODE.value == 'train':
      train.train_and_evaluate(config, _WORKDIR.value)
    elif _MODE.value == 'evaluate':
      evaluate.evaluate(config, _WORKDIR.value, split=_SPLIT.value,
                        checkpoint=_CHECKPOINT.value, tta=_TTA.value)
    elif _CATALOG.value or _OUTPUT_DIR.value:
      _predict_survey(config, [_WORKDIR.value, *_ENSEMBLE.value])
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
