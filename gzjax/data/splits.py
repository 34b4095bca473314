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
    return _data_source(config, split)
  try:
    return _data_source(config, split)
  except galaxy_zoo.DatasetNotBuiltError:
    if name != 'synthetic':
      raise
    galaxy_zoo.prepare('synthetic', config.data_dir, **config.synthetic)
  return _data_source(config, split)


def _data_source(config: ml_collections.ConfigDict, split: str):
  """``galaxy_zoo.data_source``; a validation split asked of a dataset
  built without one is refused saying so and how to build one (its
  generic line names the splits it has, and nothing to do)."""
  if split == 'validation' and not has_validation(config):
    raise errors.ConfigError(
        f'{config.dataset} in {config.data_dir} was built without a'
        ' validation split (--validation_percent=0), so it has none to'
        f' evaluate: {_rebuild_advice(config)}, or pass --split=train (the'
        ' galaxies it trained on).')
  return galaxy_zoo.data_source(dataset_config_name(config),
                                config.data_dir, split)


def has_validation(config: ml_collections.ConfigDict) -> bool:
  """Whether the dataset ``config`` names has a validation split: not when
  it was built with ``--validation_percent=0`` ("train on everything").  A
  dataset not built yet will have one (a build on first use takes the
  default share)."""
  dataset = galaxy_zoo.builder(dataset_config_name(config), config.data_dir)
  return not dataset.is_prepared() or 'validation' in dataset.info.splits


def _validation_uses(config: ml_collections.ConfigDict) -> dict[str, str]:
  """What in ``config`` needs a validation split, as ``{override that
  turns it off: what it does}``: periodic evaluation and the best
  checkpoint (without either, training evaluates only at its end)."""
  uses = {}
  if config.eval_every_steps:
    uses['--config.eval_every_steps=0'] = (
        f'config.eval_every_steps={config.eval_every_steps} evaluates on it')
  if config.best_metric:
    uses["--config.best_metric=''"] = (
        f'config.best_metric={config.best_metric!r} ranks checkpoints on it')
  return uses


def check_validation(config: ml_collections.ConfigDict) -> bool:
  """Whether training can evaluate on a validation split; refuses, before
  anything is built or written, a config that needs one when the dataset
  has none.

  A dataset built with ``--validation_percent=0`` means "train on
  everything": a config that neither evaluates periodically nor keeps a
  best checkpoint then trains without evaluating, the final evaluation
  included (there is nothing to evaluate on).

  Raises:
    ConfigError: naming the dataset, what in the config needs validation,
      and the two ways out.
  """
  if has_validation(config):
    return True
  refuse_evaluating_without(
      config, f'{config.dataset} in {config.data_dir} has no validation'
      ' split', _rebuild_advice(config))
  return False


def _rebuild_advice(config: ml_collections.ConfigDict) -> str:
  """How to give ``config``'s dataset a validation split: the build
  command, for every line that finds none."""
  name = dataset_config_name(config)
  manual = (f' --manual_dir={config.manual_dir or "DIR"}'
            if name == 'kaggle' else '')
  return (f'rebuild it with one (python -m gzjax.data.build --config={name}'
          f'{manual} --data_dir={config.data_dir} --validation_percent=10'
          ' --overwrite, with its other options as before)')


def refuse_evaluating_without(config: ml_collections.ConfigDict,
                              missing: str, remedy: str) -> None:
  """Refuses a config that evaluates periodically or keeps a best
  checkpoint where there is no validation split (``missing`` says where),
  in one line: what needs it, ``remedy`` (how to get one) and the
  overrides that train on everything without evaluating.  A built dataset
  and a label catalogue (gzjax.finetune) share it.

  Raises:
    ConfigError: when the config needs a validation split.
  """
  uses = _validation_uses(config)
  if uses:
    raise errors.ConfigError(
        f'{missing}, but {" and ".join(uses.values())}: {remedy}, or train'
        f' on all of it without evaluating: {" ".join(uses)}.')


def training_split(config: ml_collections.ConfigDict, task: tasks.Task):
  """The train split, reduced to galaxies with a class for classifiers."""
  source = open_split(config, 'train')
  if not task.is_classification:
    return source
  return tasks.LabelledSubset(
      source, tasks.labelled_indices(tasks.scan_labels(source), task))
