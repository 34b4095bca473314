"""Output heads, the registry's errors and the seed CNN."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gzjax import models
from gzjax import taxonomy
from gzjax.models import heads


def _logits_with_dead_questions(rows: int = 64) -> np.ndarray:
  """Random logits; in every other row, some questions are all negative."""
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(rows, taxonomy.NUM_ANSWERS)).astype(np.float32)
  for row in range(0, rows, 2):
    for question in taxonomy.QUESTIONS:
      if rng.uniform() < 0.5:
        logits[row, question.slice] = -np.abs(logits[row, question.slice])
  return logits


def _assert_tree_consistent(votes) -> None:
  votes = np.asarray(votes, np.float64)
  report = taxonomy.consistency_report(votes, tolerance=1e-5)
  assert [q.inconsistent for q in report] == [0] * taxonomy.NUM_QUESTIONS
  assert ((votes >= 0) & (votes <= 1)).all()


def test_votes_satisfy_the_tree_for_any_logits():
  logits = _logits_with_dead_questions()
  _assert_tree_consistent(heads.decision_tree_votes(logits))
  every_logit_negative = -np.abs(logits)
  _assert_tree_consistent(heads.decision_tree_votes(every_logit_negative))


def test_votes_by_hand():
  logits = np.full(taxonomy.NUM_ANSWERS, -1.0, np.float32)
  logits[taxonomy.QUESTIONS[0].slice] = [1.0, 3.0, 0.0]
  logits[taxonomy.QUESTIONS[1].slice] = [2.0, 2.0]
  votes = np.asarray(heads.decision_tree_votes(logits))
  np.testing.assert_allclose(votes[0:3], [0.25, 0.75, 0.0])
  np.testing.assert_allclose(votes[3:5], [0.375, 0.375])  # 0.5 × 0.75.
  # Q3 (parent Class2.2 = 0.375) is all negative: the softmax of its logits,
  # here equal, so uniform answers.
  np.testing.assert_allclose(votes[5:7], [0.1875, 0.1875])
  # Q6, a root, likewise.
  np.testing.assert_allclose(votes[taxonomy.QUESTIONS[5].slice], [0.5, 0.5])
  # Unequal negative logits: softmax([-1, -2]) = [0.7311, 0.2689].
  logits[taxonomy.QUESTIONS[5].slice] = [-1.0, -2.0]
  votes = np.asarray(heads.decision_tree_votes(logits))
  np.testing.assert_allclose(votes[taxonomy.QUESTIONS[5].slice],
                             [0.731059, 0.268941], rtol=1e-5)


def test_votes_gradients_are_finite_where_a_question_is_dead():
  logits = _logits_with_dead_questions(8)
  logits[:, taxonomy.QUESTIONS[0].slice] = -1.0
  targets = np.random.default_rng(1).uniform(size=logits.shape)

  def loss(logits):
    return jnp.mean((heads.decision_tree_votes(logits) - targets) ** 2)

  gradients = np.asarray(jax.jit(jax.grad(loss))(logits))
  assert np.isfinite(gradients).all()
  # A dead question still learns: its logits get a gradient (a plain ReLU
  # normalisation would give exactly zero here and stay dead).
  assert (np.abs(gradients[:, taxonomy.QUESTIONS[0].slice]).sum(axis=1)
          > 0).all()


def test_sigmoid_head_is_in_the_open_unit_interval():
  head = heads.Head(16, 37, 'sigmoid', rngs=nnx.Rngs(0))
  features = np.random.default_rng(0).normal(size=(4, 16))
  outputs = np.asarray(head(jnp.asarray(features, jnp.float32)))
  assert outputs.shape == (4, 37)
  assert ((outputs > 0) & (outputs < 1)).all()


def test_classes_head_gives_raw_logits():
  head = heads.Head(16, 7, 'classes', rngs=nnx.Rngs(0))
  features = np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)
  expected = features @ np.asarray(head.output.kernel[...]) + np.asarray(
      head.output.bias[...]
  )
  np.testing.assert_allclose(head(features), expected, rtol=1e-5, atol=1e-5)


def test_votes_head_needs_37_outputs():
  with pytest.raises(ValueError, match='votes head has 37 outputs'):
    heads.Head(16, 3, 'votes', rngs=nnx.Rngs(0))


def test_unknown_head_is_a_clear_error():
  with pytest.raises(ValueError, match="Unknown head 'softmax'.*votes"):
    heads.Head(16, 3, 'softmax', rngs=nnx.Rngs(0))


def test_unknown_model_names_the_known_ones():
  with pytest.raises(ValueError, match="Unknown model 'nope'.*cnn.*viewpoint"):
    models.create('nope')


def test_seed_cnn_has_the_papers_parameter_count():
  model = models.abstract('cnn', head='sigmoid', hidden=(128, 128),
                          dropout=0.5)
  assert models.count_params(model)['total'] == 593_125


def test_dropout_follows_train_and_eval():
  model = models.create('cnn', head='sigmoid', hidden=(128, 128), dropout=0.5)
  images = np.random.default_rng(0).uniform(size=(2, 32, 32, 3))
  images = jnp.asarray(images, jnp.float32)
  model.train()
  assert not np.allclose(model(images), model(images))
  model.eval()
  np.testing.assert_array_equal(model(images), model(images))


def test_votes_head_starts_as_dieleman_initialised_it():
  # Found by mutation testing (BUILD.md): nothing checked the votes head's
  # initialisation (weights N(0, 0.01), bias 0.1, so that no question
  # starts with all its ReLUs dead), nor that 'votes' is the default head.
  head = heads.Head(64, 37, rngs=nnx.Rngs(0))
  assert head.kind == 'votes'
  np.testing.assert_array_equal(np.asarray(head.output.bias[...]),
                                np.full(37, 0.1, np.float32))
  kernel = np.asarray(head.output.kernel[...])
  assert kernel.shape == (64, 37)
  # 2,368 draws: the sample std is within 5% of 0.01 (4 standard errors).
  assert abs(kernel.std() - 0.01) < 0.0005, kernel.std()
  assert abs(kernel.mean()) < 0.001
  # Other heads keep Flax's defaults: zero bias, LeCun-normal weights
  # (std 1/8 for 64 inputs, truncated), far from 0.01.
  classes = heads.Head(64, 3, 'classes', rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(np.asarray(classes.output.bias[...]),
                                np.zeros(3, np.float32))
  assert np.asarray(classes.output.kernel[...]).std() > 0.08
