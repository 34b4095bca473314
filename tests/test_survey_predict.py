"""Survey prediction: shards, manifest, errors, simulated processes, resume."""

import copy
import csv
import dataclasses
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

from absl import flags
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from PIL import Image

from gzjax import checkpoint
from gzjax import evaluate
from gzjax import experiment as experiments
from gzjax import predict
from gzjax import tasks
from gzjax import taxonomy
from gzjax.data import catalog as catalogs
from gzjax.models import heads
from tests.conftest import tiny_config

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_GOOD = 69
SHARD_SIZE = 25


def _galaxy(rng, size=64) -> np.ndarray:
  """A blurry ellipse on dark sky: outputs vary from image to image."""
  y, x = np.mgrid[:size, :size] - size / 2
  a, b, angle = rng.uniform(3, 14), rng.uniform(2, 8), rng.uniform(0, np.pi)
  u = x * np.cos(angle) + y * np.sin(angle)
  v = -x * np.sin(angle) + y * np.cos(angle)
  light = np.exp(-(u / a) ** 2 - (v / b) ** 2)
  colour = rng.uniform(0.5, 1.0, 3)
  return (255 * light[..., None] * colour).astype(np.uint8)


def _save_checkpoint(workdir: pathlib.Path, config) -> None:
  """A checkpoint of the initial state: any fixed weights serve here."""
  experiment = experiments.create_experiment(config)
  state = experiment.initial_state()
  checkpointer = checkpoint.Checkpointer(workdir)
  checkpointer.save(3, state, {'position': 0})
  checkpointer.wait()
  checkpointer.close()
  (workdir / 'config.json').write_text(config.to_json_best_effort())


@pytest.fixture(scope='module')
def survey(tmp_path_factory):
  """A votes checkpoint and a 73-row catalogue with 4 unusable images.

  The other 69 rows are good 64 px cut-outs (JPEG and PNG, in two folders) with
  awkward string ids; row 30 is random bytes, row 55 a truncated PNG, row
  71 a 40 px image, smaller than the 48 px crop, and row 72 is missing.
  """
  root = tmp_path_factory.mktemp('survey')
  rng = np.random.default_rng(0)
  rows = []
  for i in range(NUM_GOOD):
    galaxy = f'J{i:06d}.00+0{i:05d}.6' if i % 3 else str(2**53 + 1 + i)
    folder, suffix = ('jpg', '.jpg') if i % 2 else ('png', '.PNG')
    path = root / folder / f'{galaxy}{suffix}'
    path.parent.mkdir(exist_ok=True)
    Image.fromarray(_galaxy(rng)).save(path, 'JPEG' if i % 2 else 'PNG')
    rows.append((galaxy, f'{folder}/{path.name}'))
  (root / 'bad.jpg').write_bytes(rng.bytes(3000))
  png = (root / 'png' / f'{rows[0][0]}.PNG').read_bytes()
  (root / 'truncated.png').write_bytes(png[:len(png) // 2])
  Image.fromarray(_galaxy(rng, 40)).save(root / 'small.png')
  rows.insert(30, ('bad-30', 'bad.jpg'))
  rows.insert(55, ('truncated-55', 'truncated.png'))
  rows.insert(71, ('small-71', 'small.png'))
  rows.append(('missing-72', 'nowhere.jpg'))
  table = root / 'catalogue.csv'
  with table.open('w', newline='') as f:
    csv.writer(f).writerows([('objid', 'file'), *rows])
  config = tiny_config('/nonexistent', **{'input.batch_size': 8})
  workdir = root / 'workdir'
  _save_checkpoint(workdir, config)
  return {'root': root, 'table': table, 'rows': rows, 'config': config,
          'workdir': workdir}


def _catalog(survey):
  return catalogs.from_table(survey['table'], id_column='objid',
                             path_column='file')


@pytest.fixture(scope='module')
def uninterrupted(survey):
  """The reference run: Parquet shards of 25 rows, one process."""
  output = survey['root'] / 'uninterrupted'
  summary = predict.predict_catalog(
      survey['config'], survey['workdir'], _catalog(survey),
      predict.Options(output, shard_size=SHARD_SIZE, progress_interval=0))
  return output, summary


BAD = {30: 'cannot decode', 55: 'cannot decode', 71: 'smaller than the crop',
       72: 'no such file'}


def test_shards_manifest_errors_and_rows_match_the_eval_path(
    survey, uninterrupted):
  output, summary = uninterrupted
  rows = survey['rows']
  assert (summary.complete, summary.rows, summary.errors) == (True, 69, 4)
  manifest = json.loads((output / '_SUCCESS.json').read_text())
  # 73 rows in shards of 25: [0, 25), [25, 50) with row 30 bad, [50, 73)
  # with rows 55, 71 and 72 bad.
  assert [(s['file'], s['first_row'], s['stop_row'], s['rows'], s['errors'])
          for s in manifest['shards']] == [
              ('part-00000.parquet', 0, 25, 25, 0),
              ('part-00001.parquet', 25, 50, 24, 1),
              ('part-00002.parquet', 50, 73, 20, 3)]
  assert (manifest['rows'], manifest['errors']) == (69, 4)
  assert manifest['checkpoint']['step'] == 3
  assert manifest['catalog']['rows'] == 73
  assert sorted(p.name for p in output.iterdir()) == [
      '_RUN.json', '_SUCCESS.json', 'errors.csv', 'part-00000.parquet',
      'part-00001.errors.csv', 'part-00001.parquet', 'part-00002.errors.csv',
      'part-00002.parquet']
  errors = predict.read_errors(output / 'errors.csv')
  assert [e[0] for e in errors] == [rows[r][0] for r in BAD]
  for (row, reason), error in zip(BAD.items(), errors):
    assert error[1].endswith(rows[row][1]) and reason in error[2], error

  table = predict.read_shards(output)
  good = [r for i, r in enumerate(rows) if i not in BAD]
  assert table.column('id').to_pylist() == [g for g, _ in good]
  assert str(2**53 + 1) in table.column('id').to_pylist()
  votes = np.stack([table.column(c).to_numpy() for c in taxonomy.ANSWERS], 1)
  # Reference: the engine's evaluation path over the same files, by index.
  experiment, state, _ = predict.evaluate.restore(survey['config'],
                                                  survey['workdir'])
  records = [{'image': (survey['root'] / path).read_bytes(), 'galaxy_id': i,
              'votes': np.full(37, np.nan, np.float32),
              'votes_mask': np.zeros(37, bool), 'label_3class': -1,
              'label_7class': -1} for i, (_, path) in enumerate(good)]
  reference = evaluate.predict_split(experiment, state, records)
  np.testing.assert_array_equal(reference['galaxy_id'], np.arange(len(good)))
  np.testing.assert_allclose(votes, reference['outputs'], atol=1e-6)
  assert np.ptp(votes[:, 0]) > 1e-4  # Rows differ: a mix-up would show.
  np.testing.assert_array_equal(table.column('label_7class').to_numpy(),
                                taxonomy.seven_class_labels(votes))


def test_derived_labels_and_their_probabilities_by_hand():
  smooth_round = np.zeros(37)
  smooth_round[taxonomy.index('Class1.1')] = 0.9
  smooth_round[taxonomy.index('Class1.2')] = 0.1
  smooth_round[taxonomy.index('Class6.2')] = 0.8
  smooth_round[taxonomy.index('Class7.1')] = 0.9 * 0.7  # Cumulative.
  # The rest of the tree (the labels come from the votes projected onto it).
  for name, value in (('Class2.1', 0.1), ('Class9.1', 0.1), ('Class6.1', 0.2),
                      ('Class7.2', 0.9 * 0.3), ('Class8.7', 0.2)):
    smooth_round[taxonomy.index(name)] = value
  undecided = np.zeros(37)
  undecided[[0, 1, 2]] = (0.4, 0.35, 0.25)
  columns = predict.output_columns(['a', 'b'], np.stack(
      [smooth_round, undecided]), tasks.TASKS['votes'])
  assert columns['label_3class'].tolist() == [0, -1]
  assert columns['name_3class'] == ['smooth', '']
  np.testing.assert_allclose(columns['p_3class'], [0.9, np.nan])
  assert columns['label_7class'].tolist() == [0, -1]
  assert columns['name_7class'] == ['completely round', '']
  # Path share: smooth 0.9 x odd-no 0.8 x round (conditional) 0.7.
  np.testing.assert_allclose(columns['p_7class'], [0.9 * 0.8 * 0.7, np.nan],
                             rtol=1e-6)
  probabilities = np.array([[0.2, 0.7, 0.1]])
  columns = predict.output_columns(['J1'], probabilities,
                                   tasks.TASKS['3class'])
  assert list(columns) == ['id', 'smooth', 'features or disk',
                           'star or artifact', 'predicted', 'p_predicted']
  assert (columns['predicted'], columns['p_predicted'].tolist()) == (
      ['features or disk'], [pytest.approx(0.7)])


def test_derived_labels_of_votes_that_break_the_tree_are_projected_first():
  """A sigmoid head's outputs (the review's hand case: question 1 sums to
  0.6) gave a barred spiral with p_7class 2.02; the labels now come from the
  votes projected onto the tree, and the 37 columns stay the model's."""
  votes = np.full(taxonomy.NUM_ANSWERS, 0.05, np.float32)
  for name, value in (('Class1.2', 0.5), ('Class2.2', 0.4), ('Class4.1', 0.9),
                      ('Class3.1', 0.9), ('Class6.2', 0.9)):
    votes[taxonomy.index(name)] = value
  columns = predict.output_columns(['a'], votes[None], tasks.TASKS['votes'])
  assert columns['Class1.2'].tolist() == [np.float32(0.5)]
  assert columns['Class3.1'].tolist() == [np.float32(0.9)]
  # Projected: features 0.5/0.6, not edge-on 0.4/0.45, spiral and bar
  # 0.9/0.95 each (what reached the question), all within [0, 1].
  assert (columns['label_7class'].tolist(), columns['name_7class']) == (
      [4], ['barred spiral'])
  np.testing.assert_allclose(columns['p_7class'],
                             [5 / 6 * 8 / 9 * (18 / 19) ** 2], rtol=1e-6)
  assert 0 <= columns['p_7class'][0] <= 1  # 0.6648; 2.02 unprojected.
  assert (columns['label_3class'].tolist(), columns['name_3class']) == (
      [1], ['features or disk'])
  np.testing.assert_allclose(columns['p_3class'], [5 / 6], rtol=1e-6)


def test_derived_labels_of_tree_consistent_votes_are_unchanged():
  """The votes head's outputs obey the tree: projecting them changes none of
  the derived labels, and their shares by float32 rounding at most."""
  rng = np.random.default_rng(7)
  logits = rng.normal(0.5, 1.5, (400, taxonomy.NUM_ANSWERS)).astype(np.float32)
  votes = np.asarray(heads.decision_tree_votes(logits))
  columns = predict.output_columns([str(i) for i in range(400)], votes,
                                   tasks.TASKS['votes'])
  raw = votes.astype(np.float64)  # What the labels were derived from.
  labels = taxonomy.seven_class_labels(raw)
  np.testing.assert_array_equal(columns['label_7class'], labels)
  np.testing.assert_array_equal(columns['label_3class'],
                                taxonomy.three_class_labels(raw))
  assert (labels >= 0).sum() > 50  # Rows with a class: something is compared.
  chosen = np.take_along_axis(taxonomy.seven_class_scores(raw),
                              np.maximum(labels, 0)[:, None], 1)[:, 0]
  np.testing.assert_allclose(
      columns['p_7class'], np.where(labels >= 0, chosen, np.nan), rtol=1e-6)
  exact = np.zeros(taxonomy.NUM_ANSWERS, np.float32)  # Sums exact in binary.
  for name, value in (('Class1.1', 0.75), ('Class1.2', 0.25),
                      ('Class2.2', 0.25), ('Class3.2', 0.25),
                      ('Class4.2', 0.25), ('Class5.2', 0.25),
                      ('Class6.2', 1.0), ('Class7.1', 0.5), ('Class7.2', 0.25)):
    exact[taxonomy.index(name)] = value
  columns = predict.output_columns(['e'], exact[None], tasks.TASKS['votes'])
  assert (columns['name_7class'], columns['p_7class'].tolist()) == (
      ['completely round'], [0.5])  # Smooth 0.75 x odd-no 1 x round 2/3.


def test_the_num_workers_flag_when_given_wins_over_the_config():
  config = tiny_config('/nonexistent', **{'input.num_workers': 3})
  assert predict.decoding_workers(config, predict.Options('out')) == (
      3, 'config.input.num_workers')
  for flag in (0, 2):
    assert predict.decoding_workers(
        config, predict.Options('out', num_workers=flag)) == (
            flag, '--num_workers')


def test_simulated_processes_write_the_same_rows_as_csv(survey, uninterrupted,
                                                        capsys):
  if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags.
    flags.FLAGS.mark_as_parsed()
  output = survey['root'] / 'two_processes'
  options = predict.Options(output, shard_size=SHARD_SIZE, format='csv',
                            progress_interval=0)
  # Process 1 decodes in a grain worker process: the catalogue pickles.
  second = predict.predict_catalog(
      survey['config'], survey['workdir'], _catalog(survey),
      dataclasses.replace(options, num_workers=1), process_index=1,
      process_count=2)
  assert not second.complete and second.shards_written == 1
  assert 'Decoding images in 1 worker processes (--num_workers=1).' in (
      capsys.readouterr().err.splitlines())
  assert sorted(p.name for p in output.iterdir()) == [
      '_RUN.json', 'part-00001.csv', 'part-00001.errors.csv']
  first = predict.predict_catalog(survey['config'], survey['workdir'],
                                  _catalog(survey), options, process_index=0,
                                  process_count=2)
  assert (first.complete, first.shards_written, first.rows) == (True, 2, 69)
  with (output / 'part-00000.csv').open(newline='') as f:
    assert next(csv.reader(f))[:3] == ['id', 'Class1.1', 'Class1.2']
  table, reference = predict.read_shards(output), predict.read_shards(
      uninterrupted[0])
  assert table.column('id').to_pylist() == reference.column(
      'id').to_pylist()
  for name in [*taxonomy.ANSWERS, 'p_3class', 'p_7class']:
    # 9 significant digits in the CSV give back the float32 exactly.
    np.testing.assert_array_equal(
        table.column(name).to_numpy().astype(np.float32),
        reference.column(name).to_numpy(), err_msg=name)


def test_strict_stops_at_the_first_bad_image_and_keeps_finished_shards(
    survey):
  output = survey['root'] / 'strict'
  with pytest.raises(predict.PredictionError) as error:
    predict.predict_catalog(
        survey['config'], survey['workdir'], _catalog(survey),
        predict.Options(output, shard_size=SHARD_SIZE, strict=True))
  message = str(error.value)
  assert '\n' not in message
  assert message.startswith(str(survey['root'] / 'bad.jpg') + ' (id bad-30):'
                            ' cannot decode the image')
  assert 'without --strict' in message
  assert sorted(p.name for p in output.iterdir()) == [
      '_RUN.json', 'part-00000.parquet']


def test_a_rerun_with_other_settings_or_a_small_first_image_is_refused(
    survey, uninterrupted, tmp_path):
  with pytest.raises(predict.PredictionError,
                     match=r'holds predictions of another run \(shard_size:'
                     r' 25 then, 10 now\)'):
    predict.predict_catalog(
        survey['config'], survey['workdir'], _catalog(survey),
        predict.Options(uninterrupted[0], shard_size=10))
  # The preprocessing is recorded as an exported encoder records it.
  recorded = json.loads((uninterrupted[0] / '_RUN.json').read_text())
  assert recorded['model'] == {
      'model': 'cnn', 'image_size': 32, 'crop_size': 48,
      'normalization_mean': [0.5, 0.5, 0.5],
      'normalization_std': [0.5, 0.5, 0.5], 'task': 'votes', 'tta': False}
  # (Another normalisation is refused before, by the checkpoint: another
  # crop is the checkpoint's to allow, not the output folder's to mix.)
  other = copy.deepcopy(survey['config'])
  other.input.crop_size = 44
  with pytest.raises(predict.PredictionError,
                     match=r'another run \(model.crop_size: 48 then, 44'
                     r' now\)'):
    predict.predict_catalog(
        other, survey['workdir'], _catalog(survey),
        predict.Options(uninterrupted[0], shard_size=SHARD_SIZE))
  table = tmp_path / 'small_first.csv'
  table.write_text(f'id,path\nS,{survey["root"] / "small.png"}\n')
  with pytest.raises(catalogs.CatalogError,
                     match=r'small.png: the image is 40x40, smaller than the'
                     r' 48 px centre crop \(1 of 1 images probed'):
    predict.predict_catalog(survey['config'], survey['workdir'],
                            catalogs.from_table(table),
                            predict.Options(tmp_path / 'out'))


_CONFIG_FILE = '''
from tests.conftest import tiny_config
def get_config():
  return tiny_config('/nonexistent', **{'input.batch_size': 8})
'''
# The killed run decodes slowly (20 ms an image, ~1.5 s in all), so that the
# kill lands after the first shard and before the last.
_SLOW_CONFIG_FILE = _CONFIG_FILE + '''
import time
from gzjax.data import pipeline
_eval_image = pipeline.eval_image
def _slow_eval_image(*args, **kwargs):
  time.sleep(0.02)
  return _eval_image(*args, **kwargs)
pipeline.eval_image = _slow_eval_image
'''


def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_output(
    survey, uninterrupted, tmp_path):
  (tmp_path / 'tiny.py').write_text(_CONFIG_FILE)
  (tmp_path / 'slow.py').write_text(_SLOW_CONFIG_FILE)
  output = tmp_path / 'killed'
  command = [sys.executable, '-m', 'gzjax.main',
             f'--workdir={survey["workdir"]}', '--mode=predict',
             f'--catalog={survey["table"]}', '--id_column=objid',
             '--path_column=file', f'--output_dir={output}',
             f'--shard_size={SHARD_SIZE}']
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  process = subprocess.Popen([*command, f'--config={tmp_path / "slow.py"}'],
                             cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  deadline = time.monotonic() + 120
  while not (output / 'part-00000.parquet').exists():
    assert process.poll() is None, process.communicate()[1].decode()
    assert time.monotonic() < deadline
    time.sleep(0.01)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not (output / '_SUCCESS.json').exists()
  assert not (output / 'part-00002.parquet').exists()
  first_shard = (output / 'part-00000.parquet').stat()
  rerun = subprocess.run([*command, f'--config={tmp_path / "tiny.py"}'],
                         cwd=REPO, env=env, capture_output=True, check=False)
  # Bytes, not text mode: universal newlines would turn '\r' into '\n'.
  stderr = rerun.stderr.decode()
  assert rerun.returncode == 0, stderr
  assert '\r' not in stderr  # Not a terminal: plain lines.
  assert 'predict: 73/73 (100%)' in stderr, stderr
  assert ('Wrote 69 predictions in 3 shards' in stderr and
          '4 images could not be read' in stderr), stderr
  # The finished shard was kept, not predicted again.
  assert (output / 'part-00000.parquet').stat().st_mtime_ns == \
      first_shard.st_mtime_ns
  reference = uninterrupted[0]
  for name in ('part-00000.parquet', 'part-00001.parquet',
               'part-00002.parquet', 'errors.csv'):
    assert (output / name).read_bytes() == (reference / name).read_bytes(), \
        name
  assert pq.read_table(output / 'part-00002.parquet').num_rows == 20
  assert not list(output.glob('*.tmp'))


def _files(folder: pathlib.Path) -> dict[str, bytes]:
  return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_part_files_without_a_run_record_are_refused_not_counted(
    survey, uninterrupted, tmp_path):
  # A user's folder with a junk part file: the run once printed "Wrote 7
  # predictions in 1 shards" and wrote _SUCCESS.json over it.
  own = tmp_path / 'own'
  own.mkdir()
  (own / 'part-00000.parquet').write_bytes(b'no')
  (own / 'notes.txt').write_text('mine')
  # A finished run whose _RUN.json was deleted.
  old = tmp_path / 'old'
  old.mkdir()
  for name, data in _files(uninterrupted[0]).items():
    if name != '_RUN.json':
      (old / name).write_bytes(data)
  for folder, shown in (
      (own, 'part-00000.parquet'),
      (old, '_SUCCESS.json, errors.csv, part-00000.parquet,'
       ' part-00001.errors.csv, part-00001.parquet and 2 more')):
    before = _files(folder)
    with pytest.raises(predict.PredictionError) as error:
      predict.predict_catalog(
          survey['config'], survey['workdir'], _catalog(survey),
          predict.Options(folder, shard_size=SHARD_SIZE))
    assert str(error.value) == (
        f'--output_dir={folder} holds {shown} but no _RUN.json, so they are'
        " not known to be this run's shards: choose an empty or new"
        ' --output_dir, or remove them.')
    assert _files(folder) == before


def test_an_unreadable_run_record_is_one_line(survey, tmp_path):
  (tmp_path / '_RUN.json').write_text('{"catalog": ')
  with pytest.raises(predict.PredictionError) as error:
    predict.predict_catalog(survey['config'], survey['workdir'],
                            _catalog(survey), predict.Options(tmp_path))
  assert str(error.value) == (
      f'{tmp_path / "_RUN.json"} cannot be read as a run\'s settings'
      ' (Expecting value: line 1 column 13 (char 12)): give a new'
      ' --output_dir, or delete that one to start again.')
  assert [p.name for p in tmp_path.iterdir()] == ['_RUN.json']


def _dictionary_encoded(table: pa.Table) -> pa.Table:
  """Every column dictionary-encoded, as pandas writes a ``category``."""
  return pa.table({name: table.column(name).dictionary_encode()
                   for name in table.column_names})


def test_a_dictionary_encoded_parquet_catalogue_predicts_as_the_csv(
    survey, uninterrupted, tmp_path):
  """Ids and paths dictionary-encoded (pandas' ``category``) were refused
  as "not strings"; the shards are byte for byte the CSV catalogue's."""
  table = survey['root'] / 'catalogue_dictionary.parquet'
  pq.write_table(_dictionary_encoded(pa_csv.read_csv(
      survey['table'], convert_options=pa_csv.ConvertOptions(
          column_types={'objid': pa.string()}))), table)
  output = tmp_path / 'out'
  summary = predict.run(
      survey['config'], [str(survey['workdir'])], catalog=str(table),
      id_column='objid', path_column='file', output_dir=output,
      shard_size=SHARD_SIZE, progress_interval=0)
  assert (summary.complete, summary.rows, summary.errors) == (True, 69, 4)
  expected = _files(uninterrupted[0])
  got = _files(output)
  assert sorted(got) == sorted(expected)
  for name in got:
    if name.startswith('part-') or name == 'errors.csv':
      assert got[name] == expected[name], name
  assert (json.loads(got['_RUN.json'])['catalog']['sha256'] ==
          json.loads(expected['_RUN.json'])['catalog']['sha256'])


def test_repeated_ids_in_a_catalogue_are_refused_naming_both_rows(
    survey, tmp_path):
  """Named as label-catalogue messages name rows (labels.Rows): a CSV's file
  lines, the header being line 1; a Parquet table's rows from 1."""
  image = survey['root'] / survey['rows'][0][1]
  table = tmp_path / 'repeated.csv'
  table.write_text('id,path\n' + ''.join(
      f'{i},{image}\n' for i in ('B', 'A1', 'C', 'A1', 'B')))
  parquet = tmp_path / 'repeated.parquet'
  pq.write_table(pa_csv.read_csv(table), parquet)
  encoded = tmp_path / 'encoded.parquet'  # pandas' category columns.
  pq.write_table(_dictionary_encoded(pa_csv.read_csv(table)), encoded)
  for path, rows in ((table, 'line 3 and line 5'),
                     (parquet, 'row 2 and row 4'),
                     (encoded, 'row 2 and row 4')):
    with pytest.raises(catalogs.CatalogError) as error:
      predict.predict_catalog(survey['config'], survey['workdir'],
                              catalogs.from_table(path),
                              predict.Options(tmp_path / 'out'))
    # The first row that repeats an earlier id, and that earlier row.
    assert str(error.value) == (
        f"{path}, {rows} both have the id 'A1'; ids must be unique"
        ' (each names one prediction): fix the catalogue.')
  assert not (tmp_path / 'out').exists()


def test_an_output_dir_that_cannot_be_created_is_one_line(survey, tmp_path):
  (tmp_path / 'file').write_text('not a folder')
  for output_dir, reason in ((tmp_path / 'file' / 'out', 'Not a directory'),
                             (tmp_path / 'file', 'File exists')):
    with pytest.raises(predict.PredictionError) as error:
      predict.predict_catalog(survey['config'], survey['workdir'],
                              _catalog(survey), predict.Options(output_dir))
    assert str(error.value).startswith(
        f'Cannot create --output_dir={output_dir}: {reason} (')
    assert str(error.value).endswith('; choose a folder you can write to.')
  assert sorted(p.name for p in tmp_path.iterdir()) == ['file']
  assert (tmp_path / 'file').read_text() == 'not a folder'


_VOTES = np.full((2, 37), 0.25, np.float32)


def test_an_output_that_is_a_folder_or_a_device_is_refused(tmp_path):
  (tmp_path / 'folder.csv').mkdir()
  os.mkfifo(tmp_path / 'pipe.csv')
  (tmp_path / 'full.csv').symlink_to('/dev/full')
  for name, kind in (('folder.csv', 'a folder'),
                     ('pipe.csv', 'not a regular file'),
                     ('full.csv', 'not a regular file')):
    with pytest.raises(predict.PredictionError) as error:
      evaluate._write_csv(tmp_path / name, np.array([7, 3]), _VOTES,  # pylint: disable=protected-access
                          tasks.TASKS['votes'])
    assert str(error.value) == (
        f'--output={tmp_path / name} is {kind}: name a new file, or a regular'
        ' file to replace.')
  with pytest.raises(predict.PredictionError, match='is a folder'):
    predict.write_table(tmp_path / 'folder.csv', {'id': ['a']})
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      'folder.csv', 'full.csv', 'pipe.csv']
  assert (tmp_path / 'folder.csv').is_dir()
  assert (tmp_path / 'pipe.csv').is_fifo()
  assert (tmp_path / 'full.csv').is_symlink()
  assert pathlib.Path('/dev/full').is_char_device()


def test_a_bad_output_is_refused_before_any_prediction(tmp_path):
  # An empty workdir: had the prediction started, its missing checkpoint
  # would be the error.
  from gzjax import finetune  # pylint: disable=g-import-not-at-top
  (tmp_path / 'folder.csv').mkdir()
  (tmp_path / 'work').mkdir()
  expected = (f'--output={tmp_path / "folder.csv"} is a folder: name a new'
              ' file, or a regular file to replace.')
  with pytest.raises(predict.PredictionError) as error:
    evaluate.predict(tiny_config('/nonexistent'), [tmp_path / 'work'],
                     output=tmp_path / 'folder.csv')
  assert str(error.value) == expected
  with pytest.raises(predict.PredictionError) as error:
    finetune.predict(tiny_config('/nonexistent'), tmp_path / 'work',
                     output=tmp_path / 'folder.csv')
  assert str(error.value) == expected


def test_an_output_that_cannot_be_written_keeps_the_old_file(tmp_path,
                                                             monkeypatch):
  output = tmp_path / 'predictions.csv'
  output.write_text('old\n')
  (tmp_path / 'file').write_text('not a folder')
  with pytest.raises(predict.PredictionError) as error:
    evaluate._write_csv(tmp_path / 'file' / 'p.csv', np.array([7, 3]),  # pylint: disable=protected-access
                        _VOTES, tasks.TASKS['votes'])
  assert str(error.value) == (
      f'Cannot create the folder of --output={tmp_path / "file" / "p.csv"}:'
      f' File exists ({tmp_path / "file"}); choose an --output you can write'
      ' to (the old file, if any, is kept).')

  def full_disk(*args):
    raise OSError(28, 'No space left on device')

  monkeypatch.setattr(predict.os, 'replace', full_disk)
  with pytest.raises(predict.PredictionError) as error:
    evaluate._write_csv(output, np.array([7, 3]), _VOTES,  # pylint: disable=protected-access
                        tasks.TASKS['votes'])
  assert str(error.value) == (
      f'Cannot write {output}: No space left on device; choose an --output'
      ' you can write to (the old file, if any, is kept).')
  assert output.read_text() == 'old\n'
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      'file', 'predictions.csv']


def test_an_errors_csv_reason_is_one_line_without_object_addresses():
  """The reason a survey row failed is worded as the training pipeline
  words it (pipeline.decode_error_text): Pillow's address of its BytesIO
  would differ on every run and mean nothing to the reader."""
  try:
    Image.open(io.BytesIO(b'not an image'))
  except Image.UnidentifiedImageError as error:
    unidentified = error
  assert 'BytesIO object at 0x' in str(unidentified)
  assert predict._reason(unidentified) == (  # pylint: disable=protected-access
      'cannot decode the image (UnidentifiedImageError: cannot identify image'
      ' file)')
  assert predict._reason(OSError('image file is\ntruncated')) == (  # pylint: disable=protected-access
      'cannot decode the image (OSError: image file is truncated)')
  assert predict._reason(FileNotFoundError('x')) == 'no such file'  # pylint: disable=protected-access


def test_a_shard_of_only_unreadable_images_is_written_empty_and_counted(
    survey, tmp_path, capsys):
  """Its file has no rows and the columns of the others; the run carries on,
  the manifest counts it, and a rerun resumes past it.  (It once raised
  "cannot reshape array of size 0" on every run.)"""
  good = survey['rows'][1]
  table = tmp_path / 'catalogue.csv'
  table.write_text(f'objid,file\n1,nope/1.png\n{good[0]},'
                   f'{survey["root"] / good[1]}\n2,nope/2.png\n')
  for fmt in ('parquet', 'csv'):
    output = tmp_path / fmt
    options = predict.Options(output, shard_size=1, format=fmt,
                              progress_interval=0)
    catalog = catalogs.from_table(table, id_column='objid',
                                  path_column='file')
    summary = predict.predict_catalog(survey['config'], survey['workdir'],
                                      catalog, options)
    assert (summary.complete, summary.shards_written, summary.rows,
            summary.errors) == (True, 3, 1, 2)
    assert capsys.readouterr().err.splitlines()[-1] == (
        f'Wrote 1 prediction in 3 shards to {output}; 2 images could not be'
        f' read (listed in {output / "errors.csv"}).')
    manifest = json.loads((output / '_SUCCESS.json').read_text())
    assert [(s['file'], s['rows'], s['errors'])
            for s in manifest['shards']] == [
                (f'part-00000.{fmt}', 0, 1), (f'part-00001.{fmt}', 1, 0),
                (f'part-00002.{fmt}', 0, 1)]
    assert (manifest['rows'], manifest['errors']) == (1, 2)
    assert [e[0] for e in predict.read_errors(output / 'errors.csv')] == [
        '1', '2']
    if fmt == 'parquet':
      empty, full = (pq.read_table(output / f'part-0000{k}.parquet')
                     for k in (0, 1))
      assert (empty.num_rows, full.num_rows) == (0, 1)
      assert empty.schema == full.schema
      assert empty.schema.field('name_3class').type == pa.string()
    else:
      header = (output / 'part-00001.csv').read_text().splitlines()[0]
      assert (output / 'part-00000.csv').read_text() == header + '\n'
    assert predict.read_shards(output).column('id').to_pylist() == [good[0]]
    # Resumed: only the missing empty shard is predicted again.
    (output / f'part-00002.{fmt}').unlink()
    (output / '_SUCCESS.json').unlink()
    again = predict.predict_catalog(survey['config'], survey['workdir'],
                                    catalog, options)
    assert (again.complete, again.shards_written, again.rows,
            again.errors) == (True, 1, 1, 2)


def test_empty_output_columns_keep_each_task_s_columns_and_types():
  for name in ('votes', '3class'):
    task = tasks.TASKS[name]
    one = predict.output_columns(['a'], np.full((1, task.num_outputs), 0.5),
                                 task)
    none = predict.output_columns([], np.zeros((0, task.num_outputs)), task)
    assert list(none) == list(one)
    schemas = [pq.read_schema(io.BytesIO(predict._encode_shard(c, 'parquet')))  # pylint: disable=protected-access
               for c in (one, none)]
    assert schemas[0] == schemas[1], name


def test_a_votes_prediction_file_is_written_as_its_suffix_says(tmp_path):
  """.csv is the Kaggle text (unchanged), .parquet real Parquet (it was CSV
  text under that name), anything else refused before any prediction."""
  ids = np.array([7, 3])
  evaluate._write_csv(tmp_path / 'p.csv', ids, _VOTES, tasks.TASKS['votes'])  # pylint: disable=protected-access
  lines = (tmp_path / 'p.csv').read_text().splitlines()
  assert lines[0] == 'GalaxyID,' + ','.join(taxonomy.ANSWERS)
  assert lines[1] == '3,' + ','.join(['0.250000'] * 37)
  evaluate._write_csv(tmp_path / 'p.parquet', ids, _VOTES,  # pylint: disable=protected-access
                      tasks.TASKS['votes'])
  table = pq.read_table(tmp_path / 'p.parquet')
  assert table.column_names == ['GalaxyID', *taxonomy.ANSWERS]
  assert table.schema.field('GalaxyID').type == pa.int64()
  assert table.column('GalaxyID').to_pylist() == [3, 7]
  np.testing.assert_array_equal(table.column('Class1.1').to_numpy(),
                                [0.25, 0.25])
  three = np.array([[0.2, 0.7, 0.1], [0.6, 0.3, 0.1]], np.float32)
  evaluate._write_csv(tmp_path / 'c.parquet', ids, three,  # pylint: disable=protected-access
                      tasks.TASKS['3class'])
  table = pq.read_table(tmp_path / 'c.parquet')
  assert table.column_names == ['GalaxyID', *taxonomy.THREE_CLASS_NAMES,
                                'predicted']
  assert table.column('predicted').to_pylist() == [
      taxonomy.THREE_CLASS_NAMES[0], taxonomy.THREE_CLASS_NAMES[1]]
  (tmp_path / 'work').mkdir()
  for name in ('p.txt', 'p'):
    # An empty workdir: had the prediction started, its missing checkpoint
    # would be the error.
    with pytest.raises(predict.PredictionError) as error:
      evaluate.predict(tiny_config('/nonexistent'), [tmp_path / 'work'],
                       output=tmp_path / name)
    assert str(error.value) == (
        f'--output={tmp_path / name}: name a .csv or .parquet file.')
    with pytest.raises(predict.PredictionError):
      evaluate._write_csv(tmp_path / name, ids, _VOTES, tasks.TASKS['votes'])  # pylint: disable=protected-access
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      'c.parquet', 'p.csv', 'p.parquet', 'work']


def _first_row_catalogue(survey, folder: pathlib.Path, first: str,
                         good: int = 2) -> str:
  """A catalogue of ``first`` (a file of the survey's root) then ``good``
  good cut-outs (or, with ``good=0``, ``first`` twice more); returns its
  path."""
  rows = [('first', survey['root'] / first)] + [
      (galaxy, survey['root'] / path)
      for galaxy, path in survey['rows'][:good]] + [
          (f'again-{i}', survey['root'] / first) for i in range(2 * (not good))]
  table = folder / f'{pathlib.Path(first).stem}_first.csv'
  table.write_text('id,path\n' + ''.join(f'{i},{p}\n' for i, p in rows))
  return str(table)


@pytest.mark.parametrize('refusal', ['small', 'strict'])
def test_a_refusal_before_the_first_shard_leaves_the_output_dir_as_found(
    survey, tmp_path, refusal):
  """Images smaller than the crop, or the first unreadable with --strict:
  _RUN.json was written first, so the folder stayed, and the corrected
  command (a smaller crop, the bad row left out) was refused as another
  run's.  Now a folder it made is gone, an existing one is unchanged, and
  the corrected command just runs."""
  first = 'small.png' if refusal == 'small' else 'bad.jpg'
  table = _first_row_catalogue(survey, tmp_path, first,
                               good=0 if refusal == 'small' else 2)
  config = survey['config']
  existing = tmp_path / 'existing'
  existing.mkdir()
  (existing / 'notes.txt').write_text('mine')
  before = _files(existing)
  new = tmp_path / 'new' / 'out'
  for output in (new, existing):
    with pytest.raises((catalogs.CatalogError, predict.PredictionError),
                       match='small.png: the image is 40x40' if refusal ==
                       'small' else 'bad.jpg \\(id first\\): cannot decode'):
      predict.predict_catalog(config, survey['workdir'],
                              catalogs.from_table(table),
                              predict.Options(output, strict=True))
  assert not (tmp_path / 'new').exists()
  assert _files(existing) == before
  if refusal == 'small':
    config = copy.deepcopy(config)
    config.input.crop_size = 40
  else:  # The bad row left out: another catalogue.
    lines = pathlib.Path(table).read_text().splitlines(keepends=True)
    pathlib.Path(table).write_text(lines[0] + ''.join(lines[2:]))
  for output in (new, existing):
    summary = predict.predict_catalog(
        config, survey['workdir'], catalogs.from_table(table),
        predict.Options(output, strict=refusal == 'strict'))
    assert summary.complete and summary.rows == (3 if refusal == 'small'
                                                 else 2)
  assert sorted(_files(existing)) == [
      '_RUN.json', '_SUCCESS.json', 'errors.csv', 'notes.txt',
      'part-00000.parquet']


def test_a_run_record_beside_no_shard_is_replaced_not_another_run_s(
    survey, tmp_path):
  """A run killed (or refused, by an older gzjax) before its first shard
  left _RUN.json alone: it holds no predictions, so a command with other
  settings was refused as if it did."""
  table = _first_row_catalogue(survey, tmp_path, survey['rows'][2][1])
  output = tmp_path / 'out'
  output.mkdir()
  (output / '_RUN.json').write_text('{"shard_size": 7}')
  summary = predict.predict_catalog(
      survey['config'], survey['workdir'], catalogs.from_table(table),
      predict.Options(output, shard_size=2))
  assert (summary.complete, summary.rows) == (True, 3)
  assert json.loads((output / '_RUN.json').read_text())['shard_size'] == 2


def test_one_small_first_cutout_is_an_errors_row_not_the_survey_s_refusal(
    survey, tmp_path):
  """A 40 px image as row 1 refused the whole survey (the first image alone
  was probed) while at any other row it was one errors.csv row: a small
  first image now has the next rows probed, and one that fits lets the run
  go on.  Only when every probed image is small is the crop refused, before
  anything is written."""
  table = _first_row_catalogue(survey, tmp_path, 'small.png', good=5)
  output = tmp_path / 'out'
  summary = predict.predict_catalog(
      survey['config'], survey['workdir'], catalogs.from_table(table),
      predict.Options(output, shard_size=2))
  assert (summary.complete, summary.rows, summary.errors) == (True, 5, 1)
  ids = pq.read_table(output / 'part-00000.parquet')['id']
  assert ids.to_pylist() == [survey['rows'][0][0]]
  with (output / 'errors.csv').open(newline='') as f:
    errors_rows = list(csv.DictReader(f))
  assert [(r['id'], r['reason'].split(':')[0]) for r in errors_rows] == [
      ('first', 'smaller than the crop')]
  # Unreadable rows are not probed: every readable image small is refused.
  rows = [('bad', 'bad.jpg')] + [(f's{i}', 'small.png') for i in range(20)] + [
      (galaxy, path) for galaxy, path in survey['rows'][:2]]
  table = tmp_path / 'small_survey.csv'
  table.write_text('id,path\n' + ''.join(
      f'{i},{survey["root"] / p}\n' for i, p in rows))
  with pytest.raises(catalogs.CatalogError) as error:
    predict.predict_catalog(survey['config'], survey['workdir'],
                            catalogs.from_table(table),
                            predict.Options(tmp_path / 'refused'))
  assert str(error.value) == (
      f'{survey["root"] / "small.png"}: the image is 40x40, smaller than the'
      ' 48 px centre crop (16 of 16 images probed from the first rows are too'
      ' small); predict with a config whose input.crop_size fits the'
      ' survey\'s cutouts.')
  assert not (tmp_path / 'refused').exists()


def test_a_survey_stopped_after_its_last_shard_says_all_are_finished(
    survey, tmp_path):
  """Stopped between the last shard and _SUCCESS.json, it said '3 of 3
  shards are finished and kept; run the same command again to predict the
  rest': there is no rest, only the manifest to write."""
  table = _first_row_catalogue(survey, tmp_path, survey['rows'][2][1])
  output = tmp_path / 'out'
  predict.predict_catalog(
      survey['config'], survey['workdir'], catalogs.from_table(table),
      predict.Options(output, shard_size=1))
  (output / '_SUCCESS.json').unlink()
  assert predict.stopped_situation(output) == (
      f'while predicting into {output}: all 3 shards are finished and kept,'
      ' but not yet _SUCCESS.json; run the same command again to write it')
  (output / 'part-00001.parquet').unlink()
  assert predict.stopped_situation(output) == (
      f'while predicting into {output}: 2 of 3 shards are finished and kept;'
      ' run the same command again to predict the rest')
