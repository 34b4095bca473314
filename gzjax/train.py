"""Training: the jitted step, the data-parallel mesh, the loop.

The step is a pure function ``(state, batch) -> (state, metrics)``, jitted
once with explicit shardings: a 1-D ``Mesh`` over every device (axis
``data``), batches sharded along it as global ``jax.Array``s assembled from
each process's share, the state replicated and donated.  The Python loop only
feeds batches, logs, evaluates and checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import time
from typing import Any, Callable, Mapping, Sequence

from absl import logging
from flax import nnx
from flax import struct
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gzjax import checkpoint
from gzjax import config_checks
from gzjax import distributed
from gzjax import errors
from gzjax import losses
from gzjax import metrics
from gzjax import models
from gzjax import optimizers
from gzjax import plots
from gzjax import progress as progress_bars
from gzjax import taxonomy
from gzjax.data import cache
from gzjax.data import galaxy_zoo
from gzjax.data import pipeline
from gzjax.models import weights

DATA_AXIS = 'data'
# Batch fields that go to the devices; galaxy_id stays on the host.
# stream_position (the cached modes') seeds each example's augmentation.
# targets: a label catalogue's columns (gzjax.finetune), a dict of arrays.
DEVICE_FIELDS = ('image', 'votes', 'votes_mask', 'label_3class',
                 'label_7class', 'example_mask', 'stream_position', 'targets')


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
  # ``(values) -> str``; None keeps the built-in behaviour.
  head: str = ''
  loss: Callable | None = None
  activate: Callable | None = None
  evaluate: Callable | None = None
  summary: Callable | None = None

  @property
  def is_classification(self) -> bool:
    return self.label_key is not None


TASKS = {
    'votes': Task('votes', taxonomy.NUM_ANSWERS),
    '3class': Task('3class', 3, 'label_3class', taxonomy.THREE_CLASS_NAMES),
    '7class': Task('7class', 7, 'label_7class', taxonomy.SEVEN_CLASS_NAMES),
}


class TrainingDiverged(errors.GzjaxError, RuntimeError):
  """The loss became NaN or infinite; the last good checkpoint is kept."""


@struct.dataclass
class TrainState:
  """Everything a step changes: a pytree, so it can be donated and saved."""

  step: jax.Array
  params: Any  # nnx.State of the nnx.Param variables.
  rest: Any  # Batch statistics and random-stream counters.
  opt_state: Any
  ema_params: Any  # Exponential moving average of params, or () when off.


# ------------------------------------------------------------------ data ---


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
  keys = ('votes', 'votes_mask', 'label_3class', 'label_7class')
  records = [source[i] for i in range(len(source))]
  return {k: np.stack([np.asarray(r[k]) for r in records]) for k in keys}


def task_of(config: ml_collections.ConfigDict) -> Task:
  if config.task not in TASKS:
    raise errors.ConfigError(
        f'Unknown task {config.task!r} (config.task); choose one of'
        f' {", ".join(TASKS)}.')
  return TASKS[config.task]


def dataset_config_name(config: ml_collections.ConfigDict) -> str:
  name, _, builder_config = config.dataset.partition('/')
  if name != galaxy_zoo.NAME or builder_config not in ('kaggle', 'synthetic'):
    raise errors.ConfigError(
        f'config.dataset={config.dataset!r}: use galaxy_zoo/kaggle or'
        ' galaxy_zoo/synthetic.')
  return builder_config


def open_split(config: ml_collections.ConfigDict, split: str):
  """The records of ``split``; builds the synthetic dataset when missing.

  A missing Kaggle dataset is built when ``config.manual_dir`` is set, else
  the error names the exact build command.
  """
  name = dataset_config_name(config)
  try:
    return galaxy_zoo.data_source(name, config.data_dir, split)
  except galaxy_zoo.DatasetNotBuiltError:
    if name == 'synthetic':
      galaxy_zoo.prepare('synthetic', config.data_dir, **config.synthetic)
    elif config.manual_dir:
      # gzjax.main has no --skip_bad_images: name the command that does.
      galaxy_zoo.prepare(
          'kaggle', config.data_dir, manual_dir=config.manual_dir,
          skip_hint=('build it yourself with python -m gzjax.data.build'
                     f' --config=kaggle --manual_dir={config.manual_dir}'
                     f' --data_dir={config.data_dir} --skip_bad_images'))
    else:
      raise
  return galaxy_zoo.data_source(name, config.data_dir, split)


def training_split(config: ml_collections.ConfigDict, task: Task):
  """The train split, reduced to galaxies with a class for classifiers."""
  source = open_split(config, 'train')
  if not task.is_classification:
    return source
  return LabelledSubset(source, _labelled(scan_labels(source), task))


def _labelled(labels: Mapping[str, np.ndarray], task: Task) -> np.ndarray:
  """Indices of the records that have a class for the task."""
  kept = np.flatnonzero(labels[task.label_key] >= 0)
  if not len(kept):
    raise errors.DataError(f'No training galaxy has a {task.name} label.')
  return kept


# ----------------------------------------------------------------- model ---


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
  """``config.model.dtype``, with ``'auto'`` resolved for this machine:
  bfloat16 on GPUs and TPUs, float32 on CPUs (which have no fast bfloat16)."""
  name = config.model.dtype
  if name == 'auto':
    name = 'float32' if jax.default_backend() == 'cpu' else 'bfloat16'
  try:
    return jnp.dtype(name)
  except TypeError:
    raise errors.ConfigError(
        f'config.model.dtype={config.model.dtype!r} is not a dtype; use auto,'
        ' float32, bfloat16 or float16.') from None


def create_model(config: ml_collections.ConfigDict, task: Task,
                 pretrained: Mapping[str, Any] | None = None):
  """The configured model, with pretrained backbone weights when given.

  Runs eagerly (every initialiser its own XLA program) unless called under
  ``jax.jit`` or ``nnx.eval_shape``, as :func:`create_experiment` does.

  Args:
    config: the experiment config.
    task: what is learned.
    pretrained: arrays from ``weights.load``; default: read
      ``config.model.pretrained`` when it is set.
  """
  head = config.model.head or task.head or (
      'classes' if task.is_classification else 'votes')
  model = models.create(
      config.model.name,
      num_outputs=task.num_outputs,
      head=head,
      hidden=tuple(config.model.hidden),
      dropout=config.model.dropout,
      dtype=compute_dtype(config),
      rngs=nnx.Rngs(config.seed),
  )
  if pretrained is None and config.model.pretrained:
    pretrained = load_pretrained(config)
  if pretrained:
    weights.assign(model, pretrained, source=str(_pretrained_path(config)))
  return model


def _pretrained_path(config: ml_collections.ConfigDict) -> pathlib.Path:
  return pathlib.Path(config.model.pretrained).expanduser()


def load_pretrained(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The arrays of ``config.model.pretrained``, once the preprocessing the
  file records (an exported encoder's) is checked against the config."""
  path = _pretrained_path(config)
  arrays = weights.load(path)
  weights.check_preprocessing(arrays.pop(weights.PREPROCESSING_KEY, None),
                              config, str(path))
  return arrays


def use_compilation_cache(directory: str,
                          min_compile_seconds: float | None = None) -> None:
  """Keeps compiled XLA programs in ``directory`` (``''``: off), so that a
  resumed run, ``--mode=evaluate`` and ``--mode=predict`` load what an earlier
  process compiled instead of compiling it again.  Call before anything
  compiles; every program that took at least ``min_compile_seconds`` (default
  :data:`MIN_CACHED_COMPILE_SECONDS`) to compile is kept."""
  if not directory:
    jax.config.update('jax_enable_compilation_cache', False)
    return
  path = pathlib.Path(directory).expanduser()
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as error:  # A read-only home: run, only without the cache.
    logging.warning('No compilation cache: cannot create %s (%s); set'
                    ' config.compilation_cache_dir to a writable folder.',
                    path, error.strerror)
    jax.config.update('jax_enable_compilation_cache', False)
    return
  jax.config.update('jax_enable_compilation_cache', True)
  jax.config.update('jax_compilation_cache_dir', str(path))
  jax.config.update(
      'jax_persistent_cache_min_compile_time_secs',
      MIN_CACHED_COMPILE_SECONDS if min_compile_seconds is None
      else min_compile_seconds)


# Programs that compile faster are not worth a file each (the eager ops).
MIN_CACHED_COMPILE_SECONDS = 0.5


@dataclasses.dataclass
class Experiment:
  """The pieces built from a config that every mode needs.

  ``state`` holds the initial (or restored) train state, or only its
  shapes, dtypes and shardings (``jax.ShapeDtypeStruct``s) when created with
  ``initialise=False``: a template that a checkpoint restore fills, or
  :meth:`initialise` replaces.
  """

  config: ml_collections.ConfigDict
  task: Task
  graphdef: Any
  state: TrainState
  optimizer: optax.GradientTransformationExtraArgs
  schedule: optax.Schedule
  mesh: jax.sharding.Mesh
  num_blocks: int
  init_state: Callable[[], TrainState] | None = None

  @property
  def replicated(self) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())

  @property
  def batch_sharding(self) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(
        self.mesh, jax.sharding.PartitionSpec(DATA_AXIS))

  def initialise(self) -> None:
    """Replaces ``state`` with the config's initial state (one jitted call)."""
    self.state = self.init_state()


def create_experiment(config: ml_collections.ConfigDict,
                      task: Task | None = None, *,
                      initialise: bool = True) -> Experiment:
  """The model, optimizer and train state a config describes.

  The model is traced once with shapes only (``nnx.eval_shape``) for its
  structure, parameter labels and optimizer; the state is then computed by a
  single jitted program (initialisers, pretrained weights, optimizer state),
  written straight to the mesh's replicated sharding.  Eager creation ran
  one XLA program per initialiser: EfficientNet-B0 took 15.6 s on 2 CPU cores.

  Args:
    config: the experiment config.
    task: what is learned (default: ``config.task``'s built-in task).
    initialise: False leaves ``state`` abstract (shapes, dtypes, shardings),
      for a checkpoint restore; :meth:`Experiment.initialise` fills it.
  """
  task = task or task_of(config)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), (DATA_AXIS,))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  abstract_model = nnx.eval_shape(lambda: create_model(config, task, {}))
  labels = models.parameter_labels(abstract_model)
  num_blocks = abstract_model.backbone.num_blocks
  graphdef = nnx.split(abstract_model, nnx.Param, ...)[0]
  optimizer = optimizers.create_optimizer(
      config.optimizer, labels, num_blocks, config.num_train_steps)
  schedule = optimizers.create_schedule(config.optimizer,
                                        config.num_train_steps)

  def initial_state(pretrained):
    model = create_model(config, task, pretrained)
    _, params, rest = nnx.split(model, nnx.Param, ...)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        rest=rest,
        opt_state=optimizer.init(params),
        # A copy: the state is donated, and one buffer cannot be donated
        # twice.
        ema_params=jax.tree.map(jnp.copy, params) if config.ema_decay else (),
    )

  # The pretrained arrays are arguments, not constants baked into the
  # program; XLA drops the initialisers of the parameters they replace.
  # Across processes, each computes the same state from the same seed and
  # fills its own devices' shards (distributed.replicate).
  local = replicated.is_fully_addressable
  init = jax.jit(initial_state, out_shardings=replicated if local else None)

  def init_state():
    # Read only to initialise: a restore (evaluate, predict, a resumed run)
    # needs neither the file nor its time.
    pretrained = load_pretrained(config) if config.model.pretrained else {}
    state = init(pretrained)
    return state if local else distributed.replicate(state, replicated)

  experiment = Experiment(
      config, task, graphdef, None, optimizer, schedule, mesh, num_blocks,
      init_state=init_state)
  if initialise:
    experiment.initialise()
  else:
    experiment.state = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                          sharding=replicated),
        # The state's shapes are the same with or without pretrained arrays.
        jax.eval_shape(init, {}))
  return experiment


def create_train_input(
    config: ml_collections.ConfigDict, task: Task, experiment: Experiment,
    source=None) -> tuple[Any, cache.DeviceInput | None]:
  """The training batches, and what the step needs to augment them.

  Without ``config.input.cache`` grain decodes and augments JPEGs on the host
  (no device input); with it the batches come from the split's decoded
  cache, built on first use, and the step augments them.
  """
  if not cache.check_mode(config.input):
    return pipeline.create_train_iterator(
        source if source is not None else training_split(config, task),
        config.input), None
  if source is not None:
    raise errors.ConfigError(
        f'config.input.cache={config.input.cache!r} caches the built Galaxy'
        ' Zoo splits only; set it to \'\' for a label catalogue.')
  directory = config.input.cache_dir or (
      pathlib.Path(config.data_dir).expanduser() / 'gzjax_cache')
  cached = cache.open_or_build(open_split(config, 'train'), directory,
                               config.input, dataset=config.dataset,
                               split='train')
  indices = (_labelled(cached.labels, task) if task.is_classification
             else None)
  resident = (cache.place_on_devices(cached, experiment.replicated)
              if config.input.cache == 'device' else None)
  return (cache.TrainIterator(cached, config.input, indices=indices),
          cache.DeviceInput(config.input, cached.geometry, resident))


# ------------------------------------------------------------------ steps ---


def _outputs(model, images: jax.Array, task: Task) -> jax.Array:
  outputs = model(images)
  if task.activate is not None:
    return task.activate(outputs)
  return jax.nn.softmax(outputs) if task.is_classification else outputs


def _stop_backbone_gradients(params):
  """A frozen backbone's parameters as constants of the loss, so that XLA
  drops their backward pass (the optimizer zeroes their updates anyway)."""
  def stop(path, value):
    is_head = getattr(path[0], 'key', None) == 'head'
    return value if is_head else jax.lax.stop_gradient(value)
  return jax.tree_util.tree_map_with_path(stop, params)


def make_loss_fn(experiment: Experiment) -> Callable:
  """The training loss ``(params, rest, batch) -> (loss, new rest)``: the
  model in training mode (a frozen backbone as constants, with its batch
  statistics fixed), the config's loss on the batch."""
  config, task, graphdef = experiment.config, experiment.task, \
      experiment.graphdef

  # The merge copies `rest` into fresh variables owned by the gradient's
  # trace: dropout advances its random-stream counter there, which flax
  # refuses for variables that came in from the enclosing jit trace.
  def loss_fn(params, rest, batch):
    # Partly frozen (the last blocks train): the optimizer zeroes the frozen
    # blocks' updates; their gradients and batch statistics still run.
    frozen = (config.optimizer.freeze_backbone and
              not config.optimizer.get('trainable_blocks', 0))
    if frozen:
      params = _stop_backbone_gradients(params)
    model = nnx.merge(graphdef, params, rest, copy=True)
    model.train()
    if frozen:
      model.backbone.eval()  # Frozen means its batch statistics too.
    outputs = model(batch['image'])
    if task.loss is not None:
      return task.loss(outputs, batch), nnx.state(model, nnx.Not(nnx.Param))
    loss = losses.compute(
        config.loss, outputs, batch, label_key=task.label_key,
        label_smoothing=config.label_smoothing,
        class_weights=config.class_weights or None)
    return loss, nnx.state(model, nnx.Not(nnx.Param))

  return loss_fn


def make_train_step(experiment: Experiment,
                    device_input: cache.DeviceInput | None = None) -> Callable:
  """The jitted ``(state, batch) -> (state, metrics)``; the state is donated.

  With a cached mode's `device_input` the step first augments the batch's
  uint8 images (or gathers them by index from the resident cache, which it
  takes as an argument so that it is not compiled in as a constant).
  """
  config = experiment.config
  loss_fn = make_loss_fn(experiment)

  def train_step(state: TrainState, batch: Mapping[str, jax.Array],
                 resident: jax.Array | None):
    if device_input is not None:
      batch = device_input.prepare(batch, resident)
    (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.rest, batch)
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
    return TrainState(state.step + 1, params, rest, opt_state, ema), \
        step_metrics

  jitted = jax.jit(
      train_step,
      in_shardings=(experiment.replicated, experiment.batch_sharding,
                    experiment.replicated),
      out_shardings=(experiment.replicated, experiment.replicated),
      donate_argnums=(0,),
  )
  resident = None if device_input is None else device_input.resident

  def step(state: TrainState, batch: Mapping[str, jax.Array]):
    return jitted(state, batch, resident)

  return step


TTA_TRANSFORMS = tuple((k, flip) for flip in (False, True) for k in range(4))
"""Test-time augmentation: 4 rotations by 90°, each with and without a flip."""


def make_predict_fn(experiment: Experiment, *, tta: bool = False) -> Callable:
  """Jitted ``(state, images) -> outputs`` in inference mode.

  Outputs are vote fractions, or class probabilities for classifiers; with
  ``tta`` they are averaged over :data:`TTA_TRANSFORMS`.  Uses the EMA of
  the parameters when the config keeps one.
  """
  config, task, graphdef = experiment.config, experiment.task, \
      experiment.graphdef

  def predict(state: TrainState, images: jax.Array) -> jax.Array:
    params = state.ema_params if config.ema_decay else state.params
    model = nnx.merge(graphdef, params, state.rest)
    model.eval()
    if not tta:
      return _outputs(model, images, task)
    total = 0.0
    for rotations, flip in TTA_TRANSFORMS:
      view = jnp.rot90(images, rotations, axes=(1, 2))
      total = total + _outputs(model, view[:, :, ::-1] if flip else view,
                               task)
    return total / len(TTA_TRANSFORMS)

  return jax.jit(
      predict,
      in_shardings=(experiment.replicated, experiment.batch_sharding),
      out_shardings=experiment.batch_sharding,
  )


def to_global(batch: Mapping[str, np.ndarray],
              sharding: jax.sharding.NamedSharding) -> dict[str, jax.Array]:
  """This process's numpy batch as global arrays sharded on ``data``."""
  return {
      key: jax.tree.map(
          lambda x: jax.make_array_from_process_local_data(sharding, x),
          batch[key])
      for key in DEVICE_FIELDS if key in batch
  }


# ------------------------------------------------------------- evaluation ---


def predict_split(experiment: Experiment, source, *, tta: bool = False,
                  predict_fn: Callable | None = None) -> dict[str, np.ndarray]:
  """Outputs and targets of every record of ``source`` (all processes)."""
  input_config = _eval_input_config(experiment.config)
  predict_fn = predict_fn or make_predict_fn(experiment, tta=tta)
  collected = []
  for batch in pipeline.create_eval_iterator(source, input_config):
    images = jax.make_array_from_process_local_data(
        experiment.batch_sharding, batch['image'])
    outputs = multihost_utils.process_allgather(
        predict_fn(experiment.state, images), tiled=True)
    host = distributed.gather_rows(
        {k: batch[k] for k in ('galaxy_id', 'votes', 'votes_mask',
                               'label_3class', 'label_7class',
                               'example_mask')})
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


def score(task: Task, predictions: Mapping[str, np.ndarray],
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
  scanned = scan_labels(source)
  known = scanned['votes_mask']
  votes = np.where(known, scanned['votes'], 0.0)
  return votes.sum(0) / np.maximum(known.sum(0), 1)


# ---------------------------------------------------------------- logging ---


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
      f.write(json.dumps({'step': step, **values}) + '\n')
    for key, value in values.items():
      if isinstance(value, (int, float)) and math.isfinite(value):
        self._tensorboard.add_scalar(key, value, step)
    self._tensorboard.flush()

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()


def _flat_scalars(prefix: str, values: Mapping[str, Any]) -> dict[str, float]:
  flat = {}
  for key, value in values.items():
    if isinstance(value, Mapping):
      flat.update(_flat_scalars(f'{prefix}{key}/', value))
    elif isinstance(value, (int, float, np.floating, np.integer)):
      flat[f'{prefix}{key}'] = float(value)
  return flat


# --------------------------------------------------------------- workdir ---

# Config keys that change the saved state's structure, as (key, what of its
# value matters): a checkpoint restores only under the same values.
STATE_KEYS = (
    ('task', None), ('model.name', None), ('model.head', None),
    ('model.hidden', None), ('ema_decay', bool),
    ('optimizer.name', None), ('optimizer.freeze_backbone', None),
    ('optimizer.schedule', lambda s: s == 'plateau'),
    ('optimizer.grad_clip_norm', bool),
    ('optimizer.layer_decay', lambda d: d != 1.0),
    ('optimizer.trainable_blocks', None),
)


def writable_workdir(workdir: str | pathlib.Path) -> pathlib.Path:
  """Creates ``workdir`` and checks it can be written, in one clear line."""
  workdir = pathlib.Path(workdir)
  if jax.process_index() != 0:
    return workdir
  probe = workdir / '.gzjax_write_test'
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe.write_text('')
    probe.unlink()
  except OSError as error:
    raise errors.WorkdirError(
        f'Cannot write to the workdir {workdir}: {error.strerror}'
        f'{f" ({error.filename})" if error.filename else ""}. Choose a'
        ' --workdir you can write to.') from None
  return workdir


def _value(config, key: str):
  node = config
  for part in key.split('.'):
    node = node[part] if part in node else None
    if node is None:
      return None
  return node


def check_resumable(config: ml_collections.ConfigDict,
                    workdir: pathlib.Path) -> None:
  """Raises CheckpointError, naming each difference, when the workdir's
  checkpoints were saved under a config that gives another state."""
  saved_path = workdir / 'config.json'
  if not saved_path.is_file():
    return
  saved = json.loads(saved_path.read_text())
  differences = []
  for key, meaning in STATE_KEYS:
    old = _value(saved, key)
    new = _value(config, key)
    if isinstance(old, list):
      old = tuple(old)
    if isinstance(new, list):
      new = tuple(new)
    if old is None:
      continue
    if (meaning or (lambda v: v))(old) != (meaning or (lambda v: v))(new):
      differences.append(f'{key}: checkpoint has {old!r}, config has {new!r}')
  if differences:
    raise errors.CheckpointError(
        f'The checkpoints in {workdir} are of another model ('
        + '; '.join(differences) + '). Train into a new --workdir, or set'
        ' these values back to resume.')


def _write_atomically(path: pathlib.Path, text: str) -> None:
  if jax.process_index() != 0:
    return
  temporary = path.with_name(path.name + '.tmp')
  temporary.write_text(text)
  os.replace(temporary, path)


def truncate_metrics(path: pathlib.Path, step: int) -> None:
  """Drops the lines after ``step``: a resumed run writes them again."""
  if jax.process_index() != 0 or not path.is_file():
    return
  lines = path.read_text().splitlines(keepends=True)
  kept = [line for line in lines if _logged_step(line) <= step]
  if len(kept) != len(lines):
    _write_atomically(path, ''.join(kept))


def _logged_step(line: str) -> float:
  """A metrics line's step; inf (dropped) for a line a kill cut short."""
  try:
    return json.loads(line)['step']
  except (ValueError, KeyError, TypeError):
    return math.inf


# ------------------------------------------------------------------- loop ---


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
                       task: Task | None = None, train_source=None,
                       validation_source=None) -> dict[str, Any]:
  """Trains (resuming from ``workdir`` when it holds a checkpoint).

  ``task`` and the two sources replace the config's built-in task and
  Galaxy Zoo splits (gzjax.finetune passes a label catalogue's).

  Returns:
    The last validation metrics.
  """
  config_checks.check(config)
  workdir = writable_workdir(workdir)
  # Shapes only until it is known whether a checkpoint fills the state.
  experiment = create_experiment(config, task, initialise=False)
  task = experiment.task
  given_train_source = train_source
  if train_source is None:
    train_source = training_split(config, task)
  if config.input.batch_size > len(train_source):
    raise errors.ConfigError(
        f'config.input.batch_size={config.input.batch_size} is larger than'
        f' the {len(train_source)} galaxies of the training split: every'
        ' batch would repeat galaxies. Lower config.input.batch_size.')
  if validation_source is None:
    validation_source = open_split(config, 'validation')
  baseline = None if (task.is_classification or task.evaluate) else \
      training_mean_votes(
      train_source)
  checkpointer = checkpoint.Checkpointer(
      workdir, keep=config.keep_checkpoints, best_metric=config.best_metric,
      best_mode=config.best_mode)
  train_iterator, device_input = create_train_input(
      config, task, experiment, given_train_source)
  start_step = 0
  if checkpointer.latest_step() is not None:
    check_resumable(config, workdir)
    restored = checkpointer.restore_newest_intact(experiment.state)
    if restored is not None:
      experiment.state, data_state, start_step = restored
      train_iterator.set_state(data_state)
  if not start_step:  # No checkpoint, or none intact: initialise.
    experiment.initialise()
  # Only now, with the checkpoint restored, does the workdir describe this
  # config; the metrics keep what the restored state has seen.
  if jax.process_index() == 0:  # One writer on a shared filesystem.
    _write_atomically(workdir / 'config.json',
                      config.to_json_best_effort(indent=2))
    truncate_metrics(workdir / 'metrics.jsonl', start_step)
  last_good = start_step if start_step else None
  train_step = make_train_step(experiment, device_input)
  predict_fn = make_predict_fn(experiment)
  writer = MetricWriter(workdir, purge_step=start_step + 1)
  pending, window_start, window_time = [], start_step, time.perf_counter()
  validation = {}
  progress = progress_bars.bar(total=config.num_train_steps,
                               initial=start_step, unit='step',
                               disable=jax.process_index() != 0)
  try:
    for step in range(start_step + 1, config.num_train_steps + 1):
      batch = to_global(next(train_iterator), experiment.batch_sharding)
      experiment.state, step_metrics = train_step(experiment.state, batch)
      pending.append(step_metrics)
      progress.update()
      is_last = step == config.num_train_steps
      log = step % config.log_every_steps == 0 or is_last
      evaluate = (config.eval_every_steps and
                  step % config.eval_every_steps == 0) or is_last
      save = step % config.checkpoint_every_steps == 0 or is_last
      if not (log or evaluate or save):
        continue
      means = _check_finite(pending, window_start, last_good, workdir)
      elapsed = time.perf_counter() - window_time
      means['images_per_second'] = (
          len(pending) * config.input.batch_size / max(elapsed, 1e-9))
      writer.write(step, {f'train/{k}': v for k, v in means.items()})
      progress.set_postfix(loss=f'{means["loss"]:.4g}',
                           img_s=f'{means["images_per_second"]:.0f}')
      pending, window_start = [], step
      if evaluate:
        validation = score(task, predict_split(
            experiment, validation_source, predict_fn=predict_fn), baseline)
        writer.write(step, _flat_scalars('validation/', validation))
        progress.write(summary_line(step, task, validation))
      if save:
        data_state = train_iterator.get_state()
        checkpointer.save(step, experiment.state, data_state)
        if evaluate:
          checkpointer.save_if_best(
              step, experiment.state, data_state,
              _flat_scalars('validation/', validation))
        last_good = step
      window_time = time.perf_counter()
  finally:
    progress.close()
    checkpointer.wait()
    checkpointer.close()
    writer.close()
    if hasattr(train_iterator, 'close'):
      train_iterator.close()
  if jax.process_index() == 0:
    plots.learning_curves(workdir / 'metrics.jsonl',
                          workdir / 'plots' / 'learning_curves.png')
  return validation


def summary_line(step: int, task: Task, values: Mapping[str, Any],
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
