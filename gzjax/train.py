"""Training: the loss, the jitted step, the loop.

The step is a pure function ``(state, batch) -> (state, metrics)``, jitted
once with explicit shardings: a 1-D ``Mesh`` over every device (axis
``data``, :func:`gzjax.distributed.make_mesh`), batches sharded along it as
global ``jax.Array``s assembled from each process's share, the state
replicated and donated.  The Python loop only feeds batches, logs, evaluates
and checkpoints.  The experiment it trains is built in
:mod:`gzjax.experiment`, its validation scored by :mod:`gzjax.evaluate`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import sys
import time
from typing import Any, Callable, Mapping

from flax import nnx
import jax
import ml_collections
import numpy as np
import optax

from gzjax import checkpoint
from gzjax import config_checks
from gzjax import errors
from gzjax import evaluate
from gzjax import experiment as experiments
from gzjax import losses
from gzjax import metric_writer
from gzjax import models
from gzjax import optimizers
from gzjax import plots
from gzjax import preemption
from gzjax import programs
from gzjax import progress as progress_bars
from gzjax import tasks
from gzjax import workdir_rules
from gzjax.data import cached_input
from gzjax.data import fields
from gzjax.data import splits



class TrainingDiverged(errors.GzjaxError, RuntimeError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


def _frozen_as_constants(params, model, first_trained: int):
  """The frozen blocks' parameters as constants of the loss, so that XLA
  drops their backward pass (the optimizer zeroes their updates anyway)."""
  return jax.tree.map(
      lambda value, label: value if optimizers.trains(label, first_trained)
      else jax.lax.stop_gradient(value),
      params, models.parameter_labels(model))


def make_loss_fn(experiment: experiments.Experiment) -> Callable:
  """The training loss ``(params, model_state, batch) -> (loss, new
  model_state)``: the model in training mode (a frozen backbone as
  constants, with its batch statistics fixed), the config's loss on the
  batch."""
  config, task, graphdef = experiment.config, experiment.task, \
      experiment.graphdef

  # The merge copies `model_state` into fresh variables owned by the
  # gradient's trace: dropout advances its random-stream counter there, which flax
  # refuses for variables that came in from the enclosing jit trace.
  def loss_fn(params, model_state, batch):
    model = nnx.merge(graphdef, params, model_state, copy=True)
    # A frozen backbone, or its blocks before the last trainable_blocks:
    # constants of the loss, with their batch statistics fixed.
    first_trained = optimizers.first_trained_block(
        config.optimizer, model.backbone.num_blocks)
    if first_trained is not None:
      params = _frozen_as_constants(params, model, first_trained)
      model = nnx.merge(graphdef, params, model_state, copy=True)
    model.train()
    if first_trained is not None:
      models.fix_frozen_blocks(model, first_trained)
    outputs = model(batch['image'])
    if task.loss is not None:
      return task.loss(outputs, batch), nnx.state(model, nnx.Not(nnx.Param))
    loss = losses.compute(
        config.loss, outputs, batch, label_key=task.label_key,
        label_smoothing=config.label_smoothing,
        class_weights=config.class_weights or None)
    return loss, nnx.state(model, nnx.Not(nnx.Param))

  return loss_fn


@dataclasses.dataclass(frozen=True)
class TrainStep:
  """The jitted ``(state, batch) -> (state, metrics)``; the state is donated.

  ``jitted`` is the :func:`gzjax.programs.jit` of ``(state, batch,
  resident)``: a device cache's images (or None) are an argument, not a
  constant compiled in.  The step binds them, so that the loop and the tools
  call, lower or compile it with the state and the batch only.
  """

  jitted: programs.Program
  resident: jax.Array | None = None

  def __call__(self, state: experiments.TrainState,
               batch: Mapping[str, jax.Array]):
    return self.jitted(state, batch, self.resident)

  def lower(self, state, batch) -> jax.stages.Lowered:
    """XLA's program for these arguments (``.compile()``,
    ``.cost_analysis()``), not compiled; shapes are enough."""
    return self.jitted.lower(state, batch, self.resident)

  def compile(self, state, batch) -> Callable:
    """Compiled ahead of the first call (to time compilation apart): a
    ``(state, batch)`` callable running the compiled program."""
    compiled = self.lower(state, batch).compile()
    return lambda state, batch: compiled(state, batch, self.resident)


def make_train_step(experiment: experiments.Experiment,
                    device_input: cached_input.DeviceInput | None = None
                    ) -> TrainStep:
  """The jitted ``(state, batch) -> (state, metrics)``; the state is donated.

  With a cached mode's `device_input` the step first augments the batch's
  uint8 images (or gathers them by index from the resident cache, which it
  takes as an argument so that it is not compiled in as a constant).
  """
  config = experiment.config
  loss_fn = make_loss_fn(experiment)

  def train_step(state: experiments.TrainState, batch: Mapping[str, jax.Array],
                 resident: jax.Array | None):
    if device_input is not None:
      batch = device_input.prepare(batch, resident)
    (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.model_state, batch)
    updates, opt_state = experiment.optimizer.update(
        grads, state.opt_state, state.params, value=loss)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if config.ema_decay:
      ema = optax.incremental_update(params, ema, 1.0 - config.ema_decay)
    step_metrics = {
        'loss': loss,
        'grad_norm': optax.tree.norm(grads),
        'learning_rate': optimizers.learning_rate(
            config.optimizer, experiment.schedule, opt_state, state.step),
    }
    return experiments.TrainState(
        state.step + 1, params, model_state, opt_state, ema), step_metrics

  # Kept beside the compilation cache: a resumed run does not trace it.
  jitted = programs.jit(
      train_step,
      name='train_step',
      key=programs.describe(
          config, experiment.task,
          None if device_input is None else device_input.geometry),
      in_shardings=(experiment.replicated, experiment.batch_sharding,
                    experiment.replicated),
      out_shardings=(experiment.replicated, experiment.replicated),
      donate_argnums=(0,),
  )
  return TrainStep(jitted,
                   None if device_input is None else device_input.resident)


def to_global(batch: Mapping[str, np.ndarray],
              sharding: jax.sharding.NamedSharding) -> dict[str, jax.Array]:
  """This process's numpy batch as global arrays sharded on ``data``."""
  return {
      key: jax.tree.map(
          lambda x: jax.make_array_from_process_local_data(sharding, x),
          batch[key])
      for key in fields.DEVICE if key in batch
  }


def _check_finite(step_metrics: list[dict[str, jax.Array]], first_step: int,
                  last_good: int | None, workdir: pathlib.Path) -> dict:
  """Means of the steps' metrics; raises TrainingDiverged on NaN/Inf loss."""
  fetched = jax.device_get(step_metrics)
  for offset, values in enumerate(fetched):
    if not np.isfinite(values['loss']):
      kept = (f'the last good checkpoint (step {last_good}) in'
              f' {workdir / "checkpoints"} is intact'
              if last_good is not None else 'no checkpoint had been written')
      raise TrainingDiverged(
          f'The training loss became {float(values["loss"])} at step'
          f' {first_step + offset + 1}; {kept}. Lower'
          ' config.optimizer.learning_rate or set'
          ' config.optimizer.grad_clip_norm, then rerun (it resumes).')
  return {k: float(np.mean([v[k] for v in fetched])) for k in fetched[0]}


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str | pathlib.Path, *,
                       task: tasks.Task | None = None, train_source=None,
                       validation_source=None,
                       records: Mapping[str, str] | None = None
                       ) -> dict[str, Any]:
  """Trains (resuming from ``workdir`` when it holds a checkpoint).

  ``task`` and the two sources replace the config's built-in task and
  Galaxy Zoo splits (gzjax.finetune passes a label catalogue's, and its
  ``labels.json`` as ``records``: {file name: text} written into the
  workdir when the run starts writing, so that a start refused before it
  leaves none, :func:`gzjax.workdir_rules.claim`).

  A Galaxy Zoo dataset without a validation split (built with
  ``--validation_percent=0``) trains on everything when the config neither
  evaluates periodically nor keeps a best checkpoint, and is refused at the
  start otherwise (:func:`gzjax.data.splits.check_validation`).

  Returns:
    The last validation metrics ({} when there is no validation split).
  """
  config_checks.check(config)
  # Before the workdir: a config that needs a validation split the dataset
  # lacks is refused with nothing created.
  # A caller's own training split without a validation one (a label
  # catalogue with none, gzjax.finetune) trains without evaluating.
  evaluates = validation_source is not None or (
      train_source is None and splits.check_validation(config))
  # Made and locked here; taken back if the run ends before it writes.
  with workdir_rules.claim(workdir, records=records) as claim:
    return _train(config, claim, task=task, train_source=train_source,
                  validation_source=validation_source, evaluates=evaluates)


def _train(config: ml_collections.ConfigDict, claim: workdir_rules.Claim, *,
           task: tasks.Task | None, train_source, validation_source,
           evaluates: bool) -> dict[str, Any]:
  """:func:`train_and_evaluate` with the workdir locked; ``evaluates``:
  whether there is a validation split to evaluate on."""
  workdir = claim.workdir
  if jax.process_index() == 0:
    for warning in optimizers.schedule_warnings(config.optimizer,
                                                config.num_train_steps):
      print(f'gzjax: WARNING: {warning}', file=sys.stderr)
    if not evaluates and train_source is None:  # gzjax.finetune says its own.
      print(f'gzjax: {config.dataset} in {config.data_dir} has no validation'
            ' split: training on all of its labelled galaxies, without'
            ' evaluating.', file=sys.stderr)
  experiment = experiments.create_experiment(config, task)
  task = experiment.task
  label_catalogue = train_source is not None
  if train_source is None:  # Scanned once: the input below reuses it.
    train_source = splits.training_split(config, task)
  if config.input.batch_size > len(train_source):
    raise errors.ConfigError(
        f'config.input.batch_size={config.input.batch_size} is larger than'
        f' the {len(train_source)} galaxies of the training split: every'
        ' batch would repeat galaxies. Lower config.input.batch_size.')
  if validation_source is None and evaluates:
    validation_source = splits.open_split(config, 'validation')
  checkpointer = checkpoint.Checkpointer(
      workdir, keep=config.keep_checkpoints, best_metric=config.best_metric,
      best_mode=config.best_mode)
  start_step = 0
  if checkpointer.latest_step() is not None:
    workdir_rules.check_resumable(config, workdir)
    # Shapes only until it is known whether a checkpoint fills the state.
    restored = checkpointer.restore_newest_intact(experiment.abstract_state())
    if restored is not None:
      state, data_state, start_step = restored
      if start_step > config.num_train_steps:
        raise errors.ConfigError(
            f'The newest checkpoint in {workdir} is step {start_step}, past'
            f' config.num_train_steps={config.num_train_steps}: nothing to'
            ' train. Set config.num_train_steps above'
            f' {start_step} to train on, or evaluate it (--mode=evaluate).')
  if start_step == config.num_train_steps:
    # A finished run run again (a script's second pass): nothing to decode,
    # compile, write or log; the workdir stays as it was.
    checkpointer.close()
    if jax.process_index() == 0:
      print(f'gzjax: {workdir} has finished: its newest checkpoint is step'
            f' {start_step} = config.num_train_steps, nothing to train. Raise'
            ' --config.num_train_steps to train on, or evaluate it'
            ' (--mode=evaluate).', file=sys.stderr)
    return {}
  # After the restore: a finished run, or one refused above, builds no
  # input (a decoded cache can take minutes) and no baseline.
  train_iterator, device_input = experiments.create_train_input(
      config, task, experiment, train_source,
      label_catalogue=label_catalogue)
  if start_step:
    train_iterator.set_state(data_state)
  baseline = None if (task.is_classification or task.evaluate or
                      not evaluates) else \
      evaluate.training_mean_votes(train_source)
  if not start_step:  # No checkpoint, or none intact: initialise.
    state = experiment.initial_state()
  last_good = start_step if start_step else None
  train_step = make_train_step(experiment, device_input)
  predict_fn = evaluate.make_predict_fn(experiment)
  # SIGTERM (a scheduler's pre-emption) or Ctrl-C from here on: save the
  # step, stop.  Before it (gzjax.main's watch), either stops at once.
  watch = contextlib.ExitStack()
  stop = watch.enter_context(preemption.watch())
  # Only now, with the checkpoint restored, does the workdir describe this
  # config (from here on, what the run writes stays, however it ends); the
  # metrics keep what the restored state has seen.
  claim.start()
  # Both write from process 0 only (one writer on a shared filesystem).
  workdir_rules.write_atomically(workdir / 'config.json',
                                 config.to_json_best_effort(indent=2))
  workdir_rules.truncate_metrics(workdir / 'metrics.jsonl', start_step)
  writer = metric_writer.MetricWriter(workdir, purge_step=start_step + 1)
  pending, window_start, window_time = [], start_step, time.perf_counter()
  validation = {}
  progress = progress_bars.bar(total=config.num_train_steps,
                               initial=start_step, unit='step',
                               disable=jax.process_index() != 0)
  try:
    for step in range(start_step + 1, config.num_train_steps + 1):
      batch = to_global(next(train_iterator), experiment.batch_sharding)
      state, step_metrics = train_step(state, batch)
      pending.append(step_metrics)
      progress.update()
      is_last = step == config.num_train_steps
      stopping = stop.requested(step)
      log = step % config.log_every_steps == 0 or is_last or stopping
      validate = evaluates and ((config.eval_every_steps and
                                 step % config.eval_every_steps == 0) or
                                is_last)
      save = step % config.checkpoint_every_steps == 0 or is_last or stopping
      if not (log or validate or save):
        continue
      means = _check_finite(pending, window_start, last_good, workdir)
      elapsed = time.perf_counter() - window_time
      means['images_per_second'] = (
          len(pending) * config.input.batch_size / max(elapsed, 1e-9))
      writer.write(step, {f'train/{k}': v for k, v in means.items()})
      progress.set_postfix(loss=f'{means["loss"]:.4g}',
                           img_s=f'{means["images_per_second"]:.0f}')
      pending, window_start = [], step
      if validate:
        validation = evaluate.score(task, evaluate.predict_split(
            experiment, state, validation_source, predict_fn=predict_fn),
            baseline)
        writer.write(step,
                     metric_writer.flat_scalars('validation/', validation))
        progress.write(evaluate.summary_line(step, task, validation))
      if save:
        data_state = train_iterator.get_state()
        checkpointer.save(step, state, data_state)
        if validate:
          checkpointer.save_if_best(
              step, state, data_state,
              metric_writer.flat_scalars('validation/', validation),
              warn=progress.write)
        last_good = step
      if stopping and not is_last:  # A finished run just ends.
        raise stop.stopped(
            step, str(pathlib.Path(checkpointer.latest.directory) / str(step)))
      window_time = time.perf_counter()
  finally:
    progress.close()
    writer.close()
    if hasattr(train_iterator, 'close'):
      train_iterator.close()
    # Last: it waits for the saves, and raises a failed one's line; still
    # watched, so that a second SIGTERM does not cut a save short.
    with watch:
      checkpointer.close()
  if jax.process_index() == 0:
    plots.learning_curves(workdir / 'metrics.jsonl',
                          workdir / 'plots' / 'learning_curves.png')
  return validation
