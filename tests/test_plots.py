"""Figures: the text under each galaxy thumbnail, the thumbnails' pixels."""

import io

import numpy as np
from PIL import Image

from gzjax import plots
from gzjax import taxonomy


def test_describe_votes_shows_reached_questions_with_conditional_values():
  conditional = np.zeros(37)
  for q in taxonomy.QUESTIONS:
    conditional[q.slice.stop - 1] = 1.0
  conditional[0:3] = [0.2, 0.7, 0.1]
  conditional[3:5] = [0.1, 0.9]
  votes = taxonomy.conditional_to_cumulative(conditional)
  mask = np.ones(37, bool)
  mask[taxonomy.QUESTIONS[10].slice] = False  # Arm count unknown.
  lines = plots.describe_votes(votes, mask)
  # Q3 and Q4 are reached by 0.63 of the volunteers; Q7 by 0.2 (< 0.3),
  # Q11 is unknown; Q6 is a root.
  assert lines == ['features or disk 0.70', 'edge-on: no 0.90',
                   'bar: no 1.00', 'spiral: no 1.00', 'odd: no 1.00']


def test_a_16_bit_thumbnail_is_scaled_by_its_bit_depth_not_clipped(tmp_path):
  """A 16-bit grey level of 16384 is 64 of 255, as the model sees it
  (pipeline.to_rgb); Pillow's convert('RGB') clipped it to white."""
  buffer = io.BytesIO()
  Image.fromarray(np.full((64, 64), 16384, np.uint16)).save(buffer, 'PNG')
  record = {'image': buffer.getvalue(), 'galaxy_id': 1,
            'votes': np.full(37, np.nan, np.float32),
            'votes_mask': np.zeros(37, bool), 'label_3class': -1,
            'label_7class': -1}
  path = plots.galaxy_grid([record], tmp_path / 'grid.png', columns=1)
  pixels = np.asarray(Image.open(path).convert('RGB')).astype(int)
  grey = (np.abs(pixels - 64) <= 2).all(-1)
  assert grey.sum() > 5000, grey.sum()  # The thumbnail, not text edges.


def test_learning_curves_draw_a_null_value_as_a_gap(tmp_path):
  """metrics.jsonl writes a value that was not finite as null; the curve
  skips that point (a gap) and keeps the others."""
  log = tmp_path / 'metrics.jsonl'
  log.write_text('{"step": 1, "train/loss": 0.5, "validation/rmse": 0.2}\n'
                 '{"step": 2, "train/loss": null, "validation/rmse": null}\n'
                 '{"step": 3, "train/loss": 0.25, "validation/rmse": 0.1}\n')
  path = plots.learning_curves(log, tmp_path / 'curves.png')
  with Image.open(path) as image:
    assert image.size == (1200, 400)  # Two panels: loss and validation.
