"""The training engine: learning, sharding, checkpoints, CLI modes, failures."""

import csv
import json
import os
import pathlib
import subprocess
import sys

from flax import nnx
import jax
import numpy as np
import pytest

from gzjax import checkpoint
from gzjax import evaluate
from gzjax import experiment as experiments
from gzjax import models
from gzjax import taxonomy
from gzjax import train
from tests.conftest import kill_when
from tests.conftest import random_batch
from tests.conftest import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def _final_params(workdir) -> list[np.ndarray]:
  config = json.loads((pathlib.Path(workdir) / 'config.json').read_text())
  import ml_collections  # pylint: disable=g-import-not-at-top
  experiment = experiments.create_experiment(ml_collections.ConfigDict(config))
  state = experiment.initial_state()
  checkpointer = checkpoint.Checkpointer(workdir)
  state, _, step = checkpointer.restore(state)
  checkpointer.close()
  return step, [np.asarray(x) for x in jax.tree.leaves(state.params)]


_DATA_PARALLEL_SCRIPT = '''
import sys
import jax, numpy as np
from tests.conftest import tiny_config
from gzjax import experiment as experiments
from gzjax import train
config = tiny_config('/nonexistent', **{'input.batch_size': 16,
                                         'model.dropout': 0.5})
config.model.hidden = (16,)
# SGD: Adam's normalised step turns a last-bit difference of a near-zero
# gradient (the devices sum in another order) into a full learning-rate step.
config.optimizer.name = 'sgd'
experiment = experiments.create_experiment(config)
state = experiment.initial_state()
step = train.make_train_step(experiment)
rng = np.random.default_rng(0)
losses = []
for _ in range(3):
  batch = {
      'image': rng.normal(size=(16, 32, 32, 3)).astype(np.float32),
      'votes': rng.random((16, 37)).astype(np.float32),
      'votes_mask': rng.random((16, 37)) > 0.2,
      'label_3class': np.zeros(16, np.int32),
      'label_7class': np.zeros(16, np.int32),
      'example_mask': np.ones(16, bool),
  }
  batch = train.to_global(batch, experiment.batch_sharding)
  state, metrics = step(state, batch)
  losses.append(float(metrics['loss']))
# How the batch lies on the devices: each holds its own rows, none all 16.
specs = sorted({str(tuple(a.sharding.spec)) for a in batch.values()})
# (The step's jit refuses a batch laid out otherwise than its in_shardings.)
rows = sorted({(s.index[0].start or 0, s.index[0].stop or 16)
               for a in batch.values() for s in a.addressable_shards})
leaves = [np.asarray(x) for x in jax.tree.leaves(state.params)]
np.savez(sys.argv[1], losses=np.array(losses), devices=len(jax.devices()),
         specs=np.array(specs), rows=np.array(rows, dtype=float),
         **{f'p{i}': x for i, x in enumerate(leaves)})
'''


def _run_data_parallel(devices: int, out: pathlib.Path) -> dict:
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count='
             f'{devices}', JAX_PLATFORMS='cpu', PYTHONPATH=str(REPO))
  subprocess.run([sys.executable, '-c', _DATA_PARALLEL_SCRIPT, str(out)],
                 check=True, cwd=REPO, env=env, capture_output=True)
  return dict(np.load(out))


def test_eight_devices_match_one(tmp_path):
  one = _run_data_parallel(1, tmp_path / 'one.npz')
  eight = _run_data_parallel(8, tmp_path / 'eight.npz')
  assert (int(one['devices']), int(eight['devices'])) == (1, 8)
  np.testing.assert_allclose(eight['losses'], one['losses'], rtol=1e-5)
  assert one['losses'][0] != one['losses'][2]  # It did train.
  # Data parallel, not replicated: every field of the batch is split on the
  # data axis, each of the 8 devices holding its own 2 of the 16 rows.
  assert list(eight['specs']) == list(one['specs']) == ["('data',)"]
  np.testing.assert_array_equal(eight['rows'],
                                [(i, i + 2) for i in range(0, 16, 2)])
  params = sorted(k for k in one if k.startswith('p'))
  for key in params:
    np.testing.assert_allclose(eight[key], one[key], rtol=1e-4, atol=1e-6)


def test_dropout_draws_a_new_mask_every_step():
  config = tiny_config('/nonexistent', **{'model.dropout': 0.5})
  config.model.hidden = (16,)
  config.optimizer.learning_rate = 0.0  # Only the dropout mask can differ.
  config.optimizer.schedule = 'constant'
  experiment = experiments.create_experiment(config)
  state = experiment.initial_state()
  step = train.make_train_step(experiment)
  batch = random_batch(experiment, np.random.default_rng(0))
  losses = []
  for _ in range(3):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  assert len(set(losses)) == 3, losses
  # Evaluation is deterministic: no dropout.
  predict = evaluate.make_predict_fn(experiment)
  np.testing.assert_array_equal(predict(state, batch['image']),
                                predict(state, batch['image']))


def test_ema_of_the_parameters_is_kept_and_used_for_evaluation():
  config = tiny_config('/nonexistent', ema_decay=0.75)
  config.optimizer.schedule = 'constant'
  experiment = experiments.create_experiment(config)
  state = experiment.initial_state()
  step = train.make_train_step(experiment)
  predict = evaluate.make_predict_fn(experiment)
  batch = random_batch(experiment, np.random.default_rng(0))
  history = [[np.asarray(x) for x in jax.tree.leaves(state.params)]]
  for _ in range(2):
    state, _ = step(state, batch)
    history.append([np.asarray(x)
                    for x in jax.tree.leaves(state.params)])
  ema = [np.asarray(x) for x in jax.tree.leaves(state.ema_params)]
  for p0, p1, p2, average in zip(*history, ema):
    np.testing.assert_allclose(
        average, 0.75 * (0.75 * p0 + 0.25 * p1) + 0.25 * p2,
        rtol=1e-5, atol=1e-7)
  assert not np.allclose(history[-1][-1], ema[-1])
  # Predictions come from the average, not from the last parameters.
  with_ema = np.asarray(predict(state, batch['image']))
  state = state.replace(ema_params=state.params)
  without = np.asarray(predict(state, batch['image']))
  assert not np.allclose(with_ema, without)


def test_a_frozen_backbone_is_not_differentiated():
  """Frozen: the backbone stays bit-identical, the head learns, and XLA's
  program skips the backbone's backward pass (about 2/3 of a step's FLOPs
  for the seed CNN, whose head is tiny).  Partly frozen (the last of the
  CNN's 3 blocks trains): the first two blocks stay bit-identical and their
  backward pass is skipped too, so the step costs between the two."""
  flops, moved = {}, {}
  for frozen, trainable_blocks in ((False, 0), (True, 0), (True, 1)):
    config = tiny_config('/nonexistent')
    config.optimizer.freeze_backbone = frozen
    config.optimizer.trainable_blocks = trainable_blocks
    config.optimizer.schedule = 'constant'
    experiment = experiments.create_experiment(config)
    state = experiment.initial_state()
    step = train.make_train_step(experiment)
    batch = random_batch(experiment, np.random.default_rng(0))
    before = jax.tree.map(np.asarray, state.params)
    key = (frozen, trainable_blocks)
    flops[key] = step.lower(state, batch).compile().cost_analysis()['flops']
    state, _ = step(state, batch)
    after = jax.tree.map(np.asarray, state.params)
    labels = jax.tree.leaves(models.parameter_labels(
        nnx.merge(experiment.graphdef, state.params, state.model_state)))
    moved[key] = {
        label.split('/')[-1] if label != 'head' else 'head': False
        for label in labels}
    for label, a, b in zip(labels, jax.tree.leaves(before),
                           jax.tree.leaves(after)):
      name = label.split('/')[-1] if label != 'head' else 'head'
      moved[key][name] |= not np.array_equal(a, b)
  assert moved[False, 0] == {'0': True, '1': True, '2': True, 'head': True}
  assert moved[True, 0] == {'0': False, '1': False, '2': False, 'head': True}
  assert moved[True, 1] == {'0': False, '1': False, '2': True, 'head': True}
  assert flops[True, 0] < 0.45 * flops[False, 0], flops
  # Blocks 0 and 1 hold most of the CNN's convolutions at full resolution.
  assert flops[True, 0] < flops[True, 1] < 0.8 * flops[False, 0], flops


def _learning_run(data_dir, workdir, steps, **overrides):
  """Trains the seed CNN without augmentation; returns (RMSE, mean's RMSE).

  Augmentation is a regulariser for long runs; in a few hundred steps it
  only slows learning (at 500 steps: 0.80x the mean predictor with the full
  augmentation, 0.61x without, on the synthetic fixture).
  """
  config = tiny_config(data_dir, num_train_steps=steps, log_every_steps=steps,
                       eval_every_steps=steps, checkpoint_every_steps=steps,
                       **{'input.batch_size': 32,
                          'input.augment.enabled': False,
                          'optimizer.warmup_steps': 50},
                       **overrides)
  result = train.train_and_evaluate(config, workdir)
  print(f'validation RMSE {result["rmse"]:.4f}, predicting the training mean'
        f' {result["mean_predictor_rmse"]:.4f} (ratio'
        f' {result["rmse"] / result["mean_predictor_rmse"]:.3f}), over'
        f' {result["count"]} galaxies; per question:'
        f' {json.dumps({k: round(v, 3) for k, v in result["rmse_per_question"].items()})}')
  return result['rmse'], result['mean_predictor_rmse']


def test_seed_cnn_learns_synthetic_galaxies(synthetic_data_dir, tmp_path):
  rmse, mean_rmse = _learning_run(synthetic_data_dir, tmp_path, 500)
  assert rmse < 0.7 * mean_rmse


def test_seed_cnn_beats_the_mean_on_the_real_sample(kaggle_sample,
                                                     kaggle_sample_data_dir,
                                                     tmp_path):
  # 542 real galaxies, 17 known answers each: the other 20 are masked.
  rmse, mean_rmse = _learning_run(
      kaggle_sample_data_dir, tmp_path, 300, dataset='galaxy_zoo/kaggle',
      **{'input.crop_size': 207, 'optimizer.learning_rate': 1e-3})
  assert rmse < mean_rmse
  # The baseline again, from the CSV's text: the train galaxies' mean of each
  # answer's non-empty cells, scored on the validation galaxies' cells.
  from gzjax.data import galaxy_zoo  # pylint: disable=g-import-not-at-top
  split_ids = {
      split: {int(r['galaxy_id']) for r in galaxy_zoo.data_source(
          'kaggle', kaggle_sample_data_dir, split)}
      for split in ('train', 'validation')}
  with open(kaggle_sample / 'training_solutions_partial.csv') as f:
    rows = list(csv.reader(f))[1:]
  cells = {int(r[0]): np.array([float(c) if c else np.nan for c in r[1:]])
           for r in rows}
  train_votes = np.stack([cells[i] for i in sorted(split_ids['train'])])
  validation_votes = np.stack(
      [cells[i] for i in sorted(split_ids['validation'])])
  assert (len(train_votes), len(validation_votes)) == (542, 58)
  counts = (~np.isnan(train_votes)).sum(0)
  mean = np.nansum(train_votes, axis=0) / np.maximum(counts, 1)
  known = ~np.isnan(validation_votes)
  independent = np.sqrt(np.mean((validation_votes - mean)[known] ** 2))
  np.testing.assert_allclose(mean_rmse, independent, rtol=1e-5)
  # README: 0.141 against 0.191 (0.74x).
  assert rmse < 0.80 * independent, (rmse, independent)
  # eval_validation.json is strict JSON: the sample has no known answer to
  # questions 3-5 and 9-11 (counts above), whose RMSE is null, not NaN.
  evaluate.evaluate(tiny_config(kaggle_sample_data_dir,
                                dataset='galaxy_zoo/kaggle',
                                **{'input.crop_size': 207}), tmp_path)

  def refuse(token):
    raise ValueError(f'not JSON: {token}')
  saved = json.loads((tmp_path / 'eval_validation.json').read_text(),
                     parse_constant=refuse)
  unknown = {q for q, value in saved['rmse_per_question'].items()
             if value is None}
  assert unknown == {'Q3', 'Q4', 'Q5', 'Q9', 'Q10', 'Q11'}, saved
  assert saved['rmse'] == pytest.approx(rmse, rel=1e-6)


def _main(workdir, data_dir, *flags, config='configs/quickstart.py'):
  args = [sys.executable, '-m', 'gzjax.main', f'--config={config}',
          f'--workdir={workdir}', f'--config.data_dir={data_dir}',
          '--config.input.crop_size=48', '--config.input.image_size=32',
          '--config.input.batch_size=8', '--config.log_every_steps=5',
          *flags]
  return args


def test_killed_run_resumes_bit_identically(synthetic_data_dir, tmp_path):
  common = ['--config.num_train_steps=40', '--config.checkpoint_every_steps=10',
            '--config.eval_every_steps=0']
  subprocess.run(_main(tmp_path / 'straight', synthetic_data_dir, *common),
                 check=True, cwd=REPO, capture_output=True)
  killed = tmp_path / 'killed'
  kill_when(_main(killed, synthetic_data_dir, *common),
            killed / 'checkpoints' / '10')
  steps = sorted(int(p.name) for p in (killed / 'checkpoints').iterdir()
                 if p.name.isdigit())
  assert 40 not in steps, 'the run finished before it could be killed'
  # A save killed half-way leaves only a temporary directory behind.
  (killed / 'checkpoints' / '50.orbax-checkpoint-tmp-1').mkdir()
  subprocess.run(_main(killed, synthetic_data_dir, *common), check=True,
                 cwd=REPO, capture_output=True)
  straight_step, straight = _final_params(tmp_path / 'straight')
  resumed_step, resumed = _final_params(killed)
  assert straight_step == resumed_step == 40
  for a, b in zip(straight, resumed):
    np.testing.assert_array_equal(a, b)


def test_evaluate_and_predict_write_their_files(synthetic_data_dir, tmp_path):
  first, second = tmp_path / 'first', tmp_path / 'second'
  for workdir, seed in ((first, 0), (second, 1)):
    train.train_and_evaluate(tiny_config(synthetic_data_dir, seed=seed),
                             workdir)
  config = tiny_config(synthetic_data_dir)
  plain = evaluate.evaluate(config, first)
  tta = evaluate.evaluate(config, first, tta=True, checkpoint='best')
  saved = json.loads((first / 'eval_validation.json').read_text())
  assert saved['tta'] is True and saved['rmse'] == tta['rmse']
  assert plain['rmse'] != tta['rmse']
  assert (first / 'plots' / 'predictions_validation.png').is_file()

  def read(path):
    with open(path) as f:
      rows = list(csv.reader(f))
    return rows[0], {int(r[0]): np.array(r[1:], float) for r in rows[1:]}

  paths = [evaluate.predict(config, [first], output=tmp_path / 'a.csv'),
           evaluate.predict(config, [second], output=tmp_path / 'b.csv'),
           evaluate.predict(config, [first, second],
                            output=tmp_path / 'ab.csv')]
  (header, a), (_, b), (_, ab) = (read(p) for p in paths)
  assert header == ['GalaxyID', *taxonomy.ANSWERS]
  assert sorted(a) == list(range(5_000_000, 5_000_012))
  for galaxy_id, row in a.items():
    assert ((0 <= row) & (row <= 1)).all()
    np.testing.assert_allclose(ab[galaxy_id], (row + b[galaxy_id]) / 2,
                               atol=2e-6)


def test_predict_a_folder_of_jpegs(kaggle_sample, synthetic_data_dir,
                                   tmp_path):
  config = tiny_config(synthetic_data_dir, num_train_steps=2)
  train.train_and_evaluate(config, tmp_path)
  folder = tmp_path / 'jpegs'
  folder.mkdir()
  for name in ('100053.jpg', '100078.jpg', '100090.jpg'):
    (folder / name).symlink_to(kaggle_sample / 'images_training_rev1' / name)
  config.input.crop_size = 207
  output = evaluate.predict(config, [tmp_path], images=folder)
  rows = output.read_text().splitlines()
  assert len(rows) == 4 and rows[1].startswith('100053,')
  (folder / 'notanid.jpg').write_bytes(b'')
  with pytest.raises(Exception, match='notanid.jpg'):
    evaluate.predict(config, [tmp_path], images=folder)


def test_diverging_loss_stops_with_the_last_checkpoint_intact(
    synthetic_data_dir, tmp_path):
  train.train_and_evaluate(tiny_config(synthetic_data_dir), tmp_path)
  config = tiny_config(synthetic_data_dir, num_train_steps=12)
  config.optimizer.learning_rate = 1e30
  config.optimizer.schedule = 'constant'
  with pytest.raises(train.TrainingDiverged,
                     match=r'step \d+; the last good checkpoint \(step 6\)'):
    train.train_and_evaluate(config, tmp_path)
  assert checkpoint.Checkpointer(tmp_path).latest_step() == 6


def test_cli_failures_are_one_clear_line(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'gzjax.main', '--config=configs/quickstart.py',
       f'--workdir={tmp_path}', '--config.dataset=galaxy_zoo/kaggle',
       f'--config.data_dir={tmp_path / "data"}'],
      cwd=REPO, capture_output=True, text=True)
  assert result.returncode == 1
  assert ('python -m gzjax.data.build --config=kaggle --manual_dir=DIR'
          in result.stderr)
  assert 'Traceback' not in result.stderr
  result = subprocess.run(
      [sys.executable, '-m', 'gzjax.main', '--config=configs/quickstart.py',
       f'--workdir={tmp_path}', '--config.optimizer.learning_rat=1'],
      cwd=REPO, capture_output=True, text=True)
  assert result.returncode != 0 and 'learning_rat' in result.stderr


def test_tta_is_the_mean_over_the_eight_dihedral_views():
  """Each of the 8 rotations/flips computed here with numpy and the plain
  predict function; their mean is what the TTA predict function returns."""
  config = tiny_config('/nonexistent')
  experiment = experiments.create_experiment(config)
  state = experiment.initial_state()
  rng = np.random.default_rng(0)
  images = rng.normal(size=(8, 32, 32, 3)).astype(np.float32)
  plain = evaluate.make_predict_fn(experiment)
  tta = evaluate.make_predict_fn(experiment, tta=True)

  def predict(x):
    return np.asarray(plain(state, train.to_global(
        {'image': np.ascontiguousarray(x)},
        experiment.batch_sharding)['image']), np.float64)

  views = []
  for image in (images, images[:, :, ::-1]):  # As is, mirrored left-right.
    for k in range(4):
      views.append(predict(np.rot90(image, k, axes=(1, 2))))
  # The model is not rotation invariant, so the views do differ.
  assert min(np.abs(v - views[0]).max() for v in views[1:]) > 1e-4
  got = np.asarray(tta(state, train.to_global(
      {'image': images}, experiment.batch_sharding)['image']))
  np.testing.assert_allclose(got, np.mean(views, axis=0), rtol=1e-5,
                             atol=1e-6)


def test_training_mean_votes_skips_unknown_answers():
  """Three records, hand-computed means; an unknown answer (NaN vote, mask
  off) is left out of its answer's mean, not counted as zero."""
  votes = np.zeros((3, taxonomy.NUM_ANSWERS), np.float32)
  mask = np.ones((3, taxonomy.NUM_ANSWERS), bool)
  votes[:, 0] = (0.2, 0.4, 0.9)
  votes[:, 1] = (0.6, np.nan, 0.0)
  mask[1, 1] = False
  votes[:, 2] = (np.nan, np.nan, 0.3)
  mask[:2, 2] = False
  mask[:, 3] = False  # Never known: 0, not NaN.
  records = [{'votes': v, 'votes_mask': m, 'label_3class': -1,
              'label_7class': -1} for v, m in zip(votes, mask)]
  mean = evaluate.training_mean_votes(records)
  assert mean.shape == (taxonomy.NUM_ANSWERS,)
  np.testing.assert_allclose(mean[:4], [0.5, 0.3, 0.3, 0.0], rtol=1e-6)
  np.testing.assert_array_equal(mean[4:], 0.0)


def _labelled_batch(experiment, rng, size=8):
  batch = {
      'image': rng.normal(size=(size, 32, 32, 3)).astype(np.float32),
      'votes': rng.random((size, 37)).astype(np.float32),
      'votes_mask': np.ones((size, 37), bool),
      'label_3class': np.array([0, 1, 2, -1, 2, 2, 1, 0][:size], np.int32),
      'label_7class': np.zeros(size, np.int32),
      'example_mask': np.ones(size, bool),
  }
  return batch, train.to_global(batch, experiment.batch_sharding)


def test_label_smoothing_and_class_weights_reach_the_step_loss():
  """The step's loss equals cross-entropy written out here in numpy: targets
  (1 - a) one-hot + a / 3, rows weighted by their class's weight, the
  unlabelled row left out."""
  config = tiny_config('/nonexistent', task='3class', loss='softmax',
                       label_smoothing=0.2, class_weights=(1.0, 2.0, 5.0))
  experiment = experiments.create_experiment(config)
  state = experiment.initial_state()
  host, batch = _labelled_batch(experiment, np.random.default_rng(0))
  from flax import nnx  # pylint: disable=g-import-not-at-top
  model = nnx.merge(experiment.graphdef, state.params, state.model_state)
  logits = np.asarray(model(host['image']), np.float64)
  _, step_metrics = train.make_train_step(experiment)(state, batch)
  labels = host['label_3class']
  keep = labels >= 0
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  targets = 0.8 * np.eye(3)[labels[keep]] + 0.2 / 3
  per_row = -(targets * log_p[keep]).sum(-1)
  weights = np.array([1.0, 2.0, 5.0])[labels[keep]]
  expected = (per_row * weights).sum() / weights.sum()
  np.testing.assert_allclose(float(step_metrics['loss']), expected, rtol=1e-5)


def test_bfloat16_compute_is_finite_and_close_to_float32():
  losses, outputs = {}, {}
  for dtype in ('float32', 'bfloat16'):
    config = tiny_config('/nonexistent', **{'model.dtype': dtype})
    # SGD: Adam would turn bfloat16's rounding of tiny gradients into full
    # learning-rate steps of either sign.
    config.optimizer.name = 'sgd'
    config.optimizer.schedule = 'constant'
    experiment = experiments.create_experiment(config)
    state = experiment.initial_state()
    rng = np.random.default_rng(0)
    outputs[dtype] = np.asarray(evaluate.make_predict_fn(experiment)(
        state, random_batch(experiment, rng)['image']))
    step = train.make_train_step(experiment)
    losses[dtype] = []
    for _ in range(3):
      state, step_metrics = step(state,
                                            random_batch(experiment, rng))
      losses[dtype].append(float(step_metrics['loss']))
  assert np.isfinite(losses['bfloat16']).all()
  assert np.isfinite(outputs['bfloat16']).all()
  np.testing.assert_allclose(losses['bfloat16'], losses['float32'], rtol=2e-2)
  np.testing.assert_allclose(outputs['bfloat16'], outputs['float32'],
                             atol=2e-2)
  # It did compute in bfloat16 (8 mantissa bits): not bit-identical.
  assert losses['bfloat16'] != losses['float32']
  assert not np.array_equal(outputs['bfloat16'], outputs['float32'])


@pytest.mark.parametrize('trainable_blocks', [0, 2])
def test_pretrained_frozen_backbone_keeps_the_file_and_its_batch_statistics(
    tmp_path, trainable_blocks):
  """EfficientNet-Lite0 (batch norm in every block) from a weight file in
  gzjax's format: the experiment starts from the file's parameters and batch
  statistics; with the backbone frozen, two training steps leave them
  bit-identical while the head learns.  With the last 2 of its 9 blocks
  trainable, blocks 0-6 (parameters and batch statistics) stay as the file
  has them and blocks 7-8 learn, their statistics too."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from gzjax import models  # pylint: disable=g-import-not-at-top
  from gzjax.models import weights  # pylint: disable=g-import-not-at-top
  donor = models.create('efficientnet_lite0', seed=7)
  rng = np.random.default_rng(0)
  arrays = {}
  for name, value in weights.named_variables(donor, 'backbone/').items():
    value = np.asarray(value)
    if name.endswith('/mean'):  # Not the initial zeros and ones.
      value = rng.normal(size=value.shape).astype(value.dtype)
    elif name.endswith('/var'):
      value = rng.uniform(0.5, 2.0, size=value.shape).astype(value.dtype)
    arrays[name] = value
  assert sum(n.endswith('/mean') for n in arrays) >= 10
  path = tmp_path / 'lite0.msgpack'
  weights.save(path, arrays)
  config = tiny_config('/nonexistent', **{
      'model.name': 'efficientnet_lite0', 'model.pretrained': str(path),
      'optimizer.freeze_backbone': True, 'optimizer.schedule': 'constant',
      'optimizer.trainable_blocks': trainable_blocks})
  experiment = experiments.create_experiment(config)
  state = experiment.initial_state()

  def backbone(state):
    model = nnx.merge(experiment.graphdef, state.params, state.model_state)
    return {k: np.asarray(v)
            for k, v in weights.named_variables(model, 'backbone/').items()}

  def head(state):
    return [np.asarray(x) for x in jax.tree.leaves(state.params['head'])]

  assert sorted(backbone(state)) == sorted(arrays)
  for name, value in backbone(state).items():
    np.testing.assert_array_equal(value, arrays[name], err_msg=name)
  head_before = head(state)
  step = train.make_train_step(experiment)
  for _ in range(2):
    state, _ = step(state, random_batch(experiment, rng))
  model = nnx.merge(experiment.graphdef, state.params, state.model_state)
  trained = {name for name in backbone(state) if model.backbone.block_of(
      tuple(int(k) if k.isdigit() else k for k in name.split('/')[1:]))
             >= 9 - trainable_blocks}
  assert {n.split('/')[1] for n in trained} == (
      {'top_conv', 'top_bn', 'stages'} if trainable_blocks else set())
  for name, value in backbone(state).items():
    if name in trained:  # Weights and batch statistics learn.
      assert not np.array_equal(value, arrays[name]), name
    else:
      np.testing.assert_array_equal(value, arrays[name], err_msg=name)
  assert all(not np.array_equal(a, b)
             for a, b in zip(head_before, head(state)))


def test_cached_inputs_train_alike_on_host_and_device(synthetic_data_dir,
                                                      tmp_path):
  """train_and_evaluate with input.cache=host and =device: the decoded cache
  is built where configured, and both modes take the same steps."""
  finals = {}
  for mode in ('host', 'device'):
    config = tiny_config(synthetic_data_dir, num_train_steps=3,
                         eval_every_steps=3, checkpoint_every_steps=3,
                         **{'input.cache': mode,
                            'input.cache_dir': str(tmp_path / 'cache')})
    result = train.train_and_evaluate(config, tmp_path / mode)
    assert np.isfinite(result['rmse']) and result['count'] == 204
    finals[mode] = _final_params(tmp_path / mode)
  assert any((tmp_path / 'cache').iterdir())
  (step_host, host), (step_device, device) = finals['host'], finals['device']
  assert step_host == step_device == 3
  for a, b in zip(host, device):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_best_checkpoint_survives_a_restart_whose_evaluation_is_worse(
    synthetic_data_dir, tmp_path, monkeypatch):
  config = tiny_config(synthetic_data_dir, num_train_steps=3,
                       eval_every_steps=3, checkpoint_every_steps=3)
  first = train.train_and_evaluate(config, tmp_path)
  # The restart's evaluation is worse: its real scores plus 1 on the RMSE.
  # (Training on with a wrecking learning rate did not promise that: with
  # other initial weights, 3 steps at rate 0.3, even 3.0, scored better than
  # the first run's 3 steps.)
  real_score = evaluate.score
  def worse_score(*args, **kwargs):
    metrics = real_score(*args, **kwargs)
    return {**metrics, 'rmse': metrics['rmse'] + 1.0}
  monkeypatch.setattr(evaluate, 'score', worse_score)
  config = tiny_config(synthetic_data_dir, num_train_steps=6,
                       eval_every_steps=3, checkpoint_every_steps=3)
  second = train.train_and_evaluate(config, tmp_path)
  assert second['rmse'] > 1.0 > first['rmse']
  checkpointer = checkpoint.Checkpointer(tmp_path,
                                         best_metric=config.best_metric)
  assert checkpointer.best.best_step() == 3
  assert checkpointer.latest_step() == 6
  checkpointer.close()
  assert evaluate.evaluate(config, tmp_path, checkpoint='best')['step'] == 3


def test_linear_head_outputs_and_loss():
  """head='linear': outputs are the backbone's features times the output
  layer, unsquashed, and the step's MSE is taken on them."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  config = tiny_config('/nonexistent', **{'model.head': 'linear'})
  experiment = experiments.create_experiment(config)
  state = experiment.initial_state()
  host = {
      'image': np.random.default_rng(0).normal(
          size=(8, 32, 32, 3)).astype(np.float32),
      'votes': np.random.default_rng(1).random((8, 37)).astype(np.float32),
      'votes_mask': np.ones((8, 37), bool),
      'label_3class': np.zeros(8, np.int32),
      'label_7class': np.zeros(8, np.int32),
      'example_mask': np.ones(8, bool),
  }
  model = nnx.merge(experiment.graphdef, state.params, state.model_state)
  features = np.asarray(model.backbone(host['image']), np.float64)
  output = state.params['head']['output']
  expected = (features @ np.asarray(output['kernel'].value, np.float64)
              + np.asarray(output['bias'].value, np.float64))
  assert expected.min() < 0 or expected.max() > 1  # No squashing to hide.
  predicted = evaluate.make_predict_fn(experiment)(
      state, train.to_global(host, experiment.batch_sharding)[
          'image'])
  np.testing.assert_allclose(predicted, expected, rtol=1e-4, atol=1e-5)
  _, step_metrics = train.make_train_step(experiment)(
      state, train.to_global(host, experiment.batch_sharding))
  np.testing.assert_allclose(float(step_metrics['loss']),
                             np.mean((expected - host['votes']) ** 2),
                             rtol=1e-4)


def test_a_classifier_scans_the_training_labels_once(synthetic_data_dir,
                                                     tmp_path, monkeypatch):
  """train_and_evaluate's classifier subset (the galaxies with a class) is
  found by one scan of the split's labels, which the input pipeline reuses;
  it trains on exactly those galaxies."""
  from gzjax import tasks  # pylint: disable=g-import-not-at-top
  from gzjax.data import pipeline  # pylint: disable=g-import-not-at-top
  scans, sources = [], []
  real_scan, real_iterator = tasks.scan_labels, pipeline.create_train_iterator
  monkeypatch.setattr(tasks, 'scan_labels',
                      lambda source: scans.append(len(source)) or
                      real_scan(source))
  monkeypatch.setattr(pipeline, 'create_train_iterator',
                      lambda source, config: sources.append(source) or
                      real_iterator(source, config))
  config = tiny_config(synthetic_data_dir, task='3class', loss='softmax',
                       best_metric='validation/accuracy', best_mode='max',
                       num_train_steps=1, eval_every_steps=1,
                       checkpoint_every_steps=1, log_every_steps=1)
  train.train_and_evaluate(config, tmp_path / 'run')
  from gzjax.data import splits  # pylint: disable=g-import-not-at-top
  num_train = len(splits.open_split(config, 'train'))
  assert scans == [num_train]  # The training split, once.
  [source] = sources
  labels = np.array([source[i]['label_3class'] for i in range(len(source))])
  assert (labels >= 0).all() and 0 < len(source) < num_train
