"""PNG figures for people: galaxies with their labels.

Matplotlib runs on its ``Agg`` backend, so figures are written on machines
without a screen.
"""

from __future__ import annotations

import io
import json
import pathlib
from typing import Mapping, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
from PIL import Image

from gzjax import taxonomy
from gzjax.data import pipeline

# Answers worth a line under a thumbnail: the leading answer of each main
# question is shown when the question was reached by enough volunteers.
_SUMMARY_QUESTIONS = (1, 2, 3, 4, 6, 7, 11)


def describe_votes(votes: np.ndarray, mask: np.ndarray,
                   min_reached: float = 0.3) -> list[str]:
  """Short lines such as ``'features or disk 0.82'`` for the main questions.

  A question is shown when its parent answer's value is at least
  ``min_reached``, with its leading answer and that answer's conditional
  fraction; unknown questions are left out.
  """
  known = np.where(mask, votes, np.nan)
  conditional = taxonomy.cumulative_to_conditional(known)
  lines = []
  for question in taxonomy.QUESTIONS:
    if question.number not in _SUMMARY_QUESTIONS:
      continue
    answers = conditional[question.slice]
    if np.isnan(answers).any():
      continue
    reached = (1.0 if question.parent is None
               else known[taxonomy.index(question.parent)])
    if reached < min_reached:
      continue
    best = int(np.argmax(answers))
    lines.append(f'{question.answers[best]} {answers[best]:.2f}')
  return lines


def galaxy_grid(
    records: Sequence[Mapping[str, object]],
    path: str | pathlib.Path,
    *,
    predictions: Sequence[np.ndarray] | None = None,
    columns: int = 4,
    title: str | None = None,
) -> pathlib.Path:
  """Writes a grid of galaxies with ID, 3-/7-class labels and leading answers.

  Args:
    records: dataset records (``image`` JPEG bytes, ``galaxy_id``, ``votes``,
      ``votes_mask``, ``label_3class``, ``label_7class``).
    path: the PNG to write; parent folders are created.
    predictions: a model's 37 vote fractions per record; when given, each
      thumbnail shows the true and the predicted leading answers.
    columns: thumbnails per row.
    title: figure title.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  rows = -(-len(records) // columns)
  figure, axes = plt.subplots(
      rows, columns,
      figsize=(3.0 * columns,
               (4.0 if predictions is None else 4.9) * rows + 0.4 * bool(title)),
      squeeze=False, layout='constrained',
  )
  for axis in axes.ravel():
    axis.axis('off')
  for index, (axis, record) in enumerate(zip(axes.ravel(), records)):
    with Image.open(io.BytesIO(record['image'])) as image:
      axis.imshow(np.asarray(pipeline.to_rgb(image)))  # The model's pixels.
    label3 = int(record['label_3class'])
    label7 = int(record['label_7class'])
    lines = [
        f'{int(record["galaxy_id"])}',
        '3-class: '
        + (taxonomy.THREE_CLASS_NAMES[label3] if label3 >= 0 else '—'),
        '7-class: '
        + (taxonomy.SEVEN_CLASS_NAMES[label7] if label7 >= 0 else '—'),
    ]
    truth = describe_votes(
        np.asarray(record['votes']), np.asarray(record['votes_mask']))[:4]
    if predictions is None:
      lines += truth
    else:
      predicted = describe_votes(np.asarray(predictions[index]),
                                 np.ones(taxonomy.NUM_ANSWERS, bool))[:4]
      lines += [f'true: {t}' for t in truth]
      lines += [f'pred: {p}' for p in predicted]
    axis.set_title('\n'.join(lines), fontsize=7.5, loc='left')
  if title:
    figure.suptitle(title)
  figure.savefig(path, dpi=100)
  plt.close(figure)
  return path


def learning_curves(metrics_jsonl: str | pathlib.Path,
                    path: str | pathlib.Path) -> pathlib.Path | None:
  """Training loss and every validation scalar against the step.

  Returns None (and writes nothing) when the log holds no training loss yet.
  """
  rows = [json.loads(line) for line in
          pathlib.Path(metrics_jsonl).read_text().splitlines() if line]
  train = [(r['step'], r['train/loss']) for r in rows if 'train/loss' in r]
  if not train:
    return None
  keys = sorted({k for r in rows for k in r
                 if k.startswith('validation/') and k.count('/') == 1
                 and k != 'validation/count'})
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  figure, axes = plt.subplots(1, 1 + bool(keys), figsize=(6 + 6 * bool(keys), 4),
                              squeeze=False)
  axes[0, 0].plot(*zip(*train), label='train loss')
  axes[0, 0].set_xlabel('step')
  axes[0, 0].set_yscale('log')
  axes[0, 0].legend()
  for key in keys:
    points = [(r['step'], r[key]) for r in rows if key in r]
    axes[0, 1].plot(*zip(*points), marker='o', label=key)
  if keys:
    axes[0, 1].set_xlabel('step')
    axes[0, 1].legend()
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)
  return path


def confusion_matrix(matrix: np.ndarray, class_names: Sequence[str],
                     path: str | pathlib.Path,
                     title: str | None = None) -> pathlib.Path:
  """The confusion matrix as counts, shaded by each true class's share."""
  matrix = np.asarray(matrix)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
  size = 1.2 + 0.9 * len(class_names)
  figure, axis = plt.subplots(figsize=(size + 1.5, size))
  image = axis.imshow(shares, cmap='Blues', vmin=0, vmax=1)
  for (row, column), count in np.ndenumerate(matrix):
    axis.text(column, row, str(count), ha='center', va='center',
              color='white' if shares[row, column] > 0.5 else 'black')
  axis.set_xticks(range(len(class_names)), class_names, rotation=45,
                  ha='right')
  axis.set_yticks(range(len(class_names)), class_names)
  axis.set_xlabel('predicted')
  axis.set_ylabel('true')
  figure.colorbar(image, ax=axis, label='share of the true class')
  if title:
    axis.set_title(title)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)
  return path


def reliability(table: Mapping[str, Sequence[float]],
                path: str | pathlib.Path, title: str = '') -> pathlib.Path:
  """Calibration plot of :func:`gzjax.metrics.reliability`'s table: the
  observed positive fraction against the mean predicted probability per bin
  (marker area by count), and the diagonal a calibrated model follows."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  figure, axis = plt.subplots(figsize=(4.5, 4.5))
  axis.plot([0, 1], [0, 1], color='0.6', linestyle='--', label='calibrated')
  counts = np.asarray(table['count'], np.float64)
  axis.plot(table['mean_predicted'], table['observed'], color='C0')
  axis.scatter(table['mean_predicted'], table['observed'], color='C0',
               s=20 + 200 * counts / max(counts.max(initial=1), 1),
               label='validation bins')
  axis.set_xlim(0, 1)
  axis.set_ylim(0, 1)
  axis.set_xlabel('mean predicted probability')
  axis.set_ylabel('observed fraction of positives')
  axis.set_title(f'Reliability {title}'.strip())
  axis.legend(loc='upper left')
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)
  return path


def label_curve(curves: Mapping[str, Sequence[tuple[int, float]]],
                path: str | pathlib.Path, metric: str = 'validation ROC AUC',
                chance: float | None = 0.5) -> pathlib.Path:
  """The few-label curve: ``metric`` against the number of training labels
  (log axis), one line per starting point (``{name: [(labels, value)]}``),
  and the chance level."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  figure, axis = plt.subplots(figsize=(6, 4.5))
  for name, points in curves.items():
    counts, values = zip(*sorted(points))
    axis.plot(counts, values, marker='o', label=name)
  if chance is not None:
    axis.axhline(chance, color='0.6', linestyle='--', label='chance')
  axis.set_xscale('log')
  axis.set_xlabel('training labels')
  axis.set_ylabel(metric)
  axis.set_title(f'{metric} against training labels')
  axis.legend(loc='lower right')
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)
  return path
