"""Shared fixtures: where the real Kaggle sample lives.

The sample is read from ``../shared`` beside the checkout (CI clones the
project there); ``GZJAX_KAGGLE_SAMPLE`` points elsewhere.  It is never copied
into the project.  A missing sample is an error, not a skip: the tests that
need real data must run.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time
import tempfile

import pytest

# The configs put JAX's persistent compilation cache under $XDG_CACHE_HOME
# (default ~/.cache): tests, and the processes they start, write to a
# temporary one instead of the user's.
os.environ['XDG_CACHE_HOME'] = tempfile.mkdtemp(prefix='gzjax_test_cache_')

REPO = pathlib.Path(__file__).resolve().parents[1]
KAGGLE_SAMPLE = pathlib.Path(
    os.environ.get(
        'GZJAX_KAGGLE_SAMPLE',
        REPO.parent / 'shared' / 'data' / 'galaxy_zoo_kaggle_sample',
    )
)


@pytest.fixture(scope='session')
def kaggle_sample() -> pathlib.Path:
  """The real sample: 600 labelled rows (17 known answers each), 4,850 JPEGs."""
  if not (KAGGLE_SAMPLE / 'training_solutions_partial.csv').is_file():
    raise FileNotFoundError(
        f'The real Galaxy Zoo sample is not at {KAGGLE_SAMPLE}; clone the'
        ' project beside shared/ or set GZJAX_KAGGLE_SAMPLE.'
    )
  return KAGGLE_SAMPLE


@pytest.fixture(scope='session')
def kaggle_sample_data_dir(kaggle_sample, tmp_path_factory) -> pathlib.Path:
  """A data_dir holding galaxy_zoo/kaggle built from the real sample."""
  from gzjax.data import galaxy_zoo  # pylint: disable=g-import-not-at-top

  data_dir = tmp_path_factory.mktemp('kaggle_sample_data')
  galaxy_zoo.prepare('kaggle', data_dir, manual_dir=kaggle_sample)
  return data_dir


@pytest.fixture(scope='session')
def synthetic_data_dir(tmp_path_factory) -> pathlib.Path:
  """galaxy_zoo/synthetic with 2,000 labelled 96 px galaxies (~10 s to build).

  At 96 px, :func:`tiny_config`'s 48 px centre crop covers the same field as
  the Kaggle pipeline's 207 of 424 px.
  """
  from gzjax.data import galaxy_zoo  # pylint: disable=g-import-not-at-top

  data_dir = tmp_path_factory.mktemp('synthetic_data')
  galaxy_zoo.prepare('synthetic', data_dir, num_labelled=2000, num_test=12,
                     image_size=96, num_workers=2)
  return data_dir


def tiny_config(data_dir, **overrides):
  """The quickstart config shrunk for tests: the seed CNN at 32 px."""
  from gzjax import config as base  # pylint: disable=g-import-not-at-top

  config = base.base_config()
  config.dataset = 'galaxy_zoo/synthetic'
  config.data_dir = str(data_dir)
  config.input.crop_size = 48
  config.input.image_size = 32
  config.input.batch_size = 8
  config.input.read_threads = 1
  config.optimizer.learning_rate = 2e-3
  config.num_train_steps = 6
  config.log_every_steps = 2
  config.eval_every_steps = 6
  config.checkpoint_every_steps = 3
  config.lock()  # A misspelt override key is an error, not a new key.
  config.update_from_flattened_dict(overrides)
  config.unlock()
  return config


def random_batch(experiment, rng, size=8, image_size=32):
  """A batch of ``size`` random images and labels for :func:`tiny_config`'s
  model, as global arrays on the experiment's batch sharding."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from gzjax import train  # pylint: disable=g-import-not-at-top

  return train.to_global({
      'image': rng.normal(size=(size, image_size, image_size, 3)
                          ).astype(np.float32),
      'votes': rng.random((size, 37)).astype(np.float32),
      'votes_mask': np.ones((size, 37), bool),
      'label_3class': np.zeros(size, np.int32),
      'label_7class': np.zeros(size, np.int32),
      'example_mask': np.ones(size, bool),
  }, experiment.batch_sharding)


def kill_when(command, appears: pathlib.Path, *, cwd=REPO, env=None,
              timeout: float = 300) -> None:
  """Starts ``command`` and SIGKILLs it as soon as ``appears`` exists (a
  checkpoint being written): the kill of a run that resume tests need."""
  process = subprocess.Popen(command, cwd=cwd, env=env,
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  deadline = time.time() + timeout
  try:
    while not appears.is_dir():
      assert process.poll() is None, f'{command} ended before {appears}'
      assert time.time() < deadline, f'no {appears} within {timeout} s'
      time.sleep(0.02)
  finally:
    process.send_signal(signal.SIGKILL)
    process.wait()


def main_exit_code(argv: list[str]) -> int:
  """Runs gzjax.main's ``main`` in this process with ``argv`` as its command
  line, expecting it to exit (a refusal, an interruption); its exit code.
  The flags are reset after, so nothing reaches the next test."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from gzjax import main as cli  # pylint: disable=g-import-not-at-top

  parse_main_flags(argv)
  try:
    cli.main(['gzjax'])
  except SystemExit as exit_:
    return exit_.code
  finally:
    flags.FLAGS.unparse_flags()
  raise AssertionError(f'{argv} did not exit')


def parse_main_flags(argv: list[str]) -> None:
  """Parses ``argv`` as gzjax.main's flags in this process, from a clean
  slate: absl keeps a flag's value from an earlier parse unless it is reset,
  and config_flags keeps the earlier call's ``--config.*`` override flags."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  flags.FLAGS.unparse_flags()
  for name in [n for n in flags.FLAGS if n.startswith('config.')]:
    delattr(flags.FLAGS, name)
  # config_flags reads its --config.* overrides from sys.argv.
  saved, sys.argv = sys.argv, list(argv)
  try:
    flags.FLAGS(argv)
  finally:
    sys.argv = saved
