"""Starting multi-process JAX: one process per host (or several on one).

``initialize`` runs before anything touches a JAX backend.  It reads

* ``JAX_COORDINATOR_ADDRESS``: ``host:port`` of process 0's coordinator
  (read by ``jax.distributed.initialize`` itself);
* ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``: how many processes and which
  one this is.  JAX reads neither variable; where they are unset it detects
  them from a cluster it knows (SLURM, Open MPI, Kubernetes, Cloud TPU);
* ``JAX_LOCAL_DEVICE_IDS`` (optional, read by JAX): the accelerators this
  process drives, when a host runs one process per accelerator.

Collectives between processes on the CPU go through gloo (XLA's TCP
implementation); it is selected here unless ``JAX_CPU_COLLECTIVES_IMPLEMENTATION``
says otherwise (``mpi``), so that a CPU-only run, the localhost test
included, needs no flag.  Accelerators use their own collectives (NCCL, ICI)
whatever this setting is.
"""

from __future__ import annotations

import os
from typing import Mapping

import jax
from jax.experimental import multihost_utils
import numpy as np

from gzjax import errors

# The one mesh axis: batches are split along it, everything else replicated.
DATA_AXIS = 'data'


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D mesh with axis :data:`DATA_AXIS` over ``devices`` (default: every
  device of every process)."""
  devices = jax.devices() if devices is None else devices
  return jax.sharding.Mesh(np.array(devices), (DATA_AXIS,))


def wanted(flag: bool | None,
           environ: Mapping[str, str] = os.environ) -> bool:
  """Whether to start multi-process JAX: the flag, else whether the
  coordinator's address is in the environment."""
  if flag is not None:
    return flag
  return bool(environ.get('JAX_COORDINATOR_ADDRESS'))


_MEANINGS = {
    'JAX_NUM_PROCESSES': 'the number of processes',
    'JAX_PROCESS_ID': "this process's number, 0 to JAX_NUM_PROCESSES - 1",
}


def _int_variable(name: str, environ: Mapping[str, str]) -> int | None:
  value = environ.get(name)
  if value is None or value == '':
    return None
  try:
    return int(value)
  except ValueError:
    raise errors.ConfigError(
        f'{name}={value!r} is not an integer: set it to {_MEANINGS[name]},'
        ' or unset it on a cluster that JAX detects (SLURM, Open MPI,'
        ' Kubernetes, Cloud TPU).'
    ) from None


def initialize(environ: Mapping[str, str] = os.environ) -> None:
  """Selects CPU collectives and calls ``jax.distributed.initialize``.

  Raises:
    ValueError: naming a JAX_NUM_PROCESSES or JAX_PROCESS_ID that is not an
      integer (before anything is changed).
  """
  num_processes = _int_variable('JAX_NUM_PROCESSES', environ)
  process_id = _int_variable('JAX_PROCESS_ID', environ)
  if not environ.get('JAX_CPU_COLLECTIVES_IMPLEMENTATION'):
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(
      coordinator_address=environ.get('JAX_COORDINATOR_ADDRESS') or None,
      num_processes=num_processes, process_id=process_id)


def replicate(tree, sharding: jax.sharding.Sharding):
  """A pytree of this process's values as global arrays with ``sharding``.

  ``jax.device_put`` refuses a sharding over other processes' devices; each
  process here fills its own devices' shards from its copy, which must be
  the same on every process (parameters initialised from one seed).  Typed
  PRNG keys (flax's random streams) travel as their raw key data.  Within
  one process this is ``jax.device_put``.
  """
  if sharding.is_fully_addressable:
    return jax.device_put(tree, sharding)

  def place(value):
    if jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
      data = place(jax.random.key_data(value))
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(value))
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding,
                                        lambda index: host[index])
  return jax.tree.map(place, tree)


def gather_rows(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Every process's rows of host arrays, concatenated in process order.

  ``multihost_utils.process_allgather`` moves host arrays through JAX, which
  (without x64) turns int64 into int32: a galaxy id above 2**31 would come
  back wrapped, and every id as another dtype than one process returns.
  Here each array travels as its raw bytes and is viewed back, so values
  and dtypes are the ones each process held.
  """
  if jax.process_count() == 1:
    return {key: np.asarray(value) for key, value in arrays.items()}
  as_bytes = {}
  for key, value in arrays.items():
    value = np.ascontiguousarray(value)
    as_bytes[key] = value[..., None].view(np.uint8)
  gathered = multihost_utils.process_allgather(as_bytes, tiled=True)
  return {key: np.ascontiguousarray(gathered[key]).view(
              np.asarray(arrays[key]).dtype)[..., 0]
          for key in arrays}
