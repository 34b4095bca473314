r"""Converts pretrained weights from Keras or PyTorch into a gzjax weight file.

    python -m gzjax.tools.convert_weights --model=efficientnet_b0 \
        --source=efficientnetb0_notop.h5 --out=weights/efficientnet_b0.msgpack

Sources:

* ``inception_v3``, ``efficientnet_b0`` … ``b7``: a Keras weight file
  (``.h5`` or ``.weights.h5``) of the model without top.  It is loaded into
  ``keras.applications.<Model>(include_top=False, weights=None)`` on Keras's
  JAX backend (no TensorFlow needed) and converted from there.
* ``efficientnet_lite0`` … ``lite4``: a PyTorch state dict (``.pth``/``.pt``)
  in the ``efficientnet_lite_pytorch`` layout, read with ``torch.load``.

The converted arrays are assigned to a freshly built model before anything is
written, so a file of another architecture or size fails with the list of
missing, unexpected and mis-shaped tensors instead of making a weight file
that breaks later.  Failures print one clear message and exit with status 2.
"""

from __future__ import annotations

import importlib
import os
import pathlib
import sys
import warnings

from absl import app
from absl import flags

from gzjax import models
from gzjax import path_flags
from gzjax.models import weights

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The command line's flags: defined only when run as a program, so that
  a tool importing :func:`convert` can define its own ``--out``."""
  flags.DEFINE_string('model', None, 'Model name, e.g. efficientnet_b0.')
  path_flags.DEFINE_path('source', None, 'Keras .h5 or PyTorch .pth file.')
  path_flags.DEFINE_path('out', None, 'Where to write the .msgpack file.')
  flags.mark_flags_as_required(['model', 'source', 'out'])


# Model name -> the keras.applications constructor of that architecture.
_KERAS_APPLICATIONS = {
    'inception_v3': 'InceptionV3',
    **{f'efficientnet_b{i}': f'EfficientNetB{i}' for i in range(8)},
}

_MAX_REASON = 300


def _reason(error: Exception) -> str:
  """A library's error message on one line, cut short.

  Keras's and torch's messages can run to whole arrays and advice pages.
  """
  text = ' '.join(str(error).split())
  if len(text) > _MAX_REASON:
    text = text[:_MAX_REASON] + ' …'
  return f'{type(error).__name__}: {text}'


def _converter_module(model_name: str):
  """The gzjax module that defines the model's from_keras / from_torch."""
  return importlib.import_module(models.backbone_class(model_name).__module__)


def _read_keras(model_name: str, source: pathlib.Path) -> dict:
  os.environ.setdefault('KERAS_BACKEND', 'jax')
  import keras  # pylint: disable=g-import-not-at-top

  application = getattr(keras.applications, _KERAS_APPLICATIONS[model_name])
  keras_model = application(include_top=False, weights=None)
  try:
    with warnings.catch_warnings():  # Keras warns about file layout versions.
      warnings.simplefilter('ignore')
      keras_model.load_weights(source)
  except Exception as error:  # Keras and h5py raise many types.  pylint: disable=broad-except
    raise ValueError(
        f'{source} does not load into Keras {application.__name__}'
        f'(include_top=False): {_reason(error)}'
    ) from None
  return _converter_module(model_name).from_keras(keras_model)


def _read_torch(model_name: str, source: pathlib.Path) -> dict:
  import torch  # pylint: disable=g-import-not-at-top

  try:
    state_dict = torch.load(source, map_location='cpu')
  except Exception as error:  # Pickle and zip errors of every kind.  pylint: disable=broad-except
    raise ValueError(
        f'{source} is not a PyTorch state dict: {_reason(error)}'
    ) from None
  if not isinstance(state_dict, dict):
    raise ValueError(
        f'{source} holds a {type(state_dict).__name__}, not a state dict.'
    )
  return _converter_module(model_name).from_torch(state_dict)


def convert(model_name: str, source: str | os.PathLike) -> dict:
  """Our ``'backbone/…'`` arrays from ``source``, checked against the model.

  Raises:
    ValueError: an unknown or unconvertible model name, or an unreadable file.
    FileNotFoundError: no file at ``source``.
    weights.WeightMismatchError: a file of another architecture or size.
  """
  models.backbone_class(model_name)  # Rejects unknown names.
  source = pathlib.Path(source)
  if not source.is_file():
    raise FileNotFoundError(f'No weight file at {source}.')
  if model_name in _KERAS_APPLICATIONS:
    arrays = _read_keras(model_name, source)
  elif model_name.startswith('efficientnet_lite'):
    arrays = _read_torch(model_name, source)
  else:
    raise ValueError(f'No pretrained weights to convert for {model_name}.')
  # Shapes are all the check needs: an abstract model costs no memory.
  weights.assign(models.abstract(model_name), arrays, source=str(source))
  return arrays


def main(argv):
  del argv  # No positional arguments.
  try:
    arrays = convert(FLAGS.model, FLAGS.source)
  except (weights.WeightMismatchError, FileNotFoundError, ValueError) as error:
    print(f'convert_weights: {error}', file=sys.stderr)
    sys.exit(2)
  weights.save(FLAGS.out, arrays)
  print(f'Wrote {len(arrays)} arrays for {FLAGS.model} to {FLAGS.out}.')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
