"""Traced programs kept beside the compilation cache (gzjax.programs): the
same bits as the plain jit, no tracing in a later process, and a new trace
whenever anything that shapes the program changes."""

import dataclasses
import gc
import logging
import types

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gzjax import evaluate
from gzjax import experiment as experiments
from gzjax import losses
from gzjax import programs
from gzjax import tasks
from gzjax import train
from tests.conftest import random_batch
from tests.conftest import tiny_config

_SETTINGS = ('jax_enable_compilation_cache', 'jax_compilation_cache_dir',
             'jax_persistent_cache_min_compile_time_secs')


@pytest.fixture
def cache(tmp_path):
  """The persistent compilation cache in tmp_path, as gzjax.main sets it;
  JAX's settings as they were afterwards."""
  saved = {name: getattr(jax.config, name) for name in _SETTINGS}
  experiments.use_compilation_cache(str(tmp_path / 'jax'))
  yield tmp_path / 'jax' / programs.FOLDER
  for name, value in saved.items():
    jax.config.update(name, value)


@pytest.fixture
def traces(monkeypatch):
  """How many times the train step's loss was traced (Python ran it)."""
  count = []
  compute = losses.compute
  monkeypatch.setattr(losses, 'compute',
                      lambda *a, **k: count.append(1) or compute(*a, **k))
  return count


@pytest.fixture
def hits():
  events = []
  listener = lambda event, **_: events.append(event) if (
      event == programs.HIT_EVENT) else None
  jax.monitoring.register_event_listener(listener)
  yield events
  jax.monitoring.unregister_event_listener(listener)


def _experiment(**overrides):
  return experiments.create_experiment(tiny_config('/nonexistent',
                                                   **overrides))


def _batch(experiment, size=8, image_size=32):
  return random_batch(experiment, np.random.default_rng(0), size, image_size)


def _leaves(tree) -> list[np.ndarray]:
  return [np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(
      x.dtype, jax.dtypes.prng_key) else x) for x in jax.tree.leaves(tree)]


def _assert_same(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(_leaves(a), _leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def test_a_kept_step_runs_the_plain_jits_bits_and_is_not_traced_again(
    cache, traces, hits):
  experiment = _experiment(**{'model.dropout': 0.5})
  batch = _batch(experiment)
  step = train.make_train_step(experiment)
  plain = step.jitted.jitted  # jax.jit of the same function.
  expected = plain(experiment.initial_state(), batch, None)
  assert not cache.exists()

  state = experiment.initial_state()
  first = step(state, batch)
  (kept,) = cache.glob('train_step-*.program')
  _assert_same(first, expected)
  # The state is donated as with the plain jit.
  assert all(x.is_deleted() for x in jax.tree.leaves(state))
  assert hits == []
  traced = len(traces)

  # What a later process does: a new step, the same config; two steps.
  again = train.make_train_step(_experiment(**{'model.dropout': 0.5}))
  state = experiment.initial_state()
  state, _ = again(state, batch)
  state, metrics = again(state, batch)
  assert len(traces) == traced, 'a kept program was traced again'
  assert hits == [programs.HIT_EVENT]
  assert list(cache.glob('*')) == [kept]
  expected_state, _ = plain(expected[0], batch, None)
  _assert_same(state, expected_state)
  assert np.isfinite(float(metrics['loss']))


@pytest.mark.parametrize('kept', [True, False])
def test_a_program_traces_with_the_heap_frozen_and_steps_do_not_freeze_it(
    kept, request, monkeypatch):
  if kept:
    request.getfixturevalue('cache')
  seen, freezes = [], []
  compute, freeze = losses.compute, gc.freeze
  monkeypatch.setattr(losses, 'compute', lambda *a, **k: seen.append(
      gc.get_freeze_count()) or compute(*a, **k))
  monkeypatch.setattr(gc, 'freeze', lambda: freezes.append(1) or freeze())
  experiment = _experiment()
  batch = _batch(experiment)
  step = train.make_train_step(experiment)
  state, _ = step(experiment.initial_state(), batch)
  # The first call traced the loss with the heap frozen (gzjax.heap) ...
  assert seen and all(count > 1000 for count in seen), seen
  assert gc.get_freeze_count() == 0
  called = len(freezes)
  for _ in range(3):
    state, _ = step(state, batch)
  # ... and the later calls, which do not trace, do not freeze it.
  assert len(freezes) == called and len(seen) == 1
  # Lowering (for compiling ahead, or for the FLOP count) traces frozen too.
  seen.clear()
  other = _experiment(**{'model.dropout': 0.25})
  train.make_train_step(other).lower(other.initial_state(), batch)
  assert seen and all(count > 1000 for count in seen), seen
  assert gc.get_freeze_count() == 0


def test_lower_and_compile_are_the_kept_programs(cache):
  experiment = _experiment()
  batch, state = _batch(experiment), experiment.initial_state()
  step = train.make_train_step(experiment)
  plain = step.jitted.jitted.lower(state, batch, None)
  lowered = step.lower(state, batch)
  # The kept program is the same computation: XLA counts the same FLOPs.
  assert lowered.cost_analysis()['flops'] == plain.cost_analysis()['flops']
  assert len(list(cache.glob('train_step-*.program'))) == 1
  compiled = step.compile(state, batch)
  _assert_same(compiled(experiment.initial_state(), batch),
               step.jitted.jitted(experiment.initial_state(), batch, None))


@pytest.mark.parametrize('change', ['config', 'code', 'shape'])
def test_anything_that_shapes_the_program_traces_it_again(
    cache, traces, hits, monkeypatch, change):
  experiment = _experiment()
  train.make_train_step(experiment)(experiment.initial_state(),
                                    _batch(experiment))
  size = 8
  if change == 'config':
    experiment = _experiment(**{'optimizer.learning_rate': 0.5})
  elif change == 'code':  # An edited gzjax module.
    monkeypatch.setattr(programs, '_code_digest', lambda: 'edited')
  else:
    size = 4
  train.make_train_step(experiment)(experiment.initial_state(),
                                    _batch(experiment, size))
  assert len(traces) == 2 and hits == []
  assert len(list(cache.glob('train_step-*.program'))) == 2


@pytest.mark.parametrize('damage', ['truncated', 'one byte changed'])
def test_an_unreadable_kept_program_is_named_traced_again_and_replaced(
    cache, traces, hits, caplog, damage):
  experiment = _experiment()
  batch = _batch(experiment)
  train.make_train_step(experiment)(experiment.initial_state(), batch)
  (kept,) = cache.glob('train_step-*.program')
  good = kept.read_bytes()
  if damage == 'truncated':
    bad = good[:len(good) // 2]
  else:  # Inside the serialised module, near the end of the file.
    at = len(good) - len(good) // 8
    bad = good[:at] + bytes([good[at] ^ 0xFF]) + good[at + 1:]
  kept.write_bytes(bad)
  with caplog.at_level(logging.WARNING):
    outputs = train.make_train_step(experiment)(experiment.initial_state(),
                                                batch)
  (warning,) = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING]
  assert str(kept) in warning and 'tracing train_step again' in warning
  assert len(traces) == 2 and hits == []
  _assert_same(outputs, train.make_train_step(experiment).jitted.jitted(
      experiment.initial_state(), batch, None))
  # Replaced by a whole one, which the next process loads.
  assert kept.read_bytes() != bad
  train.make_train_step(experiment)(experiment.initial_state(), batch)
  assert hits == [programs.HIT_EVENT] and len(traces) == 3


def test_an_unwritable_folder_runs_the_step_without_keeping_it(cache,
                                                                caplog):
  cache.parent.mkdir(parents=True, exist_ok=True)
  cache.write_text('a file where the folder goes')
  experiment = _experiment()
  batch = _batch(experiment)
  with caplog.at_level(logging.WARNING):
    outputs = train.make_train_step(experiment)(experiment.initial_state(),
                                                batch)
  assert any('Cannot keep the traced program in' in r.getMessage()
             and str(cache) in r.getMessage() for r in caplog.records)
  assert cache.read_text() == 'a file where the folder goes'
  _assert_same(outputs, train.make_train_step(experiment).jitted.jitted(
      experiment.initial_state(), batch, None))


def test_nothing_is_kept_without_the_cache_or_for_a_task_of_your_own(
    cache, traces, tmp_path):
  config = tiny_config('/nonexistent')
  # A task with a loss of its own: its code is not in any key.
  own = dataclasses.replace(tasks.TASKS['votes'], name='own',
                            loss=lambda outputs, batch: outputs.mean())
  assert programs.describe(config, own) is None
  assert programs.describe(config, tasks.TASKS['votes']) is not None
  experiment = experiments.create_experiment(config, own)
  batch = _batch(experiment)
  step = train.make_train_step(experiment)
  step(experiment.initial_state(), batch)
  step(experiment.initial_state(), batch)
  assert not cache.exists()

  experiments.use_compilation_cache('')  # Off.
  experiment = _experiment()
  predict = evaluate.make_predict_fn(experiment)
  assert predict.folder() is None
  predict(experiment.initial_state(), batch['image'])
  assert not cache.exists()


def test_the_predict_function_is_kept_too(cache, hits):
  experiment = _experiment()
  images = _batch(experiment)['image']
  state = experiment.initial_state()
  first = evaluate.make_predict_fn(experiment, tta=True)(state, images)
  again = evaluate.make_predict_fn(experiment, tta=True)(state, images)
  plain = evaluate.make_predict_fn(experiment, tta=True).jitted(state, images)
  assert [p.name.split('-')[0] for p in cache.glob('*')] == ['predict_tta']
  assert hits == [programs.HIT_EVENT]
  np.testing.assert_array_equal(first, plain)
  np.testing.assert_array_equal(again, plain)


def test_the_code_digest_reads_every_module(tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  package = tmp_path / 'gzjax'
  shutil.copytree(programs._PACKAGE, package,
                  ignore=shutil.ignore_patterns('__pycache__'))
  digest = programs._code_digest.__wrapped__
  assert digest(package) == programs._code_digest()
  module = package / 'data' / 'device_augment.py'  # Not programs.py.
  module.write_text(module.read_text() + '\n# edited\n')
  assert digest(package) != programs._code_digest()


def test_the_description_holds_the_config_task_and_extras():
  config = tiny_config('/nonexistent')
  votes, three = tasks.TASKS['votes'], tasks.TASKS['3class']
  described = programs.describe(config, votes, (1, 2))
  assert described == programs.describe(tiny_config('/nonexistent'), votes,
                                        (1, 2))
  assert described != programs.describe(config, votes, (1, 3))
  assert described != programs.describe(config, three, (1, 2))
  config.input.crop_size = 40  # Not a model field: still in the key.
  assert described != programs.describe(config, votes, (1, 2))


def test_a_jax_setting_traces_again(cache, traces, hits):
  experiment = _experiment()
  batch = _batch(experiment)
  train.make_train_step(experiment)(experiment.initial_state(), batch)
  with jax.default_matmul_precision('highest'):
    train.make_train_step(experiment)(experiment.initial_state(), batch)
  assert hits == [] and len(traces) == 2
  assert len(list(cache.glob('train_step-*.program'))) == 2


def test_the_functions_own_error_is_raised_once_without_a_warning(
    cache, caplog):
  experiment = _experiment()
  with caplog.at_level(logging.WARNING):
    with pytest.raises(ValueError, match='needs inputs of at least'):
      train.make_train_step(experiment)(experiment.initial_state(),
                                        _batch(experiment, image_size=8))
  assert not caplog.records
  assert not cache.exists()


def test_weak_types_and_the_devices_shardings_lie_on_are_in_the_key(cache):
  sharding = jax.sharding.NamedSharding(
      jax.sharding.Mesh(np.array(jax.devices()[:1]), ('data',)),
      jax.sharding.PartitionSpec())
  double = programs.jit(lambda x: x * 2, name='double', key='test',
                        in_shardings=(sharding,), out_shardings=sharding)
  weak = jax.jit(lambda: 1.0)()  # A Python float's weak type.
  assert weak.dtype == jnp.float32 and jax.typeof(weak).weak_type
  double(weak)
  double(jnp.float32(1.0))
  assert len(list(cache.glob('double-*.program'))) == 2

  # A NamedSharding's text names its mesh's axis sizes, not its devices:
  # the key also lists those (a CPU-mesh step is not a GPU step).
  class Sharding:
    def __init__(self, device):
      self.mesh = types.SimpleNamespace(devices=np.array([device]))
    def __repr__(self):
      return "NamedSharding(mesh=Mesh('data': 1), spec=PartitionSpec())"
  cpu = types.SimpleNamespace(platform='cpu', id=0)
  gpu = types.SimpleNamespace(platform='cuda', id=0)
  assert programs._placement(Sharding(cpu)) != programs._placement(
      Sharding(gpu))


def test_flax_settings_are_in_the_key():
  before = programs._environment()
  saved = flax.config.flax_max_repr_depth
  flax.config.update('flax_max_repr_depth', 7)
  try:
    assert programs._environment() != before
  finally:
    flax.config.update('flax_max_repr_depth', saved)
  assert programs._environment() == before


def test_without_flatbuffers_nothing_is_kept_and_it_says_how_to_fix_it(
    cache, monkeypatch, caplog):
  find_spec = programs.importlib.util.find_spec
  monkeypatch.setattr(programs.importlib.util, 'find_spec',
                      lambda name: None if name == 'flatbuffers'
                      else find_spec(name))
  programs._can_serialise.cache_clear()
  try:
    experiment = _experiment()
    with caplog.at_level(logging.WARNING):
      step = train.make_train_step(experiment)
      step(experiment.initial_state(), _batch(experiment))
      assert step.jitted.folder() is None  # Said once, above.
  finally:
    programs._can_serialise.cache_clear()
  assert not cache.exists()
  (warning,) = [r.getMessage() for r in caplog.records]
  assert 'jax.export needs flatbuffers (pip install flatbuffers)' in warning
