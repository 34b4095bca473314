"""The training batches of a cached mode, read from a split's decoded cache.

:mod:`gzjax.data.cache` builds, opens and checks the cache; this module
reads it.  Batches (`TrainIterator`) follow the grain path's stream: a seeded
permutation of the records per epoch, process ``i`` of ``P`` taking slice
``i`` of each global batch; the iterator state is one JSON-serialisable
position, and each example carries its (epoch, index) stream position, from
which `device_augment` derives its augmentation key.  The jitted train step
augments them (`DeviceInput`), the whole cache on the devices in the
``'device'`` mode (`place_on_devices`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import time
from typing import Mapping

import jax
import ml_collections
import numpy as np

from gzjax import distributed
from gzjax.data import cache as caches
from gzjax.data import device_augment
from gzjax.data import pipeline


@dataclasses.dataclass(frozen=True)
class DeviceInput:
  """What a jitted train step needs to augment a cached mode's batches.

  Attributes:
    config: the input config.
    geometry: where the stored images lie in their sources.
    resident: the whole cache on the devices (``'device'``), else None.
  """

  config: ml_collections.ConfigDict
  geometry: device_augment.Geometry
  resident: jax.Array | None = None

  def prepare(self, batch: Mapping[str, jax.Array],
              resident: jax.Array | None) -> dict[str, jax.Array]:
    """The batch with augmented images, inside the step (`resident` comes
    in as the step's argument, not as a constant baked into it)."""
    return device_augment.augment_batch(batch, self.config, self.geometry,
                                        resident)


def place_on_devices(cache: caches.Cache,
                     sharding: jax.sharding.Sharding) -> jax.Array:
  """The whole uint8 cache as one global array (every process reads its
  devices' share from its own memory map)."""
  return jax.make_array_from_callback(
      cache.images.shape, sharding, lambda index: cache.images[index])


class TrainIterator:
  """This process's training batches from a cache; deterministic, resumable.

  Each batch holds the `pipeline.make_example` fields, with `image` the
  stored uint8 images (``'host'``) or int32 record indices into the cache
  (``'device'``), plus `stream_position`: int32 [b, 2] (epoch, index within
  the epoch) for `device_augment.example_keys`.  Batches are built ahead in
  threads; `get_state` is the position of the next batch to be returned.
  """

  def __init__(self, cache: caches.Cache, config: ml_collections.ConfigDict, *,
               indices: np.ndarray | None = None,
               process_index: int | None = None,
               process_count: int | None = None):
    """Args:
      cache: the split's cache.
      config: the input config; `cache` picks host or device batches.
      indices: the records to train on (default all), e.g. the labelled ones.
      process_index: this process's shard; defaults to jax.process_index().
      process_count: number of shards; defaults to jax.process_count().
    """
    process_index, process_count, self._batch_size = (
        pipeline.process_batch_size(config, process_index, process_count))
    if caches.check_mode(config) == '':
      raise ValueError('config.input.cache is empty: use the grain pipeline.')
    self._cache, self._config = cache, config
    self._indices = np.arange(len(cache)) if indices is None else np.asarray(
        indices)
    if not len(self._indices):
      raise ValueError('The cache iterator has no records to read.')
    # Slice process_index of each global batch, as the grain path takes.
    self._offsets = process_index * self._batch_size + np.arange(
        self._batch_size)
    self._end = None if config.num_epochs is None else (
        len(self._indices) * config.num_epochs)
    self._permutations = {}
    self._executor = concurrent.futures.ThreadPoolExecutor(
        max(config.read_threads, 1))
    self._pending = collections.deque()
    self._next = 0  # The global stream position of the next batch's start.

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._permutations:
      if len(self._permutations) > 1:
        self._permutations.pop(min(self._permutations))
      order = np.arange(len(self._indices))
      if self._config.shuffle:
        order = np.random.default_rng([self._config.seed, epoch]).permutation(
            order)
      self._permutations[epoch] = self._indices[order]
    return self._permutations[epoch]

  def _batch(self, start: int) -> dict[str, np.ndarray]:
    positions = start + self._offsets
    epochs, within = np.divmod(positions, len(self._indices))
    records = np.empty(len(positions), np.int64)
    for epoch in np.unique(epochs):
      chosen = epochs == epoch
      records[chosen] = self._permutation(int(epoch))[within[chosen]]
    batch = {key: values[records] for key, values in self._cache.labels.items()}
    batch['image'] = (self._cache.images[records]
                      if self._config.cache == 'host'
                      else records.astype(np.int32))
    batch['stream_position'] = np.stack([epochs, within], -1).astype(np.int32)
    batch['example_mask'] = np.ones(len(positions), bool)
    return batch

  def _fill(self) -> None:
    global_batch = self._config.batch_size
    while len(self._pending) < max(self._config.prefetch_buffer_size, 1):
      start = self._next + len(self._pending) * global_batch
      if self._end is not None and start + global_batch > self._end:
        break
      self._pending.append(self._executor.submit(self._batch, start))

  def __iter__(self) -> TrainIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    self._fill()
    if not self._pending:
      raise StopIteration
    batch = self._pending.popleft().result()
    self._next += self._config.batch_size
    self._fill()
    return batch

  def get_state(self) -> dict[str, int]:
    return {'next_example': self._next}

  def set_state(self, state: Mapping[str, int]) -> None:
    for future in self._pending:
      future.cancel()
    self._pending.clear()
    self._next = int(state['next_example'])

  def close(self) -> None:
    self._executor.shutdown(cancel_futures=True)


def measure_images_per_second(cache: caches.Cache,
                              config: ml_collections.ConfigDict,
                              *, num_batches: int = 20,
                              warmup_batches: int = 3) -> float:
  """Training images per second the cached input path delivers, augmented
  and on the devices: the host's batches, their transfer and the jitted
  augmentation, without a model.  `config.cache` picks the mode; the batch
  size is `config.batch_size` over all devices."""
  mesh = distributed.make_mesh()
  batch_sharding = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(distributed.DATA_AXIS))
  resident = None
  if config.cache == 'device':
    resident = place_on_devices(cache, jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec()))
  augment = jax.jit(lambda batch, resident: device_augment.augment_batch(
      batch, config, cache.geometry, resident)['image'])
  iterator = TrainIterator(cache, config)

  def run(count: int) -> None:
    images = None
    for _ in range(count):
      batch = next(iterator)
      images = augment({
          key: jax.make_array_from_process_local_data(batch_sharding,
                                                      batch[key])
          for key in ('image', 'stream_position')}, resident)
    jax.block_until_ready(images)

  try:
    run(warmup_batches)
    start = time.perf_counter()
    run(num_batches)
    elapsed = time.perf_counter() - start
  finally:
    iterator.close()
  return num_batches * config.batch_size / elapsed
