"""Traced programs kept on disk, so that a later process does not trace them.

JAX's persistent compilation cache (:func:`gzjax.experiment.use_compilation_cache`)
keys on the lowered program, so a second process still traces and lowers a
step before it can look its executable up: on two CPU cores that is 2.4 s of
EfficientNet-B0's 4.2 s warm start and 7 s of B7's (BUILD.md, start-up).
:func:`jit` is ``jax.jit`` for the engine's steps that also keeps each lowered
program (``jax.export``, serialised) beside that cache, in
``<compilation cache>/gzjax_programs/``, under a key of everything that shapes
it:

* the caller's description: every config field and the task
  (:func:`describe`);
* the arguments' tree, shapes, dtypes and weak types, their shardings and the
  devices those lie on, the donated arguments and the output shardings;
* the source of every gzjax module, the versions of Python, jax, jaxlib,
  flax, optax and numpy, JAX's and flax's settings and the devices.

A later process whose key matches loads the program instead of tracing it;
any difference traces again, so an edited module or config never runs an old
program.  A program whose description cannot say what shapes it (a task of
your own, whose loss is Python code: :func:`describe` returns None) is never
kept, nor are programs of a multi-process run.  Every process runs the kept
program through the same small jit (the exported call), so that XLA's cache
holds one executable for the process that wrote it and those that read it;
calls dispatch in C++ as a plain ``jax.jit``'s do.  A file that cannot be read
is named in a warning, traced again and replaced.  Clearing the folder is
always safe.  Like XLA's cache, the folder must be trusted: its files hold a
pickled tree structure (a checksum guards against damage, not against
tampering).

What it costs: the first process exports the program (its portable StableHLO
serialisation took 0.35 s for B0, 4 s for B7); measured in BUILD.md.
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
import tempfile
from typing import Any, Callable, Sequence

import flax
import jax
import jaxlib
import ml_collections
import numpy as np
import optax

from gzjax import heap

FOLDER = 'gzjax_programs'
_MAGIC = b'gzjax-program 1\n'
HIT_EVENT = '/gzjax/programs/hit'
"""Recorded (``jax.monitoring``) each time a kept program is loaded."""

_PACKAGE = pathlib.Path(__file__).resolve().parent


def _is_cache_setting(name: str) -> bool:
  """JAX settings that say where compiled programs are kept, not what a
  function traces to (gzjax sets them itself)."""
  return ('compilation_cache' in name or 'persistent_cache' in name)


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
def _code_digest(package: pathlib.Path = _PACKAGE) -> str:
  """sha256 of every module of the gzjax package (paths and bytes)."""
  digest = hashlib.sha256()
  for path in sorted(package.rglob('*.py')):
    digest.update(str(path.relative_to(package)).encode() + b'\0')
    digest.update(path.read_bytes() + b'\0')
  return digest.hexdigest()


def _environment() -> list:
  jax_settings = sorted(
      (name, repr(value)) for name, value in jax.config.values.items()
      if not _is_cache_setting(name))
  flax_settings = sorted(
      (name, repr(getattr(flax.config, name))) for name in dir(flax.config)
      if name.startswith(('flax_', 'nnx_')))
  devices = [(d.platform, d.device_kind, d.id, d.process_index)
             for d in jax.devices()]
  return [sys.version, jax.__version__, jaxlib.__version__, flax.__version__,
          optax.__version__, np.__version__, _code_digest(), jax_settings,
          flax_settings, devices]


def _placement(sharding) -> list:
  """A sharding as text and the devices it lies on, in order (a
  NamedSharding's text names only its mesh's axis sizes)."""
  if sharding is None:
    return [None]
  mesh = getattr(sharding, 'mesh', None)
  devices = (list(mesh.devices.flat) if mesh is not None
             and hasattr(mesh, 'devices') else
             sorted(sharding.device_set, key=lambda d: d.id))
  return [repr(sharding), [(d.platform, d.id) for d in devices]]


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
class _Kept:
  """A kept program: ``jax.export``'s, and the tree of its outputs."""

  exported: Any
  out_tree: Any


class Program:
  """``jax.jit(fun, ...)`` whose lowered program is kept between processes.

  Call or ``lower`` it as the jitted function (``jitted``);
  ``in_shardings`` has one sharding per positional argument.  With the
  persistent compilation cache off, or without a ``key``, it is the plain
  ``jax.jit``.  Whether programs are kept is decided at the first call.
  """

  def __init__(self, fun: Callable, *, name: str, key: str | None,
               in_shardings: Sequence[jax.sharding.Sharding],
               out_shardings: Any, donate_argnums: Sequence[int] = ()):
    self.name = name
    options = dict(in_shardings=tuple(in_shardings),
                   out_shardings=out_shardings,
                   donate_argnums=tuple(donate_argnums))
    self.jitted = jax.jit(fun, **options)
    # The same arguments and results; its trace loads (or exports) the kept
    # program for the arguments' shapes and calls it.
    self._kept = jax.jit(self._call_kept, **options)
    self._key = key
    self._in_shardings = tuple(in_shardings)
    self._out_shardings = out_shardings
    self._donate_argnums = tuple(donate_argnums)
    self._chosen: Callable | None = None

  def folder(self) -> pathlib.Path | None:
    """Where this program is kept; None when it is not."""
    if (self._key is None or jax.process_count() > 1
        or not jax.config.jax_enable_compilation_cache
        or not jax.config.jax_compilation_cache_dir
        or not _can_serialise()):
      return None
    return pathlib.Path(jax.config.jax_compilation_cache_dir) / FOLDER

  def _choice(self) -> Callable:
    if self._chosen is None:
      self._chosen = self.jitted if self.folder() is None else self._kept
    return self._chosen

  def __call__(self, *args):
    if self._chosen is None:  # The first call traces (a step's later ones
      with heap.frozen():     # must not pay for the freeze).
        return self._choice()(*args)
    return self._chosen(*args)

  def lower(self, *args) -> jax.stages.Lowered:
    """The program that runs for these arguments, lowered (``.compile()``,
    ``.cost_analysis()``): a kept one is the call of the exported step."""
    with heap.frozen():
      return self._choice().lower(*args)

  # ------------------------------------------------------------------

  def _call_kept(self, *args):
    """Traced once per argument shapes: the kept program's call."""
    folder = self.folder()  # None if the cache was turned off since.
    leaves, tree = jax.tree.flatten(args)
    specs, donated = self._specs(args)
    kept = (None if folder is None
            else self._load_or_export(folder, tree, specs, donated))
    if kept is None:
      return self.jitted(*args)
    return jax.tree.unflatten(kept.out_tree, kept.exported.call(*leaves))

  def _specs(self, args):
    """Each leaf as a ShapeDtypeStruct on its argument's sharding; the
    indices of the donated leaves."""
    specs, donated = [], []
    for index, (arg, sharding) in enumerate(zip(args, self._in_shardings)):
      for leaf in jax.tree.leaves(arg):
        if index in self._donate_argnums:
          donated.append(len(specs))
        aval = jax.typeof(leaf)
        specs.append(jax.ShapeDtypeStruct(aval.shape, aval.dtype,
                                          sharding=sharding,
                                          weak_type=aval.weak_type))
    return specs, tuple(donated)

  def _path(self, folder, tree, specs, donated) -> pathlib.Path:
    key = json.dumps([
        _MAGIC.decode(), self.name, self._key, repr(tree),
        [(s.shape, str(s.dtype), s.weak_type) for s in specs],
        [_placement(s) for s in self._in_shardings], donated,
        jax.tree.map(_placement, self._out_shardings,
                     is_leaf=lambda x: x is None),
        _environment()])
    digest = hashlib.sha256(key.encode()).hexdigest()[:40]
    return folder / f'{self.name}-{digest}.program'

  def _load_or_export(self, folder, tree, specs, donated) -> _Kept | None:
    path = self._path(folder, tree, specs, donated)
    try:
      if path.is_file():
        kept = _from_bytes(path.read_bytes())
        jax.monitoring.record_event(HIT_EVENT)
        logging.info('Loaded the traced %s from %s', self.name, path)
        return kept
    except Exception as error:  # pylint: disable=broad-except
      logging.warning(
          'Ignoring the kept program %s (%s: %s): tracing %s again and'
          ' replacing it.', path, type(error).__name__, error, self.name)
    args = jax.tree.unflatten(tree, specs)
    # The function's own errors (a batch too small for the model...) are
    # raised here, once, as the plain jit raises them.
    out_info = self.jitted.trace(*args).out_info
    try:
      data = self._export(tree, specs, donated, out_info)
      kept = _from_bytes(data)
    except Exception as error:  # pylint: disable=broad-except
      # A program jax.export cannot serialise (a host callback...) runs as
      # the plain jit; it is not kept.
      logging.warning('Not keeping the traced %s (%s: %s).', self.name,
                      type(error).__name__, error)
      return None
    _write(path, data)
    return kept

  def _export(self, tree, specs, donated, out_info) -> bytes:

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


def _from_bytes(data: bytes) -> _Kept:
  """The program of a file's bytes: the magic line, the sha256 of the rest
  (a truncated or altered file is refused here, not when XLA reads it), the
  output tree (pickled), the serialised ``jax.export``."""
  if not data.startswith(_MAGIC):
    raise ValueError('not a gzjax program file')
  digest, body = data[len(_MAGIC):len(_MAGIC) + 32], data[len(_MAGIC) + 32:]
  if hashlib.sha256(body).digest() != digest:
    raise ValueError('its contents do not match their checksum')
  size = int.from_bytes(body[:8], 'little')
  return _Kept(jax.export.deserialize(bytearray(body[8 + size:])),
               pickle.loads(body[8:8 + size]))


def _write(path: pathlib.Path, data: bytes) -> None:
  """Atomically (another process, here or on another host sharing the
  folder, may be reading or writing the same key); an unwritable folder
  leaves the program unkept, with a warning."""
  partial = None
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.',
                                       suffix='.partial')
    with os.fdopen(handle, 'wb') as file:
      file.write(data)
    os.chmod(partial, 0o644)  # mkstemp's 0600 would hide it from others.
    os.replace(partial, path)
  except OSError as error:
    if partial is not None:
      with contextlib.suppress(OSError):  # No half-written file left.
        os.unlink(partial)
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
