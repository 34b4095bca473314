"""Opening the Galaxy Zoo splits a config names (building them when missing)."""

from __future__ import annotations

import ml_collections

from gzjax import errors
from gzjax import tasks
from gzjax.data import galaxy_zoo


def dataset_config_name(config: ml_collections.ConfigDict) -> str:
  name, _, builder_config = config.dataset.partition('/')
  if name != galaxy_zoo.NAME or builder_config not in ('kaggle', 'synthetic'):
    raise errors.ConfigError(
        f'config.dataset={config.dataset!r}: use galaxy_zoo/kaggle or'
        ' galaxy_zoo/synthetic.')
  return builder_config


def open_split(config: ml_collections.ConfigDict, split: str):
  """The records of ``split``; builds the synthetic dataset when missing.

  With ``config.manual_dir`` set, a missing Kaggle dataset is built from it
  and an existing one is checked against it as the build command checks
  (``galaxy_zoo.prepare``): one built from another download is refused,
  not silently trained on.  Without it, a missing dataset's error names the
  exact build command.
  """
  name = dataset_config_name(config)
  if name == 'kaggle' and config.manual_dir:
    # gzjax.main has neither --skip_bad_images nor --overwrite: name the
    # command that does.
    command = ('python -m gzjax.data.build --config=kaggle'
               f' --manual_dir={config.manual_dir}'
               f' --data_dir={config.data_dir}')
    galaxy_zoo.prepare(
        'kaggle', config.data_dir, manual_dir=config.manual_dir,
        options_chosen=False,
        skip_hint=f'build it yourself with {command} --skip_bad_images',
        overwrite_hint=(
            f'Rebuild it from config.manual_dir with {command} --overwrite'
            ' (the old one stays until the new one is complete), choose'
            ' another config.data_dir, or leave config.manual_dir empty to'
            ' use the dataset as it is'))
    return galaxy_zoo.data_source(name, config.data_dir, split)
  try:
    return galaxy_zoo.data_source(name, config.data_dir, split)
  except galaxy_zoo.DatasetNotBuiltError:
    if name != 'synthetic':
      raise
    galaxy_zoo.prepare('synthetic', config.data_dir, **config.synthetic)
  return galaxy_zoo.data_source(name, config.data_dir, split)


def training_split(config: ml_collections.ConfigDict, task: tasks.Task):
  """The train split, reduced to galaxies with a class for classifiers."""
  source = open_split(config, 'train')
  if not task.is_classification:
    return source
  return tasks.LabelledSubset(
      source, tasks.labelled_indices(tasks.scan_labels(source), task))
