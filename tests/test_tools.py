"""Smoke calls of the command-line tools, so they do not rot."""

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(*args: str) -> str:
  result = subprocess.run([sys.executable, *args], capture_output=True,
                          text=True, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def test_benchmark_input_prints_its_table(kaggle_sample):
  out = _run('tools/benchmark_input.py', f'--manual_dir={kaggle_sample}',
             '--render_count=2', '--render_workers=1', '--images=16',
             '--batch_size=8', '--sizes=32', '--workers=0')
  rows = {line[:44].strip(): line[44:].split() for line in out.splitlines()
          if line.startswith(('synthetic', 'plain', 'gzjax'))}
  assert set(rows) == {'synthetic render 424 px, 1 process',
                       'synthetic render 424 px, 1 processes',
                       'plain Pillow loop -> 32 px',
                       'gzjax pipeline -> 32 px, 0 workers'}
  assert float(rows['plain Pillow loop -> 32 px'][0]) > 0
  assert rows['plain Pillow loop -> 32 px'][1] == '1.00'


def test_show_galaxies_writes_a_png(kaggle_sample_data_dir, tmp_path):
  out = _run('tools/show_galaxies.py', '--config=kaggle',
             f'--data_dir={kaggle_sample_data_dir}', '--count=6',
             f'--out={tmp_path / "grid.png"}')
  assert 'Wrote' in out
  png = (tmp_path / 'grid.png').read_bytes()
  assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 50_000


def test_show_galaxies_says_how_to_build(tmp_path):
  result = subprocess.run(
      [sys.executable, 'tools/show_galaxies.py', f'--data_dir={tmp_path}'],
      capture_output=True, text=True, cwd=REPO)
  assert result.returncode != 0
  assert 'python -m gzjax.data.build --config=synthetic' in result.stderr
  assert 'Traceback' not in result.stderr


def test_show_galaxies_refuses_bad_flags_in_a_line(kaggle_sample_data_dir,
                                                    tmp_path):
  (tmp_path / 'folder.png').mkdir()
  for flag, message in (
      ('--split=bogus', "has no split 'bogus'; it has train, validation."),
      ('--count=0', 'flag --count=0: 0 is not a positive integer'),
      (f'--out={tmp_path / "grid.jpgx"}',
       f'--out={tmp_path / "grid.jpgx"}: name a .png file.'),
      (f'--out={tmp_path / "folder.png"}',
       f'--out={tmp_path / "folder.png"} is a folder: name a new file, or a'
       ' regular file to replace.')):
    result = subprocess.run(
        [sys.executable, 'tools/show_galaxies.py', '--config=kaggle',
         f'--data_dir={kaggle_sample_data_dir}', flag],
        capture_output=True, text=True, cwd=REPO)
    assert result.returncode != 0, flag
    assert message in result.stderr, (flag, result.stderr[-2000:])
    assert 'Traceback' not in result.stderr, flag
  assert sorted(p.name for p in tmp_path.iterdir()) == ['folder.png']
