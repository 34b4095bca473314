"""The input pipeline on the real sample, read from its ArrayRecord build."""

import csv

import numpy as np

from gzjax.data import galaxy_zoo
from gzjax.data import pipeline


def _config(**overrides):
  config = pipeline.default_config()
  config.image_size = 32
  config.batch_size = 8
  config.update(overrides)
  return config


def test_train_batches_from_real_records(kaggle_sample_data_dir,
                                         kaggle_sample):
  source = galaxy_zoo.data_source('kaggle', kaggle_sample_data_dir, 'train')
  iterator = pipeline.create_train_iterator(
      source, _config(), process_index=0, process_count=1)
  batch = next(iterator)
  assert batch['image'].shape == (8, 32, 32, 3)
  assert batch['image'].dtype == np.float32
  assert -1.0 <= batch['image'].min() and batch['image'].max() <= 1.0
  # The sample knows 17 answers per galaxy; unknown ones arrive as 0, masked.
  assert batch['votes_mask'].sum(axis=1).tolist() == [17] * 8
  assert (batch['votes'][~batch['votes_mask']] == 0).all()
  with open(kaggle_sample / 'training_solutions_partial.csv') as f:
    rows = {int(r['GalaxyID']): r for r in csv.DictReader(f)}
  for galaxy_id, votes in zip(batch['galaxy_id'], batch['votes']):
    assert votes[0] == np.float32(rows[int(galaxy_id)]['Class1.1'])


def test_eval_sees_every_real_galaxy_once(kaggle_sample_data_dir):
  source = galaxy_zoo.data_source('kaggle', kaggle_sample_data_dir,
                                  'validation')
  config = _config(batch_size=16)
  batches = list(pipeline.create_eval_iterator(
      source, config, process_index=0, process_count=1))
  assert len(batches) == pipeline.num_eval_batches(len(source), config, 1)
  ids = np.concatenate([b['galaxy_id'][b['example_mask']] for b in batches])
  assert sorted(ids.tolist()) == sorted(
      int(source[i]['galaxy_id']) for i in range(len(source)))
  # Real galaxies sit in the centre of the cut-out: the centre of the crop is
  # brighter than its border, on average over the split.
  images = np.concatenate([b['image'][b['example_mask']] for b in batches])
  centre = images[:, 12:20, 12:20].mean()
  border = np.concatenate([images[:, :4].ravel(), images[:, -4:].ravel()])
  assert centre > border.mean() + 0.1
