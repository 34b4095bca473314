"""Evaluation metrics against values worked out by hand on tiny arrays.

Every expected number is written as the arithmetic that produces it, so a
test reads as its own derivation and fails on any change of definition.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from gzjax import metrics
from gzjax import taxonomy


# --- vote_rmse ---------------------------------------------------------------


def test_vote_rmse_without_mask_uses_every_cell():
  predictions = np.array([[0.1, 0.5], [0.2, 0.0]])
  votes = np.array([[0.0, 0.2], [0.2, 0.4]])
  # Errors 0.1, 0.3, 0.0, -0.4 over 4 cells.
  expected = np.sqrt((0.1**2 + 0.3**2 + 0.0**2 + 0.4**2) / 4)
  assert metrics.vote_rmse(predictions, votes) == pytest.approx(expected)


def test_vote_rmse_ignores_unknown_answers():
  # The masked cells carry huge errors: counting them (or counting them as
  # zero error in the denominator) would change the result.
  predictions = np.array([[0.1, 9.0], [0.5, 0.0]])
  votes = np.array([[0.0, 0.0], [0.2, 7.0]])
  mask = np.array([[True, False], [True, False]])
  expected = np.sqrt((0.1**2 + 0.3**2) / 2)
  assert metrics.vote_rmse(predictions, votes, mask) == pytest.approx(expected)


def test_vote_rmse_fully_masked_is_nan():
  # Nothing known: no score, rather than a misleading 0.
  predictions = np.array([[0.1, 0.2]])
  votes = np.array([[0.3, 0.4]])
  mask = np.zeros((1, 2), bool)
  assert math.isnan(metrics.vote_rmse(predictions, votes, mask))


# --- question_rmse -----------------------------------------------------------


def _col(name: str) -> int:
  return taxonomy.index(name)


def test_question_rmse_uses_each_questions_slice():
  """Errors sit on slice boundaries, so an off-by-one slice moves them."""
  assert taxonomy.NUM_ANSWERS == 37
  predictions = np.zeros((2, 37))
  votes = np.zeros((2, 37))
  mask = np.ones((2, 37), bool)
  predictions[0, _col('Class1.1')] = 0.3   # first column of the whole row
  predictions[1, _col('Class8.7')] = 0.7   # last answer of Q8, before Q9
  predictions[0, _col('Class9.1')] = 0.5   # first answer of Q9, after Q8
  predictions[1, _col('Class11.6')] = 0.6  # last column of the whole row
  # Q2 entirely unknown: its (large) errors must not leak anywhere.
  mask[:, taxonomy.QUESTIONS[1].slice] = False
  predictions[:, taxonomy.QUESTIONS[1].slice] = 5.0
  # Q5: one unknown cell with a big error, one known error of 0.2.
  mask[0, _col('Class5.2')] = False
  predictions[0, _col('Class5.2')] = 4.0
  votes[1, _col('Class5.4')] = 0.2

  result = metrics.question_rmse(predictions, votes, mask)

  assert list(result) == [f'Q{n}' for n in range(1, 12)]
  # Question sizes: 3, 2, 2, 2, 4, 2, 3, 7, 3, 3, 6 answers; 2 rows each.
  assert result['Q1'] == pytest.approx(np.sqrt(0.3**2 / (2 * 3)))
  assert math.isnan(result['Q2'])
  assert result['Q5'] == pytest.approx(np.sqrt(0.2**2 / (2 * 4 - 1)))
  assert result['Q8'] == pytest.approx(np.sqrt(0.7**2 / (2 * 7)))
  assert result['Q9'] == pytest.approx(np.sqrt(0.5**2 / (2 * 3)))
  assert result['Q11'] == pytest.approx(np.sqrt(0.6**2 / (2 * 6)))
  for key in ('Q3', 'Q4', 'Q6', 'Q7', 'Q10'):
    assert result[key] == 0.0, key


def test_question_rmse_without_mask_counts_every_answer():
  predictions = np.zeros((2, 37))
  votes = np.zeros((2, 37))
  predictions[0, _col('Class6.1')] = 0.4
  predictions[1, _col('Class6.2')] = 0.2
  result = metrics.question_rmse(predictions, votes)
  assert result['Q6'] == pytest.approx(np.sqrt((0.4**2 + 0.2**2) / 4))
  assert sum(value for key, value in result.items() if key != 'Q6') == 0.0


# --- confusion_matrix --------------------------------------------------------


def test_confusion_matrix_counts_true_by_predicted_and_skips_unlabelled():
  labels = np.array([0, 1, 2, -1, 1, 0])
  predicted = np.array([0, 2, 2, 0, 1, 1])
  matrix = metrics.confusion_matrix(labels, predicted, 3)
  # The -1 row (predicted 0) is dropped; with negative indexing it would
  # otherwise land in row 2.
  np.testing.assert_array_equal(matrix, [[1, 1, 0],
                                         [0, 1, 1],
                                         [0, 0, 1]])
  assert matrix.sum() == 5


def test_confusion_matrix_all_unlabelled_is_zero():
  matrix = metrics.confusion_matrix(np.array([-1, -1]), np.array([0, 1]), 2)
  np.testing.assert_array_equal(matrix, np.zeros((2, 2)))


# --- classification_report ---------------------------------------------------


def test_classification_report_by_hand():
  """3 classes: 'b' is never predicted, 'c' never occurs.

  labels    0 0 0 1 1 -1
  predicted 0 0 2 0 0  1   (the -1 row is ignored, so 'b' stays unpredicted)

  Confusion [true, predicted]: a=[2,0,1], b=[2,0,0], c=[0,0,0].
  """
  labels = np.array([0, 0, 0, 1, 1, -1])
  predicted = np.array([0, 0, 2, 0, 0, 1])
  report = metrics.classification_report(labels, predicted, ('a', 'b', 'c'))

  assert report['confusion_matrix'] == [[2, 0, 1], [2, 0, 0], [0, 0, 0]]
  assert report['count'] == 5
  assert report['accuracy'] == pytest.approx(2 / 5)

  a, b, c = (report['per_class'][n] for n in 'abc')
  # a: 2 right of 4 predicted, of 3 true.
  assert a['precision'] == pytest.approx(2 / 4)
  assert a['recall'] == pytest.approx(2 / 3)
  f1_a = 2 * (1 / 2) * (2 / 3) / (1 / 2 + 2 / 3)
  assert f1_a == pytest.approx(4 / 7)
  assert a['f1'] == pytest.approx(f1_a)
  assert a['support'] == 3
  # b: never predicted -> precision 0 (not NaN); 0 of 2 found.
  assert b == {'precision': 0.0, 'recall': 0.0, 'f1': 0.0, 'support': 2}
  # c: predicted once, wrongly, and no support.
  assert c == {'precision': 0.0, 'recall': 0.0, 'f1': 0.0, 'support': 0}
  # Macro-F1 over the classes with support (a, b) only; with c it would be
  # (4/7 + 0 + 0) / 3 = 4/21.
  assert report['macro_f1'] == pytest.approx((4 / 7 + 0) / 2)
  assert report['macro_f1'] != pytest.approx(4 / 21)


def test_classification_report_mixed_f1():
  """Every class predicted and present; F1 differs from P and R.

  labels    0 1 1 2 2 2
  predicted 0 1 2 2 2 0
  Confusion: [1,0,0], [0,1,1], [1,0,2].
  """
  labels = np.array([0, 1, 1, 2, 2, 2])
  predicted = np.array([0, 1, 2, 2, 2, 0])
  report = metrics.classification_report(labels, predicted, ('x', 'y', 'z'))
  per = report['per_class']
  assert report['accuracy'] == pytest.approx(4 / 6)
  # x: P = 1/2, R = 1/1; y: P = 1/1, R = 1/2; z: P = 2/3, R = 2/3.
  f1_x = 2 * (1 / 2) * 1 / (1 / 2 + 1)
  f1_y = 2 * 1 * (1 / 2) / (1 + 1 / 2)
  f1_z = 2 * (2 / 3) * (2 / 3) / (2 / 3 + 2 / 3)
  assert (per['x']['precision'], per['x']['recall']) == pytest.approx((0.5, 1))
  assert (per['y']['precision'], per['y']['recall']) == pytest.approx((1, 0.5))
  assert (per['z']['precision'], per['z']['recall']) == pytest.approx(
      (2 / 3, 2 / 3))
  assert per['x']['f1'] == pytest.approx(f1_x)
  assert per['y']['f1'] == pytest.approx(f1_y)
  assert per['z']['f1'] == pytest.approx(f1_z)
  assert report['macro_f1'] == pytest.approx((f1_x + f1_y + f1_z) / 3)
  assert report['macro_f1'] == pytest.approx((2 / 3 + 2 / 3 + 2 / 3) / 3)


def test_classification_report_with_no_labelled_rows_is_nan():
  report = metrics.classification_report(
      np.array([-1, -1]), np.array([0, 1]), ('a', 'b'))
  assert report['count'] == 0
  assert math.isnan(report['accuracy'])
  assert math.isnan(report['macro_f1'])
  assert all(v['support'] == 0 for v in report['per_class'].values())


def test_classification_report_low_scores_by_hand():
  # Found by mutation testing (BUILD.md): F1 where precision + recall < 1, a
  # class with support 1, and a class never predicted right.
  labels = [0, 0, 0, 0, 1, 2, 2]
  predicted = [0, 1, 1, 1, 0, 0, 0]
  report = metrics.classification_report(labels, predicted, ['a', 'b', 'c'])
  # a: 1 right of 4 predicted (0.25), of 4 true (0.25): F1 0.25.
  assert report['per_class']['a'] == {'precision': 0.25, 'recall': 0.25,
                                      'f1': 0.25, 'support': 4}
  for name, support in (('b', 1), ('c', 2)):
    assert report['per_class'][name] == {'precision': 0.0, 'recall': 0.0,
                                         'f1': 0.0, 'support': support}
  # Every class has support, b's single row included: (0.25 + 0 + 0) / 3.
  assert report['macro_f1'] == pytest.approx(0.25 / 3, rel=1e-12)
  assert report['accuracy'] == pytest.approx(1 / 7, rel=1e-12)
  assert report['confusion_matrix'] == [[1, 3, 0], [1, 0, 0], [2, 0, 0]]
  assert all(type(v) is int for row in report['confusion_matrix']
             for v in row)
  assert metrics.confusion_matrix(labels, predicted, 3).dtype == np.int64
