"""The initialisers' pooled draws: what is recorded, what is served, and that
jax is left as it was."""

import threading
import zlib

import jax
from jax._src import random as jax_random
from jax._src.nn import initializers as jax_initializers
import jax.numpy as jnp
import numpy as np
import pytest

from gzjax.models import creation

SEED = 7
KEY = creation.pool_key(SEED)  # What the pools draw from.
DATA = creation.seed_data(SEED)
LECUN = jax.nn.initializers.lecun_normal()


def _kernels():
  """Three lecun_normal kernels: one truncated normal in [-2, 2]."""
  keys = jax.random.split(jax.random.key(0), 3)
  return [LECUN(keys[0], (3, 3, 4, 8)), LECUN(keys[1], (16, 5)),
          LECUN(keys[2], (3, 3, 4, 8))]


def test_record_lists_the_draws_and_leaves_the_values_alone():
  with creation.record() as plan:
    recorded = _kernels()
  assert plan.draws == [
      creation.Draw('truncated_normal', (-2.0, 2.0), shape, np.dtype(np.float32))
      for shape in [(3, 3, 4, 8), (16, 5), (3, 3, 4, 8)]]
  assert plan.distributions() == {
      ('truncated_normal', (-2.0, 2.0), np.dtype(np.float32)): 288 + 80 + 288}
  for a, b in zip(recorded, _kernels()):  # Recording draws what jax draws.
    np.testing.assert_array_equal(a, b)


def test_pooled_values_are_consecutive_slices_of_one_draw():
  with creation.record() as plan:
    _kernels()
  with creation.pooled(plan, creation.draw_pools(plan, DATA)):
    kernels = _kernels()
  # The distribution's pool, keyed by its name.
  name = zlib.crc32(b'truncated_normal(-2.0, 2.0):float32') & 0x7FFFFFFF
  pool = np.asarray(jax.random.truncated_normal(
      jax.random.fold_in(KEY, name), -2, 2, (656,), jnp.float32))
  offset = 0
  for kernel in kernels:
    fan_in = np.prod(kernel.shape[:-1])
    stddev = np.sqrt(1 / fan_in) / 0.87962566103423978
    expected = pool[offset:offset + kernel.size].reshape(kernel.shape)
    np.testing.assert_allclose(kernel, expected * stddev, rtol=1e-6)
    offset += kernel.size
  # The two kernels of one shape got different numbers.
  assert not np.allclose(kernels[0], kernels[2])


def test_each_distribution_has_its_own_pool():
  def build():
    key = jax.random.key(1)
    return [jax.nn.initializers.normal(0.01)(key, (400,)),
            jax.nn.initializers.glorot_uniform()(key, (20, 30)),
            LECUN(key, (30, 40)),
            jax.nn.initializers.he_normal()(key, (10, 40)),
            jax.nn.initializers.normal(0.01)(key, (500,))]
  with creation.record() as plan:
    build()
  assert plan.distributions() == {
      ('normal', (), np.dtype(np.float32)): 900,
      ('uniform', (-1.0, 1.0), np.dtype(np.float32)): 600,
      ('truncated_normal', (-2.0, 2.0), np.dtype(np.float32)): 1600,
  }
  with creation.pooled(plan, creation.draw_pools(plan, DATA)):
    normal_a, uniform, lecun, he, normal_b = map(np.asarray, build())
  # Each is the initialiser's distribution, though every call passed the
  # same key (the per-parameter keys are not used).
  assert np.abs(uniform).max() <= np.sqrt(6 / 50)
  assert abs(uniform.std() / np.sqrt(2 / 50) - 1) < 5 / np.sqrt(2 * 600)
  for values, sigma in [(lecun, np.sqrt(1 / 30)), (he, np.sqrt(2 / 10))]:
    assert np.abs(values).max() <= 2 * sigma / 0.8796256610342398 * 1.000001
    assert abs(values.std() / sigma - 1) < 5 / np.sqrt(2 * values.size)
  normals = np.concatenate([normal_a, normal_b])
  assert abs(normals.std() / 0.01 - 1) < 5 / np.sqrt(2 * 900)
  assert not np.allclose(normal_a[:400], normal_b[:400])
  assert not np.allclose(lecun.ravel()[:400] / np.sqrt(1 / 30),
                         he.ravel()[:400] / np.sqrt(2 / 10))


def test_a_draw_that_cannot_be_pooled_is_passed_through():
  def build():
    # Bounds that are arrays: not a constant distribution to pool.
    return jax_initializers.random.truncated_normal(
        jax.random.key(3), jnp.array(-1.0), 1.0, (50,))
  with creation.record() as plan:
    build()
  assert plan.draws == [None] and plan.distributions() == {}
  with creation.pooled(plan, creation.draw_pools(plan, DATA)):
    values = build()
  np.testing.assert_array_equal(values, jax.random.truncated_normal(
      jax.random.key(3), -1.0, 1.0, (50,)))


def test_a_different_model_in_the_second_pass_is_refused():
  with creation.record() as plan:
    _kernels()
  with pytest.raises(AssertionError, match=r'shape=\(16, 6\).*shape=\(16, 5\)'):
    with creation.pooled(plan, creation.draw_pools(plan, DATA)):
      keys = jax.random.split(jax.random.key(0), 2)
      LECUN(keys[0], (3, 3, 4, 8))
      LECUN(keys[1], (16, 6))
  with pytest.raises(AssertionError, match='fewer'):
    with creation.pooled(plan, creation.draw_pools(plan, DATA)):
      LECUN(jax.random.key(0), (3, 3, 4, 8))
  with pytest.raises(AssertionError, match='no more draws'):
    with creation.pooled(plan, creation.draw_pools(plan, DATA)):
      _kernels()
      LECUN(jax.random.key(0), (2, 2))


def test_jax_is_left_as_it_was():
  original = jax_initializers.random
  assert original is jax_random
  with pytest.raises(ValueError):
    with creation.record():
      assert jax_initializers.random is not jax_random
      raise ValueError
  assert jax_initializers.random is jax_random
  with creation.record() as plan:
    _kernels()
  with creation.pooled(plan, creation.draw_pools(plan, DATA)):
    # Only the initialisers' view of jax.random changes.
    assert jax.random.truncated_normal is jax_random.truncated_normal
    _kernels()
  assert jax_initializers.random is jax_random


def test_seeds_are_data_and_keys_are_jaxs():
  for seed in [0, 3, 2**31, 2**32 - 1]:
    np.testing.assert_array_equal(
        creation.seed_data(seed), jax.random.key_data(jax.random.key(seed)))
  np.testing.assert_array_equal(creation.seed_data(2**32 + 5), [1, 5])
  np.testing.assert_array_equal(
      jax.random.key_data(creation.pool_key(SEED)),
      jax.random.key_data(creation.pool_key(DATA)))
  with creation.record() as plan:
    _kernels()
  pools = [creation.draw_pools(plan, creation.seed_data(seed))[0]
           for seed in (7, 8, 2**32 + 7)]
  assert not np.allclose(pools[0], pools[1])
  assert not np.allclose(pools[0], pools[2])


def test_calls_of_every_form_are_pooled():
  def build():
    key = jax.random.key(2)
    draws = jax_initializers.random
    return [draws.uniform(key, shape=(3, 4), minval=-0.5, maxval=0.5),
            jax.nn.initializers.normal(0.01)(key, 5),  # A shape of one int.
            LECUN(key, [2, 6], jnp.bfloat16)]  # A list, bfloat16.
  with creation.record() as plan:
    build()
  assert plan.draws == [
      creation.Draw('uniform', (-0.5, 0.5), (3, 4), np.dtype(np.float32)),
      creation.Draw('normal', (), (5,), np.dtype(np.float32)),
      creation.Draw('truncated_normal', (-2.0, 2.0), (2, 6),
                    np.dtype(jnp.bfloat16))]
  with creation.pooled(plan, creation.draw_pools(plan, DATA)):
    uniform, normal, lecun = build()
  assert uniform.shape == (3, 4) and np.abs(uniform).max() <= 0.5
  assert normal.shape == (5,) and lecun.dtype == jnp.bfloat16


def test_a_vmapped_initialiser_is_not_pooled():
  keys = jax.random.split(jax.random.key(0), 3)
  build = lambda: jax.vmap(lambda key: LECUN(key, (4, 5)))(keys)
  with creation.record() as plan:
    build()
  assert plan.draws == [None]  # One call draws for three keys.
  with creation.pooled(plan, creation.draw_pools(plan, DATA)):
    kernels = np.asarray(build())
  np.testing.assert_array_equal(kernels, build())
  assert not np.allclose(kernels[0], kernels[1])


def test_other_threads_draw_as_jax_does():
  with creation.record() as plan:
    thread = threading.Thread(target=_kernels)
    thread.start()
    thread.join()
  assert plan.draws == []


def test_pooled_restores_jax_after_an_error():
  with creation.record() as plan:
    _kernels()
  with pytest.raises(ValueError):
    with creation.pooled(plan, creation.draw_pools(plan, DATA)):
      raise ValueError
  assert jax_initializers.random is jax_random
  with pytest.raises(ValueError, match='1 pools for the 0 distributions'):
    with creation.pooled(creation.Plan(), [jnp.zeros(3)]):
      pass


def _mixed():
  """Draws of four distributions, interleaved, one of them bfloat16, and one
  call that is not pooled (a vmapped initialiser)."""
  key = jax.random.key(5)
  draws = jax_initializers.random
  return {
      'a': LECUN(key, (3, 3, 4, 8)),
      'b': jax.nn.initializers.normal(0.01)(key, (7, 5)),
      'c': LECUN(key, (16, 5)),
      'd': draws.uniform(key, shape=(3, 4), minval=-0.5, maxval=0.5),
      'e': LECUN(key, (2, 6), jnp.bfloat16),
      'f': jax.nn.initializers.normal(0.01)(key, (9,)),
      'g': jax.vmap(lambda k: LECUN(k, (4, 5)))(jax.random.split(key, 2)),
      'h': LECUN(key, (4, 4)),
  }


def test_one_trace_serves_what_two_passes_serve():
  # The reference: shapes, then values built again from the pools.
  with creation.record() as plan:
    _mixed()
  with creation.pooled(plan, creation.draw_pools(plan, DATA)):
    reference = _mixed()
  traced = creation.trace_once(lambda: (_mixed(), 'aux'))
  assert traced.plan.draws == plan.draws and traced.aux == 'aux'
  values = jax.jit(traced.evaluate)(creation.draw_pools(traced.plan, DATA))
  assert values.keys() == reference.keys()
  for name in reference:
    assert values[name].dtype == reference[name].dtype, name
    np.testing.assert_array_equal(values[name], reference[name], name)


def test_one_trace_builds_once():
  calls = []

  def build():
    calls.append(1)
    return _kernels(), None

  traced = creation.trace_once(build)
  jax.jit(traced.evaluate)(creation.draw_pools(traced.plan, DATA))
  assert len(calls) == 1
  with pytest.raises(ValueError, match='0 pools for the 1 distributions'):
    traced.evaluate([])


def test_the_replayed_program_type_checks():
  # Its inputs are as long as the draws it cuts (not the stand-ins' 2**40),
  # so JAX's own checks accept the replay.
  traced = creation.trace_once(lambda: (_mixed(), None))
  pools = creation.draw_pools(traced.plan, DATA)
  with jax.enable_checks(True):
    values = jax.jit(traced.evaluate)(pools)
  np.testing.assert_array_equal(
      values['h'], jax.jit(traced.evaluate)(pools)['h'])


def test_one_trace_pools_float64_under_x64():
  build = lambda: [LECUN(jax.random.key(1), (4, 3)),  # float64 under x64.
                   LECUN(jax.random.key(1), (5, 2), jnp.float32)]
  with jax.enable_x64(True):
    with creation.record() as plan:
      build()
    with creation.pooled(plan, creation.draw_pools(plan, DATA)):
      reference = build()
    traced = creation.trace_once(lambda: (build(), None))
    values = jax.jit(traced.evaluate)(creation.draw_pools(traced.plan, DATA))
  assert traced.plan.draws == plan.draws
  assert plan.draws[0].dtype == np.float64
  for value, expected in zip(values, reference):
    assert value.dtype == expected.dtype
    np.testing.assert_array_equal(value, expected)


def test_unused_distributions_are_those_no_kept_array_draws_from():
  traced = creation.trace_once(lambda: (_mixed(), None))
  names = sorted(_mixed())  # The flat order of the dict's leaves.
  everything = [distribution for distribution, _ in
                creation._pooled_distributions(traced.plan)]
  assert traced.unused_distributions([True] * len(names)) == ()
  assert set(traced.unused_distributions([False] * len(names))) == set(
      everything)
  # Only 'd' (a uniform) and 'g' (not pooled) kept: the other pools unused,
  # and 'd' is what the full pools give it.
  keep = [name in ('d', 'g') for name in names]
  unused = traced.unused_distributions(keep)
  assert set(unused) == set(everything) - {
      ('uniform', (-0.5, 0.5), np.dtype(np.float32))}
  full = jax.jit(traced.evaluate)(creation.draw_pools(traced.plan, DATA))
  part = jax.jit(traced.evaluate)(
      creation.draw_pools(traced.plan, DATA, unused=unused))
  np.testing.assert_array_equal(part['d'], full['d'])
  np.testing.assert_array_equal(part['g'], full['g'])
  assert not np.any(np.asarray(part['a']))  # Its pool was not drawn.
  # 'f' shares its distribution with 'b': keeping 'f' keeps that pool.
  keep_f = [name == 'f' for name in names]
  assert ('normal', (), np.dtype(np.float32)) not in (
      traced.unused_distributions(keep_f))


def test_a_draw_inside_a_nested_jit_keeps_every_pool():
  # The stand-in enters the inner program whole: the slices cannot be read,
  # so every pool counts as used (drawn), never as left at zeros.
  traced = creation.trace_once(lambda: (
      {'a': jax.jit(lambda: LECUN(jax.random.key(0), (3, 4)))(),
       'b': LECUN(jax.random.key(1), (4, 4))}, None))
  assert traced.unused_distributions([True, False]) == ()
  assert len(traced.plan.draws) == 2
