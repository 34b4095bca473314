r"""Builds the ``galaxy_zoo`` dataset without TensorFlow.

``tfds build`` imports TensorFlow; this command drives the same builder through
``download_and_prepare`` and prints a summary: examples per split, the decision
tree's consistency on the labelled votes, the label mix and skipped images.

  python -m gzjax.data.build --config=synthetic --data_dir=~/tensorflow_datasets
  python -m gzjax.data.build --config=kaggle \
      --manual_dir=/path/to/galaxy-zoo-the-galaxy-challenge \
      --data_dir=~/tensorflow_datasets

Bad input (a missing manual file, a malformed CSV, undecodable images) stops
the build with a message naming the file, line, column or GalaxyID, and
leaves no dataset behind that would load as complete.
"""

from __future__ import annotations

import collections
import pathlib
import sys
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from gzjax import taxonomy
from gzjax.data import galaxy_zoo
from gzjax.data import kaggle

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


def build(
    config: str,
    data_dir: str | pathlib.Path,
    *,
    manual_dir: str | pathlib.Path | None = None,
    overwrite: bool = False,
    **options,
) -> galaxy_zoo.GalaxyZoo:
  """Builds (or finds) the dataset; returns the builder that did it.

  Raises:
    kaggle.DataError: bad input, with the file, line, column or GalaxyID.
  """
  data_dir = pathlib.Path(data_dir).expanduser()
  if config == 'kaggle':
    if manual_dir is None:
      raise kaggle.DataError(
          'The kaggle config needs --manual_dir.\n'
          + kaggle.DOWNLOAD_INSTRUCTIONS
      )
    manual_dir = pathlib.Path(manual_dir).expanduser()
    kaggle.locate_files(manual_dir)  # Fail fast, before TFDS starts.
  dataset = galaxy_zoo.builder(config, data_dir, **options)
  tfds.disable_progress_bar()  # Ours show totals; TFDS's cannot.
  dataset.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          manual_dir=None if manual_dir is None else str(manual_dir),
          download_mode=(
              tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
              if overwrite
              else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
          ),
      )
  )
  return dataset


def summary(dataset: galaxy_zoo.GalaxyZoo) -> str:
  """Examples per split, tree consistency, label mix and skipped images."""
  lines = [f'Dataset {dataset.info.full_name} in {dataset.data_path}']
  for name, split in dataset.info.splits.items():
    lines.append(f'  {name:<11s}{split.num_examples:>9,d} examples')
  votes = [v for split in dataset.report.votes.values() for v in split]
  if votes:
    votes = np.stack(votes)
    lines += ['', 'Decision-tree consistency of the labelled votes:']
    lines.append(
        taxonomy.format_consistency_report(taxonomy.consistency_report(votes))
    )
    lines += ['', 'Labels (-1: none):']
    for name, labels, names in (
        ('3-class', taxonomy.three_class_labels(votes),
         taxonomy.THREE_CLASS_NAMES),
        ('7-class', taxonomy.seven_class_labels(votes),
         taxonomy.SEVEN_CLASS_NAMES),
    ):
      counts = collections.Counter(labels.tolist())
      mix = ', '.join(
          f'{names[k] if k >= 0 else "none"}: {counts[k]}'
          for k in sorted(counts)
      )
      lines.append(f'  {name}: {mix}')
  elif dataset.is_prepared():
    lines.append('(already built; rebuild with --overwrite for the full report)')
  skipped = {k: v for k, v in dataset.report.skipped.items() if v}
  lines.append('')
  if skipped:
    total = sum(len(v) for v in skipped.values())
    lines.append(f'Skipped {total} bad images (--skip_bad_images):')
    for split, bad in skipped.items():
      for galaxy_id, problem in bad[:10]:
        lines.append(f'  {split}: {galaxy_id}: {problem}')
      if len(bad) > 10:
        lines.append(f'  {split}: … and {len(bad) - 10} more')
  else:
    lines.append('Skipped images: none')
  return '\n'.join(lines)


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
    dataset = build(
        _CONFIG.value,
        _DATA_DIR.value,
        manual_dir=_MANUAL_DIR.value,
        overwrite=_OVERWRITE.value,
        **options,
    )
  except kaggle.DataError as e:
    print(f'Build failed: {e}', file=sys.stderr)
    sys.exit(2)
  print(summary(dataset))
  print(f'\nDone in {time.perf_counter() - start:.1f} s.')


if __name__ == '__main__':
  app.run(main)
