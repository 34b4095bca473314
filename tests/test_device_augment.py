"""The device augmentation (gzjax.data.device_augment) against the grain path.

Tolerances: PIL interpolates in double and truncates to uint8, the device in
float32 then floors, so a value within ~1e-4 of an integer can come out one
grey level lower or higher: at most 1 level (2/255 after the default
normalisation) on a small fraction of pixels.  Where the grain path decodes
a zoomed-out view at a coarser JPEG scale than the cache, the two sample
differently filtered versions of the same sky, a few levels apart at most.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from gzjax.data import cache
from gzjax.data import cached_input
from gzjax.data import device_augment
from gzjax.data import pipeline
from tests.test_pipeline import _config
from tests.test_pipeline import _jpeg
from tests.test_pipeline import _record
from tests.test_pipeline import _smooth_asymmetric_image

_LEVEL = 2 / 255  # One grey level after normalising with std 0.5.


def _records(count: int) -> list[dict[str, object]]:
  """Distinct images: the asymmetric gradient shifted per record."""
  image = _smooth_asymmetric_image(128)
  return [_record(i, _jpeg(np.roll(image, 9 * i, axis=1)))
          for i in range(count)]


def _cache(records, tmp_path, config) -> cache.Cache:
  return cache.open_or_build(records, tmp_path, config, dataset='test',
                             split='train')


def _fixed(warp: pipeline.Warp, jitter: pipeline.ColorJitter,
           count: int) -> device_augment.Augmentation:
  """One grain-path augmentation, repeated for a batch."""
  values = (warp.rotation_degrees, warp.flip_horizontal, warp.flip_vertical,
            warp.zoom, warp.translation, jitter.brightness, jitter.contrast,
            jitter.gains)
  return device_augment.Augmentation(
      *(jnp.repeat(jnp.asarray(value)[None], count, 0) for value in values))


def test_without_augmentation_the_cached_batches_are_the_grain_batches(
    tmp_path):
  records = _records(8)
  config = _config(cache='host', shuffle=False, augment={'enabled': False})
  cached = _cache(records, tmp_path, config)
  grain_batches = pipeline.create_train_iterator(
      records, config, process_index=0, process_count=1)
  cached_batches = cached_input.TrainIterator(
      cached, config, process_index=0, process_count=1)
  prepare = jax.jit(lambda batch: cached_input.DeviceInput(
      config, cached.geometry).prepare(batch, None))

  for _ in range(3):  # Across the epoch boundary.
    expected, batch = next(grain_batches), next(cached_batches)
    images = np.asarray(prepare({k: batch[k]
                                 for k in ('image', 'stream_position')})
                        ['image'])

    np.testing.assert_array_equal(batch['galaxy_id'], expected['galaxy_id'])
    for key in ('votes', 'votes_mask', 'label_3class', 'label_7class',
                'example_mask'):
      np.testing.assert_array_equal(batch[key], expected[key])
    difference = np.abs(images - expected['image'])
    assert difference.max() <= _LEVEL + 1e-6
    assert (difference > 1e-6).mean() < 0.01
  cached_batches.close()


@pytest.mark.parametrize('warp, max_levels, mean_levels', [
    # Zoom 1.3 is the cache's scale: the same interpolation as PIL's.
    (pipeline.Warp(90, True, False, 1.3, (2.0, -1.0)), 1, 0.02),
    (pipeline.Warp(0, False, True, 1.0, (-3.5, 0.5)), 1, 0.02),
    # Zoomed out, the grain path decodes at 1/4 scale and the cache is 1/2;
    # the view also reaches the black beyond the source image.
    (pipeline.Warp(33, False, True, 1 / 1.3, (4.0, -4.0)), 4, 0.5),
])
def test_a_fixed_warp_matches_the_grain_path(tmp_path, warp, max_levels,
                                             mean_levels):
  records = [_record(0, _jpeg(_smooth_asymmetric_image(128)))]
  config = _config(crop_size=100, image_size=32)
  cached = _cache(records, tmp_path, config)

  warped = np.asarray(device_augment.warp(
      jnp.asarray(cached.images),
      _fixed(warp, pipeline.ColorJitter(), 1), cached.geometry,
      config.crop_size, config.image_size))[0]

  expected = pipeline.decode_and_crop(records[0]['image'], 100, 32, warp)
  assert (expected == 0).all(-1).any() == (warp.zoom < 1)  # Reached past.
  difference = np.abs(warped - expected)
  assert difference.max() <= max_levels
  assert difference.mean() <= mean_levels


def test_color_jitter_and_normalization_are_the_grain_path_s():
  image = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3), np.uint8)
  jitter = pipeline.ColorJitter(brightness=0.04, contrast=1.3,
                                gains=(1.1, 0.9, 1.0))
  config = _config(normalization={'mean': (0.4, 0.5, 0.6),
                                  'std': (0.2, 0.3, 0.4)})

  device = device_augment.normalize(device_augment.color_jitter(
      jnp.asarray(image, jnp.float32),
      _fixed(pipeline.Warp(), jitter, 2)), config)

  for got, one in zip(np.asarray(device), image):
    expected = pipeline._normalize(jitter.apply(one), config)  # pylint: disable=protected-access
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def _grain_parameters(count: int, augment) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  drawn = [pipeline.sample_augmentation(rng, augment) for _ in range(count)]
  return {
      'rotation_degrees': [w.rotation_degrees for w, _ in drawn],
      'flip_horizontal': [w.flip_horizontal for w, _ in drawn],
      'flip_vertical': [w.flip_vertical for w, _ in drawn],
      'zoom': [w.zoom for w, _ in drawn],
      'translation': [w.translation for w, _ in drawn],
      'brightness': [j.brightness for _, j in drawn],
      'contrast': [j.contrast for _, j in drawn],
      'gains': [j.gains for _, j in drawn],
  }


def _positions(count: int) -> jax.Array:
  return jnp.stack([jnp.arange(count) // 100, jnp.arange(count) % 100], -1)


def test_sampled_parameters_have_the_grain_path_s_distributions():
  augment = pipeline.default_config().augment
  count = 2000
  grain = _grain_parameters(count, augment)

  device = jax.jit(lambda p: device_augment.sample(
      device_augment.example_keys(0, p), augment))(_positions(count))

  for name, values in grain.items():
    values = np.asarray(values, np.float64).reshape(count, -1)
    drawn = np.asarray(getattr(device, name), np.float64).reshape(count, -1)
    for column in range(values.shape[1]):
      if name.startswith('flip'):  # Bernoulli(0.5): within 4 standard errors.
        assert abs(drawn[:, column].mean() - 0.5) < 4 * 0.5 / np.sqrt(count)
      else:
        assert stats.ks_2samp(values[:, column],
                              drawn[:, column]).pvalue > 0.01, name


def _blob_record() -> dict[str, object]:
  """A bright, reddish, elongated blob off the centre on dark sky: its
  brightness, colour, centre of mass and orientation all move with the
  augmentation."""
  y, x = np.mgrid[0:128, 0:128].astype(np.float64)
  u, v = x - 78, y - 54
  blob = np.exp(-((u + v) ** 2 / 300 + (u - v) ** 2 / 40))
  image = 20 + 220 * blob[..., None] * np.array([1.0, 0.7, 0.5])
  return _record(0, _jpeg(np.round(image).astype(np.uint8)))


def _image_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
  """Per image: channel means, the centre of mass and the orientation
  (cos and sin of twice the principal axis angle) of the brightness."""
  weights = images.mean(-1) - images.mean(-1).min(axis=(1, 2), keepdims=True)
  weights /= weights.sum(axis=(1, 2), keepdims=True)
  y, x = np.mgrid[0:images.shape[1], 0:images.shape[2]]
  com_x = (weights * x).sum((1, 2))
  com_y = (weights * y).sum((1, 2))
  dx, dy = x - com_x[:, None, None], y - com_y[:, None, None]
  xx, yy = (weights * dx**2).sum((1, 2)), (weights * dy**2).sum((1, 2))
  xy = (weights * dx * dy).sum((1, 2))
  angle = np.arctan2(2 * xy, xx - yy)
  result = {f'mean_{c}': images[..., i].mean((1, 2))
            for i, c in enumerate('rgb')}
  result.update(com_x=com_x, com_y=com_y, cos_2theta=np.cos(angle),
                sin_2theta=np.sin(angle))
  return result


def _device_images(record, tmp_path, config, count) -> np.ndarray:
  cached = _cache([record], tmp_path, config)
  images = jnp.repeat(jnp.asarray(cached.images), count, 0)
  keys = device_augment.example_keys(config.seed, _positions(count))
  return np.asarray(jax.jit(lambda i, k: device_augment.augment(
      i, k, config, cached.geometry))(images, keys))


def test_augmented_images_have_the_grain_path_s_statistics(tmp_path):
  count = 600
  record = _blob_record()
  config = _config(crop_size=100, image_size=24, batch_size=count,
                   num_epochs=1)
  grain = next(pipeline.create_train_iterator(
      [record] * count, config, process_index=0, process_count=1))['image']
  grain_statistics = _image_statistics(grain)

  device_statistics = _image_statistics(
      _device_images(record, tmp_path / 'same', config, count))
  config.augment.rotation = False
  unrotated = _image_statistics(
      _device_images(record, tmp_path / 'unrotated', config, count))

  for name, values in grain_statistics.items():
    assert stats.ks_2samp(values, device_statistics[name]).pvalue > 0.01, name
  # The test can fail: without rotation the blob stays on one side.
  assert min(stats.ks_2samp(values, unrotated[name]).pvalue
             for name, values in grain_statistics.items()) < 1e-6


def test_an_example_s_augmentation_does_not_depend_on_its_batch(tmp_path):
  config = _config()
  cached = _cache(_records(4), tmp_path, config)
  images = jnp.asarray(cached.images)
  positions = jnp.array([[0, 3], [0, 1], [2, 0], [7, 2]])
  augment = jax.jit(lambda i, p: device_augment.augment(
      i, device_augment.example_keys(config.seed, p), config,
      cached.geometry))

  together = np.asarray(augment(images, positions))
  for index in range(4):
    alone = augment(images[index:index + 1], positions[index:index + 1])
    np.testing.assert_allclose(alone[0], together[index], atol=1e-6)
  assert not np.allclose(together[0], together[1])
