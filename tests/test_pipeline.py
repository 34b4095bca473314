"""Tests for the grain input pipeline (gzjax.data.pipeline)."""

from __future__ import annotations

import io
import json

from absl import flags
import numpy as np
from PIL import Image
import pytest

from gzjax import errors
from gzjax.data import catalog
from gzjax.data import fields
from gzjax.data import labels
from gzjax.data import pipeline

_NUM_RECORDS = 10


def _smooth_asymmetric_image(size: int) -> np.ndarray:
  """Smooth gradients, so interpolation errors stay small, with no symmetry.

  Red rises to the right, green downwards and blue along a bent diagonal, so
  any rotation or flip changes the image.
  """
  y, x = np.mgrid[0:size, 0:size] / (size - 1)
  image = np.stack([x, y, (x + 2 * y**2) / 3], axis=-1)
  return np.round(image * 255).astype(np.uint8)


def _jpeg(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, 'JPEG', quality=95)
  return buffer.getvalue()


def _record(galaxy_id: int, jpeg: bytes) -> dict[str, object]:
  votes = np.linspace(0, 1, fields.NUM_VOTES, dtype=np.float32)
  votes_mask = np.ones(fields.NUM_VOTES, bool)
  votes[5:8] = np.nan
  votes_mask[5:8] = False
  return {
      'image': jpeg,
      'galaxy_id': np.int64(1000 + galaxy_id),
      'votes': votes,
      'votes_mask': votes_mask,
      'label_3class': np.int64(galaxy_id % 3),
      'label_7class': np.int64(-1),
  }


@pytest.fixture(scope='module')
def jpeg_128() -> bytes:
  return _jpeg(_smooth_asymmetric_image(128))


@pytest.fixture(scope='module')
def records(jpeg_128) -> list[dict[str, object]]:
  return [_record(i, jpeg_128) for i in range(_NUM_RECORDS)]


def _config(**overrides):
  """A small, fast config: 128 px sources, 16 px outputs, batches of 4."""
  config = pipeline.default_config()
  config.crop_size = 64
  config.image_size = 16
  config.batch_size = 4
  config.worker_buffer_size = 1
  config.update(overrides)
  return config


def _take(iterator, count):
  return [next(iterator) for _ in range(count)]


def _assert_batches_equal(actual, expected):
  assert len(actual) == len(expected)
  for actual_batch, expected_batch in zip(actual, expected):
    assert actual_batch.keys() == expected_batch.keys()
    for key in expected_batch:
      np.testing.assert_array_equal(actual_batch[key], expected_batch[key])


def _decoded(jpeg: bytes) -> Image.Image:
  return Image.open(io.BytesIO(jpeg)).convert('RGB')


# --- Decoding, crop and warp -------------------------------------------------


def test_crop_without_draft_is_the_exact_pixel_crop(jpeg_128):
  output = pipeline.decode_and_crop(jpeg_128, crop_size=64, output_size=64)

  expected = np.asarray(_decoded(jpeg_128))[32:96, 32:96]
  np.testing.assert_array_equal(output, expected)


@pytest.mark.parametrize(
    'source_size, crop_size, output_size, decoded_size',
    [(128, 64, 32, 64), (128, 64, 16, 32), (424, 207, 64, 212)],
)
def test_draft_decoding_keeps_the_crop_region(
    monkeypatch, source_size, crop_size, output_size, decoded_size
):
  jpeg = _jpeg(_smooth_asymmetric_image(source_size))
  warped_sizes = []
  original_transform = Image.Image.transform

  def spy_transform(image, *args, **kwargs):
    warped_sizes.append(image.size)
    return original_transform(image, *args, **kwargs)

  monkeypatch.setattr(Image.Image, 'transform', spy_transform)

  output = pipeline.decode_and_crop(jpeg, crop_size, output_size)

  assert warped_sizes == [(decoded_size, decoded_size)]
  assert output.shape == (output_size, output_size, 3)
  assert output.dtype == np.uint8
  # Reference: full-resolution decode, then PIL's antialiased resize of the
  # same (possibly fractional) centre box.
  start = (source_size - crop_size) / 2
  box = (start, start, start + crop_size, start + crop_size)
  expected = np.asarray(
      _decoded(jpeg).resize(
          (output_size, output_size), Image.Resampling.BILINEAR, box=box
      )
  )
  difference = np.abs(output.astype(int) - expected)
  assert difference.mean() < 1.0
  assert difference.max() <= 3


@pytest.mark.parametrize(
    'warp, reference',
    [
        (pipeline.Warp(rotation_degrees=90), np.rot90),
        (pipeline.Warp(rotation_degrees=180), lambda a: np.rot90(a, 2)),
        (pipeline.Warp(flip_horizontal=True), lambda a: a[:, ::-1]),
        (pipeline.Warp(flip_vertical=True), lambda a: a[::-1]),
    ],
)
def test_warp_rotates_and_flips(jpeg_128, warp, reference):
  plain = pipeline.decode_and_crop(jpeg_128, 64, 32)

  warped = pipeline.decode_and_crop(jpeg_128, 64, 32, warp)

  assert np.abs(plain.astype(int) - reference(plain)).mean() > 20
  np.testing.assert_allclose(warped, reference(plain), atol=2)


def test_zoom_magnifies(jpeg_128):
  zoomed = pipeline.decode_and_crop(jpeg_128, 64, 32, pipeline.Warp(zoom=2.0))

  half_crop = pipeline.decode_and_crop(jpeg_128, 32, 32)
  np.testing.assert_allclose(zoomed, half_crop, atol=2)


def test_translation_shifts_content_in_output_pixels(jpeg_128):
  plain = pipeline.decode_and_crop(jpeg_128, 64, 32)

  shifted = pipeline.decode_and_crop(
      jpeg_128, 64, 32, pipeline.Warp(translation=(3.0, -2.0))
  )

  # Content moves 3 px right and 2 px up.
  np.testing.assert_allclose(shifted[:-2, 3:], plain[2:, :-3], atol=2)


def test_color_jitter():
  image = np.full((2, 2, 3), 128, np.uint8)
  image[0, 0] = 64

  jittered = pipeline.ColorJitter(
      brightness=0.4, contrast=2.0, gains=(1.0, 1.0, 0.5)
  ).apply(image)

  gained = image / 255 * np.array([1.0, 1.0, 0.5])
  expected = np.clip((gained - gained.mean()) * 2 + gained.mean() + 0.4, 0, 1)
  assert jittered.dtype == np.float32
  np.testing.assert_allclose(jittered, expected, rtol=1e-5)
  assert jittered.max() == 1.0  # The bright pixels clip.


def test_sample_augmentation_ranges():
  augment = pipeline.default_config().augment
  rng = np.random.default_rng(0)

  samples = [pipeline.sample_augmentation(rng, augment) for _ in range(2000)]

  zooms = np.array([warp.zoom for warp, _ in samples])
  assert zooms.min() >= 1 / 1.3 and zooms.max() <= 1.3
  # Log-uniform: as many zoom-ins as zoom-outs.
  assert abs(np.mean(zooms > 1) - 0.5) < 0.05
  angles = np.array([warp.rotation_degrees for warp, _ in samples])
  assert angles.min() >= 0 and angles.max() < 360 and angles.std() > 90
  assert 0.4 < np.mean([warp.flip_horizontal for warp, _ in samples]) < 0.6
  shifts = np.array([warp.translation for warp, _ in samples])
  assert np.abs(shifts).max() <= 4.0 and shifts.std() > 1.5
  gains = np.array([jitter.gains for _, jitter in samples])
  assert gains.min() >= 0.9 and gains.max() <= 1.1


def test_sample_augmentation_disabled_is_identity():
  augment = pipeline.default_config().augment
  augment.update(
      rotation=False, flip=False, zoom=(1.0, 1.0), translation=0.0,
      brightness=0.0, contrast=0.0, color=0.0,
  )  # fmt: skip

  warp, jitter = pipeline.sample_augmentation(
      np.random.default_rng(0), augment
  )

  assert warp == pipeline.Warp(translation=(0.0, 0.0))
  assert jitter == pipeline.ColorJitter(gains=(1.0, 1.0, 1.0))


# --- Evaluation ---------------------------------------------------------------


def test_eval_pads_the_last_batch(records, jpeg_128):
  config = _config()

  batches = list(
      pipeline.create_eval_iterator(
          records, config, process_index=0, process_count=1
      )
  )

  assert len(batches) == 3 == pipeline.num_eval_batches(10, config, 1)
  masks = np.stack([batch['example_mask'] for batch in batches])
  np.testing.assert_array_equal(masks.ravel(), [True] * 10 + [False] * 2)
  ids = np.concatenate([batch['galaxy_id'] for batch in batches])
  np.testing.assert_array_equal(ids[:10], 1000 + np.arange(10))
  last = batches[-1]
  assert not last['votes_mask'][2:].any()
  np.testing.assert_array_equal(last['image'][2:], 0)
  # No augmentation: the plain crop and resize, normalised to [-1, 1].
  plain = pipeline.decode_and_crop(jpeg_128, 64, 16) / 255 * 2 - 1
  for batch in batches:
    for image, real in zip(batch['image'], batch['example_mask']):
      if real:
        np.testing.assert_allclose(image, plain, atol=1e-6)


def test_eval_batch_contents(records):
  batch = next(
      iter(
          pipeline.create_eval_iterator(
              records, _config(), process_index=0, process_count=1
          )
      )
  )

  assert batch['image'].dtype == np.float32
  assert batch['image'].shape == (4, 16, 16, 3)
  assert batch['votes'].dtype == np.float32
  assert batch['votes'].shape == (4, fields.NUM_VOTES)
  assert not np.isnan(batch['votes']).any()
  np.testing.assert_array_equal(batch['votes'][:, 5:8], 0)
  assert not batch['votes_mask'][:, 5:8].any()
  assert batch['votes_mask'][:, :5].all()
  assert batch['label_3class'].dtype == np.int32
  assert batch['label_7class'].dtype == np.int32
  np.testing.assert_array_equal(batch['label_3class'], [0, 1, 2, 0])
  np.testing.assert_array_equal(batch['label_7class'], -1)
  assert batch['galaxy_id'].dtype == np.int64


def test_eval_shards_partition_records_with_equal_batch_counts(records):
  config = _config(batch_size=6)
  shards = [
      list(
          pipeline.create_eval_iterator(
              records, config, process_index=index, process_count=3
          )
      )
      for index in range(3)
  ]

  assert [len(shard) for shard in shards] == [2, 2, 2]
  assert pipeline.num_eval_batches(10, config, 3) == 2
  real_ids = []
  for shard in shards:
    for batch in shard:
      assert batch['image'].shape[0] == 2
      real_ids.extend(batch['galaxy_id'][batch['example_mask']])
  assert sorted(real_ids) == list(1000 + np.arange(10))
  # Gathered step by step in process order, the records come back in order,
  # padding last.
  gathered = np.concatenate(
      [shard[step]['galaxy_id'] for step in range(2) for shard in shards]
  )
  np.testing.assert_array_equal(gathered[:10], 1000 + np.arange(10))
  np.testing.assert_array_equal(gathered[10:], -1)


def test_eval_is_repeatable(records):
  dataset = pipeline.create_eval_iterator(
      records, _config(), process_index=0, process_count=1
  )

  _assert_batches_equal(list(dataset), list(dataset))


# --- Training: determinism, resumption, sharding ------------------------------


def test_train_same_seed_same_batches_different_seed_different(records):
  def first_batches(seed):
    iterator = pipeline.create_train_iterator(
        records, _config(seed=seed), process_index=0, process_count=1
    )
    return _take(iterator, 3)

  batches = first_batches(seed=7)

  _assert_batches_equal(first_batches(seed=7), batches)
  other = first_batches(seed=8)
  assert not np.array_equal(other[0]['image'], batches[0]['image'])
  assert not all(
      np.array_equal(a['galaxy_id'], b['galaxy_id'])
      for a, b in zip(other, batches)
  )


def test_train_batches_are_augmented_and_shuffled(records):
  batch = next(
      pipeline.create_train_iterator(
          records, _config(), process_index=0, process_count=1
      )
  )

  # Identical source images come out different.
  assert np.abs(batch['image'][0] - batch['image'][1]).mean() > 0.05
  assert batch['example_mask'].all()


def test_train_epochs_are_reshuffled_and_finite(records):
  iterator = pipeline.create_train_iterator(
      records,
      _config(num_epochs=2, augment={'enabled': False}),
      process_index=0,
      process_count=1,
  )

  batches = list(iterator)

  # 20 examples make 5 full batches; each epoch holds every record once.
  assert len(batches) == 5
  ids = np.concatenate([batch['galaxy_id'] for batch in batches])
  first_epoch, second_epoch = ids[:10], ids[10:]
  all_ids = list(1000 + np.arange(10))
  assert sorted(first_epoch) == sorted(second_epoch) == all_ids
  assert not np.array_equal(first_epoch, second_epoch)


def test_train_without_shuffle_is_in_order(records):
  iterator = pipeline.create_train_iterator(
      records, _config(shuffle=False), process_index=0, process_count=1
  )

  ids = [next(iterator)['galaxy_id'] for _ in range(3)]

  np.testing.assert_array_equal(
      np.concatenate(ids), 1000 + np.arange(12) % 10
  )


def test_resume_from_json_state_across_epoch_boundary(records):
  config = _config()
  iterator = pipeline.create_train_iterator(
      records, config, process_index=0, process_count=1
  )
  _take(iterator, 2)
  saved = json.dumps(iterator.get_state())
  # Batch 3 spans the end of epoch 0 and batch 4 lies in epoch 1.
  expected = _take(iterator, 3)

  resumed = pipeline.create_train_iterator(
      records, config, process_index=0, process_count=1
  )
  resumed.set_state(json.loads(saved))

  _assert_batches_equal(_take(resumed, 3), expected)


@pytest.fixture
def absl_flags_parsed():
  """Grain's worker start-up reads absl flags, which pytest never parses.

  Programs run by `absl.app.run` parse them; here the defaults will do.
  """
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


@pytest.mark.usefixtures('absl_flags_parsed')
def test_workers_give_the_same_batches_and_resume(records):
  config = _config(seed=3)
  in_process = pipeline.create_train_iterator(
      records, config, process_index=0, process_count=1
  )
  expected = _take(in_process, 5)

  config.num_workers = 2
  with_workers = pipeline.create_train_iterator(
      records, config, process_index=0, process_count=1
  )
  try:
    _assert_batches_equal(_take(with_workers, 2), expected[:2])
    saved = json.dumps(with_workers.get_state())
  finally:
    with_workers.close()

  resumed = pipeline.create_train_iterator(
      records, config, process_index=0, process_count=1
  )
  try:
    resumed.set_state(json.loads(saved))
    _assert_batches_equal(_take(resumed, 3), expected[2:])
  finally:
    resumed.close()


def test_train_shards_split_each_global_batch(records):
  config = _config(batch_size=4)
  single = _take(
      pipeline.create_train_iterator(
          records, config, process_index=0, process_count=1
      ),
      3,
  )
  iterators = [
      pipeline.create_train_iterator(
          records, config, process_index=index, process_count=2
      )
      for index in range(2)
  ]
  shards = [_take(iterator, 3) for iterator in iterators]
  # One state for every process: a checkpoint keeps process 0's alone.
  assert iterators[0].get_state() == iterators[1].get_state()

  for step, global_batch in enumerate(single):
    halves = [shard[step] for shard in shards]
    assert all(half['image'].shape[0] == 2 for half in halves)
    # Process i holds slice i of the global batch: the processes' batches
    # in process order are the global batch, row for row (the layout
    # make_array_from_process_local_data gives the mesh).
    for key, values in global_batch.items():
      rebuilt = np.concatenate([half[key] for half in halves])
      np.testing.assert_array_equal(rebuilt, values)


# --- Bad input ---------------------------------------------------------------


def test_undecodable_jpeg_names_the_galaxy(records):
  broken = list(records)
  broken[3] = dict(records[3], image=records[3]['image'][:200])

  dataset = pipeline.create_eval_iterator(
      broken, _config(), process_index=0, process_count=1
  )

  with pytest.raises(ValueError, match='galaxy_id 1003'):
    list(dataset)


def test_crop_larger_than_source_is_a_config_error(records):
  with pytest.raises(ValueError, match='crop_size=207'):
    pipeline.create_train_iterator(
        records, _config(crop_size=207), process_index=0, process_count=1
    )
  with pytest.raises(ValueError, match='crop_size=207'):
    pipeline.decode_and_crop(records[0]['image'], 207, 64)


@pytest.mark.parametrize(
    'create', [pipeline.create_train_iterator, pipeline.create_eval_iterator]
)
def test_batch_size_must_divide_by_process_count(records, create):
  with pytest.raises(ValueError, match='batch_size=5'):
    create(records, _config(batch_size=5), process_index=0, process_count=2)


# --- Images wider than 8 bits, and naming a bad image ------------------------


def _encoded(pixels: np.ndarray, fmt: str) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, fmt)
  return buffer.getvalue()


@pytest.fixture(scope='module')
def real_grey(kaggle_sample) -> np.ndarray:
  """A real 424 px cut-out as 8-bit grey levels."""
  path = kaggle_sample / 'images_training_rev1' / '100053.jpg'
  with Image.open(path) as image:
    return np.asarray(image.convert('L'))


@pytest.mark.parametrize('fmt', ['PNG', 'TIFF'])
def test_16_bit_images_scale_by_their_bit_depth(real_grey, records, fmt):
  """Pillow's convert('RGB') clips 16-bit levels: the image came out near
  white (mean 238 for a real cut-out whose mean is 8-14)."""
  wide = _encoded(real_grey.astype(np.uint16) * 257, fmt)
  with Image.open(io.BytesIO(wide)) as image:
    assert image.mode == 'I;16'  # What the pipeline must scale.

  decoded = pipeline.decode_and_crop(wide, 424, 424)

  assert decoded.shape == (424, 424, 3)
  for channel in range(3):
    assert np.abs(decoded[..., channel].astype(int) - real_grey).max() <= 1
  # Training, evaluation and prediction decode it alike (`open_drafted`).
  crop = 207
  config = _config(crop_size=crop, image_size=32, batch_size=2)
  grey = _encoded(real_grey, 'PNG')
  both = [dict(records[0], image=wide), dict(records[1], image=grey)]
  batch = next(iter(pipeline.create_eval_iterator(
      both, config, process_index=0, process_count=1)))
  np.testing.assert_allclose(batch['image'][0], batch['image'][1],
                             atol=2 / 255 + 1e-6)
  assert abs(batch['image'][0].mean() - (real_grey.mean() / 255 * 2 - 1)
             ) < 0.2


@pytest.mark.parametrize('dtype, mode', [(np.float32, 'F'), (np.int32, 'I')])
def test_images_without_a_range_to_scale_are_refused_naming_them(
    real_grey, records, dtype, mode):
  encoded = _encoded(real_grey.astype(dtype) * 257, 'TIFF')
  kind = {'F': '32-bit floating-point',
          'I': 'signed or 32-bit integer'}[mode]
  broken = [records[0], dict(records[1], image=encoded)]

  with pytest.raises(errors.DataError) as info:
    list(pipeline.create_eval_iterator(
        broken, _config(batch_size=2), process_index=0, process_count=1))

  assert str(info.value) == (
      f'galaxy_id 1001: the TIFF image has {kind} pixels (Pillow mode'
      f" '{mode}'), which have no range to scale to 8 bits; save it as an 8-"
      ' or 16-bit PNG, TIFF or JPEG.')


def _label_source(tmp_path, images: dict[str, bytes]) -> labels.LabelSource:
  """A label catalogue of `images` ({id: encoded}), every row for training."""
  (tmp_path / 'img').mkdir()
  lines = ['id,path,spiral,split']
  for galaxy, encoded in images.items():
    (tmp_path / 'img' / f'{galaxy}.jpg').write_bytes(encoded)
    lines.append(f'{galaxy},img/{galaxy}.jpg,1,train')
  (tmp_path / 'labels.csv').write_text('\n'.join(lines) + '\n')
  config = labels.default_config()
  config.catalog = str(tmp_path / 'labels.csv')
  config.path_column = 'path'
  config.split_column = 'split'
  config.columns = {'spiral': 'binary'}
  return labels.LabelSource(labels.read(config), 'train')


@pytest.mark.parametrize('image, problem', [
    (lambda jpeg: jpeg[:3000],
     'cannot decode the image (image file is truncated (0 bytes not'
     ' processed)); replace the file with a readable JPEG or PNG, or leave'
     ' the image out.'),
    (lambda jpeg: b'',
     'cannot decode the image (the file is empty); replace the file with a'
     ' readable JPEG or PNG, or leave the image out.'),
    (lambda jpeg: b'not a jpeg',
     'cannot decode the image (cannot identify image file); replace the file'
     ' with a readable JPEG or PNG, or leave the image out.'),
    (lambda jpeg: _jpeg(np.zeros((16, 16, 3), np.uint8)),
     'crop_size=207 exceeds the 16x16 source image; use images of at least'
     ' 207 px a side or a smaller config.input.crop_size.'),
], ids=['truncated', 'empty', 'not_an_image', 'too_small'])
def test_a_bad_catalogue_image_in_training_names_its_row_id_and_path(
    kaggle_sample, tmp_path, image, problem):
  """Found when its batch comes, the image is named as the user knows it:
  the catalogue's row, the id and the path, not the internal row index."""
  jpeg = (kaggle_sample / 'images_training_rev1' / '100053.jpg').read_bytes()
  source = _label_source(tmp_path, {'100053': jpeg, '101997': image(jpeg)})
  config = _config(crop_size=207, batch_size=2, shuffle=False)
  iterator = pipeline.create_train_iterator(source, config, process_index=0,
                                            process_count=1)

  with pytest.raises(errors.GzjaxError) as info:
    next(iterator)

  catalogue = tmp_path / 'labels.csv'
  assert str(info.value) == (
      f"{catalogue}, line 3 (id '101997'), image {tmp_path}/img/101997.jpg:"
      f' {problem}')


def test_a_bad_first_image_is_named_when_the_iterator_is_made(records):
  """The crop check reads the first record's header: an empty file there is
  the same one line, not Pillow's error from inside the library."""
  broken = [dict(records[0], image=b'')] + records[1:]

  with pytest.raises(errors.DataError) as info:
    pipeline.create_train_iterator(broken, _config(), process_index=0,
                                   process_count=1)

  assert str(info.value) == (
      'galaxy_id 1000: cannot decode the image (the file is empty); the built'
      ' dataset is damaged: rebuild it (python -m gzjax.data.build).')


def test_a_built_datasets_bad_image_names_its_galaxy_id_without_addresses(
    records):
  broken = list(records)
  broken[3] = dict(records[3], image=b'not a jpeg')

  with pytest.raises(errors.DataError) as info:
    list(pipeline.create_eval_iterator(broken, _config(), process_index=0,
                                       process_count=1))

  assert str(info.value) == (
      'galaxy_id 1003: cannot decode the image (cannot identify image file);'
      ' the built dataset is damaged: rebuild it (python -m'
      ' gzjax.data.build).')


def test_a_small_image_in_an_image_folder_names_its_file(kaggle_sample,
                                                         tmp_path):
  images = kaggle_sample / 'images_training_rev1'
  (tmp_path / '100053.jpg').write_bytes((images / '100053.jpg').read_bytes())
  (tmp_path / '100054.png').write_bytes(
      _encoded(np.zeros((100, 100), np.uint16), 'PNG'))
  source = catalog.ImageFolder(tmp_path)

  with pytest.raises(errors.ConfigError) as info:
    list(pipeline.create_eval_iterator(
        source, _config(crop_size=207, batch_size=2), process_index=0,
        process_count=1))

  assert str(info.value) == (
      f'{tmp_path}/100054.png (GalaxyID 100054): crop_size=207 exceeds the'
      ' 100x100 source image; use images of at least 207 px a side or a'
      ' smaller config.input.crop_size.')
