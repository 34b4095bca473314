"""Losses and metrics of label catalogues (gzjax.finetune), by kind."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from gzjax import losses
from gzjax import metrics


def test_dirichlet_multinomial_hand_values_and_scipy():
  # Uniform Dirichlet over two answers: the beta-binomial gives every count
  # of N votes probability 1 / (N + 1).
  a = jnp.ones((2, 2))
  counts = jnp.array([[1.0, 0.0], [2.0, 0.0]])
  rows = [float(losses.dirichlet_multinomial_nll(a[i:i + 1], counts[i:i + 1],
                                                 jnp.array([True])))
          for i in range(2)]
  np.testing.assert_allclose(rows, [math.log(2), math.log(3)], rtol=1e-5)
  rng = np.random.default_rng(0)
  alpha = rng.uniform(0.5, 20, (5, 3))
  votes = rng.integers(0, 12, (5, 3)).astype(np.float64)
  votes[0] = [0, 7, 1]
  expected = -np.array([
      scipy.stats.dirichlet_multinomial.logpmf(v, al, int(v.sum()))
      for v, al in zip(votes, alpha)])
  mask = np.array([True, True, False, True, True])
  got = losses.dirichlet_multinomial_nll(jnp.asarray(alpha), jnp.asarray(votes),
                                         jnp.asarray(mask))
  np.testing.assert_allclose(float(got), expected[mask].mean(), rtol=1e-5)


def test_masked_rows_do_not_count():
  logits = jnp.array([0.3, -1.2, 2.0])
  mask = jnp.array([True, False, True])
  for fn, targets, changed in (
      (losses.masked_sigmoid_bce, jnp.array([1.0, 0.0, 0.0]),
       jnp.array([1.0, 1.0, 0.0])),
      (losses.masked_regression_mse, jnp.array([1.0, 5.0, 0.0]),
       jnp.array([1.0, -9.0, 0.0]))):
    np.testing.assert_allclose(fn(logits, targets, mask),
                               fn(logits, changed, mask))
  # BCE by hand over the two known rows.
  p = 1 / (1 + np.exp(-np.array([0.3, 2.0])))
  np.testing.assert_allclose(
      float(losses.masked_sigmoid_bce(logits, jnp.array([1.0, 0.0, 0.0]),
                                      mask)),
      -(np.log(p[0]) + np.log(1 - p[1])) / 2, rtol=1e-6)
  class_logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 9.0, 0.0]])
  ce = losses.masked_class_ce(class_logits, jnp.array([0, 0]),
                              jnp.array([True, False]))
  np.testing.assert_allclose(float(ce),
                             -np.log(np.exp(2) / (np.exp(2) + 2)), rtol=1e-6)


def test_roc_auc_counts_ties_as_half():
  labels = np.array([1, 1, 0, 0, 1, 0])
  scores = np.array([0.9, 0.5, 0.5, 0.2, 0.3, 0.8])
  # Pairs won by the positives: 0.9 all 3; 0.5 beats 0.2 and ties 0.5
  # (1.5); 0.3 beats 0.2: 5.5 of 9.
  assert metrics.roc_auc(labels, scores) == pytest.approx(5.5 / 9)
  assert metrics.roc_auc(labels, -scores) == pytest.approx(3.5 / 9)
  assert math.isnan(metrics.roc_auc(np.ones(3), np.arange(3.0)))


def test_binary_reliability_and_regression_reports():
  labels = np.array([1, 0, 1, 1, 0])
  probabilities = np.array([0.95, 0.15, 0.45, 0.85, 0.05])
  report = metrics.binary_report(labels, probabilities)
  # Predicted 1, 0, 0, 1, 0: one positive missed.
  assert report['accuracy'] == pytest.approx(0.8)
  assert report['f1'] == pytest.approx(2 * 1 * (2 / 3) / (1 + 2 / 3))
  assert report['roc_auc'] == 1.0
  assert report['confusion_matrix'] == [[2, 0], [1, 2]]
  table = metrics.reliability(labels, probabilities, num_bins=2)
  assert table['count'] == [3, 2]
  np.testing.assert_allclose(table['mean_predicted'], [0.65 / 3, 0.9])
  np.testing.assert_allclose(table['observed'], [1 / 3, 1.0])
  reg = metrics.regression_report(np.array([1.0, 2.0, 4.0]),
                                  np.array([1.0, 3.0, 2.0]))
  assert reg == {'rmse': pytest.approx(math.sqrt(5 / 3)),
                 'mae': pytest.approx(1.0), 'count': 3}


def test_partial_freezing_trains_the_head_and_the_last_blocks_only():
  import jax  # pylint: disable=g-import-not-at-top
  from gzjax import optimizers  # pylint: disable=g-import-not-at-top
  config = optimizers.default_config()
  config.freeze_backbone = True
  config.trainable_blocks = 2
  config.schedule = 'constant'
  labels = {'b0': 'backbone/0', 'b1': 'backbone/1', 'b2': 'backbone/2',
            'b3': 'backbone/3', 'head': 'head'}
  params = {k: jnp.ones(2) for k in labels}
  optimizer = optimizers.create_optimizer(config, labels, 4, 10)
  updates, _ = optimizer.update(params, optimizer.init(params), params,
                                value=jnp.zeros(()))
  moved = {k for k, v in jax.tree.map(np.asarray, updates).items()
           if np.any(v != 0)}
  assert moved == {'b2', 'b3', 'head'}
