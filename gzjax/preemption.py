"""A run asked to stop by a signal: it says what it kept, in one line.

A scheduler pre-empting a job sends SIGTERM (SLURM, Kubernetes, a cloud's
spot VM) and kills the process a grace period later; a user presses Ctrl-C.
Without help either ends the run wherever Python happens to be (a
``KeyboardInterrupt`` traceback from inside jax, or a silent exit -15 with
a half-written checkpoint) and loses up to ``checkpoint_every_steps`` of
work.  Inside :func:`watch`, the first SIGTERM or SIGINT only asks for a
stop: the training loop finishes its step, saves a checkpoint there and
raises :class:`Stopped`, which ``gzjax.main`` prints as one line (the step
saved, and that the same command resumes).  A second Ctrl-C stops at once
(:class:`Interrupted`, a ``KeyboardInterrupt`` as Python's default would
raise).

Outside the training loop (start-up, evaluation, prediction) there is no
step to finish: ``gzjax.main`` watches the whole command with
``watch(at_once=True)``, so that either signal raises :class:`Interrupted`
where Python is.  Code that knows what an interruption leaves (training's
start-up, a survey's finished shards) says so in
:attr:`Interrupted.situation` on the way out, and ``gzjax.main`` prints it
as one line with exit status 128 + the signal (the default SIGTERM handler
ended the process silently, with -15).

In a multi-process run JAX's preemption service, started with
``jax.distributed``, owns SIGTERM and tells every process at the same step
(:func:`jax.experimental.multihost_utils.reached_preemption_sync_point`),
so that all of them save the same step; a Ctrl-C there keeps Python's
default.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from typing import Callable, Iterator

import jax
from jax.experimental import multihost_utils

from gzjax import errors


class Stopped(errors.GzjaxError, RuntimeError):
  """Training stopped at a signal's request, after saving a checkpoint."""

  def __init__(self, message: str, signal_number: int):
    super().__init__(message)
    # 128 + the signal, as a shell reports a process the signal ended.
    self.exit_code = 128 + signal_number


class Interrupted(KeyboardInterrupt):
  """A signal stopped the command at once.  A ``KeyboardInterrupt``, so that
  no ``except Exception`` in gzjax or a library takes it for a failure to
  report or retry."""

  def __init__(self, signal_number: int, situation: str | None = None):
    super().__init__(signal_number)
    self.signal_number = signal_number
    # What was under way and what it leaves (filled in on the way out by
    # whoever knows), and what rerunning does; None: :func:`line`'s default.
    self.situation = situation
    self.exit_code = 128 + signal_number


def line(error: KeyboardInterrupt, default: str) -> str:
  """The one line for ``error``: its situation, else ``default``; a plain
  ``KeyboardInterrupt`` (Python's own Ctrl-C) is a SIGINT."""
  number = getattr(error, 'signal_number', signal.SIGINT)
  situation = getattr(error, 'situation', None) or default
  return f'Stopped by {signal.Signals(number).name} {situation}.'


class Watch:
  """The stop asked for so far, if any (:func:`watch`)."""

  def __init__(self, at_once: bool = False):
    self.signal_number: int | None = None
    self.at_once = at_once

  def requested(self, step: int) -> bool:
    """Whether to save and stop after ``step``; every process of a
    multi-process run gets the same answer at the same step."""
    if jax.process_count() > 1:
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # The preemption service is off: no notices.
        return False
    return self.signal_number is not None

  def stopped(self, step: int, checkpoint: str) -> Stopped:
    """The error that ends the run after ``step`` was saved."""
    number = self.signal_number or signal.SIGTERM
    name = signal.Signals(number).name
    return Stopped(
        f'Stopped by {name} after step {step}: its checkpoint is in'
        f' {checkpoint}; run the same command to resume.', number)

  def _ask(self, number: int, frame) -> None:
    del frame
    if self.at_once or (self.signal_number is not None
                        and number == signal.SIGINT):
      raise Interrupted(number)  # Nothing to save first, or a second Ctrl-C.
    self.signal_number = number
    print(f'gzjax: {signal.Signals(number).name}: saving a checkpoint after'
          ' this step, then stopping'
          + (' (Ctrl-C again stops at once, unsaved).'
             if number == signal.SIGINT else '.'),
          file=sys.stderr, flush=True)


def _signal_again(previous: Callable) -> Callable:
  """A ``sys.unraisablehook`` for :func:`watch`: an :class:`Interrupted`
  that Python ignored, having raised it where exceptions cannot escape (a
  gc callback, such as JAX's; a ``__del__``), is signalled again a moment
  later from another thread, to be raised where it stops the command (a
  SIGTERM was lost so, and training went on).  Others go to ``previous``."""

  def hook(unraisable) -> None:
    if not isinstance(unraisable.exc_value, Interrupted):
      previous(unraisable)
      return
    again = threading.Timer(0.01, os.kill, (
        os.getpid(), unraisable.exc_value.signal_number))
    again.daemon = True
    again.start()

  return hook


@contextlib.contextmanager
def watch(at_once: bool = False) -> Iterator[Watch]:
  """SIGTERM and SIGINT ask the :class:`Watch` for a stop while inside
  (``at_once``: raise :class:`Interrupted` there and then); the previous
  handlers come back on leaving.  Handlers are Python's to set from the
  main thread of a single-process run only; elsewhere the watch hears only
  JAX's preemption notices."""
  stop = Watch(at_once)
  # jax.process_count() alone would start the backend: not before the
  # command has set JAX up.
  if ((jax.distributed.is_initialized() and jax.process_count() > 1)
      or threading.current_thread() is not threading.main_thread()):
    yield stop
    return
  previous = {number: signal.signal(number, stop._ask)  # pylint: disable=protected-access
              for number in (signal.SIGTERM, signal.SIGINT)}
  unraisable, sys.unraisablehook = (sys.unraisablehook,
                                    _signal_again(sys.unraisablehook))
  try:
    yield stop
  finally:
    sys.unraisablehook = unraisable
    for number, handler in previous.items():
      # None: a handler not set from Python, which cannot be put back.
      signal.signal(number, signal.SIG_DFL if handler is None else handler)
