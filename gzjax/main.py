r"""The command line: train, evaluate or predict from an experiment config.

  python -m gzjax.main --config=configs/quickstart.py --workdir=/tmp/gz
  python -m gzjax.main --config=configs/quickstart.py --workdir=/tmp/gz \
      --mode=evaluate --split=validation --tta
  python -m gzjax.main --config=configs/quickstart.py --workdir=/tmp/gz \
      --mode=predict --output=/tmp/gz/submission.csv

A config with a label catalogue (config.labels.catalog, gzjax.finetune)
fine-tunes on it; --mode=evaluate scores the catalogue's --split and
--mode=predict labels its rows, --images or (with --output_dir) a survey.

Any config key can be overridden: ``--config.optimizer.learning_rate=3e-4``.
The logic lives in importable modules (train, evaluate, predict); this file
only parses flags, starts multi-host JAX when asked and turns known failures
into one clear message (``gzjax.errors.GzjaxError``; anything else keeps
its traceback).
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import signal
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from gzjax import distributed
from gzjax import errors
from gzjax import path_flags
from gzjax import preemption

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'An experiment config file (configs/*.py).',
    lock_config=True)
_WORKDIR = path_flags.DEFINE_path(
    'workdir', None, 'Where checkpoints, metrics and plots go.')
_MODE = flags.DEFINE_enum(
    'mode', 'train', ['train', 'evaluate', 'predict'], 'What to do.')
_SPLIT = flags.DEFINE_string('split', 'validation', 'evaluate: which split.')
_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', 'latest',
    'evaluate/predict: "latest", "best" or a step number.')
_TTA = flags.DEFINE_bool(
    'tta', False, 'evaluate/predict: average over 8 rotations and flips.')
_OUTPUT = path_flags.DEFINE_path(
    'output', None, 'predict: the CSV to write (default WORKDIR/predictions.csv).')
_IMAGES = path_flags.DEFINE_path(
    'images', None,
    'predict: a folder of <GalaxyID>.jpg/.jpeg/.png (any case) instead of the'
    ' test split (a label-catalogue run: any folder or glob, ids the file'
    ' names, instead of its catalogue\'s rows).')
_ENSEMBLE = path_flags.DEFINE_path_list(
    'ensemble', [], 'predict: more workdirs whose predictions are averaged in.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', None,
    'Call jax.distributed.initialize() (default: when JAX_COORDINATOR_ADDRESS'
    ' is set); JAX_NUM_PROCESSES and JAX_PROCESS_ID say how many processes'
    ' and which one, where the cluster is not detected (gzjax/distributed.py).')


# Survey prediction (gzjax/predict.py): chosen by --catalog or --output_dir.
_CATALOG = path_flags.DEFINE_path(
    'catalog', None,
    'predict: a CSV or Parquet table of images to label (see --id_column,'
    ' --path_column); needs --output_dir.')
_ID_COLUMN = flags.DEFINE_string(
    'id_column', 'id', 'predict --catalog: the column of galaxy ids.')
_PATH_COLUMN = flags.DEFINE_string(
    'path_column', 'path',
    'predict --catalog: the column of image paths (relative to the table).')
_OUTPUT_DIR = path_flags.DEFINE_path(
    'output_dir', None,
    'predict: write sharded predictions of --catalog or --images (a folder,'
    ' searched recursively, or a glob) here; rerunning resumes.')
_SHARD_SIZE = flags.DEFINE_integer(
    'shard_size', 100_000, 'predict --output_dir: rows per output shard.')
_FORMAT = flags.DEFINE_enum(
    'format', 'parquet', ['parquet', 'csv'],
    'predict --output_dir: the shards\' file format.')
_STRICT = flags.DEFINE_bool(
    'strict', False,
    'predict --output_dir: stop at the first unreadable image instead of'
    ' listing it in errors.csv.')
_NUM_WORKERS = flags.DEFINE_integer(
    'num_workers', None,
    'predict --output_dir: image-decoding processes (0: in this process);'
    ' when given, it replaces config.input.num_workers, the default.')

flags.mark_flags_as_required(['config', 'workdir'])


def _config_path(argv: list[str]) -> str | None:
  """The --config file named in ``argv`` (without a ``:override`` suffix)."""
  for index, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1].split(':', 1)[0]
    if arg == '--config' and index + 1 < len(argv):
      return argv[index + 1].split(':', 1)[0]
  return None


def _config_argument(argv: list[str]) -> str | None:
  """The ``:argument`` after the --config file, which ml_collections passes
  to its get_config; None without one."""
  for index, arg in enumerate(argv):
    value = (arg.split('=', 1)[1] if arg.startswith('--config=')
             else argv[index + 1] if arg == '--config' and index + 1 < len(argv)
             else None)
    if value is not None:
      return value.split(':', 1)[1] if ':' in value else None
  return None


def _overrides(argv: list[str]) -> list[tuple[str, str]]:
  """(key, value as written) of each ``--config.KEY=VALUE`` in ``argv``."""
  pairs = []
  for index, arg in enumerate(argv):
    if arg.startswith('--config.'):
      key, equals, text = arg[len('--config.'):].partition('=')
      if not equals and index + 1 < len(argv):  # --config.KEY VALUE
        text = argv[index + 1]
      pairs.append((key, text))
  return pairs


def _has_key(config, key: str) -> bool:
  node = config
  for part in key.split('.'):
    try:
      node = node[part]
    except (KeyError, TypeError, AttributeError):
      return False
  return True


def _say(message: str) -> None:
  """``gzjax: message`` on stderr in one write: print's two (the text, then
  the newline) let another thread's output (a library's traceback from a
  worker thread) land inside the line."""
  sys.stderr.write(f'gzjax: {message}\n')
  sys.stderr.flush()


def _exit_with(message: str) -> None:
  _say(message)
  sys.exit(2)


def _load_config(path: str, argument: str | None):
  """What the config file's get_config gives (with ``argument`` when the
  --config flag has one), loaded apart from the flag's own parse."""
  spec = importlib.util.spec_from_file_location('_gzjax_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not callable(getattr(module, 'get_config', None)):
    _exit_with(f'--config={path} defines no get_config(): a config file'
               ' returns its ConfigDict from get_config() (see'
               ' configs/quickstart.py).')
  return (module.get_config() if argument is None
          else module.get_config(argument))


def _check_config_file(path: str, argument: str | None) -> None:
  """One line for a config file that does not give a config: a syntax
  error, no ``get_config``, an exception inside it (with the file's line),
  or something else than a ConfigDict (absl and ml_collections print these
  as tracebacks through their own code)."""
  import traceback  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  try:
    config = _load_config(path, argument)
  except SyntaxError as error:
    _exit_with(f'--config={path}, line {error.lineno}: {error.msg}; fix the'
               ' file.')
  except Exception as error:  # pylint: disable=broad-except
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if os.path.exists(f.filename)
              and os.path.samefile(f.filename, path)]
    where = f', line {frames[-1].lineno}' if frames else ''
    _exit_with(f'--config={path}{where}: {type(error).__name__}: {error};'
               ' fix the file' + (f' (or drop :{argument} after its name).'
                                  if argument is not None else '.'))
  if not isinstance(config, ml_collections.ConfigDict):
    _exit_with(f'--config={path}: get_config() returned a'
               f' {type(config).__name__}, not an ml_collections.ConfigDict'
               ' (see configs/quickstart.py).')


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with one line for a missing config file or a misspelt
  ``--config.KEY`` (ml_collections raises a KeyError with a traceback)."""
  path = _config_path(argv)
  if path is not None and os.path.isfile(path):
    from gzjax import config as base  # pylint: disable=g-import-not-at-top
    base.make_importable(path)  # configs/*.py import configs.common.
    _check_config_file(path, _config_argument(argv))
  if path is not None and not os.path.isfile(path):
    folder = os.path.dirname(path) or '.'
    siblings = (sorted(f for f in os.listdir(folder) if f.endswith('.py'))
                if os.path.isdir(folder) else [])
    close = difflib.get_close_matches(os.path.basename(path), siblings, n=3)
    hint = ('; did you mean '
            + ' or '.join(os.path.join(folder, c) for c in close) + '?'
            if close else '; the experiment configs are in configs/.')
    _exit_with(f'--config={path}: no such file{hint}')
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    from gzjax import config_checks  # pylint: disable=g-import-not-at-top
    for key, text in _overrides(argv):
      if (key in config_checks.MAPPING_KEYS
          and str(error).startswith(f'flag --config.{key}=')):
        _exit_with(config_checks.mapping_override_message(key, text))
    _exit_with(f'{error}; pass --helpshort to see the flags.')
  except (KeyError, AttributeError):
    # ml_collections applies the overrides while it parses --config, so the
    # config is not available from the flag: load the file again.
    config = _load_config(path, _config_argument(argv))
    from gzjax import config_checks  # pylint: disable=g-import-not-at-top
    for key, _ in _overrides(argv):
      if not _has_key(config, key):
        _exit_with(config_checks.unknown_key_message(config, key))
    raise  # Not a misspelt key: a bug, with its traceback.


# The modes each flag serves; given in another mode it is refused, since a
# flag silently ignored reads as a result it is not (an "ensemble" that
# evaluated one workdir).  Survey prediction's own flags also need
# --catalog or --output_dir.
_FLAG_MODES = {'split': ('evaluate',), 'checkpoint': ('evaluate', 'predict'),
               'tta': ('evaluate', 'predict'), 'output': ('predict',),
               'images': ('predict',), 'ensemble': ('predict',),
               'catalog': ('predict',), 'output_dir': ('predict',)}
_SURVEY_FLAGS = ('id_column', 'path_column', 'shard_size', 'format', 'strict',
                 'num_workers')


def _check_flags_fit_the_mode() -> None:
  """Refuses, in one line, a flag the chosen mode would ignore."""
  given = {name for name in (*_FLAG_MODES, *_SURVEY_FLAGS)
           if flags.FLAGS[name].present}
  for name in sorted(given):
    modes = _FLAG_MODES.get(name, ('predict',))
    if _MODE.value not in modes:
      raise errors.ConfigError(
          f'--{name} is for --mode={" or --mode=".join(modes)}, not'
          f' --mode={_MODE.value}: drop it, or change the mode.')
  survey = _CATALOG.value or _OUTPUT_DIR.value
  for name in sorted(given & set(_SURVEY_FLAGS)):
    if not survey:
      raise errors.ConfigError(
          f'--{name} is for survey prediction (--catalog or --output_dir):'
          ' drop it, or give --output_dir.')
  if survey and 'output' in given:
    raise errors.ConfigError(
        '--output names one file, but --catalog/--output_dir write shards'
        ' into --output_dir: give one of them.')


def _predict_survey(config, workdirs):
  from gzjax import predict  # pylint: disable=g-import-not-at-top
  if not _OUTPUT_DIR.value:
    raise errors.ConfigError(
        '--catalog writes sharded predictions: give --output_dir.')
  try:
    predict.run(config, workdirs, images=_IMAGES.value, catalog=_CATALOG.value,
                id_column=_ID_COLUMN.value, path_column=_PATH_COLUMN.value,
                output_dir=_OUTPUT_DIR.value, shard_size=_SHARD_SIZE.value,
                format=_FORMAT.value, strict=_STRICT.value,
                num_workers=_NUM_WORKERS.value, checkpoint=_CHECKPOINT.value,
                tta=_TTA.value)
  except preemption.Interrupted as stop:  # Say which shards are kept.
    stop.situation = predict.stopped_situation(_OUTPUT_DIR.value)
    raise


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if distributed.wanted(_DISTRIBUTED.value):
    try:
      distributed.initialize()
    except errors.GzjaxError as error:  # A malformed JAX_* variable, named.
      _say(str(error))
      sys.exit(1)
  logging.set_verbosity(logging.WARNING)
  # Imported here so that --help is fast and flags parse before grain starts.
  from gzjax import evaluate  # pylint: disable=g-import-not-at-top
  from gzjax import experiment as experiments  # pylint: disable=g-import-not-at-top
  from gzjax import train  # pylint: disable=g-import-not-at-top

  from gzjax import finetune  # pylint: disable=g-import-not-at-top

  try:
    # Each entry point (train, evaluate, predict, finetune) checks the config
    # itself (gzjax.config_checks) before it reads or writes anything.
    _check_flags_fit_the_mode()
    config = _CONFIG.value
    experiments.use_compilation_cache(config.compilation_cache_dir)
    # A label catalogue's run (config.labels.catalog) has its own task.
    catalogue = finetune.is_catalogue_run(config)
    if _MODE.value == 'train':
      (finetune.run if catalogue else train.train_and_evaluate)(
          config, _WORKDIR.value)
    elif _MODE.value == 'evaluate':
      (finetune.evaluate if catalogue else evaluate.evaluate)(
          config, _WORKDIR.value, split=_SPLIT.value,
          checkpoint=_CHECKPOINT.value, tta=_TTA.value)
    elif _CATALOG.value or _OUTPUT_DIR.value:
      _predict_survey(config, [_WORKDIR.value, *_ENSEMBLE.value])
    elif catalogue:
      if _ENSEMBLE.value:
        raise errors.ConfigError(
            '--ensemble does not take a label-catalogue run: predict each'
            ' workdir on its own and average the files.')
      finetune.predict(config, _WORKDIR.value, output=_OUTPUT.value,
                       images=_IMAGES.value, checkpoint=_CHECKPOINT.value,
                       tta=_TTA.value)
    else:
      evaluate.predict(config, [_WORKDIR.value, *_ENSEMBLE.value],
                       output=_OUTPUT.value, images=_IMAGES.value,
                       checkpoint=_CHECKPOINT.value, tta=_TTA.value)
  except errors.GzjaxError as error:
    # What the user can fix, in one line; anything else keeps its traceback.
    _say(str(error))
    sys.exit(getattr(error, 'exit_code', 1))  # preemption.Stopped: 128+sig.
  except KeyboardInterrupt as stop:  # A signal (see below), or Python's.
    _stopped(stop, f'in --mode={_MODE.value}; run the same command again to'
                   f' {_RERUN[_MODE.value]}')


def _stopped(stop: KeyboardInterrupt, default: str) -> None:
  """Exits with ``stop``'s line (its situation, else ``default``) and 128 +
  its signal, as a shell reports a process the signal ended."""
  _say(preemption.line(stop, default))
  sys.exit(getattr(stop, 'exit_code', 128 + signal.SIGINT))


# What running an interrupted mode again does.
_RERUN = {'train': 'resume from the newest checkpoint',
          'evaluate': 'evaluate',
          'predict': 'predict (survey prediction resumes at its first'
                     ' unwritten shard)'}


if __name__ == '__main__':
  # From here on SIGTERM or Ctrl-C stops at once (training's loop saves its
  # step first), as preemption.Interrupted in one line, not a silent -15 or
  # a traceback.  A multi-process run's SIGTERM is JAX's preemption
  # service's once jax.distributed starts.
  with preemption.watch(at_once=True):
    try:
      app.run(main, flags_parser=parse_flags)
    except KeyboardInterrupt as stop:  # While the flags and config parse.
      _stopped(stop, 'while reading the flags and config: nothing was done;'
                     ' run the same command again')
