"""Training losses against values worked out by hand on tiny batches.

Each expected value is the arithmetic written out (float64 numpy), compared
with the float32 jnp loss at a float32 tolerance.  Masked cells carry large
errors so that counting them, or treating them as zero targets, would fail.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gzjax import losses

RTOL = 1e-5


def _close(actual, expected):
  np.testing.assert_allclose(np.asarray(actual), expected, rtol=RTOL,
                             atol=1e-7)


# --- shared vote batch -------------------------------------------------------

# Row 0: answer 2 unknown; row 1: all known; row 2: padding.
PREDICTIONS = np.array([[0.1, 0.5, 0.9],
                        [0.4, 0.2, 0.0],
                        [9.0, 9.0, 9.0]], np.float32)
VOTES = np.array([[0.0, 0.2, 0.0],
                  [0.0, 0.0, 0.0],
                  [0.0, 0.0, 0.0]], np.float32)
VOTES_MASK = np.array([[True, True, False],
                       [True, True, True],
                       [True, True, True]])
EXAMPLE_MASK = np.array([True, True, False])
# Known cells of real rows: errors 0.1, 0.3 | 0.4, 0.2, 0.0.
MSE_BY_HAND = (0.1**2 + 0.3**2 + 0.4**2 + 0.2**2 + 0.0**2) / 5


# --- masked_mse --------------------------------------------------------------


def test_masked_mse_over_known_answers_of_real_rows():
  _close(losses.masked_mse(PREDICTIONS, VOTES, VOTES_MASK, EXAMPLE_MASK),
         MSE_BY_HAND)


def test_masked_mse_gives_masked_cells_no_gradient():
  # d/dp of sum(w (p - v)^2) / 5 is 2 w (p - v) / 5: zero where w is 0.
  grad = jax.grad(losses.masked_mse)(
      jnp.asarray(PREDICTIONS), VOTES, VOTES_MASK, EXAMPLE_MASK)
  expected = np.array([[2 * 0.1 / 5, 2 * 0.3 / 5, 0.0],
                       [2 * 0.4 / 5, 2 * 0.2 / 5, 0.0],
                       [0.0, 0.0, 0.0]])
  _close(grad, expected)


def test_masked_mse_fully_masked_is_zero():
  # The safe mean divides by max(count, 1): 0, not NaN, for an empty batch.
  no_rows = losses.masked_mse(PREDICTIONS, VOTES, VOTES_MASK,
                              np.zeros(3, bool))
  no_answers = losses.masked_mse(PREDICTIONS, VOTES, np.zeros((3, 3), bool),
                                 EXAMPLE_MASK)
  assert float(no_rows) == 0.0
  assert float(no_answers) == 0.0


# --- masked_bce --------------------------------------------------------------


def test_masked_bce_single_value():
  p, y = 0.7, 0.2
  expected = -(y * np.log(p) + (1 - y) * np.log(1 - p))
  value = losses.masked_bce(np.array([[p]], np.float32),
                            np.array([[y]], np.float32),
                            np.array([[True]]), np.array([True]))
  _close(value, expected)


def test_masked_bce_mean_over_known_answers_of_real_rows():
  probabilities = np.array([[0.8, 0.3], [0.5, 0.9], [0.1, 0.1]], np.float32)
  votes = np.array([[1.0, 0.25], [0.6, 0.0], [1.0, 1.0]], np.float32)
  votes_mask = np.array([[True, True], [True, False], [True, True]])
  example_mask = np.array([True, True, False])
  cell_00 = -np.log(0.8)
  cell_01 = -(0.25 * np.log(0.3) + 0.75 * np.log(0.7))
  cell_10 = -(0.6 * np.log(0.5) + 0.4 * np.log(0.5))  # = log 2
  expected = (cell_00 + cell_01 + cell_10) / 3
  _close(losses.masked_bce(probabilities, votes, votes_mask, example_mask),
         expected)


def test_masked_bce_clips_probabilities():
  # p = 0 with target 1 would be inf; clipping at eps=1e-7 gives -log(1e-7).
  value = losses.masked_bce(np.array([[0.0]], np.float32),
                            np.array([[1.0]], np.float32),
                            np.array([[True]]), np.array([True]))
  assert np.isfinite(float(value))
  np.testing.assert_allclose(float(value), -np.log(1e-7), rtol=1e-4)


def test_masked_bce_fully_masked_is_zero():
  value = losses.masked_bce(np.array([[0.5]], np.float32),
                            np.array([[1.0]], np.float32),
                            np.array([[False]]), np.array([True]))
  assert float(value) == 0.0


# --- softmax_cross_entropy ---------------------------------------------------

# Rows 0-2 count (classes 0, 2, 1); row 3 has no class; row 4 is padding.
LOGITS = np.array([[2.0, 1.0, 0.0],
                   [0.0, 1.0, 3.0],
                   [1.0, 0.0, 1.0],
                   [1.0, 3.0, 0.0],
                   [5.0, 0.0, 0.0]], np.float32)
LABELS = np.array([0, 2, 1, -1, 1])
LABEL_MASK = np.array([True, True, True, True, False])
LSE = [np.log(np.exp(2) + np.exp(1) + 1),   # log-sum-exp of row 0
       np.log(1 + np.exp(1) + np.exp(3)),   # row 1
       np.log(2 * np.exp(1) + 1)]           # row 2
# Cross-entropy = lse - logit of the true class.
CE = [LSE[0] - 2.0, LSE[1] - 3.0, LSE[2] - 0.0]


def test_softmax_cross_entropy_plain():
  value = losses.softmax_cross_entropy(LOGITS, LABELS, LABEL_MASK)
  _close(value, (CE[0] + CE[1] + CE[2]) / 3)


def test_softmax_cross_entropy_label_smoothing():
  # optax.smooth_labels: target = (1 - a) * onehot + a / K, with a=0.1, K=3.
  a, k = 0.1, 3
  on, off = 1 - a + a / k, a / k
  # CE = -sum_k target_k * (logit_k - lse).
  row0 = -(on * (2 - LSE[0]) + off * (1 - LSE[0]) + off * (0 - LSE[0]))
  row1 = -(off * (0 - LSE[1]) + off * (1 - LSE[1]) + on * (3 - LSE[1]))
  row2 = -(off * (1 - LSE[2]) + on * (0 - LSE[2]) + off * (1 - LSE[2]))
  value = losses.softmax_cross_entropy(LOGITS, LABELS, LABEL_MASK,
                                       label_smoothing=a)
  _close(value, (row0 + row1 + row2) / 3)
  # Smoothing must actually change the loss here.
  assert abs(float(value) - (CE[0] + CE[1] + CE[2]) / 3) > 1e-3


def test_softmax_cross_entropy_class_weights_are_a_weighted_mean():
  weights = (1.0, 2.0, 0.5)
  # Row classes 0, 2, 1 -> weights 1.0, 0.5, 2.0; rows 3-4 weigh nothing
  # (row 3's label -1 must not pick up class 0's weight).
  expected = (1.0 * CE[0] + 0.5 * CE[1] + 2.0 * CE[2]) / (1.0 + 0.5 + 2.0)
  value = losses.softmax_cross_entropy(LOGITS, LABELS, LABEL_MASK,
                                       class_weights=weights)
  _close(value, expected)


def test_softmax_cross_entropy_nothing_labelled_is_zero():
  no_labels = losses.softmax_cross_entropy(LOGITS, np.full(5, -1), LABEL_MASK)
  no_rows = losses.softmax_cross_entropy(LOGITS, LABELS, np.zeros(5, bool),
                                         class_weights=(1.0, 2.0, 0.5))
  assert float(no_labels) == 0.0
  assert float(no_rows) == 0.0


# --- compute -----------------------------------------------------------------


def _batch():
  return {
      'votes': VOTES,
      'votes_mask': VOTES_MASK,
      'example_mask': LABEL_MASK[:3],
      'label_3class': LABELS[:3],
      # A different labelling to show label_key picks the column.
      'label_7class': np.array([1, 1, 1]),
  }


def test_compute_dispatches_mse_and_bce():
  batch = dict(_batch(), example_mask=EXAMPLE_MASK)
  _close(losses.compute('mse', PREDICTIONS, batch), MSE_BY_HAND)
  probabilities = np.full((3, 3), 0.5, np.float32)
  # Every known real cell: -(v log .5 + (1 - v) log .5) = log 2.
  _close(losses.compute('bce', probabilities, batch), np.log(2))


def test_compute_dispatches_softmax_with_options():
  batch = _batch()
  logits = LOGITS[:3]
  _close(losses.compute('softmax', logits, batch),
         (CE[0] + CE[1] + CE[2]) / 3)
  # label_7class says class 1 for every row: CE = lse - logit[1].
  _close(losses.compute('softmax', logits, batch, label_key='label_7class'),
         ((LSE[0] - 1) + (LSE[1] - 1) + (LSE[2] - 0)) / 3)
  _close(losses.compute('softmax', logits, batch,
                        class_weights=(1.0, 2.0, 0.5)),
         (1.0 * CE[0] + 0.5 * CE[1] + 2.0 * CE[2]) / 3.5)
  smoothed = losses.compute('softmax', logits, batch, label_smoothing=0.1)
  _close(smoothed, losses.softmax_cross_entropy(
      logits, LABELS[:3], LABEL_MASK[:3], label_smoothing=0.1))
  assert abs(float(smoothed) - (CE[0] + CE[1] + CE[2]) / 3) > 1e-3


def test_compute_unknown_kind_raises():
  assert losses.LOSSES == ('mse', 'bce', 'softmax')
  with pytest.raises(ValueError, match=r"Unknown loss 'hinge'.*mse"):
    losses.compute('hinge', PREDICTIONS, _batch())


def test_masked_bce_clips_the_top_end_too():
  # Found by mutation testing (BUILD.md): p = 1 with target 0 is the mirror
  # case; clipping at 1 - eps keeps it finite.  1 - 1e-7 rounds to
  # 1 - 2**-23 in float32, so the loss is -log(2**-23).
  value = losses.masked_bce(np.array([[1.0]], np.float32),
                            np.array([[0.0]], np.float32),
                            np.array([[True]]), np.array([True]))
  np.testing.assert_allclose(float(value), 23 * np.log(2), rtol=1e-4)


def test_softmax_cross_entropy_of_bfloat16_logits_is_computed_in_float32():
  # Found by mutation testing (BUILD.md): a bfloat16 model's logits (exact
  # in bfloat16 here) must give the float32 loss, not bfloat16's 3 digits.
  value = losses.softmax_cross_entropy(jnp.asarray(LOGITS, jnp.bfloat16),
                                       LABELS, LABEL_MASK)
  assert value.dtype == jnp.float32
  np.testing.assert_allclose(float(value), (CE[0] + CE[1] + CE[2]) / 3,
                             rtol=1e-6)
