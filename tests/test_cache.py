"""The decoded cache (gzjax.data.cache): building, refusing, batches, resume."""

from __future__ import annotations

import json
import socket
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gzjax import checkpoint
from gzjax import experiment as experiments
from gzjax import train
from gzjax.data import cache
from gzjax.data import cached_input
from gzjax.data import pipeline
from tests.conftest import tiny_config
from tests.test_device_augment import _cache
from tests.test_device_augment import _records
from tests.test_pipeline import _config


def _dead_pid() -> int:
  """The id of a process that has exited."""
  process = subprocess.Popen(['true'])
  process.wait()
  return process.pid


def test_cache_holds_every_record_and_is_reused(tmp_path, monkeypatch):
  records = _records(5)
  config = _config(cache='host')

  cached = _cache(records, tmp_path, config)

  geometry = cached.geometry
  assert cached.images.shape == (5, geometry.side, geometry.side, 3)
  assert cached.images.dtype == np.uint8
  # Zoom 1.3 at 64 -> 16 px wants 3.1 source px per output px: half scale.
  assert (geometry.reduction, geometry.decoded_size) == (2, (64, 64))
  for record, image in zip(records, cached.images):
    decoded, _, _ = pipeline.open_drafted(record['image'], 64, 3.0)
    np.testing.assert_array_equal(image, np.asarray(decoded))
  expected = pipeline.make_example(records[2], None)
  for key, values in cached.labels.items():
    np.testing.assert_array_equal(values[2], expected[key])
  # Reused: opening again decodes nothing.
  monkeypatch.setattr(cache, '_write', None)
  reopened = _cache(records, tmp_path, config)
  assert reopened.path == cached.path
  # Other augmentation ranges are another cache.
  name = cache.cache_name('test', 'train', config)
  config.augment.zoom = (1.0, 1.0)
  assert cache.cache_name('test', 'train', config) != name


def test_the_stored_square_covers_what_warps_reach_and_no_more(tmp_path):
  records = _records(1)
  # No rotation, no zoom-out, small shifts: a centred square of the image.
  config = _config(crop_size=32, image_size=16,
                   augment={'rotation': False, 'zoom': (1.0, 1.0),
                            'translation': 2.0})

  geometry = _cache(records, tmp_path, config).geometry

  # 2 source px per output px: half-scale decoding, one decoded px each.
  assert (geometry.reduction, geometry.decoded_size) == (2, (64, 64))
  # Half-view 8 + 2 output px, plus 2 px for the neighbours: 12 px.
  assert geometry.origin == (32 - 12, 32 - 12)
  assert geometry.side == 24


def test_a_failed_build_leaves_nothing_that_is_used(tmp_path, monkeypatch):
  records = _records(6)
  config = _config(cache='host')
  name = cache.cache_name('test', 'train', config)
  abandoned = tmp_path / f'{name}.tmp-{socket.gethostname()}-{_dead_pid()}'
  abandoned.mkdir(parents=True)
  (abandoned / 'images.npy').write_bytes(b'half')
  broken = list(records)
  broken[3] = dict(records[3], image=records[3]['image'][:100])

  with pytest.raises(ValueError, match='galaxy_id 1003'):
    _cache(broken, tmp_path, config)

  assert list(tmp_path.iterdir()) == []  # No cache, no leftovers.
  cached = _cache(records, tmp_path, config)
  assert len(cached) == 6


@pytest.mark.parametrize('damage, message', [
    (lambda path: (path / 'images.npy').write_bytes(
        (path / 'images.npy').read_bytes()[:-10]), 'is damaged'),
    (lambda path: (path / 'cache.json').write_text('{'), 'is damaged'),
    (lambda path: (path / 'labels.npz').unlink(), 'is damaged'),
])
def test_a_damaged_cache_is_refused_by_name(tmp_path, damage, message):
  records = _records(3)
  config = _config()
  path = _cache(records, tmp_path, config).path
  damage(path)

  with pytest.raises(cache.CacheError, match=f'{path}.* {message}'):
    _cache(records, tmp_path, config)


def test_a_stale_cache_is_refused_by_name(tmp_path):
  config = _config()
  path = _cache(_records(4), tmp_path, config).path
  json_path = path / 'cache.json'
  meta = json.loads(json_path.read_text())

  with pytest.raises(cache.CacheError, match=f'{path} was built from other'):
    _cache(_records(5), tmp_path, config)
  json_path.write_text(json.dumps(dict(meta, format_version=0)))
  with pytest.raises(cache.CacheError, match=f'{path} has format 0'):
    _cache(_records(4), tmp_path, config)


def test_a_cache_is_current_only_for_the_same_content_and_options(
    tmp_path, monkeypatch):
  """Same galaxy ids, other pixels / votes / labels / decoding: refused."""
  records = _records(4)
  config = _config(cache='host')
  path = _cache(records, tmp_path, config).path
  images_npy = path / 'images.npy'
  built_at = images_npy.stat().st_mtime_ns

  # An identical source, record for record (a fresh copy, as after rebuilding
  # the dataset with the same seed), is reused, not rebuilt.
  monkeypatch.setattr(cache, '_write', None)
  assert _cache(_records(4), tmp_path, config).path == path
  assert images_npy.stat().st_mtime_ns == built_at

  def refused(source, config=config):
    with pytest.raises(cache.CacheError) as info:
      _cache(source, tmp_path, config)
    message = str(info.value)
    assert f'The input cache {path} was built' in message
    assert 'delete it' in message and 'config.input.cache_dir' in message
    return message

  # The same ids and labels around another record's pixels (the synthetic
  # set rebuilt with another seed keeps its ids): the images are named.
  pixels = [dict(record) for record in records]
  pixels[2]['image'] = _records(6)[5]['image']
  message = refused(pixels)
  assert 'other images:' in message and 'votes' not in message
  assert message.count(json.loads(
      (path / 'cache.json').read_text())['fingerprint']) == 1

  # The same ids and pixels, one vote fraction changed by 1e-6.
  votes = [dict(record) for record in records]
  votes[3]['votes'] = votes[3]['votes'].copy()
  votes[3]['votes'][0] += 1e-6
  assert 'other votes:' in refused(votes)
  # Or a vote's mask.
  mask = [dict(record) for record in records]
  mask[0]['votes_mask'] = ~mask[0]['votes_mask']
  assert 'other votes:' in refused(mask)
  # Or a class label.
  label = [dict(record) for record in records]
  label[1]['label_7class'] = np.int64(4)
  assert 'other class labels:' in refused(label)
  # Two galaxies' records swapped: every id is there, in another order.
  swapped = [records[1], records[0], *records[2:]]
  assert 'other images, galaxy ids, class labels:' in refused(swapped)

  # Options that change the decoded bytes.  Another libjpeg (Pillow) decodes
  # other pixels from the same JPEG:
  pillow = cache.PIL.__version__
  monkeypatch.setattr(cache.PIL, '__version__', '0.0-test')
  assert f"(pillow {pillow!r} then, '0.0-test' now)" in refused(records)
  monkeypatch.undo()
  # A zoom the directory name rounds to the same 6 digits:
  near = _config(cache='host')
  near.augment.zoom = tuple(config.augment.zoom[:1]) + (
      config.augment.zoom[1] * (1 + 1e-9),)
  assert cache.cache_name('test', 'train', near) == path.name
  assert 'other options (zoom' in refused(records, near)
  # Crop and output size name another directory: a cache of its own.
  for key, value in (('crop_size', 48), ('image_size', 12)):
    other = _config(cache='host')
    other[key] = value
    assert _cache(records, tmp_path, other).path != path
  # Nothing above touched the cache.
  assert images_npy.stat().st_mtime_ns == built_at
  assert _cache(records, tmp_path, config).path == path


def test_the_fingerprint_hashes_every_record_field_but_decodes_nothing(
    monkeypatch):
  records = _records(3)
  # No JPEG is opened: the stored bytes are hashed as they are.
  monkeypatch.setattr(pipeline, 'open_drafted', None)
  before = cache.source_fingerprint(records)
  assert before['num_records'] == 3
  for key, part in (('image', 'images'), ('galaxy_id', 'galaxy ids'),
                    ('votes', 'votes'), ('votes_mask', 'votes'),
                    ('label_3class', 'class labels'),
                    ('label_7class', 'class labels')):
    changed = [dict(record) for record in records]
    value = records[-1][key]
    changed[-1][key] = (value + b'\0' if key == 'image' else
                        ~value if key == 'votes_mask' else value + 1)
    after = cache.source_fingerprint(changed, num_threads=2)
    assert [name for name in before if before[name] != after[name]] == [
        part], key
  # Threads change nothing: the hashes are fed in record order.
  assert cache.source_fingerprint(records, num_threads=3) == before


def _take(iterator, count):
  batches = [next(iterator) for _ in range(count)]
  iterator.close()
  return batches


def test_batches_cover_each_epoch_and_shard_like_grain(tmp_path):
  config = _config(cache='device', batch_size=4)
  cached = _cache(_records(10), tmp_path, config)

  single = _take(cached_input.TrainIterator(cached, config, process_index=0,
                                            process_count=1), 5)
  shards = [_take(cached_input.TrainIterator(
      cached, config, process_index=i, process_count=2), 5) for i in range(2)]

  records = np.concatenate([batch['image'] for batch in single])
  assert sorted(records[:10]) == sorted(records[10:20]) == list(range(10))
  assert not np.array_equal(records[:10], records[10:20])  # Reshuffled.
  positions = np.concatenate([batch['stream_position'] for batch in single])
  np.testing.assert_array_equal(
      positions, np.stack([np.arange(20) // 10, np.arange(20) % 10], -1))
  ids = np.concatenate([batch['galaxy_id'] for batch in single])
  np.testing.assert_array_equal(ids, 1000 + records)
  for step, batch in enumerate(single):
    for key, values in batch.items():
      rebuilt = np.concatenate([shard[step][key] for shard in shards])
      np.testing.assert_array_equal(rebuilt, values)


def test_finite_epochs_and_labelled_subsets(tmp_path):
  config = _config(cache='host', batch_size=4, num_epochs=2)
  cached = _cache(_records(10), tmp_path, config)

  batches = list(cached_input.TrainIterator(cached, config, indices=[1, 4, 7],
                                            process_index=0, process_count=1))

  assert len(batches) == 1  # 2 epochs of 3 records: one full batch of 4.
  ids = batches[0]['galaxy_id']
  assert set(ids) <= {1001, 1004, 1007}
  np.testing.assert_array_equal(batches[0]['image'],
                                cached.images[ids - 1000])


def test_resume_from_json_state_across_an_epoch(tmp_path):
  config = _config(cache='host', batch_size=4)
  cached = _cache(_records(10), tmp_path, config)
  iterator = cached_input.TrainIterator(cached, config)
  expected = _take(cached_input.TrainIterator(cached, config), 5)[2:]

  _take(iterator, 2)
  saved = json.dumps(iterator.get_state())
  resumed = cached_input.TrainIterator(cached, config)
  resumed.set_state(json.loads(saved))

  for batch, want in zip(_take(resumed, 3), expected):
    for key in want:
      np.testing.assert_array_equal(batch[key], want[key])


def test_training_resumes_bit_identically(tmp_path):
  """4 steps straight == 2 steps, a checkpoint, a new iterator, 2 more."""
  config = tiny_config(tmp_path, **{'input.cache': 'device',
                                    'input.crop_size': 64})
  cached = _cache(_records(12), tmp_path / 'cache', config.input)
  experiment = experiments.create_experiment(config)
  state = experiment.initial_state()
  device_input = cached_input.DeviceInput(
      config.input, cached.geometry,
      cached_input.place_on_devices(cached, experiment.replicated))
  step = train.make_train_step(experiment, device_input)

  def initial():  # A copy each time: the step donates its state.
    return jax.tree.map(jnp.copy, state)

  def run(state, iterator, steps):
    for _ in range(steps):
      state, _ = step(state, train.to_global(next(iterator),
                                             experiment.batch_sharding))
    return state

  straight = run(initial(),
                 cached_input.TrainIterator(cached, config.input), 4)

  iterator = cached_input.TrainIterator(cached, config.input)
  half = run(initial(), iterator, 2)
  checkpointer = checkpoint.Checkpointer(tmp_path / 'run')
  checkpointer.save(2, half, iterator.get_state())
  checkpointer.wait()
  restored, data_state, _ = checkpointer.restore(state)
  checkpointer.close()
  resumed_iterator = cached_input.TrainIterator(cached, config.input)
  resumed_iterator.set_state(data_state)
  resumed = run(restored, resumed_iterator, 2)

  assert int(resumed.step) == 4
  for a, b in zip(jax.tree.leaves(straight.params),
                  jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(
      np.asarray(jax.tree.leaves(straight.params)[0]),
      np.asarray(jax.tree.leaves(state.params)[0]))


def test_measure_images_per_second(tmp_path):
  config = _config(cache='host', batch_size=4)
  cached = _cache(_records(8), tmp_path, config)

  rate = cached_input.measure_images_per_second(cached, config, num_batches=2,
                                                warmup_batches=1)

  assert rate > 0
