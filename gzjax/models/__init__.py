"""Models: backbones, heads, and a registry that builds any pair by name.

Written in ``flax.nnx``, Flax's current API.  Linen was considered and not
needed: NNX modules are plain Python objects whose state ``nnx.split`` turns
into a pytree, so the training engine still jits a *pure* function of
(state, batch) with explicit shardings, while models read like the papers'
layer lists and parameter paths (``backbone/blocks/3/...``) carry the labels
that frozen backbones and layer-wise learning-rate decay need.

Every backbone obeys one contract, so any head and any task works with any
backbone:

* ``__call__(images)``: float images ``[B, H, W, 3]`` (NHWC) to features
  ``[B, num_features]``;
* ``num_features``, ``input_size`` (its native side), ``min_input_size``,
  ``fixed_input_size`` (True when only ``input_size`` works);
* ``num_blocks`` and ``block_of(path)``: the 0-based block (input side first)
  of a parameter, for layer-wise learning-rate decay.

Parameters are float32; ``dtype`` sets the compute dtype (bfloat16 on
accelerators).  Train/eval behaviour (dropout, batch-norm statistics) follows
``model.train()`` / ``model.eval()``.
"""

from __future__ import annotations

import importlib
from typing import Any, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from gzjax import errors
from gzjax import heap
from gzjax import taxonomy
from gzjax.models import creation
from gzjax.models import heads

# name -> (module, class, constructor keyword arguments)
_BACKBONES: dict[str, tuple[str, str, dict[str, Any]]] = {
    'cnn': ('gzjax.models.cnn', 'SeedCNN', {}),
    'inception_v3': ('gzjax.models.inception', 'InceptionV3', {}),
    'viewpoint': ('gzjax.models.viewpoint', 'ViewpointNet', {}),
    **{
        f'efficientnet_b{i}': (
            'gzjax.models.efficientnet', 'EfficientNet', {'variant': f'b{i}'}
        )
        for i in range(8)
    },
    **{
        f'efficientnet_lite{i}': (
            'gzjax.models.efficientnet', 'EfficientNet',
            {'variant': f'lite{i}'},
        )
        for i in range(5)
    },
}

MODEL_NAMES: tuple[str, ...] = tuple(_BACKBONES)


def backbone_class(name: str) -> type[nnx.Module]:
  """The backbone class registered under ``name``."""
  if name not in _BACKBONES:
    raise ValueError(
        f'Unknown model {name!r}; choose one of {", ".join(MODEL_NAMES)}.'
    )
  module, cls, _ = _BACKBONES[name]
  return getattr(importlib.import_module(module), cls)


class GalaxyModel(nnx.Module):
  """A backbone and a head: images to votes, probabilities or logits."""

  def __init__(self, backbone: nnx.Module, head: heads.Head, name: str):
    self.backbone = backbone
    self.head = head
    self.name = name

  def check_input(self, shape: Sequence[int]) -> None:
    """Raises a clear error for images the backbone cannot take."""
    backbone = self.backbone
    if len(shape) != 4 or shape[-1] != 3:
      raise errors.ConfigError(
          f'{self.name} takes images [batch, height, width, 3] (NHWC, RGB);'
          f' got shape {tuple(shape)}.'
      )
    height, width = shape[1], shape[2]
    if getattr(backbone, 'fixed_input_size', False):
      if (height, width) != (backbone.input_size,) * 2:
        raise errors.ConfigError(
            f'{self.name} needs {backbone.input_size}x{backbone.input_size}'
            f' inputs; got {height}x{width}. Set the input image_size to'
            f' {backbone.input_size}.'
        )
    elif min(height, width) < backbone.min_input_size:
      raise errors.ConfigError(
          f'{self.name} needs inputs of at least {backbone.min_input_size}'
          f' px; got {height}x{width}.'
      )

  def __call__(self, images: jax.Array) -> jax.Array:
    self.check_input(images.shape)
    return self.head(self.backbone(images))


@heap.frozen()  # It traces the model (gzjax.heap).
def create(
    name: str,
    *,
    num_outputs: int = taxonomy.NUM_ANSWERS,
    head: str = 'votes',
    hidden: Sequence[int] = (),
    dropout: float = 0.0,
    dtype: Any = jnp.float32,
    rngs: nnx.Rngs | None = None,
    seed: int = 0,
    sharding: jax.sharding.Sharding | None = None,
    **backbone_options,
) -> GalaxyModel:
  """Builds the model ``name`` with a head.

  With ``rngs`` the initialisers run as the constructor calls them (eagerly,
  one XLA program each, unless the caller traces); without, the model is
  traced once (:func:`gzjax.models.creation.trace_once`) and initialised by
  two jitted programs: one draw per distribution, and the traced program
  serving the variables slices of those draws, which is what makes
  EfficientNet-B7 start in seconds rather than minutes.

  Args:
    name: one of :data:`MODEL_NAMES`.
    num_outputs: outputs of the head (37 votes, 3 or 7 classes, 1, …).
    head: one of :data:`gzjax.models.heads.HEADS`.
    hidden: widths of the MLP block before the output layer.
    dropout: dropout rate after each MLP layer.
    dtype: compute dtype; parameters stay float32.
    rngs: parameter and dropout random streams (default: ``seed``'s, with
      pooled draws).
    seed: used when ``rngs`` is None.
    sharding: where the jitted initialisation puts the variables (default:
      the default device); only without ``rngs``.
    **backbone_options: passed to the backbone's constructor.
  """
  options = dict(num_outputs=num_outputs, head=head, hidden=hidden,
                 dropout=dropout, dtype=dtype, **backbone_options)
  if rngs is not None:
    return _build(name, rngs=rngs, **options)

  def build():
    graphdef, state = nnx.split(
        _build(name, rngs=creation.CreationRngs(seed), **options))
    return state, graphdef

  traced = creation.trace_once(build)
  draw_pools, init = creation.jit_programs(
      traced.plan, traced.evaluate, out_shardings=sharding,
      platform=(next(iter(sharding.device_set)) if sharding
                else jax.devices()[0]).platform)
  return nnx.merge(traced.aux, init(draw_pools(creation.seed_data(seed))))


def _build(name, *, num_outputs, head, hidden, dropout, dtype, rngs,
           **backbone_options) -> GalaxyModel:
  cls = backbone_class(name)
  options = {**_BACKBONES[name][2], **backbone_options}
  backbone = cls(dtype=dtype, rngs=rngs, **options)
  return GalaxyModel(
      backbone,
      heads.Head(
          backbone.num_features,
          num_outputs,
          head,
          hidden=hidden,
          dropout=dropout,
          dtype=dtype,
          rngs=rngs,
      ),
      name,
  )


def _size(leaf) -> int:
  return int(np.prod(leaf.shape))


def count_params(model: nnx.Module) -> dict[str, int]:
  """Parameter counts, including batch-norm statistics as Keras counts them.

  Works on abstract models too (``nnx.eval_shape(lambda: create(...))``), so
  counting EfficientNet-B7 costs no memory and no compile.

  Returns:
    ``{'params': trainable weights, 'batch_stats': running means and
    variances, 'total': both}``.
  """
  params = sum(_size(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  stats = sum(
      _size(x) for x in jax.tree.leaves(nnx.state(model, nnx.BatchStat))
  )
  return {'params': params, 'batch_stats': stats, 'total': params + stats}


def abstract(name: str, **options) -> GalaxyModel:
  """The model's structure with shapes only: no memory, no compile."""
  return nnx.eval_shape(
      lambda: create(name, rngs=nnx.Rngs(options.pop('seed', 0)), **options))


def native_input_size(name: str) -> int:
  """The side, in pixels, that the backbone ``name`` was designed for."""
  cls = backbone_class(name)
  if isinstance(getattr(cls, 'input_size', None), int):
    return cls.input_size
  # A family whose size depends on its constructor options (EfficientNet).
  return cls.native_input_size(**_BACKBONES[name][2])


def flops_per_image(model: GalaxyModel, image_size: int | None = None) -> float:
  """Forward-pass FLOPs per image in inference mode, from XLA's cost analysis.

  Compiles the forward pass for one image (CPU compile of the big models
  takes a while).
  """
  size = image_size or model.backbone.input_size
  graphdef, state = nnx.split(model)

  def forward(state, images):
    inference = nnx.merge(graphdef, state)
    inference.eval()
    return inference(images)

  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  cost = jax.jit(forward).lower(state, images).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older jax: one dict per device.
    cost = cost[0]
  return float(cost['flops'])


def fix_frozen_blocks(model: GalaxyModel, first_trained: int) -> None:
  """Puts the backbone's blocks before ``first_trained`` in inference mode:
  batch-norm statistics fixed (used, not updated) and dropout off, as
  frozen layers are; all of the backbone when ``first_trained`` is
  ``num_blocks`` (only the head trains)."""
  backbone = model.backbone
  if first_trained >= backbone.num_blocks:
    backbone.eval()
    return
  for path, module in nnx.iter_modules(backbone):
    if (isinstance(module, (nnx.BatchNorm, nnx.Dropout)) and
        backbone.block_of(path) < first_trained):
      module.eval()


def parameter_labels(model: GalaxyModel) -> nnx.State:
  """For every parameter, ``'head'`` or ``'backbone/<block>'``.

  A state shaped like ``nnx.state(model, nnx.Param)``, for
  ``optax.multi_transform`` (frozen backbones) and layer-wise learning-rate
  decay (the block index, 0 at the input).
  """
  params = nnx.state(model, nnx.Param)

  def label(path, _):
    keys = tuple(getattr(k, 'key', getattr(k, 'idx', k)) for k in path)
    if keys[0] == 'head':
      return 'head'
    return f'backbone/{model.backbone.block_of(keys[1:])}'

  return jax.tree_util.tree_map_with_path(label, params)
