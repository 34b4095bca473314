"""What is learned: the built-in tasks, and the labels of a split's records.

A :class:`Task` names the outputs, the label field and the class names (and,
for a label catalogue's task, its own loss and metrics); ``scan_labels`` reads
every record's votes and labels once, and ``labelled_indices`` keeps the
records a classifier can learn from.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Sequence

import ml_collections
import numpy as np

from gzjax import errors
from gzjax import taxonomy
from gzjax.data import fields


@dataclasses.dataclass(frozen=True)
class Task:
  """What is learned: the outputs, the label field and the class names."""

  name: str
  num_outputs: int
  label_key: str | None = None
  class_names: tuple[str, ...] = ()
  # A task of your own (gzjax.finetune) brings its head kind, its loss
  # ``(outputs, batch) -> scalar``, its predictions ``outputs -> outputs``,
  # its metrics ``predict_split result -> dict`` and its one-line summary
  # ``(values) -> str``, and its named prediction columns
  # ``outputs -> {name: values}`` for prediction files; None keeps the
  # built-in behaviour.
  head: str = ''
  loss: Callable | None = None
  activate: Callable | None = None
  evaluate: Callable | None = None
  summary: Callable | None = None
  columns: Callable | None = None

  @property
  def is_classification(self) -> bool:
    return self.label_key is not None


TASKS = {
    'votes': Task('votes', taxonomy.NUM_ANSWERS),
    '3class': Task('3class', 3, 'label_3class', taxonomy.THREE_CLASS_NAMES),
    '7class': Task('7class', 7, 'label_7class', taxonomy.SEVEN_CLASS_NAMES),
}


class LabelledSubset(Sequence):
  """The records of a source that have a class (label >= 0)."""

  def __init__(self, source, indices: np.ndarray):
    self._source = source
    self._indices = np.asarray(indices)

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, index):
    return self._source[int(self._indices[index])]


def scan_labels(source) -> dict[str, np.ndarray]:
  """Votes, masks and labels of every record (one read of the split)."""
  records = [source[i] for i in range(len(source))]
  return {k: np.stack([np.asarray(r[k]) for r in records])
          for k in fields.LABELS}


def task_of(config: ml_collections.ConfigDict) -> Task:
  if config.task not in TASKS:
    raise errors.ConfigError(
        f'Unknown task {config.task!r} (config.task); choose one of'
        f' {", ".join(TASKS)}.')
  return TASKS[config.task]


def labelled_indices(labels: Mapping[str, np.ndarray],
                     task: Task) -> np.ndarray:
  """Indices of the records that have a class for the task."""
  kept = np.flatnonzero(labels[task.label_key] >= 0)
  if not len(kept):
    raise errors.DataError(f'No training galaxy has a {task.name} label.')
  return kept
