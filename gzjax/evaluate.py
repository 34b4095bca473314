"""Evaluation of a checkpoint, and Kaggle-format predictions (with ensembles).

``evaluate`` scores one split and writes ``WORKDIR/eval_<split>.json`` and
plots; ``predict`` writes a submission CSV (``GalaxyID,Class1.1,…,Class11.6``,
one row per image, values in [0, 1]) for the dataset's test split or a folder
of images (:class:`ImageFolder`), averaging over several workdirs when asked.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from PIL import Image

from gzjax import checkpoint as checkpoints
from gzjax import config_checks
from gzjax import errors
from gzjax import plots
from gzjax import taxonomy
from gzjax import train
from gzjax.data import kaggle


def restore(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
            which: str = 'latest') -> tuple[train.Experiment, int]:
  """The experiment with the state of a checkpoint: latest, best or a step."""
  workdir = pathlib.Path(workdir)
  check_checkpoint_folder(workdir, which)
  train.check_resumable(config, workdir)
  experiment = train.create_experiment(config, initialise=False)
  checkpointer = checkpoints.Checkpointer(
      workdir, best_metric=config.best_metric, best_mode=config.best_mode)
  try:
    step = int(which) if which.isdigit() else None
    try:
      experiment.state, _, step = checkpointer.restore(
          experiment.state, step=step,
          which='best' if which == 'best' else 'latest')
    except errors.CheckpointError as error:
      raise errors.CheckpointError(
          f'{error} {_intact_hint(checkpointer, experiment.state, error)}'
      ) from error
  finally:
    checkpointer.close()
  return experiment, step


def check_checkpoint_folder(workdir: pathlib.Path, which: str) -> None:
  """Refuses a bad --checkpoint or a workdir without checkpoints, before
  anything is created (Orbax would create the folders)."""
  which = str(which)
  if which not in ('latest', 'best') and not which.isdigit():
    raise errors.ConfigError(
        f'--checkpoint={which}: use latest, best or a step number.')
  folder = workdir / ('best' if which == 'best' else 'checkpoints')
  if not folder.is_dir():
    raise errors.MissingCheckpointError(
        f'{workdir} holds no {"best " if which == "best" else ""}checkpoints'
        f' ({folder} does not exist): train into it first, or pass the'
        ' --workdir of a training run.')


def _intact_hint(checkpointer: checkpoints.Checkpointer, template,
                 error: errors.CheckpointError) -> str:
  """Which step to pass instead of a damaged one (restores are quick)."""
  for step in reversed(checkpointer.steps()):
    if f'step {step} ' in str(error):
      continue
    try:
      checkpointer.restore(template, step=step)
    except errors.CheckpointError:
      continue
    return f'Step {step} is intact: pass --checkpoint={step}.'
  return 'No other checkpoint there restores.'


def evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
             *, split: str = 'validation', checkpoint: str = 'latest',
             tta: bool = False) -> dict[str, Any]:
  """Scores ``split`` with a checkpoint; writes eval_<split>.json and plots."""
  config_checks.check(config)
  workdir = pathlib.Path(workdir)
  check_checkpoint_folder(workdir, checkpoint)
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


IMAGE_SUFFIXES = {'.jpg': 'JPEG', '.jpeg': 'JPEG', '.png': 'PNG'}


class ImageFolder:
  """Unlabelled records from a folder of ``<GalaxyID>.jpg|.jpeg|.png`` files.

  The suffix may be in any case.  Every file is checked before predicting,
  by its content: a ``.jpg``/``.jpeg`` must be a complete JPEG (the
  builder's rule, so a PNG named ``.jpg`` is refused here as there) and a
  ``.png`` a complete PNG.  Anything else in the folder (another suffix, a
  name that is not a GalaxyID, two files for one galaxy, an undecodable
  file) is listed in the error; nothing is skipped.  Hidden files
  (``.DS_Store``) are ignored.
  """

  def __init__(self, folder: str | pathlib.Path):
    self._folder = pathlib.Path(folder)
    if not self._folder.is_dir():
      raise errors.MissingFileError(f'No image folder at {self._folder}.')
    paths, problems = {}, []
    for path in sorted(self._folder.iterdir()):
      if path.name.startswith('.'):
        continue
      kind = IMAGE_SUFFIXES.get(path.suffix.lower())
      if kind is None or not path.is_file():
        problems.append(f'{path}: not a .jpg, .jpeg or .png file')
        continue
      if not path.stem.isdigit():
        problems.append(f'{path}: not named <GalaxyID>{path.suffix} with an'
                        ' integer GalaxyID')
        continue
      galaxy_id = int(path.stem)
      if galaxy_id in paths:
        problems.append(f'{path}: GalaxyID {galaxy_id} also has'
                        f' {paths[galaxy_id].name}')
        continue
      problem = _image_problem(path.read_bytes(), kind)
      if problem is not None:
        problems.append(f'{path}: {problem}')
        continue
      paths[galaxy_id] = path
    if problems:
      shown = '\n'.join(f'  {p}' for p in problems[:20])
      more = (f'\n  … and {len(problems) - 20} more'
              if len(problems) > 20 else '')
      raise errors.DataError(
          f'{len(problems)} files of {self._folder} cannot be predicted (no'
          f' prediction was written):\n{shown}{more}\nFix, rename or move'
          ' them out of the folder.')
    if not paths:
      raise errors.DataError(
          f'{self._folder} holds no .jpg, .jpeg or .png images.')
    self._ids = np.asarray(sorted(paths), np.int64)
    self._paths = paths

  def __len__(self) -> int:
    return len(self._ids)

  def __getitem__(self, index: int) -> dict[str, Any]:
    galaxy_id = int(self._ids[index])
    return {
        'image': self._paths[galaxy_id].read_bytes(),
        'galaxy_id': galaxy_id,
        'votes': np.full(taxonomy.NUM_ANSWERS, np.nan, np.float32),
        'votes_mask': np.zeros(taxonomy.NUM_ANSWERS, bool),
        'label_3class': -1,
        'label_7class': -1,
    }


def _image_problem(data: bytes, kind: str) -> str | None:
  """Why ``data`` is not a complete image of ``kind``, or None."""
  if kind == 'JPEG':
    return kaggle.image_problem(data)  # The builder's own check.
  try:
    with Image.open(io.BytesIO(data)) as image:
      if image.format != kind:
        return f'not a {kind} (Pillow reads it as {image.format})'
      image.load()
  except Exception as e:  # Pillow raises many types for bad files.  pylint: disable=broad-except
    return f'{type(e).__name__}: {e}'
  return None


def _member_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
  path = workdir / 'config.json'
  if not path.is_file():
    raise errors.MissingFileError(
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
  config_checks.check(config)
  workdirs = [pathlib.Path(w) for w in workdirs]
  for workdir in workdirs:
    check_checkpoint_folder(workdir, checkpoint)
  source = (ImageFolder(images) if images
            else train.open_split(config, 'test'))
  total, ids, task = None, None, None
  for index, workdir in enumerate(workdirs):
    member_config = config if index == 0 else _member_config(workdir)
    experiment, _ = restore(member_config, workdir, checkpoint)
    if task is not None and experiment.task != task:
      raise errors.ConfigError(
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
