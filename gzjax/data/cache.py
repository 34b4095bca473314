"""A decoded uint8 cache of a split: built once, opened, checked.

Small models at 64 px consume more images per second than JPEG decoding on
the host delivers.  The cached modes (``config.input.cache``) decode every
JPEG of the training split once into a uint8 array memory-mapped on disk,
and augment on the accelerator (`device_augment`) inside the jitted step:

* ``'host'``: each batch gathers its stored images from the memory map and
  sends them as uint8;
* ``'device'``: the whole cache is placed, replicated, on every device
  (61,578 Kaggle galaxies at 207 -> 64 or 69 px are 8.3 GB; at 212 -> 224
  px, 30.8 GB, a case for the host mode) and batches carry only
  record indices.

What is stored: a centred square of the JPEG decoded at the DCT scale the
grain path uses for the largest zoom (`pipeline.open_drafted`), wide enough
to hold every pixel any warp the augmentation config allows can sample
(rotation turns the view's corners out to its diagonal; the smallest zoom
and the translation widen it), so a warp from the cache sees what the grain
path's warp from the JPEG sees.  Beside it, the labels of every record.

A cache lives in one directory named by the dataset, split and everything
the stored pixels depend on (crop, output size, zoom range, translation,
rotation), under ``config.input.cache_dir`` or the data_dir.  It is built in
a temporary directory and renamed into place when complete, so a killed
build leaves nothing that is ever read.  Its ``cache.json`` records a
fingerprint of what it was built from: streaming BLAKE2b hashes of every
record's stored JPEG bytes, galaxy id, votes and mask, and class labels
(hashed from the records while building, without a second decode), and the
options that change the stored bytes (`_options`).  Opening a cache reads
the split's records once more to check them (no decoding: 0.08-0.23 s for
the real sample's 542 training galaxies, 6.9 MB of JPEG, on 2 busy cores).  A cache whose fingerprint differs, or whose
files are damaged, is an error naming the path and what differs; it is
refused rather than rebuilt in place, since another run or host may be
reading it from the same cache directory.

The training batches read from a cache are :mod:`gzjax.data.cached_input`'s.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import socket
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np
import PIL

from gzjax import errors
from gzjax.data import device_augment
from gzjax.data import fields
from gzjax.data import pipeline

MODES = ('', 'host', 'device')
# Bumped whenever what is stored changes, so old caches are refused.
# 2: cache.json holds the content fingerprint, not 16 galaxy ids.
FORMAT_VERSION = 2
_LABEL_KEYS = (*fields.LABELS, fields.GALAXY_ID)
# What the source fingerprint hashes, each part separately so that a stale
# cache can name what changed.
_SOURCE_PARTS = ('images', 'galaxy ids', 'votes', 'class labels')
_DIGEST_SIZE = 16


class CacheError(errors.GzjaxError, ValueError):
  """A cache on disk is damaged or no longer matches its dataset."""


@dataclasses.dataclass
class Cache:
  """A split's decoded images (uint8 [N, side, side, 3], memory-mapped),
  their labels (`pipeline.make_example`'s fields, [N, ...]) and geometry."""

  path: pathlib.Path
  images: np.ndarray
  labels: dict[str, np.ndarray]
  geometry: device_augment.Geometry

  def __len__(self) -> int:
    return len(self.images)


def check_mode(config: ml_collections.ConfigDict) -> str:
  if config.cache not in MODES:
    raise ValueError(f'config.input.cache={config.cache!r}: use one of'
                     f' {", ".join(map(repr, MODES))}.')
  return config.cache


def cache_name(dataset: str, split: str,
               config: ml_collections.ConfigDict) -> str:
  """The directory name: everything the stored pixels depend on."""
  reach = device_augment.reach(config.augment)
  zoom_min, zoom_max = reach['zoom']
  return (f'{dataset.replace("/", "_")}-{split}-crop{config.crop_size}'
          f'-out{config.image_size}-zoom{zoom_min:.6g}-{zoom_max:.6g}'
          f'-shift{reach["translation"]:g}'
          f'{"-rotate" if reach["rotation"] else ""}')


def _pixels_per_output(config: ml_collections.ConfigDict) -> float:
  """Source pixels per output pixel at the largest zoom: the finest detail
  any training view shows, which picks the JPEG draft scale."""
  return (config.crop_size / device_augment.reach(config.augment)['zoom'][1]
          / config.image_size)


def _geometry(first_jpeg: bytes,
              config: ml_collections.ConfigDict) -> device_augment.Geometry:
  """The stored square for the config, from the first record's JPEG.

  The farthest an output pixel centre's bilinear footprint reaches from the
  source centre, in decoded pixels, is the output's half-diagonal (half-side
  without rotation) plus the translation, scaled by the decoded pixels per
  output pixel at the smallest zoom, plus two pixels for the neighbours; no
  more than the decoded image is kept.
  """
  reach = device_augment.reach(config.augment)
  _, source_size, reduction = pipeline.open_drafted(
      first_jpeg, config.crop_size, _pixels_per_output(config))
  decoded_size = tuple(-(-side // reduction) for side in source_size)
  half_view = (config.image_size / 2 + reach['translation']) * (
      np.sqrt(2) if reach['rotation'] else 1.0)
  radius = (config.crop_size / config.image_size / reach['zoom'][0] / reduction
            * half_view + 2)
  centres = [side / 2 / reduction for side in source_size]
  # Beyond the decoded image a warp sees black, and PIL's clamped neighbours
  # see the edge pixels, which clamping into the stored square repeats.
  origin = tuple(max(int(np.floor(c - radius)), 0) for c in centres)
  side = max(min(int(np.ceil(c + radius)), size) - start
             for c, start, size in zip(centres, origin, decoded_size))
  return device_augment.Geometry(
      source_size=tuple(source_size), reduction=reduction,
      decoded_size=decoded_size, origin=origin, side=side)


def _stored_image(jpeg: bytes, config: ml_collections.ConfigDict,
                  geometry: device_augment.Geometry) -> np.ndarray:
  """The stored square of one JPEG: decoded as the geometry says, edges
  repeated where the square reaches past the image."""
  image, source_size, reduction = pipeline.open_drafted(
      jpeg, config.crop_size, _pixels_per_output(config))
  if (source_size, reduction) != (geometry.source_size, geometry.reduction):
    raise errors.DataError(
        f'its {source_size[0]}x{source_size[1]} image differs from the'
        f' {geometry.source_size[0]}x{geometry.source_size[1]} of the first'
        ' record; the cache needs one image size per split.')
  pixels = np.asarray(image)
  rows, columns = (
      np.clip(np.arange(geometry.side) + origin, 0, size - 1)
      for origin, size in zip(reversed(geometry.origin), pixels.shape[:2]))
  return pixels[rows[:, None], columns[None, :]]


def _record_digests(record: Mapping[str, Any]) -> tuple[bytes, ...]:
  """One digest per `_SOURCE_PARTS` of a record's stored fields (no decoding:
  the JPEG's bytes, the votes as stored, NaNs included)."""

  def digest(*arrays) -> bytes:
    h = hashlib.blake2b(digest_size=_DIGEST_SIZE)
    for array in arrays:
      array = np.ascontiguousarray(array)
      h.update(f'{array.dtype.str}{array.shape}'.encode())
      h.update(array.tobytes())
    return h.digest()

  return (
      digest(np.frombuffer(bytes(record['image']), np.uint8)),
      digest(np.asarray(record['galaxy_id'], '<i8')),
      digest(np.asarray(record['votes'], '<f4'),
             np.asarray(record['votes_mask'], bool)),
      digest(np.asarray([record['label_3class'], record['label_7class']],
                        '<i8')),
  )


class _SourceHash:
  """Streaming hashes of a split's records, fed in record order."""

  def __init__(self):
    self._hashes = [hashlib.blake2b(digest_size=_DIGEST_SIZE)
                    for _ in _SOURCE_PARTS]
    self.num_records = 0

  def add(self, digests: Sequence[bytes]) -> None:
    for h, digest in zip(self._hashes, digests):
      h.update(digest)
    self.num_records += 1

  def result(self) -> dict[str, Any]:
    return {'num_records': self.num_records,
            **{part: h.hexdigest()
               for part, h in zip(_SOURCE_PARTS, self._hashes)}}


def source_fingerprint(source: Sequence[Mapping[str, Any]],
                       num_threads: int = 1) -> dict[str, Any]:
  """The record count and a hash per `_SOURCE_PARTS` of every record."""
  hasher = _SourceHash()
  with concurrent.futures.ThreadPoolExecutor(num_threads) as executor:
    for digests in executor.map(lambda i: _record_digests(source[i]),
                                range(len(source))):
      hasher.add(digests)
  return hasher.result()


def _options(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Every option the stored bytes depend on, as cache.json holds them (the
  directory name carries them too, but rounded): the crop and output size,
  the augmentation's reach, the JPEG draft scale they choose, and the Pillow
  (libjpeg) that decodes."""
  reach = device_augment.reach(config.augment)
  return json.loads(json.dumps({
      'crop_size': int(config.crop_size),
      'image_size': int(config.image_size),
      'zoom': [float(z) for z in reach['zoom']],
      'translation': float(reach['translation']),
      'rotation': bool(reach['rotation']),
      'pixels_per_output': float(_pixels_per_output(config)),
      'pillow': PIL.__version__,
  }))


def _combined(source: Mapping[str, Any], options: Mapping[str, Any]) -> str:
  """One hex fingerprint of the source's hashes and the options."""
  return hashlib.blake2b(
      json.dumps([source, options], sort_keys=True).encode(),
      digest_size=_DIGEST_SIZE).hexdigest()


def _write(source: Sequence[Mapping[str, Any]], directory: pathlib.Path,
           config: ml_collections.ConfigDict, num_threads: int) -> None:
  """Decodes every record into `directory` (which must not exist yet)."""
  geometry = _geometry(source[0]['image'], config)
  directory.mkdir(parents=True)
  images = np.lib.format.open_memmap(
      directory / 'images.npy', mode='w+', dtype=np.uint8,
      shape=(len(source), geometry.side, geometry.side, 3))
  labels = {key: [] for key in _LABEL_KEYS}
  hasher = _SourceHash()

  def store(index: int):
    record = source[index]
    images[index] = pipeline.decode_image(
        record, lambda jpeg: _stored_image(jpeg, config, geometry))
    return pipeline.make_example(record, image=None), _record_digests(record)

  with concurrent.futures.ThreadPoolExecutor(num_threads) as executor:
    for example, digests in executor.map(store, range(len(source))):
      hasher.add(digests)
      for key in _LABEL_KEYS:
        labels[key].append(example[key])
  images.flush()
  del images
  np.savez(directory / 'labels.npz',
           **{key: np.stack(values) for key, values in labels.items()})
  fingerprint, options = hasher.result(), _options(config)
  (directory / 'cache.json').write_text(json.dumps({
      'format_version': FORMAT_VERSION,
      'num_records': len(source),
      'fingerprint': _combined(fingerprint, options),
      'source': fingerprint,
      'options': options,
      'geometry': dataclasses.asdict(geometry),
  }, indent=2))


def _remove_abandoned_builds(final: pathlib.Path) -> None:
  """Deletes this host's temporary builds whose process has died."""
  host = socket.gethostname()
  for partial in final.parent.glob(f'{final.name}.tmp-{host}-*'):
    pid = int(partial.name.rsplit('-', 1)[-1])
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      shutil.rmtree(partial, ignore_errors=True)
    except PermissionError:  # Alive, and another user's.
      pass


def _load(path: pathlib.Path, source: Sequence[Mapping[str, Any]],
          config: ml_collections.ConfigDict) -> Cache:
  """Opens a complete cache, refusing one that is damaged or stale."""

  def refuse(reason: str) -> CacheError:
    return CacheError(f'The input cache {path} {reason}; delete it to have it'
                      ' rebuilt, or set config.input.cache_dir to build one'
                      ' elsewhere.')

  try:
    meta = json.loads((path / 'cache.json').read_text())
    geometry = device_augment.Geometry(**{
        key: tuple(value) if isinstance(value, list) else value
        for key, value in meta['geometry'].items()})
    images = np.load(path / 'images.npy', mmap_mode='r')
    with np.load(path / 'labels.npz') as stored:
      labels = {key: stored[key] for key in _LABEL_KEYS}
  except (OSError, ValueError, KeyError, TypeError) as error:
    raise refuse(f'is damaged ({type(error).__name__}: {error})') from error
  if meta['format_version'] != FORMAT_VERSION:
    raise refuse(f'has format {meta["format_version"]}, this gzjax reads'
                 f' {FORMAT_VERSION}')
  expected = (meta['num_records'], geometry.side, geometry.side, 3)
  if images.shape != expected or images.dtype != np.uint8:
    raise refuse(f'is damaged: images.npy holds {images.dtype}'
                 f'{list(images.shape)}, not uint8{list(expected)}')
  if any(len(values) != len(images) for values in labels.values()):
    raise refuse('is damaged: labels.npz and images.npy differ in length')
  if meta['num_records'] != len(source):
    raise refuse(f'was built from other records ({meta["num_records"]}) than'
                 f' the dataset now holds ({len(source)})')
  options = _options(config)
  built_with, built_from = meta.get('options', {}), meta.get('source', {})
  changed = [f'{key} {built_with.get(key)!r} then, {value!r} now'
             for key, value in options.items()
             if built_with.get(key) != value]
  if changed:
    raise refuse(f'was built with other options ({"; ".join(changed)})')
  now = source_fingerprint(source, max(config.read_threads, 1))
  if meta.get('fingerprint') != _combined(now, options):
    differ = [part for part in _SOURCE_PARTS
              if built_from.get(part) != now[part]] or ['fingerprints']
    raise refuse(
        f'was built from other records than the dataset now holds, with the'
        f' same count ({len(source)}) but other {", ".join(differ)}: source'
        f' fingerprint {meta.get("fingerprint")} at build,'
        f' {_combined(now, options)} now')
  return Cache(path, images, labels, geometry)


def open_or_build(source: Sequence[Mapping[str, Any]],
                  directory: str | pathlib.Path,
                  config: ml_collections.ConfigDict, *, dataset: str,
                  split: str) -> Cache:
  """The cache of `source` for the input config, built on first use.

  Args:
    source: the split's records (`galaxy_zoo.data_source`).
    directory: where caches live.
    config: the input config; its crop, output size and augmentation ranges
      choose the cache.
    dataset: the dataset's name, e.g. ``galaxy_zoo/kaggle``.
    split: the split's name.

  Raises:
    CacheError: the cache there is damaged or was built from other records.
    ValueError: a record's JPEG cannot be decoded, or differs in size from
      the first (the error names the galaxy).
  """
  final = pathlib.Path(directory).expanduser() / cache_name(dataset, split,
                                                            config)
  if not final.exists():
    _remove_abandoned_builds(final)
    partial = final.with_name(
        f'{final.name}.tmp-{socket.gethostname()}-{os.getpid()}')
    shutil.rmtree(partial, ignore_errors=True)
    try:
      _write(source, partial, config, max(config.read_threads, 1))
      partial.rename(final)
    except OSError:
      if not final.exists():  # Another process may have finished first.
        raise
    finally:
      shutil.rmtree(partial, ignore_errors=True)
  return _load(final, source, config)
