"""The command line as a user runs it: train, evaluate, predict.

One short training run (6 steps, checkpoints and evaluations at 3 and 6)
serves every evaluate/predict check; `python -m gzjax.main`'s `main` runs
in-process (flags parsed as the command line would) to spare a JAX start per
call.
"""

import csv
import json
import pathlib

from absl import flags
import numpy as np
import pytest

from gzjax import main as cli
from gzjax import taxonomy
from gzjax.data import galaxy_zoo
from tests.conftest import main_exit_code
from tests.conftest import parse_main_flags

REPO = pathlib.Path(__file__).resolve().parents[1]
FOLDER_IDS = (100053, 100078, 100090)


def _cli(workdir, data_dir, *flags_, size=32, crop=48):
  """Runs gzjax.main's main() with the quickstart config shrunk for tests."""
  argv = ['gzjax', f'--config={REPO / "configs" / "quickstart.py"}',
          f'--workdir={workdir}', f'--config.data_dir={data_dir}',
          f'--config.input.crop_size={crop}',
          f'--config.input.image_size={size}',
          '--config.input.batch_size=8', '--config.eval_batch_size=64',
          '--config.input.read_threads=1', '--config.best_mode=max',
          *flags_]
  parse_main_flags(argv)
  try:
    cli.main(['gzjax'])
  finally:
    flags.FLAGS.unparse_flags()  # Nothing of this call reaches the next test.


def _read_csv(path):
  with open(path) as f:
    rows = list(csv.reader(f))
  return rows[0], {int(r[0]): r[1:] for r in rows[1:]}


def _votes_csv(path):
  header, rows = _read_csv(path)
  assert header == ['GalaxyID', *taxonomy.ANSWERS]
  return {k: np.array(v, float) for k, v in rows.items()}


@pytest.fixture(scope='module')
def trained(synthetic_data_dir, tmp_path_factory):
  """A 6-step run: latest checkpoints at 3 and 6, each evaluated."""
  workdir = tmp_path_factory.mktemp('trained')
  # best_mode=max makes the worse step (3) the 'best' one, so that 'best'
  # and 'latest' name different checkpoints.
  _cli(workdir, synthetic_data_dir, '--config.num_train_steps=6',
       '--config.eval_every_steps=3', '--config.checkpoint_every_steps=3',
       '--config.log_every_steps=3')
  logged = {}
  for line in (workdir / 'metrics.jsonl').read_text().splitlines():
    values = json.loads(line)
    if 'validation/rmse' in values:
      logged[values['step']] = values['validation/rmse']
  assert sorted(logged) == [3, 6] and logged[3] > logged[6]
  return workdir, logged


def test_evaluate_a_checkpoint_by_step_best_and_with_tta(trained,
                                                         synthetic_data_dir):
  """--checkpoint=N and =best score the step they name: the same RMSE that
  the training run logged for that step."""
  workdir, logged = trained
  best = max(logged, key=logged.get)
  results = {}
  for which in ('3', 'best', 'latest'):
    _cli(workdir, synthetic_data_dir, '--mode=evaluate',
         f'--checkpoint={which}')
    results[which] = json.loads(
        (workdir / 'eval_validation.json').read_text())
  assert best == 3
  assert [results[w]['step'] for w in ('3', 'best', 'latest')] == [3, 3, 6]
  for which, step in (('3', 3), ('best', best), ('latest', 6)):
    assert results[which]['tta'] is False
    np.testing.assert_allclose(results[which]['rmse'], logged[step],
                               rtol=1e-6)
  _cli(workdir, synthetic_data_dir, '--mode=evaluate', '--checkpoint=3',
       '--tta')
  tta = json.loads((workdir / 'eval_validation.json').read_text())
  assert tta['tta'] is True and tta['step'] == 3
  assert tta['rmse'] != results['3']['rmse']
  assert tta['count'] == results['3']['count'] == len(
      galaxy_zoo.data_source('synthetic', synthetic_data_dir, 'validation'))


def test_predict_by_checkpoint_with_tta(trained, synthetic_data_dir,
                                        tmp_path):
  workdir, logged = trained
  best = max(logged, key=logged.get)
  csvs = {}
  for name, extra in (('3', ['--checkpoint=3']),
                      ('6', ['--checkpoint=6']),
                      ('best', ['--checkpoint=best']),
                      ('3tta', ['--checkpoint=3', '--tta'])):
    _cli(workdir, synthetic_data_dir, '--mode=predict', *extra,
         f'--output={tmp_path / name}.csv')
    csvs[name] = _votes_csv(tmp_path / f'{name}.csv')
  assert sorted(csvs['3']) == list(range(5_000_000, 5_000_012))
  for name in ('6', '3tta'):
    assert any(not np.array_equal(csvs['3'][g], csvs[name][g])
               for g in csvs['3']), name
  for galaxy_id, row in csvs['best'].items():
    np.testing.assert_array_equal(row, csvs[str(best)][galaxy_id])


def test_predict_a_folder_with_an_ensemble_of_two_input_sizes(
    trained, kaggle_sample, synthetic_data_dir, tmp_path):
  """--images=DIR and --ensemble with a member trained at 40 px (the first at
  32 px): the ensemble's CSV is the mean of each member's own CSV."""
  workdir, _ = trained
  member = tmp_path / 'member40'
  member_flags = ['--config.seed=1', '--config.input.image_size=40']
  _cli(member, synthetic_data_dir, '--config.num_train_steps=2',
       *member_flags, size=40)
  folder = tmp_path / 'jpegs'
  folder.mkdir()
  for galaxy_id in FOLDER_IDS:
    (folder / f'{galaxy_id}.jpg').symlink_to(
        kaggle_sample / 'images_training_rev1' / f'{galaxy_id}.jpg')
  outputs = {}
  for name, run, extra, size in (
      ('first', workdir, [], 32),
      ('member', member, member_flags, 40),
      ('ensemble', workdir, [f'--ensemble={member}'], 32)):
    _cli(run, synthetic_data_dir, '--mode=predict', f'--images={folder}',
         f'--output={tmp_path / name}.csv', *extra, size=size)
    outputs[name] = _votes_csv(tmp_path / f'{name}.csv')
  assert sorted(outputs['ensemble']) == list(FOLDER_IDS)
  for galaxy_id in FOLDER_IDS:
    first, second = outputs['first'][galaxy_id], outputs['member'][galaxy_id]
    assert not np.allclose(first, second)
    np.testing.assert_allclose(outputs['ensemble'][galaxy_id],
                               (first + second) / 2, atol=1.5e-6)


@pytest.mark.parametrize('task', ['3class', '7class'])
def test_classification_end_to_end(task, synthetic_data_dir, tmp_path):
  """Train, evaluate and predict a classifier: only galaxies with a class
  are scored, the confusion matrix counts them by true class, and the CSV
  has a probability per class and the predicted class."""
  names = {'3class': taxonomy.THREE_CLASS_NAMES,
           '7class': taxonomy.SEVEN_CLASS_NAMES}[task]
  task_flags = [f'--config.task={task}', '--config.loss=softmax',
                '--config.best_metric=validation/accuracy',
                '--config.best_mode=max']
  _cli(tmp_path, synthetic_data_dir, '--config.num_train_steps=3',
       '--config.checkpoint_every_steps=3', *task_flags)
  _cli(tmp_path, synthetic_data_dir, '--mode=evaluate', '--checkpoint=best',
       *task_flags)
  result = json.loads((tmp_path / 'eval_validation.json').read_text())
  validation = galaxy_zoo.data_source('synthetic', synthetic_data_dir,
                                      'validation')
  labels = np.array([int(validation[i][f'label_{task}'])
                     for i in range(len(validation))])
  labelled = labels[labels >= 0]
  assert 0 < len(labelled) < len(labels)  # Some galaxies have no class.
  matrix = np.array(result['confusion_matrix'])
  assert matrix.shape == (len(names), len(names))
  assert result['count'] == matrix.sum() == len(labelled)
  np.testing.assert_array_equal(matrix.sum(1),
                                np.bincount(labelled, minlength=len(names)))
  assert result['accuracy'] == pytest.approx(np.trace(matrix) / len(labelled))
  for index, name in enumerate(names):
    assert result['per_class'][name]['support'] == matrix[index].sum()
  if task == '7class':
    return
  _cli(tmp_path, synthetic_data_dir, '--mode=predict',
       f'--output={tmp_path / "classes.csv"}', *task_flags)
  header, rows = _read_csv(tmp_path / 'classes.csv')
  assert header == ['GalaxyID', *names, 'predicted']
  assert sorted(rows) == list(range(5_000_000, 5_000_012))
  for row in rows.values():
    probabilities = np.array(row[:-1], float)
    assert abs(probabilities.sum() - 1) < 1e-5
    assert row[-1] == names[int(np.argmax(probabilities))]



@pytest.mark.parametrize('extra, message', [
    (['--mode=evaluate', '--ensemble=/elsewhere'],
     '--ensemble is for --mode=predict, not --mode=evaluate: drop it, or'
     ' change the mode.'),
    (['--mode=evaluate', '--images=/some/folder'],
     '--images is for --mode=predict, not --mode=evaluate: drop it, or change'
     ' the mode.'),
    (['--tta'],
     '--tta is for --mode=evaluate or --mode=predict, not --mode=train: drop'
     ' it, or change the mode.'),
    (['--mode=predict', '--split=test'],
     '--split is for --mode=evaluate, not --mode=predict: drop it, or change'
     ' the mode.'),
    (['--mode=predict', '--shard_size=10'],
     '--shard_size is for survey prediction (--catalog or --output_dir): drop'
     ' it, or give --output_dir.'),
    (['--mode=predict', '--output=a.csv', '--output_dir=shards'],
     '--output names one file, but --catalog/--output_dir write shards into'
     ' --output_dir: give one of them.'),
])
def test_a_flag_the_mode_would_ignore_is_refused(tmp_path, capsys, extra,
                                                 message):
  assert main_exit_code([
      'gzjax', f'--config={REPO / "configs" / "quickstart.py"}',
      f'--workdir={tmp_path / "work"}', *extra]) == 1
  assert capsys.readouterr().err == f'gzjax: {message}\n'
  assert not (tmp_path / 'work').exists()  # Refused before anything.


# Refused once the workdir is made and locked (the review found it left
# behind, empty but for the lock file): (flags, the line's start).
_REFUSED_AT_START = {
    'no dataset': (['--config.dataset=galaxy_zoo/kaggle',
                    '--config.data_dir={tmp}/no_data'],
                   'The galaxy_zoo/kaggle dataset is not built in'
                   ' {tmp}/no_data.'),
    'no weights': (['--config.model.pretrained={tmp}/missing.npz',
                    '--config.data_dir={data}'],
                   'No weight file at {tmp}/missing.npz;'),
    'batch too large': (['--config.input.batch_size=100000',
                         '--config.data_dir={data}'],
                        'config.input.batch_size=100000 is larger than'),
}


def _refused(tmp_path, workdir, data_dir, case, capsys) -> None:
  """Runs ``case`` of :data:`_REFUSED_AT_START` into ``workdir``; checks it
  is refused in one line."""
  extra, start = _REFUSED_AT_START[case]
  fill = lambda text: text.format(tmp=tmp_path, data=data_dir)
  assert main_exit_code([
      'gzjax', f'--config={REPO / "configs" / "quickstart.py"}',
      f'--workdir={workdir}', '--config.compilation_cache_dir=',
      '--config.input.crop_size=48', '--config.input.image_size=32',
      *map(fill, extra)]) == 1
  err = capsys.readouterr().err
  assert err.startswith(f'gzjax: {fill(start)}'), err
  assert 'Traceback' not in err


@pytest.mark.parametrize('case', list(_REFUSED_AT_START))
def test_a_refused_run_leaves_no_workdir_behind(synthetic_data_dir, tmp_path,
                                                capsys, case):
  _refused(tmp_path, tmp_path / 'runs' / 'new', synthetic_data_dir, case,
           capsys)
  assert not (tmp_path / 'runs').exists()  # Nor the parent it made.


def test_a_refused_run_leaves_an_existing_workdir_as_it_was(
    synthetic_data_dir, tmp_path, capsys):
  workdir = tmp_path / 'mine'
  workdir.mkdir()
  (workdir / 'notes.txt').write_text('my notes')
  _refused(tmp_path, workdir, synthetic_data_dir, 'no dataset', capsys)
  assert [p.name for p in workdir.iterdir()] == ['notes.txt']
  assert (workdir / 'notes.txt').read_text() == 'my notes'


@pytest.mark.parametrize('text, suffix, message', [
    ('def get_config(:\n  pass\n', '',
     ', line 1: invalid syntax; fix the file.'),
    ('def get_config():\n  x = 1\n  raise ValueError("no such survey")\n', '',
     ', line 3: ValueError: no such survey; fix the file.'),
    ('X = 1\n', '',
     ' defines no get_config(): a config file returns its ConfigDict from'
     ' get_config() (see configs/quickstart.py).'),
    ('def get_config():\n  return {"a": 1}\n', '',
     ': get_config() returned a dict, not an ml_collections.ConfigDict (see'
     ' configs/quickstart.py).'),
    ('import ml_collections\ndef get_config():\n'
     '  return ml_collections.ConfigDict()\n', ':small',
     ': TypeError: get_config() takes 0 positional arguments but 1 was given;'
     ' fix the file (or drop :small after its name).'),
])
def test_a_config_file_that_gives_no_config_is_one_line(tmp_path, capsys,
                                                        text, suffix, message):
  path = tmp_path / 'mine.py'
  path.write_text(text)
  with pytest.raises(SystemExit) as info:
    cli.parse_flags(['gzjax', f'--config={path}{suffix}',
                     f'--workdir={tmp_path}'])
  assert info.value.code == 2
  assert capsys.readouterr().err == f'gzjax: --config={path}{message}\n'
