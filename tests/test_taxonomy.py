"""The decision tree: column order, conversions, consistency and labels."""

import csv

import numpy as np
import pytest

from gzjax import taxonomy


def _conditional_row(**answers: float) -> np.ndarray:
  """A 37-row of conditional fractions; unspecified questions get 1 on their
  last answer ... unless listed.  Keys are Kaggle names with '_' for '.'.
  """
  row = np.zeros(taxonomy.NUM_ANSWERS)
  for question in taxonomy.QUESTIONS:
    row[question.slice.stop - 1] = 1.0
  for name, value in answers.items():
    row[taxonomy.index(name.replace('_', '.'))] = value
  return row


def test_answers_are_the_kaggle_columns_in_order():
  assert len(taxonomy.ANSWERS) == 37
  assert taxonomy.ANSWERS[:4] == ('Class1.1', 'Class1.2', 'Class1.3',
                                  'Class2.1')
  assert taxonomy.ANSWERS[-1] == 'Class11.6'
  assert [len(q.answers) for q in taxonomy.QUESTIONS] == [
      3, 2, 2, 2, 4, 2, 3, 7, 3, 3, 6]
  assert taxonomy.ANSWER_NAMES[taxonomy.index('Class8.6')] == 'merger'
  assert taxonomy.ANSWER_NAMES[taxonomy.index('Class11.5')] == (
      'more than 4 arms')


def test_parents_follow_the_kaggle_tree():
  parents = {q.number: q.parent for q in taxonomy.QUESTIONS}
  assert parents == {
      1: None, 2: 'Class1.2', 3: 'Class2.2', 4: 'Class2.2', 5: 'Class2.2',
      6: None, 7: 'Class1.1', 8: 'Class6.1', 9: 'Class2.1', 10: 'Class4.1',
      11: 'Class4.1'}
  order = [q.number for q in taxonomy.TREE_ORDER]
  for q in taxonomy.QUESTIONS:
    if q.parent is not None:
      parent_question = int(q.parent[5:].split('.')[0])
      assert order.index(parent_question) < order.index(q.number)


def test_unknown_answer_name_is_a_clear_error():
  with pytest.raises(KeyError, match='Class12.1.*not a Galaxy Zoo answer'):
    taxonomy.index('Class12.1')


def test_conditional_to_cumulative_by_hand():
  conditional = _conditional_row(
      Class1_1=0.2, Class1_2=0.7, Class1_3=0.1,
      Class2_1=0.4, Class2_2=0.6,
      Class3_1=0.5, Class3_2=0.5,
      Class9_1=1.0, Class9_3=0.0,
      Class4_1=0.25, Class4_2=0.75,
      Class10_1=0.5, Class10_3=0.5,
  )
  cumulative = taxonomy.conditional_to_cumulative(conditional)
  expected = {
      'Class1.2': 0.7, 'Class2.1': 0.28, 'Class2.2': 0.42,
      'Class3.1': 0.21, 'Class9.1': 0.28, 'Class4.1': 0.105,
      'Class10.1': 0.0525, 'Class10.3': 0.0525, 'Class11.6': 0.105,
      'Class7.3': 0.2, 'Class6.2': 1.0, 'Class8.7': 0.0,
  }
  for name, value in expected.items():
    assert cumulative[taxonomy.index(name)] == pytest.approx(value), name


def test_conversions_round_trip_and_keep_unknown():
  rng = np.random.default_rng(0)
  conditional = np.zeros((50, 37))
  for q in taxonomy.QUESTIONS:
    x = rng.random((50, len(q.answers)))
    conditional[:, q.slice] = x / x.sum(1, keepdims=True)
  cumulative = taxonomy.conditional_to_cumulative(conditional)
  np.testing.assert_allclose(
      taxonomy.cumulative_to_conditional(cumulative), conditional, atol=1e-12)
  cumulative[3, taxonomy.index('Class2.2')] = np.nan
  back = taxonomy.cumulative_to_conditional(cumulative)
  # Q2's own answer and the children of A2.2 (Q3, Q4, Q5) become unknown.
  unknown = np.isnan(back[3])
  assert [taxonomy.ANSWERS[i] for i in np.flatnonzero(unknown)] == [
      'Class2.2', 'Class3.1', 'Class3.2', 'Class4.1', 'Class4.2',
      'Class5.1', 'Class5.2', 'Class5.3', 'Class5.4']
  assert taxonomy.known_mask(cumulative).sum() == 50 * 37 - 1


def test_unreached_question_gets_the_undefined_value():
  votes = taxonomy.conditional_to_cumulative(
      _conditional_row(Class1_1=1.0, Class1_2=0.0, Class1_3=0.0))
  assert votes[taxonomy.index('Class2.1')] == 0.0
  conditional = taxonomy.cumulative_to_conditional(votes, undefined=-7.0)
  assert conditional[taxonomy.QUESTIONS[1].slice].tolist() == [-7.0, -7.0]
  assert conditional[taxonomy.index('Class7.3')] == 1.0


def test_wrong_width_is_rejected():
  with pytest.raises(ValueError, match='trailing axis of 37'):
    taxonomy.cumulative_to_conditional(np.zeros((2, 36)))


def test_consistency_report_counts_and_worst_row():
  good = taxonomy.conditional_to_cumulative(_conditional_row(
      Class1_1=0.5, Class1_2=0.5, Class1_3=0.0, Class2_1=0.5, Class2_2=0.5))
  votes = np.stack([good, good.copy(), good.copy(), good.copy()])
  votes[1, taxonomy.index('Class1.1')] += 0.1          # Q1 sums to 1.1.
  votes[2, taxonomy.index('Class3.1')] += 0.002        # Q3: 0.252 vs 0.25.
  votes[3, taxonomy.index('Class7.1')] = np.nan        # Q7 not checkable.
  report = {r.question: r for r in taxonomy.consistency_report(votes)}
  assert (report[1].checked, report[1].inconsistent) == (4, 1)
  assert report[1].worst_deviation == pytest.approx(0.1)
  assert report[1].worst_row == 1
  assert (report[3].inconsistent, report[3].worst_row) == (1, 2)
  assert report[3].worst_deviation == pytest.approx(0.002)
  # Raising A1.1 in row 1 also breaks its child Q7 there; row 3 is unknown.
  assert (report[7].checked, report[7].inconsistent) == (3, 1)
  assert report[7].worst_row == 1
  assert report[2].inconsistent == 0  # Its parent A1.2 was not touched.
  assert taxonomy.consistency_report(votes, tolerance=0.5)[0].inconsistent == 0
  table = taxonomy.format_consistency_report(report.values())
  assert table.splitlines()[1].split() == ['Q1', '4', '1', '1.00e-01']


def test_three_class_labels():
  votes = np.full((5, 37), np.nan)
  votes[:, :3] = [[0.85, 0.10, 0.05], [0.50, 0.45, 0.05], [0.1, 0.1, 0.8],
                  [0.0, 0.95, 0.05], [0.9, np.nan, 0.0]]
  assert taxonomy.three_class_labels(votes).tolist() == [0, -1, 2, 1, -1]
  stricter = taxonomy.ThreeClassThresholds(confidence=0.9)
  assert taxonomy.three_class_labels(votes, stricter).tolist() == [
      -1, -1, -1, 1, -1]


def _seven(**conditional) -> np.ndarray:
  return taxonomy.conditional_to_cumulative(_conditional_row(**conditional))


SMOOTH = dict(Class1_1=0.8, Class1_2=0.2, Class1_3=0.0, Class6_1=0.1,
              Class6_2=0.9)
DISK = dict(Class1_1=0.1, Class1_2=0.9, Class1_3=0.0, Class6_1=0.1,
            Class6_2=0.9)


@pytest.mark.parametrize('label, conditional', [
    (0, dict(SMOOTH, Class7_1=0.7, Class7_2=0.3, Class7_3=0.0)),
    (1, dict(SMOOTH, Class7_1=0.2, Class7_2=0.6, Class7_3=0.2)),
    (2, dict(SMOOTH, Class7_1=0.0, Class7_2=0.3, Class7_3=0.7)),
    (3, dict(DISK, Class2_1=0.8, Class2_2=0.2)),
    (4, dict(DISK, Class2_1=0.1, Class2_2=0.9, Class3_1=0.8, Class3_2=0.2,
             Class4_1=0.7, Class4_2=0.3)),
    (5, dict(DISK, Class2_1=0.1, Class2_2=0.9, Class3_1=0.2, Class3_2=0.8,
             Class4_1=0.7, Class4_2=0.3)),
    (6, dict(Class1_1=0.3, Class1_2=0.7, Class1_3=0.0, Class2_1=0.0,
             Class2_2=1.0, Class4_1=0.0, Class4_2=1.0,
             Class6_1=0.6, Class6_2=0.4,
             Class8_1=0.1, Class8_4=0.6, Class8_7=0.3)),
    (-1, dict(SMOOTH, Class7_1=0.45, Class7_2=0.45, Class7_3=0.1)),
])
def test_seven_class_rules(label, conditional):
  assert taxonomy.seven_class_labels(_seven(**conditional)) == label


def test_seven_class_conflicts_and_cumulative_mode():
  # Smooth 0.5 and features 0.5: both the round and the lenticular rule hold.
  both = _seven(Class1_1=0.5, Class1_2=0.5, Class1_3=0.0, Class6_2=1.0,
                Class6_1=0.0, Class7_1=0.9, Class7_3=0.1, Class2_1=0.9,
                Class2_2=0.1)
  rules = taxonomy.seven_class_rules(both)
  assert rules.tolist() == [True, False, False, True, False, False, False]
  assert taxonomy.seven_class_labels(both) == -1
  first = taxonomy.SevenClassThresholds(on_conflict='first')
  assert taxonomy.seven_class_labels(both, first) == 0
  # A barred spiral by conditional fractions: Class3.1 is 0.9*0.9*0.8=0.648
  # cumulative, below 0.715, so the cumulative reading finds no class.
  barred = _seven(**DISK, Class2_1=0.1, Class2_2=0.9, Class3_1=0.8,
                  Class3_2=0.2, Class4_1=0.7, Class4_2=0.3)
  cumulative = taxonomy.SevenClassThresholds(conditional=False)
  assert taxonomy.seven_class_labels(barred) == 4
  assert taxonomy.seven_class_labels(barred, cumulative) == -1
  with pytest.raises(ValueError, match="on_conflict must be 'reject'"):
    taxonomy.SevenClassThresholds(on_conflict='last')


def test_seven_class_unknown_answers_do_not_fire():
  votes = _seven(**DISK, Class2_1=0.1, Class2_2=0.9, Class3_1=0.8,
                 Class3_2=0.2, Class4_1=0.7, Class4_2=0.3)
  votes[taxonomy.index('Class3.1')] = np.nan
  assert not taxonomy.seven_class_rules(votes)[4]
  assert taxonomy.seven_class_labels(votes) == -1


def test_labels_on_the_real_sample_match_a_plain_loop(kaggle_sample):
  with open(kaggle_sample / 'training_solutions_partial.csv') as f:
    rows = list(csv.DictReader(f))
  votes = np.array([[float(r[a]) if r[a] else np.nan for a in
                     taxonomy.ANSWERS] for r in rows])
  expected_3 = []
  for r in rows:
    q1 = [float(r['Class1.1']), float(r['Class1.2']), float(r['Class1.3'])]
    expected_3.append(int(np.argmax(q1)) if max(q1) >= 0.8 else -1)
  assert taxonomy.three_class_labels(votes).tolist() == expected_3
  expected_round = []
  for r in rows:
    smooth, round_ = float(r['Class1.1']), float(r['Class7.1'])
    expected_round.append(smooth >= 0.469 and smooth > 0 and
                          round_ / smooth >= 0.5 and
                          float(r['Class6.2']) >= 0.5)
  rules = taxonomy.seven_class_rules(votes)
  assert rules[:, 0].tolist() == expected_round
  assert not rules[:, 4:6].any()  # Bar and spiral answers are unknown here.
  report = taxonomy.consistency_report(votes)
  checked = {r.question: r.checked for r in report}
  assert checked == {1: 600, 2: 600, 3: 0, 4: 0, 5: 0, 6: 600, 7: 600,
                     8: 600, 9: 0, 10: 0, 11: 0}
  assert all(r.inconsistent == 0 for r in report)


# ------------------------------------------- mutation-testing survivors ---
# Written against the mutants mutmut left alive (BUILD.md, "Mutation
# testing"): rows in batches, not only one row at a time; the 'first'
# conflict mode with one rule met; edge cases of the report and conversions.


def test_seven_class_labels_of_a_batch_in_both_conflict_modes():
  round_only = _seven(**SMOOTH, Class7_1=0.7, Class7_2=0.3, Class7_3=0.0)
  # Round and cigar both hold (0.5 >= 0.5 each): a conflict.
  round_and_cigar = _seven(**SMOOTH, Class7_1=0.5, Class7_2=0.0,
                           Class7_3=0.5)
  neither = _seven(**SMOOTH, Class7_1=0.45, Class7_2=0.45, Class7_3=0.1)
  unbarred = _seven(**DISK, Class2_1=0.1, Class2_2=0.9, Class3_1=0.2,
                    Class3_2=0.8, Class4_1=0.7, Class4_2=0.3)
  batch = np.stack([round_only, round_and_cigar, neither, unbarred])
  rules = taxonomy.seven_class_rules(batch)
  assert rules.sum(axis=-1).tolist() == [1, 2, 0, 1]
  reject = taxonomy.seven_class_labels(batch)
  assert reject.dtype == np.int64
  assert reject.tolist() == [0, -1, -1, 5]
  first = taxonomy.SevenClassThresholds(on_conflict='first')
  # 'first' keeps a single rule's class too, not only conflicts'.
  assert taxonomy.seven_class_labels(batch, first).tolist() == [0, 0, -1, 5]
  assert taxonomy.seven_class_labels(unbarred, first) == 5


def test_a_disk_seen_half_edge_on_is_no_spiral():
  # Features 0.9 but edge-on no only 0.5 (< 0.715): not a face-on disk, so
  # neither spiral rule fires however spiral and unbarred it looks, and
  # edge-on yes 0.5 (< 0.602) is no lenticular either.
  votes = _seven(**DISK, Class2_1=0.5, Class2_2=0.5, Class3_1=0.0,
                 Class3_2=1.0, Class4_1=1.0, Class4_2=0.0)
  assert not taxonomy.seven_class_rules(votes).any()
  assert taxonomy.seven_class_labels(votes) == -1


def test_three_class_labels_of_one_row():
  row = np.full(37, np.nan)
  row[:3] = [0.1, 0.85, 0.05]
  labels = taxonomy.three_class_labels(row)
  assert labels.shape == () and labels.dtype == np.int64 and labels == 1
  row[2] = np.nan  # Any unknown Q1 answer: no label.
  assert taxonomy.three_class_labels(row) == -1


def test_conversions_default_to_zero_and_float64():
  votes = taxonomy.conditional_to_cumulative(
      _conditional_row(Class1_1=1.0, Class1_2=0.0, Class1_3=0.0))
  # Unreached answers read 0 by default (so no rule fires on them).
  conditional = taxonomy.cumulative_to_conditional(votes)
  assert conditional[taxonomy.QUESTIONS[1].slice].tolist() == [0.0, 0.0]
  # float32 input is converted in float64.
  row = _conditional_row(Class1_1=0.3, Class1_2=0.7, Class1_3=0.0)
  cumulative = taxonomy.conditional_to_cumulative(row.astype(np.float32))
  assert cumulative.dtype == np.float64
  assert cumulative[taxonomy.index('Class2.2')] == np.float32(0.7)


def test_consistency_report_edges():
  # Exactly consistent sums (powers of two) at tolerance 0: nothing flagged.
  exact = taxonomy.conditional_to_cumulative(_conditional_row(
      Class1_1=0.5, Class1_2=0.25, Class1_3=0.25, Class2_1=0.5, Class2_2=0.5))
  report = taxonomy.consistency_report(np.stack([exact, exact]),
                                       tolerance=0.0)
  assert all(q.inconsistent == 0 for q in report)
  assert report[0] == taxonomy.QuestionConsistency(
      question=1, checked=2, inconsistent=0, worst_deviation=0.0,
      worst_row=0)
  # A question no row can be checked for: worst row -1, deviation 0.
  unknown = exact.copy()
  unknown[taxonomy.QUESTIONS[0].slice] = np.nan
  first = taxonomy.consistency_report(unknown)[0]
  assert (first.checked, first.inconsistent, first.worst_deviation,
          first.worst_row) == (0, 0, 0.0, -1)


def test_fill_unknown_puts_nan_where_the_mask_is_false():
  # Had no test at all (mutmut: 14 mutants "no tests").
  votes = np.array([[0.5, 0.25], [1.0, 0.0]], np.float32)
  mask = np.array([[1, 0], [0, 1]])
  filled = taxonomy.fill_unknown(votes, mask)
  assert filled.dtype == np.float64
  np.testing.assert_array_equal(filled, [[0.5, np.nan], [np.nan, 0.0]])
  np.testing.assert_array_equal(taxonomy.fill_unknown(votes, mask, -1.0),
                                [[0.5, -1.0], [-1.0, 0.0]])


@pytest.mark.parametrize('function, name', [
    (taxonomy.cumulative_to_conditional, 'votes'),
    (taxonomy.conditional_to_cumulative, 'conditional'),
    (taxonomy.consistency_report, 'votes'),
    (taxonomy.three_class_labels, 'votes'),
    (taxonomy.seven_class_rules, 'votes'),
])
def test_wrong_width_names_the_argument_and_the_shape(function, name):
  # Mutation testing left the argument's name in these messages unchecked.
  with pytest.raises(ValueError) as info:
    function(np.zeros((2, 36)))
  assert str(info.value) == (
      f'{name} must have a trailing axis of 37 answers (Class1.1 …'
      ' Class11.6), got shape (2, 36)')


def test_unknown_answer_message_and_report_header():
  with pytest.raises(KeyError) as info:
    taxonomy.index('Class12.1')
  assert "'Class12.1' is not a Galaxy Zoo answer" in str(info.value)
  assert 'expected one of Class1.1 … Class11.6' in str(info.value)
  table = taxonomy.format_consistency_report([])
  assert table == 'question  checked  inconsistent  worst deviation'


def _sigmoid_like_votes() -> np.ndarray:
  """The review's hand case of a sigmoid head's 37 outputs, which break the
  tree (question 1 sums to 0.6, question 2 to 0.45 under Class1.2 = 0.5)."""
  votes = np.full(taxonomy.NUM_ANSWERS, 0.05)
  for name, value in (('Class1.2', 0.5), ('Class2.2', 0.4), ('Class4.1', 0.9),
                      ('Class3.1', 0.9), ('Class6.2', 0.9)):
    votes[taxonomy.index(name)] = value
  return votes


def test_projecting_onto_the_tree_by_hand():
  projected = taxonomy.project_to_tree(_sigmoid_like_votes())
  value = {name: projected[taxonomy.index(name)] for name in taxonomy.ANSWERS}
  # Q1 (0.05, 0.5, 0.05) over its total 0.6; Q6 (0.05, 0.9) over 0.95.
  assert [value['Class1.1'], value['Class1.2'], value['Class1.3']] == \
      pytest.approx([1 / 12, 10 / 12, 1 / 12])
  assert [value['Class6.1'], value['Class6.2']] == pytest.approx(
      [1 / 19, 18 / 19])
  # Q2 (0.05, 0.4): 1/9 and 8/9 of Class1.2 = 5/6.
  assert value['Class2.2'] == pytest.approx(8 / 9 * 5 / 6)
  # Q3 and Q4 (0.9, 0.05): 18/19 of Class2.2.
  assert value['Class3.1'] == pytest.approx(18 / 19 * 40 / 54)
  assert value['Class4.1'] == pytest.approx(18 / 19 * 40 / 54)
  # Q8's seven equal answers share Class6.1 = 1/19.
  assert value['Class8.7'] == pytest.approx(1 / 7 / 19)
  report = taxonomy.consistency_report(projected[None], tolerance=1e-12)
  assert [q.inconsistent for q in report] == [0] * taxonomy.NUM_QUESTIONS
  conditional = taxonomy.cumulative_to_conditional(projected)
  assert conditional.max() == pytest.approx(18 / 19)  # Was 2.25 unprojected.
  # Barred spiral: features 5/6 x not edge-on 8/9 x spiral and bar 18/19.
  scores = taxonomy.seven_class_scores(projected)
  assert scores[4] == pytest.approx(5 / 6 * 8 / 9 * (18 / 19) ** 2)
  assert taxonomy.seven_class_labels(projected) == 4
  assert taxonomy.three_class_labels(projected) == 1  # 5/6 >= 0.8.


def test_projecting_keeps_a_tree_consistent_vector():
  exact = taxonomy.conditional_to_cumulative(_conditional_row(
      Class1_1=0.25, Class1_2=0.5, Class1_3=0.25, Class2_1=0.25, Class2_2=0.75,
      Class6_1=0.5, Class6_2=0.5, Class8_1=0.5, Class8_6=0.5, Class8_7=0.0))
  np.testing.assert_array_equal(taxonomy.project_to_tree(exact), exact)
  rng = np.random.default_rng(3)
  conditional = rng.random((20, taxonomy.NUM_ANSWERS))
  for question in taxonomy.QUESTIONS:
    conditional[:, question.slice] /= conditional[:, question.slice].sum(
        1, keepdims=True)
  cumulative = taxonomy.conditional_to_cumulative(conditional)
  np.testing.assert_allclose(taxonomy.project_to_tree(cumulative), cumulative,
                             rtol=1e-14, atol=1e-16)


def test_a_question_with_no_votes_is_projected_to_equal_answers():
  votes = taxonomy.conditional_to_cumulative(_conditional_row(
      Class1_1=0.9, Class1_2=0.1, Class1_3=0.0, Class6_1=0.3, Class6_2=0.7,
      Class7_1=0.8, Class7_2=0.1, Class7_3=0.1))
  votes[taxonomy.QUESTIONS[7].slice] = 0.0  # Q8, under Class6.1 = 0.3.
  projected = taxonomy.project_to_tree(votes)
  assert not np.isnan(projected).any()
  np.testing.assert_allclose(projected[taxonomy.QUESTIONS[7].slice],
                             [0.3 / 7] * 7)
  assert taxonomy.seven_class_labels(projected) == 0
  assert taxonomy.seven_class_scores(projected)[0] == pytest.approx(
      0.9 * 0.7 * 0.8)
  # All zero: every question's answers equal, Q1's at 1/3 each.
  nothing = taxonomy.project_to_tree(np.zeros(taxonomy.NUM_ANSWERS))
  assert nothing[:3].tolist() == pytest.approx([1 / 3] * 3)
  assert not np.isnan(nothing).any()
  # Negatives count as 0; NaN stays unknown for its question and below.
  votes[taxonomy.index('Class1.3')] = -0.2
  votes[taxonomy.index('Class2.1')] = np.nan
  projected = taxonomy.project_to_tree(votes)
  assert projected[:3].tolist() == pytest.approx([0.9, 0.1, 0.0])
  unknown = [taxonomy.ANSWERS[i] for i in np.flatnonzero(np.isnan(projected))]
  assert unknown == ['Class2.1', 'Class2.2', 'Class3.1', 'Class3.2',
                     'Class4.1', 'Class4.2', *taxonomy.QUESTIONS[4].columns,
                     *taxonomy.QUESTIONS[8].columns,
                     *taxonomy.QUESTIONS[9].columns,
                     *taxonomy.QUESTIONS[10].columns]
