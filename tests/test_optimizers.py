"""Optimizers and learning-rate schedules against hand-computed numbers."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gzjax import optimizers

# A tiny model: two backbone blocks and a head, labelled the way
# gzjax.models.parameter_labels labels a real one.
PARAMS = {
    'backbone': {'conv0': jnp.array([1.0, -2.0]),
                 'conv1': jnp.array([0.5, 3.0])},
    'head': jnp.array([4.0, -1.0]),
}
LABELS = {
    'backbone': {'conv0': 'backbone/0', 'conv1': 'backbone/1'},
    'head': 'head',
}
NUM_BLOCKS = 2
GRADS = {
    'backbone': {'conv0': jnp.array([0.5, -2.0]),
                 'conv1': jnp.array([3.0, 4.0])},
    'head': jnp.array([-1.0, 0.25]),
}
GRADS2 = {
    'backbone': {'conv0': jnp.array([-1.0, 1.5]),
                 'conv1': jnp.array([0.2, -0.4])},
    'head': jnp.array([2.0, 0.5]),
}


def _config(**overrides):
  config = optimizers.default_config()
  config.schedule = 'constant'
  for key, value in overrides.items():
    config[key] = value
  return config


def _updates(config, grads_list, params=PARAMS, loss=1.0):
  """The updates of successive steps from a fresh optimizer (params fixed)."""
  tx = optimizers.create_optimizer(config, LABELS, NUM_BLOCKS, 100)
  state = tx.init(params)
  out = []
  for grads in grads_list:
    updates, state = tx.update(grads, state, params, value=jnp.float32(loss))
    out.append(jax.tree.map(np.asarray, updates))
  return out


def _assert_trees_close(actual, expected, rtol=1e-6, atol=0.0):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)


# ------------------------------------------------------------- schedules ---


def test_warmup_cosine_schedule_values():
  peak, final, warmup, steps = 2e-3, 0.05, 10, 110
  config = _config(schedule='cosine', learning_rate=peak, warmup_steps=warmup,
                   final_fraction=final)
  schedule = optimizers.create_schedule(config, steps)

  def cosine(t, total=steps - warmup):
    return peak * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * t
                                                              / total)))

  expected = {
      0: 0.0,  # Linear warmup from zero...
      5: peak / 2,
      10: peak,  # ...to the peak at the end of warmup.
      35: cosine(25),
      60: cosine(50),  # Half-way down: peak * (final + (1 - final) / 2).
      110: peak * final,  # The end of training.
  }
  for step, rate in expected.items():
    np.testing.assert_allclose(float(schedule(step)), rate, rtol=1e-5,
                               atol=1e-12, err_msg=f'step {step}')
  # The hand formula at step 60, spelled out.
  np.testing.assert_allclose(float(schedule(60)), 2e-3 * 0.525, rtol=1e-5)


def test_cosine_without_warmup_starts_at_peak():
  config = _config(schedule='cosine', learning_rate=0.1, final_fraction=0.0)
  schedule = optimizers.create_schedule(config, 40)
  np.testing.assert_allclose(float(schedule(0)), 0.1, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(20)), 0.05, rtol=1e-5)
  np.testing.assert_allclose(float(schedule(40)), 0.0, atol=1e-9)


def test_piecewise_multipliers_are_of_the_base_rate():
  # ConfigDict keys are strings; each multiplier applies from its step on and
  # multiplies the base rate, not the previous piece (0.01, not 0.1 * 0.01).
  config = _config(schedule='piecewise', learning_rate=0.04,
                   boundaries={'100': 0.1, '200': 0.01})
  schedule = optimizers.create_schedule(config, 300)
  expected = {0: 0.04, 99: 0.04, 100: 0.004, 199: 0.004, 200: 0.0004,
              299: 0.0004}
  for step, rate in expected.items():
    np.testing.assert_allclose(float(schedule(step)), rate, rtol=1e-6,
                               err_msg=f'step {step}')


def test_piecewise_from_a_config_dict_of_strings():
  # The form a ConfigDict override takes: a nested ConfigDict, unordered.
  # Boundaries are global steps, warmup included.
  config = _config(schedule='piecewise', learning_rate=1.0, warmup_steps=4)
  config.boundaries['30'] = 0.25
  config.boundaries['10'] = 0.5
  schedule = optimizers.create_schedule(config, 50)
  rates = [float(schedule(s)) for s in (2, 4, 9, 10, 29, 30)]
  np.testing.assert_allclose(rates, [0.5, 1.0, 1.0, 0.5, 0.5, 0.25],
                             rtol=1e-6)


def test_constant_and_plateau_schedules_are_flat():
  for name in ('constant', 'plateau'):
    schedule = optimizers.create_schedule(
        _config(schedule=name, learning_rate=3e-4), 1000)
    np.testing.assert_allclose(
        [float(schedule(s)) for s in (0, 500, 1000)], [3e-4] * 3, rtol=1e-6)


def test_unknown_schedule_names_the_config_field():
  with pytest.raises(ValueError, match=r'config\.optimizer\.schedule') as info:
    optimizers.create_schedule(_config(schedule='linear'), 100)
  assert "'linear'" in str(info.value)


def test_unknown_optimizer_names_the_config_field():
  with pytest.raises(ValueError, match=r'config\.optimizer\.name') as info:
    optimizers.create_optimizer(_config(name='lamb'), LABELS, NUM_BLOCKS, 100)
  assert "'lamb'" in str(info.value)


# ------------------------------------------------------------ optimizers ---


def test_adam_two_steps_match_hand_update():
  lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
  got = _updates(_config(name='adam', learning_rate=lr), [GRADS, GRADS2])

  def hand(g1, g2):
    m = v = 0.0
    out = []
    for t, g in enumerate((np.asarray(g1), np.asarray(g2)), start=1):
      m = b1 * m + (1 - b1) * g
      v = b2 * v + (1 - b2) * g * g
      m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
      out.append(-lr * m_hat / (np.sqrt(v_hat) + eps))
    return out

  per_leaf = jax.tree.map(hand, GRADS, GRADS2)
  for step in range(2):
    expected = jax.tree.map(lambda pair, s=step: pair[s], per_leaf,
                            is_leaf=lambda x: isinstance(x, list))
    # float32 rounding of 1 - b2 ** 2 costs about 1e-5 relative.
    _assert_trees_close(got[step], expected, rtol=1e-4)
  # Adam's first step is -lr * sign(g) whatever the gradient's size.
  np.testing.assert_allclose(got[0]['backbone']['conv1'], [-0.01, -0.01],
                             rtol=1e-4)


def test_sgd_nesterov_two_steps_match_hand_update():
  lr, m = 0.1, 0.9
  got = _updates(_config(name='sgd', learning_rate=lr, momentum=m),
                 [GRADS, GRADS2])
  # Step 1: trace = g1; Nesterov update = -lr * (g1 + m * g1).
  _assert_trees_close(got[0], jax.tree.map(lambda g: -lr * (1 + m) * g, GRADS))
  np.testing.assert_allclose(got[0]['head'], [0.19, -0.0475], rtol=1e-6)
  # Step 2: trace = g2 + m * g1; update = -lr * (g2 + m * trace).
  _assert_trees_close(
      got[1],
      jax.tree.map(lambda g1, g2: -lr * (g2 + m * (g2 + m * g1)), GRADS,
                   GRADS2), rtol=1e-5)


def test_sgd_momentum_zero_is_plain_gradient_descent():
  got = _updates(_config(name='sgd', learning_rate=0.5, momentum=0.0),
                 [GRADS, GRADS2])
  _assert_trees_close(got[1], jax.tree.map(lambda g: -0.5 * g, GRADS2))


def test_adamw_decays_weights_and_adam_does_not():
  lr, wd = 0.1, 0.25
  zero = jax.tree.map(jnp.zeros_like, GRADS)
  # With a zero gradient Adam's part is 0 / (0 + eps) = 0, leaving only the
  # decoupled decay: -lr * wd * param.
  got = _updates(_config(name='adamw', learning_rate=lr, weight_decay=wd),
                 [zero])[0]
  _assert_trees_close(got, jax.tree.map(lambda p: -lr * wd * p, PARAMS))
  np.testing.assert_allclose(got['head'], [-0.1, 0.025], rtol=1e-6)
  plain = _updates(_config(name='adam', learning_rate=lr, weight_decay=wd),
                   [zero])[0]
  _assert_trees_close(plain, jax.tree.map(np.zeros_like, PARAMS), atol=0.0)


def test_grad_clip_norm_clips_to_the_global_norm():
  lr, clip = 1.0, 2.0
  norm = float(optax.tree.norm(GRADS))
  assert norm > clip  # The gradients must actually be clipped.
  got = _updates(_config(name='sgd', learning_rate=lr, momentum=0.0,
                         grad_clip_norm=clip), [GRADS])[0]
  _assert_trees_close(got, jax.tree.map(lambda g: -lr * g * clip / norm,
                                        GRADS), rtol=1e-5)
  np.testing.assert_allclose(float(optax.tree.norm(got)), clip, rtol=1e-5)
  # Below the threshold nothing changes.
  small = jax.tree.map(lambda g: g * 0.1, GRADS)
  assert float(optax.tree.norm(small)) < clip
  got = _updates(_config(name='sgd', learning_rate=lr, momentum=0.0,
                         grad_clip_norm=clip), [small])[0]
  _assert_trees_close(got, jax.tree.map(lambda g: -lr * g, small), rtol=1e-6)


def test_freeze_backbone_trains_only_the_head():
  config = _config(name='sgd', learning_rate=0.1, momentum=0.9,
                   freeze_backbone=True)
  tx = optimizers.create_optimizer(config, LABELS, NUM_BLOCKS, 100)
  params, state = PARAMS, tx.init(PARAMS)
  for grads in (GRADS, GRADS2):
    updates, state = tx.update(grads, state, params, value=jnp.float32(1.0))
    params = optax.apply_updates(params, updates)
  for block in ('conv0', 'conv1'):
    np.testing.assert_array_equal(params['backbone'][block],
                                  PARAMS['backbone'][block])
  # The head took both Nesterov steps.
  g1, g2 = np.asarray(GRADS['head']), np.asarray(GRADS2['head'])
  expected = (np.asarray(PARAMS['head']) - 0.1 * 1.9 * g1
              - 0.1 * (g2 + 0.9 * (g2 + 0.9 * g1)))
  np.testing.assert_allclose(params['head'], expected, rtol=1e-6)


def test_freeze_backbone_with_layer_decay():
  # Layer decay is moot on a frozen backbone but must not break the head.
  got = _updates(_config(name='sgd', learning_rate=0.1, momentum=0.0,
                         freeze_backbone=True, layer_decay=0.5), [GRADS])[0]
  np.testing.assert_array_equal(got['backbone']['conv0'], [0.0, 0.0])
  np.testing.assert_allclose(got['head'], -0.1 * np.asarray(GRADS['head']),
                             rtol=1e-6)


@pytest.mark.parametrize('name', ['sgd', 'adam'])
def test_layer_decay_scales_each_block(name):
  decay = 0.7
  kwargs = dict(name=name, learning_rate=0.1, momentum=0.0)
  plain = _updates(_config(**kwargs), [GRADS, GRADS2])
  decayed = _updates(_config(layer_decay=decay, **kwargs), [GRADS, GRADS2])
  # Block b trains at decay ** (num_blocks - b): 0.49 at the input, 0.7 next,
  # 1 for the head.
  scale = {'conv0': decay ** 2, 'conv1': decay ** 1}
  for step in range(2):
    for block, factor in scale.items():
      np.testing.assert_allclose(decayed[step]['backbone'][block],
                                 factor * plain[step]['backbone'][block],
                                 rtol=1e-6)
    np.testing.assert_allclose(decayed[step]['head'], plain[step]['head'],
                               rtol=1e-6)
  if name == 'sgd':
    np.testing.assert_allclose(decayed[0]['backbone']['conv0'],
                               [-0.49 * 0.1 * 0.5, 0.49 * 0.1 * 2.0],
                               rtol=1e-6)


def test_plateau_halves_the_rate_after_patience_windows():
  window, patience, factor, lr = 3, 2, 0.5, 0.1
  config = _config(name='sgd', learning_rate=lr, momentum=0.0,
                   schedule='plateau', plateau_window=window,
                   plateau_patience=patience, plateau_factor=factor)
  schedule = optimizers.create_schedule(config, 100)
  tx = optimizers.create_optimizer(config, LABELS, NUM_BLOCKS, 100)
  state = tx.init(PARAMS)
  update = jax.jit(tx.update)  # Compiled once: 12 eager steps are slow.
  rates, head_updates = [], []
  # A constant loss: the first window sets the best value, then `patience`
  # windows without improvement reduce the scale.
  for step in range(window * (patience + 1) + window):
    updates, state = update(GRADS, state, PARAMS, value=jnp.float32(0.8))
    rates.append(float(optimizers.learning_rate(config, schedule, state,
                                                step)))
    head_updates.append(np.asarray(updates['head']))
  reduced_at = window * (patience + 1) - 1  # The step that ends the windows.
  np.testing.assert_allclose(rates[:reduced_at], [lr] * reduced_at, rtol=1e-6)
  np.testing.assert_allclose(rates[reduced_at:],
                             [lr * factor] * (len(rates) - reduced_at),
                             rtol=1e-6)
  # The updates themselves shrink, not just the reported rate.
  g = np.asarray(GRADS['head'])
  np.testing.assert_allclose(head_updates[0], -lr * g, rtol=1e-6)
  np.testing.assert_allclose(head_updates[-1], -lr * factor * g, rtol=1e-6)


def test_plateau_keeps_the_rate_while_the_loss_improves():
  config = _config(name='sgd', learning_rate=0.1, momentum=0.0,
                   schedule='plateau', plateau_window=2, plateau_patience=1,
                   plateau_min_delta=1e-3)
  schedule = optimizers.create_schedule(config, 100)
  tx = optimizers.create_optimizer(config, LABELS, NUM_BLOCKS, 100)
  state = tx.init(PARAMS)
  update = jax.jit(tx.update)
  # 10% better every step: well past the 0.1% min_delta.
  for step in range(12):
    _, state = update(GRADS, state, PARAMS, value=jnp.float32(0.9 ** step))
  np.testing.assert_allclose(
      float(optimizers.learning_rate(config, schedule, state, 11)), 0.1,
      rtol=1e-6)


def test_learning_rate_of_a_non_plateau_schedule_is_the_schedule():
  config = _config(schedule='cosine', learning_rate=1.0, final_fraction=0.0)
  schedule = optimizers.create_schedule(config, 10)
  tx = optimizers.create_optimizer(config, LABELS, NUM_BLOCKS, 10)
  rate = optimizers.learning_rate(config, schedule, tx.init(PARAMS), 5)
  np.testing.assert_allclose(float(rate), 0.5, rtol=1e-6)


# ------------------------------------- schedules reaching the update step ---
# Plain SGD (momentum 0) makes each step's update -rate(step) * grad, so the
# rate the optimizer actually applied can be read off the update and checked
# against the schedule's formula, written out by hand below, and against
# optimizers.learning_rate: what the train step reports as `learning_rate`
# (called there with the state after the update and the step before it).


def _applied_rates(config, num_train_steps, losses):
  """(rates read off the updates, rates learning_rate reports) per step."""
  schedule = optimizers.create_schedule(config, num_train_steps)
  tx = optimizers.create_optimizer(config, LABELS, NUM_BLOCKS,
                                   num_train_steps)
  state = tx.init(PARAMS)
  update = jax.jit(tx.update)
  g = np.asarray(GRADS['head'])
  applied, reported = [], []
  for step, loss in enumerate(losses):
    updates, state = update(GRADS, state, PARAMS, value=jnp.float32(loss))
    # Every leaf moved by the same rate (no layer decay here).
    for leaf, grad in zip(jax.tree.leaves(updates), jax.tree.leaves(GRADS)):
      np.testing.assert_allclose(np.asarray(leaf),
                                 np.asarray(updates['head']) / g
                                 * np.asarray(grad), rtol=1e-5, atol=1e-9)
    applied.append(float(-np.asarray(updates['head'])[0] / g[0]))
    reported.append(float(optimizers.learning_rate(
        config, schedule, state, jnp.int32(step))))
  return np.array(applied), np.array(reported)


def test_warmup_cosine_reaches_each_update():
  # Warm-up 4 steps to 0.2, then cosine over the 12 - 4 = 8 remaining steps
  # down to 0.1 * 0.2.
  config = _config(name='sgd', momentum=0.0, schedule='cosine',
                   learning_rate=0.2, warmup_steps=4, final_fraction=0.1)
  applied, reported = _applied_rates(config, 12, [1.0] * 13)
  c = lambda k: 0.2 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 8)))
  expected = [0.0, 0.05, 0.1, 0.15,  # 0.2 * step / 4: zero at step 0.
              0.2,  # The peak exactly at the end of warm-up.
              c(1), c(2), c(3),
              0.11,  # Half-way: 0.2 * (0.1 + 0.9 / 2).
              c(5), c(6), c(7),
              0.02]  # The end of training: final_fraction * peak.
  np.testing.assert_allclose(applied, expected, rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(reported, expected, rtol=1e-5, atol=1e-9)
  # Hand values of the cosine part, so the lambda above is checked too.
  np.testing.assert_allclose([c(2), c(6)], [0.2 * (0.1 + 0.45 * (1 + 0.5 ** 0.5)),
                                            0.2 * (0.1 + 0.45 * (1 - 0.5 ** 0.5))],
                             rtol=1e-12)


def test_piecewise_with_warmup_reaches_each_update():
  # Boundaries are global steps, counted with the warm-up.
  config = _config(name='sgd', momentum=0.0, schedule='piecewise',
                   learning_rate=1.0, warmup_steps=2,
                   boundaries={'6': 0.5, '9': 0.1})
  applied, reported = _applied_rates(config, 12, [1.0] * 11)
  expected = [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.1, 0.1]
  np.testing.assert_allclose(applied, expected, rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(reported, expected, rtol=1e-6, atol=1e-9)


def test_plateau_reduces_each_update_and_the_reported_rate():
  # Windows of 2 steps, patience 1: each window whose mean loss does not beat
  # the best by 1% cuts the scale by 4 at its last step.  Window 1 (steps
  # 0-1, mean 1.0) sets the best; window 2 (1.0) cuts at step 3; window 3
  # (0.5) improves; windows 4 and 5 (0.5) cut at steps 7 and 9.
  config = _config(name='sgd', momentum=0.0, schedule='plateau',
                   learning_rate=0.4, plateau_window=2, plateau_patience=1,
                   plateau_factor=0.25, plateau_min_delta=0.01)
  losses = [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
  applied, reported = _applied_rates(config, 100, losses)
  # reduce_on_plateau comes last in the chain, so a cut applies to the very
  # step whose loss triggered it, and the reported rate (the state after the
  # update) is the rate that step applied.
  expected = [0.4] * 3 + [0.1] * 4 + [0.025] * 2 + [0.00625] * 2
  np.testing.assert_allclose(applied, expected, rtol=1e-6)
  np.testing.assert_allclose(reported, expected, rtol=1e-6)


def test_default_config_is_the_documented_one():
  # Found by mutation testing (BUILD.md): nothing pinned the defaults, so a
  # weight decay of 1.0 or a plateau window of 51 went unnoticed.  These are
  # the values default_config's comments describe.
  assert optimizers.default_config().to_dict() == {
      'name': 'adam', 'learning_rate': 1e-3, 'schedule': 'cosine',
      'warmup_steps': 0, 'final_fraction': 0.01, 'boundaries': {},
      'plateau_factor': 0.5, 'plateau_patience': 5, 'plateau_window': 50,
      'plateau_min_delta': 1e-3, 'momentum': 0.9, 'weight_decay': 0.0,
      'grad_clip_norm': 0.0, 'freeze_backbone': False, 'layer_decay': 1.0,
      'trainable_blocks': 0,
  }


def test_schedule_warnings_name_what_a_short_run_never_reaches():
  config = optimizers.default_config()
  config.learning_rate = 1e-3
  config.warmup_steps = 500
  assert optimizers.schedule_warnings(config, 300) == [
      'config.optimizer.warmup_steps=500 is past config.num_train_steps=300:'
      ' the learning rate ends at 60% of its peak 0.001.']
  assert optimizers.schedule_warnings(config, 500) == []
  config.warmup_steps = 0
  config.schedule = 'piecewise'
  config.boundaries = {'200': 0.1, '900': 0.01, '5000': 0.001}
  assert optimizers.schedule_warnings(config, 1000) == [
      'config.optimizer.boundaries steps [5000] are past'
      ' config.num_train_steps=1000: never applied.']
  assert optimizers.schedule_warnings(config, 5000) == []
