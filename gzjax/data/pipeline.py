"""Grain input pipeline: Galaxy Zoo JPEG records to per-process numpy batches.

The source is any random-access sequence of record dicts (``len`` and
``__getitem__``), typically the TFDS ArrayRecord source
``builder.as_data_source(decoders={'image': tfds.decode.SkipDecoding()})``
whose ``image`` is the undecoded JPEG.

Per record, the image takes exactly one interpolation: the JPEG is decoded at
the smallest DCT scale (1/1, 1/2, 1/4, 1/8, ``Image.draft``) that still has at
least one decoded pixel per output pixel, and a single bilinear affine warp
maps that decoded image to the output.  The warp composes the centre crop, the
resize and the random rotation, flips, zoom and translation, so augmentation
costs no extra resampling blur and no time for intermediate images.  Colour
jitter and normalisation follow in float32.

Determinism comes from grain's index-based randomness: shuffling is a seeded
permutation of record indices (a new one per epoch), and each example's
augmentation generator is seeded by the pipeline seed and the example's
position in the global (all-process) example stream.  Batching is a
``MapDataset`` transformation, so worker processes each produce whole batches
and interleave them in order: the batches do not depend on ``num_workers``,
and the iterator state is just a position that ``get_state``/``set_state``
save and restore as a JSON-serialisable dict.

Sharding across JAX processes cuts each global batch into ``P`` contiguous
slices: at step ``k`` process ``i`` of ``P`` holds the global examples
``k * B + i * B / P … k * B + (i + 1) * B / P - 1``.  That is the order in
which ``jax.make_array_from_process_local_data`` lays the processes' batches
out on the mesh, so the global batch, row for row and device for device, is
the one a single process with all the devices builds: the same per-row
dropout masks and the same per-device sums, so 2 processes of 2 devices
train as 1 process of 4 does.  (Striding, ``i, i + P, …``, would hold the
same examples in another row order.)  Evaluation shards the same way, so
gathered outputs come back in record order.
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
import struct
from typing import Any, Callable, Mapping, Sequence, TypeVar

import grain
import jax
import ml_collections
import numpy as np
from PIL import Image

from gzjax import errors
from gzjax.data import fields

T = TypeVar('T')

# Reduction factors that libjpeg's DCT scaling offers through `Image.draft`.
_DRAFT_FACTORS = (1, 2, 4, 8)


def default_config() -> ml_collections.ConfigDict:
  """Returns the input-pipeline config; the engine nests it as `config.input`.

  Normalisation defaults to mean = std = 0.5 per channel, mapping [0, 1] to
  [-1, 1]: a data-independent choice that needs no statistics pass over the
  dataset.  Galaxy cut-outs are mostly dark sky, so their pixels sit near -1;
  models with normalisation layers do not mind, and a dataset's own per-channel
  statistics can be set here instead.
  """
  config = ml_collections.ConfigDict()
  # Side of the centred square cut from the source image, in source pixels:
  # the same sky region whatever JPEG draft scale the decoder uses.  207 of
  # the Kaggle 424 px cut-outs keeps the galaxy and drops most empty sky.
  config.crop_size = 207
  # Side of the square model input: 64 seed CNN, 69 Dieleman, 224 EfficientNet.
  config.image_size = 64
  # Global batch size over all JAX processes.
  config.batch_size = 128
  config.shuffle = True
  config.seed = 0
  # Training epochs; None repeats forever.  Evaluation is always one pass.
  # A typed placeholder, so --config.input.num_epochs=3 parses.
  config.num_epochs = ml_collections.config_dict.placeholder(int)

  config.augment = ml_collections.ConfigDict()
  config.augment.enabled = True
  # Rotation angle uniform in [0, 360) degrees: galaxies have no "up".
  config.augment.rotation = True
  # Independent random horizontal and vertical flips, each with p = 0.5.
  config.augment.flip = True
  # Magnification, log-uniform in (min, max); (1.0, 1.0) disables zoom.
  config.augment.zoom = (1 / 1.3, 1.3)
  # Maximum shift per axis in output pixels, uniform in [-t, t].
  config.augment.translation = 4.0
  # Additive brightness shift uniform in [-b, b], on the [0, 1] scale.
  config.augment.brightness = 0.05
  # Contrast factor uniform in [1 - c, 1 + c], around the image mean.
  config.augment.contrast = 0.1
  # Per-channel gain uniform in [1 - c, 1 + c]: a colour balance jitter.
  config.augment.color = 0.1

  config.normalization = ml_collections.ConfigDict()
  config.normalization.mean = (0.5, 0.5, 0.5)
  config.normalization.std = (0.5, 0.5, 0.5)

  # Worker processes for decoding (0 decodes in this process).
  config.num_workers = 0
  # Batches each worker keeps ready.
  config.worker_buffer_size = 2
  # Threads decoding batches within each process: Pillow releases the GIL
  # while decoding and warping, so threads use more than one core.
  config.read_threads = 2
  # Batches prefetched by those threads.
  config.prefetch_buffer_size = 4

  # Training input from a decoded uint8 cache (gzjax.data.cache) instead of
  # decoding JPEGs every epoch: '' reads the JPEGs as above; 'host' decodes
  # each training image once into a memory-mapped cache on disk and sends
  # uint8 batches that the jitted step augments on the accelerator; 'device'
  # also places the whole cache on every accelerator, so batches are indices.
  # The augmentation draws from the same distributions either way; evaluation
  # always reads the JPEGs.
  config.cache = ''
  # Directory of the caches; '' is gzjax_cache/ under the config's data_dir.
  config.cache_dir = ''
  return config


@dataclasses.dataclass(frozen=True)
class Warp:
  """Geometric augmentation, applied as one affine map with the crop.

  Attributes:
    rotation_degrees: counter-clockwise rotation of the content as displayed.
    flip_horizontal: mirror left-right (before rotating).
    flip_vertical: mirror top-bottom (before rotating).
    zoom: magnification; above 1 shows a smaller region larger.
    translation: (x, y) shift of the content in output pixels, +y downwards.
  """

  rotation_degrees: float = 0.0
  flip_horizontal: bool = False
  flip_vertical: bool = False
  zoom: float = 1.0
  translation: tuple[float, float] = (0.0, 0.0)


@dataclasses.dataclass(frozen=True)
class ColorJitter:
  """Photometric augmentation, applied on the [0, 1] intensity scale.

  Attributes:
    brightness: value added to every pixel (on the [0, 1] scale).
    contrast: factor scaling the deviations from the image's mean grey level.
    gains: per-channel (R, G, B) multiplicative gains.
  """

  brightness: float = 0.0
  contrast: float = 1.0
  gains: tuple[float, float, float] = (1.0, 1.0, 1.0)

  def apply(self, image: np.ndarray) -> np.ndarray:
    """Returns the uint8 `image` as float32 in [0, 1], jittered and clipped.

    Works in place after the one conversion to float, so a 224 px image takes
    a few passes over memory rather than one per step.
    """
    jittered = image * (np.asarray(self.gains, np.float32) / 255)
    grey = jittered.mean()
    jittered *= np.float32(self.contrast)
    jittered += np.float32(grey * (1 - self.contrast) + self.brightness)
    return np.clip(jittered, 0.0, 1.0, out=jittered)


def sample_augmentation(
    rng: np.random.Generator, augment: ml_collections.ConfigDict
) -> tuple[Warp, ColorJitter]:
  """Draws one example's augmentation from the `config.augment` ranges."""
  zoom_min, zoom_max = augment.zoom
  warp = Warp(
      rotation_degrees=rng.uniform(0.0, 360.0) if augment.rotation else 0.0,
      flip_horizontal=bool(augment.flip and rng.random() < 0.5),
      flip_vertical=bool(augment.flip and rng.random() < 0.5),
      zoom=math.exp(rng.uniform(math.log(zoom_min), math.log(zoom_max))),
      translation=tuple(
          rng.uniform(-augment.translation, augment.translation, size=2)
      ),
  )
  jitter = ColorJitter(
      brightness=rng.uniform(-augment.brightness, augment.brightness),
      contrast=rng.uniform(1.0 - augment.contrast, 1.0 + augment.contrast),
      gains=tuple(rng.uniform(1.0 - augment.color, 1.0 + augment.color, 3)),
  )
  return warp, jitter


def output_to_source_affine(
    rotation_degrees,
    flip_horizontal,
    flip_vertical,
    zoom,
    translation_x,
    translation_y,
    *,
    pixels_per_output: float,
    output_size: int,
    source_centre: tuple[float, float],
    xp=np,
) -> tuple[Any, ...]:
  """Returns PIL's affine coefficients from output to decoded-image pixels.

  PIL samples the input at ``(a x + b y + c, d x + e y + f)`` for the output
  pixel centre ``(x, y)``, both in continuous coordinates where pixel ``i``
  spans ``[i, i + 1)``.  Centred on the output, the warp moves content at
  ``q0`` to ``q = zoom * R * F * q0 + t``; inverting that and scaling by the
  decoded pixels per output pixel gives the decoded-image point
  ``source_centre + pixels_per_output / zoom * F * R^-1 * q``.

  Elementwise in the warp parameters with the array namespace `xp`, so the
  grain path (numpy, one warp) and the device path (jax.numpy, a batch of
  warps inside the jitted step) share one definition of the geometry.
  """
  angle = xp.radians(rotation_degrees)
  cos, sin = xp.cos(angle), xp.sin(angle)
  # Inverse rotation: with y pointing down, a counter-clockwise rotation as
  # displayed is [[cos, sin], [-sin, cos]]; its inverse is the transpose.
  # The flips mirror its rows: linear = scale * F @ [[cos, -sin], [sin, cos]].
  scale = pixels_per_output / zoom
  row_x = scale * xp.where(flip_horizontal, -1.0, 1.0)
  row_y = scale * xp.where(flip_vertical, -1.0, 1.0)
  a, b = row_x * cos, -row_x * sin
  d, e = row_y * sin, row_y * cos
  centre_x = output_size / 2 + translation_x
  centre_y = output_size / 2 + translation_y
  return (
      a, b, source_centre[0] - (a * centre_x + b * centre_y),
      d, e, source_centre[1] - (d * centre_x + e * centre_y),
  )  # fmt: skip


def _open_fitting(encoded: bytes, crop_size: int) -> Image.Image:
  """Opens an encoded image (its header only) and checks the crop fits."""
  image = Image.open(io.BytesIO(encoded))
  width, height = image.size
  if crop_size > min(width, height):
    raise errors.ConfigError(
        f'crop_size={crop_size} exceeds the {width}x{height} source image;'
        f' use images of at least {crop_size} px a side or a smaller'
        ' config.input.crop_size.'
    )
  return image


# The modes Pillow gives to images wider than 8 bits: 'I;16*' holds 16-bit
# samples, 'I' (32-bit signed) and 'F' (32-bit float) many source depths.
_WIDE_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I', 'F')
# TIFF tags: bits per sample and sample format (1 unsigned, 2 signed int).
_TIFF_BITS, _TIFF_SAMPLE_FORMAT = 258, 339


def _declared_bits(image: Image.Image) -> int | None:
  """The unsigned integer depth the file declares for a wide-mode image, or
  None (float, signed, or a format that does not say)."""
  if image.mode == 'F':
    return None
  if image.format == 'TIFF':
    bits = max(np.atleast_1d(image.tag_v2.get(_TIFF_BITS, 16)).tolist())
    sample_format = np.atleast_1d(
        image.tag_v2.get(_TIFF_SAMPLE_FORMAT, 1)).tolist()
    return int(bits) if set(sample_format) == {1} else None
  # 'I;16' always holds 16 bits; older Pillow opened 16-bit PNG as 'I'.
  return 16 if image.mode.startswith('I;16') or image.format == 'PNG' else None


def to_rgb(image: Image.Image) -> Image.Image:
  """The image as 8-bit RGB, scaling wider samples by their own bit depth.

  Pillow's ``convert('RGB')`` clips 16-bit grey levels to 255 instead of
  scaling them, turning a 16-bit cut-out near white.  Integer samples of
  9-16 bits (16-bit PNG, 12- or 16-bit TIFF) become ``value >> (bits - 8)``:
  the file's full range maps onto 0-255, as an image viewer shows it, without
  stretching each image by its own pixels (which would hide real brightness
  differences between galaxies).  32-bit integer and floating-point images
  declare no range (their values are often raw fluxes), so they are refused
  rather than guessed.

  Raises:
    DataError: for a 32-bit integer, signed or floating-point image.
  """
  if image.mode not in _WIDE_MODES:
    return image.convert('RGB')
  bits = _declared_bits(image)
  if bits is None or not 8 < bits <= 16:
    kind = {'F': '32-bit floating-point'}.get(
        image.mode, f'{bits}-bit integer' if bits else 'signed or 32-bit'
        ' integer')
    raise errors.DataError(
        f'the {image.format} image has {kind} pixels (Pillow mode'
        f' {image.mode!r}), which have no range to scale to 8 bits; save it'
        ' as an 8- or 16-bit PNG, TIFF or JPEG.'
    )
  pixels = np.asarray(image).astype(np.int64) >> (bits - 8)
  return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8),
                         'L').convert('RGB')


def open_drafted(
    encoded: bytes, crop_size: int, pixels_per_output: float
) -> tuple[Image.Image, tuple[int, int], int]:
  """Decodes an image, a JPEG at the smallest DCT scale keeping the detail.

  Scaling in the DCT (1/1, 1/2, 1/4, 1/8, `Image.draft`) is cheaper than
  decoding in full and, unlike skipping pixels in a bilinear warp, averages
  rather than aliases; the largest reduction that still leaves one decoded
  pixel per output pixel, for `pixels_per_output` source pixels per output
  pixel, loses nothing the output could show.  Other formats decode in full
  (reduction 1).  Every decode path (training, its cache, evaluation and
  prediction) comes here, so all see the same 8-bit pixels (`to_rgb`).

  Returns:
    (the 8-bit RGB image, the source (width, height), the reduction factor).

  Raises:
    ConfigError: if `crop_size` exceeds the source image.
    DataError: if the pixels cannot be scaled to 8 bits (`to_rgb`).
  """
  image = _open_fitting(encoded, crop_size)
  source_size = image.size
  image.draft(
      'RGB',
      tuple(math.ceil(side / pixels_per_output) for side in source_size),
  )
  # The drafted width is ceil(width / factor): recover the exact factor.
  reduction = min(
      _DRAFT_FACTORS,
      key=lambda factor: abs(factor * image.width - source_size[0]),
  )
  return to_rgb(image), source_size, reduction


def decode_and_crop(
    jpeg: bytes,
    crop_size: int,
    output_size: int,
    warp: Warp | None = None,
) -> np.ndarray:
  """Decodes an image into the warped centre crop with one interpolation.

  Args:
    jpeg: the encoded image (JPEG, or any format Pillow reads).
    crop_size: side of the centred square to keep, in source pixels.
    output_size: side of the returned square image.
    warp: geometric augmentation; None for the plain crop and resize.

  Returns:
    uint8 array [output_size, output_size, 3].  Pixels the warp brings in from
    outside the source image are black, like the sky around a galaxy.

  Raises:
    ConfigError: if `crop_size` exceeds the source image.
    DataError: if the pixels cannot be scaled to 8 bits (`to_rgb`).
  """
  warp = warp or Warp()
  # The warp views a region of crop_size / zoom source pixels.
  image, source_size, reduction = open_drafted(
      jpeg, crop_size, crop_size / warp.zoom / output_size
  )
  coefficients = output_to_source_affine(
      warp.rotation_degrees,
      warp.flip_horizontal,
      warp.flip_vertical,
      warp.zoom,
      *warp.translation,
      pixels_per_output=crop_size / output_size / reduction,
      output_size=output_size,
      source_centre=(
          source_size[0] / 2 / reduction, source_size[1] / 2 / reduction
      ),
  )
  warped = image.transform(
      (output_size, output_size),
      Image.Transform.AFFINE,
      tuple(float(c) for c in coefficients),
      resample=Image.Resampling.BILINEAR,
  )
  return np.asarray(warped)


# What Pillow raises for an empty, truncated or corrupt file.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error,
                  Image.DecompressionBombError)


def describe_image(record: Mapping[str, Any]) -> str:
  """Where a record's image comes from, for messages: the catalogue's file,
  row, id and image path when the record carries them (`fields.IMAGE_SOURCE`),
  else its galaxy_id (a built dataset's GalaxyID)."""
  return record.get(fields.IMAGE_SOURCE) or (
      f'galaxy_id {int(record[fields.GALAXY_ID])}')


def decode_error_text(error: BaseException) -> str:
  """Pillow's message on one line, without the object address it names
  (``<_io.BytesIO object at 0x…>``), which means nothing to a user."""
  text = ' '.join(str(error).split())
  return re.sub(r'\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>', '',
                text) or type(error).__name__


def decode_image(record: Mapping[str, Any], decode: Callable[[bytes], T]) -> T:
  """Returns `decode(record['image'])`; a failure names the image.

  A grain worker meets a bad image only when its batch comes, so the message
  must say which image it is (`describe_image`), what is wrong and what to
  do; the record's index in its source would mean nothing to the user.
  """
  try:
    return decode(record[fields.IMAGE])
  except errors.GzjaxError as error:  # Says what to do; add which image.
    raise type(error)(f'{describe_image(record)}: {error}') from None
  except _DECODE_ERRORS as error:
    problem = ('the file is empty' if not len(record[fields.IMAGE])
               else decode_error_text(error))
    fix = ('replace the file with a readable JPEG or PNG, or leave the image'
           ' out' if fields.IMAGE_SOURCE in record else
           'the built dataset is damaged: rebuild it (python -m'
           ' gzjax.data.build)')
    raise errors.DataError(
        f'{describe_image(record)}: cannot decode the image ({problem});'
        f' {fix}.'
    ) from None


def _decode_and_crop_image(
    record: Mapping[str, Any], config: ml_collections.ConfigDict, warp: Warp
) -> np.ndarray:
  """The record's image decoded, cropped and resized as the config says
  (``warp``: the training augmentation's geometry)."""
  return decode_image(
      record,
      lambda jpeg: decode_and_crop(
          jpeg, config.crop_size, config.image_size, warp
      ),
  )


def _normalize(
    image: np.ndarray, config: ml_collections.ConfigDict
) -> np.ndarray:
  """Normalises a float32 [0, 1] image in place with the config's mean/std."""
  image -= np.asarray(config.normalization.mean, np.float32)
  image /= np.asarray(config.normalization.std, np.float32)
  return image


def make_example(
    record: Mapping[str, Any], image: np.ndarray, *, is_real: bool = True
) -> dict[str, np.ndarray]:
  """Builds one output example; `votes` NaNs become 0 for masked losses."""
  votes = np.asarray(record['votes'], np.float32)
  example = {
      'image': image,
      'votes': np.nan_to_num(votes, nan=0.0),
      'votes_mask': np.asarray(record['votes_mask'], bool),
      'label_3class': np.int32(record['label_3class']),
      'label_7class': np.int32(record['label_7class']),
      'galaxy_id': np.int64(record['galaxy_id']),
      'example_mask': np.bool_(is_real),
  }
  if 'targets' in record:  # A label catalogue's columns (gzjax.data.labels).
    example['targets'] = {k: np.asarray(v) for k, v in record['targets'].items()}
  return example


class _TrainPreprocess(grain.transforms.RandomMap):
  """Record to augmented example, with grain's per-position generator."""

  def __init__(self, config: ml_collections.ConfigDict):
    self._config = config

  def random_map(
      self, element: Mapping[str, Any], rng: np.random.Generator
  ) -> dict[str, np.ndarray]:
    if self._config.augment.enabled:
      warp, jitter = sample_augmentation(rng, self._config.augment)
    else:
      warp, jitter = Warp(), ColorJitter()
    image = jitter.apply(_decode_and_crop_image(element, self._config, warp))
    return make_example(element, _normalize(image, self._config))


class _EvalPreprocess(grain.transforms.Map):
  """Record to plain centre-cropped example."""

  def __init__(self, config: ml_collections.ConfigDict):
    self._config = config

  def map(self, element: Mapping[str, Any]) -> dict[str, np.ndarray]:
    image = decode_image(
        element, lambda encoded: eval_image(encoded, self._config)
    )
    return make_example(element, image)


def eval_image(
    encoded: bytes, config: ml_collections.ConfigDict
) -> np.ndarray:
  """An encoded image as the model sees it in evaluation and prediction.

  The centre crop resized to ``config.image_size``, unaugmented, as float32
  normalised with the config's mean and std.  JPEG and PNG (any format Pillow
  reads, recognised by content) work; only JPEG uses the DCT draft scale.

  Raises:
    ConfigError: if ``config.crop_size`` exceeds the image.
    DataError: if its pixels cannot be scaled to 8 bits (``to_rgb``).
    OSError: if the image cannot be decoded (PIL's error).
  """
  image = decode_and_crop(encoded, config.crop_size, config.image_size)
  return _normalize(image.astype(np.float32) / 255, config)


def _padding_example(config: ml_collections.ConfigDict, targets=None):
  """An example with `example_mask` False that fills the last eval batches;
  `targets` (a real record's) gives the shapes of its zero targets."""
  record = {**fields.no_labels(), 'galaxy_id': -1}
  if targets is not None:
    record['targets'] = {k: np.zeros_like(np.asarray(v))
                         for k, v in targets.items()}
  image = np.zeros((config.image_size, config.image_size, 3), np.float32)
  return make_example(record, image, is_real=False)


def process_batch_size(
    config: ml_collections.ConfigDict,
    process_index: int | None,
    process_count: int | None,
) -> tuple[int, int, int]:
  """Returns (process_index, process_count, per-process batch size)."""
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  if not 0 <= process_index < process_count:
    raise errors.ConfigError(
        f'process_index={process_index} is not in [0, {process_count}).'
    )
  if config.batch_size <= 0 or config.batch_size % process_count:
    raise errors.ConfigError(
        f'batch_size={config.batch_size} (the global batch) must be a positive'
        f' multiple of the process count {process_count}.'
    )
  return process_index, process_count, config.batch_size // process_count


def _check_crop_fits(
    source: Sequence[Mapping[str, Any]], config: ml_collections.ConfigDict
) -> None:
  """Fails at construction, not in a worker, when the crop cannot fit.

  Only the first record's header is read; `decode_and_crop` still checks
  every record.
  """
  if not len(source):
    raise errors.DataError('The source has no records.')
  decode_image(source[0], lambda encoded: _open_fitting(encoded,
                                                       config.crop_size))


def _to_iter_dataset(
    dataset: grain.MapDataset, config: ml_collections.ConfigDict
) -> grain.IterDataset:
  """Prefetches whole batches in threads and, if asked, worker processes."""
  iter_dataset = dataset.to_iter_dataset(
      grain.ReadOptions(
          num_threads=config.read_threads,
          prefetch_buffer_size=config.prefetch_buffer_size,
      )
  )
  if config.num_workers:
    iter_dataset = iter_dataset.mp_prefetch(
        grain.MultiprocessingOptions(
            num_workers=config.num_workers,
            per_worker_buffer_size=config.worker_buffer_size,
        )
    )
  return iter_dataset


def create_train_iterator(
    source: Sequence[Mapping[str, Any]],
    config: ml_collections.ConfigDict,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.DatasetIterator:
  """Returns this process's iterator of augmented training batches.

  Every process sees every record over an epoch's global stream, in a shuffle
  that changes per epoch, and holds its contiguous slice of each global batch;
  with a finite `num_epochs` the stream is cut to whole global batches, so all
  processes yield the same number of batches.

  Args:
    source: random-access records (see the module docstring).
    config: the input config (`default_config()`).
    process_index: this process's shard; defaults to `jax.process_index()`.
    process_count: number of shards; defaults to `jax.process_count()`.

  Returns:
    A grain iterator of batches (see `make_example` for the keys) whose
    `get_state()` is a JSON-serialisable dict for `set_state()`.  Close it
    after use when `num_workers` > 0 to stop the workers promptly.
  """
  process_index, process_count, batch_size = process_batch_size(
      config, process_index, process_count
  )
  _check_crop_fits(source, config)
  dataset = grain.MapDataset.source(source).seed(config.seed)
  if config.shuffle:
    dataset = dataset.shuffle()
  dataset = dataset.repeat(config.num_epochs)
  # Before sharding, so an example's augmentation depends on its position in
  # the global stream, not on the process count.
  dataset = dataset.random_map(_TrainPreprocess(config))
  if config.num_epochs is not None:
    dataset = dataset[: len(dataset) // config.batch_size * config.batch_size]
  # Slice i of every global batch (see the module docstring).
  dataset = dataset.batch(batch_size, drop_remainder=True)
  dataset = dataset[process_index::process_count]
  return iter(_to_iter_dataset(dataset, config))


def num_eval_batches(
    num_records: int, config: ml_collections.ConfigDict, process_count: int
) -> int:
  """Returns the batches every process yields in one evaluation pass: one
  per global batch, the last one padded."""
  del process_count  # Each process holds a slice of every global batch.
  return -(-num_records // config.batch_size)


def create_eval_iterator(
    source: Sequence[Mapping[str, Any]],
    config: ml_collections.ConfigDict,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.IterDataset:
  """Returns this process's evaluation batches: one pass, unaugmented.

  The records, padded at the end with `example_mask` False rows to
  `num_eval_batches` full global batches, are cut like the training stream:
  process ``i`` holds slice ``i`` of each global batch.  Every record appears
  exactly once over all processes, gathering the processes' batches in
  process order gives the records in order, and each process yields the same
  number of batches, so collective ops never wait on a process that has run
  out.

  Args:
    source: random-access records (see the module docstring).
    config: the input config; `shuffle`, `num_epochs` and `augment` are
      ignored.
    process_index: this process's shard; defaults to `jax.process_index()`.
    process_count: number of shards; defaults to `jax.process_count()`.

  Returns:
    A grain dataset; each `iter()` over it is a fresh pass.
  """
  process_index, process_count, batch_size = process_batch_size(
      config, process_index, process_count
  )
  _check_crop_fits(source, config)
  records = grain.MapDataset.source(source).map(_EvalPreprocess(config))
  num_rows = (
      num_eval_batches(len(source), config, process_count) * config.batch_size
  )
  targets = source[0].get('targets')
  padding = grain.MapDataset.range(num_rows - len(records)).map(
      lambda _: _padding_example(config, targets)
  )
  dataset = grain.MapDataset.concatenate([records, padding])
  dataset = dataset.batch(batch_size)[process_index::process_count]
  return _to_iter_dataset(dataset, config)
