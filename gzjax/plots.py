"""PNG figures for people: galaxies with their labels.

Matplotlib runs on its ``Agg`` backend, so figures are written on machines
without a screen.
"""

from __future__ import annotations

import io
import pathlib
from typing import Mapping, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
from PIL import Image

from gzjax import taxonomy

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
    columns: int = 4,
    title: str | None = None,
) -> pathlib.Path:
  """Writes a grid of galaxies with ID, 3-/7-class labels and leading answers.

  Args:
    records: dataset records (``image`` JPEG bytes, ``galaxy_id``, ``votes``,
      ``votes_mask``, ``label_3class``, ``label_7class``).
    path: the PNG to write; parent folders are created.
    columns: thumbnails per row.
    title: figure title.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  rows = -(-len(records) // columns)
  figure, axes = plt.subplots(
      rows, columns, figsize=(3.0 * columns, 3.9 * rows), squeeze=False
  )
  for axis in axes.ravel():
    axis.axis('off')
  for axis, record in zip(axes.ravel(), records):
    with Image.open(io.BytesIO(record['image'])) as image:
      axis.imshow(np.asarray(image.convert('RGB')))
    label3 = int(record['label_3class'])
    label7 = int(record['label_7class'])
    lines = [
        f'{int(record["galaxy_id"])}',
        '3-class: '
        + (taxonomy.THREE_CLASS_NAMES[label3] if label3 >= 0 else '—'),
        '7-class: '
        + (taxonomy.SEVEN_CLASS_NAMES[label7] if label7 >= 0 else '—'),
    ]
    lines += describe_votes(
        np.asarray(record['votes']), np.asarray(record['votes_mask'])
    )[:4]
    axis.set_title('\n'.join(lines), fontsize=7.5, loc='left')
  if title:
    figure.suptitle(title)
  figure.tight_layout(rect=(0, 0, 1, 0.98 if title else 1))
  figure.savefig(path, dpi=100)
  plt.close(figure)
  return path
