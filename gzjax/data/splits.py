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

  A missing Kaggle dataset is built when ``config.manual_dir`` is set, else
  the error names the exact build command.
  """
  name = dataset_config_name(config)
  try:
    return galaxy_zoo.data_source(name, config.data_dir, split)
  except galaxy_zoo.DatasetNotBuiltError:
    if name == 'synthetic':
      galaxy_zoo.prepare('synthetic', config.data_dir, **config.synthetic)
    elif config.manual_dir:
      # gzjax.main has no --skip_bad_images: name the command that does.
      galaxy_zoo.prepare(
          'kaggle', config.data_dir, manual_dir=config.manual_dir,
          skip_hint=('build it yourself with python -m gzjax.data.build'
                     f' --config=kaggle --manual_dir={config.manual_dir}'
                     f' --data_dir={config.data_dir} --skip_bad_images'))
    else:
      raise
  return galaxy_zoo.data_source(name, config.data_dir, split)


def training_split(config: ml_collections.ConfigDict, task: tasks.Task):
  """The train split, reduced to galaxies with a class for classifiers."""
  source = open_split(config, 'train')
  if not task.is_classification:
    return source
  return tasks.LabelledSubset(
      source, tasks.labelled_indices(tasks.scan_labels(source), task))
