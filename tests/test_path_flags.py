"""Path flags: ``~`` is the home folder, as in the config's paths.

A shell leaves the ``~`` of ``--out=~/w.msgpack`` as it is; a review's
convert_weights wrote ``./~/gzjax_weights/...`` while training then looked
in the home folder for it.
"""

import os
import pathlib
import subprocess
import sys

from absl import flags

from gzjax import main  # pylint: disable=unused-import  (defines the flags)
from gzjax import path_flags

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_a_path_flag_expands_the_home_folder_and_nothing_else():
  values = flags.FlagValues()
  path_flags.DEFINE_path('out', None, 'a file', flag_values=values)
  path_flags.DEFINE_path_list('runs', [], 'folders', flag_values=values)
  values(['prog', '--out=~/w.msgpack', '--runs=~/a,b/~c,~/d'])
  home = os.path.expanduser('~')
  assert values.out == f'{home}/w.msgpack'
  assert values.runs == [f'{home}/a', 'b/~c', f'{home}/d']
  # A stray comma is no folder (read as one, it was the current folder,
  # averaged into an ensemble without a word).
  values(['prog', '--runs=a,,b,'])
  assert values.runs == ['a', 'b']
  values(['prog', '--out=relative/x~y.csv', '--runs='])
  assert (values.out, values.runs) == ('relative/x~y.csv', [])


def test_every_path_flag_of_main_expands_the_home_folder():
  home = os.path.expanduser('~')
  for name in ('workdir', 'output', 'images', 'catalog', 'output_dir'):
    assert flags.FLAGS[name].parser.parse('~/x') == f'{home}/x', name
  assert flags.FLAGS['ensemble'].parser.parse('~/a,~/b') == [f'{home}/a',
                                                            f'{home}/b']


def _run(home, *args):
  result = subprocess.run([sys.executable, *args], cwd=REPO, text=True,
                          capture_output=True, env=dict(os.environ, HOME=str(home)))
  return result.returncode, result.stderr.strip().splitlines()[-1]


def test_the_tools_read_a_tilde_as_the_home_folder(tmp_path):
  """Each refusal names the path under the home folder, not ./~."""
  assert _run(tmp_path, '-m', 'gzjax.tools.convert_weights',
              '--model=efficientnet_b0', '--source=~/missing.h5',
              '--out=~/w.msgpack') == (
                  2, f'convert_weights: No weight file at {tmp_path}/missing.h5.')
  code, line = _run(tmp_path, '-m', 'gzjax.main',
                    '--config=configs/quickstart.py', '--workdir=~/run',
                    '--mode=predict', '--output=~/p.csv')
  assert code == 1 and line.startswith(f'gzjax: {tmp_path}/run holds no'
                                       ' checkpoints'), line
  code, line = _run(tmp_path, '-m', 'gzjax.tools.export_encoder',
                    '--workdir=~/run', '--out=~/e.msgpack')
  assert code == 2 and line.startswith(
      f'export_encoder: {tmp_path}/run holds no checkpoints'), line
  assert not (REPO / '~').exists()
  # Nothing was written for a refused command (libraries' dot-folders aside).
  assert not [p.name for p in tmp_path.iterdir() if not p.name.startswith('.')]
