"""tools/benchmark_finetune.py, shrunk: its rows, curve and checks, real data."""

import csv
import hashlib
import json
import subprocess
import sys

import numpy as np

from tests.conftest import REPO

ROWS = 240
CURVE_LABELS = 40


def _is_validation(galaxy_id: str, percent: float) -> bool:
  """The id hash split, written out (gzjax.data.galaxy_zoo.is_validation)."""
  digest = hashlib.sha256(galaxy_id.encode()).digest()[:8]
  return int.from_bytes(digest, 'big') % 10_000 < percent * 100


def test_benchmark_finetune_rows_and_curve(kaggle_sample, tmp_path):
  with open(kaggle_sample / 'spiral_labels.csv') as f:
    rows = list(csv.DictReader(f))[:ROWS]
  catalog = tmp_path / 'spiral' / 'spiral_labels.csv'
  catalog.parent.mkdir()
  with open(catalog, 'w', newline='') as f:
    writer = csv.DictWriter(f, ['GalaxyID', 'spiral'])
    writer.writeheader()
    writer.writerows(rows)
  (catalog.parent / 'images_training_rev1').symlink_to(
      kaggle_sample / 'images_training_rev1')
  out = tmp_path / 'out'

  def run_tool():
    result = subprocess.run(
        [sys.executable, 'tools/benchmark_finetune.py',
         f'--manual_dir={kaggle_sample}', f'--catalog={catalog}',
         f'--out={out}', '--starts=votes_frozen', '--encoder_steps=2',
         '--steps=2', f'--curve_labels={CURVE_LABELS}',
         '--curve=votes_frozen'], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return result

  result = run_tool()
  validation = np.array([_is_validation(r['GalaxyID'], 20) for r in rows])
  spiral = np.array([int(r['spiral']) for r in rows])
  report = json.loads((out / 'benchmark_finetune.json').read_text())
  assert report['majority_accuracy'] == 1 - spiral[validation].mean()
  [row] = report['table']
  assert (row['start'], row['steps']) == ('votes_frozen', 2)
  assert row['labels'] == (~validation).sum()  # Every training row.
  # The curve: the capped run trained on exactly CURVE_LABELS rows, then the
  # table's full-label point.
  assert [(r['start'], r['labels']) for r in report['curve']] == [
      ('votes_frozen', CURVE_LABELS), ('votes_frozen', (~validation).sum())]
  for r in report['table'] + report['curve']:
    assert 0 <= r['accuracy'] <= 1 and 0 <= r['roc_auc'] <= 1
  # The encoder trained on none of the spiral validation galaxies.
  with open(kaggle_sample / 'training_solutions_partial.csv') as f:
    votes_ids = [r['GalaxyID'] for r in csv.DictReader(f)]
  encoder_train = {i for i in votes_ids if not _is_validation(i, 20)}
  assert (f'Votes encoder: {len(encoder_train)} training galaxies, none in'
          ' the spiral validation split') in result.stdout
  assert f"| votes_frozen | {CURVE_LABELS} | 2 |" in result.stdout
  assert (out / 'curve.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert f'and {out / "curve.png"}' in result.stdout
  # A rerun reads the finished rows back instead of training again.
  run_tool()
  rerun = json.loads((out / 'benchmark_finetune.json').read_text())
  assert rerun['curve'] == report['curve']
