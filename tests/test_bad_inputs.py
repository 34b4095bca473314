"""Workdirs and checkpoints under bad input: nothing lost, one line each.

One tiny run (40 synthetic galaxies at 64 px, 6 steps, checkpoints at 3 and
6) is trained once per module; each test works on a copy of its workdir.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import tiny_config
from gzjax import checkpoint
from gzjax import errors
from gzjax import evaluate
from gzjax import experiment as experiments
from gzjax import tasks
from gzjax import train
from gzjax import workdir_rules
from gzjax.data import galaxy_zoo

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """(data_dir, workdir) of a finished 6-step run."""
  root = tmp_path_factory.mktemp('resume')
  galaxy_zoo.prepare('synthetic', root / 'data', num_labelled=40, num_test=4,
                     image_size=64, num_workers=1)
  train.train_and_evaluate(_config(root / 'data'), root / 'work')
  return root / 'data', root / 'work'


def _config(data_dir, **overrides):
  return tiny_config(data_dir, **{'input.crop_size': 48, **overrides})


def _copy(trained, tmp_path) -> pathlib.Path:
  return pathlib.Path(shutil.copytree(trained[1], tmp_path / 'work'))


def _snapshot(folder: pathlib.Path) -> dict[str, bytes]:
  """Every file's bytes but the training lock's (who trains, and since
  when: a refused run held it too)."""
  return {str(p.relative_to(folder)): p.read_bytes()
          for p in sorted(folder.rglob('*'))
          if p.is_file() and p.name != workdir_rules.LOCK_FILE}


def _steps(workdir):
  return [json.loads(line)['step']
          for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


def test_resume_with_another_model_names_the_difference_and_changes_nothing(
    trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  before = _snapshot(workdir)
  config = _config(trained[0], num_train_steps=9, **{'model.hidden': (16,)})
  with pytest.raises(errors.CheckpointError) as info:
    train.train_and_evaluate(config, workdir)
  assert 'model.hidden: checkpoint has (), config has (16,)' in str(info.value)
  assert str(workdir) in str(info.value)
  assert _snapshot(workdir) == before  # config.json included.
  # evaluate says the same instead of failing inside Orbax.
  with pytest.raises(errors.CheckpointError, match=r'model\.hidden'):
    evaluate.evaluate(config, workdir)


def _refused_by_every_mode(config, workdir, before, message):
  """Training, evaluating and restoring for prediction (what --images and
  survey prediction restore through) each raise ``message``, and leave
  ``workdir`` as ``before``."""
  for attempt in (lambda: train.train_and_evaluate(config, workdir),
                  lambda: evaluate.evaluate(config, workdir),
                  lambda: evaluate.restore(config, workdir)):
    with pytest.raises(errors.CheckpointError) as info:
      attempt()
    assert str(info.value) == message
    assert _snapshot(workdir) == before


def test_other_preprocessing_is_refused_for_resume_evaluate_and_predict(
    trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  before = _snapshot(workdir)
  # A finished run resumed at other sizes trained no step but rewrote its
  # config.json to sizes its weights never saw; evaluate scored silently.
  config = _config(trained[0], **{'input.image_size': 48,
                                  'input.normalization.std': (0.5, 0.5, 0.25)})
  _refused_by_every_mode(
      config, workdir, before,
      f'The checkpoints in {workdir} were trained on images prepared'
      ' otherwise (input.image_size: checkpoint has 32, config has 48;'
      ' input.normalization.std: checkpoint has (0.5, 0.5, 0.5), config'
      ' has (0.5, 0.5, 0.25)). Set these values back to resume, evaluate or'
      ' predict with them, or train into a new --workdir.')
  # The same values, as JSON gives them back (lists), are the same; the
  # crop counts source pixels (another survey's cutouts need another).
  workdir_rules.check_resumable(
      _config(trained[0], **{'input.crop_size': 207}), workdir)


@pytest.mark.parametrize('text', ['{garbage', '[1, 2]', ''])
def test_a_damaged_config_json_is_named_and_kept(trained, tmp_path, text):
  workdir = _copy(trained, tmp_path)
  (workdir / 'config.json').write_text(text)
  before = _snapshot(workdir)
  for attempt in (
      lambda: train.train_and_evaluate(_config(trained[0]), workdir),
      lambda: evaluate.evaluate(_config(trained[0]), workdir)):
    with pytest.raises(errors.CheckpointError) as info:
      attempt()
    message = str(info.value)
    assert message.startswith(f'{workdir}/config.json is not the JSON config'
                              ' a run writes (')
    assert message.endswith('Restore it from a copy, or train into a new'
                            ' --workdir.')
    assert '\n' not in message
    assert _snapshot(workdir) == before


def test_damaged_latest_checkpoint_falls_back_and_metrics_are_not_doubled(
    trained, tmp_path, capsys):
  workdir = _copy(trained, tmp_path)
  assert _steps(workdir) == [2, 3, 4, 6, 6]  # train/ and validation/ at 6.
  for data_file in (workdir / 'checkpoints' / '6' / 'state').rglob('d/*'):
    data_file.write_bytes(data_file.read_bytes()[:10])
  # evaluate does not fall back on its own: it names the step to pass.
  with pytest.raises(errors.CheckpointError,
                     match=r'step 6 .*checkpoints/6.*pass --checkpoint=3\.'):
    evaluate.evaluate(_config(trained[0]), workdir)
  train.train_and_evaluate(_config(trained[0], num_train_steps=9), workdir)
  warning = capsys.readouterr().out
  assert 'WARNING: Checkpoint step 6 in' in warning
  assert 'checkpoints/6/state/' in warning  # TensorStore's file.
  assert 'best checkpoint (step 6) is newer than step 3' in warning
  # Steps 4-6 were re-run from step 3 and are logged once.
  assert _steps(workdir) == [2, 3, 4, 6, 6, 8, 9, 9]
  assert checkpoint.Checkpointer(workdir).steps() == [6, 9]
  damaged = sorted(p.name for p in (workdir / 'damaged_checkpoints').iterdir())
  assert [name.rsplit('-', 2)[0] for name in damaged] == [
      'best-6', 'checkpoints-6']


def test_a_missing_metadata_file_is_named(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  (workdir / 'checkpoints' / '6' / 'state' / '_METADATA').unlink()
  experiment = experiments.create_experiment(_config(trained[0]))
  state = experiment.initial_state()
  checkpointer = checkpoint.Checkpointer(workdir)
  with pytest.raises(errors.CheckpointError) as info:
    checkpointer.restore(state)
  assert str(info.value) == (
      'Checkpoint step 6 is damaged:'
      f' {workdir.resolve()}/checkpoints/6/state/_METADATA is missing.')
  _, _, step = checkpointer.restore_newest_intact(
      state, warn=lambda line: None)
  assert step == 3 and checkpointer.steps() == [3]
  checkpointer.close()


def test_checkpoint_flag_accepts_only_latest_best_or_a_step(trained):
  config = _config(trained[0])
  with pytest.raises(errors.ConfigError) as info:
    evaluate.evaluate(config, trained[1], checkpoint='bset')
  assert str(info.value) == (
      '--checkpoint=bset: use latest, best or a step number.')
  with pytest.raises(errors.MissingCheckpointError, match=r'\[3, 6\]'):
    evaluate.evaluate(config, trained[1], checkpoint='4')


def test_a_step_kept_only_as_the_best_checkpoint_restores_by_its_number(
    trained, tmp_path):
  """--checkpoint=N names a step wherever it is kept: the best step, once
  checkpoints/ no longer holds it, was refused ("No latest checkpoint at
  step 6 ...") although --checkpoint=best restored it."""
  workdir = _copy(trained, tmp_path)
  config = _config(trained[0])
  best = sorted(int(p.name) for p in (workdir / 'best').iterdir())
  assert best == [6]
  shutil.rmtree(workdir / 'checkpoints' / '6')  # Kept only as the best.
  _, state, step = evaluate.restore(config, workdir, '6')
  assert (step, int(state.step)) == (6, 6)
  _, state, step = evaluate.restore(config, workdir, '3')
  assert (step, int(state.step)) == (3, 3)
  with pytest.raises(errors.MissingCheckpointError) as info:
    evaluate.restore(config, workdir, '4')
  assert str(info.value) == (
      f'No checkpoint at step 4 in {workdir.resolve()}: checkpoints/ holds'
      ' steps [3] and best/ [6]; pass one of them (or latest or best) as'
      ' --checkpoint.')
  shutil.rmtree(workdir / 'checkpoints')  # Only best/ left.
  _, _, step = evaluate.restore(config, workdir, '6')
  assert step == 6


def test_evaluate_and_predict_on_a_missing_workdir_create_nothing(
    trained, tmp_path):
  config = _config(trained[0])
  missing = tmp_path / 'no' / 'such' / 'run'
  with pytest.raises(errors.MissingCheckpointError, match='train into it'):
    evaluate.evaluate(config, missing)
  with pytest.raises(errors.MissingCheckpointError, match='train into it'):
    evaluate.predict(config, [missing])
  assert list(tmp_path.iterdir()) == []


def test_an_ensemble_naming_a_workdir_twice_is_refused(trained, tmp_path):
  """It was averaged in twice, silently weighting that run double."""
  config = _config(trained[0])
  other = _copy(trained, tmp_path)
  for members, message in (
      ([trained[1], other, trained[1]],
       f'--workdir and --ensemble name {trained[1]} twice'),
      ([other, other / '..' / 'work'],
       f'--workdir and --ensemble name {other}/../work twice (also as'
       f' {other})'),
      # Twice in --ensemble alone: --workdir (the first) is not repeated.
      ([trained[1], other, other], f'--ensemble name {other} twice')):
    with pytest.raises(errors.ConfigError) as info:
      evaluate.predict(config, members, output=tmp_path / 'p.csv')
    assert str(info.value) == (
        f'{message}: it would count twice in the averaged predictions; name'
        ' each workdir once.')
  assert not (tmp_path / 'p.csv').exists()


def test_an_unwritable_workdir_is_one_line(trained, tmp_path):
  (tmp_path / 'file').write_text('not a folder')
  with pytest.raises(errors.WorkdirError) as info:
    train.train_and_evaluate(_config(trained[0]), tmp_path / 'file' / 'run')
  assert str(info.value).startswith(
      f'Cannot write to the workdir {tmp_path / "file" / "run"}: Not a'
      ' directory')
  assert '\n' not in str(info.value)


def test_a_batch_larger_than_the_training_split_is_refused(trained, tmp_path):
  train_size = len(galaxy_zoo.data_source('synthetic', trained[0], 'train'))
  config = _config(trained[0], **{'input.batch_size': train_size + 1})
  with pytest.raises(errors.ConfigError) as info:
    train.train_and_evaluate(config, tmp_path / 'run')
  assert (f'config.input.batch_size={train_size + 1} is larger than the'
          f' {train_size} galaxies of the training split') in str(info.value)
  assert not (tmp_path / 'run' / 'checkpoints').exists()


def test_truncate_metrics_keeps_steps_up_to_the_restored_one(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 2}\n{"step": 3}\n{"step": 4}\n{"ste')
  workdir_rules.truncate_metrics(path, 3)
  assert path.read_text() == '{"step": 2}\n{"step": 3}\n'
  assert not list(tmp_path.glob('*.tmp'))


def test_an_image_folder_takes_jpeg_and_png_in_any_case_and_lists_the_rest(
    trained, kaggle_sample, tmp_path):
  jpegs = kaggle_sample / 'images_training_rev1'
  folder = tmp_path / 'images'
  folder.mkdir()
  for source, name in (('100053.jpg', '100053.jpg'),
                       ('100078.jpg', '100078.JPG'),
                       ('100090.jpg', '100090.jpeg')):
    (folder / name).write_bytes((jpegs / source).read_bytes())
  # The same pixels as 100053.jpg, losslessly as a PNG under another id.
  with Image.open(jpegs / '100053.jpg') as image:
    image.save(folder / '100054.PNG')
  (folder / '.DS_Store').write_bytes(b'\0')  # Hidden: ignored.
  config = _config(trained[0])
  output = evaluate.predict(config, [trained[1]], images=folder,
                            output=tmp_path / 'predictions.csv')
  rows = {int(r.split(',')[0]): r.split(',')[1:]
          for r in output.read_text().splitlines()[1:]}
  assert sorted(rows) == [100053, 100054, 100078, 100090]
  assert rows[100054] == rows[100053]
  output.unlink()

  with Image.open(jpegs / '100122.jpg') as image:
    image.save(folder / '100122.jpg', format='PNG')  # The builder refuses it.
  (folder / '100123.png').write_bytes(b'')
  (folder / '100053.png').write_bytes((folder / '100054.PNG').read_bytes())
  (folder / 'notes.txt').write_text('observing log')
  (folder / 'galaxy.jpg').write_bytes((jpegs / '100122.jpg').read_bytes())
  with pytest.raises(errors.DataError) as info:
    evaluate.predict(config, [trained[1]], images=folder,
                     output=tmp_path / 'predictions.csv')
  lines = str(info.value).splitlines()
  assert lines[0] == (f'5 files of {folder} cannot be predicted (no prediction'
                      ' was written):')
  assert lines[1:6] == [
      f'  {folder}/100053.png: GalaxyID 100053 also has 100053.jpg',
      f'  {folder}/100122.jpg: not a JPEG (Pillow reads it as PNG)',
      f'  {folder}/100123.png: UnidentifiedImageError: cannot identify image'
      f" file <_io.BytesIO object at {lines[3].split(' at ')[-1]}",
      f'  {folder}/galaxy.jpg: not named <GalaxyID>.jpg with an integer'
      ' GalaxyID',
      f'  {folder}/notes.txt: not a .jpg, .jpeg or .png file']
  assert not (tmp_path / 'predictions.csv').exists()


def test_an_image_folder_keeps_each_galaxy_id_as_its_file_writes_it(
    trained, kaggle_sample, tmp_path):
  """000042.jpg was written as GalaxyID 42 (its --output_dir row says
  000042): the column stays integer only while every id reads back as the
  same text; two names of one integer (42.jpg, 042.jpg) are refused."""
  jpegs = kaggle_sample / 'images_training_rev1'
  folder = tmp_path / 'images'
  folder.mkdir()
  for source, name in (('100053.jpg', '100008.jpg'), ('100078.jpg', '7.jpg'),
                       ('100090.jpg', '000042.jpg')):
    (folder / name).write_bytes((jpegs / source).read_bytes())
  config = _config(trained[0])
  output = evaluate.predict(config, [trained[1]], images=folder,
                            output=tmp_path / 'p.csv')
  ids = [r.split(',')[0] for r in output.read_text().splitlines()[1:]]
  assert ids == ['7', '000042', '100008']  # In GalaxyID order.
  output = evaluate.predict(config, [trained[1]], images=folder,
                            output=tmp_path / 'p.parquet')
  column = pq.read_table(output).column('GalaxyID')
  assert (column.type, column.to_pylist()) == (
      pa.string(), ['7', '000042', '100008'])
  (folder / '000042.jpg').unlink()  # Kaggle's own names: integers, as ever.
  output = evaluate.predict(config, [trained[1]], images=folder,
                            output=tmp_path / 'p.parquet')
  column = pq.read_table(output).column('GalaxyID')
  assert (column.type, column.to_pylist()) == (pa.int64(), [7, 100008])
  too_long = folder / f'{2**64}.jpg'  # Was an OverflowError's traceback.
  too_long.write_bytes((jpegs / '100090.jpg').read_bytes())
  with pytest.raises(errors.DataError) as info:  # One file: the singular.
    evaluate.predict(config, [trained[1]], images=folder,
                     output=tmp_path / 'q.csv')
  assert str(info.value).startswith(f'1 file of {folder} cannot be predicted')
  (folder / '042.jpg').write_bytes((jpegs / '100090.jpg').read_bytes())
  (folder / '42.jpg').write_bytes((jpegs / '100090.jpg').read_bytes())
  with pytest.raises(errors.DataError) as info:
    evaluate.predict(config, [trained[1]], images=folder,
                     output=tmp_path / 'q.csv')
  assert str(info.value).splitlines() == [
      f'2 files of {folder} cannot be predicted (no prediction was written):',
      f'  {too_long}: GalaxyID {2**64} is past the signed 64-bit integers of'
      ' the Kaggle CSV (predict with --output_dir, which keeps ids as text)',
      f'  {folder}/42.jpg: GalaxyID 42 also has 042.jpg',
      'Fix, rename or move them out of the folder.']
  assert not (tmp_path / 'q.csv').exists()


def test_a_full_disk_is_one_line_before_orbax_writes(trained, tmp_path,
                                                       monkeypatch):
  workdir = _copy(trained, tmp_path)
  before = _snapshot(workdir)
  free = 300_000
  monkeypatch.setattr(checkpoint.shutil, 'disk_usage',
                      lambda path: shutil._ntuple_diskusage(10**9, 0, free))  # pylint: disable=protected-access
  config = _config(trained[0], num_train_steps=9)
  state = experiments.create_experiment(config).abstract_state()
  needed = sum(leaf.size * leaf.dtype.itemsize
               for leaf in jax.tree.leaves(state))
  with pytest.raises(errors.CheckpointError) as info:
    train.train_and_evaluate(config, workdir)
  assert str(info.value) == (
      f'Cannot save a checkpoint in {workdir.resolve()}/checkpoints: it needs'
      f' {needed / 1e6:,.1f} MB and the filesystem has 0.3 MB free. Free'
      ' space there (or choose another --workdir) and run the same command'
      ' again: it resumes from the newest complete checkpoint.')
  # Steps 7-9 trained, nothing saved: the checkpoints are as they were.
  assert checkpoint.Checkpointer(workdir).steps() == [3, 6]
  assert not list((workdir / 'checkpoints').glob('*tmp*'))
  assert {k: v for k, v in _snapshot(workdir).items()
          if k.startswith(('checkpoints/', 'best/'))} == {
              k: v for k, v in before.items()
              if k.startswith(('checkpoints/', 'best/'))}


_LIMITED = '''
import resource, runpy, signal, sys
# Writes past 1 MB fail (EFBIG) instead of killing the process (SIGXFSZ).
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))
sys.argv = ['gzjax.main'] + sys.argv[1:]
runpy.run_module('gzjax.main', run_name='__main__')
'''


def test_a_write_the_filesystem_refuses_mid_save_is_one_line(trained,
                                                             tmp_path):
  # Room is not the problem here (a file-size limit, as a quota would be):
  # Orbax's writers fail in the background and the next wait raises.
  workdir = _copy(trained, tmp_path)
  shutil.rmtree(workdir / 'checkpoints')
  shutil.rmtree(workdir / 'best')
  (workdir / 'metrics.jsonl').unlink()
  result = subprocess.run(
      [sys.executable, '-c', _LIMITED, '--config=configs/quickstart.py',
       f'--workdir={workdir}', f'--config.data_dir={trained[0]}',
       '--config.input.crop_size=48', '--config.input.image_size=32',
       '--config.input.batch_size=8', '--config.num_train_steps=3',
       '--config.checkpoint_every_steps=3', '--config.eval_every_steps=0',
       '--config.compilation_cache_dir='],
      cwd=REPO, capture_output=True, text=True,
      env={**os.environ, 'PYTHONPATH': str(REPO)})
  assert result.returncode == 1, result.stderr[-3000:]
  # Orbax's writing threads log their failures as they happen, asyncio's
  # reports of them at exit are dropped, and TensorStore's late writes may
  # still say (from C++ threads, which no Python filter reaches, and
  # interleaved with other output) that Orbax closed their loop; the run's
  # line is there once.
  ours = 'gzjax: Cannot save a checkpoint'
  assert result.stderr.count(ours) == 1, result.stderr[-3000:]
  last = result.stderr[result.stderr.index(ours):].split('\n')[0]
  assert last.startswith(f'gzjax: Cannot save a checkpoint in'
                         f' {workdir.resolve()}/checkpoints: File too large'
                         f' (writing {workdir.resolve()}/checkpoints/3.'), last
  assert last.endswith('Free space there (or choose another --workdir) and'
                       ' run the same command again: it resumes from the'
                       ' newest complete checkpoint.')
  assert checkpoint.Checkpointer(workdir).steps() == []


def test_asyncio_does_not_report_again_the_writes_a_checkpoint_error_named():
  import logging  # pylint: disable=g-import-not-at-top

  def record(message, error):
    return logging.LogRecord(
        'asyncio', logging.ERROR, __file__, 1, message, (), (
            (type(error), error, None) if error else None))

  failed = ValueError('RESOURCE_EXHAUSTED: Error writing "params.x/0" in'
                      ' OCDBT database at local file "/w/checkpoints/5"')
  asyncio_logger = logging.getLogger('asyncio')
  assert not asyncio_logger.filter(
      record('Task exception was never retrieved', failed))
  # Anything else asyncio reports still shows.
  assert asyncio_logger.filter(
      record('Task exception was never retrieved', ValueError('other')))
  assert asyncio_logger.filter(record('Executing <Task> took 0.2 s', failed))
  assert asyncio_logger.filter(record('plain', None))


def test_a_second_run_into_a_training_workdir_is_refused(trained, tmp_path):
  import fcntl  # pylint: disable=g-import-not-at-top
  import socket  # pylint: disable=g-import-not-at-top
  workdir = _copy(trained, tmp_path)
  with workdir_rules.training_lock(workdir):  # A run training into it.
    before = _snapshot(workdir)
    with pytest.raises(errors.WorkdirError) as info:
      train.train_and_evaluate(_config(trained[0], num_train_steps=9), workdir)
    assert str(info.value).startswith(
        f'Another run is training into {workdir} (pid {os.getpid()} on'
        f' {socket.gethostname()}, since ')
    assert str(info.value).endswith(
        '): wait for it to end, or train into another --workdir.')
    assert _snapshot(workdir) == before
  # A holder killed without a word leaves no lock behind.
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import fcntl, sys, time\n'
       f'f = open({str(workdir / workdir_rules.LOCK_FILE)!r}, "w")\n'
       'fcntl.flock(f, fcntl.LOCK_EX)\nprint("locked", flush=True)\n'
       'time.sleep(120)'], stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline() == 'locked\n'
  with pytest.raises(errors.WorkdirError,
                     match='a process that has not said which'):
    with workdir_rules.training_lock(workdir):
      pass
  holder.kill()
  holder.wait()
  train.train_and_evaluate(_config(trained[0], num_train_steps=9), workdir)
  assert checkpoint.Checkpointer(workdir).steps() == [6, 9]
  with open(workdir / workdir_rules.LOCK_FILE) as f:  # Released at the end.
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_resuming_past_num_train_steps_is_refused_and_changes_nothing(
    trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  before = _snapshot(workdir)
  with pytest.raises(errors.ConfigError) as info:
    train.train_and_evaluate(_config(trained[0], num_train_steps=4), workdir)
  assert str(info.value) == (
      f'The newest checkpoint in {workdir} is step 6, past'
      ' config.num_train_steps=4: nothing to train. Set'
      ' config.num_train_steps above 6 to train on, or evaluate it'
      ' (--mode=evaluate).')
  assert _snapshot(workdir) == before  # config.json included.


def test_a_finished_run_run_again_says_so_and_changes_nothing(
    trained, tmp_path, capsys, monkeypatch):
  """A script's second pass over a finished run compiled the step, wrote a
  new TensorBoard file and printed "6/6 (100%), 0.0 step/s, ? left"."""
  workdir = _copy(trained, tmp_path)
  before = _snapshot(workdir)
  events = sorted(p.name for p in workdir.glob('events.*'))

  def compile_step(*args, **kwargs):
    raise AssertionError('a finished run compiled its train step again')

  def build_input(*args, **kwargs):
    raise AssertionError('a finished run built its training input again')
  monkeypatch.setattr(train, 'make_train_step', compile_step)
  monkeypatch.setattr(train.experiments, 'create_train_input', build_input)
  assert train.train_and_evaluate(_config(trained[0]), workdir) == {}
  assert capsys.readouterr().err == (
      f'gzjax: {workdir} has finished: its newest checkpoint is step 6 ='
      ' config.num_train_steps, nothing to train. Raise'
      ' --config.num_train_steps to train on, or evaluate it'
      ' (--mode=evaluate).\n')
  assert _snapshot(workdir) == before
  assert sorted(p.name for p in workdir.glob('events.*')) == events


def test_evaluating_a_split_without_labels_is_refused(trained, tmp_path,
                                                      monkeypatch):
  """Before a model is restored, let alone the split predicted (it was
  predicted whole, then refused)."""
  workdir = _copy(trained, tmp_path)
  config = _config(trained[0])

  def restore(*args, **kwargs):
    raise AssertionError('the model was restored before the refusal')

  monkeypatch.setattr(evaluate, 'restore', restore)
  with pytest.raises(errors.DataError) as info:
    evaluate.evaluate(config, workdir, split='test')
  assert str(info.value) == (
      f'The test split of {config.dataset} has no labels for votes (none of'
      ' its 4 galaxies), so it cannot be scored: evaluate'
      ' --split=validation or train, or get its predictions with'
      ' --mode=predict.')
  assert not (workdir / 'eval_test.json').exists()


def test_a_split_is_read_up_to_its_first_scorable_record():
  """Another split than a built dataset's test split is read, not named."""
  unlabelled = {'votes_mask': np.zeros(37, bool), 'label_3class': -1}
  records = [unlabelled] * 3
  read = []

  class Split(list):
    def __getitem__(self, index):
      read.append(index)
      return super().__getitem__(index)

  with pytest.raises(errors.DataError, match=r'none of its 3 galaxies'):
    evaluate._check_labelled(tasks.TASKS['votes'], Split(records),  # pylint: disable=protected-access
                             'validation', 'mine', built=False)
  known = {**unlabelled, 'votes_mask': np.eye(37, dtype=bool)[5]}
  read.clear()
  evaluate._check_labelled(tasks.TASKS['votes'],  # pylint: disable=protected-access
                           Split([unlabelled, known, unlabelled]),
                           'validation', 'mine', built=False)
  assert read == [0, 1]
  with pytest.raises(errors.DataError, match=r'none of its 3 galaxies'):
    evaluate._check_labelled(tasks.TASKS['3class'],  # pylint: disable=protected-access
                             Split([unlabelled, known, unlabelled]),
                             'validation', 'mine', built=False)


def test_checkpoints_without_their_config_json_are_refused(trained, tmp_path):
  # Copying only checkpoints/ somewhere: a resume or evaluation at other
  # sizes went unchecked.
  workdir = _copy(trained, tmp_path)
  (workdir / 'config.json').unlink()
  before = _snapshot(workdir)
  config = _config(trained[0], **{'input.image_size': 48})
  _refused_by_every_mode(
      config, workdir, before,
      f'{workdir} holds checkpoints but no config.json, which records the'
      ' model and preprocessing they were trained with: copy the run\'s'
      ' config.json beside them, or train into a new --workdir.')


def test_a_warm_up_past_the_run_is_a_warning(trained, tmp_path, capsys):
  workdir = _copy(trained, tmp_path)
  train.train_and_evaluate(
      _config(trained[0], num_train_steps=9,
              **{'optimizer.warmup_steps': 12}), workdir)
  assert ('gzjax: WARNING: config.optimizer.warmup_steps=12 is past'
          ' config.num_train_steps=9: the learning rate ends at 75% of its'
          ' peak 0.002.\n') in capsys.readouterr().err


@pytest.fixture(scope='module')
def no_validation(tmp_path_factory):
  """galaxy_zoo/synthetic built with --validation_percent=0: its 24
  labelled galaxies are all in train."""
  data_dir = tmp_path_factory.mktemp('no_validation')
  galaxy_zoo.prepare('synthetic', data_dir, num_labelled=24, num_test=0,
                     image_size=64, num_workers=1, validation_percent=0.0)
  return data_dir


def test_a_dataset_without_validation_trains_on_all_of_it_when_nothing_evaluates(
    no_validation, tmp_path, capsys):
  """--validation_percent=0 means "train on everything": the engine opened
  the missing validation split even with evaluation off, and stopped."""
  assert list(galaxy_zoo.builder('synthetic', no_validation).info.splits) \
      == ['train']
  assert len(galaxy_zoo.data_source('synthetic', no_validation, 'train')) \
      == 24
  workdir = tmp_path / 'work'
  result = train.train_and_evaluate(
      _config(no_validation, eval_every_steps=0, best_metric=''), workdir)
  assert result == {}
  assert checkpoint.Checkpointer(workdir).steps() == [3, 6]
  assert not (workdir / 'best').exists()
  logged = [json.loads(line)
            for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in logged] == [2, 3, 4, 6]  # Logs and saves.
  assert not [k for r in logged for k in r if k.startswith('validation/')]
  assert capsys.readouterr().err.count(
      f'gzjax: galaxy_zoo/synthetic in {no_validation} has no validation'
      ' split: training on all of its labelled galaxies, without'
      ' evaluating.\n') == 1


@pytest.mark.parametrize('overrides,needs,flags', [
    ({}, "config.eval_every_steps=6 evaluates on it and"
     " config.best_metric='validation/rmse' ranks checkpoints on it",
     "--config.eval_every_steps=0 --config.best_metric=''"),
    ({'best_metric': ''}, 'config.eval_every_steps=6 evaluates on it',
     '--config.eval_every_steps=0'),
    ({'eval_every_steps': 0},
     "config.best_metric='validation/rmse' ranks checkpoints on it",
     "--config.best_metric=''"),
], ids=['both', 'periodic', 'best'])
def test_a_dataset_without_validation_is_refused_at_the_start_when_it_evaluates(
    no_validation, tmp_path, monkeypatch, overrides, needs, flags):
  """Named before a model is built or the workdir created (it failed after
  both, with TFDS's "no split 'validation'")."""
  def no_model(*args, **kwargs):
    raise AssertionError('a model was built before the refusal')
  monkeypatch.setattr(experiments, 'create_experiment', no_model)
  with pytest.raises(errors.ConfigError) as info:
    train.train_and_evaluate(_config(no_validation, **overrides),
                             tmp_path / 'work')
  assert str(info.value) == (
      f'galaxy_zoo/synthetic in {no_validation} has no validation split, but'
      f' {needs}: rebuild it with one (python -m gzjax.data.build'
      f' --config=synthetic --data_dir={no_validation} --validation_percent=10'
      ' --overwrite, with its other options as before), or train on all of'
      f' it without evaluating: {flags}.')
  assert not (tmp_path / 'work').exists()


def test_evaluating_the_validation_split_a_dataset_lacks_says_how_to_build_it(
    trained, no_validation):
  """It said only "has no split 'validation'; it has train." (TFDS's
  splits), not that the build left it out, nor what to do."""
  before = _snapshot(trained[1])
  with pytest.raises(errors.ConfigError) as info:
    evaluate.evaluate(_config(no_validation), trained[1], split='validation')
  assert str(info.value) == (
      f'galaxy_zoo/synthetic in {no_validation} was built without a'
      ' validation split (--validation_percent=0), so it has none to'
      ' evaluate: rebuild it with one (python -m gzjax.data.build'
      f' --config=synthetic --data_dir={no_validation} --validation_percent=10'
      ' --overwrite, with its other options as before), or pass --split=train'
      ' (the galaxies it trained on).')
  assert _snapshot(trained[1]) == before


def test_best_of_a_run_that_keeps_no_best_checkpoint_says_what_to_pass(
    tmp_path):
  """It said "train into it first", which would make no best checkpoint."""
  (tmp_path / 'checkpoints' / '10').mkdir(parents=True)
  with pytest.raises(errors.MissingCheckpointError) as info:
    evaluate.check_checkpoint_folder(tmp_path, 'best')
  assert str(info.value) == (
      f'{tmp_path} keeps no best checkpoint ({tmp_path}/best does not exist:'
      " it was trained with config.best_metric='' or has not evaluated yet):"
      ' pass --checkpoint=latest or a step number.')
  evaluate.check_checkpoint_folder(tmp_path, 'latest')
  # Not a training run at all: the message as before.
  with pytest.raises(errors.MissingCheckpointError, match='train into it'):
    evaluate.check_checkpoint_folder(tmp_path / 'empty', 'best')
