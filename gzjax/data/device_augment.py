"""The grain pipeline's training augmentation, in JAX, on decoded uint8 images.

The cached input modes (`gzjax.data.cache`) decode every JPEG once and run
this inside the jitted train step, so the accelerator rather than the host
pays for the warp.  It mirrors `pipeline.decode_and_crop` followed by
`pipeline.ColorJitter` and the normalisation, with the same conventions:

* the parameters are drawn per example from the distributions of
  `pipeline.sample_augmentation` (rotation uniform in [0, 360), independent
  flips with p = 0.5, log-uniform zoom, uniform translation, brightness,
  contrast and per-channel gains);
* one affine map, `pipeline.output_to_source_affine` itself, takes output
  pixels to stored pixels, and one bilinear interpolation samples them the
  way PIL does: pixel centres at ``i + 0.5``, neighbours clamped to the image
  edge, black outside the source image, the result truncated to an integer
  grey level as PIL's uint8 output is;
* jitter, clipping and normalisation as in `pipeline.ColorJitter.apply` and
  `pipeline._normalize`.

The stored image is the decoded JPEG at one draft scale (`Geometry`), the
finest the grain path uses for any zoom in range, so no detail is lost; where
the grain path would decode a zoomed-out view at a coarser DCT scale, this
samples the finer image instead (a slightly sharper view of the same sky).

Randomness is per example: each example's key is folded from the seed and
its position in the global training stream (epoch, index within the epoch),
so an image's augmentation depends neither on the batch it travels in, the
device count, nor on where a run resumed.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from gzjax.data import pipeline


@dataclasses.dataclass(frozen=True)
class Geometry:
  """Where a stored uint8 image lies in its source JPEG.

  Attributes:
    source_size: (width, height) of the source JPEG, in source pixels.
    reduction: the JPEG draft factor; one stored pixel spans this many
      source pixels.
    decoded_size: (width, height) of the image decoded at that scale.
    origin: the decoded-image pixel (x, y) at the stored image's [0, 0].
      Where the stored square reaches past the decoded image (non-square
      sources), the edge pixels repeat.
    side: side of the stored square, in stored pixels.
  """

  source_size: tuple[int, int]
  reduction: int
  decoded_size: tuple[int, int]
  origin: tuple[int, int]
  side: int

  @property
  def source_centre(self) -> tuple[float, float]:
    """The source image's centre in stored-image coordinates."""
    return tuple(
        size / 2 / self.reduction - origin
        for size, origin in zip(self.source_size, self.origin)
    )

  @property
  def image_extent(self) -> tuple[tuple[int, int], tuple[int, int]]:
    """The decoded image's [start, stop) per axis in stored coordinates."""
    return tuple(
        (-origin, size - origin)
        for size, origin in zip(self.decoded_size, self.origin)
    )


class Augmentation(NamedTuple):
  """One batch's augmentation parameters (pipeline.Warp and ColorJitter)."""

  rotation_degrees: jax.Array  # [B]
  flip_horizontal: jax.Array  # [B] bool
  flip_vertical: jax.Array  # [B] bool
  zoom: jax.Array  # [B]
  translation: jax.Array  # [B, 2]: (x, y) in output pixels
  brightness: jax.Array  # [B]
  contrast: jax.Array  # [B]
  gains: jax.Array  # [B, 3]


def reach(augment: ml_collections.ConfigDict) -> dict[str, Any]:
  """The geometric ranges an augmentation config can produce.

  What a cache must hold depends on these alone: the smallest zoom, the
  translation and whether rotation turns the view's corners outwards set
  how far from the centre a warp samples; the largest zoom sets the detail.
  """
  if not augment.enabled:
    return dict(zoom=(1.0, 1.0), translation=0.0, rotation=False)
  return dict(
      zoom=tuple(float(z) for z in augment.zoom),
      translation=float(augment.translation),
      rotation=bool(augment.rotation),
  )


def sample(keys: jax.Array, augment: ml_collections.ConfigDict) -> Augmentation:
  """Draws each example's parameters as `pipeline.sample_augmentation` does.

  Args:
    keys: one typed PRNG key per example, [B].
    augment: `config.augment`.
  """

  def one(key):
    # One draw of uniforms per example (a single PRNG call compiles and runs
    # faster than one per parameter), each mapped onto its range.
    u = jax.random.uniform(key, (11,))

    def between(value, low, high):
      return low + (high - low) * value

    log_zoom = [math.log(z) for z in augment.zoom]
    t, b, c, g = (augment.translation, augment.brightness, augment.contrast,
                  augment.color)
    return Augmentation(
        rotation_degrees=u[0] * 360.0 if augment.rotation else jnp.float32(0),
        flip_horizontal=augment.flip & (u[1] < 0.5),
        flip_vertical=augment.flip & (u[2] < 0.5),
        zoom=jnp.exp(between(u[3], *log_zoom)),
        translation=between(u[4:6], -t, t),
        brightness=between(u[6], -b, b),
        contrast=between(u[7], 1 - c, 1 + c),
        gains=between(u[8:11], 1 - g, 1 + g),
    )

  if not augment.enabled:
    batch = keys.shape[0]
    zeros, ones = jnp.zeros(batch), jnp.ones(batch)
    no = jnp.zeros(batch, bool)
    return Augmentation(zeros, no, no, ones, jnp.zeros((batch, 2)), zeros,
                        ones, jnp.ones((batch, 3)))
  return jax.vmap(one)(keys)


def _bilinear(image: jax.Array, x: jax.Array, y: jax.Array,
              geometry: Geometry) -> jax.Array:
  """Samples a uint8 [H, W, 3] image at continuous points as PIL does.

  Returns float32 integer grey levels [..., 3]: PIL interpolates in double
  and truncates to uint8; here float32 may land one level off where the
  exact value is within ~1e-4 of an integer.
  """
  (x_start, x_stop), (y_start, y_stop) = geometry.image_extent
  inside = (x >= x_start) & (x < x_stop) & (y >= y_start) & (y < y_stop)
  x, y = x - 0.5, y - 0.5
  x0, y0 = jnp.floor(x), jnp.floor(y)
  dx, dy = (x - x0)[..., None], (y - y0)[..., None]
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
  columns = [jnp.clip(x0 + i, 0, image.shape[1] - 1) for i in (0, 1)]
  rows = [jnp.clip(y0 + i, 0, image.shape[0] - 1) for i in (0, 1)]

  def along_x(row):
    left, right = (image[row, c].astype(jnp.float32) for c in columns)
    return left + (right - left) * dx

  top, bottom = along_x(rows[0]), along_x(rows[1])
  value = jnp.floor(top + (bottom - top) * dy)
  return jnp.where(inside[..., None], value, 0.0)


def warp(images: jax.Array, augmentation: Augmentation, geometry: Geometry,
         crop_size: int, output_size: int) -> jax.Array:
  """The crop, resize and warp of `pipeline.decode_and_crop`, batched.

  Args:
    images: uint8 [B, side, side, 3] stored images (see `Geometry`).
    augmentation: per-example parameters.
    geometry: where the stored images lie in their sources.
    crop_size: side of the centred crop, in source pixels.
    output_size: side of the output.

  Returns:
    float32 [B, output_size, output_size, 3] holding integer grey levels.
  """
  a, b, c, d, e, f = (
      coefficient[:, None, None]
      for coefficient in pipeline.output_to_source_affine(
          augmentation.rotation_degrees,
          augmentation.flip_horizontal,
          augmentation.flip_vertical,
          augmentation.zoom,
          augmentation.translation[:, 0],
          augmentation.translation[:, 1],
          pixels_per_output=crop_size / output_size / geometry.reduction,
          output_size=output_size,
          source_centre=geometry.source_centre,
          xp=jnp,
      )
  )
  centres = jnp.arange(output_size, dtype=jnp.float32) + 0.5
  x, y = centres[None, None, :], centres[None, :, None]
  return jax.vmap(_bilinear, in_axes=(0, 0, 0, None))(
      images, a * x + b * y + c, d * x + e * y + f, geometry)


def color_jitter(images: jax.Array, augmentation: Augmentation) -> jax.Array:
  """`pipeline.ColorJitter.apply` on grey levels [B, H, W, 3], to [0, 1]."""
  jittered = images * (augmentation.gains[:, None, None, :] / 255)
  grey = jittered.mean(axis=(1, 2, 3), keepdims=True)
  contrast = augmentation.contrast[:, None, None, None]
  brightness = augmentation.brightness[:, None, None, None]
  jittered = jittered * contrast + (grey * (1 - contrast) + brightness)
  return jnp.clip(jittered, 0.0, 1.0)


def normalize(images: jax.Array,
              config: ml_collections.ConfigDict) -> jax.Array:
  """`pipeline._normalize`: the config's per-channel mean and std."""
  mean = jnp.asarray(config.normalization.mean, jnp.float32)
  std = jnp.asarray(config.normalization.std, jnp.float32)
  return (images - mean) / std


def example_keys(seed: int, stream_position: jax.Array) -> jax.Array:
  """Per-example keys from the seed and (epoch, index within the epoch)."""
  base = jax.random.key(seed)
  return jax.vmap(lambda position: jax.random.fold_in(
      jax.random.fold_in(base, position[0]), position[1]))(stream_position)


def augment(images: jax.Array, keys: jax.Array,
            config: ml_collections.ConfigDict,
            geometry: Geometry) -> jax.Array:
  """Augmented, normalised float32 [B, S, S, 3] training images.

  Args:
    images: uint8 [B, side, side, 3] stored images.
    keys: one PRNG key per example (`example_keys`).
    config: the input config (`pipeline.default_config()`).
    geometry: where the stored images lie in their sources.
  """
  augmentation = sample(keys, config.augment)
  warped = warp(images, augmentation, geometry, config.crop_size,
                config.image_size)
  return normalize(color_jitter(warped, augmentation), config)


def augment_batch(batch: Mapping[str, jax.Array],
                  config: ml_collections.ConfigDict, geometry: Geometry,
                  resident: jax.Array | None = None) -> dict[str, jax.Array]:
  """A cached-mode batch with `image` replaced by the augmented images.

  Args:
    batch: from `gzjax.data.cached_input.TrainIterator`: `image` holds uint8 stored
      images, or record indices into `resident`; `stream_position` the
      examples' (epoch, index) pairs.
    config: the input config.
    geometry: where the stored images lie in their sources.
    resident: the whole uint8 cache on the devices, or None.
  """
  images = batch['image'] if resident is None else resident[batch['image']]
  keys = example_keys(config.seed, batch['stream_position'])
  return {**batch, 'image': augment(images, keys, config, geometry)}
