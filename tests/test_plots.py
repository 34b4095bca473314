"""Figures: the text under each galaxy thumbnail."""

import numpy as np

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
