"""The galaxy_zoo/synthetic builder: same features and splits as kaggle."""

import io

import numpy as np
import pytest
from PIL import Image

from gzjax import errors
from gzjax import taxonomy
from gzjax.data import galaxy_zoo
from gzjax.data import synthetic

OPTIONS = dict(num_labelled=60, num_test=6, image_size=64, seed=3)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('synthetic')
  galaxy_zoo.prepare('synthetic', data_dir, num_workers=2, **OPTIONS)
  return data_dir


def _records(data_dir, split):
  source = galaxy_zoo.data_source('synthetic', data_dir, split)
  return sorted((source[i] for i in range(len(source))),
                key=lambda r: int(r['galaxy_id']))


def test_labelled_splits(data_dir):
  train, validation = (_records(data_dir, s) for s in ('train', 'validation'))
  ids = np.array([int(r['galaxy_id']) for r in train + validation])
  assert sorted(ids) == list(range(1_000_000, 1_000_060))
  in_validation = galaxy_zoo.is_validation(ids, 10.0)
  assert in_validation.tolist() == [False] * len(train) + [True] * len(
      validation)
  votes = np.stack([r['votes'] for r in train + validation])
  assert all(r['votes_mask'].all() for r in train + validation)
  assert all(
      r.inconsistent == 0
      for r in taxonomy.consistency_report(votes, tolerance=1e-6))
  labels3 = [int(r['label_3class']) for r in train + validation]
  labels7 = [int(r['label_7class']) for r in train + validation]
  assert labels3 == taxonomy.three_class_labels(votes).tolist()
  assert labels7 == taxonomy.seven_class_labels(votes).tolist()


def test_images_are_the_generator_jpegs_unchanged(data_dir):
  for record in _records(data_dir, 'train')[:5]:
    galaxy = synthetic.render_galaxy(3, int(record['galaxy_id']),
                                     image_size=64)
    assert record['image'] == galaxy.jpeg
    np.testing.assert_array_equal(record['votes'], galaxy.votes)
    with Image.open(io.BytesIO(record['image'])) as image:
      assert (image.format, image.size, image.mode) == ('JPEG', (64, 64),
                                                        'RGB')


def test_test_split_is_unlabelled(data_dir):
  test = _records(data_dir, 'test')
  assert [int(r['galaxy_id']) for r in test] == list(
      range(5_000_000, 5_000_006))
  for r in test:
    assert np.isnan(r['votes']).all() and not r['votes_mask'].any()
    assert (r['label_3class'], r['label_7class']) == (-1, -1)


def test_build_is_deterministic_whatever_the_workers(data_dir, tmp_path):
  galaxy_zoo.prepare('synthetic', tmp_path, num_workers=1, **OPTIONS)
  for split in ('train', 'validation', 'test'):
    again = _records(tmp_path, split)
    first = _records(data_dir, split)
    assert [r['image'] for r in again] == [r['image'] for r in first]
    np.testing.assert_array_equal(
        np.stack([r['votes'] for r in again]),
        np.stack([r['votes'] for r in first]))


def test_metadata_records_the_universe(data_dir):
  info = galaxy_zoo.builder('synthetic', data_dir).info
  assert info.metadata['synthetic'] == {'seed': 3, 'image_size': 64}
  assert info.metadata['answers'] == list(taxonomy.ANSWERS)


def test_rebuild_keeps_or_overwrites(data_dir, tmp_path):
  galaxy_zoo.prepare('synthetic', tmp_path, num_workers=1, **OPTIONS)
  again = galaxy_zoo.prepare('synthetic', tmp_path, num_workers=1, **OPTIONS)
  assert not again.report.votes  # Found on disk: nothing was generated.
  assert 'already built' in galaxy_zoo.summarize(again)
  assert sum(s.num_examples for s in again.info.splits.values()) == 66
  # Other options without --overwrite: refused, naming the difference, and
  # the dataset on disk is the old one (it used to be kept silently and
  # reported as if built with the new options).
  with pytest.raises(errors.DataError, match='num_labelled 60 -> 30'):
    galaxy_zoo.prepare('synthetic', tmp_path, num_workers=1,
                       **dict(OPTIONS, num_labelled=30))
  kept = galaxy_zoo.prepare('synthetic', tmp_path, num_workers=1, **OPTIONS)
  assert sum(s.num_examples for s in kept.info.splits.values()) == 66
  rebuilt = galaxy_zoo.prepare('synthetic', tmp_path, num_workers=1, overwrite=True,
                        **dict(OPTIONS, num_labelled=30))
  assert sum(s.num_examples for s in rebuilt.info.splits.values()) == 36
  assert not list(tmp_path.rglob('incomplete*'))


def test_a_build_leaves_no_temporary_directories(tmp_path, monkeypatch):
  # TFDS's own lookup on its public bucket left an empty /tmp/tmp*tfds for
  # every builder of an unbuilt dataset.
  scratch = tmp_path / 'tmp'
  scratch.mkdir()
  monkeypatch.setattr('tempfile.tempdir', str(scratch))
  galaxy_zoo.prepare('synthetic', tmp_path / 'data', num_workers=1,
                     **dict(OPTIONS, num_labelled=4, num_test=1))
  assert list(scratch.iterdir()) == []
