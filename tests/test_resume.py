"""A killed run resumes the whole state: batch norm, dropout, EMA, Adam.

EfficientNet-Lite0 at 32 px (batch-norm statistics in every block, stochastic
depth), a dropout head and an EMA of the parameters, trained through
``python -m gzjax.main``.  The three runs share a persistent XLA cache, so
only the first compiles.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np

from gzjax import checkpoint
from gzjax import experiment as experiments
from tests.conftest import kill_when

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 6


def _command(workdir, data_dir):
  return [
      sys.executable, '-m', 'gzjax.main', '--config=configs/quickstart.py',
      f'--workdir={workdir}', f'--config.data_dir={data_dir}',
      '--config.model.name=efficientnet_lite0', '--config.model.hidden=(16,)',
      '--config.model.dropout=0.5', '--config.ema_decay=0.9',
      '--config.input.crop_size=48', '--config.input.image_size=32',
      '--config.input.batch_size=8', '--config.eval_batch_size=256',
      '--config.input.read_threads=1', f'--config.num_train_steps={STEPS}',
      '--config.checkpoint_every_steps=2', '--config.eval_every_steps=0',
      '--config.log_every_steps=2']


def _environment(cache):
  return dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')


def _state_leaves(workdir):
  config = ml_collections.ConfigDict(
      json.loads((workdir / 'config.json').read_text()))
  experiment = experiments.create_experiment(config)
  state = experiment.initial_state()
  checkpointer = checkpoint.Checkpointer(workdir)
  state, data, step = checkpointer.restore(state)
  checkpointer.close()
  parts = {name: jax.tree_util.tree_leaves_with_path(getattr(state, name))
           for name in ('params', 'model_state', 'opt_state', 'ema_params')}
  return step, data, {name: {jax.tree_util.keystr(p): _numpy(v)
                             for p, v in leaves}
                      for name, leaves in parts.items()}


def _numpy(value):
  if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
    value = jax.random.key_data(value)
  return np.asarray(value)


def test_killed_run_resumes_batch_norm_dropout_ema_and_adam(
    synthetic_data_dir, tmp_path):
  env = _environment(tmp_path / 'xla_cache')
  straight, killed = tmp_path / 'straight', tmp_path / 'killed'
  subprocess.run(_command(straight, synthetic_data_dir), check=True,
                 cwd=REPO, env=env, capture_output=True)
  kill_when(_command(killed, synthetic_data_dir), killed / 'checkpoints' / '2',
            env=env)
  steps = sorted(int(p.name) for p in (killed / 'checkpoints').iterdir()
                 if p.name.isdigit())
  assert STEPS not in steps, 'the run finished before it could be killed'
  subprocess.run(_command(killed, synthetic_data_dir), check=True, cwd=REPO,
                 env=env, capture_output=True)
  step_a, data_a, a = _state_leaves(straight)
  step_b, data_b, b = _state_leaves(killed)
  assert step_a == step_b == STEPS and data_a == data_b
  # What makes this state more than parameters: batch statistics (means and
  # variances of every BatchNorm), the dropout streams' counters, Adam's
  # moments and step count, the EMA.
  assert sum("'mean'" in k for k in a['model_state']) >= 10, list(
      a['model_state'])[:20]
  assert any('dropout' in k or 'rngs' in k for k in a['model_state'])
  assert len(a['opt_state']) >= 2 * len(a['params'])
  assert len(a['ema_params']) == len(a['params'])
  for part in a:
    assert sorted(a[part]) == sorted(b[part]), part
    for key in a[part]:
      np.testing.assert_array_equal(a[part][key], b[part][key],
                                    err_msg=f'{part} {key}')
  # Training moved them from their initial values: batch-norm means start at
  # 0, and the EMA lags the parameters.
  means = [k for k in a['model_state'] if "'mean'" in k]
  assert any(np.abs(a['model_state'][k]).max() > 0 for k in means)
  assert any(not np.array_equal(a['params'][k], a['ema_params'][k])
             for k in a['params'])
