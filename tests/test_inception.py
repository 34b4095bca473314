"""InceptionV3: Keras's parameter counts, Keras's numbers, strict imports.

Keras runs on its JAX backend (no TensorFlow).  Building 22M random weights
is the slow part on CPU, so each model is built once per module, our side
from an abstract model filled entirely by the imported weights.
"""

import os

os.environ['KERAS_BACKEND'] = 'jax'  # Before anything imports keras.

# pylint: disable=g-import-not-at-top,redefined-outer-name
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gzjax import models
from gzjax.models import inception
from gzjax.models import weights

KERAS_INCEPTION_V3_PARAMS = 21_802_784  # keras.applications, include_top=False.
LINEAR_HEAD_PARAMS = 2048 + 1
SEED_HEAD_PARAMS = 2048 * 128 + 128 + 128 + 1  # Dense 128 ReLU, Dense 1.
SIDE = 75  # Keras's minimum input: the cheapest graph to compile.


def _size(leaf) -> int:
  return int(np.prod(leaf.shape))


@pytest.fixture(scope='module')
def abstract_model():
  return models.abstract('inception_v3', head='linear', num_outputs=1)


@pytest.fixture(scope='module')
def keras_model():
  """Keras's InceptionV3 with random weights that keep activations O(1).

  He-scaled kernels and random betas and moving statistics, so every tensor
  matters to the output (Keras's own init leaves beta, mean at 0 and
  variance at 1, which a mis-mapped statistic would not reveal).
  """
  import keras

  assert keras.backend.backend() == 'jax', 'keras was imported before this'
  model = keras.applications.InceptionV3(
      include_top=False,
      weights=None,
      input_shape=(SIDE, SIDE, 3),
      pooling='avg',
  )
  rng = np.random.default_rng(0)
  for layer in model.layers:
    if isinstance(layer, keras.layers.Conv2D):
      shape = layer.kernel.shape
      fan_in = np.prod(shape[:3])
      layer.kernel.assign(
          rng.normal(0, np.sqrt(2 / fan_in), shape).astype(np.float32)
      )
    elif isinstance(layer, keras.layers.BatchNormalization):
      shape = layer.beta.shape
      layer.beta.assign(rng.normal(0, 0.1, shape).astype(np.float32))
      layer.moving_mean.assign(rng.normal(0, 0.1, shape).astype(np.float32))
      layer.moving_variance.assign(
          rng.uniform(0.5, 1.5, shape).astype(np.float32)
      )
  return model


@pytest.fixture(scope='module')
def keras_arrays(keras_model):
  return inception.from_keras(keras_model)


@pytest.fixture(scope='module')
def imported_model(keras_arrays):
  """Our model, its backbone holding the Keras weights, in inference mode."""
  model = models.abstract('inception_v3', head='linear', num_outputs=1)
  weights.assign(model, keras_arrays, source='Keras InceptionV3')
  model.eval()
  return model


def test_parameter_count_matches_keras(abstract_model):
  counts = models.count_params(abstract_model)
  assert counts['total'] - LINEAR_HEAD_PARAMS == KERAS_INCEPTION_V3_PARAMS
  backbone = models.count_params(abstract_model.backbone)
  assert backbone['total'] == KERAS_INCEPTION_V3_PARAMS
  assert backbone['params'] == 21_768_352  # Keras's trainable count.


def test_seed_transfer_model_trains_only_its_head():
  model = models.abstract(
      'inception_v3', head='linear', num_outputs=1, hidden=(128,)
  )
  assert models.count_params(model)['total'] == 22_065_185
  labels = jax.tree.leaves(models.parameter_labels(model))
  sizes = [_size(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]
  head = sum(size for label, size in zip(labels, sizes) if label == 'head')
  assert head == SEED_HEAD_PARAMS == 262_401


def test_batch_norms_follow_keras(abstract_model):
  layers = list(abstract_model.backbone.conv_bns())
  assert len(layers) == 94
  for _, layer in layers:
    assert layer.conv.use_bias is False
    assert layer.bn.use_scale is False
    assert (layer.bn.epsilon, layer.bn.momentum) == (1e-3, 0.99)


def test_matches_keras_in_inference(keras_model, imported_model):
  images = np.random.default_rng(1).uniform(-1, 1, (2, SIDE, SIDE, 3))
  images = images.astype(np.float32)
  expected = np.asarray(keras_model(images, training=False))
  features = nnx.jit(lambda backbone, x: backbone(x))(
      imported_model.backbone, images
  )
  assert features.shape == (2, 2048)
  assert expected.std() > 0.1  # Live activations, not a vanished signal.
  np.testing.assert_allclose(features, expected, rtol=0, atol=1e-4)


def test_import_lists_missing_and_misshaped_tensors(keras_arrays):
  arrays = dict(keras_arrays)
  del arrays['backbone/mixed/4/branch7x7/1/bn/var']
  arrays['backbone/stem/0/conv/kernel'] = np.zeros((3, 3, 3, 33), np.float32)
  model = models.abstract('inception_v3', head='linear', num_outputs=1)
  with pytest.raises(weights.WeightMismatchError) as error:
    weights.assign(model, arrays, source='Keras InceptionV3')
  message = str(error.value)
  assert '1 missing' in message
  assert 'backbone/mixed/4/branch7x7/1/bn/var' in message
  assert '1 mis-shaped' in message
  assert (
      'backbone/stem/0/conv/kernel: model (3, 3, 3, 32), file (3, 3, 3, 33)'
      in message
  )


def test_from_keras_rejects_other_architectures():
  import keras

  inputs = keras.Input((8, 8, 3))
  x = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
  x = keras.layers.BatchNormalization(scale=False)(x)
  with pytest.raises(ValueError, match='has 1 conv'):
    inception.from_keras(keras.Model(inputs, x))


def test_block_of_numbers_stem_then_mixed_blocks(abstract_model):
  backbone = abstract_model.backbone
  assert backbone.block_of(('stem', 0, 'conv', 'kernel')) == 0
  labels = nnx.to_flat_state(models.parameter_labels(abstract_model))
  blocks = {}
  for path, label in labels:
    blocks.setdefault(label.get_value(), []).append(path)
  expected = {'head', *(f'backbone/{block}' for block in range(12))}
  assert set(blocks) == expected
  assert all(path[1:3] == ('mixed', 10) for path in blocks['backbone/11'])
  assert all(path[1] == 'stem' for path in blocks['backbone/0'])


def test_too_small_input_gets_a_clear_error(abstract_model):
  with pytest.raises(ValueError, match='at least 75 px; got 64x64'):
    abstract_model(jnp.zeros((1, 64, 64, 3)))
