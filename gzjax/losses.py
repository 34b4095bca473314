"""Training losses, as jnp functions of (outputs, batch) on a padded batch.

Every loss is a weighted mean over the batch's real rows (``example_mask``)
and, for votes, over the known answers (``votes_mask``): an unknown answer, or
a padding row, contributes nothing — not a zero target.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

LOSSES = ('mse', 'bce', 'softmax')


def _safe_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def masked_mse(predictions: jax.Array, votes: jax.Array,
               votes_mask: jax.Array, example_mask: jax.Array) -> jax.Array:
  """Mean squared error over known answers of real rows."""
  weights = votes_mask * example_mask[:, None]
  return _safe_mean((predictions - votes) ** 2, weights)


def masked_bce(probabilities: jax.Array, votes: jax.Array,
               votes_mask: jax.Array, example_mask: jax.Array,
               eps: float = 1e-7) -> jax.Array:
  """Binary cross-entropy of sigmoid outputs against vote fractions."""
  p = jnp.clip(probabilities, eps, 1 - eps)
  values = -(votes * jnp.log(p) + (1 - votes) * jnp.log(1 - p))
  return _safe_mean(values, votes_mask * example_mask[:, None])


def softmax_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    example_mask: jax.Array,
    *,
    label_smoothing: float = 0.0,
    class_weights: Sequence[float] | None = None,
) -> jax.Array:
  """Cross-entropy over rows with a class (label >= 0), optionally smoothed.

  With ``class_weights``, each row weighs its class's weight (the mean is
  over those weights, as Keras's ``class_weight`` does).
  """
  num_classes = logits.shape[-1]
  valid = (labels >= 0) & example_mask
  one_hot = jax.nn.one_hot(jnp.maximum(labels, 0), num_classes)
  targets = optax.smooth_labels(one_hot, label_smoothing)
  values = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
  weights = valid.astype(jnp.float32)
  if class_weights is not None:
    weights = weights * jnp.asarray(class_weights, jnp.float32)[
        jnp.maximum(labels, 0)]
  return _safe_mean(values, weights)


def compute(
    kind: str,
    outputs: jax.Array,
    batch: Mapping[str, jax.Array],
    *,
    label_key: str = 'label_3class',
    label_smoothing: float = 0.0,
    class_weights: Sequence[float] | None = None,
) -> jax.Array:
  """The loss ``kind`` (one of :data:`LOSSES`) of a model's outputs."""
  example_mask = batch['example_mask']
  if kind == 'mse':
    return masked_mse(outputs, batch['votes'], batch['votes_mask'],
                      example_mask)
  if kind == 'bce':
    return masked_bce(outputs, batch['votes'], batch['votes_mask'],
                      example_mask)
  if kind == 'softmax':
    return softmax_cross_entropy(outputs, batch[label_key], example_mask,
                                 label_smoothing=label_smoothing,
                                 class_weights=class_weights)
  raise ValueError(f'Unknown loss {kind!r}; choose one of {LOSSES}.')


# ------------------------------------------- label catalogues (finetune) ---


def masked_sigmoid_bce(logits: jax.Array, targets: jax.Array,
                       mask: jax.Array) -> jax.Array:
  """Binary cross-entropy of logits against 0/1 targets over ``mask`` rows."""
  values = optax.sigmoid_binary_cross_entropy(
      logits.astype(jnp.float32), targets.astype(jnp.float32))
  return _safe_mean(values, mask.astype(jnp.float32))


def masked_class_ce(logits: jax.Array, labels: jax.Array,
                    mask: jax.Array) -> jax.Array:
  """Softmax cross-entropy of class indices over ``mask`` rows."""
  values = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), jnp.maximum(labels, 0).astype(jnp.int32))
  return _safe_mean(values, mask.astype(jnp.float32))


def masked_regression_mse(predictions: jax.Array, targets: jax.Array,
                          mask: jax.Array) -> jax.Array:
  """Squared error over ``mask`` rows."""
  return _safe_mean((predictions - targets) ** 2, mask.astype(jnp.float32))


def dirichlet_multinomial_nll(concentrations: jax.Array, counts: jax.Array,
                              mask: jax.Array) -> jax.Array:
  """Negative log-likelihood of vote counts under a Dirichlet-multinomial.

  Zoobot's loss (Walmsley et al. 2022): the model predicts concentrations
  ``a`` of a Dirichlet over the answer fractions; the ``N`` votes of a galaxy
  are multinomial given the fractions, so

    log p(c | a) = log N! + log G(A) - log G(N + A)
                   + sum_i [log G(c_i + a_i) - log G(a_i) - log c_i!]

  with ``A = sum(a)``.  A galaxy with few votes has a flatter likelihood, so it
  counts less.  Averaged over the ``mask`` rows.
  """
  gammaln = jax.scipy.special.gammaln
  a = concentrations.astype(jnp.float32)
  c = counts.astype(jnp.float32)
  total_a, total_c = a.sum(-1), c.sum(-1)
  log_p = (gammaln(total_c + 1) + gammaln(total_a)
           - gammaln(total_c + total_a)
           + jnp.sum(gammaln(c + a) - gammaln(a) - gammaln(c + 1), axis=-1))
  return _safe_mean(-log_p, mask.astype(jnp.float32))
