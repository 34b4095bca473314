"""Pretrained weights: strict assignment into a model, and their file format.

Converters (Keras ``.h5`` / ``.weights.h5`` for InceptionV3 and EfficientNet,
PyTorch state dicts for EfficientNet-Lite) turn a foreign model into a flat
mapping from our parameter paths (``'backbone/stem/conv/kernel'``) to numpy
arrays; :func:`assign` puts it into a model and refuses anything that does not
match: every missing, unexpected or mis-shaped tensor is listed.  The mapping
is stored as one msgpack file (written atomically), which configs point at.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Mapping

from flax import nnx
from flax import serialization
import jax
import numpy as np

from gzjax import errors


class WeightMismatchError(errors.GzjaxError, ValueError):
  """Pretrained weights that do not fit the architecture."""


_WEIGHTS = nnx.Any(nnx.Param, nnx.BatchStat)


def _flat_variables(model: nnx.Module):
  return nnx.to_flat_state(nnx.state(model, _WEIGHTS))


def _name(path) -> str:
  """A variable's name in weight files: ``backbone/…/kernel``."""
  return '/'.join(map(str, path))


def named_variables(model: nnx.Module, prefix: str = '') -> dict[str, jax.Array]:
  """``{'backbone/…/kernel': value}`` for parameters and batch statistics."""
  named = {}
  for path, variable in _flat_variables(model):
    name = _name(path)
    if name.startswith(prefix):
      named[name] = variable.get_value()
  return named


def assigned(tree: Any, arrays: Mapping[str, Any]) -> list[bool]:
  """For each leaf of ``tree`` (nnx.States, e.g. a model's ``(params,
  rest)``; flat, in ``jax.tree`` order), whether :func:`assign` with
  ``arrays`` writes it: the parameters and batch statistics that ``arrays``
  names (``assign`` refuses arrays that do not fit them all)."""
  leaves, treedef = jax.tree.flatten(tree)
  numbered = jax.tree.unflatten(treedef, range(len(leaves)))
  written = set()
  for state in jax.tree.leaves(numbered, is_leaf=lambda x: isinstance(
      x, nnx.State)):
    for path, variable in nnx.to_flat_state(nnx.filter_state(state,
                                                             _WEIGHTS)):
      if _name(path) in arrays:
        written.add(variable.get_value())
  return [index in written for index in range(len(leaves))]


def assign(
    model: nnx.Module,
    arrays: Mapping[str, np.ndarray],
    *,
    prefix: str = 'backbone/',
    source: str = 'the weights',
) -> None:
  """Copies ``arrays`` into the model's variables under ``prefix``, strictly.

  Raises:
    WeightMismatchError: listing the model's variables that ``arrays`` lacks,
      the arrays the model has no place for, and the shapes that differ.
  """
  expected = named_variables(model, prefix)
  missing = sorted(set(expected) - set(arrays))
  extra = sorted(set(arrays) - set(expected))
  misshaped = sorted(
      f'{name}: model {tuple(expected[name].shape)}, file'
      f' {tuple(np.shape(arrays[name]))}'
      for name in set(expected) & set(arrays)
      if tuple(expected[name].shape) != tuple(np.shape(arrays[name]))
  )
  if missing or extra or misshaped:
    parts = [f'{source} do not match {type(model).__name__}'
             f' ({getattr(model, "name", "")}):']
    for title, items in (('missing', missing), ('unexpected', extra),
                         ('mis-shaped', misshaped)):
      if items:
        shown = '\n    '.join(items[:15])
        more = f'\n    … and {len(items) - 15} more' if len(items) > 15 else ''
        parts.append(f'  {len(items)} {title}:\n    {shown}{more}')
    raise WeightMismatchError('\n'.join(parts))
  flat = _flat_variables(model)
  for path, variable in flat:
    name = _name(path)
    if name in arrays:
      dtype = variable.get_value().dtype
      value = arrays[name]
      # Under jit (gzjax.experiment.create_experiment) the arrays are tracers.
      variable.set_value(value.astype(dtype) if isinstance(value, jax.Array)
                         else np.asarray(value, dtype))
  nnx.update(model, nnx.from_flat_state(flat))


def encode(arrays: Mapping[str, np.ndarray]) -> bytes:
  """The mapping as the bytes of a weight file (msgpack), for a caller that
  writes them itself (``gzjax.tools.export_encoder``, through the checks of
  ``gzjax.predict.write_output``)."""
  return serialization.msgpack_serialize(
      {name: np.asarray(value) for name, value in arrays.items()}
  )


def save(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
  """Writes the mapping as msgpack, atomically (temporary file, rename)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = path.with_name(path.name + '.tmp')
  temporary.write_bytes(encode(arrays))
  os.replace(temporary, path)


def load(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a mapping written by :func:`save`."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise errors.MissingFileError(
        f'No weight file at {path}; convert one with'
        ' python -m gzjax.tools.convert_weights.'
    )
  try:
    return dict(serialization.msgpack_restore(path.read_bytes()))
  except Exception as e:  # msgpack raises several types.  pylint: disable=broad-except
    raise WeightMismatchError(
        f'{path} is not a gzjax weight file ({type(e).__name__}: {e}).'
    ) from None


# An encoder file (python -m gzjax.tools.export_encoder) records the
# preprocessing its backbone was trained with under this key.
PREPROCESSING_KEY = '__preprocessing__'


def encode_preprocessing(preprocessing: Mapping) -> np.ndarray:
  return np.frombuffer(json.dumps(dict(preprocessing)).encode(), np.uint8)


def preprocessing_of(config) -> dict:
  """What a backbone trained with ``config`` expects of its input."""
  return {
      'model': config.model.name,
      'image_size': int(config.input.image_size),
      'crop_size': int(config.input.crop_size),
      'normalization_mean': [float(v) for v in
                             config.input.normalization.mean],
      'normalization_std': [float(v) for v in config.input.normalization.std],
  }


def check_preprocessing(recorded: np.ndarray | None, config,
                        source: str) -> None:
  """Raises WeightMismatchError when ``config`` preprocesses differently from
  what the encoder recorded (a silent mismatch only transfers worse)."""
  if recorded is None:
    return
  expected = json.loads(np.asarray(recorded, np.uint8).tobytes().decode())
  actual = preprocessing_of(config)
  keys = {'model': 'model.name', 'image_size': 'input.image_size',
          'crop_size': 'input.crop_size',
          'normalization_mean': 'input.normalization.mean',
          'normalization_std': 'input.normalization.std'}
  for key, setting in keys.items():
    if key not in expected:
      continue
    same = (np.allclose(expected[key], actual[key], atol=1e-6)
            if key.startswith('normalization') else expected[key] == actual[key])
    if not same:
      raise WeightMismatchError(
          f'{source} is an encoder trained with {setting}={expected[key]!r}'
          f' but the config has {actual[key]!r}; set'
          f' --config.{setting} to the encoder\'s value.')
