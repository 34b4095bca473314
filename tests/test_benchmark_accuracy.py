"""tools/benchmark_accuracy.py, shrunk: every row of its tables, real values."""

import csv
import json
import math
import subprocess
import sys

import numpy as np

from gzjax.data import galaxy_zoo
from tests.conftest import REPO

SPIRAL_IMAGES = 200


def _votes(data_dir, split):
  records = galaxy_zoo.data_source('kaggle', data_dir, split)
  votes = np.stack([np.asarray(r['votes'], np.float64) for r in records])
  return votes, np.stack([np.asarray(r['votes_mask']) for r in records])


def test_benchmark_accuracy_tables(kaggle_sample, kaggle_sample_data_dir,
                                   tmp_path):
  result = subprocess.run(
      [sys.executable, 'tools/benchmark_accuracy.py',
       f'--manual_dir={kaggle_sample}', f'--data_dir={kaggle_sample_data_dir}',
       f'--out={tmp_path}', f'--json={tmp_path / "result.json"}',
       '--models=cnn', '--cnn_steps=2', f'--spiral_images={SPIRAL_IMAGES}',
       '--spiral_steps=2', '--spiral_image_size=32'],
      capture_output=True, text=True, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  assert '| votes model | validation RMSE |' in result.stdout
  assert '| spiral check | validation accuracy |' in result.stdout
  report = json.loads((tmp_path / 'result.json').read_text())
  votes = {row['name']: row for row in report['votes']}
  cnn = 'seed CNN, scratch, 32 px, 2 steps'
  assert list(votes) == [
      'training mean', 'central 6x6 px colour, linear regression',
      'central 6x6 px colour, 25-nearest neighbours', cnn, cnn + ' + TTA']
  assert all(math.isfinite(row['value']) and row['count'] == 58
             for row in report['votes'])
  assert votes[cnn]['value'] != votes[cnn + ' + TTA']['value']

  # The mean predictor, by hand: per-answer means of the known training
  # votes, scored over the known validation answers.
  train_votes, train_known = _votes(kaggle_sample_data_dir, 'train')
  truth, known = _votes(kaggle_sample_data_dir, 'validation')
  mean = np.array([train_votes[train_known[:, j], j].mean()
                   if train_known[:, j].any() else 0.0 for j in range(37)])
  by_hand = math.sqrt(np.mean((np.broadcast_to(mean, truth.shape)[known]
                               - truth[known]) ** 2))
  assert math.isclose(votes['training mean']['value'], by_hand, rel_tol=1e-12)
  assert round(by_hand, 3) == 0.191  # README: 0.191 on the real sample.
  # The centre's colour carries information: both baselines beat the mean.
  for row in report['votes'][1:3]:
    assert row['value'] < by_hand

  # Spiral: the majority baseline by hand, on the same hash split.
  with open(kaggle_sample / 'spiral_labels.csv') as f:
    rows = list(csv.DictReader(f))[:SPIRAL_IMAGES]
  ids = np.array([int(r['GalaxyID']) for r in rows])
  labels = np.array([int(r['spiral']) for r in rows])
  validation = galaxy_zoo.is_validation(ids, 10)
  majority = int(labels[~validation].mean() > 0.5)
  spiral = report['spiral']
  assert len(spiral) == 4
  assert spiral[0]['value'] == np.mean(labels[validation] == majority)
  assert spiral[0]['count'] == validation.sum()
  # None of the validation galaxies trained the vote model: all are scored.
  for row in spiral[1:]:
    assert 0 <= row['value'] <= 1 and row['count'] == validation.sum()
  assert report['vote_model_thresholded'] in votes
