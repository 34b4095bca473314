"""SIGTERM and Ctrl-C during training: a checkpoint at the step, one line,
the run resumes from it."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import tiny_config
from gzjax import checkpoint
from gzjax import preemption
from gzjax import train

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
      f'gzjax: interrupted (Ctrl-C) in --mode={mode}; run the same command'
      f' again to {rerun}.\n')
