r"""Fine-tune on your own labels: a label catalogue as a task for the engine.

  python -m gzjax.finetune --config=configs/finetune_spiral.py \
      --workdir=/tmp/spiral

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
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gzjax import losses
from gzjax import metrics
from gzjax import tasks
from gzjax import train
from gzjax.data import labels as labels_lib

VOTE_CONCENTRATION = 99.0


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

  return tasks.Task(name, sum(c.num_outputs for c in columns), head='linear',
                    loss=loss, activate=activate, evaluate=evaluate,
                    summary=summary)


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


def _record_labels(workdir: pathlib.Path, table: labels_lib.LabelTable):
  """Writes labels.json; a resumed run must have the same columns/classes."""
  path = workdir / 'labels.json'
  manifest = table.manifest()
  if path.is_file():
    recorded = json.loads(path.read_text())
    if recorded['columns'] != json.loads(json.dumps(manifest['columns'])):
      raise labels_lib.LabelError(
          f'{path} records other columns or classes than'
          f' {table.source} has now ({recorded["columns"]} vs'
          f' {manifest["columns"]}); use a new --workdir.')
    return
  workdir.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(manifest, indent=2))


def run(config: ml_collections.ConfigDict,
        workdir: str | pathlib.Path) -> dict[str, Any]:
  """Fine-tunes on ``config.labels``; returns the last validation metrics."""
  workdir = pathlib.Path(workdir)
  table = labels_lib.read(config.labels)
  _record_labels(workdir, table)
  task = make_task(table.columns)
  result = train.train_and_evaluate(
      config, workdir, task=task,
      train_source=labels_lib.LabelSource(table, 'train'),
      validation_source=labels_lib.LabelSource(table, 'validation'))
  if jax.process_index() == 0:
    from gzjax import plots  # pylint: disable=g-import-not-at-top
    for column in table.columns:
      if column.kind == 'binary' and column.name in result:
        plots.reliability(result[column.name]['reliability'],
                          workdir / 'plots' / f'reliability_{column.name}.png',
                          title=column.name)
  return result


def _printable(values):
  if isinstance(values, Mapping):
    return {k: _printable(v) for k, v in values.items()
            if k not in ('reliability', 'per_class')}
  return values

