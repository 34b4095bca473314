"""Every experiment in configs/: it loads, documents itself, holds the
published recipe it claims, and (for the models that are cheap on a CPU)
takes a finite training step with its own model, loss and optimizer."""

from __future__ import annotations

import importlib.util
import pathlib

import jax
import numpy as np
import pytest

from gzjax import experiment as experiments
from gzjax import train

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'configs'
# Experiment files; __init__.py and common.py (shared recipe pieces) are not.
NAMES = sorted(path.stem for path in CONFIGS.glob('*.py')
               if path.stem not in ('__init__', 'common'))


def _load(name: str):
  spec = importlib.util.spec_from_file_location(name, CONFIGS / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_the_issue_s_configs_are_all_there():
  assert NAMES == ['cnn_3class', 'cnn_votes', 'effnet_7class', 'effnet_votes',
                   'finetune_spiral', 'inception_votes', 'quickstart',
                   'viewpoint_votes']


@pytest.mark.parametrize('name', NAMES)
def test_docstring_gives_command_runtime_and_result(name):
  doc = _load(name).__doc__
  assert f'python -m gzjax.main --config=configs/{name}.py' in doc
  assert 'Runtime' in doc or 'minutes' in doc, 'say how long it takes'
  assert 'Expected' in doc, 'say what result to expect'


@pytest.mark.parametrize('name', NAMES)
def test_real_data_by_default_except_the_quickstart(name):
  config = _load(name).get_config()
  expected = ('galaxy_zoo/synthetic' if name == 'quickstart'
              else 'galaxy_zoo/kaggle')
  assert config.dataset == expected


def test_published_recipes():
  seed = _load('cnn_votes').get_config()
  assert (seed.input.image_size, seed.optimizer.learning_rate) == (64, 0.002)
  inception = _load('inception_votes').get_config()
  assert inception.model.name == 'inception_v3'
  assert inception.optimizer.learning_rate == 0.001
  assert inception.optimizer.freeze_backbone
  assert inception.task == 'votes'
  for name, task in (('effnet_votes', 'votes'), ('effnet_7class', '7class')):
    effnet = _load(name).get_config()
    assert effnet.task == task
    assert effnet.model.name == 'efficientnet_b0'
    assert (effnet.input.crop_size, effnet.input.image_size) == (212, 224)
    assert (effnet.optimizer.name, effnet.optimizer.learning_rate) == (
        'adam', 1.5e-4)
    assert effnet.optimizer.schedule == 'plateau'
  assert _load('effnet_7class').get_config().best_mode == 'max'
  viewpoint = _load('viewpoint_votes').get_config()
  assert (viewpoint.input.crop_size, viewpoint.input.image_size) == (207, 69)
  assert (viewpoint.optimizer.name, viewpoint.optimizer.momentum,
          viewpoint.optimizer.learning_rate) == ('sgd', 0.9, 0.04)
  assert viewpoint.optimizer.schedule == 'piecewise'
  # Dieleman: divided by 10 after 18M and 23M examples, at batch 16.
  assert {int(k) * 16: v for k, v in viewpoint.optimizer.boundaries.items()
          } == {18_000_000: 0.1, 23_000_000: 0.01}
  three = _load('cnn_3class').get_config()
  assert (three.task, three.loss) == ('3class', 'softmax')


def test_every_config_computes_in_bfloat16_on_accelerators_only():
  for name in NAMES:
    config = _load(name).get_config()
    assert config.model.dtype == 'auto', name
    assert "model.dtype='auto'" in _load(name).__doc__, name


@pytest.mark.parametrize('name', ['quickstart', 'cnn_votes', 'cnn_3class',
                                  'viewpoint_votes'])
def test_one_training_step_is_finite_and_moves_the_parameters(name):
  config = _load(name).get_config()
  config.input.batch_size = 4
  size = config.input.image_size
  experiment = experiments.create_experiment(config)
  state = experiment.initial_state()
  before = [np.asarray(x) for x in jax.tree.leaves(state.params)]
  rng = np.random.default_rng(0)
  batch = train.to_global({
      'image': rng.normal(size=(4, size, size, 3)).astype(np.float32),
      'votes': rng.random((4, 37)).astype(np.float32),
      'votes_mask': np.ones((4, 37), bool),
      'label_3class': np.array([0, 1, 2, 0], np.int32),
      'label_7class': np.array([0, 3, 5, 6], np.int32),
      'example_mask': np.ones(4, bool),
  }, experiment.batch_sharding)
  step = train.make_train_step(experiment)
  # Two steps: warmup schedules start at a learning rate of 0.
  for _ in range(2):
    state, metrics = step(state, batch)
  assert np.isfinite(float(metrics['loss']))
  after = [np.asarray(x) for x in jax.tree.leaves(state.params)]
  assert any(not np.array_equal(a, b) for a, b in zip(before, after))
