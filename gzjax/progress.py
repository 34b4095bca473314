"""Progress reports that suit where the output goes.

On a terminal, a tqdm bar.  When stderr is a file or a pipe (a batch job's
log, ``make demo > log``) tqdm's carriage-return redraws pile up into single
lines of tens of kilobytes, so :func:`bar` returns :class:`PlainProgress`
instead: one plain line every ``interval`` seconds (and one at the end) with
the count, the rate and the time left.  Both offer the part of tqdm's
interface the engine uses: iteration, ``update``, ``set_postfix``, ``write``
and ``close``.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable, TextIO

import tqdm

# Seconds between two plain progress lines.
DEFAULT_INTERVAL = 30.0


def counted(count: int, noun: str) -> str:
  """``(1, 'shard')`` -> ``'1 shard'``, ``(3, 'shard')`` -> ``'3 shards'``."""
  return f'{count} {noun}{"" if count == 1 else "s"}'


def format_duration(seconds: float) -> str:
  """``75`` -> ``'1:15'``, ``3700`` -> ``'1:01:40'``; ``'?'`` when unknown."""
  if seconds != seconds or seconds in (float('inf'), float('-inf')):
    return '?'
  seconds = int(round(max(seconds, 0.0)))
  hours, rest = divmod(seconds, 3600)
  minutes, seconds = divmod(rest, 60)
  if hours:
    return f'{hours}:{minutes:02d}:{seconds:02d}'
  return f'{minutes}:{seconds:02d}'


class PlainProgress:
  """tqdm's interface as periodic newline-terminated lines.

  A line reads ``DESC: 1200/10000 (12%), 85.3 images/s, 1:43 left, loss=0.1``.
  """

  def __init__(self, iterable: Iterable[Any] | None = None, *,
               total: int | None = None, initial: int = 0, desc: str = '',
               unit: str = 'it', disable: bool = False,
               interval: float = DEFAULT_INTERVAL,
               file: TextIO | None = None, clock=time.monotonic):
    self._iterable = iterable
    if total is None and iterable is not None and hasattr(iterable, '__len__'):
      total = len(iterable)
    self.total = total
    self.n = initial
    self._initial = initial
    self._desc = desc.strip()
    self._unit = unit.strip()
    self.disable = disable
    self._interval = interval
    self._file = file
    self._clock = clock
    self._start = clock()
    self._last = self._start
    self._postfix = ''
    self._closed = False
    self._shown = None

  @property
  def _out(self) -> TextIO:
    return self._file or sys.stderr

  def __iter__(self):
    for item in self._iterable:
      yield item
      self.update()
    self.close()

  def __enter__(self) -> 'PlainProgress':
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def line(self) -> str:
    """The current progress line (without a newline)."""
    elapsed = self._clock() - self._start
    done = self.n - self._initial
    rate = done / elapsed if elapsed > 0 else float('nan')
    text = f'{self._desc}: ' if self._desc else ''
    if self.total:
      text += f'{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)'
    else:
      text += f'{self.n}'
    text += f', {rate:.1f} {self._unit}/s'
    if self.total:
      left = (self.total - self.n) / rate if rate > 0 else float('nan')
      text += f', {format_duration(left)} left'
    text += f', {format_duration(elapsed)} elapsed'
    return text + (f', {self._postfix}' if self._postfix else '')

  def _emit(self) -> None:
    self._shown = self.n
    if not self.disable:
      print(self.line(), file=self._out, flush=True)

  def update(self, n: int = 1) -> None:
    self.n += n
    now = self._clock()
    if now - self._last >= self._interval:
      self._last = now
      self._emit()

  def set_postfix(self, **values: Any) -> None:
    self._postfix = ', '.join(f'{k}={v}' for k, v in values.items())

  def write(self, text: str) -> None:
    if not self.disable:
      print(text, file=self._out, flush=True)

  def close(self) -> None:
    if not self._closed:
      self._closed = True
      if self._shown != self.n:
        self._emit()


def is_terminal(stream: TextIO | None = None) -> bool:
  stream = stream or sys.stderr
  try:
    return stream.isatty()
  except (AttributeError, ValueError):  # Closed or replaced streams.
    return False


def bar(iterable: Iterable[Any] | None = None, *, total: int | None = None,
        initial: int = 0, desc: str = '', unit: str = 'it',
        disable: bool = False, leave: bool = True,
        interval: float = DEFAULT_INTERVAL):
  """A tqdm bar on a terminal, else :class:`PlainProgress` lines."""
  if is_terminal():
    return tqdm.tqdm(iterable, total=total, initial=initial, desc=desc,
                     unit=unit, disable=disable, leave=leave,
                     dynamic_ncols=True)
  return PlainProgress(iterable, total=total, initial=initial, desc=desc,
                       unit=unit, disable=disable, interval=interval)
