"""The Galaxy Zoo 2 decision tree as the Kaggle "Galaxy Challenge" encodes it.

The Kaggle solutions file has 37 columns, ``Class1.1`` … ``Class11.6``: the
answers to 11 questions.  Each value is *cumulative*: the fraction of
volunteers who gave that answer, multiplied by the value of the answer that led
to the question (its *parent*).  So the answers of a question sum to their
parent's value, and the answers of a root question (Q1, and Q6, which every
volunteer reaches whatever the path) sum to 1.  Dividing by the parent gives the
*conditional* fraction: the share of the volunteers who reached the question.

Everything here is vectorised numpy over a trailing axis of 37.  Unknown
answers (an empty CSV cell) are NaN in a float array, or False in a
``known`` mask; they propagate as unknown and are never read as 0.

The label derivations (3-class for question 1, 7-class after Willett et al.
2013 / Kalvankar et al. 2020) keep every threshold in a frozen dataclass,
in one place.  The labels are derived when a dataset is built (the records'
``label_3class`` / ``label_7class``), so other thresholds mean calling these
functions with other dataclass values and building again; no config field
changes them.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Question:
  """One question of the tree.

  Attributes:
    number: 1-based question number as in the Kaggle column names.
    text: what volunteers were asked.
    answers: the human names of its answers, in column order.
    parent: the Kaggle name of the answer that leads here (``None`` for roots).
    start: index of its first answer among the 37 columns.
  """

  number: int
  text: str
  answers: tuple[str, ...]
  parent: str | None
  start: int

  @property
  def columns(self) -> tuple[str, ...]:
    """Kaggle column names of the answers, e.g. ``('Class1.1', …)``."""
    return tuple(
        f'Class{self.number}.{i + 1}' for i in range(len(self.answers))
    )

  @property
  def slice(self) -> slice:
    """Slice of this question's answers in a 37-vector."""
    return slice(self.start, self.start + len(self.answers))


def _build_questions() -> tuple[Question, ...]:
  spec = [
      (
          'Is the galaxy simply smooth and rounded, with no sign of a disk?',
          ('smooth', 'features or disk', 'star or artifact'),
          None,
      ),
      (
          'Could this be a disk viewed edge-on?',
          ('edge-on: yes', 'edge-on: no'),
          'Class1.2',
      ),
      (
          'Is there a sign of a bar feature through the centre of the galaxy?',
          ('bar: yes', 'bar: no'),
          'Class2.2',
      ),
      (
          'Is there any sign of a spiral arm pattern?',
          ('spiral: yes', 'spiral: no'),
          'Class2.2',
      ),
      (
          'How prominent is the central bulge, compared with the rest of the'
          ' galaxy?',
          ('no bulge', 'just noticeable', 'obvious', 'dominant'),
          'Class2.2',
      ),
      (
          'Is there anything odd?',
          ('odd: yes', 'odd: no'),
          None,
      ),
      (
          'How rounded is it?',
          ('completely round', 'in between', 'cigar-shaped'),
          'Class1.1',
      ),
      (
          'Is the odd feature a ring, or is the galaxy disturbed or irregular?',
          (
              'ring',
              'lens or arc',
              'disturbed',
              'irregular',
              'other',
              'merger',
              'dust lane',
          ),
          'Class6.1',
      ),
      (
          'Does the galaxy have a bulge at its centre? If so, what shape?',
          ('bulge: rounded', 'bulge: boxy', 'bulge: none'),
          'Class2.1',
      ),
      (
          'How tightly wound do the spiral arms appear?',
          ('arms: tight', 'arms: medium', 'arms: loose'),
          'Class4.1',
      ),
      (
          'How many spiral arms are there?',
          ('1 arm', '2 arms', '3 arms', '4 arms', 'more than 4 arms',
           "can't tell"),
          'Class4.1',
      ),
  ]
  questions, start = [], 0
  for number, (text, answers, parent) in enumerate(spec, start=1):
    questions.append(Question(number, text, answers, parent, start))
    start += len(answers)
  return tuple(questions)


QUESTIONS: tuple[Question, ...] = _build_questions()
"""The 11 questions in Kaggle column order."""

ANSWERS: tuple[str, ...] = tuple(c for q in QUESTIONS for c in q.columns)
"""The 37 Kaggle column names in order: ``Class1.1`` … ``Class11.6``."""

ANSWER_NAMES: tuple[str, ...] = tuple(a for q in QUESTIONS for a in q.answers)
"""Human names of the 37 answers, aligned with :data:`ANSWERS`."""

NUM_ANSWERS = len(ANSWERS)
NUM_QUESTIONS = len(QUESTIONS)

_INDEX = {name: i for i, name in enumerate(ANSWERS)}


def index(answer: str) -> int:
  """Column index of a Kaggle answer name such as ``'Class7.3'``."""
  try:
    return _INDEX[answer]
  except KeyError:
    raise KeyError(
        f'{answer!r} is not a Galaxy Zoo answer; expected one of Class1.1 …'
        ' Class11.6'
    ) from None


QUESTION_OF_ANSWER: np.ndarray = np.concatenate(
    [np.full(len(q.answers), q.number - 1) for q in QUESTIONS]
)
"""For each of the 37 answers, the 0-based index of its question."""

PARENT_OF_ANSWER: np.ndarray = np.array(
    [-1 if q.parent is None else _INDEX[q.parent]
     for q in QUESTIONS for _ in q.answers]
)
"""For each answer, the column index of its question's parent answer (-1: root)."""

def _depth_of(question: Question) -> int:
  depth = 0
  while question.parent is not None:
    question = QUESTIONS[QUESTION_OF_ANSWER[_INDEX[question.parent]]]
    depth += 1
  return depth


TREE_ORDER: tuple[Question, ...] = tuple(sorted(QUESTIONS, key=_depth_of))
"""Questions ordered so that each parent's question comes before its children."""


def _parent_values(values: np.ndarray) -> np.ndarray:
  """The parent answer's value for each column (1 for root questions)."""
  values = np.asarray(values)
  parents = np.where(PARENT_OF_ANSWER < 0, 0, PARENT_OF_ANSWER)
  gathered = values[..., parents]
  return np.where(PARENT_OF_ANSWER < 0, 1.0, gathered)


def _check_width(values: np.ndarray, name: str) -> np.ndarray:
  values = np.asarray(values, dtype=np.float64)
  if values.shape[-1:] != (NUM_ANSWERS,):
    raise ValueError(
        f'{name} must have a trailing axis of {NUM_ANSWERS} answers (Class1.1 …'
        f' Class11.6), got shape {values.shape}'
    )
  return values


def cumulative_to_conditional(
    votes: np.ndarray, *, undefined: float = 0.0, eps: float = 1e-9
) -> np.ndarray:
  """Kaggle (cumulative) vote fractions → per-question (conditional) fractions.

  Args:
    votes: ``[..., 37]`` cumulative fractions; NaN marks unknown answers.
    undefined: value for answers of a question that no volunteer reached (its
      parent's value is below ``eps``), where the conditional fraction has no
      meaning.  Rules compared against it with ``>=`` and a positive threshold
      do not fire for the default 0.
    eps: smallest parent value treated as reached.

  Returns:
    ``[..., 37]`` float64: the fraction of the volunteers who reached each
    question that gave each answer.  Unknown stays NaN.
  """
  votes = _check_width(votes, 'votes')
  parents = _parent_values(votes)
  with np.errstate(divide='ignore', invalid='ignore'):
    conditional = votes / parents
  unreached = parents < eps  # False for NaN parents: those stay unknown.
  return np.where(unreached, undefined, conditional)


def conditional_to_cumulative(conditional: np.ndarray) -> np.ndarray:
  """Per-question (conditional) fractions → Kaggle (cumulative) fractions.

  Walks the tree from the roots: each answer is multiplied by the cumulative
  value of its parent answer.  NaN (unknown) propagates to every descendant.
  """
  conditional = _check_width(conditional, 'conditional')
  cumulative = np.array(conditional, dtype=np.float64, copy=True)
  for question in TREE_ORDER:
    if question.parent is not None:
      parent = cumulative[..., _INDEX[question.parent]]
      cumulative[..., question.slice] *= parent[..., None]
  return cumulative


def normalise_over_tree(shares, fallback, xp=np):
  """``[..., 37]`` non-negative shares → tree-consistent cumulative fractions.

  The one walk of the tree that both the votes head
  (``gzjax.models.heads.decision_tree_votes``, in ``jax.numpy``) and
  :func:`project_to_tree` (numpy) use, so the model's outputs and what is
  derived from any other model's are normalised alike: each question's
  shares are divided by their total (Dieleman's divisive normalisation),
  then multiplied by the final value of the question's parent answer,
  walking the tree from the roots (Q1 and Q6, whose answers sum to 1).

  Args:
    shares: ``[..., 37]`` values >= 0 (NaN propagates through ``fallback``).
    fallback: ``fallback(question, total)`` gives the question's answers
      (summing to 1, or broadcastable to them) where its shares' ``total``
      is not positive: a question with no share has no proportions to keep.
    xp: the array namespace, ``numpy`` or ``jax.numpy``.
  """
  cumulative = {}
  for question in TREE_ORDER:
    answers = shares[..., question.slice]
    total = answers.sum(axis=-1, keepdims=True)
    alive = total > 0
    answers = xp.where(alive, answers / xp.where(alive, total, 1.0),
                       fallback(question, total))
    if question.parent is not None:
      answers = answers * cumulative[question.parent][..., None]
    for column, name in enumerate(question.columns):
      cumulative[name] = answers[..., column]
  return xp.stack([cumulative[name] for name in ANSWERS], axis=-1)


def project_to_tree(votes: np.ndarray) -> np.ndarray:
  """Any non-negative ``[..., 37]`` vote vector as a tree-consistent one.

  A model whose outputs do not obey the tree (the seed CNN's independent
  sigmoids: question 1's answers summing to 1.3) would give conditional
  fractions above 1 and class shares above 1 (a barred spiral's 2.02).
  Projected, each question keeps its answers' proportions and sums to its
  parent answer's value (question 1 and 6 to 1), so every conditional
  fraction and path share is in [0, 1].  A tree-consistent vector comes
  back as it was, to float precision.

  Negative values count as 0 (as the votes head's ReLU does); a question
  whose answers are all 0 under a parent it reached gets equal answers (no
  answer is preferred, and it stays defined: no NaN); NaN stays unknown,
  for the question and those below it.
  """
  votes = np.maximum(_check_width(votes, 'votes'), 0.0)  # NaN stays NaN.
  return normalise_over_tree(
      votes, lambda question, total: np.where(
          np.isnan(total), np.nan, 1.0 / len(question.answers)))


def known_mask(votes: np.ndarray) -> np.ndarray:
  """``True`` where an answer's value is known (not NaN)."""
  return ~np.isnan(np.asarray(votes, dtype=np.float64))


def fill_unknown(
    votes: np.ndarray, mask: np.ndarray, value: float = np.nan
) -> np.ndarray:
  """Votes with the answers that ``mask`` marks unknown set to ``value`` (NaN).

  Stored datasets keep a value and a mask side by side (the value of an
  unknown answer is a placeholder); the taxonomy functions read NaN, so this is
  the bridge between the two.
  """
  return np.where(np.asarray(mask, bool), np.asarray(votes, np.float64), value)


@dataclasses.dataclass(frozen=True)
class QuestionConsistency:
  """How well one question's answers sum to their parent's value.

  Attributes:
    question: 1-based question number.
    checked: rows where the question and its parent answer are all known.
    inconsistent: rows among them whose sum differs from the parent's value by
      more than the tolerance.
    worst_deviation: the largest absolute difference seen (0 when none checked).
    worst_row: row index of that deviation (-1 when none checked).
  """

  question: int
  checked: int
  inconsistent: int
  worst_deviation: float
  worst_row: int


def consistency_report(
    votes: np.ndarray, *, tolerance: float = 1e-3
) -> list[QuestionConsistency]:
  """Per question: rows whose answers don't sum to their parent's value.

  Args:
    votes: ``[N, 37]`` cumulative fractions, NaN where unknown.  Rows with any
      unknown answer in a question (or its parent) are not checked for it.
    tolerance: allowed absolute difference.  The Kaggle file has six
      significant digits, so sums are off by up to about 1e-5 there.
  """
  votes = _check_width(votes, 'votes').reshape(-1, NUM_ANSWERS)
  parents = _parent_values(votes)
  report = []
  for question in QUESTIONS:
    answers = votes[:, question.slice]
    parent = parents[:, question.start]
    deviation = np.abs(answers.sum(axis=1) - parent)
    known = ~np.isnan(deviation)
    checked = int(known.sum())
    if checked:
      masked = np.where(known, deviation, -np.inf)
      worst_row = int(np.argmax(masked))
      worst = float(deviation[worst_row])
    else:
      worst_row, worst = -1, 0.0
    report.append(
        QuestionConsistency(
            question=question.number,
            checked=checked,
            inconsistent=int((deviation[known] > tolerance).sum()),
            worst_deviation=worst,
            worst_row=worst_row,
        )
    )
  return report


def format_consistency_report(report: Sequence[QuestionConsistency]) -> str:
  """A small table, one line per question, for build summaries."""
  lines = ['question  checked  inconsistent  worst deviation']
  for r in report:
    lines.append(
        f'Q{r.question:<8d}{r.checked:8d}{r.inconsistent:14d}'
        f'{r.worst_deviation:17.2e}'
    )
  return '\n'.join(lines)


# ----------------------------------------------------------------- labels ---

NOT_CONFIDENT = -1
"""Label of a galaxy that meets no class rule (or, for 7 classes, two)."""

THREE_CLASS_NAMES = ('smooth', 'features or disk', 'star or artifact')
SEVEN_CLASS_NAMES = (
    'completely round',
    'in-between',
    'cigar-shaped',
    'lenticular',
    'barred spiral',
    'unbarred spiral',
    'irregular',
)


@dataclasses.dataclass(frozen=True)
class ThreeClassThresholds:
  """The seed paper's question-1 task: the leading answer must reach this."""

  confidence: float = 0.8


def three_class_labels(
    votes: np.ndarray,
    thresholds: ThreeClassThresholds = ThreeClassThresholds(),
) -> np.ndarray:
  """Smooth (0) / features or disk (1) / star or artifact (2), else -1.

  The label is the leading answer of question 1 when its fraction is at least
  ``thresholds.confidence``; Q1 is a root, so cumulative and conditional
  fractions are the same.  A row with any unknown Q1 answer gets -1.
  """
  votes = _check_width(votes, 'votes')
  q1 = votes[..., QUESTIONS[0].slice]
  known = ~np.isnan(q1).any(axis=-1)
  q1 = np.where(np.isnan(q1), -np.inf, q1)
  leading = np.argmax(q1, axis=-1)
  confident = np.take_along_axis(q1, leading[..., None], -1)[..., 0]
  confident = known & (confident >= thresholds.confidence)
  return np.where(confident, leading, NOT_CONFIDENT).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class SevenClassThresholds:
  """Thresholds of the 7-class task (Kalvankar et al. 2020, Table 1).

  They come from Willett et al. 2013 (Table 3), who define them on the
  *conditional* (per-question, debiased) vote fractions.  ``conditional=True``
  (the default) applies them so; ``conditional=False`` applies them to the
  Kaggle cumulative values as they stand, which makes deep answers (bar,
  spiral, odd feature) harder to reach.

  Irregular needs ``odd_yes`` and at least ``irregular_feature`` on *any one*
  of disturbed, irregular, other, merger or dust lane.

  Cigar needs ``smooth`` as well as ``cigar``.  On cumulative values that is
  implied (Class7.3 <= Class1.1); on conditional ones it is not, and without
  it a disk galaxy whose few 'smooth' voters all said 'cigar' would count.

  ``on_conflict`` says what happens to a row that meets two rules (possible:
  e.g. smooth >= 0.469 and features >= 0.430 together): ``'reject'`` labels it
  -1, as an ambiguous galaxy does not belong in a clean training set;
  ``'first'`` gives it the lowest-numbered class it meets.
  """

  smooth: float = 0.469
  completely_round: float = 0.5
  in_between: float = 0.5
  cigar: float = 0.5
  odd_no: float = 0.5
  features_or_disk: float = 0.430
  edge_on_yes: float = 0.602
  edge_on_no: float = 0.715
  bar_yes: float = 0.715
  bar_no: float = 0.715
  spiral_yes: float = 0.619
  odd_yes: float = 0.420
  irregular_feature: float = 0.5
  conditional: bool = True
  on_conflict: str = 'reject'

  def __post_init__(self):
    if self.on_conflict not in ('reject', 'first'):
      raise ValueError(
          f"on_conflict must be 'reject' or 'first', got {self.on_conflict!r}"
      )


def seven_class_rules(
    votes: np.ndarray,
    thresholds: SevenClassThresholds = SevenClassThresholds(),
) -> np.ndarray:
  """``[..., 7]`` booleans: which of the 7 class rules each row meets.

  A rule that reads an unknown answer is not met.
  """
  votes = _check_width(votes, 'votes')
  f = cumulative_to_conditional(votes) if thresholds.conditional else votes
  with np.errstate(invalid='ignore'):

    def at_least(answer: str, threshold: float) -> np.ndarray:
      return f[..., _INDEX[answer]] >= threshold  # NaN → False

    t = thresholds
    smooth_odd_no = at_least('Class1.1', t.smooth) & at_least(
        'Class6.2', t.odd_no
    )
    face_on_disk = at_least('Class1.2', t.features_or_disk) & at_least(
        'Class2.2', t.edge_on_no
    )
    spiral = face_on_disk & at_least('Class4.1', t.spiral_yes)
    odd_feature = np.zeros(f.shape[:-1], bool)
    for answer in ('Class8.3', 'Class8.4', 'Class8.5', 'Class8.6', 'Class8.7'):
      odd_feature |= at_least(answer, t.irregular_feature)
    rules = [
        smooth_odd_no & at_least('Class7.1', t.completely_round),
        smooth_odd_no & at_least('Class7.2', t.in_between),
        at_least('Class1.1', t.smooth) & at_least('Class7.3', t.cigar),
        at_least('Class1.2', t.features_or_disk)
        & at_least('Class2.1', t.edge_on_yes)
        & at_least('Class6.2', t.odd_no),
        spiral & at_least('Class3.1', t.bar_yes),
        spiral & at_least('Class3.2', t.bar_no),
        at_least('Class6.1', t.odd_yes) & odd_feature,
    ]
  return np.stack(rules, axis=-1)


def seven_class_scores(
    votes: np.ndarray,
    thresholds: SevenClassThresholds = SevenClassThresholds(),
) -> np.ndarray:
  """``[..., 7]``: how strongly the fractions support each class's rule.

  The product of the fractions (conditional ones when
  ``thresholds.conditional``) of the answers that the class's rule in
  :func:`seven_class_rules` tests, the best odd feature standing for the
  irregular rule's "any one of": for conditional fractions, the share of
  volunteers expected to take the rule's whole path through the tree
  (e.g. barred spiral: features x not edge-on x spiral x bar).  Unknown
  answers give NaN.  Only votes that obey the tree give shares in [0, 1]:
  a model's outputs go through :func:`project_to_tree` first.
  """
  votes = _check_width(votes, 'votes')
  f = cumulative_to_conditional(votes) if thresholds.conditional else votes

  def answer(name: str) -> np.ndarray:
    return f[..., _INDEX[name]]

  smooth_odd_no = answer('Class1.1') * answer('Class6.2')
  face_on_spiral = answer('Class1.2') * answer('Class2.2') * answer('Class4.1')
  odd_feature = np.max(
      f[..., [_INDEX[a] for a in ('Class8.3', 'Class8.4', 'Class8.5',
                                  'Class8.6', 'Class8.7')]], axis=-1)
  scores = [
      smooth_odd_no * answer('Class7.1'),
      smooth_odd_no * answer('Class7.2'),
      answer('Class1.1') * answer('Class7.3'),
      answer('Class1.2') * answer('Class2.1') * answer('Class6.2'),
      face_on_spiral * answer('Class3.1'),
      face_on_spiral * answer('Class3.2'),
      answer('Class6.1') * odd_feature,
  ]
  return np.stack(scores, axis=-1)


def seven_class_labels(
    votes: np.ndarray,
    thresholds: SevenClassThresholds = SevenClassThresholds(),
) -> np.ndarray:
  """Round, in-between, cigar, lenticular, barred, unbarred, irregular: 0–6.

  -1 for a row that meets no rule, or two rules when
  ``thresholds.on_conflict == 'reject'``.  See :class:`SevenClassThresholds`.
  """
  rules = seven_class_rules(votes, thresholds)
  met = rules.sum(axis=-1)
  first = np.argmax(rules, axis=-1)
  ok = met == 1 if thresholds.on_conflict == 'reject' else met >= 1
  return np.where(ok, first, NOT_CONFIDENT).astype(np.int64)
