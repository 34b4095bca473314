r"""Builds the ``galaxy_zoo`` dataset without TensorFlow.

``tfds build`` imports TensorFlow; this command runs ``galaxy_zoo.prepare``
(TFDS's ``download_and_prepare`` on the same builder) and prints a summary:
examples per split, the decision tree's consistency on the labelled votes, the
label mix and skipped images.

  python -m gzjax.data.build --config=synthetic --data_dir=~/tensorflow_datasets
  python -m gzjax.data.build --config=kaggle \
      --manual_dir=/path/to/galaxy-zoo-the-galaxy-challenge \
      --data_dir=~/tensorflow_datasets

Bad input (a missing manual file, a malformed CSV, undecodable images) stops
the build with a message naming the file, line, column or GalaxyID, and
leaves no dataset behind that would load as complete.
"""

from __future__ import annotations

import sys
import time

from absl import app
from absl import flags
from absl import logging

from gzjax import errors
from gzjax.data import galaxy_zoo

_CONFIG = flags.DEFINE_enum(
    'config', 'synthetic', ['synthetic', 'kaggle'], 'Which builder config.'
)
_DATA_DIR = flags.DEFINE_string(
    'data_dir', '~/tensorflow_datasets', 'Where the dataset is written.'
)
_MANUAL_DIR = flags.DEFINE_string(
    'manual_dir', None, 'kaggle: the directory holding the Kaggle download.'
)
_VALIDATION_PERCENT = flags.DEFINE_float(
    'validation_percent', 10.0, 'Share of labelled galaxies in validation.'
)
_SKIP_BAD_IMAGES = flags.DEFINE_bool(
    'skip_bad_images', False,
    'Skip missing or undecodable images (and report them) instead of failing.',
)
_OVERWRITE = flags.DEFINE_bool(
    'overwrite', False, 'Rebuild even if the dataset already exists.'
)
_NUM_LABELLED = flags.DEFINE_integer(
    'num_labelled', 3000, 'synthetic: galaxies in train + validation.'
)
_NUM_TEST = flags.DEFINE_integer(
    'num_test', 300, 'synthetic: unlabelled galaxies in test.'
)
_IMAGE_SIZE = flags.DEFINE_integer(
    'image_size', 424, 'synthetic: image side in pixels.'
)
_SEED = flags.DEFINE_integer('seed', 0, 'synthetic: the random universe.')
_NUM_WORKERS = flags.DEFINE_integer(
    'num_workers', None, 'synthetic: rendering processes (default: all cores).'
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # TFDS's file-by-file chatter.
  options = dict(
      validation_percent=_VALIDATION_PERCENT.value,
      skip_bad_images=_SKIP_BAD_IMAGES.value,
  )
  if _CONFIG.value == 'synthetic':
    options.update(
        num_labelled=_NUM_LABELLED.value,
        num_test=_NUM_TEST.value,
        image_size=_IMAGE_SIZE.value,
        seed=_SEED.value,
        num_workers=_NUM_WORKERS.value,
    )
  start = time.perf_counter()
  try:
    dataset = galaxy_zoo.prepare(
        _CONFIG.value,
        _DATA_DIR.value,
        manual_dir=_MANUAL_DIR.value,
        overwrite=_OVERWRITE.value,
        **options,
    )
  except errors.GzjaxError as e:  # What the user can fix; bugs keep tracebacks.
    print(f'Build failed: {e}', file=sys.stderr)
    sys.exit(2)
  print(galaxy_zoo.summarize(dataset))
  print(f'\nDone in {time.perf_counter() - start:.1f} s.')


if __name__ == '__main__':
  app.run(main)
