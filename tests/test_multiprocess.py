"""Two real JAX processes on localhost against one: training, evaluation,
checkpoints.

Each run is ``python -m gzjax.main`` (or, for evaluation, a short script on
the engine's restore and ``evaluate.predict_split``) in separate OS processes:
2 processes of 2 virtual CPU devices that meet through
``jax.distributed.initialize`` at a coordinator on a free loopback port
(gloo collectives), against 1 process of 4 devices.  Every process is
killed when a run fails or outlives its (generous) timeout.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

from gzjax import checkpoint
from gzjax import distributed
from gzjax import experiment as experiments

REPO = pathlib.Path(__file__).resolve().parents[1]
# Generous: two processes compile and train on a shared 2-core machine.
RUN_TIMEOUT_S = 600
STEPS = 4

# The tiny seed CNN with dropout: each example's dropout mask is drawn for
# its row of the global batch, so the two runs agree only if the processes'
# slices build the global batch row for row as one process does.  SGD, as in
# test_train.test_eight_devices_match_one: Adam's normalised step would turn
# last-bit differences of the cross-process sums into full steps.
TRAIN_FLAGS = (
    '--config=configs/quickstart.py', '--config.input.crop_size=48',
    '--config.input.image_size=32', '--config.input.batch_size=8',
    '--config.input.read_threads=1', '--config.model.hidden=(16,)',
    '--config.model.dropout=0.5', '--config.optimizer.name=sgd',
    '--config.optimizer.learning_rate=0.05',
    '--config.optimizer.warmup_steps=0',
    f'--config.num_train_steps={STEPS}', '--config.log_every_steps=1',
    f'--config.eval_every_steps={STEPS}',
    f'--config.checkpoint_every_steps={STEPS}',
)

# [--train=WORKDIR] CHECKPOINT_WORKDIR OUT: with --train, first trains
# WORKDIR with CHECKPOINT_WORKDIR's config.json (so both runs have one
# config); then evaluates CHECKPOINT_WORKDIR's last checkpoint through the
# engine's restore and evaluate.predict_split, as --mode=evaluate does.
_SCRIPT = '''
import json, sys
import ml_collections, numpy as np
from gzjax import distributed
if distributed.wanted(None):
  distributed.initialize()
import jax
from gzjax import evaluate, train
from gzjax.data import splits
*train_workdir, workdir, out = sys.argv[1:]
config = ml_collections.ConfigDict(
    json.loads(open(f'{workdir}/config.json').read()))
for path in train_workdir:
  train.train_and_evaluate(config, path.removeprefix('--train='))
experiment, state, step = evaluate.restore(config, workdir)
validation = evaluate.predict_split(experiment, state,
                                    splits.open_split(config, 'validation'))
test = evaluate.predict_split(experiment, state,
                              splits.open_split(config, 'test'))
baseline = evaluate.training_mean_votes(splits.open_split(config, 'train'))
metrics = evaluate.score(experiment.task, validation, baseline)
if jax.process_index() == 0:
  np.savez(out, step=step, processes=jax.process_count(),
           devices=len(jax.devices()), metrics=json.dumps(metrics),
           **{f'validation_{k}': v for k, v in validation.items()},
           **{f'test_{k}': v for k, v in test.items()})
'''


def _free_port() -> int:
  with socket.socket() as probe:
    probe.bind(('127.0.0.1', 0))
    return probe.getsockname()[1]


def _run(command: list[str], *, processes: int, devices: int,
         logs: pathlib.Path) -> None:
  """Runs `command` as `processes` JAX processes of `devices` CPU devices
  each; all of them are killed if one fails or the run times out."""
  env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_')}
  env.update(JAX_PLATFORMS='cpu', PYTHONPATH=str(REPO),
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  if processes > 1:
    address = f'127.0.0.1:{_free_port()}'
    # Bound to the loopback interface only (JAX's default is every one).
    env.update(JAX_COORDINATOR_ADDRESS=address,
               JAX_COORDINATOR_BIND_ADDRESS=address,
               JAX_NUM_PROCESSES=str(processes))
  logs.mkdir(parents=True, exist_ok=True)
  running = []
  try:
    for index in range(processes):
      env_i = dict(env, JAX_PROCESS_ID=str(index)) if processes > 1 else env
      with open(logs / f'{index}.log', 'w') as log:
        running.append(subprocess.Popen(command, cwd=REPO, env=env_i,
                                        stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while any(p.poll() is None for p in running):
      failed = [p for p in running if p.poll() not in (None, 0)]
      if failed or time.monotonic() > deadline:
        break
      time.sleep(0.2)
  finally:
    for process in running:
      if process.poll() is None:
        process.kill()
      process.wait()
  codes = [p.returncode for p in running]
  if codes != [0] * processes:
    tails = '\n'.join(
        f'--- process {i} (exit {code}):\n'
        + (logs / f'{i}.log').read_text()[-3000:]
        for i, code in enumerate(codes))
    raise AssertionError(f'{command[:4]} failed or timed out:\n{tails}')


def _train_losses(workdir: pathlib.Path) -> tuple[np.ndarray, list[dict]]:
  lines = [json.loads(line)
           for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  losses = np.array([l['train/loss'] for l in lines if 'train/loss' in l])
  validation = [l for l in lines if 'validation/rmse' in l]
  return losses, validation


def _final_params(workdir: pathlib.Path) -> list[np.ndarray]:
  """The last checkpoint's parameters, restored in this (1-process) pytest."""
  config = ml_collections.ConfigDict(
      json.loads((workdir / 'config.json').read_text()))
  experiment = experiments.create_experiment(config)
  state = experiment.initial_state()
  checkpointer = checkpoint.Checkpointer(workdir)
  try:
    state, _, step = checkpointer.restore(state)
  finally:
    checkpointer.close()
  assert step == STEPS
  return [np.asarray(x) for x in jax.tree.leaves(state.params)]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """Three launches: 2x2 training by the command line; its checkpoint
  evaluated by 2 processes; 1x4 training with the same config.json, then the
  2x2 checkpoint evaluated by that 1 process."""
  from gzjax.data import galaxy_zoo  # pylint: disable=g-import-not-at-top

  root = tmp_path_factory.mktemp('multiprocess')
  data_dir = root / 'data'
  # 141 training, 19 validation and 12 test galaxies.
  galaxy_zoo.prepare('synthetic', data_dir, num_labelled=160, num_test=12,
                     image_size=64, num_workers=1)
  two, one = root / 'two', root / 'one'
  _run([sys.executable, '-m', 'gzjax.main', *TRAIN_FLAGS,
        f'--config.data_dir={data_dir}', f'--workdir={two}'],
       processes=2, devices=2, logs=root / 'logs_train_two')
  evaluations = {}
  for name, processes, devices, train_first in (
      ('two', 2, 2, []), ('one', 1, 4, [f'--train={one}'])):
    out = root / f'evaluate_{name}.npz'
    _run([sys.executable, '-c', _SCRIPT, *train_first, str(two), str(out)],
         processes=processes, devices=devices,
         logs=root / f'logs_evaluate_{name}')
    evaluations[name] = dict(np.load(out))
  return root, evaluations


def test_two_processes_train_as_one_with_four_devices(runs):
  root, _ = runs
  one_losses, one_validation = _train_losses(root / 'one')
  two_losses, two_validation = _train_losses(root / 'two')
  # Process 0 alone writes metrics: one line per step, one evaluation.
  assert len(one_losses) == len(two_losses) == STEPS
  assert len(one_validation) == len(two_validation) == 1
  np.testing.assert_allclose(two_losses, one_losses, rtol=1e-5)
  assert one_losses[0] != one_losses[-1]  # It did train.
  np.testing.assert_allclose(two_validation[0]['validation/rmse'],
                             one_validation[0]['validation/rmse'], rtol=1e-4)
  assert two_validation[0]['validation/count'] == 19
  for two, one in zip(_final_params(root / 'two'),
                      _final_params(root / 'one'), strict=True):
    np.testing.assert_allclose(two, one, rtol=1e-4, atol=1e-6)
  assert (root / 'two' / 'plots' / 'learning_curves.png').is_file()
  assert sorted(p.name for p in (root / 'two' / 'checkpoints').iterdir()) == [
      str(STEPS)]


def test_two_process_checkpoint_evaluates_alike_in_one_and_two(runs):
  _, evaluations = runs
  two, one = evaluations['two'], evaluations['one']
  assert (int(two['processes']), int(two['devices'])) == (2, 4)
  assert (int(one['processes']), int(one['devices'])) == (1, 4)
  assert int(two['step']) == int(one['step']) == STEPS
  # The same rows in the same (record) order, every galaxy once.
  assert len(two['validation_galaxy_id']) == 19
  assert len(np.unique(two['validation_galaxy_id'])) == 19
  assert len(two['test_galaxy_id']) == 12
  for key in sorted(one):
    if key.startswith(('validation_', 'test_')):
      assert two[key].dtype == one[key].dtype, key
      np.testing.assert_array_equal(two[key], one[key], err_msg=key)
  assert json.loads(str(two['metrics'])) == json.loads(str(one['metrics']))


def test_the_environment_says_when_and_how_to_start():
  address = {'JAX_COORDINATOR_ADDRESS': '10.0.0.1:8476'}
  assert distributed.wanted(None, address)
  assert not distributed.wanted(None, {})
  assert not distributed.wanted(None, {'JAX_COORDINATOR_ADDRESS': ''})
  assert not distributed.wanted(False, address)
  assert distributed.wanted(True, {})
  with pytest.raises(ValueError, match=(
      r"^JAX_PROCESS_ID='one' is not an integer: set it to this process's"
      r' number, 0 to JAX_NUM_PROCESSES - 1,')):
    distributed.initialize(
        {**address, 'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': 'one'})
  with pytest.raises(ValueError, match=r"^JAX_NUM_PROCESSES='2.5' is not"):
    distributed.initialize({**address, 'JAX_NUM_PROCESSES': '2.5'})
