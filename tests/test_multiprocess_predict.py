"""Survey prediction by two real JAX processes gives one process's rows.

A run of ``tests/test_multiprocess.py``'s tiny seed CNN is trained once (one
process); its checkpoint then labels a folder of cut-outs with
``python -m gzjax.main --mode=predict --output_dir`` as 2 processes of 2 CPU
devices and as 1 process of 4.  Process ``i`` of 2 predicts shards ``i, i+2,
…`` on its own devices and gathers nothing; the manifest lists every shard
once.  Same launcher as the training test (``_run``: every process killed
when one fails or the run times out).
"""

import json
import sys

import numpy as np

from gzjax import predict
from gzjax.data import synthetic
from tests.test_multiprocess import _run
from tests.test_multiprocess import TRAIN_FLAGS

NUM_IMAGES = 13  # Shards of 4: 4 + 4 + 4 + 1, so process 0 writes 2 and 1 2.


def test_two_processes_predict_a_survey_as_one(tmp_path):
  from gzjax.data import galaxy_zoo  # pylint: disable=g-import-not-at-top

  data_dir, workdir = tmp_path / 'data', tmp_path / 'run'
  galaxy_zoo.prepare('synthetic', data_dir, num_labelled=40, num_test=2,
                     image_size=64, num_workers=1)
  flags = [*TRAIN_FLAGS, f'--config.data_dir={data_dir}',
           f'--workdir={workdir}']
  _run([sys.executable, '-m', 'gzjax.main', *flags], processes=1, devices=4,
       logs=tmp_path / 'logs_train')
  images = tmp_path / 'cutouts' / 'nested'
  images.mkdir(parents=True)
  # String ids with leading zeros, in a nested folder (read recursively).
  for galaxy_id in range(NUM_IMAGES):
    (images / f'{galaxy_id:06d}.jpg').write_bytes(
        synthetic.render_galaxy(7, galaxy_id, 64).jpeg)
  outputs = {}
  for name, processes, devices in (('two', 2, 2), ('one', 1, 4)):
    outputs[name] = tmp_path / f'predictions_{name}'
    _run([sys.executable, '-m', 'gzjax.main', *flags, '--mode=predict',
          f'--images={tmp_path / "cutouts"}',
          f'--output_dir={outputs[name]}', '--shard_size=4', '--format=csv'],
         processes=processes, devices=devices,
         logs=tmp_path / f'logs_predict_{name}')
  two, one = (predict.read_shards(outputs[k]) for k in ('two', 'one'))
  expected_ids = [f'{i:06d}' for i in range(NUM_IMAGES)]
  assert two.column('id').to_pylist() == expected_ids
  assert one.column('id').to_pylist() == expected_ids
  assert two.column_names == one.column_names
  for column in two.column_names[1:]:
    a, b = (np.asarray(t.column(column).to_pylist()) for t in (two, one))
    if a.dtype.kind == 'f':
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=column)
    else:
      np.testing.assert_array_equal(a, b, err_msg=column)
  manifests = {k: json.loads((outputs[k] / predict.SUCCESS_FILE).read_text())
               for k in outputs}
  for manifest in manifests.values():
    assert [s['file'] for s in manifest['shards']] == [
        predict.shard_name(i, 4, 'csv') for i in range(4)]
  # Each process wrote only its own shards: nothing else beside them.
  written = sorted(p.name for p in outputs['two'].iterdir())
  assert not [n for n in written if n.endswith('.tmp')], written
