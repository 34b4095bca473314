"""Traced programs kept on disk, so that a later process does not trace them.

JAX's persistent compilation cache (:func:`gzjax.experiment.use_compilation_cache`)
keys on the lowered program, so a second process still traces and lowers a
step before it can look its executable up: on two CPU cores that is 2.6 s of
EfficientNet-B0's 4.2 s warm start and 7 s of B7's (BUILD.md, start-up).
:func:`jit` is ``jax.jit`` for the engine's steps that also keeps each lowered
program (``jax.export``, serialised) beside that cache, in
``<compilation cache>/gzjax_programs/``, under a key of everything that shapes
it:

* the caller's description: the config and the task (:func:`describe`);
* the arguments' tree, shapes, dtypes and shardings, the donated arguments and
  the output shardings;
* the source of every gzjax module, the versions of Python, jax, jaxlib,
  flax, optax and numpy, JAX's settings and the devices.

A later process whose key matches loads the program instead of tracing it;
any difference traces again, so an edited module or config never runs an old
program.  A program whose description cannot say what shapes it (a task of
your own, whose loss is Python code: :func:`describe` returns None) is never
kept, nor are programs of a multi-process run.  The process that writes a
program runs it as loaded from its bytes, as later ones do, so that XLA's
cache holds one executable for both.  A file that cannot be read is named in
a warning, traced again and replaced.  Clearing the folder is always safe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import json
import logging
import os
import pathlib
import pickle
import sys
from typing import Any, Callable, Sequence

import flax
import jax
import jaxlib
import ml_collections
import numpy as np
import optax

FOLDER = 'gzjax_programs'
_MAGIC = b'gzjax-program 1\n'
HIT_EVENT = '/gzjax/programs/hit'
"""Recorded (``jax.monitoring``) each time a kept program is loaded."""

# JAX settings that do not change what a function traces to.
_UNRELATED_SETTINGS = ('cache', 'log', 'explain', 'traceback')


def describe(config: ml_collections.ConfigDict, task, *extra) -> str | None:
  """The caller's part of a program's key: the whole config, the task's
  fields and ``extra`` (reprs); None for a task with code of its own (a
  loss, activation...), whose closure no description captures."""
  fields = dataclasses.asdict(task) if dataclasses.is_dataclass(task) else {}
  if any(callable(value) for value in fields.values()):
    return None
  return json.dumps([config.to_json_best_effort(sort_keys=True),
                     repr(sorted(fields.items())), [repr(e) for e in extra]])


@functools.cache
def _code_digest() -> str:
  """sha256 of every module of the gzjax package (paths and bytes)."""
  digest = hashlib.sha256()
  package = pathlib.Path(__file__).resolve().parent
  for path in sorted(package.rglob('*.py')):
    digest.update(str(path.relative_to(package)).encode() + b'\0')
    digest.update(path.read_bytes() + b'\0')
  return digest.hexdigest()


def _environment() -> list:
  settings = sorted(
      (name, repr(value)) for name, value in jax.config.values.items()
      if not any(word in name for word in _UNRELATED_SETTINGS))
  devices = [(d.platform, d.device_kind, d.id, d.process_index)
             for d in jax.devices()]
  return [sys.version, jax.__version__, jaxlib.__version__, flax.__version__,
          optax.__version__, np.__version__, _code_digest(), settings,
          devices]


@functools.cache
def _can_serialise() -> bool:
  """jax.export serialises with flatbuffers, a dependency of gzjax's that an
  offline machine's own Python may lack: then nothing is kept (once said)."""
  if importlib.util.find_spec('flatbuffers') is None:
    logging.warning('Traced programs are not kept for later processes:'
                    ' jax.export needs flatbuffers (pip install flatbuffers).')
    return False
  return True


def _spread(prefix, tree) -> list:
  """A sharding for each leaf of ``tree``, from one per subtree of
  ``prefix`` (a sharding for every argument, as ``jax.jit`` takes them)."""
  shardings = []
  jax.tree.map(lambda sharding, subtree: shardings.extend(
      [sharding] * len(jax.tree.leaves(subtree))), prefix, tree,
               is_leaf=lambda x: x is None)
  return shardings


@dataclasses.dataclass
class _Loaded:
  """A kept program, ready to run: leaves in, leaves out."""

  call: Callable
  out_tree: Any


class Program:
  """``jax.jit(fun, ...)`` whose lowered program is kept between processes.

  Call it, ``lower`` or ``compile`` it with the arguments (or their
  ``jax.ShapeDtypeStruct``s) as the jitted function; ``in_shardings`` has one
  sharding per positional argument.  With the persistent compilation cache
  off, or without a ``key``, it is the plain ``jax.jit``.
  """

  def __init__(self, fun: Callable, *, name: str, key: str | None,
               in_shardings: Sequence[jax.sharding.Sharding],
               out_shardings: Any, donate_argnums: Sequence[int] = ()):
    self.name = name
    self.jitted = jax.jit(fun, in_shardings=tuple(in_shardings),
                          out_shardings=out_shardings,
                          donate_argnums=tuple(donate_argnums))
    self._key = key
    self._in_shardings = tuple(in_shardings)
    self._out_shardings = out_shardings
    self._donate_argnums = tuple(donate_argnums)
    self._loaded: dict[Any, _Loaded] = {}

  def folder(self) -> pathlib.Path | None:
    """Where this program is kept; None when it is not."""
    if (self._key is None or jax.process_count() > 1
        or not jax.config.jax_enable_compilation_cache
        or not jax.config.jax_compilation_cache_dir
        or not _can_serialise()):
      return None
    return pathlib.Path(jax.config.jax_compilation_cache_dir) / FOLDER

  def __call__(self, *args):
    loaded, leaves = self._get(args)
    if loaded is None:
      return self.jitted(*args)
    return jax.tree.unflatten(loaded.out_tree, loaded.call(*leaves))

  def lower(self, *args) -> jax.stages.Lowered:
    """The program that runs for these arguments, lowered: for its cost
    and memory analyses and text (a kept program takes the leaves)."""
    loaded, leaves = self._get(args)
    if loaded is None:
      return self.jitted.lower(*args)
    return loaded.call.lower(*leaves)

  def compile(self, *args) -> Callable:
    """Compiled ahead of the first call: a callable of the same arguments."""
    loaded, leaves = self._get(args)
    if loaded is None:
      return self.jitted.lower(*args).compile()
    compiled = loaded.call.lower(*leaves).compile()
    return lambda *args: jax.tree.unflatten(
        loaded.out_tree, compiled(*jax.tree.leaves(args)))

  # ------------------------------------------------------------------

  def _get(self, args) -> tuple[_Loaded | None, list]:
    """The kept program for these arguments (None: run the plain jit) and
    the arguments' leaves."""
    folder = self.folder()
    if folder is None:
      return None, []
    leaves, tree = jax.tree.flatten(args)
    signature = (tree, tuple((np.shape(x), str(x.dtype)) for x in leaves))
    if signature not in self._loaded:
      self._loaded[signature] = self._load_or_trace(folder, args, tree)
    return self._loaded[signature], leaves

  def _specs(self, args, tree):
    """Each leaf as a ShapeDtypeStruct on its sharding; the donated leaves."""
    specs, donated = [], []
    for index, (arg, sharding) in enumerate(zip(args, self._in_shardings)):
      for leaf in jax.tree.leaves(arg):
        if index in self._donate_argnums:
          donated.append(len(specs))
        specs.append(jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype,
                                          sharding=sharding))
    return specs, tuple(donated)

  def _path(self, folder, tree, specs, donated) -> pathlib.Path:
    key = json.dumps([
        _MAGIC.decode(), self.name, self._key, repr(tree),
        [(s.shape, str(s.dtype), repr(s.sharding)) for s in specs],
        donated, repr(self._out_shardings), _environment()])
    digest = hashlib.sha256(key.encode()).hexdigest()[:40]
    return folder / f'{self.name}-{digest}.program'

  def _load_or_trace(self, folder, args, tree) -> _Loaded | None:
    specs, donated = self._specs(args, tree)
    path = self._path(folder, tree, specs, donated)
    if path.is_file():
      try:
        loaded = self._from_bytes(path.read_bytes(), donated)
      except Exception as error:  # pylint: disable=broad-except
        logging.warning(
            'Ignoring the kept program %s (%s: %s): tracing %s again and'
            ' replacing it.', path, type(error).__name__, error, self.name)
      else:
        jax.monitoring.record_event(HIT_EVENT)
        logging.info('Loaded the traced %s from %s', self.name, path)
        return loaded
    try:
      data = self._export(args, specs, donated)
    except Exception as error:  # pylint: disable=broad-except
      # A program jax.export cannot serialise (a host callback...) runs as
      # the plain jit; it is not kept.
      logging.warning('Not keeping the traced %s (%s: %s).', self.name,
                      type(error).__name__, error)
      return None
    _write(path, data)
    return self._from_bytes(data, donated)

  def _export(self, args, specs, donated) -> bytes:
    traced = self.jitted.trace(*args)
    out_info = traced.out_info
    tree = jax.tree.structure(args)

    def flat(*leaves):
      return tuple(jax.tree.leaves(
          self.jitted(*jax.tree.unflatten(tree, leaves))))

    flat_jitted = jax.jit(
        flat, in_shardings=tuple(s.sharding for s in specs),
        out_shardings=tuple(_spread(self._out_shardings, out_info)),
        donate_argnums=donated)
    exported = jax.export.export(flat_jitted)(*specs)
    header = pickle.dumps(jax.tree.structure(out_info))
    body = (len(header).to_bytes(8, 'little') + header
            + bytes(exported.serialize()))
    return _MAGIC + hashlib.sha256(body).digest() + body

  def _from_bytes(self, data: bytes, donated) -> _Loaded:
    """The program of a file's bytes: the magic line, the sha256 of the
    rest (a truncated or altered file is refused here, not when XLA reads
    it), the output tree (pickled), the serialised ``jax.export``."""
    if not data.startswith(_MAGIC):
      raise ValueError('not a gzjax program file')
    digest, body = data[len(_MAGIC):len(_MAGIC) + 32], data[len(_MAGIC) + 32:]
    if hashlib.sha256(body).digest() != digest:
      raise ValueError('its contents do not match their checksum')
    size = int.from_bytes(body[:8], 'little')
    out_tree = pickle.loads(body[8:8 + size])
    exported = jax.export.deserialize(bytearray(body[8 + size:]))
    call = jax.jit(lambda *leaves: exported.call(*leaves),
                   donate_argnums=donated)
    return _Loaded(call, out_tree)


def _write(path: pathlib.Path, data: bytes) -> None:
  """Atomically (another process may be reading or writing the same key);
  an unwritable folder leaves the program unkept, with a warning."""
  partial = path.with_name(f'.{path.name}.{os.getpid()}.partial')
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(data)
    os.replace(partial, path)
  except OSError as error:
    with contextlib.suppress(OSError):  # No half-written file left.
      partial.unlink(missing_ok=True)
    logging.warning('Cannot keep the traced program in %s (%s); later'
                    ' processes will trace it again.', path.parent,
                    error.strerror)


def jit(fun: Callable, *, name: str, key: str | None,
        in_shardings: Sequence[jax.sharding.Sharding], out_shardings: Any,
        donate_argnums: Sequence[int] = ()) -> Program:
  """``jax.jit`` with the lowered program kept for later processes
  (:class:`Program`); ``key`` from :func:`describe`."""
  return Program(fun, name=name, key=key, in_shardings=in_shardings,
                 out_shardings=out_shardings, donate_argnums=donate_argnums)
