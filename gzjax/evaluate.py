"""Evaluation of a checkpoint, and Kaggle-format predictions (with ensembles).

``evaluate`` scores one split and writes ``WORKDIR/eval_<split>.json`` and
plots; ``predict`` writes a submission CSV (``GalaxyID,Class1.1,…,Class11.6``,
one row per image, values in [0, 1]) for the dataset's test split or a folder
of JPEGs, averaging over several workdirs when asked.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np

from gzjax import checkpoint as checkpoints
from gzjax import plots
from gzjax import taxonomy
from gzjax import train
from gzjax.data import kaggle


def restore(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
            which: str = 'latest') -> tuple[train.Experiment, int]:
  """The experiment with the state of a checkpoint: latest, best or a step."""
  experiment = train.create_experiment(config, initialise=False)
  checkpointer = checkpoints.Checkpointer(
      workdir, best_metric=config.best_metric, best_mode=config.best_mode)
  try:
    step = int(which) if str(which).isdigit() else None
    experiment.state, _, step = checkpointer.restore(
        experiment.state, step=step,
        which='best' if which == 'best' else 'latest')
  finally:
    checkpointer.close()
  return experiment, step


def evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
             *, split: str = 'validation', checkpoint: str = 'latest',
             tta: bool = False) -> dict[str, Any]:
  """Scores ``split`` with a checkpoint; writes eval_<split>.json and plots."""
  workdir = pathlib.Path(workdir)
  experiment, step = restore(config, workdir, checkpoint)
  task = experiment.task
  source = train.open_split(config, split)
  predictions = train.predict_split(experiment, source, tta=tta)
  baseline = None if task.is_classification else train.training_mean_votes(
      train.open_split(config, 'train'))
  result = train.score(task, predictions, baseline)
  result.update(split=split, step=step, checkpoint=checkpoint, tta=tta)
  if jax.process_index() == 0:
    (workdir / f'eval_{split}.json').write_text(json.dumps(result, indent=2))
    _plots(workdir, split, task, result, source, predictions)
    print(train.summary_line(step, task, result, split=split))
  return result


def _plots(workdir: pathlib.Path, split: str, task: train.Task,
           result: dict[str, Any], source, predictions) -> None:
  folder = workdir / 'plots'
  if task.is_classification:
    plots.confusion_matrix(
        np.asarray(result['confusion_matrix']), task.class_names,
        folder / f'confusion_{split}.png',
        title=f'{task.name} {split}: accuracy {result["accuracy"]:.3f}')
    return
  row_of = {int(g): i for i, g in enumerate(predictions['galaxy_id'])}
  records = [source[i] for i in range(min(12, len(source)))]
  plots.galaxy_grid(
      records, folder / f'predictions_{split}.png',
      predictions=[predictions['outputs'][row_of[int(r['galaxy_id'])]]
                   for r in records],
      title=f'{split}: true vs predicted (RMSE {result["rmse"]:.4f})')


class ImageFolder:
  """Unlabelled records from a folder of ``<GalaxyID>.jpg`` files."""

  def __init__(self, folder: str | pathlib.Path):
    self._folder = pathlib.Path(folder)
    if not self._folder.is_dir():
      raise FileNotFoundError(f'No image folder at {self._folder}.')
    self._ids = kaggle.image_ids_in(self._folder)

  def __len__(self) -> int:
    return len(self._ids)

  def __getitem__(self, index: int) -> dict[str, Any]:
    galaxy_id = int(self._ids[index])
    return {
        'image': (self._folder / f'{galaxy_id}.jpg').read_bytes(),
        'galaxy_id': galaxy_id,
        'votes': np.full(taxonomy.NUM_ANSWERS, np.nan, np.float32),
        'votes_mask': np.zeros(taxonomy.NUM_ANSWERS, bool),
        'label_3class': -1,
        'label_7class': -1,
    }


def _member_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
  path = workdir / 'config.json'
  if not path.is_file():
    raise FileNotFoundError(
        f'{workdir} has no config.json: is it a gzjax training workdir?')
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def predict(config: ml_collections.ConfigDict,
            workdirs: Sequence[str | pathlib.Path], *,
            output: str | pathlib.Path | None = None,
            images: str | pathlib.Path | None = None,
            checkpoint: str = 'latest', tta: bool = False) -> pathlib.Path:
  """Writes predictions for the test split (or ``images``) as a CSV.

  The first workdir uses ``config``; further ones (an ensemble) use the
  config saved in each, so members may differ in model and input size.
  Their outputs are averaged.

  Returns:
    The CSV's path.
  """
  workdirs = [pathlib.Path(w) for w in workdirs]
  source = (ImageFolder(images) if images
            else train.open_split(config, 'test'))
  total, ids, task = None, None, None
  for index, workdir in enumerate(workdirs):
    member_config = config if index == 0 else _member_config(workdir)
    experiment, _ = restore(member_config, workdir, checkpoint)
    if task is not None and experiment.task != task:
      raise ValueError(
          f'{workdir} was trained for {experiment.task.name}, the others for'
          f' {task.name}: an ensemble needs one task.')
    task = experiment.task
    result = train.predict_split(experiment, source, tta=tta)
    ids = result['galaxy_id'] if ids is None else ids
    total = result['outputs'] if total is None else total + result['outputs']
  mean = np.clip(total / len(workdirs), 0.0, 1.0)
  output = pathlib.Path(output or workdirs[0] / 'predictions.csv')
  if jax.process_index() == 0:
    _write_csv(output, ids, mean, task)
    print(f'Wrote {len(ids)} predictions to {output}')
  return output


def _write_csv(path: pathlib.Path, ids: np.ndarray, outputs: np.ndarray,
               task: train.Task) -> None:
  """Writes rows by GalaxyID, atomically: never a partial CSV by that name."""
  order = np.argsort(ids, kind='stable')
  ids, outputs = ids[order], outputs[order]
  if task.is_classification:
    header = ['GalaxyID', *task.class_names, 'predicted']
    rows = [[str(int(g)), *(f'{p:.6f}' for p in row),
             task.class_names[int(np.argmax(row))]]
            for g, row in zip(ids, outputs)]
  else:
    header = ['GalaxyID', *taxonomy.ANSWERS]
    rows = [[str(int(g)), *(f'{p:.6f}' for p in row)]
            for g, row in zip(ids, outputs)]
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = path.with_name(path.name + '.tmp')
  temporary.write_text('\n'.join(','.join(r) for r in [header, *rows]) + '\n')
  os.replace(temporary, path)
