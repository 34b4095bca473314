r"""Fine-tune on your own labels: a label catalogue as a task for the engine.

  python -m gzjax.main --config=configs/finetune_spiral.py \
      --workdir=/tmp/spiral

(``gzjax.main`` sees ``config.labels.catalog`` and runs this module's
:func:`run`; ``python -m gzjax.finetune`` only says so.)

``config.labels`` (gzjax.data.labels) names the catalogue and its columns;
this module turns them into a :class:`gzjax.tasks.Task` (one linear output
per binary/regression column, one per class, one per answer of a votes
question; a masked loss per kind, summed; metrics per kind) and hands it and
the catalogue's two splits to :func:`gzjax.train.train_and_evaluate`, the
same loop, step and checkpoints as the built-in tasks.

Losses: binary cross-entropy of a logit; softmax cross-entropy; squared
error; for vote counts the Dirichlet-multinomial likelihood of Zoobot, with
concentrations ``1 + 99 sigmoid(z)`` per answer.  Predictions: the
probability of 1; class probabilities; the value; the expected vote
fractions ``a / sum(a)``.  Metrics on the validation split: accuracy, F1,
macro-F1, ROC AUC and a reliability table (plotted to
``plots/reliability_<column>.png``) for binary; accuracy, macro-F1 and the
confusion matrix for multiclass; RMSE and MAE for regression; the RMSE of
the vote fractions for votes.  The run records the columns, their kinds and
the class order in ``labels.json``.

A run's checkpoints are used through ``gzjax.main`` with the same config:
:func:`evaluate` (``--mode=evaluate``) scores the catalogue's split with
``gzjax.evaluate``'s restore, prediction and TTA; :func:`predict`
(``--mode=predict``) writes the catalogue's rows or a folder of images, and
``gzjax.predict`` a survey (``--output_dir``), with the columns of
:func:`prediction_names`.  Both take the task from the run's ``labels.json``
(class order included), checked against ``config.labels``
(:func:`recorded_columns`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import pathlib
import sys
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from gzjax import config_checks
from gzjax import errors
from gzjax import evaluate as evaluate_lib
from gzjax import losses
from gzjax import metric_writer
from gzjax import metrics
from gzjax import progress
from gzjax import tasks
from gzjax import train
from gzjax import workdir_rules
from gzjax.data import catalog as catalogs
from gzjax.data import fields
from gzjax.data import labels as labels_lib
from gzjax.data import splits

VOTE_CONCENTRATION = 99.0
# A binary column's ``<column>_predicted`` is 1 from this probability on (as
# the metrics' accuracy and F1 count it).
BINARY_THRESHOLD = 0.5


def output_slices(columns) -> list[tuple[labels_lib.Column, slice]]:
  """Each column's slice of the model's outputs, in the order of config.labels.columns (ConfigDict sorts the names)."""
  slices, start = [], 0
  for column in columns:
    slices.append((column, slice(start, start + column.num_outputs)))
    start += column.num_outputs
  return slices


def _concentrations(logits: jax.Array) -> jax.Array:
  return 1.0 + VOTE_CONCENTRATION * jax.nn.sigmoid(logits)


def make_task(columns, name: str = 'labels') -> tasks.Task:
  """The engine's task for the declared (and read) label columns."""
  slices = output_slices(columns)

  def loss(outputs: jax.Array, batch: Mapping[str, Any]) -> jax.Array:
    targets, real = batch['targets'], batch['example_mask']
    total = jnp.zeros((), jnp.float32)
    for column, part in slices:
      value = targets[f'{column.name}/value']
      mask = targets[f'{column.name}/mask'] & real
      out = outputs[:, part].astype(jnp.float32)
      if column.kind == 'binary':
        total += losses.masked_sigmoid_bce(out[:, 0], value, mask)
      elif column.kind == 'multiclass':
        total += losses.masked_class_ce(out, value, mask)
      elif column.kind == 'regression':
        total += losses.masked_regression_mse(out[:, 0], value, mask)
      else:
        total += losses.dirichlet_multinomial_nll(
            _concentrations(out), value, mask)
    return total

  def activate(outputs: jax.Array) -> jax.Array:
    parts = []
    for column, part in slices:
      out = outputs[:, part].astype(jnp.float32)
      if column.kind == 'binary':
        parts.append(jax.nn.sigmoid(out))
      elif column.kind == 'multiclass':
        parts.append(jax.nn.softmax(out))
      elif column.kind == 'regression':
        parts.append(out)
      else:
        a = _concentrations(out)
        parts.append(a / a.sum(-1, keepdims=True))
    return jnp.concatenate(parts, axis=-1)

  def evaluate(predictions: Mapping[str, Any]) -> dict[str, Any]:
    return score(columns, predictions['outputs'], predictions['targets'])

  def summary(values: Mapping[str, Any]) -> str:
    return '; '.join(_column_summary(c, values[c.name]) for c in columns)

  _check_prediction_names(columns)

  def prediction_columns(outputs: np.ndarray) -> dict[str, Any]:
    """Activated ``outputs`` as the named columns of a prediction file."""
    outputs = np.asarray(outputs, np.float32)
    named = {}
    for column, part in slices:
      out, name = outputs[:, part], column.name
      if column.kind == 'binary':
        named[f'{name}_probability'] = out[:, 0]
        named[f'{name}_predicted'] = (
            out[:, 0] >= BINARY_THRESHOLD).astype(np.int64)
      elif column.kind == 'multiclass':
        for k, class_name in enumerate(column.classes):
          named[f'{name}_{class_name}'] = out[:, k]
        named[f'{name}_predicted'] = [column.classes[k]
                                      for k in out.argmax(-1)]
      elif column.kind == 'regression':
        named[name] = out[:, 0]
      else:
        for k, answer in enumerate(column.answers):
          named[f'{name}_{answer}'] = out[:, k]
    return named

  return tasks.Task(name, sum(c.num_outputs for c in columns), head='linear',
                    loss=loss, activate=activate, evaluate=evaluate,
                    summary=summary, columns=prediction_columns)


def prediction_names(columns) -> list[str]:
  """The columns of a prediction file, after ``id``, in order."""
  names = []
  for column in columns:
    if column.kind == 'binary':
      names += [f'{column.name}_probability', f'{column.name}_predicted']
    elif column.kind == 'multiclass':
      names += [f'{column.name}_{c}' for c in column.classes]
      names.append(f'{column.name}_predicted')
    elif column.kind == 'regression':
      names.append(column.name)
    else:
      names += [f'{column.name}_{a}' for a in column.answers]
  return names


def _check_prediction_names(columns) -> None:
  """Two label columns (or classes) whose prediction columns would have one
  name are refused before training, not found out when predicting."""
  seen = {'id'}
  for name in prediction_names(columns):
    if name in seen:
      raise labels_lib.LabelError(
          f'config.labels.columns: the prediction files would have two'
          f' columns named {name!r} (from the label columns'
          f' {", ".join(c.name for c in columns)} and their classes or'
          ' answers); rename a column or class.')
    seen.add(name)


def score(columns, outputs: np.ndarray,
          targets: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Metrics per column over its known rows (activated ``outputs``)."""
  result = {}
  for column, part in output_slices(columns):
    mask = np.asarray(targets[f'{column.name}/mask'], bool)
    value = np.asarray(targets[f'{column.name}/value'])[mask]
    out = np.asarray(outputs)[mask][:, part]
    if column.kind == 'binary':
      report = metrics.binary_report(value, out[:, 0])
      report['reliability'] = metrics.reliability(value, out[:, 0])
    elif column.kind == 'multiclass':
      report = metrics.classification_report(value, out.argmax(-1),
                                             column.classes)
    elif column.kind == 'regression':
      report = metrics.regression_report(out[:, 0], value)
    else:
      fractions = value / value.sum(-1, keepdims=True)
      report = {'fraction_rmse': metrics.vote_rmse(out, fractions),
                'count': int(mask.sum())}
    result[column.name] = report
  return result


def metric_names(columns) -> list[str]:
  """The scalars a validation of these columns logs, as ``best_metric``
  names them (``validation/<column>/<metric>``): those of :func:`score` on
  two made-up rows, so that the list cannot drift from what is logged."""
  outputs = np.full((2, sum(c.num_outputs for c in columns)), 0.5,
                    np.float32)
  targets = {}
  for column in columns:
    targets[f'{column.name}/mask'] = np.ones(2, bool)
    targets[f'{column.name}/value'] = (
        np.ones((2, column.num_outputs), np.float32) if column.kind == 'votes'
        else np.array([0, 1]))
  return sorted(metric_writer.flat_scalars(
      'validation/', score(columns, outputs, targets)))


def check_best_metric(config: ml_collections.ConfigDict, columns) -> None:
  """Refuses a ``config.best_metric`` that no validation of ``columns``
  logs: the run would keep no best checkpoint, and say so only when an
  evaluation asks for it."""
  names = metric_names(columns)
  if config.best_metric and config.best_metric not in names:
    raise errors.ConfigError(
        f'config.best_metric={config.best_metric!r} is not a metric of'
        f' the label columns {[c.name for c in columns]}: set it to \'\' (no'
        ' best checkpoint) or one of ' + ', '.join(names) + '.')


def _check_classes(config: ml_collections.ConfigDict,
                   table: labels_lib.LabelTable) -> None:
  """Refuses, before anything is written, a classification column of one
  class (:func:`gzjax.data.labels.check_classes`) and a ``best_metric``
  that is the ROC AUC of a binary column whose validation split holds one
  class: NaN at every evaluation, it could rank no checkpoint.  Warns in a
  line about such a column otherwise."""
  for name, warning in labels_lib.check_classes(table, config.labels).items():
    if config.best_metric == f'validation/{name}/roc_auc':
      raise errors.ConfigError(
          f'config.best_metric={config.best_metric!r} cannot rank'
          f' checkpoints: {warning.removesuffix(".")}, or choose another'
          f' best_metric (e.g. validation/{name}/accuracy).')
    if jax.process_index() == 0:
      print(f'gzjax: WARNING: {warning}', file=sys.stderr, flush=True)


def _column_summary(column, values: Mapping[str, Any]) -> str:
  if column.kind == 'binary':
    return (f'{column.name} accuracy {values["accuracy"]:.4f}, F1'
            f' {values["f1"]:.4f}, ROC AUC {values["roc_auc"]:.4f}'
            f' ({values["count"]} galaxies)')
  if column.kind == 'multiclass':
    return (f'{column.name} accuracy {values["accuracy"]:.4f}, macro-F1'
            f' {values["macro_f1"]:.4f} ({values["count"]} galaxies)')
  if column.kind == 'regression':
    return (f'{column.name} RMSE {values["rmse"]:.4f}, MAE'
            f' {values["mae"]:.4f} ({values["count"]} galaxies)')
  return (f'{column.name} fraction RMSE {values["fraction_rmse"]:.4f}'
          f' ({values["count"]} galaxies)')


def _labels_record(workdir: pathlib.Path,
                   table: labels_lib.LabelTable) -> dict[str, str]:
  """labels.json, as training's records (written when the run starts
  writing, so that a start refused before it leaves none); {} when resuming
  a run whose labels.json records the same columns and classes (other ones
  are refused).  One left by an attempt that saved no checkpoint (it failed
  after its start, before its first save) protects nothing: it is
  replaced."""
  path = workdir / 'labels.json'
  manifest = table.manifest()
  if path.is_file() and workdir_rules.has_checkpoints(workdir):
    recorded = json.loads(path.read_text())
    if recorded['columns'] != json.loads(json.dumps(manifest['columns'])):
      raise labels_lib.LabelError(
          f'{path} records other columns or classes than'
          f' {table.source} has now ({recorded["columns"]} vs'
          f' {manifest["columns"]}); use a new --workdir.')
    return {}
  return {'labels.json': json.dumps(manifest, indent=2)}


def is_catalogue_run(config: ml_collections.ConfigDict) -> bool:
  """Whether ``config`` fine-tunes on a label catalogue (config.labels)."""
  return 'labels' in config and bool(config.labels.catalog)


def _validation_source(config: ml_collections.ConfigDict,
                       table: labels_lib.LabelTable
                       ) -> labels_lib.LabelSource | None:
  """The catalogue's validation split; None when it has no row
  (``labels.validation_percent=0``, or a split column that marks none):
  training then uses every row without evaluating, as on a dataset built
  with ``--validation_percent=0``, and a config that evaluates
  periodically or keeps a best checkpoint is refused as there
  (:func:`gzjax.data.splits.refuse_evaluating_without`)."""
  if len(table.rows('validation')):
    return labels_lib.LabelSource(table, 'validation')
  labels = config.labels
  why = (f'its {labels.split_column!r} column marks no row validation'
         if labels.split_column else
         f'labels.validation_percent={labels.validation_percent:g}')
  splits.refuse_evaluating_without(
      config, f'{table.source} has no validation split ({why})',
      labels_lib.split_advice(labels, False))
  if jax.process_index() == 0:
    print(f'gzjax: {table.source} has no validation split ({why}): training'
          ' on all of its labelled rows, without evaluating.',
          file=sys.stderr)
  return None


def run(config: ml_collections.ConfigDict,
        workdir: str | pathlib.Path) -> dict[str, Any]:
  """Fine-tunes on ``config.labels``; returns the last validation metrics."""
  # Before the catalogue is read (train_and_evaluate checks it again).
  config_checks.check(config)
  workdir = pathlib.Path(workdir)
  table = labels_lib.read(config.labels)
  check_best_metric(config, table.columns)
  validation = _validation_source(config, table)
  _check_classes(config, table)
  task = make_task(table.columns)
  result = train.train_and_evaluate(
      config, workdir, task=task,
      train_source=labels_lib.LabelSource(table, 'train'),
      validation_source=validation, records=_labels_record(workdir, table))
  if jax.process_index() == 0:
    _plots(workdir, table.columns, result)
  return result


def _plots(workdir: pathlib.Path, columns, result: Mapping[str, Any],
           suffix: str = '') -> None:
  """Reliability plots of binary columns; ``suffix`` names the split."""
  from gzjax import plots  # pylint: disable=g-import-not-at-top
  for column in columns:
    if column.kind == 'binary' and column.name in result:
      plots.reliability(
          result[column.name]['reliability'],
          workdir / 'plots' / f'reliability_{column.name}{suffix}.png',
          title=column.name)


def _describe(column: labels_lib.Column | None) -> str:
  if column is None:
    return 'no column'
  extra = ', '.join(column.classes or column.answers)
  return f'{column.name} ({column.kind}{": " + extra if extra else ""})'


def recorded_columns(config: ml_collections.ConfigDict,
                     workdir: str | pathlib.Path,
                     read_columns=None) -> list[labels_lib.Column]:
  """The label columns a run recorded in its ``labels.json``, class order
  included, checked against ``config.labels``.

  Args:
    config: the experiment config (``config.labels`` set).
    workdir: the fine-tuning run.
    read_columns: the catalogue's columns as read now
      (``labels.read(config.labels).columns``): their classes must then be
      the recorded ones too, in the same order.  Without them, the declared
      names, kinds and answers are checked and the classes come from the
      run alone.

  Raises:
    LabelError: no labels.json, or other columns than the config's; the
      line names the first difference.
  """
  path = pathlib.Path(workdir) / 'labels.json'
  if not path.is_file():
    raise labels_lib.LabelError(
        f'{path}: no such file, so {workdir} is not a run fine-tuned on a'
        ' label catalogue; pass the --workdir of one (gzjax.main with this'
        ' config writes it).')
  try:
    recorded = [labels_lib.Column(c['name'], c['kind'], tuple(c['answers']),
                                  tuple(c['classes']))
                for c in json.loads(path.read_text())['columns']]
  except (ValueError, KeyError, TypeError) as error:
    raise labels_lib.LabelError(
        f'{path}: not a labels.json that gzjax wrote ({type(error).__name__}:'
        f' {error}).') from None
  if read_columns is None:
    current = labels_lib.parse_columns(config.labels.columns)
    recorded_now = [dataclasses.replace(c, classes=()) for c in recorded]
    where = 'config.labels.columns declares'
  else:
    current, recorded_now = list(read_columns), recorded
    where = f'{config.labels.catalog} has'
  for index in range(max(len(current), len(recorded_now))):
    old = recorded_now[index] if index < len(recorded_now) else None
    new = current[index] if index < len(current) else None
    if old != new:
      raise labels_lib.LabelError(
          f'{path} records label column {index + 1} as {_describe(old)} but'
          f' {where} {_describe(new)}: use the config (and catalogue) the'
          ' run was trained with, or train a new --workdir.')
  return recorded


def recorded_task(config: ml_collections.ConfigDict,
                  workdir: str | pathlib.Path,
                  read_columns=None) -> tasks.Task:
  """The task of a fine-tuning run, from its checked ``labels.json``."""
  return make_task(recorded_columns(config, workdir, read_columns))


def evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
             *, split: str = 'validation', checkpoint: str = 'latest',
             tta: bool = False) -> dict[str, Any]:
  """Scores the catalogue's ``split`` with a checkpoint of the run.

  ``gzjax.evaluate.evaluate`` with the run's task and the catalogue's split:
  the metrics of :func:`score`, ``WORKDIR/eval_<split>.json``, the summary
  line of the training loop, and ``plots/reliability_<column>_<split>.png``
  per binary column.
  """
  # Before the catalogue is read (gzjax.evaluate.evaluate checks it again).
  config_checks.check(config)
  workdir = pathlib.Path(workdir)
  evaluate_lib.check_checkpoint_folder(workdir, checkpoint)
  table = labels_lib.read(config.labels)
  task = recorded_task(config, workdir, table.columns)
  source = labels_lib.LabelSource(table, split)
  result = evaluate_lib.evaluate(config, workdir, split=split,
                                 checkpoint=checkpoint, tta=tta, task=task,
                                 source=source)
  if jax.process_index() == 0:
    _plots(workdir, table.columns, result, suffix=f'_{split}')
  return result


def predict(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
            *, output: str | pathlib.Path | None = None,
            images: str | None = None, checkpoint: str = 'latest',
            tta: bool = False) -> pathlib.Path:
  """Predicts the catalogue's own rows, or the images of ``images`` (a
  folder, searched recursively, or a glob; ids are the file names without
  extension), into one CSV or Parquet file (by ``output``'s suffix; default
  ``WORKDIR/predictions.csv``) with the columns of :func:`prediction_names`
  after ``id``, in catalogue (or sorted path) order.  Every image is checked
  first; unusable ones are listed in one error and nothing is written.  For
  a survey, streamed and sharded: ``--output_dir`` (gzjax.predict).

  Returns:
    The file's path.
  """
  from gzjax import predict as predict_lib  # pylint: disable=g-import-not-at-top
  config_checks.check(config)
  workdir = pathlib.Path(workdir)
  output = predict_lib.check_output(output or workdir / 'predictions.csv')
  evaluate_lib.check_checkpoint_folder(workdir, checkpoint)
  task = recorded_task(config, workdir)
  if images:
    catalog = catalogs.open_catalog(images)
  else:
    table = labels_lib.read(config.labels)
    catalog = catalogs.Catalog(table.ids, table.paths, source=table.source)
  source = CatalogImages(catalog, config.input.crop_size)
  experiment, state, _ = evaluate_lib.restore(config, workdir, checkpoint,
                                              task=task)
  result = evaluate_lib.predict_split(experiment, state, source, tta=tta)
  order = np.argsort(result['galaxy_id'], kind='stable')
  ids = [catalog.id(int(row)) for row in result['galaxy_id'][order]]
  columns = predict_lib.output_columns(ids, result['outputs'][order], task)
  if jax.process_index() == 0:
    predict_lib.write_table(output, columns)
    print(f'Wrote {progress.counted(len(ids), "prediction")} to {output}')
  return output


class CatalogImages(Sequence):
  """Unlabelled records of a catalogue's images, ``galaxy_id`` = the row.

  Every image is checked when opened, as ``gzjax.data.catalog.ImageFolder``
  does: a file that cannot be read, is not a complete JPEG or PNG (by its
  suffix) or is smaller than the centre crop is listed in one error;
  nothing is skipped.  A record names its file and id
  (``fields.IMAGE_SOURCE``): an image that fails later, in a batch (changed
  since, or broken past its header), is then named as the user knows it,
  not as a built dataset's damaged galaxy_id.
  """

  def __init__(self, catalog, crop_size: int):
    self._catalog = catalog
    problems = []
    for row in range(len(catalog)):
      problem = _image_problem(catalog.path(row), crop_size)
      if problem is not None:
        problems.append(f'{catalog.path(row)} (id {catalog.id(row)}):'
                        f' {problem}')
    catalogs.refuse_unpredictable(problems, 'image', catalog.source,
                                  'Fix them or leave them out.')

  def __len__(self) -> int:
    return len(self._catalog)

  def __getitem__(self, index: int) -> dict[str, Any]:
    path = self._catalog.path(index)
    where = f'{path} (id {self._catalog.id(index)})'
    try:
      image = pathlib.Path(path).read_bytes()
    except OSError as error:  # Gone or unreadable since the check.
      raise errors.DataError(f'{where}: cannot read it'
                             f' ({error.strerror or error}).') from None
    return {'image': image, 'galaxy_id': int(index),
            fields.IMAGE_SOURCE: where, **fields.no_labels()}


def _image_problem(path: str, crop_size: int) -> str | None:
  kind = catalogs.IMAGE_SUFFIXES.get(pathlib.Path(path).suffix.lower())
  if kind is None:
    return 'not a .jpg, .jpeg or .png file'
  try:
    data = pathlib.Path(path).read_bytes()
  except OSError as error:
    return f'cannot read it ({error.strerror})'
  problem = catalogs.image_problem(data, kind)
  if problem is not None:
    return problem
  with Image.open(io.BytesIO(data)) as image:
    width, height = image.size
  if crop_size > min(width, height):
    return (f'{width}x{height}, smaller than the {crop_size} px centre crop'
            ' (input.crop_size)')
  return None


if __name__ == '__main__':
  sys.exit('gzjax: gzjax.finetune has no command line of its own: run'
           ' python -m gzjax.main --config=configs/finetune_spiral.py'
           ' --workdir=DIR (a config with config.labels.catalog fine-tunes).')
