"""User-fixable errors are one line; a bug keeps its traceback."""

import pathlib

from absl import flags
import pytest

from gzjax import errors
from gzjax import main
from tests.conftest import parse_main_flags
from gzjax import train
from gzjax.data import cache
from gzjax.data import galaxy_zoo
from gzjax.data import kaggle
from gzjax.models import weights

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_every_user_error_shares_the_base_and_keeps_its_old_type():
  for error, old in ((kaggle.DataError, ValueError),
                     (cache.CacheError, ValueError),
                     (weights.WeightMismatchError, ValueError),
                     (galaxy_zoo.DatasetNotBuiltError, FileNotFoundError),
                     (train.TrainingDiverged, RuntimeError),
                     (errors.ConfigError, ValueError),
                     (errors.MissingCheckpointError, FileNotFoundError)):
    assert issubclass(error, errors.GzjaxError) and issubclass(error, old)
  assert kaggle.DataError is errors.DataError


@pytest.fixture
def parsed_flags(tmp_path):
  parse_main_flags([
      'gzjax.main', f'--config={REPO / "configs" / "quickstart.py"}',
      f'--workdir={tmp_path}'])
  yield
  flags.FLAGS.unparse_flags()


def test_main_prints_a_user_error_as_one_line(parsed_flags, monkeypatch,
                                              capsys):
  def fail(config, workdir):
    raise train.TrainingDiverged('The training loss became nan at step 3.')
  monkeypatch.setattr(train, 'train_and_evaluate', fail)
  with pytest.raises(SystemExit) as exit_info:
    main.main(['gzjax.main'])
  assert exit_info.value.code == 1
  assert capsys.readouterr().err == (
      'gzjax: The training loss became nan at step 3.\n')


def test_main_lets_a_bug_keep_its_traceback(parsed_flags, monkeypatch):
  def bug(config, workdir):
    raise ValueError('a bug deep in a library')
  monkeypatch.setattr(train, 'train_and_evaluate', bug)
  with pytest.raises(ValueError, match='a bug deep in a library'):
    main.main(['gzjax.main'])
