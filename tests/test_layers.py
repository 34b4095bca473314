"""layers.BatchNorm: nnx.BatchNorm's numbers, variables and checkpoints,
without asking tracers for their sharding at every statistics update."""

from flax import nnx
import jax
from jax._src.interpreters import partial_eval
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from gzjax.models import layers

X = np.random.default_rng(0).normal(2.0, 3.0, (8, 5, 5, 4)).astype(np.float32)


class _Stack(nnx.Module):
  """Three batch norms in a row, of either class."""

  def __init__(self, cls):
    self.norms = nnx.List([cls(4, momentum=0.9, rngs=nnx.Rngs(0))
                           for _ in range(3)])

  def __call__(self, x):
    for norm in self.norms:
      x = jax.nn.relu(norm(x))
    return x


def _train_step(model_cls):
  graphdef, state = nnx.split(_Stack(model_cls))

  def step(state, x):
    model = nnx.merge(graphdef, state)
    y = model(x)
    return y, nnx.state(model)
  return step, state


def test_training_updates_are_flaxs_to_the_bit():
  for jitted in (False, True):
    ours, state = _train_step(layers.BatchNorm)
    theirs, their_state = _train_step(nnx.BatchNorm)
    if jitted:
      ours, theirs = jax.jit(ours), jax.jit(theirs)
    y, new = ours(state, X)
    y_ref, new_ref = theirs(their_state, X)
    np.testing.assert_array_equal(y, y_ref)
    flat = jax.tree_util.tree_leaves_with_path(new)
    flat_ref = jax.tree_util.tree_leaves_with_path(new_ref)
    # The same variables under the same paths (checkpoints, weight files).
    assert [path for path, _ in flat] == [path for path, _ in flat_ref]
    for (path, a), (_, b) in zip(flat, flat_ref):
      np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    # The statistics moved (momentum 0.9 towards mean 2, variance 9).
    mean = new['norms'][0]['mean'].get_value()
    np.testing.assert_allclose(mean, 0.1 * X.mean(axis=(0, 1, 2)), rtol=1e-5)
  assert jax.jit(ours).lower(state, X).as_text() == \
      jax.jit(theirs).lower(their_state, X).as_text()


def test_tracing_does_not_walk_the_trace_per_update(monkeypatch):
  walks = []
  real = partial_eval.DynamicJaxprTracer._origin_msg
  def counted(self):
    walks.append(1)
    return real(self)
  monkeypatch.setattr(partial_eval.DynamicJaxprTracer, '_origin_msg',
                      counted)
  for cls, expected in [(nnx.BatchNorm, 12), (layers.BatchNorm, 0)]:
    walks.clear()
    step, state = _train_step(cls)
    jax.jit(step).trace(state, X)
    # flax's update asks both tracers (new and old) for a sharding: 2 walks
    # for each of the 6 updates (mean and var of 3 norms), each as long as
    # the trace so far.
    assert len(walks) == expected, (cls, len(walks))


def test_a_checkpoint_of_flaxs_batch_norm_restores(tmp_path):
  _, theirs = _train_step(nnx.BatchNorm)
  theirs = jax.tree.map(lambda x: x + 1.5, theirs)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(tmp_path / 'flax', theirs)
  _, ours = _train_step(layers.BatchNorm)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, ours)
  with ocp.StandardCheckpointer() as checkpointer:
    restored = checkpointer.restore(tmp_path / 'flax', abstract)
  assert isinstance(restored['norms'][1]['var'], layers.RunningStat)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(theirs)):
    np.testing.assert_array_equal(a, b)


def test_other_updates_keep_flaxs_path():
  stat = layers.RunningStat(jnp.zeros(3))
  stat[1] = 5.0  # An index: flax's .at[].set.
  stat[...] = jnp.ones(3)  # Concrete values: flax's comparison and assignment.
  np.testing.assert_array_equal(stat.get_value(), [1.0, 1.0, 1.0])
  stat[...] = 2.0  # A scalar broadcast over the whole array.
  np.testing.assert_array_equal(stat.get_value(), [2.0, 2.0, 2.0])
  assert isinstance(stat, nnx.BatchStat)
