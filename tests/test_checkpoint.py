"""Checkpointer: round trips, retention, the best step, interrupted saves."""

from __future__ import annotations

import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gzjax import checkpoint


def _state(seed: int) -> dict:
  """A small train-state-like pytree whose values differ per seed."""
  rng = np.random.default_rng(seed)
  return {
      'step': jnp.asarray(seed, jnp.int32),
      'params': {
          'dense': {'kernel': jnp.asarray(rng.normal(size=(3, 4)),
                                          jnp.float32),
                    'bias': jnp.asarray(rng.normal(size=(4,)), jnp.float32)},
          # bfloat16 must come back as bfloat16, not widened.
          'scale': jnp.asarray(rng.normal(size=(2,)), jnp.bfloat16),
      },
      'opt': (jnp.asarray(rng.integers(-5, 5, size=(5,)), jnp.int32),),
  }


def _data(seed: int) -> dict:
  return {'iterator': {'next_index': 100 + seed, 'seed': 7},
          'source': f'shard-{seed}', 'epoch': [seed, 0.5]}


def _template() -> dict:
  return jax.tree.map(jnp.zeros_like, _state(0))


def _assert_bit_identical(restored, expected):
  assert jax.tree.structure(restored) == jax.tree.structure(expected)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape
    # Compare the bytes: equal values are not enough (-0.0, NaN payloads).
    assert got.tobytes() == want.tobytes()


def _step_dirs(directory: pathlib.Path) -> list[str]:
  return sorted(p.name for p in directory.iterdir() if p.name.isdigit())


def test_save_restore_round_trip_is_bit_identical(tmp_path):
  state, data = _state(3), _data(3)
  # A NaN and a negative zero survive only a bitwise-faithful round trip.
  state['params']['dense']['bias'] = state['params']['dense']['bias'].at[
      0].set(jnp.nan).at[1].set(-0.0)
  ckpt = checkpoint.Checkpointer(tmp_path)
  ckpt.save(30, state, data)
  ckpt.wait()
  assert ckpt.latest_step() == 30
  restored, restored_data, step = ckpt.restore(_template())
  ckpt.close()
  assert step == 30
  _assert_bit_identical(restored, state)
  assert restored_data == data
  assert (tmp_path / 'checkpoints' / '30').is_dir()


def test_restore_in_a_new_checkpointer_and_by_step(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path, keep=3)
  for step in (1, 2):
    ckpt.save(step, _state(step), _data(step))
  ckpt.wait()
  ckpt.close()
  # A restarted run: a fresh Checkpointer over the same workdir.
  ckpt = checkpoint.Checkpointer(tmp_path, keep=3)
  state, data, step = ckpt.restore(_template(), step=1)
  _assert_bit_identical(state, _state(1))
  assert (data, step) == (_data(1), 1)
  state, data, step = ckpt.restore(_template())
  _assert_bit_identical(state, _state(2))
  assert (data, step) == (_data(2), 2)
  ckpt.close()


def test_keep_retains_only_the_newest_steps(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path, keep=2)
  for step in (10, 20, 30):
    ckpt.save(step, _state(step), _data(step))
  ckpt.wait()
  assert list(ckpt.latest.all_steps()) == [20, 30]
  assert _step_dirs(tmp_path / 'checkpoints') == ['20', '30']
  # The dropped step is gone, and the error lists what is there.
  with pytest.raises(FileNotFoundError, match=r'step 10.*\[20, 30\]'):
    ckpt.restore(_template(), step=10)
  state, data, step = ckpt.restore(_template(), step=20)
  _assert_bit_identical(state, _state(20))
  assert (data, step) == (_data(20), 20)
  ckpt.close()


def test_best_min_keeps_the_lowest_metric(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path, best_metric='loss', best_mode='min')
  for step, loss in ((1, 0.5), (2, 0.3), (3, 0.4), (4, 0.45)):
    ckpt.save(step, _state(step), _data(step))
    ckpt.save_if_best(step, _state(step), _data(step), {'loss': loss,
                                                        'rmse': 1.0 / step})
  # Without the configured metric nothing is offered.
  ckpt.save_if_best(5, _state(5), _data(5), {'rmse': 0.0})
  ckpt.wait()
  assert ckpt.best.best_step() == 2
  state, data, step = ckpt.restore(_template(), which='best')
  _assert_bit_identical(state, _state(2))
  assert (data, step) == (_data(2), 2)
  assert 5 not in ckpt.best.all_steps()
  # The latest checkpoints are independent of the best one.
  assert ckpt.latest_step() == 4
  ckpt.close()


def test_a_nan_metric_is_never_offered_as_the_best(tmp_path):
  """A NaN compares false both ways: offered, Orbax kept or dropped its
  step by accident (a single-class validation split's ROC AUC)."""
  warnings = []
  ckpt = checkpoint.Checkpointer(tmp_path, best_metric='roc_auc',
                                 best_mode='max')
  for step, auc in ((1, float('nan')), (2, 0.7), (3, float('nan')),
                    (4, 0.6), (5, float('inf'))):
    ckpt.save_if_best(step, _state(step), _data(step), {'roc_auc': auc},
                      warn=warnings.append)
  ckpt.wait()
  assert ckpt.steps('best') == [2]
  assert warnings == [
      'gzjax: WARNING: roc_auc is nan at step 1, so the step is not a'
      ' candidate for the best checkpoint (none is kept yet).',
      'gzjax: WARNING: roc_auc is nan at step 3, so the step is not a'
      ' candidate for the best checkpoint (step 2 stays best).',
      'gzjax: WARNING: roc_auc is inf at step 5, so the step is not a'
      ' candidate for the best checkpoint (step 2 stays best).']
  ckpt.close()


def test_best_max_keeps_the_highest_metric(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path, best_metric='accuracy',
                                 best_mode='max')
  for step, accuracy in ((1, 0.6), (2, 0.9), (3, 0.7)):
    ckpt.save_if_best(step, _state(step), _data(step),
                      {'accuracy': accuracy})
  ckpt.wait()
  state, _, step = ckpt.restore(_template(), which='best')
  assert step == 2
  _assert_bit_identical(state, _state(2))
  ckpt.close()


def test_restore_with_nothing_saved_names_the_directory(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path / 'run', best_metric='loss')
  with pytest.raises(FileNotFoundError) as info:
    ckpt.restore(_template())
  message = str(info.value)
  assert str((tmp_path / 'run' / 'checkpoints').resolve()) in message
  assert 'No latest checkpoint' in message
  with pytest.raises(FileNotFoundError) as info:
    ckpt.restore(_template(), which='best')
  assert str((tmp_path / 'run' / 'best').resolve()) in str(info.value)
  ckpt.close()


def test_best_without_a_metric_says_how_to_set_one(tmp_path):
  ckpt = checkpoint.Checkpointer(tmp_path)
  ckpt.save(1, _state(1), _data(1))
  ckpt.wait()
  assert ckpt.best is None
  with pytest.raises(FileNotFoundError, match=r'config\.best_metric'):
    ckpt.restore(_template(), which='best')
  ckpt.close()


@pytest.mark.parametrize('leftover', [
    # Orbax 0.12's name for a step being written, then an older timestamped
    # form; neither is a complete step.
    '3.orbax-checkpoint-tmp',
    '3.orbax-checkpoint-tmp-1700000000000000',
])
def test_interrupted_save_does_not_break_resume(tmp_path, leftover):
  ckpt = checkpoint.Checkpointer(tmp_path, keep=2)
  ckpt.save(2, _state(2), _data(2))
  ckpt.wait()
  ckpt.close()
  # Simulate a run killed while writing step 3: a temporary directory with
  # part of a checkpoint (the state of another step, no data item).
  directory = tmp_path / 'checkpoints'
  partial = directory / leftover
  shutil.copytree(directory / '2', partial)
  shutil.rmtree(partial / 'data')
  (partial / 'state' / 'garbage').write_bytes(b'\x00truncated')

  ckpt = checkpoint.Checkpointer(tmp_path, keep=2)
  assert ckpt.latest_step() == 2
  state, data, step = ckpt.restore(_template())
  assert step == 2
  _assert_bit_identical(state, _state(2))
  assert data == _data(2)
  # The resumed run saves step 3 again, over the leftover, and reads it back.
  ckpt.save(3, _state(3), _data(3))
  ckpt.wait()
  assert list(ckpt.latest.all_steps()) == [2, 3]
  state, data, step = ckpt.restore(_template())
  assert step == 3
  _assert_bit_identical(state, _state(3))
  assert data == _data(3)
  ckpt.close()


def test_a_checkpoint_saved_before_model_state_was_named_restores(tmp_path):
  """TrainState.model_state was saved as ``rest`` until issue 11: such a
  checkpoint (written here by a dataclass with the old field names, the
  layout Orbax wrote then) restores into today's TrainState, bit for bit."""
  from flax import struct  # pylint: disable=g-import-not-at-top
  from gzjax import experiment  # pylint: disable=g-import-not-at-top

  @struct.dataclass
  class TrainStateBeforeTheRename:
    step: jax.Array
    params: dict
    rest: dict
    opt_state: tuple
    ema_params: tuple

  values = _state(4)
  rest = {'bn': {'mean': jnp.arange(3, dtype=jnp.float32) - 1.5,
                 'var': jnp.full((3,), 2.5, jnp.float32)},
          'rngs': {'key': jax.random.key(7),
                   'count': jnp.asarray(5, jnp.uint32)}}
  old = TrainStateBeforeTheRename(values['step'], values['params'], rest,
                                  values['opt'], ())
  ckpt = checkpoint.Checkpointer(tmp_path)
  ckpt.save(9, old, _data(9))
  ckpt.wait()
  template = experiment.TrainState(
      step=jnp.zeros((), jnp.int32), params=_template()['params'],
      model_state=jax.tree.map(jnp.zeros_like, rest),
      opt_state=_template()['opt'], ema_params=())
  state, data, step = ckpt.restore(template)
  ckpt.close()
  assert isinstance(state, experiment.TrainState) and step == 9
  assert data == _data(9)
  state = state.replace(model_state={**state.model_state, 'rngs': {
      'key': jax.random.key_data(state.model_state['rngs']['key']),
      'count': state.model_state['rngs']['count']}})
  rest['rngs']['key'] = jax.random.key_data(rest['rngs']['key'])
  _assert_bit_identical(state, experiment.TrainState(
      old.step, old.params, rest, old.opt_state, ()))
