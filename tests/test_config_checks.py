"""Every config key has a rule, checked at load; misspelt keys and files."""

import importlib.util
import pathlib
import subprocess
import sys

import pytest

from gzjax import config as base
from gzjax import config_checks
from gzjax import errors

REPO = pathlib.Path(__file__).resolve().parents[1]
# Experiment files; __init__.py and common.py (shared recipe pieces) are not.
CONFIGS = sorted(path for path in (REPO / 'configs').glob('*.py')
                 if path.stem not in ('__init__', 'common'))


def _load(path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def test_every_key_of_the_base_config_has_a_rule_that_refuses_something():
  keys = [key for key, _ in config_checks.leaves(base.base_config())]
  # The input and optimizer sections come from their own modules.
  assert 'input.num_epochs' in keys and 'optimizer.boundaries' in keys
  missing = sorted(set(keys) - set(config_checks.RULES))
  assert not missing, f'config keys without a rule in config_checks: {missing}'
  stale = sorted(set(config_checks.RULES) - set(keys))
  assert not stale, f'rules for keys the config no longer has: {stale}'
  for key in keys:  # A rule that allows anything is no rule.
    assert not config_checks.RULES[key].test(object()), key


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_passes(path):
  config = _load(path)
  assert config_checks.check(config) is config


@pytest.mark.parametrize('key, value, allowed', [
    ('optimizer.learning_rate', -0.01, 'a number > 0.0'),
    ('optimizer.learning_rate', 0.0, 'a number > 0.0'),
    ('input.batch_size', 0, 'an integer >= 1'),
    ('input.num_epochs', 0, 'None (repeat forever) or an integer >= 1'),
    ('model.dropout', 1.0, 'a number in [0.0, 1.0)'),
    ('task', 'vote', "one of 'votes', '3class', '7class'"),
    ('best_mode', 'mn', "one of 'min', 'max'"),
    ('model.name', 'efficientnet_b9', 'one of the registered models'),
    ('model.hidden', (16, 0), 'a tuple of positive layer widths'),
    ('input.augment.zoom', (1.3, 0.8), 'min <= max'),
    ('optimizer.warmup_steps', -1, 'an integer >= 0'),
    ('loss', 'softmax', "'mse' or 'bce' for task 'votes'"),
    ('class_weights', (1.0, 2.0), "() for task 'votes'"),
    ('best_metric', 'validation/accuracy', "'validation/rmse'"),
    ('optimizer.boundaries', {'100': 0.1}, "unless optimizer.schedule="),
    # jax.random.key(2**32 + 5) is key(5) on a 32-bit jax; nnx.Rngs(2**40)
    # is Rngs(0): the same "different" seeds, silently.
    ('seed', 2**32, 'an integer in [0, 4294967295]'),
])
def test_a_bad_value_is_one_line_naming_key_value_and_what_is_allowed(
    key, value, allowed):
  config = base.base_config()
  *parents, leaf = key.split('.')
  target = config
  for parent in parents:
    target = target[parent]
  target[leaf] = value
  with pytest.raises(errors.ConfigError) as info:
    config_checks.check(config)
  message = str(info.value)
  assert message.startswith(f'config.{key}=') and '\n' not in message
  assert allowed in message, message
  assert repr(value) in message, message  # A mapping too, not its YAML.


def test_classifier_configs_are_checked_for_consistency():
  config = base.base_config()
  config.task = '3class'
  with pytest.raises(errors.ConfigError,
                     match=r"config\.loss='mse'.*'softmax'"):
    config_checks.check(config)
  config.loss = 'softmax'
  config.best_metric = 'validation/accuracy'
  config.class_weights = (1.0, 1.0, 20.0)
  config_checks.check(config)
  config.class_weights = (1.0, 20.0)
  with pytest.raises(errors.ConfigError, match='3 positive weights'):
    config_checks.check(config)


@pytest.mark.parametrize('name, size, allowed', [
    ('cnn', 31, '32 or more for cnn (its native size is 64)'),
    ('inception_v3', 74, '75 or more for inception_v3 (its native size is'
     ' 299)'),
    ('efficientnet_b0', 31, '32 or more for efficientnet_b0 (its native size'
     ' is 224)'),
    ('viewpoint', 64, '69: viewpoint takes 69 px images only'),
])
def test_an_image_size_the_model_cannot_take_is_refused_with_the_config(
    name, size, allowed):
  """Before any workdir: the model itself refused it only when its step was
  traced, after the run had written config.json and TensorBoard files."""
  config = base.base_config()
  config.model.name = name
  config.input.image_size = size
  with pytest.raises(errors.ConfigError) as info:
    config_checks.check(config)
  assert str(info.value) == (f'config.input.image_size={size} is not allowed:'
                             f' use {allowed}.')
  config.input.image_size = int(allowed.split(' ')[0].rstrip(':'))
  config_checks.check(config)


def _main(tmp_path, *flags, config='configs/quickstart.py'):
  return subprocess.run(
      [sys.executable, '-m', 'gzjax.main', f'--config={config}',
       f'--workdir={tmp_path / "work"}', *flags],
      cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize('flags, line', [
    (['--config.optimizr.learning_rate=1'],
     'gzjax: --config.optimizr.learning_rate: the config has no such key; did'
     ' you mean --config.optimizer.learning_rate?'),
    (['--config.optimizer.learnign_rate=1'],
     'gzjax: --config.optimizer.learnign_rate: the config has no such key;'
     ' did you mean --config.optimizer.learning_rate?'),
    # num_epochs (None by default) parses: the only complaint is the rate.
    (['--config.input.num_epochs=2', '--config.optimizer.learning_rate=-0.01'],
     'gzjax: config.optimizer.learning_rate=-0.01 is not allowed: use a number'
     ' > 0.0.'),
    # The step's trace refused it, after the workdir was written.
    (['--config.input.image_size=31'],
     'gzjax: config.input.image_size=31 is not allowed: use 32 or more for cnn'
     ' (its native size is 64).'),
])
def test_cli_refuses_bad_keys_and_values_in_one_line_and_writes_nothing(
    tmp_path, flags, line):
  result = _main(tmp_path, *flags)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [line]
  assert not (tmp_path / 'work').exists()


@pytest.mark.parametrize('flag, line', [
    # A ConfigDict's repr is YAML: the line used to break after 'binry'.
    ('--config.labels.columns.spiral=binry',
     "gzjax: config.labels.columns={'spiral': 'binry'} is not allowed: use"
     ' {column: kind} with kind binary, multiclass, regression or'
     " votes:<answer column>,<answer column>[,...], e.g. {'spiral':"
     " 'binary'}."),
    # A bare word: ml_collections said "malformed node ... <ast.Name object
    # at 0x...>" and absl added a second line.
    ('--config.labels.columns=spiral',
     "gzjax: --config.labels.columns=spiral: expected a dict such as"
     " {'spiral': 'binary'}; quote it for the shell:"
     ' --config.labels.columns="{\'spiral\': \'binary\'}".'),
    ('--config.optimizer.boundaries=1000',
     'gzjax: --config.optimizer.boundaries=1000: expected a dict such as'
     ' {1000: 0.1, 2000: 0.01}; quote it for the shell:'
     ' --config.optimizer.boundaries="{1000: 0.1, 2000: 0.01}".'),
    ('--config.input.batch_size=abc',
     "gzjax: flag --config.input.batch_size=abc: invalid literal for int()"
     " with base 10: 'abc'; pass --helpshort to see the flags."),
])
def test_cli_refuses_a_bad_mapping_override_in_one_line(tmp_path, flag, line):
  result = _main(tmp_path, flag, config='configs/finetune_spiral.py')
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [line]
  assert not (tmp_path / 'work').exists()


def test_cli_names_a_misspelt_config_file(tmp_path):
  result = _main(tmp_path, config='configs/quickstrt.py')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      'gzjax: --config=configs/quickstrt.py: no such file; did you mean'
      ' configs/quickstart.py?']


def _entry_points():
  """Every function a library caller (or gzjax.main) starts a run with."""
  from gzjax import evaluate  # pylint: disable=g-import-not-at-top
  from gzjax import finetune  # pylint: disable=g-import-not-at-top
  from gzjax import predict  # pylint: disable=g-import-not-at-top
  from gzjax import train  # pylint: disable=g-import-not-at-top
  return {
      'train': lambda c, w: train.train_and_evaluate(c, w),
      'evaluate': lambda c, w: evaluate.evaluate(c, w),
      'predict': lambda c, w: evaluate.predict(c, [w]),
      'survey': lambda c, w: predict.run(c, [w], output_dir=w / 'out'),
      'predict_catalog': lambda c, w: predict.predict_catalog(
          c, w, None, predict.Options(w / 'out')),
      'finetune': lambda c, w: finetune.run(c, w),
      'finetune_evaluate': lambda c, w: finetune.evaluate(c, w),
      'finetune_predict': lambda c, w: finetune.predict(c, w),
  }


@pytest.mark.parametrize('entry', list(_entry_points()))
def test_every_entry_point_checks_the_config_before_reading_or_writing(
    tmp_path, entry):
  """gzjax.main leaves the check to these functions: each refuses a bad
  value first, before it opens a dataset, catalogue or checkpoint."""
  config = base.base_config()
  if entry.startswith('finetune') or entry == 'survey':
    config.labels.catalog = str(tmp_path / 'no_such_catalogue.csv')
    config.labels.columns = {'spiral': 'binary'}
  config.data_dir = str(tmp_path / 'no_data')
  config.optimizer.learning_rate = -0.01
  workdir = tmp_path / 'work'
  with pytest.raises(errors.ConfigError,
                     match=r'^config.optimizer.learning_rate=-0.01 is not'
                     r' allowed: use a number > 0.0.$'):
    _entry_points()[entry](config, workdir)
  assert sorted(p.name for p in tmp_path.iterdir()) == []
