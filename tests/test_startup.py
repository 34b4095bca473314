"""Start-up: jitted model creation, pretrained weights under jit, and the
persistent compilation cache across processes."""

import gc
import os
import pathlib
import re
import subprocess
import sys

from flax import nnx
import jax
import jax.extend
import numpy as np
import pytest

from gzjax import config as base
from gzjax import experiment as experiments
from gzjax import models
from gzjax import tasks
from gzjax.models import creation
from gzjax.models import weights

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(**overrides):
  config = base.base_config()
  config.model.head = 'sigmoid'
  config.model.hidden = (16,)
  config.model.dropout = 0.5  # A dropout stream in the state too.
  config.seed = 3
  for key, value in overrides.items():
    config.model[key] = value
  return config


def _named(state) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in
          jax.tree_util.tree_leaves_with_path(state)}


def _raw(x) -> np.ndarray:
  """Random keys as their bits, other arrays as they are."""
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  return np.asarray(x)


@pytest.fixture(scope='module')
def experiment():
  return experiments.create_experiment(_config())


def test_jitted_creation_gives_the_eager_parameters_replicated(experiment):
  config = _config()
  state = experiment.initial_state()
  eager = experiments.create_model(config, tasks.TASKS['votes'])
  _, params, rest = nnx.split(eager, nnx.Param, ...)
  jitted_params = _named(state.params)
  eager_params = _named(params)
  assert list(jitted_params) == list(eager_params)
  assert len(eager_params) == 16  # 6 conv + 2 dense layers, kernel and bias.
  for name, value in eager_params.items():
    assert jitted_params[name].dtype == value.dtype == np.float32, name
    # The same numbers: the pools are drawn by the same optimised code, and
    # a slice times a scale rounds alike unoptimised.
    np.testing.assert_array_equal(jitted_params[name], value)
  jitted_keys = jax.tree.leaves(state.model_state)
  eager_keys = jax.tree.leaves(rest)
  assert len(jitted_keys) == len(eager_keys) > 0
  for a, b in zip(jitted_keys, eager_keys):
    np.testing.assert_array_equal(_raw(a), _raw(b))
  for leaf in jax.tree.leaves(state):
    assert leaf.sharding == experiment.replicated
  # Without initialising: the same shapes, dtypes and shardings, no values.
  template = experiments.create_experiment(config).abstract_state()
  assert jax.tree.map(lambda t: (t.shape, t.dtype, t.sharding), template) == \
      jax.tree.map(lambda x: (x.shape, x.dtype, x.sharding), state)


def test_creation_keeps_the_initialisers_statistics_and_the_dropout_streams(
    experiment):
  state = experiment.initial_state()
  # Every other stream is the one nnx.Rngs(seed) gives, as before the pooled
  # initialisers: the head's dropout forks the default stream after the 12
  # conv and 2 hidden-layer parameters drew their keys from it (fold_in with
  # counts 0..13), so its key is fold_in(key(seed), 14) and its count 0.
  # Training's random masks do not change with the initialisers.
  count, key = jax.tree.leaves(state.model_state)
  assert int(count) == 0
  np.testing.assert_array_equal(
      _raw(key), _raw(jax.random.fold_in(jax.random.key(_config().seed), 14)))
  params = _named(state.params)
  assert len(params) == 16
  standardised = []
  for name, value in params.items():
    if name.endswith("['bias'].value"):
      np.testing.assert_array_equal(value, 0)  # zeros_init
      continue
    # lecun_normal: a normal of standard deviation sigma / 0.8796 truncated at
    # two of its standard deviations, which leaves sigma = 1/sqrt(fan_in)
    # (fan_in: all axes but the last).
    n = value.size
    sigma = 1 / np.sqrt(np.prod(value.shape[:-1]))
    # Five standard errors: the mean's sigma/sqrt(n); the sample standard
    # deviation's at most sigma/sqrt(2n) (the truncated normal's kurtosis,
    # 2.36, is below the normal's 3).
    assert abs(value.mean()) < 5 * sigma / np.sqrt(n), name
    assert abs(value.std() / sigma - 1) < 5 / np.sqrt(2 * n), name
    assert np.abs(value).max() <= 2 * sigma / 0.87962566 * (1 + 1e-6), name
    standardised.append(value.ravel() / sigma)
  assert len(standardised) == 8  # 6 conv and 2 dense kernels.
  # Each kernel is its own slice of the pooled draw: no two share numbers.
  m = min(map(len, standardised))  # 592, the output layer's.
  for i, a in enumerate(standardised):
    for b in standardised[i + 1:]:
      assert abs(np.corrcoef(a[:m], b[:m])[0, 1]) < 5 / np.sqrt(m)


def test_a_seed_gives_its_own_model_and_a_head_leaves_the_backbone():
  votes = tasks.TASKS['votes']
  def params(**overrides):
    config = _config()
    for key, value in overrides.items():
      config[key] = value
    return _named(nnx.state(experiments.create_model(config, votes),
                            nnx.Param))
  three = params()
  for name, value in params(seed=4).items():
    if name.endswith("['kernel'].value"):  # Biases are zeros for any seed.
      assert not np.allclose(value, three[name]), name
  # 2**31 and above are seeds too (config_checks allows [0, 2**32)).
  assert not np.allclose(params(seed=2**32 - 1)["['head']['output']['kernel']"
                                                ".value"],
                         three["['head']['output']['kernel'].value"])
  # Another head draws from another distribution (normal(0.01) for 'votes'
  # with no hidden layer): the backbone's pool, and weights, stay.
  config = _config()
  config.model.head, config.model.hidden = 'votes', ()
  other_head = _named(nnx.state(experiments.create_model(config, votes),
                                nnx.Param))
  backbone = [name for name in three if name.startswith("['backbone']")]
  assert len(backbone) == 12
  for name in backbone:
    np.testing.assert_array_equal(other_head[name], three[name])


def _count_primitive(jaxpr, name: str) -> int:
  count = 0
  for eqn in jaxpr.eqns:
    count += eqn.primitive.name == name
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      count += _count_primitive(sub, name)
  return count


def test_the_initialisers_draw_once_per_distribution():
  config, task = _config(), tasks.TASKS['votes']
  _, plan = experiments.trace_model(config, task)
  # lecun_normal for the 6 conv and 2 dense kernels, in creation order.
  assert [(d.kind, d.bounds, d.shape) for d in plan.draws] == [
      ('truncated_normal', (-2.0, 2.0), shape) for shape in
      [(3, 3, 3, 64), (3, 3, 64, 64), (3, 3, 64, 128)] + [(3, 3, 128, 128)] * 3
      + [(128, 16), (16, 37)]]
  pooled = jax.make_jaxpr(
      lambda: nnx.state(experiments.create_model(config, task, {},
                                                 plan=plan)))()
  one_by_one = jax.make_jaxpr(
      lambda: nnx.state(experiments._build_model(config, task)))()
  # The truncated normal's transform (erf_inv) once for all 8 kernels, where
  # flax's initialisers left to themselves compute it per kernel.
  assert _count_primitive(pooled.jaxpr, 'erf_inv') == 1
  assert _count_primitive(one_by_one.jaxpr, 'erf_inv') == 8
  # The engine's one trace: the same draws, every one pooled, and its state
  # program draws nothing (the pools' own program does, once).
  traced = creation.trace_once(
      lambda: (nnx.state(experiments._build_model(config, task)), None))
  assert traced.plan.draws == plan.draws
  state_program = jax.make_jaxpr(traced.evaluate)(
      creation.draw_pools(plan, creation.seed_data(config.seed)))
  for primitive in ('erf_inv', 'random_bits', 'threefry2x32'):
    assert _count_primitive(state_program.jaxpr, primitive) == 0, primitive


def test_creation_compiles_two_programs():
  programs = []
  def count(event, duration, **_):
    if event == '/jax/core/compile/backend_compile_duration':
      programs.append(duration)
  def count_hits(event, **_):
    if event == '/jax/compilation_cache/cache_hits':
      programs.append(0.0)
  jax.monitoring.register_event_duration_secs_listener(count)
  jax.monitoring.register_event_listener(count_hits)
  try:
    # A width no other test compiles: XLA has not seen this program.
    jax.block_until_ready(experiments.create_experiment(
        _config(hidden=(7,))).initial_state())
  finally:
    jax.monitoring.unregister_event_duration_listener(count)
    jax.monitoring.unregister_event_listener(count_hits)
  # The pooled draws (one per distribution), then the parameters, pretrained
  # weights and optimizer state from them: two programs (eager creation
  # compiled one per initialiser and shape; a seed is an argument, not a
  # program of its own).
  assert len(programs) == 2, programs


def test_creation_builds_the_model_once(monkeypatch):
  built = []
  original = models.GalaxyModel.__init__

  def counted(self, *args, **kwargs):
    built.append(1)
    original(self, *args, **kwargs)

  monkeypatch.setattr(models.GalaxyModel, '__init__', counted)
  experiment = experiments.create_experiment(_config(hidden=(5,)))
  assert len(built) == 1  # Its structure, labels, optimizer and program.
  jax.block_until_ready(experiment.initial_state())
  experiment.abstract_state()
  # The state is the traced program run on the pools: no module built again
  # (the shape pass and a second build for the values had cost B7 two).
  assert len(built) == 1
  models.create('cnn', seed=1)
  assert len(built) == 2


def test_creation_traces_with_the_heap_frozen(monkeypatch):
  # The model's build and the state program's trace run with the imported
  # heap frozen (gzjax.heap: the collector's full walks of it were 0.55 s
  # of B7's creation), and the heap is given back afterwards.
  seen = []

  def recording(function):
    return lambda *a, **k: seen.append(gc.get_freeze_count()) or function(
        *a, **k)

  monkeypatch.setattr(models.GalaxyModel, '__init__',
                      recording(models.GalaxyModel.__init__))
  monkeypatch.setattr(creation.Traced, 'evaluate',
                      recording(creation.Traced.evaluate))
  monkeypatch.setattr(creation, 'trace_once', recording(creation.trace_once))
  experiment = experiments.create_experiment(_config(hidden=(6,)))
  jax.block_until_ready(experiment.initial_state())
  experiment.abstract_state()
  models.create('cnn', seed=2)
  # Traced and built twice (the experiment's model, models.create's), the
  # state program traced three times (initial_state, abstract_state, create).
  assert len(seen) == 7 and all(count > 1000 for count in seen), seen
  assert gc.get_freeze_count() == 0


def test_models_create_without_rngs_is_the_eager_pooled_model():
  jitted = models.create('cnn', seed=5)
  build = lambda: models.create('cnn', rngs=creation.CreationRngs(5))
  _, plan = creation.trace(build)
  with creation.pooled(plan, creation.draw_pools(plan,
                                                 creation.seed_data(5))):
    eager = build()
  a = _named(nnx.state(jitted, nnx.Param))
  b = _named(nnx.state(eager, nnx.Param))
  assert list(a) == list(b) and len(a) == 14
  # The rest of the state too: batch-norm statistics, random streams.
  rest_a = jax.tree.leaves(nnx.state(jitted, nnx.Not(nnx.Param)))
  rest_b = jax.tree.leaves(nnx.state(eager, nnx.Not(nnx.Param)))
  assert len(rest_a) == len(rest_b) > 0
  for x, y in zip(rest_a, rest_b):
    np.testing.assert_array_equal(_raw(x), _raw(y))
  for name in a:  # As in the experiment's creation above.
    np.testing.assert_array_equal(a[name], b[name])


def _donor_file(tmp_path, head: str, hidden=()) -> dict[str, np.ndarray]:
  """A "pretrained" backbone: the same architecture from another seed."""
  donor = models.create('cnn', rngs=nnx.Rngs(11), head=head, hidden=hidden)
  arrays = {k: np.asarray(v) for k, v in
            weights.named_variables(donor, 'backbone/').items()}
  weights.save(tmp_path / 'donor.msgpack', arrays)
  return arrays


def _check_pretrained(state, fresh_state, arrays, count: int) -> None:
  """The backbone is the file's; the head keeps the config seed's
  initialisation (the fresh experiment's, bit for bit), its random streams
  too."""
  fresh_rest = dict(nnx.to_flat_state(fresh_state.model_state))
  for path, variable in nnx.to_flat_state(state.model_state):
    if path[0] == 'head':
      np.testing.assert_array_equal(_raw(variable.get_value()),
                                    _raw(fresh_rest[path].get_value()))
  params = nnx.to_flat_state(state.params)
  fresh_params = dict(nnx.to_flat_state(fresh_state.params))
  assert len(params) == count
  for path, variable in params:
    name = '/'.join(map(str, path))
    value = np.asarray(variable.get_value())
    if name.startswith('backbone/'):
      np.testing.assert_array_equal(value, arrays[name])
    else:
      np.testing.assert_array_equal(
          value, np.asarray(fresh_params[path].get_value()))
      if name.endswith('kernel'):  # Drawn, not a pool left at zeros.
        assert np.abs(value).max() > 0, name


def test_pretrained_weights_fill_the_jitted_state(experiment, tmp_path):
  arrays = _donor_file(tmp_path, 'sigmoid', hidden=(16,))
  config = _config(pretrained=str(tmp_path / 'donor.msgpack'))
  _check_pretrained(experiments.create_experiment(config).initial_state(),
                    experiment.initial_state(), arrays, count=16)


def test_a_pretrained_backbone_leaves_its_pool_undrawn(tmp_path, monkeypatch):
  # The votes head draws from normal(0.01), the backbone from a truncated
  # normal: with the whole backbone pretrained, only the head's pool is drawn.
  arrays = _donor_file(tmp_path, 'votes')
  fresh = experiments.create_experiment(_config(head='votes', hidden=()))
  fresh_state = fresh.initial_state()
  drawn = []
  real_draw = creation._draw
  monkeypatch.setattr(creation, '_draw', lambda kind, *args: (
      drawn.append(kind), real_draw(kind, *args))[1])
  config = _config(head='votes', hidden=(),
                   pretrained=str(tmp_path / 'donor.msgpack'))
  state = experiments.create_experiment(config).initial_state()
  assert drawn == ['normal']
  _check_pretrained(state, fresh_state, arrays, count=14)


def test_a_second_process_loads_the_step_from_the_cache(tmp_path):
  # The configs follow $XDG_CACHE_HOME, which conftest points at a temporary
  # directory so that tests never write the user's ~/.cache.
  assert base.base_config().compilation_cache_dir == os.path.join(
      os.environ['XDG_CACHE_HOME'], 'gzjax', 'jax')
  result = subprocess.run(
      [sys.executable, 'tools/startup_benchmark.py', '--models=cnn:32',
       '--batch_size=2', '--timeout=300'],
      capture_output=True, text=True, cwd=REPO,
      env={**os.environ, 'PYTHONPATH': str(REPO)})
  assert result.returncode == 0, result.stderr[-3000:]
  header, _, row = result.stdout.strip().splitlines()
  cells = dict(zip(
      (cell.strip() for cell in header.strip('|').split('|')),
      (cell.strip() for cell in row.strip('|').split('|')), strict=True))
  assert [cells['model'], cells['px'], cells['batch']] == ['cnn', '32', '2']
  seconds = ['create s', 'compile s', 'first step s', 'warm-cache compile s',
             'warm-cache create s']
  assert all(re.fullmatch(r'\d+\.\d', cells[name]) for name in seconds), cells
  assert 0 < float(cells['create s']) < float(cells['first step s'])
  # The collector's seconds during the creation and the compile.
  create_gc, compile_gc = map(
      float, cells['collector s (create / compile)'].split(' / '))
  assert 0 <= create_gc < float(cells['create s'])
  assert 0 <= compile_gc < float(cells['compile s'])
  # The train step (and the initialisation) compiled in the first process
  # are read back from the cache in the second, which also loads the traced
  # train step instead of tracing it (gzjax.programs).
  assert int(cells['cache hits']) >= 1, cells
  assert cells['programs loaded'] == '1', cells
