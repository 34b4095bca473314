"""The experiment a config describes: model, optimizer, train state, mesh.

``create_experiment`` builds them once for every mode (train, evaluate,
predict); ``create_train_input`` the training batches for its state.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable, Mapping

from absl import logging
from flax import nnx
from flax import struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from gzjax import distributed
from gzjax import errors
from gzjax import heap
from gzjax import models
from gzjax import optimizers
from gzjax import tasks
from gzjax.data import cache
from gzjax.data import cached_input
from gzjax.data import pipeline
from gzjax.data import splits
from gzjax.models import creation
from gzjax.models import weights


@struct.dataclass
class TrainState:
  """Everything a step changes: a pytree, so it can be donated and saved."""

  step: jax.Array
  params: Any  # nnx.State of the nnx.Param variables.
  # The model's non-trainable variables: batch-norm statistics, random-
  # stream counters.
  model_state: Any
  opt_state: Any
  ema_params: Any  # Exponential moving average of params, or () when off.


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


def trace_model(config: ml_collections.ConfigDict, task: tasks.Task
                ) -> tuple[models.GalaxyModel, creation.Plan]:
  """The model without its values (shapes, dtypes, structure) and the draws
  its initialisers make, which :func:`create_model` serves from pools: the
  two-pass reference that :func:`create_experiment`'s one trace is checked
  against."""
  return creation.trace(lambda: _build_model(config, task))


def create_model(config: ml_collections.ConfigDict, task: tasks.Task,
                 pretrained: Mapping[str, Any] | None = None, *,
                 plan: creation.Plan | None = None,
                 pools: list[jax.Array] | None = None):
  """The configured model, with pretrained backbone weights when given.

  The initialisers draw slices of one draw per distribution
  (:mod:`gzjax.models.creation`), as in :func:`create_experiment`, which
  gets the same numbers from one traced build; this builds the model again
  for them, eagerly unless called under ``jax.jit`` (the reference the tests
  compare the engine's creation with, and a model object to inspect).

  Args:
    config: the experiment config.
    task: what is learned.
    pretrained: arrays from ``weights.load``; default: read
      ``config.model.pretrained`` when it is set.
    plan: the initialisers' draws, from :func:`trace_model` (default:
      traced here).
    pools: ``creation.draw_pools(plan, creation.seed_data(config.seed))``,
      drawn here when not given.
  """
  if plan is None:
    plan = trace_model(config, task)[1]
  if pools is None:
    pools = creation.draw_pools(plan, creation.seed_data(config.seed))
  with creation.pooled(plan, pools):
    model = _build_model(config, task)
  if pretrained is None and config.model.pretrained:
    pretrained = load_pretrained(config)
  if pretrained:
    weights.assign(model, pretrained, source=str(_pretrained_path(config)))
  return model


def _build_model(config: ml_collections.ConfigDict, task: tasks.Task):
  head = config.model.head or task.head or (
      'classes' if task.is_classification else 'votes')
  return models.create(
      config.model.name,
      num_outputs=task.num_outputs,
      head=head,
      hidden=tuple(config.model.hidden),
      dropout=config.model.dropout,
      dtype=compute_dtype(config),
      rngs=creation.CreationRngs(config.seed),
  )


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


@dataclasses.dataclass(frozen=True)
class Experiment:
  """The fixed pieces built from a config that every mode needs.

  The train state is not one of them: :meth:`initial_state` computes the
  config's initial state, :meth:`abstract_state` its shapes, dtypes and
  shardings (``jax.ShapeDtypeStruct``s, a template that a checkpoint restore
  fills); the caller holds the state from there on (the training loop's
  variable).
  """

  config: ml_collections.ConfigDict
  task: tasks.Task
  graphdef: Any
  optimizer: optax.GradientTransformationExtraArgs
  schedule: optax.Schedule
  mesh: jax.sharding.Mesh
  # () -> the initial TrainState on the mesh (two jitted programs); and the same
  # without computing it: () -> its ShapeDtypeStructs.
  initial_state: Callable[[], TrainState]
  abstract_state: Callable[[], TrainState]

  @property
  def replicated(self) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())

  @property
  def batch_sharding(self) -> jax.sharding.NamedSharding:
    return jax.sharding.NamedSharding(
        self.mesh, jax.sharding.PartitionSpec(distributed.DATA_AXIS))


@heap.frozen()  # It traces the model (gzjax.heap).
def create_experiment(config: ml_collections.ConfigDict,
                      task: tasks.Task | None = None) -> Experiment:
  """The model, optimizer and initial train state a config describes.

  The model is built once, under a trace (``creation.trace_once``), for its
  structure, parameter labels and optimizer, and its variables as a
  program of the initialisers' draws; the state, when asked for, is
  computed by two jitted programs (the initialisers' pooled draws; then
  that traced program on them, pretrained weights and optimizer state),
  written straight to the mesh's replicated sharding.  Eager creation ran
  one XLA program per initialiser: EfficientNet-B0 took 15.6 s on 2 CPU
  cores; in one program the initialisers still compiled a kernel each;
  sliced from pooled draws, B0's creation takes ~1.5 s, B7's ~5 s
  (BUILD.md, start-up).  The build is traced here, so JAX's settings in
  force now (default matmul precision, PRNG implementation) are the ones
  its program keeps.

  Args:
    config: the experiment config.
    task: what is learned (default: ``config.task``'s built-in task).
  """
  task = task or tasks.task_of(config)
  mesh = distributed.make_mesh()
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def build():
    model = _build_model(config, task)
    graphdef, params, model_state = nnx.split(model, nnx.Param, ...)
    return (params, model_state), (graphdef, models.parameter_labels(model),
                                   model.backbone.num_blocks)

  traced = creation.trace_once(build)
  graphdef, labels, num_blocks = traced.aux
  optimizer = optimizers.create_optimizer(
      config.optimizer, labels, num_blocks, config.num_train_steps)
  schedule = optimizers.create_schedule(config.optimizer,
                                        config.num_train_steps)

  def initial_state(pretrained, pools):
    params, model_state = traced.evaluate(pools)
    if pretrained:
      model = nnx.merge(graphdef, params, model_state)
      weights.assign(model, pretrained, source=str(_pretrained_path(config)))
      _, params, model_state = nnx.split(model, nnx.Param, ...)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=optimizer.init(params),
        # A copy: the state is donated, and one buffer cannot be donated
        # twice.
        ema_params=jax.tree.map(jnp.copy, params) if config.ema_decay else (),
    )

  # Two programs: the initialisers' pooled draws (a few large kernels,
  # compiled optimised), then the state from them (hundreds of trivial
  # kernels: slices, scales, zeros, compiled as creation.jit_programs
  # says).  The pretrained arrays are arguments, not constants baked into the
  # program; XLA drops the slices of the parameters they replace.  Across
  # processes, each computes the same state from the same seed and fills its
  # own devices' shards (distributed.replicate).
  local = replicated.is_fully_addressable
  out_sharding = replicated if local else None
  draw_pools, init = creation.jit_programs(
      traced.plan, initial_state, platform=mesh.devices.flat[0].platform,
      out_shardings=out_sharding)
  seed_data = creation.seed_data(config.seed)

  def unused_pools(pretrained) -> tuple[tuple, ...]:
    # The pools that only the variables the pretrained arrays replace draw
    # from (a backbone's, when the head has an initialiser of its own) need
    # not be drawn: EfficientNet-B7's 63 M truncated normals.
    replaced = weights.assigned(traced.abstract, pretrained)
    return traced.unused_distributions([not r for r in replaced])

  def init_state():
    # Read only to initialise: a restore (evaluate, predict, a resumed run)
    # needs neither the file nor its time.
    pretrained = load_pretrained(config) if config.model.pretrained else {}
    unused = unused_pools(pretrained) if pretrained else ()
    with heap.frozen():  # The programs' first calls trace them.
      state = init(pretrained, draw_pools(seed_data, unused=unused))
    return state if local else distributed.replicate(state, replicated)

  @heap.frozen()
  def abstract_state():
    return jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype,
                                          sharding=replicated),
        # The state's shapes are the same with or without pretrained arrays.
        jax.eval_shape(init, {}, creation.pool_shapes(traced.plan)))

  return Experiment(config, task, graphdef, optimizer, schedule, mesh,
                    initial_state=init_state, abstract_state=abstract_state)


def create_train_input(
    config: ml_collections.ConfigDict, task: tasks.Task, experiment: Experiment,
    source=None, *, label_catalogue: bool = False
) -> tuple[Any, cached_input.DeviceInput | None]:
  """The training batches, and what the step needs to augment them.

  Without ``config.input.cache`` grain decodes and augments ``source`` (by
  default :func:`splits.training_split`, whose classifier subset scans the
  split's labels: a caller that has it passes it) on the host, with no
  device input; with it the batches come from the built split's decoded
  cache, built on first use, and the step augments them.
  ``label_catalogue``: ``source`` is a label catalogue's, which has no
  cache.
  """
  if not cache.check_mode(config.input):
    return pipeline.create_train_iterator(
        source if source is not None else splits.training_split(config, task),
        config.input), None
  if label_catalogue:
    raise errors.ConfigError(
        f'config.input.cache={config.input.cache!r} caches the built Galaxy'
        ' Zoo splits only; set it to \'\' for a label catalogue.')
  directory = config.input.cache_dir or (
      pathlib.Path(config.data_dir).expanduser() / 'gzjax_cache')
  cached = cache.open_or_build(splits.open_split(config, 'train'), directory,
                               config.input, dataset=config.dataset,
                               split='train')
  indices = (tasks.labelled_indices(cached.labels, task)
             if task.is_classification else None)
  resident = (cached_input.place_on_devices(cached, experiment.replicated)
              if config.input.cache == 'device' else None)
  return (cached_input.TrainIterator(cached, config.input, indices=indices),
          cached_input.DeviceInput(config.input, cached.geometry, resident))
