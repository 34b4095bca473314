"""Simulated Galaxy Zoo volunteers: votes from a galaxy's true morphology.

:func:`simulate_votes` has 30–50 volunteers walk the Galaxy Zoo 2 decision
tree about a :class:`~gzjax.data.synthetic.morphology.Morphology`, each with a
personal skill scaling how plainly the galaxy shows.  Arithmetic only, so the
votes are exact counts, identical on every machine.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from gzjax import taxonomy
from gzjax.data.synthetic.morphology import BULGE_SHAPES
from gzjax.data.synthetic.morphology import Morphology
from gzjax.data.synthetic.morphology import ODD_FEATURES
from gzjax.data.synthetic.morphology import WINDINGS

# ------------------------------------------------------------------- votes ---

# An answer model maps (morphology, clarity of each volunteer asked) to
# unnormalised answer weights ``[volunteers, answers]``.  Weights are built
# from arithmetic only; normalisation happens by a sequential cumulative sum.
AnswerModel = Callable[[Morphology, np.ndarray], np.ndarray]


def _columns(c: np.ndarray, *weights) -> np.ndarray:
  """Stacks answer weights (scalars or per volunteer) into ``[len(c), n]``."""
  return np.stack(
      [np.broadcast_to(np.asarray(w, np.float64), c.shape) for w in weights],
      axis=1,
  )


def _ordinal(c: np.ndarray, truth: int, num: int, hit) -> np.ndarray:
  """``hit`` on the true answer, the rest on the others by 1/distance²."""
  weights = [0.0 if i == truth else 1.0 / (i - truth) ** 2 for i in range(num)]
  spread = sum(weights)
  miss = 1.0 - hit
  return _columns(c, *[
      hit if i == truth else miss * (w / spread) for i, w in enumerate(weights)
  ])


def _categorical(c: np.ndarray, truth: int, num: int, hit) -> np.ndarray:
  """``hit`` on the true answer, the rest shared equally by the others."""
  miss = (1.0 - hit) / (num - 1)
  return _columns(c, *[hit if i == truth else miss for i in range(num)])


def _q1_smooth_features_star(m: Morphology, c: np.ndarray) -> np.ndarray:
  blur = 1.0 - c
  if m.kind == 'elliptical':
    features = 0.03 + 0.04 * blur
    star = 0.01 + 0.03 * blur
  elif m.kind == 'spiral':
    # Faint small spirals and bulge-dominated disks look smooth.
    bulge_look = 1.0 - 0.35 * m.bulge_fraction * m.bulge_fraction
    features = (0.08 + 0.9 * c) * bulge_look
    star = 0.005
  elif m.kind == 'edge_on':
    features = 0.25 + 0.74 * c
    star = 0.005 + 0.01 * blur
  elif m.kind in ('irregular', 'merger'):
    features = 0.35 + 0.62 * c
    star = 0.01 + 0.03 * blur
  else:  # star, artifact
    star = 0.8 + 0.18 * c
    features = 0.3 * (1.0 - star)
  return _columns(c, 1.0 - features - star, features, star)


def _q2_edge_on(m: Morphology, c: np.ndarray) -> np.ndarray:
  if m.kind == 'edge_on':
    yes = 0.55 + 0.43 * c
  elif m.kind in ('spiral', 'elliptical'):
    # Inclined disks and flattened spheroids pass for edge-on now and then.
    yes = 0.03 + 1.2 * max(0.0, 0.5 - m.axis_ratio)
  elif m.artifact == 'trail':
    yes = 0.4
  else:
    yes = 0.05 + 0.05 * (1.0 - c)
  return _columns(c, yes, 1.0 - yes)


def _q3_bar(m: Morphology, c: np.ndarray) -> np.ndarray:
  yes = 0.3 + 0.68 * c if m.bar else 0.03 + 0.12 * (1.0 - c)
  return _columns(c, yes, 1.0 - yes)


def _q4_spiral(m: Morphology, c: np.ndarray) -> np.ndarray:
  if m.n_arms:
    yes = 0.25 + 0.73 * c
  elif m.kind == 'merger':  # tidal tails look like arms
    yes = 0.25
  else:
    yes = 0.04 + 0.12 * (1.0 - c)
  return _columns(c, yes, 1.0 - yes)


def _q5_bulge_prominence(m: Morphology, c: np.ndarray) -> np.ndarray:
  truth = sum(m.bulge_fraction >= edge for edge in (0.08, 0.3, 0.6))
  return _ordinal(c, truth, 4, 0.4 + 0.5 * c)


def _q6_odd(m: Morphology, c: np.ndarray) -> np.ndarray:
  if m.kind in ('irregular', 'merger'):
    yes = 0.5 + 0.48 * c
  elif m.odd_feature:
    yes = 0.3 + 0.65 * c
  else:
    yes = 0.03 + 0.08 * (1.0 - c)
  return _columns(c, yes, 1.0 - yes)


def _q7_roundness(m: Morphology, c: np.ndarray) -> np.ndarray:
  if m.artifact in ('trail', 'column'):
    truth = 2
  else:
    truth = sum(m.axis_ratio < edge for edge in (0.48, 0.78))
  return _ordinal(c, truth, 3, 0.55 + 0.43 * c)


def _q8_odd_feature(m: Morphology, c: np.ndarray) -> np.ndarray:
  if m.odd_feature:
    truth = ODD_FEATURES.index(m.odd_feature)
    return _categorical(c, truth, 7, 0.45 + 0.52 * c)
  # Volunteers who saw an odd feature that is not there mostly say 'other'.
  return _ordinal(c, ODD_FEATURES.index('other'), 7, 0.4)


def _q9_bulge_shape(m: Morphology, c: np.ndarray) -> np.ndarray:
  if m.kind == 'edge_on':
    return _categorical(c, BULGE_SHAPES.index(m.bulge_shape), 3, 0.5 + 0.45 * c)
  return _columns(c, 0.6, 0.15, 0.25)


def _q10_winding(m: Morphology, c: np.ndarray) -> np.ndarray:
  if m.winding:
    return _ordinal(c, WINDINGS.index(m.winding), 3, 0.45 + 0.45 * c)
  return _columns(c, 1.0, 1.0, 1.0)


def _q11_arm_count(m: Morphology, c: np.ndarray) -> np.ndarray:
  if m.n_arms:
    cant_tell = 0.05 + 0.45 * (1.0 - c)
    counts = _ordinal(c, m.n_arms - 1, 5, 0.35 + 0.6 * c)
  else:
    cant_tell = np.full_like(c, 0.6)
    counts = _ordinal(c, 1, 5, 0.4)
  return np.concatenate(
      [counts * (1.0 - cant_tell)[:, None], cant_tell[:, None]], axis=1
  )


_ANSWER_MODELS: dict[int, AnswerModel] = {
    1: _q1_smooth_features_star,
    2: _q2_edge_on,
    3: _q3_bar,
    4: _q4_spiral,
    5: _q5_bulge_prominence,
    6: _q6_odd,
    7: _q7_roundness,
    8: _q8_odd_feature,
    9: _q9_bulge_shape,
    10: _q10_winding,
    11: _q11_arm_count,
}


def simulate_votes(
    morphology: Morphology, rng: np.random.Generator
) -> np.ndarray:
  """Kaggle cumulative vote fractions from 30–50 simulated volunteers.

  Each volunteer walks the decision tree (Q1, then the questions its answers
  lead to; Q6 always), answering from the true morphology with a personal
  skill that scales the galaxy's clarity.  A value is the number of volunteers
  who gave that answer over the number of volunteers, so each question's
  answers sum exactly to its parent answer's value (1 for Q1 and Q6), and a
  question nobody reached has all zeros.

  Returns:
    float32[37], multiples of ``1 / n`` for the drawn ``n``.
  """
  num_volunteers = int(rng.integers(30, 51))
  skill = 0.75 + 0.5 * rng.random(num_volunteers)
  clarity = np.minimum(1.0, morphology.clarity * skill)
  answers = np.full((taxonomy.NUM_QUESTIONS, num_volunteers), -1, np.int8)
  counts = np.zeros(taxonomy.NUM_ANSWERS, np.int64)
  for question in taxonomy.TREE_ORDER:
    if question.parent is None:
      reached = np.ones(num_volunteers, bool)
    else:
      parent = taxonomy.index(question.parent)
      parent_question = taxonomy.QUESTIONS[taxonomy.QUESTION_OF_ANSWER[parent]]
      reached = answers[parent_question.number - 1] == (
          parent - parent_question.start
      )
    if not reached.any():
      continue
    weights = _ANSWER_MODELS[question.number](morphology, clarity[reached])
    cumulative = np.cumsum(weights, axis=1)  # sequential, hence bit-exact
    target = rng.random(len(weights)) * cumulative[:, -1]
    choice = (target[:, None] >= cumulative[:, :-1]).sum(axis=1)
    answers[question.number - 1, reached] = choice
    counts[question.slice] += np.bincount(
        choice, minlength=len(question.answers)
    )
  return (counts / num_volunteers).astype(np.float32)

