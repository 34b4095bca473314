"""Command-line flags that name files or folders, with ``~`` as the home folder.

A shell expands ``~`` only at the start of a word (and after an assignment's
``=``), so ``--workdir=~/runs/spiral`` reaches the program with the ``~`` in
it: a plain string flag would make a folder called ``~`` in the current
directory, while the config's paths (``config.data_dir``,
``config.model.pretrained``) are read as the home folder.  Every path flag of
``gzjax.main`` and the gzjax tools is defined here, so ``~`` means the same
everywhere.
"""

from __future__ import annotations

import os

from absl import flags


class _PathParser(flags.ArgumentParser):
  """Parses a path: ``~`` and ``~user`` expanded, nothing else changed."""

  syntactic_help = 'a path (~ is the home folder)'

  def parse(self, argument):
    if isinstance(argument, str):
      return os.path.expanduser(argument)
    return argument

  def flag_type(self) -> str:
    return 'string'


class _PathListParser(flags.ListParser):
  """Parses a comma-separated list of paths, each as :class:`_PathParser`;
  empty entries (``a,`` or ``a,,b``) are dropped: read as paths they would
  be the current folder, which an ensemble then averaged in silently."""

  syntactic_help = 'a comma-separated list of paths (~ is the home folder)'

  def parse(self, argument):
    return [os.path.expanduser(path) for path in super().parse(argument)
            if path.strip()]


def DEFINE_path(  # pylint: disable=invalid-name
    name: str, default: str | None, help_text: str, **kwargs
) -> flags.FlagHolder:
  """A string flag naming a file or folder (``~`` expanded)."""
  return flags.DEFINE(_PathParser(), name, default, help_text, **kwargs)


def DEFINE_path_list(  # pylint: disable=invalid-name
    name: str, default: list[str], help_text: str, **kwargs
) -> flags.FlagHolder:
  """A comma-separated list flag of files or folders (``~`` expanded)."""
  return flags.DEFINE(_PathListParser(), name, default, help_text,
                      serializer=flags.CsvListSerializer(','), **kwargs)
