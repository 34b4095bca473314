"""Survey catalogues: folders, globs, CSV and Parquet tables, exact string ids."""

import pathlib
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from gzjax.data import catalog as catalogs

# Ids a float64 would damage: 2**53 + 1 rounds to 2**53; leading zeros go.
AWKWARD_IDS = ['J123456.78+012345.6', '9007199254740993', '000042',
               '1237648720693755918']


def _image(path: pathlib.Path, size: int = 16, fmt: str | None = None,
           width: int | None = None):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((size, width or size, 3), 90, np.uint8)).save(
      path, fmt)
  return path


def test_csv_ids_stay_exact_strings_and_relative_paths_resolve(tmp_path):
  for i, galaxy in enumerate(AWKWARD_IDS):
    _image(tmp_path / 'cutouts' / f'{i}.png')
  table = tmp_path / 'survey.csv'
  table.write_text('objid,file,ra\n' + ''.join(
      f'{g},cutouts/{i}.png,{i}.5\n' for i, g in enumerate(AWKWARD_IDS)))
  catalog = catalogs.from_table(table, id_column='objid', path_column='file')
  assert catalog.ids(0, len(catalog)) == AWKWARD_IDS
  assert catalog.path(1) == str((tmp_path / 'cutouts' / '1.png').resolve())
  assert pathlib.Path(catalog.path(3)).is_file()
  # Mapped, it pickles as its file's path (for grain's worker processes).
  catalog.map_to(tmp_path / 'rows.arrow')
  copy = pickle.loads(pickle.dumps(catalog))
  assert len(pickle.dumps(catalog)) < 300 + len(str(tmp_path))
  assert (copy.ids(0, 4), copy.path(2)) == (AWKWARD_IDS, catalog.path(2))
  # All-digit ids: a type-inferring reader would make them integers (42).
  table.write_text('objid,file\n000042,a.png\n9007199254740993,b.png\n')
  numeric = catalogs.from_table(table, id_column='objid', path_column='file')
  assert numeric.ids(0, 2) == ['000042', '9007199254740993']


def test_parquet_integer_ids_are_exact_and_float_ids_refused(tmp_path):
  ids = np.array([9007199254740993, 1237648720693755918], np.int64)
  good = tmp_path / 'good.parquet'
  pq.write_table(pa.table({'id': ids, 'path': ['/a.jpg', '/b.jpg']}), good)
  assert catalogs.from_table(good).ids(0, 2) == [
      '9007199254740993', '1237648720693755918']
  floats = tmp_path / 'floats.parquet'
  pq.write_table(pa.table({'id': ids.astype(np.float64),
                           'path': ['/a.jpg', '/b.jpg']}), floats)
  with pytest.raises(catalogs.CatalogError, match=r"floats.parquet: column"
                     r" 'id' holds double.*lost digits"):
    catalogs.from_table(floats)


def test_dictionary_encoded_parquet_columns_read_as_plain_strings(tmp_path):
  """pandas writes a ``category`` column dictionary-encoded: it was refused
  as "not strings"; it is the same catalogue as the plain one."""
  for i in range(len(AWKWARD_IDS)):
    _image(tmp_path / 'cutouts' / f'{i}.png')
  columns = {'objid': AWKWARD_IDS + AWKWARD_IDS[:1],
             'file': [f'cutouts/{i}.png' for i in range(4)] + ['/abs.png']}
  plain, encoded = tmp_path / 'plain.parquet', tmp_path / 'encoded.parquet'
  pq.write_table(pa.table(columns), plain)
  pq.write_table(pa.table({name: pa.array(values).dictionary_encode()
                           for name, values in columns.items()}), encoded)
  assert pa.types.is_dictionary(pq.read_schema(encoded).field('objid').type)
  catalogs_ = [catalogs.from_table(path, id_column='objid',
                                   path_column='file')
               for path in (plain, encoded)]
  assert catalogs_[1].ids(0, 5) == AWKWARD_IDS + AWKWARD_IDS[:1]
  assert catalogs_[1].paths(0, 5) == catalogs_[0].paths(0, 5) == [
      str((tmp_path / 'cutouts' / f'{i}.png').resolve()) for i in range(4)
  ] + ['/abs.png']
  assert catalogs_[1].fingerprint() == catalogs_[0].fingerprint()


def test_missing_column_and_empty_path_are_named(tmp_path):
  table = tmp_path / 'c.csv'
  table.write_text('galaxy,path\nA,a.jpg\n')
  with pytest.raises(catalogs.CatalogError,
                     match=r"c.csv: no column 'id' for the ids \(columns:"
                     r" galaxy, path\); set --id_column"):
    catalogs.from_table(table)
  table.write_text('id,path\nA,a.jpg\nB,\n')
  with pytest.raises(catalogs.CatalogError, match='row 2 has an empty path'):
    catalogs.from_table(table)


def test_folder_is_recursive_any_case_and_glob_selects(tmp_path):
  _image(tmp_path / 'b' / 'deep' / 'J1.JPG', fmt='JPEG')
  _image(tmp_path / 'a' / '12.png')
  _image(tmp_path / 'a' / 'J2.Jpeg', fmt='JPEG')
  _image(tmp_path / 'c.PNG', fmt='PNG')
  (tmp_path / 'notes.txt').write_text('not an image')
  folder = catalogs.open_catalog(images=str(tmp_path))
  assert folder.ids(0, len(folder)) == ['12', 'J2', 'J1', 'c']
  pngs = catalogs.open_catalog(images=str(tmp_path / '**' / '*.png'))
  assert pngs.ids(0, len(pngs)) == ['12']
  _image(tmp_path / 'd' / '12.jpg')
  with pytest.raises(catalogs.CatalogError, match=r"two images have the id"
                     r" '12'"):
    catalogs.from_folder(tmp_path)


def test_image_smaller_than_the_crop_is_named(tmp_path):
  small = _image(tmp_path / 'tiny.png', size=40, width=60)
  folder = catalogs.open_catalog(images=str(tmp_path))
  catalogs.check_crop_fits(folder, range(len(folder)), 40)
  with pytest.raises(catalogs.CatalogError,
                     match=r'tiny.png: the image is 60x40, smaller than the 48'
                     r' px centre crop'):
    catalogs.check_crop_fits(folder, range(len(folder)), 48)


def test_processes_share_the_shard_grid_exactly_once():
  # 1,003 rows in shards of 100: 11 shards, the last holding 3 rows.
  assert catalogs.num_shards(1003, 100) == 11
  assert catalogs.shard_rows(10, 1003, 100) == range(1000, 1003)
  shares = [list(catalogs.shards_of_process(1003, 100, i, 3))
            for i in range(3)]
  assert shares == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
  rows = [r for share in shares for k in share
          for r in catalogs.shard_rows(k, 1003, 100)]
  assert sorted(rows) == list(range(1003))
  with pytest.raises(ValueError, match=r'process_index=3 is not in \[0, 3\)'):
    catalogs.shards_of_process(1003, 100, 3, 3)
