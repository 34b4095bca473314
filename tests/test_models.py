"""Every backbone's declared input sizes are the sizes it runs at.

``min_input_size`` is what the engine checks an image size against (one
line, before a step is traced); a value below the true minimum let the seed
CNN at 28-31 px through to a traceback from inside jnp.max (a zero-size
feature map).  One name per backbone class (the EfficientNet variants share
their strides).
"""

from flax import nnx
import jax
import jax.numpy as jnp
import pytest

from gzjax import errors
from gzjax import models


def _output_shape(name: str, size: int):
  model = nnx.eval_shape(lambda: models.create(name, rngs=nnx.Rngs(0)))
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  return nnx.eval_shape(lambda m, x: m(x), model, images).shape


@pytest.mark.parametrize('name', ['cnn', 'inception_v3', 'efficientnet_b0',
                                  'efficientnet_lite0'])
def test_the_minimum_input_size_runs_and_one_pixel_less_is_refused(name):
  smallest = models.backbone_class(name).min_input_size
  assert _output_shape(name, smallest) == (1, 37)
  with pytest.raises(errors.ConfigError) as info:
    _output_shape(name, smallest - 1)
  assert str(info.value) == (f'{name} needs inputs of at least {smallest} px;'
                             f' got {smallest - 1}x{smallest - 1}.')


def test_a_fixed_size_backbone_runs_at_its_size_only():
  size = models.backbone_class('viewpoint').input_size
  assert _output_shape('viewpoint', size) == (1, 37)
  with pytest.raises(errors.ConfigError, match=f'Set the input image_size to'
                     f' {size}'):
    _output_shape('viewpoint', size + 1)
