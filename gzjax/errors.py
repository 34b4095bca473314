"""The one base class for failures a user can fix.

A :class:`GzjaxError` carries a message that names the file, row, key or
step, the value found and what to do; ``python -m gzjax.main`` and
``python -m gzjax.data.build`` print it as one line and exit non-zero.
Anything else is a bug (in gzjax or a library) and keeps its traceback.

Each subclass also derives from the built-in exception its callers caught
before the base existed (``ValueError``, ``FileNotFoundError``), so code
that catches those keeps working.
"""

from __future__ import annotations


class GzjaxError(Exception):
  """Something the user can fix: bad input, config, dataset or workdir."""


class ConfigError(GzjaxError, ValueError):
  """A config value or key that is not allowed; the message names the key."""


class DataError(GzjaxError, ValueError):
  """Input data that cannot be used as it is; the message says where and why."""


class MissingFileError(GzjaxError, FileNotFoundError):
  """A file or folder the user named (weights, images, a workdir) is absent."""


class CheckpointError(GzjaxError, ValueError):
  """A checkpoint that cannot be restored: damaged or of another model."""


class MissingCheckpointError(GzjaxError, FileNotFoundError):
  """No checkpoint where one was asked for (no workdir, no such step)."""


class WorkdirError(GzjaxError, OSError):
  """A workdir that cannot be created or written."""
