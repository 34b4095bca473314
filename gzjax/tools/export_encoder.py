r"""Writes the backbone of a trained run as an encoder weight file.

    python -m gzjax.tools.export_encoder --workdir=/tmp/cnn_votes \
        --out=weights/cnn_votes_encoder.msgpack [--checkpoint=best]

The file holds the backbone's parameters and batch statistics (the head is
dropped: a fine-tuning run attaches its own) and, under
``__preprocessing__``, what the backbone was trained to see: the model name,
image and crop size and the input normalisation.  A config that loads it
(``config.model.pretrained``) with other preprocessing fails with both
values named.  The run's ``config.json`` rebuilds the model; a fine-tuning
run's ``labels.json`` its task.  The EMA of the parameters is exported when
the run kept one, as evaluation uses it.

``--out`` is checked and written as ``gzjax.main``'s ``--output`` is
(``gzjax.predict.check_output`` and ``write_output``): a folder, device or
pipe there is refused before the checkpoint is read, a path that cannot be
written is one line, and an existing file is replaced atomically or kept.
"""

from __future__ import annotations

import pathlib
import sys

from absl import app
from absl import flags
from absl import logging
import ml_collections

from gzjax import errors
from gzjax import path_flags

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command line's flags: defined only when run as a program, so that
  importing :func:`export` beside ``gzjax.main`` defines no flag twice."""
  path_flags.DEFINE_path('workdir', None, 'The trained run.')
  path_flags.DEFINE_path('out', None, 'The encoder file to write.')
  flags.DEFINE_string('checkpoint', 'latest', 'latest, best or a step number.')
  flags.mark_flags_as_required(['workdir', 'out'])


def run_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
  from gzjax import workdir_rules  # pylint: disable=g-import-not-at-top
  saved = workdir_rules.saved_config(pathlib.Path(workdir))
  if saved is None:
    raise errors.MissingFileError(
        f'{pathlib.Path(workdir) / "config.json"}: no config.json; is'
        f' {workdir} a gzjax training run?')
  return ml_collections.ConfigDict(saved)


def export(workdir: str | pathlib.Path, out: str | pathlib.Path,
           checkpoint: str = 'latest') -> dict:
  """Writes the encoder file; returns its backbone arrays.

  A bad ``checkpoint`` or ``out`` is refused before the checkpoint is read,
  as ``gzjax.main`` refuses its --checkpoint and --output.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gzjax import checkpoint as checkpoints  # pylint: disable=g-import-not-at-top
  from gzjax import evaluate  # pylint: disable=g-import-not-at-top
  from gzjax import experiment as experiments  # pylint: disable=g-import-not-at-top
  from gzjax import finetune  # pylint: disable=g-import-not-at-top
  from gzjax import predict  # pylint: disable=g-import-not-at-top
  from gzjax.models import weights  # pylint: disable=g-import-not-at-top

  workdir = pathlib.Path(workdir)
  evaluate.check_checkpoint_folder(workdir, checkpoint)
  predict.check_output(out, '--out', table=False)
  config = run_config(workdir)
  config.model.pretrained = ''  # The checkpoint holds the weights.
  # A fine-tuning run's task, as its labels.json records it (checked
  # against the config.labels of its config.json).
  task = (finetune.recorded_task(config, workdir)
          if finetune.is_catalogue_run(config) else None)
  experiment = experiments.create_experiment(config, task)
  checkpointer = checkpoints.Checkpointer(
      workdir, best_metric=config.best_metric, best_mode=config.best_mode)
  try:
    step = int(checkpoint) if str(checkpoint).isdigit() else None
    state, _, _ = checkpointer.restore(
        # Shapes only: the checkpoint fills the state.
        experiment.abstract_state(), step=step,
        which='best' if checkpoint == 'best' else 'latest')
  finally:
    checkpointer.close()
  params = state.ema_params if config.ema_decay else state.params
  model = nnx.merge(experiment.graphdef, params, state.model_state)
  arrays = {name: np.asarray(value) for name, value in
            weights.named_variables(model, 'backbone/').items()}
  predict.write_output(out, weights.encode(
      {**arrays, weights.PREPROCESSING_KEY: weights.encode_preprocessing(
          weights.preprocessing_of(config))}), '--out')
  return arrays


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Orbax's INFO lines (closing its metadata store) are not this tool's
  # output; gzjax.main lowers them likewise.
  logging.set_verbosity(logging.WARNING)
  try:
    arrays = export(FLAGS.workdir, FLAGS.out, FLAGS.checkpoint)
  except errors.GzjaxError as error:  # Anything else keeps its traceback.
    print(f'export_encoder: {error}', file=sys.stderr)
    sys.exit(2)
  print(f'{FLAGS.out}: {len(arrays)} backbone arrays')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
