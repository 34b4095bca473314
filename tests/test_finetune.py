"""Fine-tuning on a label catalogue: reading, masking, splits, every label
kind end to end through the engine's loop, and the encoder round trip."""

import copy
import json

import numpy as np
import pytest

from gzjax import config as base
from gzjax import experiment as experiments
from gzjax import finetune
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
  # A train budget keeps the first rows' labels and leaves validation alone.
  few = labels.read(finetune_data.labels_config(
      catalogue, split_column='split', max_train_labels=5))
  train_rows = few.rows('train')
  assert few.targets['size']['mask'][train_rows].sum() == 5
  assert few.targets['size']['mask'][few.rows('validation')].all()


@pytest.mark.parametrize('column,cell,message', [
    ('spiral', 'maybe', "row 3, column 'spiral': 'maybe' is not a binary"),
    ('size', 'big', "row 3, column 'size': 'big' is not a number"),
    ('smooth', '-2', "row 3, column 'smooth': a vote count of -2 is"),
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
