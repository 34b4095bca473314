"""The metrics of a run: ``metrics.jsonl`` and TensorBoard event files.

Both JSON files a run writes (``metrics.jsonl``, ``eval_<split>.json``) are
strict JSON (:func:`dumps`): a value that is not finite (a question without a
known answer in the split, a diverged loss) is ``null``, since Python's NaN and
Infinity tokens are not JSON and stop other readers (``jq``, JavaScript, Go).
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Mapping

import jax
import numpy as np


class MetricWriter:
  """Appends to ``metrics.jsonl`` and writes TensorBoard event files."""

  def __init__(self, workdir: pathlib.Path, purge_step: int | None = None):
    """``purge_step``: TensorBoard hides the earlier files' events from this
    step on (a resumed run re-logs them)."""
    self._path = workdir / 'metrics.jsonl'
    self._tensorboard = None
    if jax.process_index() == 0:
      import tensorboardX  # pylint: disable=g-import-not-at-top
      self._tensorboard = tensorboardX.SummaryWriter(
          str(workdir), purge_step=purge_step)

  def write(self, step: int, values: Mapping[str, float]) -> None:
    if jax.process_index() != 0:
      return
    with self._path.open('a') as f:
      f.write(dumps({'step': step, **values}) + '\n')
    for key, value in values.items():
      if isinstance(value, (int, float)) and math.isfinite(value):
        self._tensorboard.add_scalar(key, value, step)
    self._tensorboard.flush()

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()


def finite_or_none(value: Any) -> Any:
  """``value`` with every float that is not finite replaced by None, through
  mappings, lists and tuples (tuples become lists, as JSON has them)."""
  if isinstance(value, Mapping):
    return {key: finite_or_none(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [finite_or_none(item) for item in value]
  if isinstance(value, (float, np.floating)) and not math.isfinite(value):
    return None
  return value


def dumps(value: Any, **kwargs) -> str:
  """Strict JSON of ``value``: not-finite floats as null (module docstring)."""
  return json.dumps(finite_or_none(value), allow_nan=False, **kwargs)


def flat_scalars(prefix: str, values: Mapping[str, Any]) -> dict[str, float]:
  flat = {}
  for key, value in values.items():
    if isinstance(value, Mapping):
      flat.update(flat_scalars(f'{prefix}{key}/', value))
    elif isinstance(value, (int, float, np.floating, np.integer)):
      flat[f'{prefix}{key}'] = float(value)
  return flat
