"""Builds never destroy a good dataset, refuse to mix downloads, record how
they were built and clean up after killed builds (40-row Kaggle copies)."""

import pathlib
import subprocess
import sys

import pytest

from gzjax import errors
from gzjax.data import galaxy_zoo
from gzjax.data import splits
from tests.conftest import REPO
from tests.conftest import tiny_config
from tests.test_build_kaggle import _break_images
from tests.test_build_kaggle import _manual_copy


def _manual(kaggle_sample, folder: pathlib.Path, rows: int) -> pathlib.Path:
  folder.mkdir()
  return _manual_copy(kaggle_sample, folder, lambda lines: lines[:rows])


def _ids(manual):
  return sorted(int(p.stem) for p in
                (manual / 'images_training_rev1').glob('*.jpg'))


def _snapshot(folder: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(folder)): p.read_bytes()
          for p in sorted(folder.rglob('*')) if p.is_file()}


def _count(data_dir):
  splits = galaxy_zoo.builder('kaggle', data_dir).info.splits
  return sum(len(galaxy_zoo.data_source('kaggle', data_dir, split))
             for split in ('train', 'validation') if split in splits)


def _no_leftovers(data_dir):
  names = [p.name for p in data_dir.rglob('*')]
  assert not [n for n in names if n.startswith(
      ('incomplete.', galaxy_zoo.STAGING_PREFIX))
              or galaxy_zoo.OLD_SUFFIX in n], names


def test_a_failed_overwrite_keeps_the_good_dataset(kaggle_sample, tmp_path):
  manual = _manual(kaggle_sample, tmp_path / 'a', 40)
  data_dir = tmp_path / 'data'
  galaxy_zoo.prepare('kaggle', data_dir, manual_dir=manual)
  before = _snapshot(data_dir)
  _break_images(manual, kaggle_sample, [_ids(manual)[3], _ids(manual)[7]])
  with pytest.raises(errors.DataError, match='have no image'):
    galaxy_zoo.prepare('kaggle', data_dir, manual_dir=manual, overwrite=True)
  assert _snapshot(data_dir) == before and _count(data_dir) == 40
  _no_leftovers(data_dir)
  smaller = _manual(kaggle_sample, tmp_path / 'b', 30)
  dataset = galaxy_zoo.prepare('kaggle', data_dir, manual_dir=smaller,
                               overwrite=True)
  assert _count(data_dir) == 30 and dataset.record['source'][
      'solutions_rows'] == 30
  _no_leftovers(data_dir)


def test_another_download_or_other_options_ask_for_overwrite(kaggle_sample,
                                                             tmp_path):
  manual = _manual(kaggle_sample, tmp_path / 'a', 40)
  data_dir = tmp_path / 'data'
  missing = _ids(manual)[5]
  (manual / 'images_training_rev1' / f'{missing}.jpg').unlink()
  galaxy_zoo.prepare('kaggle', data_dir, manual_dir=manual,
                     skip_bad_images=True)
  before = _snapshot(data_dir)
  bigger = _manual(kaggle_sample, tmp_path / 'b', 60)
  with pytest.raises(errors.DataError) as info:
    galaxy_zoo.prepare('kaggle', data_dir, manual_dir=bigger,
                       skip_bad_images=True)
  message = str(info.value)
  assert 'solutions_rows 40 -> 60' in message
  assert 'train_images 39 -> 60' in message and 'Pass --overwrite' in message
  # The same download without the flag would silently lack the galaxy.
  with pytest.raises(errors.DataError,
                     match='skip_bad_images True -> False.*--overwrite'):
    galaxy_zoo.prepare('kaggle', data_dir, manual_dir=manual)
  assert _snapshot(data_dir) == before
  # The same build again is reused and reports what the first one skipped.
  reused = galaxy_zoo.prepare('kaggle', data_dir, manual_dir=manual,
                              skip_bad_images=True)
  summary = galaxy_zoo.summarize(reused)
  assert f'train/validation: {missing}: missing' in summary
  assert 'Skipped 1 bad images' in summary
  assert (f'Built from {manual.resolve()} (training_solutions_rev1.csv: 40'
          ' rows; 39 training and 0 test JPEGs) with validation_percent=10.0,'
          ' skip_bad_images=True.') in summary


def test_the_next_build_cleans_up_after_killed_builds(kaggle_sample, tmp_path,
                                                      capsys):
  manual = _manual(kaggle_sample, tmp_path / 'a', 20)
  data_dir = tmp_path / 'data'
  dataset = galaxy_zoo.prepare('kaggle', data_dir, manual_dir=manual)
  final = pathlib.Path(dataset.data_path)
  dead = 99_999_999  # Above any pid_max: no such process.
  incomplete = final.parent / 'incomplete.ABC123_1.0.0'
  staging = data_dir / f'{galaxy_zoo.STAGING_PREFIX}{dead}-kaggle'
  for folder in (incomplete, staging):
    (folder / 'part').mkdir(parents=True)
  # A rebuild killed between its two renames: the old version is aside.
  final.rename(final.with_name(f'1.0.0{galaxy_zoo.OLD_SUFFIX}{dead}'))
  galaxy_zoo.prepare('kaggle', data_dir, manual_dir=manual)
  assert _count(data_dir) == 20
  _no_leftovers(data_dir)
  reported = [line for line in capsys.readouterr().err.splitlines()
              if line.startswith('gzjax:')]
  assert sorted(reported) == sorted([
      f'gzjax: removed {incomplete}, left by a killed build',
      f'gzjax: restored {final} from'
      f' {final.parent}/1.0.0{galaxy_zoo.OLD_SUFFIX}{dead}: its rebuild was'
      ' killed',
      f'gzjax: removed {staging}, left by a killed build'])


def test_building_on_first_use_gives_the_build_command(kaggle_sample,
                                                       tmp_path):
  manual = _manual(kaggle_sample, tmp_path / 'a', 10)
  (manual / 'images_training_rev1' / f'{_ids(manual)[2]}.jpg').unlink()
  config = tiny_config(tmp_path / 'data', dataset='galaxy_zoo/kaggle',
                       manual_dir=str(manual))
  with pytest.raises(errors.DataError) as info:
    splits.open_split(config, 'train')
  message = str(info.value)
  assert message.endswith(
      'Restore them, or build it yourself with python -m gzjax.data.build'
      f' --config=kaggle --manual_dir={manual} --data_dir={tmp_path / "data"}'
      ' --skip_bad_images to leave them out.')
  assert 'rebuild with' not in message


def test_training_with_another_download_refuses_the_built_dataset(
    kaggle_sample, tmp_path):
  """config.manual_dir is checked against an existing dataset as the build
  command checks it: a run used to train silently on the old 30 rows.  The
  options the build command chose (--skip_bad_images) are kept."""
  manual = _manual(kaggle_sample, tmp_path / 'a', 30)
  data_dir = tmp_path / 'data'
  galaxy_zoo.prepare('kaggle', data_dir, manual_dir=manual,
                     skip_bad_images=True)
  before = _snapshot(data_dir)
  bigger = _manual(kaggle_sample, tmp_path / 'b', 40)
  config = tiny_config(data_dir, dataset='galaxy_zoo/kaggle',
                       manual_dir=str(bigger))
  with pytest.raises(errors.DataError) as info:
    splits.open_split(config, 'train')
  message = str(info.value)
  assert '\n' not in message
  assert message.startswith(
      f'galaxy_zoo/kaggle in {data_dir} was built from another download or'
      ' with other options (solutions_rows 30 -> 40; solutions_sha256 ')
  assert message.endswith(
      '; train_images 30 -> 40). Rebuild it from config.manual_dir with'
      ' python -m gzjax.data.build --config=kaggle'
      f' --manual_dir={bigger} --data_dir={data_dir} --overwrite (the old one'
      ' stays until the new one is complete), choose another'
      ' config.data_dir, or leave config.manual_dir empty to use the dataset'
      ' as it is.')
  assert 'skip_bad_images' not in message
  assert _snapshot(data_dir) == before
  # The download it was built from (a moved copy too) opens it; so does
  # no manual_dir at all.
  moved = tmp_path / 'moved'
  manual.rename(moved)
  for manual_dir in (str(moved), ''):
    config = tiny_config(data_dir, dataset='galaxy_zoo/kaggle',
                         manual_dir=manual_dir)
    assert sum(len(splits.open_split(config, split))
               for split in ('train', 'validation')) == 30
  assert _snapshot(data_dir) == before


def test_main_refuses_a_dataset_of_another_download_in_one_line(
    kaggle_sample, tmp_path):
  """The reviewer's case: 30 rows built, the whole sample named."""
  manual = _manual(kaggle_sample, tmp_path / 'a', 30)
  data_dir = tmp_path / 'data'
  galaxy_zoo.prepare('kaggle', data_dir, manual_dir=manual)
  before = _snapshot(data_dir)
  result = subprocess.run(
      [sys.executable, '-m', 'gzjax.main', '--config=configs/quickstart.py',
       f'--workdir={tmp_path / "work"}', '--config.dataset=galaxy_zoo/kaggle',
       f'--config.data_dir={data_dir}', f'--config.manual_dir={kaggle_sample}'],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  [line] = result.stderr.strip().splitlines()
  assert line.startswith(
      f'gzjax: galaxy_zoo/kaggle in {data_dir} was built from another'
      " download or with other options (solutions_csv"
      " 'training_solutions_rev1.csv' -> 'training_solutions_partial.csv';"
      ' solutions_rows 30 -> 600; ')
  assert line.endswith(
      f'train_images 30 -> 4850). Rebuild it from config.manual_dir with'
      ' python -m gzjax.data.build --config=kaggle'
      f' --manual_dir={kaggle_sample} --data_dir={data_dir} --overwrite (the'
      ' old one stays until the new one is complete), choose another'
      ' config.data_dir, or leave config.manual_dir empty to use the dataset'
      ' as it is.')
  assert _snapshot(data_dir) == before
