"""The ``galaxy_zoo`` TFDS dataset, written as ArrayRecord without TensorFlow.

Two builder configs share features and splits:

* ``kaggle``: the Kaggle "Galaxy Challenge" download in a manual directory
  (see :data:`gzjax.data.kaggle.DOWNLOAD_INSTRUCTIONS`).
* ``synthetic``: rendered galaxies with simulated volunteers' votes
  (:mod:`gzjax.data.synthetic`), the embedded default.

Features: ``image`` (the original JPEG bytes, never re-encoded), ``galaxy_id``,
``votes`` (float32[37], Kaggle cumulative fractions, NaN where unknown),
``votes_mask`` (bool[37], False where unknown), ``label_3class`` and
``label_7class`` (-1 when none; see :mod:`gzjax.taxonomy`).

Splits: ``train`` / ``validation`` by a stable hash of the GalaxyID (so a
galaxy's split does not depend on row order or shard count) and ``test``
(unlabelled: votes NaN, mask all False, labels -1).

A build writes into a staging folder beside the dataset (where TFDS's own
``incomplete.*`` folder is renamed only when every split is written) and is
swapped in only when complete, so a failed build never loads as complete
and a failed rebuild leaves the previous dataset as it was.  The ``tfds
build`` CLI imports TensorFlow; use ``python -m gzjax.data.build`` instead.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import sys
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from gzjax import errors
from gzjax import progress
from gzjax import taxonomy
from gzjax.data import kaggle
from gzjax.data import synthetic

NAME = 'galaxy_zoo'
FILE_FORMAT = 'array_record'
LABELLED_SPLITS = ('train', 'validation')

# Synthetic galaxies get IDs outside the Kaggle range (100008 … 999967) so
# they are never mistaken for real ones.
SYNTHETIC_LABELLED_ID_START = 1_000_000
SYNTHETIC_TEST_ID_START = 5_000_000


def id_hashes(galaxy_ids: np.ndarray) -> np.ndarray:
  """The stable hash of each ID: SHA-256 of the decimal GalaxyID (a string
  id as written), first 8 bytes, as uint64.  The same on every machine,
  whatever the row order or the other galaxies in the file."""
  return np.array([
      int.from_bytes(hashlib.sha256(_id_text(i).encode()).digest()[:8], 'big')
      for i in np.asarray(galaxy_ids).ravel()
  ], np.uint64)


def is_validation(galaxy_ids: np.ndarray, validation_percent: float) -> np.ndarray:
  """Which galaxies belong to the validation split: a stable hash of the ID.

  :func:`id_hashes` modulo 10,000 basis points; the same galaxy lands in
  the same split on every machine, whatever the row order, shard count or
  the other galaxies in the file.  String ids (a catalogue's) are hashed as
  written, so '101623' splits as 101623 does.
  """
  if not 0 <= validation_percent <= 100:
    raise errors.ConfigError(
        f'validation_percent must be within [0, 100], got {validation_percent}'
    )
  buckets = id_hashes(galaxy_ids) % np.uint64(10_000)
  return buckets < round(validation_percent * 100)


def _id_text(galaxy_id) -> str:
  return galaxy_id if isinstance(galaxy_id, str) else str(int(galaxy_id))


@dataclasses.dataclass(frozen=True)
class BuildOptions:
  """How to build; the synthetic-only options are ignored for ``kaggle``.

  They are not part of the builder config (TFDS forbids a custom config named
  like a registered one) but of one build; the dataset's metadata records them.

  Attributes:
    validation_percent: share of labelled galaxies in ``validation``.
    skip_bad_images: skip (and count) missing or undecodable images instead
      of failing the build.
    num_labelled: synthetic galaxies for train + validation.
    num_test: synthetic unlabelled galaxies for ``test`` (0: no test split).
    image_size: side of the synthetic images in pixels (Kaggle: 424).
    seed: the synthetic universe; the same seed renders the same galaxies.
    num_workers: processes that render synthetic galaxies (None: all cores).
  """

  validation_percent: float = 10.0
  skip_bad_images: bool = False
  num_labelled: int = 3000
  num_test: int = 300
  image_size: int = 424
  seed: int = 0
  num_workers: int | None = None


@dataclasses.dataclass
class BuildReport:
  """What a build saw, for the summary the build command prints."""

  skipped: dict[str, list[tuple[int, str]]] = dataclasses.field(
      default_factory=lambda: collections.defaultdict(list)
  )
  votes: dict[str, list[np.ndarray]] = dataclasses.field(
      default_factory=lambda: collections.defaultdict(list)
  )


class _LocalDatasetInfo(tfds.core.DatasetInfo):
  """Dataset info that never looks for galaxy_zoo on TFDS's public bucket.

  TFDS calls ``initialize_from_bucket`` whenever a builder is made for a
  dataset that is not built yet; it makes a temporary directory for files
  it would fetch and never removes it, so every such call left an empty
  ``/tmp/tmp*tfds`` behind (thousands over a test suite).
  """

  def initialize_from_bucket(self) -> None:
    pass


class GalaxyZoo(tfds.core.GeneratorBasedBuilder):
  """Galaxy Zoo 2 images with the 37 Kaggle vote fractions."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Kaggle and synthetic configs, ArrayRecord.'}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(
          name='kaggle',
          description=(
              'The Kaggle "Galaxy Zoo - The Galaxy Challenge" download: 61,578'
              ' labelled and 79,975 test 424x424 SDSS JPEGs.'
          ),
      ),
      tfds.core.BuilderConfig(
          name='synthetic',
          description=(
              'Rendered galaxies whose vote fractions come from simulated'
              ' volunteers walking the decision tree.'
          ),
      ),
  ]
  DEFAULT_CONFIG_NAME = 'synthetic'
  MANUAL_DOWNLOAD_INSTRUCTIONS = kaggle.DOWNLOAD_INSTRUCTIONS

  def __init__(self, *, options: BuildOptions = BuildOptions(), **kwargs):
    kwargs.setdefault('file_format', FILE_FORMAT)
    self.options = options
    self.report = BuildReport()
    # How a user turns skipping on, for the messages about bad images.
    self.skip_hint = 'rebuild with --skip_bad_images'
    # How the dataset on disk was built (gzjax_build.json), once known.
    self.record: dict | None = None
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    options = self.options
    return _LocalDatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(
                shape=(None, None, 3), encoding_format='jpeg'
            ),
            'galaxy_id': np.int64,
            'votes': tfds.features.Tensor(
                shape=(taxonomy.NUM_ANSWERS,), dtype=np.float32
            ),
            'votes_mask': tfds.features.Tensor(
                shape=(taxonomy.NUM_ANSWERS,), dtype=np.bool_
            ),
            'label_3class': np.int64,
            'label_7class': np.int64,
        }),
        homepage='https://www.kaggle.com/c/galaxy-zoo-the-galaxy-challenge',
        metadata=tfds.core.MetadataDict(
            answers=list(taxonomy.ANSWERS),
            validation_percent=options.validation_percent,
            three_class_thresholds=dataclasses.asdict(
                taxonomy.ThreeClassThresholds()
            ),
            seven_class_thresholds=dataclasses.asdict(
                taxonomy.SevenClassThresholds()
            ),
            synthetic=(
                dict(seed=options.seed, image_size=options.image_size)
                if self.builder_config.name == 'synthetic'
                else None
            ),
        ),
    )

  def _split_generators(self, dl_manager):
    if self.builder_config.name == 'synthetic':
      return self._synthetic_splits()
    return self._kaggle_splits(kaggle.locate_files(dl_manager.manual_dir))

  def _generate_examples(
      self,
      split: str,
      ids: np.ndarray,
      votes: np.ndarray | None = None,
      folder: pathlib.Path | None = None,
  ) -> Iterator[tuple[int, dict]]:
    """Examples keyed by GalaxyID: Kaggle files, or rendered galaxies."""
    if self.builder_config.name == 'synthetic':
      return self._synthetic_examples(split, ids)
    return self._kaggle_examples(split, folder, ids, votes)

  # ------------------------------------------------------------- kaggle ---

  def _kaggle_splits(self, files: kaggle.KaggleFiles):
    solutions = kaggle.read_solutions(files.solutions_csv)
    ids, votes = solutions.galaxy_ids, solutions.votes
    present = np.array(
        [(files.train_images / f'{i}.jpg').is_file() for i in ids], bool
    )
    if not present.all():
      missing = ids[~present]
      if not self.options.skip_bad_images:
        raise kaggle.DataError(
            f'{len(missing)} galaxies of {files.solutions_csv} have no image'
            f' in {files.train_images}: {_first_ids(missing)}. Restore them, or'
            f' {self.skip_hint} to leave them out.'
        )
      for i in missing:
        self.report.skipped['train/validation'].append((int(i), 'missing'))
      ids, votes = ids[present], votes[present]
    in_validation = is_validation(ids, self.options.validation_percent)
    splits = {
        name: self._generate_examples(
            name, ids[member], votes[member], files.train_images
        )
        for name, member in zip(
            LABELLED_SPLITS, (~in_validation, in_validation)
        )
        if member.any()
    }
    if files.test_images is not None:
      test_ids = kaggle.image_ids_in(files.test_images)
      splits['test'] = self._generate_examples(
          'test', test_ids, _unknown_votes(len(test_ids)), files.test_images
      )
    return splits

  def _kaggle_examples(
      self,
      split: str,
      folder: pathlib.Path,
      ids: np.ndarray,
      votes: np.ndarray,
  ) -> Iterator[tuple[int, dict]]:
    bad = []
    for galaxy_id, row in _progress(split, zip(ids, votes), len(ids)):
      path = folder / f'{galaxy_id}.jpg'
      try:
        jpeg = path.read_bytes()
      except OSError as e:
        problem = f'unreadable: {e.strerror}'
      else:
        problem = kaggle.image_problem(jpeg)
      if problem is not None:
        bad.append((int(galaxy_id), problem))
        continue
      yield int(galaxy_id), self._example(split, int(galaxy_id), jpeg, row)
    if bad and not self.options.skip_bad_images:
      details = '\n'.join(f'  {folder}/{i}.jpg: {p}' for i, p in bad[:20])
      more = f'\n  … and {len(bad) - 20} more' if len(bad) > 20 else ''
      raise kaggle.DataError(
          f'{len(bad)} images of the {split} split cannot be decoded:\n'
          f'{details}{more}\nReplace them, or {self.skip_hint} to leave them'
          ' out.'
      )
    self.report.skipped[split].extend(bad)

  # ---------------------------------------------------------- synthetic ---

  def _synthetic_splits(self):
    options = self.options
    labelled = SYNTHETIC_LABELLED_ID_START + np.arange(options.num_labelled)
    in_validation = is_validation(labelled, options.validation_percent)
    splits = {
        name: self._generate_examples(name, labelled[member])
        for name, member in zip(
            LABELLED_SPLITS, (~in_validation, in_validation)
        )
        if member.any()
    }
    if options.num_test:
      splits['test'] = self._generate_examples(
          'test', SYNTHETIC_TEST_ID_START + np.arange(options.num_test)
      )
    return splits

  def _synthetic_examples(
      self, split: str, ids: np.ndarray
  ) -> Iterator[tuple[int, dict]]:
    options = self.options
    galaxies = synthetic.generate_galaxies(
        options.seed,
        [int(i) for i in ids],
        image_size=options.image_size,
        num_workers=options.num_workers,
    )
    for galaxy in _progress(split, galaxies, len(ids)):
      votes = (
          _unknown_votes(1)[0] if split == 'test' else galaxy.votes
      )
      yield galaxy.galaxy_id, self._example(
          split, galaxy.galaxy_id, galaxy.jpeg, votes
      )

  # ------------------------------------------------------------- shared ---

  def _example(
      self, split: str, galaxy_id: int, jpeg: bytes, votes: np.ndarray
  ) -> dict:
    votes = np.asarray(votes, np.float32)
    if split != 'test':
      self.report.votes[split].append(votes)
    return {
        'image': jpeg,
        'galaxy_id': galaxy_id,
        'votes': votes,
        'votes_mask': taxonomy.known_mask(votes),
        'label_3class': int(taxonomy.three_class_labels(votes)),
        'label_7class': int(taxonomy.seven_class_labels(votes)),
    }


def _progress(split: str, items, total: int):
  return progress.bar(
      items, total=total, desc=f'{split:>10s}', unit=' galaxies', leave=False
  )


def _unknown_votes(n: int) -> np.ndarray:
  return np.full((n, taxonomy.NUM_ANSWERS), np.nan, np.float32)


def _first_ids(ids: np.ndarray, limit: int = 20) -> str:
  shown = ', '.join(str(int(i)) for i in ids[:limit])
  return shown + (f' … and {len(ids) - limit} more' if len(ids) > limit else '')


def builder(
    config: str = 'synthetic', data_dir: str | pathlib.Path | None = None,
    **options,
) -> GalaxyZoo:
  """A ``galaxy_zoo`` builder; ``options`` are :class:`BuildOptions` fields.

  Options matter only for building; reading takes what is on disk.
  """
  names = [c.name for c in GalaxyZoo.BUILDER_CONFIGS]
  if config not in names:
    raise errors.ConfigError(
        f'Unknown galaxy_zoo config {config!r}; choose {", ".join(names)}.'
    )
  return GalaxyZoo(
      config=config,
      data_dir=None if data_dir is None else str(
          pathlib.Path(data_dir).expanduser()),
      options=BuildOptions(**options),
  )


class DatasetNotBuiltError(errors.GzjaxError, FileNotFoundError):
  """The requested dataset has not been built in that data directory."""


def data_source(
    config: str, data_dir: str | pathlib.Path, split: str
):
  """Random-access records of one split, the JPEG left encoded.

  Returns what ``builder.as_data_source`` gives, with ``image`` as the stored
  JPEG bytes (``SkipDecoding``) so the input pipeline decodes at reduced size.
  """
  galaxy_zoo = builder(config, data_dir)
  if not galaxy_zoo.is_prepared():
    raise DatasetNotBuiltError(
        f'The {NAME}/{config} dataset is not built in {data_dir}. Build it'
        f' with:\n  python -m gzjax.data.build --config={config}'
        + (' --manual_dir=DIR' if config == 'kaggle' else '')
        + f' --data_dir={data_dir}'
    )
  splits = list(galaxy_zoo.info.splits)
  if split not in splits:
    raise errors.ConfigError(
        f'{NAME}/{config} in {data_dir} has no split {split!r}; it has'
        f' {", ".join(splits)}.'
    )
  return galaxy_zoo.as_data_source(
      split, decoders={'image': tfds.decode.SkipDecoding()}
  )


RECORD = 'gzjax_build.json'
# What the build command's user does about a dataset of another download.
_OVERWRITE_HINT = ('Pass --overwrite to replace it (the old one stays until the'
                   ' new one is complete), or choose another --data_dir')
STAGING_PREFIX = '.gzjax_build-'
OLD_SUFFIX = '.gzjax_old-'


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Alive, and another user's.
    return True
  return True


def clean_leftovers(config: str, data_dir: pathlib.Path) -> list[str]:
  """Removes what killed builds left in ``data_dir``; returns what it did.

  TFDS's ``incomplete.*`` folders, staging folders of builds whose process
  is gone, and a replaced version that a killed swap left (moved back when
  the new one never arrived).
  """
  done = []
  final = pathlib.Path(builder(config, data_dir).data_path)
  if final.parent.is_dir():
    for path in sorted(final.parent.iterdir()):
      if path.name.startswith('incomplete.'):
        shutil.rmtree(path, ignore_errors=True)
        done.append(f'removed {path}, left by a killed build')
      elif path.name.startswith(final.name + OLD_SUFFIX):
        pid = int(path.name.rsplit('-', 1)[1])
        if _pid_alive(pid):
          continue
        if final.exists():
          shutil.rmtree(path, ignore_errors=True)
          done.append(f'removed {path}, replaced by a completed rebuild')
        else:
          path.rename(final)
          done.append(f'restored {final} from {path}: its rebuild was killed')
  if data_dir.is_dir():
    for path in sorted(data_dir.glob(f'{STAGING_PREFIX}*-{config}')):
      pid = int(path.name[len(STAGING_PREFIX):].split('-', 1)[0])
      if pid != os.getpid() and not _pid_alive(pid):
        shutil.rmtree(path, ignore_errors=True)
        done.append(f'removed {path}, left by a killed build')
  return done


def _count_files(folder: pathlib.Path | None) -> int:
  if folder is None:
    return 0
  return sum(1 for entry in os.scandir(folder)
             if entry.name.lower().endswith('.jpg'))


def build_source(config: str, manual_dir: pathlib.Path | None,
                 options: BuildOptions) -> dict:
  """What a build reads and how: equal for two builds of the same dataset.

  The Kaggle download is identified by its content (the solutions CSV's
  SHA-256 and row count, the image counts), not its path, so a moved copy
  is the same download.
  """
  chosen = {'validation_percent': options.validation_percent,
            'skip_bad_images': options.skip_bad_images}
  if config == 'synthetic':
    chosen.update(num_labelled=options.num_labelled,
                  num_test=options.num_test, image_size=options.image_size,
                  seed=options.seed)
    return {'source': {'synthetic': True}, 'options': chosen}
  files = kaggle.locate_files(manual_dir)
  data = files.solutions_csv.read_bytes()
  return {
      'source': {
          'solutions_csv': files.solutions_csv.name,
          'solutions_sha256': hashlib.sha256(data).hexdigest(),
          'solutions_rows': max(0, data.count(b'\n') - 1
                                + (not data.endswith(b'\n'))),
          'train_images': _count_files(files.train_images),
          'test_images': _count_files(files.test_images),
      },
      'options': chosen,
  }


def _differences(recorded: dict, requested: dict,
                 sections: tuple[str, ...] = ('source', 'options')
                 ) -> list[str]:
  differences = []
  for section in sections:
    old, new = recorded.get(section, {}), requested[section]
    for key in sorted(set(old) | set(new)):
      if old.get(key) != new.get(key):
        differences.append(f'{key} {old.get(key)!r} -> {new.get(key)!r}')
  return differences


def read_record(dataset: GalaxyZoo) -> dict | None:
  path = pathlib.Path(dataset.data_path) / RECORD
  return json.loads(path.read_text()) if path.is_file() else None


def prepare(
    config: str,
    data_dir: str | pathlib.Path,
    *,
    manual_dir: str | pathlib.Path | None = None,
    overwrite: bool = False,
    skip_hint: str | None = None,
    overwrite_hint: str | None = None,
    options_chosen: bool = True,
    **options,
) -> GalaxyZoo:
  """Builds (or finds) a dataset on disk; returns a builder that reads it.

  This is what ``python -m gzjax.data.build`` runs; ``options`` are
  :class:`BuildOptions` fields.  A build writes into a staging folder
  beside the dataset and swaps it in only when complete, so a failed
  (re)build leaves the previous dataset as it was; the dataset records how
  it was built (``gzjax_build.json``: source, options, counts, skipped
  ids).  An existing dataset built from another download or with other
  options is refused unless ``overwrite``.  Leftovers of killed builds are
  removed first.

  Args:
    skip_hint: how the user asks to skip bad images, for the messages
      (default: the build command's flag).
    overwrite_hint: how the user replaces an existing dataset of another
      download, or avoids it, for the refusal (default: the build
      command's --overwrite or another --data_dir).
    options_chosen: False when the caller has no say in ``options`` (a
      training run building on first use): an existing dataset is then
      checked against the download only, and the options it was built with
      (the build command's --skip_bad_images, say) are kept.

  Raises:
    kaggle.DataError: bad input, with the file, line, column or GalaxyID;
      or an existing dataset that another build made.
  """
  if config == 'kaggle':
    if manual_dir is None:
      raise kaggle.DataError(
          'The kaggle config needs --manual_dir.\n'
          + kaggle.DOWNLOAD_INSTRUCTIONS
      )
    manual_dir = pathlib.Path(manual_dir).expanduser()
    kaggle.locate_files(manual_dir)  # Fail fast, before TFDS starts.
  data_dir = pathlib.Path(data_dir).expanduser()
  for line in clean_leftovers(config, data_dir):
    print(f'gzjax: {line}', file=sys.stderr)
  requested = build_source(config, manual_dir, BuildOptions(**options))
  existing = builder(config, data_dir, **options)
  if existing.is_prepared():
    existing.record = read_record(existing)
    sections = ('source', 'options') if options_chosen else ('source',)
    differences = (_differences(existing.record, requested, sections)
                   if existing.record is not None else [])
    if not overwrite and differences:
      raise kaggle.DataError(
          f'{NAME}/{config} in {data_dir} was built from another download or'
          f' with other options ({"; ".join(differences)}).'
          f' {overwrite_hint or _OVERWRITE_HINT}.')
    if not overwrite:
      return existing
  staging = data_dir / f'{STAGING_PREFIX}{os.getpid()}-{config}'
  shutil.rmtree(staging, ignore_errors=True)
  try:
    built = builder(config, staging, **options)
    if skip_hint:
      built.skip_hint = skip_hint
    tfds.disable_progress_bar()  # Ours show totals; TFDS's cannot.
    built.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=None if manual_dir is None else str(manual_dir),
            download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS,
        )
    )
    record = dict(
        requested, config=config,
        manual_dir=None if manual_dir is None else str(manual_dir.resolve()),
        examples={name: split.num_examples
                  for name, split in built.info.splits.items()},
        skipped={split: [[int(i), problem] for i, problem in bad]
                 for split, bad in built.report.skipped.items() if bad},
    )
    new = pathlib.Path(built.data_path)
    (new / RECORD).write_text(json.dumps(record, indent=2))
    _swap(new, pathlib.Path(existing.data_path))
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  dataset = builder(config, data_dir, **options)
  dataset.report, dataset.record = built.report, record
  return dataset


def _swap(new: pathlib.Path, final: pathlib.Path) -> None:
  """Puts ``new`` at ``final`` by renames; the old one is deleted last."""
  final.parent.mkdir(parents=True, exist_ok=True)
  old = final.with_name(f'{final.name}{OLD_SUFFIX}{os.getpid()}')
  if final.exists():
    final.rename(old)
  new.rename(final)
  shutil.rmtree(old, ignore_errors=True)


def summarize(dataset: GalaxyZoo) -> str:
  """Examples per split, tree consistency, label mix and skipped images."""
  lines = [f'Dataset {dataset.info.full_name} in {dataset.data_path}']
  for name, split in dataset.info.splits.items():
    lines.append(f'  {name:<11s}{split.num_examples:>9,d} examples')
  votes = [v for split in dataset.report.votes.values() for v in split]
  if votes:
    votes = np.stack(votes)
    lines += ['', 'Decision-tree consistency of the labelled votes:']
    lines.append(
        taxonomy.format_consistency_report(taxonomy.consistency_report(votes))
    )
    lines += ['', 'Labels (-1: none):']
    for name, labels, names in (
        ('3-class', taxonomy.three_class_labels(votes),
         taxonomy.THREE_CLASS_NAMES),
        ('7-class', taxonomy.seven_class_labels(votes),
         taxonomy.SEVEN_CLASS_NAMES),
    ):
      counts = collections.Counter(labels.tolist())
      mix = ', '.join(
          f'{names[k] if k >= 0 else "none"}: {counts[k]}'
          for k in sorted(counts)
      )
      lines.append(f'  {name}: {mix}')
  elif dataset.is_prepared():
    lines.append('(already built; rebuild with --overwrite for the full report)')
  record = dataset.record
  lines.append('')
  if record is None:
    lines.append('How it was built: not recorded (built by an older gzjax);'
                 ' rebuild with --overwrite to record it.')
    skipped = {k: v for k, v in dataset.report.skipped.items() if v}
  else:
    source = record['source']
    built_from = (
        'synthetic' if 'synthetic' in source else
        f'{record["manual_dir"]} ({source["solutions_csv"]}:'
        f' {source["solutions_rows"]:,d} rows; {source["train_images"]:,d}'
        f' training and {source["test_images"]:,d} test JPEGs)')
    options = ', '.join(f'{k}={v}' for k, v in record['options'].items())
    lines.append(f'Built from {built_from} with {options}.')
    skipped = record['skipped']
  if skipped:
    total = sum(len(v) for v in skipped.values())
    lines.append(f'Skipped {total} bad images (--skip_bad_images):')
    for split, bad in skipped.items():
      for galaxy_id, problem in bad[:10]:
        lines.append(f'  {split}: {galaxy_id}: {problem}')
      if len(bad) > 10:
        lines.append(f'  {split}: … and {len(bad) - 10} more')
  else:
    lines.append('Skipped images: none')
  return '\n'.join(lines)
