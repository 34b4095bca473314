"""Fine-tuning on a label catalogue: reading, masking, splits, every label
kind end to end through the engine's loop, and the encoder round trip."""

import copy
import hashlib
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from gzjax import config as base
from gzjax import experiment as experiments
from gzjax import errors
from gzjax import finetune
from gzjax.data import catalog as catalogs
from gzjax.data import galaxy_zoo
from gzjax.data import labels
from gzjax.models import weights
from gzjax.tools import export_encoder
from tests import finetune_data


@pytest.fixture(scope='module')
def catalogue(tmp_path_factory):
  return finetune_data.write_catalogue(tmp_path_factory.mktemp('catalogue'))


def tiny_config(catalogue, **label_overrides):
  config = base.base_config()
  config.labels = finetune_data.labels_config(catalogue, **label_overrides)
  config.input.crop_size = 36
  config.input.image_size = 32
  config.input.batch_size = 8
  config.input.read_threads = 1
  config.num_train_steps = 4
  config.log_every_steps = 2
  config.eval_every_steps = 4
  config.checkpoint_every_steps = 4
  config.best_metric = 'validation/spiral/roc_auc'
  config.best_mode = 'max'
  return config


def test_read_masks_missing_cells_and_orders_classes(catalogue):
  table = labels.read(finetune_data.labels_config(catalogue))
  n = finetune_data.NUM_ROWS
  rows = np.arange(n)
  spiral, shape = table.targets['spiral'], table.targets['shape']
  np.testing.assert_array_equal(spiral['mask'], rows % 7 != 3)
  np.testing.assert_array_equal(spiral['value'][spiral['mask']],
                                (rows % 2)[rows % 7 != 3])
  # Classes in sorted order; an empty cell is masked, not a class.
  assert table.columns[1].classes == ('bar', 'merger', 'ring')
  np.testing.assert_array_equal(shape['mask'], rows % 5 != 4)
  names = np.array(finetune_data.SHAPES)[rows % 3]
  np.testing.assert_array_equal(
      np.array(table.columns[1].classes)[shape['value']][shape['mask']],
      names[rows % 5 != 4])
  votes = table.targets['morphology']
  np.testing.assert_array_equal(votes['mask'], rows % 9 != 8)
  np.testing.assert_array_equal(votes['value'][1], [1, 4, 1])
  # The Kaggle builder's hash of the id decides the split.
  np.testing.assert_array_equal(
      table.is_validation,
      galaxy_zoo.is_validation(np.array(table.ids, object), 20.0))
  by_column = labels.read(finetune_data.labels_config(
      catalogue, split_column='split'))
  np.testing.assert_array_equal(by_column.is_validation, rows % 3 == 0)
  # A train budget keeps the labels of the labelled training rows with the
  # smallest id hashes (SHA-256's first 8 bytes, written out here), whatever
  # the file's order, and leaves validation alone.
  few = labels.read(finetune_data.labels_config(
      catalogue, split_column='split', max_train_labels=5))
  train_rows = few.rows('train')
  assert few.targets['size']['mask'][train_rows].sum() == 5
  assert few.targets['size']['mask'][few.rows('validation')].all()
  by_hash = sorted(train_rows, key=lambda r: hashlib.sha256(
      few.ids[r].encode()).digest()[:8])
  kept = train_rows[few.labelled()[train_rows]]
  np.testing.assert_array_equal(kept, sorted(by_hash[:5]))
  assert list(kept) != list(train_rows[:5])  # Not the file's first rows.
  # Rows without any known label are never spent from the budget.
  unlabelled = by_hash[0]
  lines = catalogue.read_text().splitlines()
  header = lines[0].split(',')
  cells = lines[unlabelled + 1].split(',')
  for name in header:
    if name not in ('id', 'path', 'split', 'image'):
      cells[header.index(name)] = ''
  lines[unlabelled + 1] = ','.join(cells)
  blank = catalogue.with_name('blank_row.csv')
  blank.write_text('\n'.join(lines) + '\n')
  few = labels.read(finetune_data.labels_config(
      blank, split_column='split', max_train_labels=5))
  kept = train_rows[few.labelled()[train_rows]]
  np.testing.assert_array_equal(kept, sorted(by_hash[1:6]))


@pytest.mark.parametrize('column,cell,message', [
    ('spiral', 'maybe', "line 4, column 'spiral': 'maybe' is not a binary"),
    ('size', 'big', "line 4, column 'size': 'big' is not a number"),
    ('smooth', '-2', "line 4, column 'smooth': a vote count of -2 is"),
])
def test_bad_cells_name_row_column_value(catalogue, tmp_path, column, cell,
                                         message):
  lines = catalogue.read_text().splitlines()
  header = lines[0].split(',')
  cells = lines[3].split(',')
  cells[header.index(column)] = cell
  lines[3] = ','.join(cells)
  bad = tmp_path / 'labels.csv'
  bad.write_text('\n'.join(lines) + '\n')
  (tmp_path / 'img').symlink_to(catalogue.parent / 'img')
  with pytest.raises(labels.LabelError, match=message):
    labels.read(finetune_data.labels_config(bad))


def _edited(catalogue, tmp_path, row, column, cell, *, blank_lines=()):
  """A copy of the catalogue with one cell of data row ``row`` (0-based)
  changed and empty lines inserted before the given file lines."""
  return _relabelled(catalogue, tmp_path, column,
                     lambda r, old: cell if r == row else old,
                     blank_lines=blank_lines)


def _relabelled(catalogue, tmp_path, column, cell_of, *, blank_lines=()):
  """A copy of the catalogue whose ``column`` cell of each data row ``r``
  (0-based) is ``cell_of(r, old cell)``, with empty lines inserted before
  the given file lines."""
  lines = catalogue.read_text().splitlines()
  header = lines[0].split(',')
  for row in range(len(lines) - 1):
    cells = lines[row + 1].split(',')
    cells[header.index(column)] = cell_of(row, cells[header.index(column)])
    lines[row + 1] = ','.join(cells)
  for line in sorted(blank_lines, reverse=True):
    lines.insert(line - 1, '')
  bad = tmp_path / 'labels.csv'
  bad.write_text('\n'.join(lines) + '\n')
  if not (tmp_path / 'img').exists():
    (tmp_path / 'img').symlink_to(catalogue.parent / 'img')
  return bad


def test_label_errors_name_the_file_line_as_the_kaggle_builder_does(
    catalogue, tmp_path):
  """A CSV's row is named by its line in the file, the header being line 1
  (an editor's number, and the Kaggle builder's), even after blank lines the
  reader skips; a Parquet table, which has no lines, by its row from 1."""
  import pyarrow.csv as pa_csv  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  bad = _edited(catalogue, tmp_path, 5, 'spiral', 'maybe', blank_lines=(3,))
  with pytest.raises(labels.LabelError) as info:
    labels.read(finetune_data.labels_config(bad))
  assert str(info.value) == (
      f"{bad}, line 8, column 'spiral': 'maybe' is not a binary label; write"
      ' 0 or 1 (or leave it empty when unknown).')
  table = pa_csv.read_csv(bad, convert_options=pa_csv.ConvertOptions(
      column_types={'id': 'string', 'spiral': 'string'}))
  parquet = tmp_path / 'labels.parquet'
  pq.write_table(table, parquet)
  with pytest.raises(labels.LabelError) as info:
    labels.read(finetune_data.labels_config(parquet))
  assert str(info.value).startswith(
      f"{parquet}, row 6, column 'spiral': 'maybe' is not a binary label;")
  # A missing image, and one unreadable when its record is read, the same.
  missing = _edited(catalogue, tmp_path, 2, 'path', 'img/none.jpg')
  with pytest.raises(labels.LabelError) as info:
    labels.read(finetune_data.labels_config(missing))
  assert str(info.value) == (
      f"{missing}, line 4 (id 'g002'): no image at {tmp_path}/img/none.jpg.")


def test_a_dictionary_encoded_parquet_catalogue_reads_as_the_plain_one(
    catalogue, tmp_path):
  """Every column dictionary-encoded (pandas' ``category``): the same ids,
  image paths, split, classes, values and masks as the plain table."""
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  table = catalogs.read_table(catalogue)
  plain, encoded = tmp_path / 'plain.parquet', tmp_path / 'encoded.parquet'
  pq.write_table(table, plain)
  pq.write_table(pa.table({name: table.column(name).dictionary_encode()
                           for name in table.column_names}), encoded)
  (tmp_path / 'img').symlink_to(catalogue.parent / 'img')
  read = [labels.read(finetune_data.labels_config(path, split_column='split'))
          for path in (plain, encoded)]
  assert read[1].ids == read[0].ids and read[1].paths == read[0].paths
  assert read[1].columns == read[0].columns
  assert read[1].columns[1].classes == ('bar', 'merger', 'ring')
  np.testing.assert_array_equal(read[1].is_validation,
                                np.arange(finetune_data.NUM_ROWS) % 3 == 0)
  for name, parts in read[0].targets.items():
    for key, value in parts.items():
      np.testing.assert_array_equal(read[1].targets[name][key], value)


def test_fractional_vote_counts_are_refused(catalogue, tmp_path):
  """Vote counts are whole numbers of volunteers: 2.5 is a mistake (a
  fraction, or a column shifted), not a count to weigh the loss by."""
  bad = _edited(catalogue, tmp_path, 4, 'featured', '2.5')
  with pytest.raises(labels.LabelError) as info:
    labels.read(finetune_data.labels_config(bad))
  assert str(info.value) == (
      f"{bad}, line 6, column 'featured': a vote count of 2.5 is not a whole"
      ' number; write how many volunteers gave the answer (or leave it empty'
      ' when unknown).')
  whole = _edited(catalogue, tmp_path, 4, 'featured', '2.0')
  assert labels.read(finetune_data.labels_config(whole)).targets[
      'morphology']['value'][4, 1] == 2


def test_an_unusable_label_table_is_a_label_error_naming_it(tmp_path):
  """The catalogue reader shared with survey catalogues raises the labels'
  own error, with the file and what is wrong."""
  broken = tmp_path / 'broken.parquet'
  broken.write_bytes(b'not parquet')
  text = tmp_path / 'labels.txt'
  text.write_text('id,path\n1,a.jpg\n')
  for path, message in (
      (tmp_path / 'absent.csv', 'absent.csv: no such label catalogue file.'),
      (text, 'labels.txt: a label catalogue is a .csv or .parquet file.'),
      (broken, 'broken.parquet: cannot read the label catalogue (')):
    with pytest.raises(labels.LabelError) as info:
      labels.read(finetune_data.labels_config(path))
    assert str(info.value).startswith(f'{tmp_path}/{message}'), info.value


@pytest.fixture(scope='module')
def trained(catalogue, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('run')
  config = tiny_config(catalogue, split_column='split')
  return config, workdir, finetune.run(config, workdir)


def test_every_kind_end_to_end_scores_only_known_rows(trained):
  _, workdir, result = trained
  rows = np.arange(finetune_data.NUM_ROWS)
  validation = rows % 3 == 0
  assert result['spiral']['count'] == (validation & (rows % 7 != 3)).sum()
  assert result['shape']['count'] == (validation & (rows % 5 != 4)).sum()
  assert result['size']['count'] == validation.sum()
  assert result['morphology']['count'] == (validation & (rows % 9 != 8)).sum()
  for key in ('accuracy', 'f1', 'roc_auc'):
    assert 0 <= result['spiral'][key] <= 1
  assert np.array(result['shape']['confusion_matrix']).sum() == \
      result['shape']['count']
  assert result['size']['rmse'] >= result['size']['mae'] > 0
  manifest = json.loads((workdir / 'labels.json').read_text())
  assert manifest['columns'][1]['classes'] == ['bar', 'merger', 'ring']
  assert (workdir / 'plots' / 'reliability_spiral.png').is_file()
  logged = [json.loads(line) for line in
            (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert all(np.isfinite(r['train/loss']) for r in logged if 'train/loss' in r)
  assert 'validation/spiral/roc_auc' in logged[-1]


def test_encoder_round_trip_and_preprocessing_check(trained, tmp_path):
  config, workdir, _ = trained
  out = tmp_path / 'encoder.msgpack'
  exported = export_encoder.export(workdir, out)
  assert exported and all(k.startswith('backbone/') for k in exported)
  stored = weights.load(out)
  recorded = json.loads(stored[weights.PREPROCESSING_KEY].tobytes())
  assert recorded['image_size'] == 32 and recorded['crop_size'] == 36
  task = finetune.make_task(labels.read(config.labels).columns)
  fresh = base.base_config()
  # A copy: the fixture's config is shared (and num_epochs is a typed
  # placeholder, which ConfigDict.update cannot merge).
  fresh.input = copy.deepcopy(config.input)
  # The export holds the trained backbone, not the initial one.
  initial = weights.named_variables(experiments.create_model(fresh, task),
                                    'backbone/')
  assert any(not np.array_equal(np.asarray(initial[k]), v)
             for k, v in exported.items())
  fresh.model.pretrained = str(out)
  loaded = weights.named_variables(experiments.create_model(fresh, task),
                                   'backbone/')
  assert set(loaded) == set(exported)
  for name, value in exported.items():
    np.testing.assert_array_equal(np.asarray(loaded[name]), value)
  fresh.input.image_size = 48
  with pytest.raises(weights.WeightMismatchError,
                     match=r'input.image_size=32 but the config has 48'):
    experiments.create_model(fresh, task)


@pytest.fixture(scope='module')
def votes_run(tmp_path_factory):
  """A votes run's workdir: a checkpoint of the initial state and its
  config.json (any fixed weights serve to export)."""
  from tests.conftest import tiny_config  # pylint: disable=g-import-not-at-top
  from tests.test_survey_predict import _save_checkpoint  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp('votes_run')
  _save_checkpoint(workdir, tiny_config('/nonexistent'))
  return workdir


def test_export_refuses_a_bad_out_checkpoint_or_config_in_one_line(
    votes_run, tmp_path):
  """--out is checked as gzjax.main's --output is: a device such as
  /dev/full was once replaced by a regular file (and success printed), a
  folder or an unwritable path was a traceback; --checkpoint=bogus exported
  the latest; a damaged config.json was a JSONDecodeError."""
  (tmp_path / 'folder').mkdir()
  (tmp_path / 'full.msgpack').symlink_to('/dev/full')
  os.mkfifo(tmp_path / 'pipe.msgpack')
  cases = [
      (tmp_path / 'folder', 'latest', f'--out={tmp_path / "folder"} is a'
       ' folder: name a new file, or a regular file to replace.'),
      (tmp_path / 'full.msgpack', 'latest', f'--out={tmp_path}/full.msgpack'
       ' is not a regular file: name a new file, or a regular file to'
       ' replace.'),
      (tmp_path / 'pipe.msgpack', 'latest', f'--out={tmp_path}/pipe.msgpack'
       ' is not a regular file: name a new file, or a regular file to'
       ' replace.'),
      ('/proc/gzjax-encoder.msgpack', 'latest', 'Cannot write'
       ' /proc/gzjax-encoder.msgpack: No such file or directory'
       ' (/proc/gzjax-encoder.msgpack.tmp); choose an --out you can write to'
       ' (the old file, if any, is kept).'),
      (tmp_path / 'e.msgpack', 'bogus',
       '--checkpoint=bogus: use latest, best or a step number.'),
  ]
  for out, checkpoint, message in cases:
    with pytest.raises(errors.GzjaxError) as error:
      export_encoder.export(votes_run, out, checkpoint)
    assert str(error.value) == message
  damaged = tmp_path / 'damaged'
  (damaged / 'checkpoints').mkdir(parents=True)
  (damaged / 'config.json').write_text('{"task": ')
  with pytest.raises(errors.CheckpointError) as error:
    export_encoder.export(damaged, tmp_path / 'e.msgpack')
  assert str(error.value) == (
      f'{damaged / "config.json"} is not the JSON config a run writes'
      ' (Expecting value: line 1 column 10 (char 9)), so it cannot say which'
      f' model the checkpoints in {damaged} are of. Restore it from a copy,'
      ' or train into a new --workdir.')
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      'damaged', 'folder', 'full.msgpack', 'pipe.msgpack']
  assert not any((tmp_path / 'folder').iterdir())
  assert (tmp_path / 'full.msgpack').is_symlink()
  assert pathlib.Path('/dev/full').is_char_device()


def test_export_through_the_command_line_prints_one_line(votes_run,
                                                         tmp_path):
  """Success is the one line on stdout (no Orbax INFO line on stderr); a
  refusal is the one line on stderr, exit status 2."""
  def export(*flags_):
    return subprocess.run(
        [sys.executable, '-m', 'gzjax.tools.export_encoder',
         f'--workdir={votes_run}', *flags_], capture_output=True, text=True,
        check=False, cwd=pathlib.Path(__file__).resolve().parents[1])

  out = tmp_path / 'encoder.msgpack'
  done = export(f'--out={out}')
  assert (done.returncode, done.stderr) == (0, '')
  assert done.stdout == f'{out}: 12 backbone arrays\n'
  assert set(weights.load(out)) > {weights.PREPROCESSING_KEY}
  refused = export(f'--out={tmp_path}', '--checkpoint=3')
  assert (refused.returncode, refused.stdout) == (2, '')
  assert refused.stderr == (f'export_encoder: --out={tmp_path} is a folder:'
                            ' name a new file, or a regular file to'
                            ' replace.\n')


# ------------------------------------------- evaluate and predict a run ---

CLI_CONFIG = '''import pathlib
from tests import test_finetune


def get_config():
  return test_finetune.tiny_config(pathlib.Path({catalogue!r}),
                                   split_column='split')
'''
# The prediction columns of the catalogue's task, by hand: ConfigDict sorts
# the label columns, shape's classes are sorted.
PREDICTION_HEADER = [
    'id', 'morphology_smooth', 'morphology_featured', 'morphology_artifact',
    'shape_bar', 'shape_merger', 'shape_ring', 'shape_predicted', 'size',
    'spiral_probability', 'spiral_predicted']


@pytest.fixture(scope='module')
def cli_config(catalogue, tmp_path_factory):
  """A config file for gzjax.main giving the `trained` fixture's config."""
  path = tmp_path_factory.mktemp('config') / 'tiny_finetune.py'
  path.write_text(CLI_CONFIG.format(catalogue=str(catalogue)))
  return path


def _main(config_path, workdir, *flags_):
  """gzjax.main's main() in this process, as the command line runs it."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from gzjax import main as cli  # pylint: disable=g-import-not-at-top
  from tests.conftest import parse_main_flags  # pylint: disable=g-import-not-at-top
  parse_main_flags(['gzjax', f'--config={config_path}',
                    f'--workdir={workdir}', *flags_])
  try:
    cli.main(['gzjax'])
  finally:
    flags.FLAGS.unparse_flags()


def test_evaluate_a_run_through_main(trained, cli_config, capsys):
  """--mode=evaluate scores the checkpoint as the loop scored it, prints the
  loop's line, writes eval_validation.json; --tta averages 8 views."""
  config, workdir, logged = trained
  _main(cli_config, workdir, '--mode=evaluate')
  result = json.loads((workdir / 'eval_validation.json').read_text())
  assert (result['step'], result['tta'], result['split']) == (
      4, False, 'validation')
  for column, keys in (('spiral', ('accuracy', 'f1', 'roc_auc', 'count')),
                       ('shape', ('accuracy', 'macro_f1', 'count')),
                       ('size', ('rmse', 'mae', 'count')),
                       ('morphology', ('fraction_rmse', 'count'))):
    for key in keys:
      assert result[column][key] == pytest.approx(logged[column][key],
                                                  rel=1e-6), (column, key)
  assert result['shape']['confusion_matrix'] == \
      logged['shape']['confusion_matrix']
  task = finetune.make_task(labels.read(config.labels).columns)
  line = f'step 4: validation {task.summary(logged)}'
  assert line.startswith('step 4: validation morphology fraction RMSE')
  assert capsys.readouterr().out.splitlines() == [line]
  assert (workdir / 'plots' / 'reliability_spiral_validation.png').is_file()
  _main(cli_config, workdir, '--mode=evaluate', '--tta')
  tta = json.loads((workdir / 'eval_validation.json').read_text())
  assert tta['tta'] is True
  assert tta['size']['count'] == result['size']['count']
  assert tta['size']['rmse'] != pytest.approx(result['size']['rmse'],
                                              rel=1e-6)


def _reference(config, workdir, paths):
  """The checkpoint's predictions for ``paths``, by hand: the model's raw
  outputs, then each column's activation in numpy."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from gzjax import evaluate  # pylint: disable=g-import-not-at-top
  from gzjax.data import pipeline  # pylint: disable=g-import-not-at-top
  task = finetune.make_task(labels.read(config.labels).columns)
  experiment, state, step = evaluate.restore(config, workdir, task=task)
  assert step == 4
  model = nnx.merge(experiment.graphdef, state.params, state.model_state)
  model.eval()
  images = np.stack([pipeline.eval_image(open(p, 'rb').read(), config.input)
                     for p in paths])
  z = np.asarray(model(images), np.float64)
  sigmoid = lambda x: 1 / (1 + np.exp(-x))
  concentrations = 1 + 99 * sigmoid(z[:, 0:3])
  shape = np.exp(z[:, 3:6]) / np.exp(z[:, 3:6]).sum(1, keepdims=True)
  return {
      'morphology': concentrations / concentrations.sum(1, keepdims=True),
      'shape': shape, 'size': z[:, 6], 'spiral': sigmoid(z[:, 7])}


def _check_against(table, expected, classes=('bar', 'merger', 'ring')):
  """Prediction columns (name -> list) against `_reference`'s values."""
  for k, answer in enumerate(('smooth', 'featured', 'artifact')):
    np.testing.assert_allclose(table[f'morphology_{answer}'],
                               expected['morphology'][:, k], atol=2e-6)
  for k, name in enumerate(classes):
    np.testing.assert_allclose(table[f'shape_{name}'],
                               expected['shape'][:, k], atol=2e-6)
  # The class name of the largest probability, 0/1 from 0.5.
  assert list(table['shape_predicted']) == [
      classes[k] for k in expected['shape'].argmax(1)]
  np.testing.assert_allclose(table['size'], expected['size'], atol=2e-5)
  np.testing.assert_allclose(table['spiral_probability'], expected['spiral'],
                             atol=2e-6)
  np.testing.assert_array_equal(
      np.asarray(table['spiral_predicted'], int),
      (expected['spiral'] >= 0.5).astype(int))


@pytest.fixture(scope='module')
def tampered(trained, tmp_path_factory):
  """A copy of the run whose labels.json lists shape's classes reversed."""
  import shutil  # pylint: disable=g-import-not-at-top
  _, workdir, _ = trained
  copy_ = tmp_path_factory.mktemp('tampered') / 'run'
  shutil.copytree(workdir, copy_)
  manifest = json.loads((copy_ / 'labels.json').read_text())
  manifest['columns'][1]['classes'] = ['ring', 'merger', 'bar']
  (copy_ / 'labels.json').write_text(json.dumps(manifest))
  return copy_


def test_predict_a_run_through_main(trained, tampered, catalogue, cli_config,
                                    tmp_path, capsys):
  """--mode=predict writes the task's named columns, equal to the model's
  outputs computed by hand: the catalogue's rows as CSV, a folder as
  Parquet, and the survey path's shards; the class names and their order
  come from the run's labels.json."""
  import csv  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  from gzjax import predict  # pylint: disable=g-import-not-at-top
  config, workdir, _ = trained
  ids = [f'g{row:03d}' for row in range(finetune_data.NUM_ROWS)]
  paths = [catalogue.parent / 'img' / f'{i}.jpg' for i in ids]
  expected = _reference(config, workdir, paths)

  _main(cli_config, workdir, '--mode=predict',
        f'--output={tmp_path / "rows.csv"}')
  with open(tmp_path / 'rows.csv') as f:
    rows = list(csv.reader(f))
  assert rows[0] == PREDICTION_HEADER
  assert [r[0] for r in rows[1:]] == ids
  table = {name: [r[k] for r in rows[1:]] for k, name in enumerate(rows[0])}
  floats = {k: np.array(v, float) if k not in ('id', 'shape_predicted')
            else v for k, v in table.items()}
  _check_against(floats, expected)

  _main(cli_config, workdir, '--mode=predict',
        f'--output_dir={tmp_path / "survey"}', '--shard_size=20')
  # Without --num_workers, the config's number decodes (and is named).
  assert 'Decoding images in this process (config.input.num_workers=0).' in (
      capsys.readouterr().err.splitlines())
  survey = predict.read_shards(tmp_path / 'survey').to_pydict()
  assert list(survey) == PREDICTION_HEADER and survey['id'] == ids
  for name in PREDICTION_HEADER[1:]:  # CSV's 9 digits round-trip float32.
    if isinstance(survey[name][0], float):
      np.testing.assert_array_equal(np.float32(survey[name]),
                                    np.float32(table[name]), name)
    else:
      assert [str(v) for v in survey[name]] == table[name], name

  _main(cli_config, tampered, '--mode=predict',
        f'--images={catalogue.parent / "img"}',
        f'--output={tmp_path / "folder.parquet"}')
  folder = pq.read_table(tmp_path / 'folder.parquet').to_pydict()
  assert list(folder) == [*PREDICTION_HEADER[:4], 'shape_ring',
                          'shape_merger', 'shape_bar',
                          *PREDICTION_HEADER[7:]]
  assert folder['id'] == ids
  _check_against(folder, expected, classes=('ring', 'merger', 'bar'))


@pytest.mark.parametrize('case,mode,extra,message', [
    ('tampered', 'evaluate', [],
     r'labels.json records label column 2 as shape \(multiclass: ring,'
     r' merger, bar\) but .*labels.csv has shape \(multiclass: bar, merger,'
     r' ring\): use the config'),
    ('trained', 'predict', ['--config.labels.columns.size=binary'],
     r'labels.json records label column 3 as size \(regression\) but'
     r' config.labels.columns declares size \(binary\)'),
    ('empty', 'predict', [], r'labels.json: no such file, so .* is not a'
     ' run fine-tuned on a label catalogue'),
    ('trained', 'evaluate', ['--config=configs/quickstart.py'],
     'is a fine-tuning run on a label catalogue .*: evaluate or predict it'
     ' with the config it was trained with'),
    ('trained', 'predict', ['--images=BAD'],
     r'2 images of .* cannot be predicted .*\n  .*bad.jpg \(id bad\):'
     r' .*\n  .*small.jpg \(id small\): 20x20, smaller than the 36 px'),
    ('trained', 'predict', ['--output=p.txt'],
     r'--output=.*p.txt: name a .csv or .parquet file.$'),
    ('trained', 'predict', ['--ensemble=/elsewhere/run'],
     '--ensemble does not take a label-catalogue run: predict each workdir on'
     ' its own and average the files.$'),
], ids=['other_classes', 'other_kind', 'no_labels_json', 'builtin_config',
        'bad_images', 'output_suffix', 'ensemble'])
def test_a_run_of_other_labels_or_bad_images_is_refused_in_one_line(
    trained, tampered, catalogue, cli_config, tmp_path, capsys, monkeypatch,
    case, mode, extra, message):
  """Nothing is restored or written: the error names the first difference
  (or every unusable image)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  def no_model(*args, **kwargs):
    raise AssertionError('a model was built before the refusal')
  monkeypatch.setattr(experiments, 'create_experiment', no_model)
  output = tmp_path / 'p.csv'
  if extra and extra[0].startswith('--output='):
    output = tmp_path / extra[0].split('=', 1)[1]
    extra = extra[1:]
  workdir = {'tampered': tampered, 'trained': trained[1],
             'empty': tmp_path}[case]
  (tmp_path / 'checkpoints').mkdir()
  if '--images=BAD' in extra:
    bad = tmp_path / 'bad_images'
    bad.mkdir()
    (bad / 'good.jpg').symlink_to(catalogue.parent / 'img' / 'g000.jpg')
    (bad / 'bad.jpg').write_bytes(b'not a jpeg')
    Image.new('RGB', (20, 20)).save(bad / 'small.jpg')
    extra = [f'--images={bad}']
  config_path = cli_config
  if extra and extra[0].startswith('--config='):
    config_path = extra.pop(0).split('=', 1)[1]
  before = sorted(p.name for p in workdir.iterdir())
  with pytest.raises(SystemExit) as exit_:
    _main(config_path, workdir, f'--mode={mode}', *extra,
          *([f'--output={output}'] if mode == 'predict' else []))
  assert exit_.value.code == 1
  error = capsys.readouterr().err
  assert error.startswith('gzjax: ') and error.endswith('\n')
  import re  # pylint: disable=g-import-not-at-top
  assert re.search(message, error), error
  if '--images' not in ' '.join(extra):
    assert error.count('\n') == 1, error
  assert sorted(p.name for p in workdir.iterdir()) == before
  assert not output.exists()


def test_prediction_columns_by_hand():
  """Each kind's columns from activated outputs chosen by hand: the class
  name of the largest probability, 1 from a probability of 0.5 on."""
  task = finetune.make_task([
      labels.Column('shape', 'multiclass', classes=('bar', 'ring', 'spiral')),
      labels.Column('lens', 'binary'), labels.Column('z', 'regression'),
      labels.Column('q', 'votes', answers=('yes', 'no'))])
  outputs = np.array([[0.2, 0.5, 0.3, 0.5, 1.5, 0.25, 0.75],
                      [0.6, 0.1, 0.3, 0.49999, -2.0, 0.5, 0.5],
                      [0.1, 0.2, 0.7, 0.9, 0.0, 1.0, 0.0]], np.float32)
  columns = task.columns(outputs)
  assert list(columns) == finetune.prediction_names(
      [labels.Column('shape', 'multiclass', classes=('bar', 'ring', 'spiral')),
       labels.Column('lens', 'binary'), labels.Column('z', 'regression'),
       labels.Column('q', 'votes', answers=('yes', 'no'))]) == [
           'shape_bar', 'shape_ring', 'shape_spiral', 'shape_predicted',
           'lens_probability', 'lens_predicted', 'z', 'q_yes', 'q_no']
  assert columns['shape_predicted'] == ['ring', 'bar', 'spiral']
  assert columns['lens_predicted'].tolist() == [1, 0, 1]
  for name, k in (('shape_bar', 0), ('shape_ring', 1), ('shape_spiral', 2),
                  ('lens_probability', 3), ('z', 4), ('q_yes', 5),
                  ('q_no', 6)):
    np.testing.assert_array_equal(columns[name], outputs[:, k])


def test_prediction_column_names_that_clash_are_refused():
  with pytest.raises(labels.LabelError,
                     match="two columns named 'ring_probability'"):
    finetune.make_task([labels.Column('ring', 'binary'),
                        labels.Column('ring_probability', 'regression')])
  with pytest.raises(labels.LabelError, match="two columns named 'id'"):
    finetune.make_task([labels.Column('id', 'regression')])
  with pytest.raises(labels.LabelError,
                     match="two columns named 'shape_predicted'"):
    finetune.make_task([labels.Column('shape', 'multiclass',
                                      classes=('bar', 'predicted'))])


def test_a_catalogue_image_that_fails_in_a_batch_is_named_by_path_and_id(
    tmp_path):
  """Predicting a catalogue's rows: an image broken past the check at open
  (or changed since) is named by its file and id with what to do, not as a
  built dataset's damaged galaxy_id (the row) to rebuild."""
  from gzjax.data import pipeline  # pylint: disable=g-import-not-at-top
  catalogue = finetune_data.write_catalogue(tmp_path)
  table = labels.read(finetune_data.labels_config(catalogue))
  source = finetune.CatalogImages(
      catalogs.Catalog(table.ids, table.paths, source=table.source), 36)
  config = tiny_config(catalogue).input
  broken = tmp_path / 'img' / 'g005.jpg'
  broken.write_bytes(b'not an image')
  with pytest.raises(errors.DataError) as info:
    list(pipeline.create_eval_iterator(source, config, process_index=0,
                                       process_count=1))
  assert str(info.value) == (
      f'{broken} (id g005): cannot decode the image (cannot identify image'
      ' file); replace the file with a readable JPEG or PNG, or leave the'
      ' image out.')
  broken.unlink()
  with pytest.raises(errors.DataError) as info:
    source[5]
  assert str(info.value) == (
      f'{broken} (id g005): cannot read it (No such file or directory).')


def test_a_label_catalogue_refuses_the_decoded_cache(catalogue, tmp_path):
  config = tiny_config(catalogue, split_column='split')
  config.input.cache = 'host'
  with pytest.raises(errors.ConfigError,
                     match="config.input.cache='host' caches the built Galaxy"
                     " Zoo splits only; set it to '' for a label catalogue"):
    finetune.run(config, tmp_path / 'run')
  assert not list((tmp_path / 'run').glob('checkpoints/*'))


def test_best_metric_names_are_those_a_validation_logs(trained):
  config, workdir, _ = trained
  logged = json.loads(
      (workdir / 'metrics.jsonl').read_text().splitlines()[-1])
  columns = labels.read(config.labels).columns
  assert finetune.metric_names(columns) == sorted(
      key for key in logged if key.startswith('validation/'))
  assert 'validation/shape/per_class/merger/f1' in logged


def test_a_misspelt_best_metric_is_refused_before_anything_is_written(
    catalogue, tmp_path):
  config = tiny_config(catalogue, split_column='split')
  config.best_metric = 'validation/spiral/rocauc'
  with pytest.raises(errors.ConfigError) as info:
    finetune.run(config, tmp_path / 'run')
  message = str(info.value)
  assert message.startswith(
      "config.best_metric='validation/spiral/rocauc' is not a metric of the"
      " label columns ['morphology', 'shape', 'size', 'spiral']: set it to"
      " '' (no best checkpoint) or one of validation/morphology/count,")
  assert message.endswith('validation/spiral/roc_auc.')
  assert not (tmp_path / 'run').exists()


def test_labels_json_of_an_attempt_that_saved_nothing_is_replaced(
    catalogue, tmp_path):
  table = labels.read(finetune_data.labels_config(catalogue))
  workdir = tmp_path / 'run'
  (workdir / 'checkpoints').mkdir(parents=True)  # Empty: a failed attempt.
  (workdir / 'labels.json').write_text(json.dumps(
      {'source': 'old.csv', 'columns': [{'name': 'other'}]}))
  record = finetune._labels_record(workdir, table)  # pylint: disable=protected-access
  assert list(record) == ['labels.json']
  assert json.loads(record['labels.json']) == json.loads(
      json.dumps(table.manifest()))
  # Once a checkpoint exists, other columns are refused and the file kept.
  (workdir / 'checkpoints' / '4').mkdir()
  with pytest.raises(labels.LabelError, match='records other columns'):
    finetune._labels_record(workdir, table)  # pylint: disable=protected-access
  assert 'old.csv' in (workdir / 'labels.json').read_text()


def _tree(folder: pathlib.Path) -> dict[str, bytes | None]:
  """Every path under ``folder`` with a file's bytes (None for a folder)."""
  return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None
          for p in sorted(folder.rglob('*'))}


@pytest.mark.parametrize('refusal', ['batch', 'weights', 'cache'])
def test_a_refused_start_leaves_the_workdir_as_it_found_it(
    catalogue, tmp_path, refusal):
  """Refused after the catalogue is read, before training writes: a new
  workdir (and its parents) is gone, an existing one keeps what it held,
  an earlier attempt's labels.json included.  labels.json was written
  first, so a new workdir stayed with it and an old one was replaced."""
  config = tiny_config(catalogue, split_column='split')
  existing = tmp_path / 'existing'
  existing.mkdir()
  (existing / 'notes.txt').write_text('mine')
  (existing / 'labels.json').write_text('{"source": "an earlier attempt"}')
  if refusal == 'batch':
    config.input.batch_size = 64
    error, says = errors.ConfigError, 'is larger than the 24 galaxies'
  elif refusal == 'weights':
    config.model.pretrained = str(tmp_path / 'none.npz')
    error, says = errors.MissingFileError, 'No weight file at'
  else:
    config.input.cache = 'host'
    error, says = errors.ConfigError, 'caches the built Galaxy Zoo splits'
  before = _tree(existing)
  for workdir in (tmp_path / 'new' / 'run', existing):
    with pytest.raises(error, match=says):
      finetune.run(config, workdir)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['existing']
  assert _tree(existing) == before


def _known_cells_set_to(value, rows=lambda row: True):
  """For :func:`_relabelled`: ``value`` in the non-empty cells of the data
  rows where ``rows(row)``.  In tests/finetune_data.py's catalogue a row is
  in validation when row % 3 == 0 (by its split column); its spiral cell is
  empty when row % 7 == 3, its shape cell when row % 5 == 4."""
  return lambda row, old: value if old and rows(row) else old


@pytest.mark.parametrize('case', ['binary', 'multiclass', 'train_split',
                                  'budget'])
def test_a_label_of_one_class_is_refused_before_anything_is_written(
    catalogue, tmp_path, case):
  """Every spiral label 0: the run trained and kept a "best" checkpoint on
  a NaN ROC AUC.  The line names the file, the column, its one class and
  the rows that hold it (the whole catalogue, or the training split)."""
  config = tiny_config(catalogue, split_column='split')
  if case == 'binary':
    bad = _relabelled(catalogue, tmp_path, 'spiral', _known_cells_set_to('0'))
    expected = (f"{bad}: column 'spiral' (binary) holds one class, 0, in all"
                ' 31 labelled rows of the catalogue')
  elif case == 'multiclass':
    bad = _relabelled(catalogue, tmp_path, 'shape',
                      _known_cells_set_to('ring'))
    expected = (f"{bad}: column 'shape' (multiclass) holds one class,"
                " 'ring', in all 29 labelled rows of the catalogue")
  if case in ('binary', 'multiclass'):
    expected += (
        '; a classification label needs at least two classes to learn from:'
        ' check the column (and whatever filter made the table), or declare'
        ' another column in config.labels.columns.')
  elif case == 'train_split':
    bad = _relabelled(catalogue, tmp_path, 'spiral',
                      _known_cells_set_to('1', lambda row: row % 3))
    expected = (f"{bad}: column 'spiral' (binary) holds one class, 1, in all"
                ' 21 labelled rows of the train split; a label needs at least'
                " two classes to train on: change the 'split' column's"
                ' values.')
  else:  # One training label (by the id hash), and only the spiral column.
    bad = catalogue
    config = tiny_config(catalogue, max_train_labels=1)
    config.labels.columns = {'spiral': 'binary'}
    table = labels.read(config.labels)
    kept = table.targets['spiral']['value'][
        table.rows('train')[table.targets['spiral']['mask'][
            table.rows('train')]]]
    assert len(kept) == 1
    expected = (f"{bad}: column 'spiral' (binary) holds one class,"
                f' {kept[0]:g}, in its one labelled row of the train split;'
                ' a label needs at least two classes to train on: change'
                ' labels.validation_percent or set labels.split_column, or'
                ' raise labels.max_train_labels (now 1).')
  config.labels.catalog = str(bad)
  with pytest.raises(labels.LabelError) as info:
    finetune.run(config, tmp_path / 'run')
  assert str(info.value) == expected
  assert not (tmp_path / 'run').exists()


def test_a_validation_split_of_one_class_warns_and_ranks_nothing_on_nan(
    catalogue, tmp_path, capsys):
  """Both classes train, but every validation spiral is 0: its ROC AUC is
  NaN at every evaluation.  As the best metric it is refused before
  anything is written; otherwise the run trains, saying so in one line."""
  bad = _relabelled(catalogue, tmp_path, 'spiral',
                    _known_cells_set_to('0', lambda row: row % 3 == 0))
  config = tiny_config(bad, split_column='split')
  warning = (f"{bad}: column 'spiral' (binary) holds one class, 0, in all 10"
             ' labelled rows of the validation split, so its ROC AUC is NaN'
             ' at every evaluation; put galaxies of both classes in'
             " validation: change the 'split' column's values")
  with pytest.raises(errors.ConfigError) as info:
    finetune.run(config, tmp_path / 'run')
  assert str(info.value) == (
      "config.best_metric='validation/spiral/roc_auc' cannot rank"
      f' checkpoints: {warning}, or choose another best_metric (e.g.'
      ' validation/spiral/accuracy).')
  assert not (tmp_path / 'run').exists()
  capsys.readouterr()
  config.best_metric = 'validation/spiral/accuracy'
  result = finetune.run(config, tmp_path / 'run')
  assert np.isnan(result['spiral']['roc_auc'])
  assert result['spiral']['count'] == 10
  assert capsys.readouterr().err.count(f'gzjax: WARNING: {warning}.\n') == 1
  assert sorted(p.name for p in (tmp_path / 'run' / 'best').iterdir()) == [
      '4']


def test_running_the_module_itself_points_at_gzjax_main():
  """``python -m gzjax.finetune`` (the module docstring's old command)
  exited 0 doing nothing; it now says which command fine-tunes."""
  result = subprocess.run([sys.executable, '-m', 'gzjax.finetune'],
                          cwd=pathlib.Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, check=False)
  assert result.returncode == 1
  assert result.stderr == (
      'gzjax: gzjax.finetune has no command line of its own: run python -m'
      ' gzjax.main --config=configs/finetune_spiral.py --workdir=DIR (a config'
      ' with config.labels.catalog fine-tunes).\n')


@pytest.mark.parametrize('how', ['percent', 'split_column'])
def test_no_validation_rows_are_refused_when_the_config_evaluates(
    catalogue, tmp_path, how):
  """labels.validation_percent=0 was refused by the config check (a built
  dataset takes --validation_percent=0), and a split column marking no row
  validation stopped with "the validation split has no labelled rows"."""
  config = tiny_config(catalogue, split_column='split')
  if how == 'percent':
    config.labels.split_column = ''
    config.labels.validation_percent = 0.0
    why, advice = ('labels.validation_percent=0', 'change'
                   ' labels.validation_percent or set labels.split_column')
  else:
    config.labels.catalog = str(_relabelled(
        catalogue, tmp_path, 'split', lambda row, old: 'train'))
    why = "its 'split' column marks no row validation"
    advice = "change the 'split' column's values"
  with pytest.raises(errors.ConfigError) as info:
    finetune.run(config, tmp_path / 'run')
  assert str(info.value) == (
      f'{config.labels.catalog} has no validation split ({why}), but'
      ' config.eval_every_steps=4 evaluates on it and'
      " config.best_metric='validation/spiral/roc_auc' ranks checkpoints on"
      f' it: {advice}, or train on all of it without evaluating:'
      " --config.eval_every_steps=0 --config.best_metric=''.")
  assert not (tmp_path / 'run').exists()


def test_no_validation_rows_train_on_every_row_when_nothing_evaluates(
    catalogue, tmp_path, capsys):
  config = tiny_config(catalogue, validation_percent=0.0)
  config.eval_every_steps, config.best_metric = 0, ''
  workdir = tmp_path / 'run'
  assert finetune.run(config, workdir) == {}
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['4']
  logged = [json.loads(line) for line in
            (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in logged] == [2, 4]
  assert not [k for r in logged for k in r if k.startswith('validation/')]
  assert (workdir / 'labels.json').is_file()
  assert len(labels.LabelSource(labels.read(config.labels), 'train')) == \
      finetune_data.NUM_ROWS
  err = capsys.readouterr().err
  assert err.count(
      f'gzjax: {catalogue} has no validation split'
      ' (labels.validation_percent=0): training on all of its labelled'
      ' rows, without evaluating.\n') == 1
  # No line about classes in a validation split that does not exist.
  assert 'WARNING' not in err
  # Evaluating the split it lacks says what to do (it said only that).
  with pytest.raises(labels.LabelError) as info:
    finetune.evaluate(config, workdir)
  assert str(info.value) == (
      f'{catalogue}: the validation split has no labelled rows: evaluate'
      ' --split=train, or give the catalogue validation rows'
      ' (labels.validation_percent, labels.split_column).')
