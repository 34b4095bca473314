"""A model's random initial state, made quickly: the initialisers' draws
pooled (one per distribution instead of one per parameter), and
:class:`CreationRngs`, whose counting does not grow quadratically with the
model.

Every flax initialiser draws its parameter on its own: one random-bit kernel
and one transform (``erf_inv`` for a truncated normal) per parameter, which
XLA compiles one by one.  That compile was most of a backbone's creation
time on a CPU (EfficientNet-B0: 14.5 of 16.4 s on 2 cores; BUILD.md,
start-up).  Here the model is built once, under a trace
(:func:`trace_once`), its initialisers' draws served as slices of a
stand-in vector in call order and recorded; a small program of their own
draws them once per distribution (:func:`draw_pools`), and the traced
program runs on those pools (:meth:`Traced.evaluate`): what is left per
parameter is a slice and a scale, trivial kernels that compile fast
unoptimised (:data:`INIT_COMPILER_OPTIONS`), and no module is built a
second time.  :func:`record` and :func:`pooled` do the same in two passes
(shapes, then values) for a model built eagerly, as the tests' reference.

The draws are intercepted where ``jax.nn.initializers`` (and flax's, which
are the same functions) call ``jax.random``: ``truncated_normal``,
``normal`` and ``uniform`` with constant bounds.  Any other call (bounds
that are arrays, a key-based transform of its own) is passed through to
jax unchanged, so an initialiser this module does not know still
initialises, only without pooling.  Only that module's view of
``jax.random`` changes, and only while a model is built here.

Each slice is a sample of the same distribution as the initialiser's own
draw, and slices are disjoint parts of one draw, so parameters stay
independent; the bits are not the ones the per-parameter keys would give.
The pools draw with jax's default (threefry) key, whose bits are the same
on every backend: one seed gives one model on CPU and GPU, up to the
rounding of the normal transforms (a few ulp).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import threading
import types
import zlib
from typing import Any, Callable, Iterator

from flax import nnx
import jax
import jax.extend.core
import jax.numpy as jnp
from jax._src import random as jax_random
from jax._src.interpreters import partial_eval
from jax._src.nn import initializers as jax_initializers
import numpy as np

# One interception at a time: the initialisers' module is process-global.
_LOCK = threading.RLock()


@dataclasses.dataclass(frozen=True)
class Draw:
  """One initialiser's draw: its distribution and the array it asked for."""
  kind: str  # 'truncated_normal', 'normal' or 'uniform'.
  bounds: tuple[float, ...]  # (lower, upper), (), (minval, maxval).
  shape: tuple[int, ...]
  dtype: np.dtype

  @property
  def size(self) -> int:
    return math.prod(self.shape)

  @property
  def distribution(self) -> tuple[str, tuple[float, ...], np.dtype]:
    return self.kind, self.bounds, self.dtype


@dataclasses.dataclass
class Plan:
  """The draws a model's creation makes, in call order."""
  draws: list[Draw | None] = dataclasses.field(default_factory=list)

  def distributions(self) -> dict[tuple, int]:
    """Each pooled distribution and how many numbers it serves."""
    totals: dict[tuple, int] = {}
    for draw in self.draws:
      if draw is not None:
        totals[draw.distribution] = (totals.get(draw.distribution, 0)
                                     + draw.size)
    return totals


def _constant(value) -> float | None:
  """A bound as a Python float, or None when it is an array (not poolable)."""
  if isinstance(value, (int, float, np.integer, np.floating)):
    return float(value)
  return None


def _poolable_key(key) -> bool:
  """A concrete key, or one traced by ``jit``/``eval_shape``.  Under another
  transformation (``vmap``: one call draws for a whole batch of keys) one
  slice would serve every key alike, so the call is passed through."""
  return (not isinstance(key, jax.core.Tracer)
          or isinstance(key, partial_eval.DynamicJaxprTracer))


# The intercepted jax.random functions: each one's arguments after the key,
# in order, and which of them bound its distribution.
_SIGNATURES = {
    'truncated_normal': (('lower', 'upper', 'shape', 'dtype'),
                         ('lower', 'upper')),
    'normal': (('shape', 'dtype'), ()),
    'uniform': (('shape', 'dtype', 'minval', 'maxval'), ('minval', 'maxval')),
}


def _describe(kind: str, args: tuple, kwargs: dict) -> Draw | None:
  """The draw a call ``jax.random.<kind>(key, *args, **kwargs)`` asks for, or
  None when it cannot be pooled."""
  key, *args = args
  names, bound_names = _SIGNATURES[kind]
  defaults = {'shape': None if kind == 'truncated_normal' else (),
              'dtype': None, 'minval': 0.0, 'maxval': 1.0}
  bound = dict(defaults, **dict(zip(names, args)), **kwargs)
  if (bound.get('out_sharding') is not None or bound['shape'] is None
      or not _poolable_key(key)):
    return None
  values = tuple(_constant(bound[name]) for name in bound_names)
  if any(value is None for value in values):
    return None
  dtype = bound['dtype']
  dtype = np.dtype(jax.dtypes.canonicalize_dtype(
      float if dtype is None else dtype))
  if not jnp.issubdtype(dtype, jnp.floating):
    return None
  shape = bound['shape']
  try:
    shape = (int(shape),) if np.ndim(shape) == 0 else tuple(map(int, shape))
  except (TypeError, ValueError):  # Not a shape: let jax say so.
    return None
  return Draw(kind, values, shape, dtype)


@contextlib.contextmanager
def _intercept(draw_fn: Callable[[str, Callable, tuple, dict], Any]):
  """Routes this thread's calls of ``jax.random.<kind>`` by the initialisers
  (``jax.nn.initializers``, flax's) to ``draw_fn(kind, real, args, kwargs)``."""
  with _LOCK:
    original = jax_initializers.random
    owner = threading.get_ident()
    view = types.SimpleNamespace(**{
        name: getattr(jax_random, name) for name in dir(jax_random)
        if not name.startswith('__')})

    def routed(kind, real):
      def call(*args, **kwargs):
        # The module is process-wide: other threads draw as jax does.
        if threading.get_ident() != owner:
          return real(*args, **kwargs)
        return draw_fn(kind, real, args, kwargs)
      return call

    for kind in _SIGNATURES:
      setattr(view, kind, routed(kind, getattr(jax_random, kind)))
    jax_initializers.random = view
    try:
      yield
    finally:
      jax_initializers.random = original


def _draw(kind: str, key: jax.Array, bounds: tuple[float, ...], size: int,
          dtype: np.dtype) -> jax.Array:
  """``size`` numbers of one distribution, as jax draws them."""
  return getattr(jax_random, kind)(key, shape=(size,), dtype=dtype,
                                   **dict(zip(_SIGNATURES[kind][1], bounds)))


@contextlib.contextmanager
def record() -> Iterator[Plan]:
  """Records the draws made inside (e.g. while ``nnx.eval_shape`` builds)."""
  plan = Plan()

  def draw(kind, real, args, kwargs):
    plan.draws.append(_describe(kind, args, kwargs))
    return real(*args, **kwargs)

  with _intercept(draw):
    yield plan


def _name(distribution: tuple[str, tuple[float, ...], np.dtype]) -> str:
  kind, bounds, dtype = distribution
  return f'{kind}{bounds}:{dtype.name}'


def _pooled_distributions(plan: Plan) -> list[tuple[tuple, int]]:
  """The plan's distributions and sizes, in the pools' (a fixed) order."""
  return sorted(plan.distributions().items(), key=lambda item: _name(item[0]))


def draw_pools(plan: Plan, seed_data: np.ndarray | jax.Array, *,
               unused: tuple[tuple, ...] = ()) -> list[jax.Array]:
  """One draw per distribution ``plan`` recorded, as :func:`pooled` takes
  them; zeros for the distributions in ``unused``, whose draws nothing
  keeps (:meth:`Traced.unused_distributions`: a pretrained backbone's).

  Each distribution's pool has its own key, ``fold_in(pool_key(seed),
  crc32(its name))``: a model that adds or drops a distribution (another
  head) leaves the others' pools, and so the backbone's weights, as they
  were.  ``seed_data`` is :func:`seed_data` (the seed as data, so that a
  caller that jits this function compiles it once for every seed).  Jitted
  apart from the program that slices them, the draws compile optimised
  (what :data:`INIT_COMPILER_OPTIONS` gives up for the rest): EfficientNet-
  B7's 66 M truncated normals run in 0.7 s instead of 3.2 s on 2 cores.
  """
  key = pool_key(seed_data)
  return [jnp.zeros((total,), dtype) if (kind, bounds, dtype) in unused else
          _draw(kind, jax.random.fold_in(key, zlib.crc32(
              _name((kind, bounds, dtype)).encode()) & 0x7FFFFFFF), bounds,
                total, dtype)
          for (kind, bounds, dtype), total in _pooled_distributions(plan)]


def _distributions_of(plan: Plan, pools: list[jax.Array]) -> list[tuple]:
  """The distributions of ``pools``, in order, which must be
  ``draw_pools(plan, ...)``."""
  distributions = [distribution for distribution, _ in
                   _pooled_distributions(plan)]
  if len(pools) != len(distributions):
    raise ValueError(f'{len(pools)} pools for the {len(distributions)}'
                     ' distributions of the plan: pass draw_pools(plan, ...).')
  return distributions


def pool_shapes(plan: Plan) -> list[jax.ShapeDtypeStruct]:
  """:func:`draw_pools`'s shapes and dtypes, without tracing it."""
  return [jax.ShapeDtypeStruct((total,), dtype)
          for (_, _, dtype), total in _pooled_distributions(plan)]


_SAME_MODEL_TWICE = (
    'pooled initialisation needs the same model built twice, calling its'
    ' initialisers in Python both times (an initialiser under its own jax.jit'
    ' is traced once and then cached).')


@contextlib.contextmanager
def pooled(plan: Plan, pools: list[jax.Array]) -> Iterator[None]:
  """Serves the draws ``plan`` recorded as slices of ``pools``, its
  :func:`draw_pools`.

  The calls inside must be the recorded ones, in the same order (the same
  model built again); a different call is a bug and raises.
  """
  offsets = {distribution: [pool, 0] for distribution, pool
             in zip(_distributions_of(plan, pools), pools)}
  calls = iter(plan.draws)
  end = 'no more draws'

  def draw(kind, real, args, kwargs):
    expected = next(calls, end)
    asked = _describe(kind, args, kwargs)
    if asked != expected:
      raise AssertionError(f'The model drew {asked} where its shape pass'
                           f' drew {expected}: {_SAME_MODEL_TWICE}')
    if asked is None:
      return real(*args, **kwargs)
    pool = offsets[asked.distribution]
    start = pool[1]
    pool[1] += asked.size
    return jax.lax.slice_in_dim(pool[0], start, pool[1]).reshape(asked.shape)

  with _intercept(draw):
    yield
  if next(calls, end) is not end:
    raise AssertionError('The model made fewer draws than its shape pass:'
                         f' {_SAME_MODEL_TWICE}')


def trace(build: Callable[[], Any]) -> tuple[Any, Plan]:
  """``nnx.eval_shape(build)`` (no values computed) and the draws it made."""
  with record() as plan:
    abstract = nnx.eval_shape(build)
  return abstract, plan


# The stand-in vectors :func:`trace_once` traces with, one per dtype whose
# draws it pools: their shapes only, never allocated, longer than any
# model's draws (EfficientNet-B7's are 6.3e7).
_STAND_IN_SIZE = 2**40


def _stand_in_dtypes() -> tuple[np.dtype, ...]:
  """The float dtypes :func:`trace_once` pools (float64 with x64 on, as
  :func:`pooled` would)."""
  dtypes = [jnp.float32, jnp.bfloat16, jnp.float16]
  if jax.config.jax_enable_x64:
    dtypes.append(jnp.float64)
  return tuple(map(np.dtype, dtypes))


@dataclasses.dataclass(frozen=True)
class Traced:
  """A model's creation traced once (:func:`trace_once`).

  ``plan``: the draws it made; ``aux``: what the build returned beside its
  arrays (a graphdef, labels); :meth:`evaluate` computes the arrays from
  ``draw_pools(plan, ...)``.
  """
  plan: Plan
  aux: Any
  _jaxpr: Any  # jax.extend.core.ClosedJaxpr: the draws in call order -> arrays.
  _tree: Any
  _dtypes: tuple[np.dtype, ...]  # Of the program's inputs, in order.

  @property
  def abstract(self) -> Any:
    """The build's arrays as ``jax.ShapeDtypeStruct``s."""
    return jax.tree.unflatten(self._tree, [
        jax.ShapeDtypeStruct(aval.shape, aval.dtype)
        for aval in self._jaxpr.out_avals])

  def evaluate(self, pools: list[jax.Array]) -> Any:
    """The build's arrays from :func:`draw_pools` of :attr:`plan`: the traced
    program run again (under the caller's ``jax.jit``), with the draws in
    call order cut from the pools, no module built.  (``jaxpr_as_fun`` runs
    it with ``jax_debug_nans`` off; initial values are checked by the first
    step's loss instead.)"""
    leaves = jax.extend.core.jaxpr_as_fun(self._jaxpr)(
        *_in_call_order(self.plan, pools, self._dtypes))
    return jax.tree.unflatten(self._tree, leaves)

  def unused_distributions(self, used: list[bool]) -> tuple[tuple, ...]:
    """The pooled distributions none of whose draws reach the build's arrays
    marked ``used`` (flat, in their leaf order), as
    :func:`draw_pools`'s ``unused``: with a pretrained backbone, the head
    alone keeps draws, and the backbone's pool need not be drawn
    (EfficientNet-B7's 63 M truncated normals: 0.8 s on 2 cores).

    Read from the traced program: the equations the used arrays depend on,
    and the slices of the draws among them.  Any other use of the draws
    counts as using all of them.
    """
    jaxpr = self._jaxpr.jaxpr
    inputs = dict(zip(jaxpr.invars, self._dtypes))
    live = {var for var, keep in zip(jaxpr.outvars, used, strict=True)
            if keep and isinstance(var, jax.extend.core.Var)}
    cut: dict[np.dtype, list[tuple[int, int]]] = {d: [] for d in self._dtypes}
    for eqn in reversed(jaxpr.eqns):
      if not any(var in live for var in eqn.outvars):
        continue
      for var in eqn.invars:
        if not isinstance(var, jax.extend.core.Var):
          continue
        if var in inputs:
          if eqn.primitive.name != 'slice':
            return ()
          cut[inputs[var]].append((eqn.params['start_indices'][0],
                                   eqn.params['limit_indices'][0]))
        live.add(var)
    needed = set()
    offsets = dict.fromkeys(self._dtypes, 0)
    for draw in self.plan.draws:
      if draw is None:
        continue
      start = offsets[draw.dtype]
      offsets[draw.dtype] += draw.size
      if any(a < start + draw.size and start < b for a, b in cut[draw.dtype]):
        needed.add(draw.distribution)
    return tuple(distribution for distribution, _ in
                 _pooled_distributions(self.plan) if distribution not in needed)


def _in_call_order(plan: Plan, pools: list[jax.Array],
                   dtypes: tuple[np.dtype, ...]) -> list[jax.Array]:
  """The pooled draws of ``plan`` as one vector per dtype of ``dtypes``, in
  call order: each draw the next slice of its distribution's pool, as
  :func:`pooled` serves them.  Consecutive draws of one distribution are one
  slice, so a model with a single distribution gets its pool as it is."""
  distributions = _distributions_of(plan, pools)
  runs: list[list] = []
  for draw in plan.draws:
    if draw is None:
      continue
    if runs and runs[-1][0] == draw.distribution:
      runs[-1][1] += draw.size
    else:
      runs.append([draw.distribution, draw.size])
  offsets = [0] * len(pools)
  parts = {dtype: [] for dtype in dtypes}
  for distribution, size in runs:
    index = distributions.index(distribution)
    parts[distribution[2]].append(jax.lax.slice_in_dim(
        pools[index], offsets[index], offsets[index] + size))
    offsets[index] += size
  return [jnp.zeros((0,), dtype) if not sliced else
          sliced[0] if len(sliced) == 1 else jnp.concatenate(sliced)
          for dtype, sliced in parts.items()]


def trace_once(build: Callable[[], tuple[Any, Any]]) -> Traced:
  """Traces ``build() -> (arrays, aux)`` once, as the model's shape pass and
  its state program in one.

  The initialisers' draws are served, while the one trace runs, as slices
  of a stand-in vector per dtype (its shape only) in call order, and
  recorded; :meth:`Traced.evaluate` then runs the recorded program on the
  real pools, which builds no module a second time (that rebuild was a
  fifth of EfficientNet-B7's creation: flax's checks as each module sets
  its fields).  Calls that :func:`pooled` would pass through are drawn as
  jax draws them, inside the program.
  """
  plan = Plan()
  dtypes = _stand_in_dtypes()
  seen: dict[str, Any] = {'offsets': dict.fromkeys(dtypes, 0)}

  def draw(kind, real, args, kwargs):
    asked = _describe(kind, args, kwargs)
    if asked is None or asked.dtype not in seen['offsets']:
      plan.draws.append(None)
      return real(*args, **kwargs)
    plan.draws.append(asked)
    start = seen['offsets'][asked.dtype]
    seen['offsets'][asked.dtype] += asked.size
    return jax.lax.slice_in_dim(seen['stand_ins'][asked.dtype], start,
                                start + asked.size).reshape(asked.shape)

  def traced(*stand_ins):
    seen['stand_ins'] = dict(zip(dtypes, stand_ins))
    with _intercept(draw):
      arrays, seen['aux'] = build()
    leaves, seen['tree'] = jax.tree.flatten(arrays)
    return leaves

  program = jax.jit(traced).trace(*(
      jax.ShapeDtypeStruct((_STAND_IN_SIZE,), dtype) for dtype in dtypes))
  # The program as it is run: its inputs as long as the draws it cuts.
  sized = _with_input_sizes(program.jaxpr, [seen['offsets'][dtype]
                                            for dtype in dtypes])
  return Traced(plan=plan, aux=seen['aux'], _jaxpr=sized, _tree=seen['tree'],
                _dtypes=dtypes)


def _with_input_sizes(closed, sizes: list[int]):
  """``closed`` (vector inputs -> outputs) with its inputs' lengths set to
  ``sizes``: the same equations (static slices within those lengths), so
  that it type-checks against the vectors :meth:`Traced.evaluate` passes."""
  jaxpr = closed.jaxpr
  swap = {
      old: jax.extend.core.Var(jax.core.ShapedArray((size,), old.aval.dtype))
      for old, size in zip(jaxpr.invars, sizes)}

  def renamed(atoms):
    return [swap.get(atom, atom) if isinstance(atom, jax.extend.core.Var)
            else atom for atom in atoms]

  return closed.replace(jaxpr=jaxpr.replace(
      invars=renamed(jaxpr.invars),
      eqns=[eqn.replace(invars=renamed(eqn.invars)) for eqn in jaxpr.eqns],
      outvars=renamed(jaxpr.outvars)))


class CreationRngs(nnx.Rngs):
  """``nnx.Rngs(seed)`` whose default stream counts in Python while a model
  is built: the same keys, without updating a traced counter per parameter
  (flax's check of each update asks the tracer for its sharding, which walks
  the whole trace: quadratic, 45 of EfficientNet-B7's 50 s of tracing).

  The initialisers' keys (``rngs.params()``, from the default stream) are
  still drawn in order, so every stream the model keeps (dropout's) is the
  one ``nnx.Rngs(seed)`` gives; the initialisers themselves draw from
  :func:`pool_key`'s pools (:func:`trace_once`, :func:`pooled`).
  """

  def __init__(self, seed: int):
    super().__init__(seed)
    self.default = _CountedStream(self.default.key.get_value(), tag='default')


class _CountedStream(nnx.RngStream):
  """An ``nnx.RngStream`` whose count is a Python int; ``fork`` (dropout's
  stream, kept in the model) is a plain ``RngStream``."""

  def __init__(self, key, *, tag: str):
    super().__init__(key, tag=tag)
    self.calls = 0

  def __call__(self) -> jax.Array:
    key = jax.random.fold_in(self.key.get_value(), self.calls)
    self.calls += 1
    return key

  def fork(self, *, split=None) -> nnx.RngStream:
    assert split is None, 'CreationRngs does not split streams.'
    return nnx.RngStream(self(), tag=self.tag)


# fold_in data of the initialisers' pools: far above any count of the default
# stream (fold_in(key(seed), n) for the n-th parameter), so no pool shares a
# key with a parameter's or dropout's stream.
_POOL_STREAM = 0x706F6F6C  # 'pool'


def seed_data(seed: int) -> np.ndarray:
  """``seed`` as the two 32-bit words of a threefry key, on the host: no
  program to compile, and every seed in [0, 2**32) gives the words
  ``jax.random.key(seed)`` has (``config_checks`` allows no others)."""
  seed = int(seed)
  if not 0 <= seed < 2**64:
    raise ValueError(f'seed={seed} is not in [0, 2**64).')
  return np.array([seed >> 32, seed & 0xFFFFFFFF], np.uint32)


def pool_key(seed: int | np.ndarray | jax.Array) -> jax.Array:
  """The key of the initialisers' pooled draws for ``seed`` (an int, or its
  :func:`seed_data`): jax's default (threefry) bits, the same on every
  backend."""
  if np.ndim(seed) == 0:
    seed = seed_data(seed)
  return jax.random.fold_in(
      jax.random.wrap_key_data(seed, impl='threefry2x32'), _POOL_STREAM)


# How the program that computes a model's state from its pools compiles, per
# platform.  On a CPU nearly all of its compile time is LLVM optimising
# hundreds of trivial kernels (a slice times a scale, a broadcast of zeros),
# each run once: unoptimised and without the fusion emitters, the state
# program of EfficientNet-B0 took 1.2 s instead of 2.4 s (compile and run, 2
# quiet cores), B7's 3.8 s instead of 6.6 s.  The pools' own program
# (:func:`draw_pools`) keeps XLA's defaults, as other platforms do (not
# measured there).
INIT_COMPILER_OPTIONS = {
    'cpu': {'xla_backend_optimization_level': 0,
            'xla_cpu_use_fusion_emitters': False},
}


def jit_programs(plan: Plan, build_state: Callable[..., Any], *,
                 platform: str, out_shardings: Any = None
                 ) -> tuple[Callable[[np.ndarray], list[jax.Array]],
                            Callable[..., Any]]:
  """A model's creation as two jitted programs: ``plan``'s pools from
  :func:`seed_data` (XLA's defaults), and ``build_state(..., pools)``, the
  state from them (:meth:`Traced.evaluate`, or a build in :func:`pooled`),
  compiled with :data:`INIT_COMPILER_OPTIONS` for ``platform``."""
  return (jax.jit(functools.partial(draw_pools, plan),
                  static_argnames='unused', out_shardings=out_shardings),
          jax.jit(build_state, out_shardings=out_shardings,
                  compiler_options=INIT_COMPILER_OPTIONS.get(platform)))
