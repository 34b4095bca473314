"""Every config key's allowed values, checked when a config is loaded.

:data:`RULES` maps each key of the base config
(:func:`gzjax.config.base_config`, with the ``input`` and ``optimizer``
sections from ``data/pipeline.py`` and ``optimizers.py``) to a rule: what
the value means and which values are allowed.  :func:`check` applies them,
then the rules between keys (:func:`_consistency`), and raises
:class:`gzjax.errors.ConfigError` with one line naming the key, the value
and what is allowed, before anything is built or written.
``tests/test_config_checks.py`` walks the base config and fails on any key
without a rule, so a new key cannot escape.

:func:`unknown_key_message` turns a misspelt ``--config.…`` override into one
line with the nearest existing keys (``difflib``).
"""

from __future__ import annotations

import dataclasses
import difflib
import numbers
from typing import Any, Callable, Iterator

import ml_collections

from gzjax import errors
from gzjax import losses
from gzjax import optimizers
from gzjax.data import cache
from gzjax.models import heads

# Keys whose value is a mapping with free keys, checked as one value, and
# an example of one as a --config.KEY= override writes it.
MAPPING_KEYS = {
    'optimizer.boundaries': '{1000: 0.1, 2000: 0.01}',
    'labels.columns': "{'spiral': 'binary'}",
}


@dataclasses.dataclass(frozen=True)
class Rule:
  """``test(value)`` is True for allowed values; ``allowed`` says which."""

  test: Callable[[Any], bool]
  allowed: str


def _is_int(value) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def integer(low: int | None = None, high: int | None = None) -> Rule:
  bounds = (f'>= {low}' if high is None else
            f'in [{low}, {high}]' if low is not None else f'<= {high}')
  return Rule(lambda v: _is_int(v) and (low is None or v >= low)
              and (high is None or v <= high), f'an integer {bounds}')


def number(low: float | None = None, high: float | None = None, *,
           low_open: bool = False, high_open: bool = False) -> Rule:
  """A real number within the bounds (open or closed)."""
  def test(v):
    if not _is_number(v) or v != v:  # NaN.
      return False
    if low is not None and (v <= low if low_open else v < low):
      return False
    if high is not None and (v >= high if high_open else v > high):
      return False
    return True
  if high is None:
    allowed = f'a number {">" if low_open else ">="} {low}'
  else:
    allowed = (f'a number in {"(" if low_open else "["}{low}, {high}'
               f'{")" if high_open else "]"}')
  return Rule(test, allowed)


def one_of(*choices) -> Rule:
  return Rule(lambda v: v in choices,
              'one of ' + ', '.join(repr(c) for c in choices))


BOOL = Rule(lambda v: isinstance(v, bool), 'True or False')
TEXT = Rule(lambda v: isinstance(v, str), 'a string (may be empty)')
NONEMPTY_TEXT = Rule(lambda v: isinstance(v, str) and bool(v.strip()),
                     'a non-empty path')
SEED = integer(0, 2**32 - 1)  # What jax.random.key and nnx.Rngs take whole.


def _sequence_of(item: Rule, length: int | None = None,
                 allowed: str = '') -> Rule:
  def test(v):
    if not isinstance(v, (tuple, list)):
      return False
    if length is not None and len(v) != length:
      return False
    return all(item.test(x) for x in v)
  return Rule(test, allowed)


def _boundaries(value) -> bool:
  try:
    items = list(value.items())
  except AttributeError:
    return False
  for step, scale in items:
    try:
      step = int(step)
    except (TypeError, ValueError):
      return False
    if step < 0 or not _is_number(scale) or scale < 0:
      return False
  return True


def _model_names() -> tuple[str, ...]:
  from gzjax import models  # pylint: disable=g-import-not-at-top
  return models.MODEL_NAMES


def _tasks() -> dict:
  from gzjax import tasks  # pylint: disable=g-import-not-at-top
  return tasks.TASKS


def _model_name_rule() -> Rule:
  return Rule(lambda v: v in _model_names(),
              'one of the registered models (cnn, viewpoint, inception_v3,'
              ' efficientnet_b0…b7, efficientnet_lite0…lite4)')


RULES: dict[str, Rule] = {
    'dataset': one_of('galaxy_zoo/kaggle', 'galaxy_zoo/synthetic'),
    'data_dir': NONEMPTY_TEXT,
    # '' turns the persistent compilation cache off.
    'compilation_cache_dir': TEXT,
    'manual_dir': TEXT,
    'synthetic.num_labelled': integer(2),
    'synthetic.num_test': integer(0),
    'synthetic.image_size': integer(16),
    'synthetic.seed': SEED,
    'task': Rule(lambda v: v in _tasks(),
                 "one of 'votes', '3class', '7class'"),
    'model.name': _model_name_rule(),
    'model.head': one_of('', *heads.HEADS),
    'model.hidden': _sequence_of(integer(1), allowed='a tuple of positive'
                                 ' layer widths, e.g. () or (128, 128)'),
    'model.dropout': number(0.0, 1.0, high_open=True),
    'model.dtype': one_of('auto', 'float32', 'bfloat16', 'float16'),
    'model.pretrained': TEXT,
    # input (gzjax.data.pipeline.default_config).
    'input.crop_size': integer(1),
    'input.image_size': integer(1),
    'input.batch_size': integer(1),
    'input.shuffle': BOOL,
    'input.seed': SEED,
    'input.num_epochs': Rule(lambda v: v is None or (_is_int(v) and v >= 1),
                             'None (repeat forever) or an integer >= 1'),
    'input.augment.enabled': BOOL,
    'input.augment.rotation': BOOL,
    'input.augment.flip': BOOL,
    'input.augment.zoom': _sequence_of(
        number(0.0, low_open=True), 2,
        'a pair (min, max) of magnifications with 0 < min <= max'),
    'input.augment.translation': number(0.0),
    'input.augment.brightness': number(0.0, 1.0),
    'input.augment.contrast': number(0.0, 1.0),
    'input.augment.color': number(0.0, 1.0),
    'input.normalization.mean': _sequence_of(
        number(), 3, 'three per-channel numbers'),
    'input.normalization.std': _sequence_of(
        number(0.0, low_open=True), 3, 'three positive per-channel numbers'),
    'input.num_workers': integer(0),
    'input.worker_buffer_size': integer(1),
    'input.read_threads': integer(1),
    'input.prefetch_buffer_size': integer(1),
    'input.cache': one_of(*cache.MODES),
    'input.cache_dir': TEXT,
    # optimizer (gzjax.optimizers.default_config).
    'optimizer.name': one_of(*optimizers.OPTIMIZERS),
    'optimizer.learning_rate': number(0.0, low_open=True),
    'optimizer.schedule': one_of(*optimizers.SCHEDULES),
    'optimizer.warmup_steps': integer(0),
    'optimizer.final_fraction': number(0.0, 1.0),
    'optimizer.boundaries': Rule(
        _boundaries, 'a mapping {step >= 0: multiplier >= 0}'),
    'optimizer.plateau_factor': number(0.0, 1.0, low_open=True,
                                       high_open=True),
    'optimizer.plateau_patience': integer(1),
    'optimizer.plateau_window': integer(1),
    'optimizer.plateau_min_delta': number(0.0),
    'optimizer.momentum': number(0.0, 1.0, high_open=True),
    'optimizer.weight_decay': number(0.0),
    'optimizer.grad_clip_norm': number(0.0),
    'optimizer.freeze_backbone': BOOL,
    'optimizer.layer_decay': number(0.0, 1.0, low_open=True),
    # 0: every block follows freeze_backbone; N: the last N blocks train.
    'optimizer.trainable_blocks': integer(0),
    # A label catalogue to fine-tune on (gzjax.data.labels.default_config).
    'labels.catalog': TEXT,
    'labels.id_column': NONEMPTY_TEXT,
    'labels.path_column': TEXT,
    'labels.image_folder': TEXT,
    'labels.image_suffix': Rule(
        lambda v: isinstance(v, str) and v.lower() in ('.jpg', '.jpeg', '.png'),
        "'.jpg', '.jpeg' or '.png'"),
    'labels.columns': Rule(
        lambda v: isinstance(v, (dict, ml_collections.ConfigDict)) and all(
            isinstance(name, str) and isinstance(kind, str) and (
                kind in ('binary', 'multiclass', 'regression')
                or (kind.startswith('votes:') and len(kind) > 6))
            for name, kind in v.items()),
        '{column: kind} with kind binary, multiclass, regression or'
        ' votes:<answer column>,<answer column>[,...], e.g.'
        f" {MAPPING_KEYS['labels.columns']}"),
    'labels.split_column': TEXT,
    # 0: no validation split (gzjax.finetune: trains on every row when
    # nothing evaluates).
    'labels.validation_percent': number(0.0, 100.0, high_open=True),
    'labels.max_train_labels': integer(0),
    # training.
    'loss': one_of(*losses.LOSSES),
    'label_smoothing': number(0.0, 1.0, high_open=True),
    'class_weights': _sequence_of(
        number(0.0, low_open=True),
        allowed='() or one positive weight per class'),
    'ema_decay': number(0.0, 1.0, high_open=True),
    'num_train_steps': integer(1),
    'log_every_steps': integer(1),
    'eval_every_steps': integer(0),
    'checkpoint_every_steps': integer(1),
    'keep_checkpoints': integer(1),
    'best_metric': TEXT,
    'best_mode': one_of('min', 'max'),
    'eval_batch_size': integer(0),
    'seed': SEED,
}

_BEST_METRICS = {
    'votes': ('validation/rmse', 'validation/mean_predictor_rmse'),
    'classes': ('validation/accuracy', 'validation/macro_f1'),
}


def leaves(config: ml_collections.ConfigDict,
           prefix: str = '') -> Iterator[tuple[str, Any]]:
  """(dotted key, value) of every value, a :data:`MAPPING_KEYS` as one."""
  for key, value in config.items():
    path = f'{prefix}{key}'
    if (isinstance(value, (ml_collections.ConfigDict, dict))
        and path not in MAPPING_KEYS):
      yield from leaves(value, f'{path}.')
    else:
      yield path, value


def _fail(key: str, value: Any, allowed: str) -> errors.ConfigError:
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()  # Its repr is YAML, over several lines.
  return errors.ConfigError(
      f'config.{key}={value!r} is not allowed: use {allowed}.')


def mapping_override_message(key: str, text: str) -> str:
  """One line for a ``--config.KEY=TEXT`` of a :data:`MAPPING_KEYS` key that
  does not parse as a dict (ml_collections names an ``ast`` node object)."""
  example = MAPPING_KEYS[key]
  return (f'--config.{key}={text}: expected a dict such as {example};'
          f' quote it for the shell: --config.{key}="{example}".')


def check(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Raises ConfigError on the first value that is not allowed.

  Keys without a rule (an older or hand-made config) are not refused here;
  the test of this module keeps the base config fully covered.

  Returns:
    ``config``, for chaining.
  """
  for key, value in leaves(config):
    rule = RULES.get(key)
    if rule is not None and not rule.test(value):
      raise _fail(key, value, rule.allowed)
  _consistency(config)
  return config


def _consistency(config: ml_collections.ConfigDict) -> None:
  """The rules between keys."""
  if config.optimizer.get('trainable_blocks') and not (
      config.optimizer.freeze_backbone):
    raise _fail('optimizer.trainable_blocks',
                config.optimizer.trainable_blocks,
                '0 unless optimizer.freeze_backbone=True (it says how many of'
                ' the last blocks a frozen backbone still trains)')
  if 'labels' in config and config.labels.catalog:
    # A label catalogue's task (gzjax.finetune) replaces config.task: its
    # heads, losses and metrics come from the declared columns.
    if config.best_metric and not config.best_metric.startswith(
        'validation/'):
      raise _fail('best_metric', config.best_metric,
                  "'' or 'validation/<column>/<metric>' for a label catalogue")
    if not config.labels.columns:
      raise _fail('labels.columns', {},
                  "at least one {column: kind} (binary, multiclass,"
                  " regression or votes:<answer columns>)")
    _general_consistency(config)
    return
  classification = config.task != 'votes'
  head = config.model.head
  if head:
    if classification and head != 'classes':
      raise _fail('model.head', head,
                  f"'classes' (or '') for task {config.task!r}")
    if not classification and head == 'classes':
      raise _fail('model.head', head,
                  "'votes', 'sigmoid', 'linear' (or '') for task 'votes'")
  if classification and config.loss != 'softmax':
    raise _fail('loss', config.loss, f"'softmax' for task {config.task!r}")
  if not classification and config.loss == 'softmax':
    raise _fail('loss', config.loss, "'mse' or 'bce' for task 'votes'")
  if config.class_weights:
    if not classification:
      raise _fail('class_weights', config.class_weights,
                  "() for task 'votes' (class weights are for classifiers)")
    num_classes = _tasks()[config.task].num_outputs
    if len(config.class_weights) != num_classes:
      raise _fail('class_weights', config.class_weights,
                  f'() or {num_classes} positive weights for'
                  f' task {config.task!r}')
  if config.label_smoothing and not classification:
    raise _fail('label_smoothing', config.label_smoothing,
                "0.0 for task 'votes' (smoothing is for classifiers)")
  if config.best_metric:
    allowed = _BEST_METRICS['classes' if classification else 'votes']
    if config.best_metric not in allowed:
      raise _fail('best_metric', config.best_metric,
                  f"'' (no best checkpoint) or one of"
                  f' {", ".join(map(repr, allowed))} for task'
                  f' {config.task!r}')
  _general_consistency(config)


def _input_size_fits_the_model(config: ml_collections.ConfigDict) -> None:
  """``input.image_size`` against the backbone's sizes, before a workdir is
  made: the model refuses it only when its step is traced, after a run has
  written its config.json, TensorBoard file and checkpoint folders."""
  from gzjax import models  # pylint: disable=g-import-not-at-top
  backbone = models.backbone_class(config.model.name)
  size = config.input.image_size
  if getattr(backbone, 'fixed_input_size', False):
    if size != backbone.input_size:
      raise _fail('input.image_size', size,
                  f'{backbone.input_size}: {config.model.name} takes'
                  f' {backbone.input_size} px images only')
  elif size < backbone.min_input_size:
    raise _fail('input.image_size', size,
                f'{backbone.min_input_size} or more for {config.model.name}'
                f' (its native size is'
                f' {models.native_input_size(config.model.name)})')


def _general_consistency(config: ml_collections.ConfigDict) -> None:
  """The rules between keys that hold whatever the task."""
  _input_size_fits_the_model(config)
  zoom = config.input.augment.zoom
  if zoom[0] > zoom[1]:
    raise _fail('input.augment.zoom', tuple(zoom),
                'a pair (min, max) with min <= max')
  if config.optimizer.boundaries and config.optimizer.schedule != 'piecewise':
    raise _fail('optimizer.boundaries', dict(config.optimizer.boundaries),
                "{} unless optimizer.schedule='piecewise'")
  if config.optimizer.schedule == 'piecewise' and not (
      config.optimizer.boundaries):
    raise _fail('optimizer.boundaries', {},
                "at least one {step: multiplier} with schedule 'piecewise'")


def unknown_key_message(config: ml_collections.ConfigDict, key: str) -> str:
  """One line for a ``--config.KEY`` that the config does not have."""
  known = [k for k, _ in leaves(config)]
  known += sorted({k.rsplit('.', 1)[0] for k in known if '.' in k})
  close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
  hint = (f'; did you mean {" or ".join(f"--config.{c}" for c in close)}?'
          if close else '; the keys are listed in gzjax/config.py.')
  return f'--config.{key}: the config has no such key{hint}'
