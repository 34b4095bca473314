"""Optax optimizers and schedules from a config.

Adam, AdamW and SGD with Nesterov momentum; warmup + cosine, piecewise steps
(Dieleman et al. 2015), constant, and reduce-on-plateau (Kalvankar et al.
2020); gradient clipping; a frozen backbone and layer-wise learning-rate
decay, both read from :func:`gzjax.models.parameter_labels`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

OPTIMIZERS = ('adam', 'adamw', 'sgd')
SCHEDULES = ('constant', 'cosine', 'piecewise', 'plateau')


def default_config() -> ml_collections.ConfigDict:
  """The optimizer section of an experiment config (``config.optimizer``)."""
  config = ml_collections.ConfigDict()
  config.name = 'adam'
  config.learning_rate = 1e-3
  config.schedule = 'cosine'
  config.warmup_steps = 0
  # cosine: the final learning rate as a fraction of the peak.
  config.final_fraction = 0.01
  # piecewise: {step: multiplier of the base rate from that step on}.
  config.boundaries = ml_collections.ConfigDict()
  # plateau: scale by `factor` after `patience` windows of `window` steps
  # without the training loss improving by `min_delta` (relative).
  config.plateau_factor = 0.5
  config.plateau_patience = 5
  config.plateau_window = 50
  config.plateau_min_delta = 1e-3
  config.momentum = 0.9  # sgd (Nesterov).
  config.weight_decay = 0.0  # adamw: decoupled; others: none.
  config.grad_clip_norm = 0.0  # 0: no clipping.
  config.freeze_backbone = False
  # With freeze_backbone: the last N backbone blocks (output side) still
  # train; 0 freezes the whole backbone.
  config.trainable_blocks = 0
  # Multiply the learning rate of backbone block b by decay ** (blocks - b):
  # 1.0 is no decay; 0.7 trains the input blocks far less than the head.
  config.layer_decay = 1.0
  return config


def create_schedule(config: ml_collections.ConfigDict,
                    num_train_steps: int) -> optax.Schedule:
  """The learning-rate schedule (before any plateau scaling)."""
  peak = config.learning_rate
  warmup = config.warmup_steps
  if config.schedule in ('constant', 'plateau'):
    main = optax.constant_schedule(peak)
  elif config.schedule == 'cosine':
    main = optax.cosine_decay_schedule(
        peak, max(1, num_train_steps - warmup), alpha=config.final_fraction)
  elif config.schedule == 'piecewise':
    # Each multiplier is of the base rate; optax.piecewise_constant_schedule
    # would multiply them together (0.1 then 0.01 giving 0.001).  Boundaries
    # are global steps, so shift them by the warmup this schedule follows.
    pieces = sorted((int(step) - warmup, float(scale))
                    for step, scale in config.boundaries.items())

    def main(count):
      rate = jnp.asarray(peak, jnp.float32)
      for boundary, scale in pieces:
        rate = jnp.where(count >= boundary, peak * scale, rate)
      return rate
  else:
    raise ValueError(f'Unknown schedule {config.schedule!r}; choose one of'
                     f' {SCHEDULES} (config.optimizer.schedule).')
  if not warmup:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, warmup), main], [warmup])


def schedule_warnings(config: ml_collections.ConfigDict,
                      num_train_steps: int) -> list[str]:
  """What of ``config``'s schedule a run of ``num_train_steps`` never
  reaches: a warm-up past its end (the rate never peaks) or a piecewise
  boundary past it.  Warnings, not refusals: a short smoke run of a long
  recipe does this on purpose."""
  found = []
  if config.warmup_steps > num_train_steps:
    found.append(
        f'config.optimizer.warmup_steps={config.warmup_steps} is past'
        f' config.num_train_steps={num_train_steps}: the learning rate ends'
        f' at {num_train_steps / config.warmup_steps:.0%} of its peak'
        f' {config.learning_rate:g}.')
  if config.schedule == 'piecewise':
    late = sorted(int(step) for step in config.boundaries
                  if int(step) > num_train_steps)
    if late:
      found.append(
          f'config.optimizer.boundaries steps {late} are past'
          f' config.num_train_steps={num_train_steps}: never applied.')
  return found


def _base(config, schedule) -> optax.GradientTransformation:
  if config.name == 'adam':
    return optax.adam(schedule)
  if config.name == 'adamw':
    return optax.adamw(schedule, weight_decay=config.weight_decay)
  if config.name == 'sgd':
    return optax.sgd(schedule, momentum=config.momentum, nesterov=True)
  raise ValueError(f'Unknown optimizer {config.name!r}; choose one of'
                   f' {OPTIMIZERS} (config.optimizer.name).')


def _block_scale(label: str, num_blocks: int, decay: float) -> float:
  if label == 'head':
    return 1.0
  block = int(label.split('/')[1])
  return decay ** (num_blocks - block)


def create_optimizer(
    config: ml_collections.ConfigDict,
    labels: Any,
    num_blocks: int,
    num_train_steps: int,
) -> optax.GradientTransformationExtraArgs:
  """The full transformation; call ``update(..., value=loss)``.

  Args:
    config: ``config.optimizer``.
    labels: a pytree like the parameters with ``'head'`` or
      ``'backbone/<block>'`` leaves.
    num_blocks: the backbone's block count, for layer-wise decay.
    num_train_steps: for the cosine schedule.
  """
  schedule = create_schedule(config, num_train_steps)
  parts = []
  if config.grad_clip_norm:
    parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
  parts.append(_base(config, schedule))
  # A frozen backbone leaves only the head (scale 1) to this chain, whose
  # updates hold masked nodes where the scales tree has backbone leaves.
  if config.layer_decay != 1.0 and not config.freeze_backbone:
    scales = jax.tree.map(
        lambda label: _block_scale(label, num_blocks, config.layer_decay),
        labels)
    parts.append(optax.GradientTransformation(
        lambda params: optax.EmptyState(),
        lambda updates, state, params=None: (
            jax.tree.map(lambda u, s: u * s, updates, scales), state)))
  if config.schedule == 'plateau':
    parts.append(optax.contrib.reduce_on_plateau(
        factor=config.plateau_factor, patience=config.plateau_patience,
        rtol=config.plateau_min_delta, accumulation_size=config.plateau_window))
  transform = optax.chain(*parts)
  first_trained = first_trained_block(config, num_blocks)
  if first_trained is not None:
    groups = jax.tree.map(
        lambda label: 'train' if trains(label, first_trained) else 'frozen',
        labels)
    transform = optax.multi_transform(
        {'train': transform, 'frozen': optax.set_to_zero()}, groups)
  return optax.with_extra_args_support(transform)


def first_trained_block(config: ml_collections.ConfigDict,
                        num_blocks: int) -> int | None:
  """The first backbone block that trains (``config.optimizer``): None when
  nothing is frozen; ``num_blocks`` when only the head trains; else the
  backbone's last ``trainable_blocks`` blocks train too."""
  if not config.freeze_backbone:
    return None
  return num_blocks - config.get('trainable_blocks', 0)


def trains(label: str, first_trained: int | None) -> bool:
  """Whether the parameter of :func:`gzjax.models.parameter_labels`'s
  ``label`` (``'head'`` or ``'backbone/<block>'``) trains."""
  return (first_trained is None or label == 'head' or
          int(label.split('/')[1]) >= first_trained)


def learning_rate(config: ml_collections.ConfigDict, schedule: optax.Schedule,
                  opt_state: Any, step: jax.Array) -> jax.Array:
  """The learning rate in effect: the schedule times any plateau scale."""
  rate = schedule(step)
  if config.schedule == 'plateau':
    for state in jax.tree.leaves(
        opt_state,
        is_leaf=lambda s: isinstance(s, optax.contrib.ReduceLROnPlateauState)):
      if isinstance(state, optax.contrib.ReduceLROnPlateauState):
        rate = rate * state.scale
  return rate
