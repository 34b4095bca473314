"""SIGTERM and Ctrl-C during training: a checkpoint at the step, one line,
the run resumes from it.  Before training's loop (reading the config,
start-up) and in survey prediction: a stop at once, one line saying what is
kept."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

from absl import flags
import pytest

from tests.conftest import parse_main_flags
from tests.conftest import tiny_config
from tests.test_survey_predict import SHARD_SIZE
from tests.test_survey_predict import survey  # pylint: disable=unused-import
from gzjax import checkpoint
from gzjax import main as cli
from gzjax import predict
from gzjax import preemption
from gzjax import train
from gzjax import workdir_rules

REPO = pathlib.Path(__file__).resolve().parents[1]
# Far more steps than a test runs: the stop, not the end, finishes them.
LONG = {'num_train_steps': 100_000, 'checkpoint_every_steps': 50_000,
        'log_every_steps': 50_000, 'eval_every_steps': 0}


def _steps(workdir):
  return [json.loads(line)['step']
          for line in (workdir / 'metrics.jsonl').read_text().splitlines()]


def test_sigterm_saves_the_step_it_stops_at_and_the_run_resumes(
    synthetic_data_dir, tmp_path):
  before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)

  def send_when_watched():
    # Only once the loop's handler is in: before it, SIGTERM would end
    # pytest itself.
    while not isinstance(getattr(signal.getsignal(signal.SIGTERM),
                                 '__self__', None), preemption.Watch):
      time.sleep(0.01)
    time.sleep(0.5)  # A few steps in.
    os.kill(os.getpid(), signal.SIGTERM)

  sender = threading.Thread(target=send_when_watched)
  sender.start()
  with pytest.raises(preemption.Stopped) as info:
    train.train_and_evaluate(tiny_config(synthetic_data_dir, **LONG), tmp_path)
  sender.join()
  steps = checkpoint.Checkpointer(tmp_path).steps()
  assert len(steps) == 1 and 0 < steps[0] < LONG['num_train_steps']
  stopped = steps[0]
  assert str(info.value) == (
      f'Stopped by SIGTERM after step {stopped}: its checkpoint is in'
      f' {tmp_path.resolve()}/checkpoints/{stopped}; run the same command'
      ' to resume.')
  assert info.value.exit_code == 143
  assert _steps(tmp_path) == [stopped]  # Its window's train metrics.
  assert not list((tmp_path / 'checkpoints').glob('*tmp*'))
  # The handlers of the caller are back.
  assert (signal.getsignal(signal.SIGTERM),
          signal.getsignal(signal.SIGINT)) == before
  train.train_and_evaluate(
      tiny_config(synthetic_data_dir, **{**LONG,
                                         'num_train_steps': stopped + 2}),
      tmp_path)
  assert checkpoint.Checkpointer(tmp_path).steps() == [stopped, stopped + 2]
  assert _steps(tmp_path)[-2:] == [stopped + 2, stopped + 2]


def test_a_sigterm_while_the_last_checkpoint_is_written_waits_for_it(
    synthetic_data_dir, tmp_path, monkeypatch):
  """The watch outlasts the closing saves: the command's own handler
  (gzjax.main's, which stops at once) would cut them short."""
  real_close = checkpoint.Checkpointer.close

  def close_signalled(self):
    os.kill(os.getpid(), signal.SIGTERM)
    real_close(self)

  def unwatched(number, frame):
    raise AssertionError('SIGTERM reached the caller during the save')

  monkeypatch.setattr(checkpoint.Checkpointer, 'close', close_signalled)
  previous = signal.signal(signal.SIGTERM, unwatched)
  try:
    train.train_and_evaluate(
        tiny_config(synthetic_data_dir, num_train_steps=2), tmp_path)
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert checkpoint.Checkpointer(tmp_path).steps() == [2]


def test_the_first_signal_asks_and_a_second_ctrl_c_stops_at_once(capsys):
  watch = preemption.Watch()
  assert not watch.requested(7)
  watch._ask(signal.SIGINT, None)  # pylint: disable=protected-access
  assert watch.requested(7)
  assert capsys.readouterr().err == (
      'gzjax: SIGINT: saving a checkpoint after this step, then stopping'
      ' (Ctrl-C again stops at once, unsaved).\n')
  with pytest.raises(KeyboardInterrupt):
    watch._ask(signal.SIGINT, None)  # pylint: disable=protected-access
  assert watch.stopped(7, 'W/checkpoints/7').exit_code == 130
  # A scheduler's second SIGTERM changes nothing: the save goes on.
  terminated = preemption.Watch()
  terminated._ask(signal.SIGTERM, None)  # pylint: disable=protected-access
  terminated._ask(signal.SIGTERM, None)  # pylint: disable=protected-access
  assert terminated.requested(1)
  assert capsys.readouterr().err.splitlines() == 2 * [
      'gzjax: SIGTERM: saving a checkpoint after this step, then stopping.']


class _SignalledWhileDeleted:
  """Sends SIGTERM from its ``__del__``, whose loop runs the handler there:
  where Python ignores exceptions, as in JAX's gc callback."""

  def __del__(self):
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(1000):  # The handler runs at a loop's jump.
      pass


def test_a_stop_raised_where_python_ignores_it_is_raised_again(capfd):
  """It was lost in JAX's gc callback ("Exception ignored in"), with a
  traceback, and training went on."""
  hook = sys.unraisablehook
  with pytest.raises(preemption.Interrupted) as info:
    with preemption.watch(at_once=True):
      _SignalledWhileDeleted()  # Deleted at once.
      deadline = time.monotonic() + 5
      while time.monotonic() < deadline:  # Raised again here.
        time.sleep(0.01)
  assert info.value.signal_number == signal.SIGTERM
  assert sys.unraisablehook is hook
  assert 'Exception ignored' not in capfd.readouterr().err


def test_the_watch_puts_back_the_handlers_it_found():
  mine = lambda number, frame: None
  interrupt = signal.getsignal(signal.SIGINT)
  previous = signal.signal(signal.SIGTERM, mine)
  try:
    with preemption.watch() as watch:
      assert signal.getsignal(signal.SIGTERM).__self__ is watch
      assert signal.getsignal(signal.SIGINT).__self__ is watch
    assert signal.getsignal(signal.SIGTERM) is mine
    assert signal.getsignal(signal.SIGINT) is interrupt
    # Off the main thread Python sets no handler: the watch only listens.
    seen = []
    thread = threading.Thread(target=lambda: seen.append(
        preemption.watch().__enter__().requested(1)))
    thread.start()
    thread.join()
    assert seen == [False] and signal.getsignal(signal.SIGTERM) is mine
  finally:
    signal.signal(signal.SIGTERM, previous)


_CONFIG_FILE = '''
from tests.conftest import tiny_config
def get_config():
  return tiny_config({data_dir!r}, **{overrides!r})
'''


def test_main_prints_one_line_and_exits_143_on_sigterm(synthetic_data_dir,
                                                       tmp_path):
  config_file = tmp_path / 'config.py'
  config_file.write_text(_CONFIG_FILE.format(
      data_dir=str(synthetic_data_dir),
      overrides={**LONG, 'log_every_steps': 2}))
  workdir = tmp_path / 'work'
  process = subprocess.Popen(
      [sys.executable, '-m', 'gzjax.main', f'--config={config_file}',
       f'--workdir={workdir}'], cwd=REPO, stderr=subprocess.PIPE, text=True,
      env={**os.environ, 'PYTHONPATH': str(REPO)})
  # The first logged step: the loop, and its handler, are running.
  deadline = time.monotonic() + 300
  while not (workdir / 'metrics.jsonl').is_file():
    assert process.poll() is None, process.stderr.read()[-3000:]
    assert time.monotonic() < deadline, 'no step logged in 300 s'
    time.sleep(0.1)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=300)
  assert process.returncode == 143, stderr[-3000:]
  lines = [line for line in stderr.splitlines() if line.startswith('gzjax:')]
  stopped = checkpoint.Checkpointer(workdir).steps()
  assert len(stopped) == 1
  assert lines == [
      'gzjax: SIGTERM: saving a checkpoint after this step, then stopping.',
      f'gzjax: Stopped by SIGTERM after step {stopped[0]}: its checkpoint is'
      f' in {workdir.resolve()}/checkpoints/{stopped[0]}; run the same'
      ' command to resume.']
  assert 'Traceback' not in stderr


@pytest.mark.parametrize('mode, rerun', [
    ('train', 'resume from the newest checkpoint'),
    ('evaluate', 'evaluate'),
    ('predict', 'predict (survey prediction resumes at its first unwritten'
                ' shard)')])
def test_a_ctrl_c_that_stops_at_once_is_one_line(monkeypatch, capsys,
                                                  tmp_path, mode, rerun):
  from gzjax import evaluate  # pylint: disable=g-import-not-at-top
  from tests.conftest import main_exit_code  # pylint: disable=g-import-not-at-top

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt

  for module, name in ((train, 'train_and_evaluate'),
                       (evaluate, 'evaluate'), (evaluate, 'predict')):
    monkeypatch.setattr(module, name, interrupted)
  assert main_exit_code([
      'gzjax', f'--config={REPO / "configs" / "quickstart.py"}',
      f'--workdir={tmp_path}', f'--mode={mode}',
      '--config.compilation_cache_dir=']) == 130
  assert capsys.readouterr().err == (
      f'gzjax: Stopped by SIGINT in --mode={mode}; run the same command'
      f' again to {rerun}.\n')


# The tests' hook, added to a config file (which the command loads before it
# runs, and twice): once MODULE.FUNCTION first returns, the process sends
# itself the signal there, at a known point of its run.
_SIGNAL_AFTER = '''
import importlib, os, time
_module = importlib.import_module({module!r})
_real = getattr(_module, {function!r})
if not hasattr(_real, 'sent'):  # Wrapped once.
  def _then_signal(*args, **kwargs):
    result = _real(*args, **kwargs)
    if not _then_signal.sent:
      _then_signal.sent = True
      os.kill(os.getpid(), {number})
      time.sleep(60)  # The signal's handler ends this.
    return result
  _then_signal.sent = False
  setattr(_module, {function!r}, _then_signal)
'''


def _run_main(flags_: list[str]) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, '-m', 'gzjax.main', *flags_], cwd=REPO, text=True,
      capture_output=True, timeout=300,
      env={**os.environ, 'PYTHONPATH': str(REPO), 'JAX_PLATFORMS': 'cpu'})


def _lines(stderr: str) -> list[str]:
  assert 'Traceback' not in stderr, stderr[-3000:]
  return [line for line in stderr.splitlines() if line.startswith('gzjax:')]


def test_a_signal_while_the_config_loads_is_one_line(tmp_path):
  """Before the command's mode starts (it ended with no line, -15)."""
  config_file = tmp_path / 'config.py'
  config_file.write_text('import os, signal, time\ndef get_config():\n'
                         '  os.kill(os.getpid(), signal.SIGTERM)\n'
                         '  time.sleep(60)  # The handler ends this.\n')
  result = _run_main([f'--config={config_file}',
                      f'--workdir={tmp_path / "work"}'])
  assert result.returncode == 143, result.stderr[-3000:]
  assert _lines(result.stderr) == [
      'gzjax: Stopped by SIGTERM while reading the flags and config: nothing'
      ' was done; run the same command again.']
  assert not (tmp_path / 'work').exists()


def _files(folder: pathlib.Path) -> dict[str, bytes | None]:
  """Every path in ``folder``, with a file's bytes; not the training lock's
  (who holds it, and since when: the stopped run held it too)."""
  return {str(p.relative_to(folder)):
              p.read_bytes() if p.is_file()
              and p.name != workdir_rules.LOCK_FILE else None
          for p in sorted(folder.rglob('*'))}


@pytest.mark.parametrize('number, workdir_holds', [
    (signal.SIGTERM, 'nothing'), (signal.SIGINT, 'a file'),
    (signal.SIGTERM, 'checkpoints')])
def test_a_signal_while_starting_to_train_is_one_line_and_changes_nothing(
    synthetic_data_dir, tmp_path, number, workdir_holds):
  """Once the workdir is made and locked, before the first step (it ended
  with no line, -15, and left a new workdir behind)."""
  config_file = tmp_path / 'config.py'
  config_file.write_text(_CONFIG_FILE.format(
      data_dir=str(synthetic_data_dir), overrides=LONG) + _SIGNAL_AFTER.format(
          module='gzjax.experiment', function='create_train_input',
          number=int(number)))
  workdir = tmp_path / 'runs' / 'work'
  rerun = 'start'
  if workdir_holds == 'a file':
    workdir.mkdir(parents=True)
    (workdir / 'notes.txt').write_text('mine')
  if workdir_holds == 'checkpoints':
    train.train_and_evaluate(
        tiny_config(synthetic_data_dir, num_train_steps=3), workdir)
    rerun = 'resume'
  before = _files(workdir) if workdir.exists() else None
  result = _run_main([f'--config={config_file}', f'--workdir={workdir}'])
  assert result.returncode == 128 + number, result.stderr[-3000:]
  kept = (f', and the checkpoints in {workdir} are as they were'
          if workdir_holds == 'checkpoints' else '')
  assert _lines(result.stderr) == [
      f'gzjax: Stopped by {signal.Signals(number).name} while starting to'
      f' train, before any step: nothing was trained or saved{kept}; run the'
      f' same command again to {rerun}.']
  if before is None:
    assert not (tmp_path / 'runs').exists()
  else:
    assert _files(workdir) == before


def test_a_survey_stopped_before_its_settings_are_written_says_so(tmp_path):
  assert predict.stopped_situation(tmp_path / 'shards') == (
      f'while predicting into {tmp_path / "shards"}, before any shard was'
      ' written; run the same command again to start')


def test_sigterm_in_survey_prediction_keeps_the_finished_shards_in_one_line(
    survey, tmp_path):
  """After the first of three shards (it ended with no line, -15); the same
  command then predicts the other two."""
  plain = (tmp_path / 'plain.py', "from tests.conftest import tiny_config\n"
           "def get_config():\n"
           "  return tiny_config('/nonexistent', **{'input.batch_size': 8})\n")
  plain[0].write_text(plain[1])
  config_file = tmp_path / 'config.py'
  config_file.write_text(plain[1] + _SIGNAL_AFTER.format(
      module='gzjax.predict', function='_write_shard',
      number=int(signal.SIGTERM)))
  output = tmp_path / 'shards'
  command = [f'--workdir={survey["workdir"]}', '--mode=predict',
             f'--catalog={survey["table"]}', '--id_column=objid',
             '--path_column=file', f'--output_dir={output}',
             f'--shard_size={SHARD_SIZE}']
  result = _run_main([f'--config={config_file}', *command])
  assert result.returncode == 143, result.stderr[-3000:]
  assert _lines(result.stderr) == [
      f'gzjax: Stopped by SIGTERM while predicting into {output}: 1 of 3'
      ' shards are finished and kept; run the same command again to predict'
      ' the rest.']
  assert sorted(p.name for p in output.iterdir()) == [
      '_RUN.json', 'part-00000.parquet']
  first_shard = (output / 'part-00000.parquet').stat().st_mtime_ns
  parse_main_flags(['gzjax', f'--config={plain[0]}', *command])  # No hook.
  try:
    cli.main(['gzjax'])
  finally:
    flags.FLAGS.unparse_flags()
  assert (output / '_SUCCESS.json').is_file()
  assert (output / 'part-00000.parquet').stat().st_mtime_ns == first_shard
