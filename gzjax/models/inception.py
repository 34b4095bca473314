"""InceptionV3 without its top, as ``keras.applications.InceptionV3`` builds it.

The seed paper's transfer model is Keras's InceptionV3 (``include_top=False``,
global average pooling) under a small dense head, so this backbone copies
Keras layer for layer: the stem, ``mixed0`` … ``mixed10`` with the same
branches, kernel shapes, strides and 'valid'/'same' paddings, 3×3 stride-1
'same' average pools in the branches (padding excluded from the average, as
in Keras) and 3×3 stride-2 max pools.  Every convolution is Keras's
``conv2d_bn``: a bias-free convolution, a batch norm *without* a scale
(``scale=False``: the following ReLU makes gamma redundant, which is why Keras
counts 21,802,784 parameters with the moving statistics), and a ReLU.  Batch
norms use Keras's epsilon 1e-3 and momentum 0.99, so imported weights give
Keras's numbers and fine-tuning updates statistics at Keras's rate.

Preprocessing: Keras's ImageNet weights expect RGB scaled to [-1, 1]
(``keras.applications.inception_v3.preprocess_input``: ``x / 127.5 - 1``).
That is exactly the input pipeline's default normalisation (mean = std = 0.5
on [0, 1] pixels), so weights converted with :func:`from_keras` work with the
default input config.

Parameter paths (``stem/0/conv/kernel``, ``mixed/9/branch3x3_1x3/0/bn/bias``)
name the block, the Keras branch and the position in it.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from gzjax.models import layers

# Keras's BatchNormalization defaults, which InceptionV3 keeps.
_BN_EPSILON = 1e-3
_BN_MOMENTUM = 0.99


class ConvBN(nnx.Module):
  """Keras's ``conv2d_bn``: bias-free conv, scale-free batch norm, ReLU."""

  def __init__(
      self,
      in_features: int,
      out_features: int,
      kernel_size: tuple[int, int],
      strides: int = 1,
      padding: str = 'SAME',
      *,
      dtype: Any,
      rngs: nnx.Rngs,
  ):
    self.conv = nnx.Conv(
        in_features,
        out_features,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        dtype=dtype,
        rngs=rngs,
    )
    self.bn = layers.BatchNorm(
        out_features,
        use_scale=False,
        epsilon=_BN_EPSILON,
        momentum=_BN_MOMENTUM,
        dtype=dtype,
        rngs=rngs,
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(self.bn(self.conv(x)))


def _chain(
    in_features: int, specs: Sequence[tuple[Any, ...]], *, dtype, rngs
) -> nnx.List:
  """Consecutive ``ConvBN`` layers, each fed by the previous one.

  Each spec is ``(filters, (rows, columns)[, strides[, padding]])``, the
  arguments of Keras's ``conv2d_bn`` call, so the layer lists read like it.
  """
  layers = []
  for filters, kernel_size, *options in specs:
    layers.append(
        ConvBN(in_features, filters, kernel_size, *options, dtype=dtype,
               rngs=rngs)
    )
    in_features = filters
  return nnx.List(layers)


def _run(chain: nnx.List, x: jax.Array) -> jax.Array:
  for layer in chain:
    x = layer(x)
  return x


def _branch_pool(x: jax.Array) -> jax.Array:
  """Keras's 3x3 stride-1 'same' average pool, padding left out of the mean."""
  return nnx.avg_pool(
      x, (3, 3), strides=(1, 1), padding='SAME', count_include_pad=False
  )


def _reduction_pool(x: jax.Array) -> jax.Array:
  return nnx.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')


class _MixedBlock(nnx.Module):
  """A ``mixed*`` block: branches of ``ConvBN`` chains, concatenated.

  ``branches`` names the chains in the order Keras's code builds them (its
  ``conv2d_bn`` call order), which :func:`from_keras` relies on to pair
  layers.
  """

  branches: tuple[str, ...] = ()

  def conv_bns(self) -> Iterator[tuple[tuple[Any, ...], ConvBN]]:
    """(path relative to the block, layer) in Keras's build order."""
    for branch in self.branches:
      for index, layer in enumerate(getattr(self, branch)):
        yield (branch, index), layer


class InceptionA(_MixedBlock):
  """``mixed0``–``mixed2``: 1x1, 5x5, double 3x3 and pooled branches."""

  branches = ('branch1x1', 'branch5x5', 'branch3x3dbl', 'branch_pool')

  def __init__(self, in_features: int, pool_features: int, *, dtype, rngs):
    chain = lambda specs: _chain(in_features, specs, dtype=dtype, rngs=rngs)
    self.branch1x1 = chain([(64, (1, 1))])
    self.branch5x5 = chain([(48, (1, 1)), (64, (5, 5))])
    self.branch3x3dbl = chain([(64, (1, 1)), (96, (3, 3)), (96, (3, 3))])
    self.branch_pool = chain([(pool_features, (1, 1))])

  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.concatenate([
        _run(self.branch1x1, x),
        _run(self.branch5x5, x),
        _run(self.branch3x3dbl, x),
        _run(self.branch_pool, _branch_pool(x)),
    ], axis=-1)


class ReductionA(_MixedBlock):
  """``mixed3``: halves the grid (35 to 17 at 299 px) with stride-2 branches."""

  branches = ('branch3x3', 'branch3x3dbl')

  def __init__(self, in_features: int, *, dtype, rngs):
    chain = lambda specs: _chain(in_features, specs, dtype=dtype, rngs=rngs)
    self.branch3x3 = chain([(384, (3, 3), 2, 'VALID')])
    self.branch3x3dbl = chain(
        [(64, (1, 1)), (96, (3, 3)), (96, (3, 3), 2, 'VALID')]
    )

  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.concatenate([
        _run(self.branch3x3, x),
        _run(self.branch3x3dbl, x),
        _reduction_pool(x),
    ], axis=-1)


class InceptionC(_MixedBlock):
  """``mixed4``–``mixed7``: 7x7 convolutions factorised into 1x7 and 7x1."""

  branches = ('branch1x1', 'branch7x7', 'branch7x7dbl', 'branch_pool')

  def __init__(self, in_features: int, channels_7x7: int, *, dtype, rngs):
    chain = lambda specs: _chain(in_features, specs, dtype=dtype, rngs=rngs)
    c = channels_7x7
    self.branch1x1 = chain([(192, (1, 1))])
    self.branch7x7 = chain([(c, (1, 1)), (c, (1, 7)), (192, (7, 1))])
    self.branch7x7dbl = chain([
        (c, (1, 1)), (c, (7, 1)), (c, (1, 7)), (c, (7, 1)), (192, (1, 7))
    ])
    self.branch_pool = chain([(192, (1, 1))])

  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.concatenate([
        _run(self.branch1x1, x),
        _run(self.branch7x7, x),
        _run(self.branch7x7dbl, x),
        _run(self.branch_pool, _branch_pool(x)),
    ], axis=-1)


class ReductionB(_MixedBlock):
  """``mixed8``: halves the grid again (17 to 8 at 299 px)."""

  branches = ('branch3x3', 'branch7x7x3')

  def __init__(self, in_features: int, *, dtype, rngs):
    chain = lambda specs: _chain(in_features, specs, dtype=dtype, rngs=rngs)
    self.branch3x3 = chain([(192, (1, 1)), (320, (3, 3), 2, 'VALID')])
    self.branch7x7x3 = chain([
        (192, (1, 1)), (192, (1, 7)), (192, (7, 1)), (192, (3, 3), 2, 'VALID')
    ])

  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.concatenate([
        _run(self.branch3x3, x),
        _run(self.branch7x7x3, x),
        _reduction_pool(x),
    ], axis=-1)


class InceptionE(_MixedBlock):
  """``mixed9``, ``mixed10``: 3x3 branches that split into 1x3 and 3x1."""

  branches = (
      'branch1x1',
      'branch3x3', 'branch3x3_1x3', 'branch3x3_3x1',
      'branch3x3dbl', 'branch3x3dbl_1x3', 'branch3x3dbl_3x1',
      'branch_pool',
  )

  def __init__(self, in_features: int, *, dtype, rngs):
    chain = lambda width, specs: _chain(width, specs, dtype=dtype, rngs=rngs)
    self.branch1x1 = chain(in_features, [(320, (1, 1))])
    self.branch3x3 = chain(in_features, [(384, (1, 1))])
    self.branch3x3_1x3 = chain(384, [(384, (1, 3))])
    self.branch3x3_3x1 = chain(384, [(384, (3, 1))])
    self.branch3x3dbl = chain(in_features, [(448, (1, 1)), (384, (3, 3))])
    self.branch3x3dbl_1x3 = chain(384, [(384, (1, 3))])
    self.branch3x3dbl_3x1 = chain(384, [(384, (3, 1))])
    self.branch_pool = chain(in_features, [(192, (1, 1))])

  def __call__(self, x: jax.Array) -> jax.Array:
    branch3x3 = _run(self.branch3x3, x)
    branch3x3dbl = _run(self.branch3x3dbl, x)
    return jnp.concatenate([
        _run(self.branch1x1, x),
        _run(self.branch3x3_1x3, branch3x3),
        _run(self.branch3x3_3x1, branch3x3),
        _run(self.branch3x3dbl_1x3, branch3x3dbl),
        _run(self.branch3x3dbl_3x1, branch3x3dbl),
        _run(self.branch_pool, _branch_pool(x)),
    ], axis=-1)


class InceptionV3(nnx.Module):
  """Backbone: images ``[B, H, W, 3]`` to 2048 globally averaged features."""

  num_features = 2048
  input_size = 299
  # Keras's minimum: smaller inputs leave no grid for mixed8's valid 3x3.
  min_input_size = 75
  fixed_input_size = False
  # The stem, then mixed0 … mixed10.
  num_blocks = 12

  def __init__(self, *, dtype=jnp.float32, rngs: nnx.Rngs):
    self.stem = _chain(
        3,
        [(32, (3, 3), 2, 'VALID'), (32, (3, 3), 1, 'VALID'), (64, (3, 3)),
         (80, (1, 1), 1, 'VALID'), (192, (3, 3), 1, 'VALID')],
        dtype=dtype,
        rngs=rngs,
    )
    options = dict(dtype=dtype, rngs=rngs)
    self.mixed = nnx.List([
        InceptionA(192, 32, **options),  # mixed0: 256 channels out.
        InceptionA(256, 64, **options),  # mixed1: 288.
        InceptionA(288, 64, **options),  # mixed2: 288.
        ReductionA(288, **options),  # mixed3: 768.
        InceptionC(768, 128, **options),  # mixed4: 768.
        InceptionC(768, 160, **options),  # mixed5.
        InceptionC(768, 160, **options),  # mixed6.
        InceptionC(768, 192, **options),  # mixed7.
        ReductionB(768, **options),  # mixed8: 1280.
        InceptionE(1280, **options),  # mixed9: 2048.
        InceptionE(2048, **options),  # mixed10: 2048.
    ])

  def __call__(self, images: jax.Array) -> jax.Array:
    x = images
    for index, layer in enumerate(self.stem):
      x = layer(x)
      if index in (2, 4):  # Max pools after the 64- and 192-filter convs.
        x = _reduction_pool(x)
    for block in self.mixed:
      x = block(x)
    return jnp.mean(x, axis=(1, 2))

  def block_of(self, path: tuple[Any, ...]) -> int:
    """Block index of the parameter at ``path``: 0 the stem, k+1 ``mixed<k>``."""
    if path[0] == 'stem':
      return 0
    return int(path[1]) + 1

  def conv_bns(self) -> Iterator[tuple[tuple[Any, ...], ConvBN]]:
    """(path, layer) of all 94 ``conv2d_bn`` layers in Keras's build order."""
    for index, layer in enumerate(self.stem):
      yield ('stem', index), layer
    for index, block in enumerate(self.mixed):
      for path, layer in block.conv_bns():
        yield ('mixed', index, *path), layer


def _pair(strides: int | Sequence[int]) -> tuple[int, int]:
  return (strides, strides) if isinstance(strides, int) else tuple(strides)


def _keras_conv_bns_in_build_order(keras_model) -> list[tuple[Any, Any]]:
  """The (Conv2D, BatchNormalization) pairs in the order the code built them.

  ``keras_model.layers`` is sorted by graph depth, which interleaves branches,
  and the auto-numbered names depend on what the session built before; the
  graph itself does not.  A depth-first walk back from the output that visits
  each layer's inputs in order, emitting a layer after its inputs, meets the
  convolutions in ``conv2d_bn`` call order: each block's first branch reaches
  all earlier blocks first, and concatenations list branches as built.
  """
  import keras  # pylint: disable=g-import-not-at-top

  producer = {id(layer.output): layer for layer in keras_model.layers}
  batch_norm_after = {
      id(layer.input): layer
      for layer in keras_model.layers
      if isinstance(layer, keras.layers.BatchNormalization)
  }
  visited = set()
  convs = []

  def visit(layer):
    if id(layer) in visited:
      return
    visited.add(id(layer))
    if not isinstance(layer, keras.layers.InputLayer):
      for tensor in keras.tree.flatten(layer.input):
        visit(producer[id(tensor)])
    if isinstance(layer, keras.layers.Conv2D):
      convs.append(layer)

  for tensor in keras_model.outputs:
    visit(producer[id(tensor)])

  pairs = []
  for conv in convs:
    if id(conv.output) not in batch_norm_after:
      raise ValueError(
          f'Keras layer {conv.name} is not followed by a batch norm; this is'
          ' not a keras.applications.InceptionV3.'
      )
    pairs.append((conv, batch_norm_after[id(conv.output)]))
  mapped = {id(layer) for pair in pairs for layer in pair}
  unmapped = [
      layer.name
      for layer in keras_model.layers
      if layer.weights and id(layer) not in mapped
  ]
  if unmapped:
    raise ValueError(
        f'Keras layers with weights InceptionV3 has no place for: {unmapped};'
        ' build the Keras model with include_top=False.'
    )
  return pairs


def from_keras(keras_model) -> dict[str, np.ndarray]:
  """Maps a Keras InceptionV3 (``include_top=False``) to our parameter paths.

  Layers are paired by their place in the Keras graph, not by name (Keras
  numbers unnamed layers per session), and each pair is checked against ours:
  kernel shape, strides, padding and batch-norm configuration.

  Args:
    keras_model: ``keras.applications.InceptionV3(include_top=False, ...)``,
      any input shape and pooling, with its weights loaded.

  Returns:
    ``{'backbone/…/conv/kernel' | '…/bn/bias' | '…/bn/mean' | '…/bn/var':
    array}`` for :func:`gzjax.models.weights.assign`.

  Raises:
    ValueError: the Keras model is not InceptionV3 as this module builds it.
  """
  ours = list(
      nnx.eval_shape(lambda: InceptionV3(rngs=nnx.Rngs(0))).conv_bns()
  )
  theirs = _keras_conv_bns_in_build_order(keras_model)
  if len(theirs) != len(ours):
    raise ValueError(
        f'The Keras model has {len(theirs)} conv + batch-norm layers;'
        f' InceptionV3 has {len(ours)}.'
    )
  arrays = {}
  for (path, layer), (conv, batch_norm) in zip(ours, theirs):
    name = '/'.join(['backbone', *map(str, path)])
    ours_config = (
        tuple(layer.conv.kernel.shape),
        _pair(layer.conv.strides),
        layer.conv.padding.lower(),
        False, False, _BN_EPSILON,
    )
    theirs_config = (
        tuple(conv.kernel.shape),
        tuple(conv.strides),
        conv.padding.lower(),
        conv.use_bias, batch_norm.scale, batch_norm.epsilon,
    )
    if ours_config != theirs_config:
      raise ValueError(
          f'Keras layers {conv.name}/{batch_norm.name} do not match {name}:'
          ' (kernel shape, strides, padding, conv bias, bn scale, bn epsilon)'
          f' Keras {theirs_config}, ours {ours_config}.'
      )
    (kernel,) = conv.get_weights()
    beta, moving_mean, moving_variance = batch_norm.get_weights()
    arrays[f'{name}/conv/kernel'] = kernel
    arrays[f'{name}/bn/bias'] = beta
    arrays[f'{name}/bn/mean'] = moving_mean
    arrays[f'{name}/bn/var'] = moving_variance
  return arrays
