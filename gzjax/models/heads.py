"""Output heads: what a backbone's feature vector becomes.

* ``votes``: Dieleman et al. 2015's decision-tree layer.  Per question, the
  ReLU outputs are divisively normalised to sum to one, then multiplied by the
  value of the question's parent answer in tree order (Q1 and Q6 are roots), so
  every output row is a valid set of Kaggle cumulative vote fractions.
* ``sigmoid``: independent sigmoids, as in the seed paper's CNN.
* ``linear``: plain regression outputs (the seed's transfer model, Dense 1).
* ``classes``: logits for the 3-class or 7-class task.

Any head may be preceded by an MLP block (the seed's Dense 128 + ReLU +
dropout, repeated).
"""

from __future__ import annotations

from typing import Sequence

from flax import nnx
import jax
import jax.numpy as jnp

from gzjax import errors
from gzjax import taxonomy

HEADS = ('votes', 'sigmoid', 'linear', 'classes')


def decision_tree_votes(logits: jax.Array) -> jax.Array:
  """Maps ``[..., 37]`` logits to tree-consistent cumulative vote fractions.

  ``y_i = max(z_i, 0) / sum_j max(z_j, 0)`` over each question's answers
  (Dieleman's divisive normalisation), then each question is scaled by its
  parent answer's final value, walking the tree from the roots
  (``taxonomy.normalise_over_tree``, the walk that also projects any other
  model's outputs onto the tree before classes are derived from them).

  Where all of a question's ReLU outputs are 0, Dieleman's ``eps`` in the
  denominator gives all-zero answers that no longer sum to the parent, and no
  gradient reaches the logits, so the question stays dead for good (seen
  here: the seed CNN lost question 6 within 300 Adam steps).  This layer uses
  the softmax of that question's logits instead: the tree holds for every
  input, and the gradient raises the logits until the ReLU path takes over.
  Gradients are finite everywhere (no NaN from the unselected branch).

  Question totals are float32 sums over each question's slice rather than a
  matmul with a question one-hot matrix: at default precision, accelerators
  multiply float32 matrices in bfloat16 (TPU) or TF32 (GPU), and totals off
  by 1e-3 would break the tree's sums.
  """
  logits = logits.astype(jnp.float32)
  return taxonomy.normalise_over_tree(
      jax.nn.relu(logits),
      lambda question, _: jax.nn.softmax(logits[..., question.slice], axis=-1),
      xp=jnp)


class Head(nnx.Module):
  """An optional MLP, then the output layer and its activation.

  Attributes:
    kind: one of :data:`HEADS`.
  """

  def __init__(
      self,
      num_features: int,
      num_outputs: int,
      kind: str = 'votes',
      *,
      hidden: Sequence[int] = (),
      dropout: float = 0.0,
      dtype=jnp.float32,
      rngs: nnx.Rngs,
  ):
    if kind not in HEADS:
      raise errors.ConfigError(
          f'Unknown head {kind!r} (config.model.head); choose one of {HEADS}.')
    if kind == 'votes' and num_outputs != taxonomy.NUM_ANSWERS:
      raise errors.ConfigError(
          f'The votes head has {taxonomy.NUM_ANSWERS} outputs (the Kaggle'
          f' answers), not num_outputs={num_outputs}.'
      )
    self.kind = kind
    widths = [num_features, *hidden]
    self.hidden = nnx.List([
        nnx.Linear(a, b, dtype=dtype, rngs=rngs)
        for a, b in zip(widths[:-1], widths[1:])
    ])
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    if kind == 'votes':
      # Dieleman's initialisation of this layer: small weights and a bias of
      # 0.1 keep every ReLU alive at the start; a question whose ReLUs are all
      # dead passes no gradient and would stay stuck at uniform answers.
      initializers = dict(kernel_init=nnx.initializers.normal(0.01),
                          bias_init=nnx.initializers.constant(0.1))
    else:
      initializers = {}
    self.output = nnx.Linear(widths[-1], num_outputs, dtype=dtype, rngs=rngs,
                             **initializers)

  def __call__(self, features: jax.Array) -> jax.Array:
    x = features
    for layer in self.hidden:
      x = self.dropout(jax.nn.relu(layer(x)))
    x = self.output(x).astype(jnp.float32)
    if self.kind == 'votes':
      return decision_tree_votes(x)
    if self.kind == 'sigmoid':
      return jax.nn.sigmoid(x)
    return x
