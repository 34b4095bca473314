"""The galaxy_zoo/kaggle builder on the real sample, and on broken copies of it."""

import csv
import io
import pathlib
import random
import subprocess
import sys

import numpy as np
import pytest

from gzjax import taxonomy
from gzjax.data import galaxy_zoo
from gzjax.data import kaggle

SAMPLE_CSV = 'training_solutions_partial.csv'
REPO = pathlib.Path(__file__).resolve().parents[1]
KNOWN_QUESTIONS = (1, 2, 6, 7, 8)  # The sample's README: 17 known answers.


def _csv_rows(path: pathlib.Path) -> dict[int, dict[str, str]]:
  with path.open() as f:
    return {int(r['GalaxyID']): r for r in csv.DictReader(f)}


def _records(data_dir, split):
  source = galaxy_zoo.data_source('kaggle', data_dir, split)
  return [source[i] for i in range(len(source))]


def test_real_sample_is_stored_exactly(kaggle_sample_data_dir, kaggle_sample):
  data_dir = kaggle_sample_data_dir
  rows = _csv_rows(kaggle_sample / SAMPLE_CSV)
  known = [a for a in taxonomy.ANSWERS
           if int(a[5:].split('.')[0]) in KNOWN_QUESTIONS]
  assert len(known) == 17
  seen = {}
  for split in ('train', 'validation'):
    for record in _records(data_dir, split):
      galaxy_id = int(record['galaxy_id'])
      seen[galaxy_id] = split
      row = rows[galaxy_id]
      mask = record['votes_mask']
      assert [taxonomy.ANSWERS[i] for i in np.flatnonzero(mask)] == known
      for i, answer in enumerate(taxonomy.ANSWERS):
        if row[answer]:
          assert record['votes'][i] == np.float32(row[answer]), answer
        else:
          assert np.isnan(record['votes'][i]), answer  # Never read as 0.
      jpeg = (kaggle_sample / 'images_training_rev1' / f'{galaxy_id}.jpg')
      assert record['image'] == jpeg.read_bytes()
      votes = np.where(mask, record['votes'], np.nan)
      assert record['label_3class'] == taxonomy.three_class_labels(votes)
      assert record['label_7class'] == taxonomy.seven_class_labels(votes)
  assert len(seen) == 600 and set(seen) == set(rows)
  in_validation = galaxy_zoo.is_validation(np.array(list(seen)), 10.0)
  assert [s == 'validation' for s in seen.values()] == in_validation.tolist()
  assert 30 <= in_validation.sum() <= 90


def test_stable_hash_split():
  ids = np.arange(100_000, 120_000)
  members = galaxy_zoo.is_validation(ids, 10.0)
  assert 0.09 < members.mean() < 0.11
  shuffled = np.random.default_rng(0).permutation(ids)
  assert set(shuffled[galaxy_zoo.is_validation(shuffled, 10.0)]) == set(
      ids[members])
  assert not galaxy_zoo.is_validation(ids, 0.0).any()
  assert galaxy_zoo.is_validation(ids, 100.0).all()
  # More validation keeps every galaxy that was already there.
  assert (members <= galaxy_zoo.is_validation(ids, 20.0)).all()
  with pytest.raises(ValueError, match='validation_percent'):
    galaxy_zoo.is_validation(ids, 101)


def _manual_copy(kaggle_sample, tmp_path, rows=None, *, test_images=()):
  """A manual dir holding a (possibly edited) CSV and links to the images."""
  manual = tmp_path / 'manual'
  (manual / 'images_training_rev1').mkdir(parents=True)
  text = (kaggle_sample / SAMPLE_CSV).read_text().splitlines()
  lines = text if rows is None else [text[0]] + rows(text[1:])
  (manual / 'training_solutions_rev1.csv').write_text('\n'.join(lines) + '\n')
  for line in lines[1:]:
    name = line.split(',')[0] + '.jpg'
    link = manual / 'images_training_rev1' / name
    if not link.exists():
      link.symlink_to(kaggle_sample / 'images_training_rev1' / name)
  if test_images:
    (manual / 'images_test_rev1').mkdir()
    for name in test_images:
      (manual / 'images_test_rev1' / name).symlink_to(
          kaggle_sample / 'images_training_rev1' / name)
  return manual


def test_split_ignores_row_order(kaggle_sample, kaggle_sample_data_dir,
                                 tmp_path):
  def shuffle(rows):
    random.Random(1).shuffle(rows)
    return rows
  manual = _manual_copy(kaggle_sample, tmp_path, shuffle)
  galaxy_zoo.prepare('kaggle', tmp_path / 'data', manual_dir=manual)
  reference_dir = kaggle_sample_data_dir
  for split in ('train', 'validation'):
    ids = {int(r['galaxy_id']) for r in _records(tmp_path / 'data', split)}
    reference = {int(r['galaxy_id']) for r in _records(reference_dir, split)}
    assert ids == reference


def test_test_split_is_unlabelled(kaggle_sample, tmp_path):
  names = ['100053.jpg', '100078.jpg', '100090.jpg']
  manual = _manual_copy(kaggle_sample, tmp_path, lambda rows: rows[:20],
                        test_images=names)
  dataset = galaxy_zoo.prepare('kaggle', tmp_path / 'data', manual_dir=manual)
  assert dataset.info.splits['test'].num_examples == 3
  records = _records(tmp_path / 'data', 'test')
  assert sorted(int(r['galaxy_id']) for r in records) == [
      100053, 100078, 100090]
  for r in records:
    assert np.isnan(r['votes']).all() and not r['votes_mask'].any()
    assert r['label_3class'] == -1 and r['label_7class'] == -1
    assert r['image'] == (manual / 'images_test_rev1' /
                          f'{r["galaxy_id"]}.jpg').read_bytes()


@pytest.mark.parametrize('edit, message', [
    (lambda rows: rows[:4] + [rows[4].replace(',0.0,', ',zero,', 1)]
     + rows[5:], r'line 6, column Class\d+\.\d+: .zero. is not a number'),
    (lambda rows: rows[:2] + [rows[2].replace(',0.0,', ',1.5,', 1)] + rows[3:],
     r'line 4, column Class\d+\.\d+: 1\.5 is outside \[0, 1\]'),
    (lambda rows: rows[:9] + [rows[3]] + rows[9:],
     r'line 11, column GalaxyID: GalaxyID \d+ already appears on line 5'),
    (lambda rows: rows[:7] + [rows[7] + ',0.5'] + rows[8:],
     'line 9: expected 38 comma-separated fields'),
    (lambda rows: rows[:1] + ['abc' + rows[1][6:]] + rows[2:],
     "line 3, column GalaxyID: 'abc' is not an integer"),
    (lambda rows: rows[:1] + [rows[1].replace(',0.0,', ',nan,', 1)] + rows[2:],
     "line 3, column Class.*'nan' is not a number"),
])
def test_malformed_csv_names_line_and_column(kaggle_sample, tmp_path, edit,
                                             message):
  manual = _manual_copy(kaggle_sample, tmp_path, edit)
  with pytest.raises(kaggle.DataError, match=message) as error:
    galaxy_zoo.prepare('kaggle', tmp_path / 'data', manual_dir=manual)
  assert 'training_solutions_rev1.csv' in str(error.value)
  _assert_nothing_loads(tmp_path / 'data')


def test_wrong_header_names_the_column(kaggle_sample, tmp_path):
  manual = _manual_copy(kaggle_sample, tmp_path)
  csv_path = manual / 'training_solutions_rev1.csv'
  csv_path.write_text(csv_path.read_text().replace('Class3.2', 'Class3.3', 1))
  with pytest.raises(kaggle.DataError,
                     match="line 1: column 8 of the header is 'Class3.3', "
                     "expected 'Class3.2'"):
    kaggle.read_solutions(csv_path)


def test_missing_manual_files_say_what_and_where(kaggle_sample, tmp_path):
  with pytest.raises(kaggle.DataError, match='does not exist') as error:
    galaxy_zoo.prepare('kaggle', tmp_path / 'data', manual_dir=tmp_path / 'nowhere')
  assert 'kaggle.com/c/galaxy-zoo-the-galaxy-challenge' in str(error.value)
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(kaggle.DataError,
                     match='needs training_solutions_rev1.csv.*found none'):
    galaxy_zoo.prepare('kaggle', tmp_path / 'data', manual_dir=empty)
  (empty / 'training_solutions_rev1.csv').write_text('GalaxyID\n')
  with pytest.raises(kaggle.DataError, match='no images_training_rev1/'):
    galaxy_zoo.prepare('kaggle', tmp_path / 'data', manual_dir=empty)
  with pytest.raises(kaggle.DataError, match='needs --manual_dir'):
    galaxy_zoo.prepare('kaggle', tmp_path / 'data')
  # The sample's own file name is found by the *solutions*.csv rule.
  assert kaggle.locate_files(kaggle_sample).solutions_csv.name == SAMPLE_CSV


def _assert_nothing_loads(data_dir: pathlib.Path):
  assert not galaxy_zoo.builder('kaggle', data_dir).is_prepared()
  assert not list(data_dir.rglob('dataset_info.json'))
  assert not list(data_dir.rglob('incomplete*'))
  with pytest.raises(galaxy_zoo.DatasetNotBuiltError,
                     match='python -m gzjax.data.build --config=kaggle'):
    galaxy_zoo.data_source('kaggle', data_dir, 'train')


def _break_images(manual: pathlib.Path, kaggle_sample, ids):
  """Deletes ids[0]'s image and truncates the others (copies, not links)."""
  folder = manual / 'images_training_rev1'
  (folder / f'{ids[0]}.jpg').unlink()
  for galaxy_id in ids[1:]:
    data = (kaggle_sample / 'images_training_rev1' /
            f'{galaxy_id}.jpg').read_bytes()
    (folder / f'{galaxy_id}.jpg').unlink()
    (folder / f'{galaxy_id}.jpg').write_bytes(data[: len(data) // 3])


def test_bad_images_fail_the_build_or_are_skipped(kaggle_sample, tmp_path):
  manual = _manual_copy(kaggle_sample, tmp_path)
  ids = sorted(_csv_rows(manual / 'training_solutions_rev1.csv'))
  missing, truncated = ids[5], ids[10:13]
  _break_images(manual, kaggle_sample, [missing, *truncated])
  data_dir = tmp_path / 'data'
  with pytest.raises(kaggle.DataError, match='have no image') as error:
    galaxy_zoo.prepare('kaggle', data_dir, manual_dir=manual)
  assert str(missing) in str(error.value)
  assert '--skip_bad_images' in str(error.value)
  _assert_nothing_loads(data_dir)
  # Only the truncated ones now: the build fails after reading every image.
  (manual / 'images_training_rev1' / f'{missing}.jpg').symlink_to(
      kaggle_sample / 'images_training_rev1' / f'{missing}.jpg')
  with pytest.raises(kaggle.DataError, match='cannot be decoded') as error:
    galaxy_zoo.prepare('kaggle', data_dir, manual_dir=manual)
  for galaxy_id in truncated:
    assert f'{galaxy_id}.jpg' in str(error.value)
  _assert_nothing_loads(data_dir)
  (manual / 'images_training_rev1' / f'{missing}.jpg').unlink()
  dataset = galaxy_zoo.prepare('kaggle', data_dir, manual_dir=manual,
                        skip_bad_images=True)
  splits = dataset.info.splits
  assert splits['train'].num_examples + splits['validation'].num_examples == 596
  skipped = {i for bad in dataset.report.skipped.values() for i, _ in bad}
  assert skipped == {missing, *truncated}
  text = galaxy_zoo.summarize(dataset)
  assert 'Skipped 4 bad images' in text
  assert f'{missing}: missing' in text


def test_image_problem_reports_non_jpeg_and_truncation(kaggle_sample):
  from PIL import Image
  png = io.BytesIO()
  Image.new('RGB', (8, 8)).save(png, 'PNG')
  assert 'not a JPEG' in kaggle.image_problem(png.getvalue())
  jpeg = (kaggle_sample / 'images_training_rev1' / '100053.jpg').read_bytes()
  assert kaggle.image_problem(jpeg) is None
  assert kaggle.image_problem(jpeg[:2000]) is not None
  assert kaggle.image_problem(b'') is not None


def test_build_command_prints_a_summary(kaggle_sample, tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'gzjax.data.build', '--config=kaggle',
       f'--manual_dir={kaggle_sample}', f'--data_dir={tmp_path}'],
      capture_output=True, text=True, cwd=REPO, check=True)
  lines = result.stdout.splitlines()
  counts = {l.split()[0]: int(l.split()[1].replace(',', ''))
            for l in lines if l.strip().endswith(' examples')}
  assert sum(counts.values()) == 600 and set(counts) == {'train',
                                                          'validation'}
  assert 'Q1            600             0' in result.stdout
  assert 'Skipped images: none' in result.stdout


def test_build_command_fails_cleanly(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'gzjax.data.build', '--config=kaggle',
       f'--manual_dir={tmp_path / "missing"}', f'--data_dir={tmp_path}'],
      capture_output=True, text=True, cwd=REPO)
  assert result.returncode == 2
  assert 'Build failed:' in result.stderr and 'does not exist' in result.stderr
  assert 'Traceback' not in result.stderr
