"""Prediction and scoring; evaluation of a checkpoint, and Kaggle-format
predictions (with ensembles).

``predict_split`` runs a model over every record of a split (optionally with
test-time augmentation), ``score`` turns its result into the task's metrics
and ``summary_line`` into the line the loop and ``evaluate`` print.

``evaluate`` scores one split and writes ``WORKDIR/eval_<split>.json`` and
plots; ``predict`` writes a submission CSV (``GalaxyID,Class1.1,…,Class11.6``,
one row per image, values in [0, 1]) for the dataset's test split or a folder
of images (:class:`gzjax.data.catalog.ImageFolder`), averaging over several
workdirs when asked.
"""

from __future__ import annotations

import pathlib
from typing import Any, Callable, Mapping, Sequence

from flax import nnx
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np

from gzjax import checkpoint as checkpoints
from gzjax import config_checks
from gzjax import distributed
from gzjax import errors
from gzjax import experiment as experiments
from gzjax import metric_writer
from gzjax import metrics
from gzjax import plots
from gzjax import programs
from gzjax import progress
from gzjax import tasks
from gzjax import taxonomy
from gzjax import workdir_rules
from gzjax.data import catalog as catalogs
from gzjax.data import fields
from gzjax.data import galaxy_zoo
from gzjax.data import pipeline
from gzjax.data import splits


# ------------------------------------------- prediction and scoring ---


def _outputs(model, images: jax.Array, task: tasks.Task) -> jax.Array:
  outputs = model(images)
  if task.activate is not None:
    return task.activate(outputs)
  return jax.nn.softmax(outputs) if task.is_classification else outputs


TTA_TRANSFORMS = tuple((k, flip) for flip in (False, True) for k in range(4))
"""Test-time augmentation: 4 rotations by 90°, each with and without a flip."""


def make_predict_fn(experiment: experiments.Experiment, *,
                    tta: bool = False) -> Callable:
  """Jitted ``(state, images) -> outputs`` in inference mode.

  Outputs are vote fractions, or class probabilities for classifiers; with
  ``tta`` they are averaged over :data:`TTA_TRANSFORMS`.  Uses the EMA of
  the parameters when the config keeps one.
  """
  config, task, graphdef = experiment.config, experiment.task, \
      experiment.graphdef

  def predict(state: experiments.TrainState, images: jax.Array) -> jax.Array:
    params = state.ema_params if config.ema_decay else state.params
    model = nnx.merge(graphdef, params, state.model_state)
    model.eval()
    if not tta:
      return _outputs(model, images, task)
    total = 0.0
    for rotations, flip in TTA_TRANSFORMS:
      view = jnp.rot90(images, rotations, axes=(1, 2))
      total = total + _outputs(model, view[:, :, ::-1] if flip else view,
                               task)
    return total / len(TTA_TRANSFORMS)

  # Kept beside the compilation cache: --mode=evaluate and predict, and a
  # resumed run, do not trace it.
  return programs.jit(
      predict,
      name='predict_tta' if tta else 'predict',
      key=programs.describe(config, task),
      in_shardings=(experiment.replicated, experiment.batch_sharding),
      out_shardings=experiment.batch_sharding,
  )


def predict_split(experiment: experiments.Experiment,
                  state: experiments.TrainState, source, *,
                  tta: bool = False, predict_fn: Callable | None = None
                  ) -> dict[str, np.ndarray]:
  """Outputs and targets of every record of ``source`` (all processes),
  predicted with ``state``."""
  input_config = _eval_input_config(experiment.config)
  predict_fn = predict_fn or make_predict_fn(experiment, tta=tta)
  collected = []
  for batch in pipeline.create_eval_iterator(source, input_config):
    images = jax.make_array_from_process_local_data(
        experiment.batch_sharding, batch['image'])
    outputs = multihost_utils.process_allgather(
        predict_fn(state, images), tiled=True)
    host = distributed.gather_rows(
        {k: batch[k] for k in fields.GATHERED})
    if 'targets' in batch:  # A label catalogue's columns (gzjax.finetune).
      host['targets'] = distributed.gather_rows(batch['targets'])
    host['outputs'] = np.asarray(outputs, np.float32)
    collected.append(host)
  merged = jax.tree.map(lambda *parts: np.concatenate(parts), *collected)
  real = merged.pop('example_mask')
  return jax.tree.map(lambda v: np.asarray(v)[real], merged)


def _eval_input_config(config: ml_collections.ConfigDict):
  input_config = ml_collections.ConfigDict(config.input.to_dict())
  input_config.batch_size = config.eval_batch_size or config.input.batch_size
  return input_config


def score(task: tasks.Task, predictions: Mapping[str, np.ndarray],
          baseline_votes: np.ndarray | None = None) -> dict[str, Any]:
  """Metrics of ``predict_split``'s result for the task."""
  if task.evaluate is not None:
    return task.evaluate(predictions)
  if task.is_classification:
    labels = predictions[task.label_key]
    report = metrics.classification_report(
        labels, predictions['outputs'].argmax(-1), task.class_names)
    return report
  result = {
      'rmse': metrics.vote_rmse(predictions['outputs'], predictions['votes'],
                                predictions['votes_mask']),
      'rmse_per_question': metrics.question_rmse(
          predictions['outputs'], predictions['votes'],
          predictions['votes_mask']),
      'count': int(len(predictions['votes'])),
  }
  if baseline_votes is not None:
    result['mean_predictor_rmse'] = metrics.vote_rmse(
        np.broadcast_to(baseline_votes, predictions['votes'].shape),
        predictions['votes'], predictions['votes_mask'])
  return result


def training_mean_votes(source) -> np.ndarray:
  """The per-answer mean of the known training votes: the mean predictor."""
  scanned = tasks.scan_labels(source)
  known = scanned['votes_mask']
  votes = np.where(known, scanned['votes'], 0.0)
  return votes.sum(0) / np.maximum(known.sum(0), 1)


def summary_line(step: int, task: tasks.Task, values: Mapping[str, Any],
                 split: str = 'validation') -> str:
  """One line of the main metrics, as the loop and ``evaluate`` print them."""
  if task.summary is not None:
    return f'step {step}: {split} {task.summary(values)}'
  if task.is_classification:
    return (f'step {step}: {split} accuracy {values["accuracy"]:.4f},'
            f' macro-F1 {values["macro_f1"]:.4f} ({values["count"]} galaxies)')
  line = f'step {step}: {split} RMSE {values["rmse"]:.4f}'
  if 'mean_predictor_rmse' in values:
    line += f' (mean predictor {values["mean_predictor_rmse"]:.4f})'
  return line + f' over {values["count"]} galaxies'


# -------------------------------------------------------- checkpoints ---


def restore(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
            which: str = 'latest', *, task: tasks.Task | None = None
            ) -> tuple[experiments.Experiment, experiments.TrainState, int]:
  """The experiment, the state of a checkpoint (latest, best or a step) and
  its step.

  ``task`` replaces the config's built-in task (a label catalogue's,
  ``gzjax.finetune.recorded_task``; the spiral classifier of
  tools/benchmark_accuracy.py).
  """
  workdir = pathlib.Path(workdir)
  check_restorable(config, workdir, which, task)
  experiment = experiments.create_experiment(config, task)
  template = experiment.abstract_state()
  checkpointer = checkpoints.Checkpointer(
      workdir, best_metric=config.best_metric, best_mode=config.best_mode)
  try:
    step = int(which) if which.isdigit() else None
    kept = which if step is None else checkpointer.kept_in(step)
    try:
      state, _, step = checkpointer.restore(template, step=step, which=kept)
    except errors.CheckpointError as error:
      raise errors.CheckpointError(
          f'{error} {_intact_hint(checkpointer, template, error)}'
      ) from error
  finally:
    checkpointer.close()
  return experiment, state, step


def check_restorable(config: ml_collections.ConfigDict,
                     workdir: pathlib.Path, which: str,
                     task: tasks.Task | None) -> None:
  """What :func:`restore` refuses before it builds a model (the folder, a
  fine-tuning run without its labels, another model or preprocessing), in a
  few file reads: callers with more to check run it first."""
  check_checkpoint_folder(workdir, which)
  if task is None and (workdir / 'labels.json').is_file():
    raise errors.ConfigError(
        f'{workdir} is a fine-tuning run on a label catalogue (it has'
        ' labels.json): evaluate or predict it with the config it was'
        ' trained with (config.labels.catalog set).')
  workdir_rules.check_resumable(config, workdir)


def check_checkpoint_folder(workdir: pathlib.Path, which: str) -> None:
  """Refuses a bad --checkpoint or a workdir without checkpoints, before
  anything is created (Orbax would create the folders)."""
  which = str(which)
  if which not in ('latest', 'best') and not which.isdigit():
    raise errors.ConfigError(
        f'--checkpoint={which}: use latest, best or a step number.')
  folder = workdir / ('best' if which == 'best' else 'checkpoints')
  # A step number may be kept only as the best one (Checkpointer.kept_in).
  best_step = which.isdigit() and (workdir / 'best').is_dir()
  if which == 'best' and not folder.is_dir() and (
      workdir / 'checkpoints').is_dir():
    # A training run that kept no best one (best_metric='', or no
    # evaluation yet): training into it again would not make one.
    raise errors.MissingCheckpointError(
        f'{workdir} keeps no best checkpoint ({folder} does not exist: it'
        " was trained with config.best_metric='' or has not evaluated yet):"
        ' pass --checkpoint=latest or a step number.')
  if not folder.is_dir() and not best_step:
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
             tta: bool = False, task: tasks.Task | None = None,
             source=None) -> dict[str, Any]:
  """Scores ``split`` with a checkpoint; writes eval_<split>.json and plots.

  ``task`` and ``source`` replace the config's built-in task and its
  dataset's split (a label catalogue's, ``gzjax.finetune.evaluate``, which
  draws that task's plots itself).
  """
  config_checks.check(config)
  workdir = pathlib.Path(workdir)
  # The workdir, then the split's labels, before a model is built.
  check_restorable(config, workdir, checkpoint, task)
  built = source is None
  if built:
    source = splits.open_split(config, split)
  _check_labelled(task or tasks.task_of(config), source, split,
                  config.dataset, built)
  experiment, state, step = restore(config, workdir, checkpoint, task=task)
  task = experiment.task
  predictions = predict_split(experiment, state, source, tta=tta)
  baseline = None if (task.is_classification or task.evaluate) else \
      training_mean_votes(splits.open_split(config, 'train'))
  result = score(task, predictions, baseline)
  result.update(split=split, step=step, checkpoint=checkpoint, tta=tta)
  if jax.process_index() == 0:
    (workdir / f'eval_{split}.json').write_text(
        metric_writer.dumps(result, indent=2))
    if task.evaluate is None:
      _plots(workdir, split, task, result, source, predictions)
    print(summary_line(step, task, result, split=split))
  return result


def _check_labelled(task: tasks.Task, source, split: str, dataset: str,
                    built: bool) -> None:
  """Refuses a split with nothing to score before anything is predicted
  (the whole split was, first).  A built dataset labels only its
  LABELLED_SPLITS (the test split has no votes), known without a read;
  another split is read up to its first record the task can score."""
  if task.evaluate is not None:  # Not a built-in task (gzjax.finetune's).
    return
  known_unlabelled = built and split not in galaxy_zoo.LABELLED_SPLITS
  if not known_unlabelled and any(
      _labelled(task, source[i]) for i in range(len(source))):
    return
  raise errors.DataError(
      f'The {split} split of {dataset} has no labels for {task.name} (none'
      f' of its {len(source)} galaxies), so it cannot be scored: evaluate'
      ' --split=validation or train, or get its predictions with'
      ' --mode=predict.')


def _labelled(task: tasks.Task, record: Mapping[str, Any]) -> bool:
  """Whether a built-in task can score a record."""
  if task.is_classification:
    return bool(np.asarray(record[task.label_key]) >= 0)
  return bool(np.asarray(record['votes_mask']).any())


def _plots(workdir: pathlib.Path, split: str, task: tasks.Task,
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


def _member_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
  saved = workdir_rules.saved_config(workdir)
  if saved is None:
    raise errors.MissingFileError(
        f'{workdir} has no config.json: is it a gzjax training workdir?')
  return ml_collections.ConfigDict(saved)


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
  from gzjax import predict as predict_lib  # pylint: disable=g-import-not-at-top
  config_checks.check(config)
  workdirs = [pathlib.Path(w) for w in workdirs]
  _check_distinct(workdirs)
  output = predict_lib.check_output(output or workdirs[0] / 'predictions.csv')
  for workdir in workdirs:
    check_checkpoint_folder(workdir, checkpoint)
  source = (catalogs.ImageFolder(images) if images
            else splits.open_split(config, 'test'))
  total, ids, task = None, None, None
  for index, workdir in enumerate(workdirs):
    member_config = config if index == 0 else _member_config(workdir)
    experiment, state, _ = restore(member_config, workdir, checkpoint)
    if task is not None and experiment.task != task:
      raise errors.ConfigError(
          f'{workdir} was trained for {experiment.task.name}, the others for'
          f' {task.name}: an ensemble needs one task.')
    task = experiment.task
    result = predict_split(experiment, state, source, tta=tta)
    ids = result['galaxy_id'] if ids is None else ids
    total = result['outputs'] if total is None else total + result['outputs']
  mean = np.clip(total / len(workdirs), 0.0, 1.0)
  written = [source.written_id(int(g)) for g in ids] if images else None
  if jax.process_index() == 0:
    _write_csv(output, ids, mean, task, written)
    print(f'Wrote {progress.counted(len(ids), "prediction")} to {output}')
  return output


def _check_distinct(workdirs: Sequence[pathlib.Path]) -> None:
  """Refuses an ensemble that names one workdir twice (however spelt): its
  predictions would silently count twice in the average."""
  seen = {}
  for index, workdir in enumerate(workdirs):
    first = seen.setdefault(workdir.resolve(), (index, workdir))
    if first[1] is not workdir:
      also = '' if str(first[1]) == str(workdir) else f' (also as {first[1]})'
      flags = '--workdir and --ensemble' if first[0] == 0 else '--ensemble'
      raise errors.ConfigError(
          f'{flags} name {workdir} twice{also}: it would count twice in the'
          ' averaged predictions; name each workdir once.')


def _id_column(written: Sequence[str]) -> np.ndarray | list[str]:
  """The GalaxyID column: integers when every id is an integer's own text
  (Kaggle's ``100008``), else the ids as written, text (``000042`` read as
  the integer 42 would name another galaxy than its file's)."""
  try:
    numbers = np.asarray([int(text) for text in written], np.int64)
  except (ValueError, OverflowError):
    return list(written)
  if [str(n) for n in numbers.tolist()] == list(written):
    return numbers
  return list(written)


def _write_csv(path: pathlib.Path, ids: np.ndarray, outputs: np.ndarray,
               task: tasks.Task, written: Sequence[str] | None = None
               ) -> None:
  """Writes rows by GalaxyID, atomically: never a partial file by that name.

  Rows are in the order of ``ids`` (integers); the GalaxyID column holds
  ``written``, each id's text (default: the integer's), by
  :func:`_id_column`.

  CSV for a .csv ``path`` (the Kaggle submission's text), Parquet for
  .parquet, as ``gzjax.predict.table_format`` and the fine-tuning path
  name them: a file named .parquet holding CSV text would be read by no
  Parquet reader.  Through ``gzjax.predict.write_output``, the one writer of
  ``--output`` files: a folder or device there, or a path that cannot be
  written, is one line, with no ``.tmp`` left and the old file kept.
  """
  from gzjax import predict as predict_lib  # pylint: disable=g-import-not-at-top
  order = np.argsort(ids, kind='stable')
  ids, outputs = ids[order], outputs[order]
  written = ([str(int(g)) for g in ids] if written is None
             else [written[k] for k in order])
  names = task.class_names if task.is_classification else taxonomy.ANSWERS
  columns = {'GalaxyID': _id_column(written),
             **{name: outputs[:, k] for k, name in enumerate(names)}}
  if task.is_classification:  # Then the most probable class.
    columns['predicted'] = [names[k] for k in np.argmax(outputs, axis=1)]
  if predict_lib.table_format(path) == 'parquet':
    predict_lib.write_table(path, columns)
    return
  # The Kaggle submission's text: 6 decimals, as it has always been.
  rows = [[text, *(f'{p:.6f}' for p in row)]
          for text, row in zip(written, outputs)]
  for row, name in zip(rows, columns.get('predicted', ())):
    row.append(name)
  header = list(columns)
  predict_lib.write_output(
      path, ('\n'.join(','.join(r) for r in [header, *rows]) + '\n').encode())
