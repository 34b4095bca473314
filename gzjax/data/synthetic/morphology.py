"""What a synthetic galaxy truly is, and drawing it at random.

:func:`sample_morphology` draws a galaxy's generating parameters
(:class:`Morphology`) with uniform draws and plain arithmetic only, so that
the morphology, and the votes computed from it, are bit-identical on every
machine.  :func:`uniform` and :func:`pick` are those draws; the renderer uses
them too.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

REFERENCE_SIZE = 424
"""Side of the Kaggle cut-outs; morphology lengths are in its pixels."""

KINDS = (
    'elliptical', 'spiral', 'edge_on', 'irregular', 'merger', 'star',
    'artifact',
)
# Population mix, tuned so that ~2000 galaxies hold every 7-class and 3-class
# label in useful numbers (stars and artifacts ~5%, as the issue asks).
_KIND_WEIGHTS = (0.30, 0.39, 0.12, 0.07, 0.07, 0.035, 0.015)

WINDINGS = ('tight', 'medium', 'loose')
BULGE_SHAPES = ('rounded', 'boxy', 'none')
# Question 8's answers in column order; ``odd_feature`` takes one of these.
ODD_FEATURES = (
    'ring', 'lens', 'disturbed', 'irregular', 'other', 'merger', 'dust_lane',
)
ARTIFACTS = ('star', 'trail', 'column')
MORE_THAN_FOUR_ARMS = 5
"""``n_arms`` value of a galaxy with more than four arms (answer 11.5)."""


@dataclasses.dataclass(frozen=True)
class Morphology:
  """What a galaxy truly is: the parameters the image and votes come from.

  Attributes:
    kind: one of :data:`KINDS`.
    radius: scale length (disks) or half-light radius (spheroids), in
      424-pixels.
    brightness: surface brightness at ``radius``, in units of the sky noise.
    axis_ratio: apparent minor/major axis ratio of the main body (from the
      inclination for disks), in (0, 1].
    position_angle: orientation of the major axis, radians.
    bulge_fraction: how much the central bulge stands out, 0 … 1.
    bulge_shape: one of :data:`BULGE_SHAPES` (matters for edge-on disks).
    sersic_index: Sérsic index of the bulge or spheroid, 1 … 4.
    n_arms: number of spiral arms, 0 for none, :data:`MORE_THAN_FOUR_ARMS`
      for many.
    winding: one of :data:`WINDINGS` ('' without arms).
    bar: whether a bar crosses the centre.
    odd_feature: one of :data:`ODD_FEATURES`, or '' for none.
    artifact: one of :data:`ARTIFACTS` for kinds 'star' and 'artifact', else ''.
  """

  kind: str
  radius: float
  brightness: float
  axis_ratio: float
  position_angle: float
  bulge_fraction: float = 0.0
  bulge_shape: str = 'rounded'
  sersic_index: int = 4
  n_arms: int = 0
  winding: str = ''
  bar: bool = False
  odd_feature: str = ''
  artifact: str = ''

  @property
  def clarity(self) -> float:
    """How plainly the morphology shows, 0 (hopeless) … 1 (obvious).

    Volunteers confuse faint and small galaxies; this is the one number the
    vote model reads for that.  Plain arithmetic, so it is bit-exact anywhere.
    """
    size_term = self.radius / (self.radius + 14.0)
    bright_term = self.brightness / (self.brightness + 3.0)
    return min(1.0, max(0.0, 1.7 * size_term * bright_term - 0.1))


# ---------------------------------------------------------------- sampling ---


def uniform(rng: np.random.Generator, low: float, high: float) -> float:
  return low + (high - low) * float(rng.random())


def pick(
    rng: np.random.Generator, options: Sequence, weights: Sequence[float]
):
  """One of ``options`` by ``weights``, with a bit-exact comparison."""
  target = float(rng.random()) * sum(weights)
  total = 0.0
  for option, weight in zip(options, weights):
    total += weight
    if target < total:
      return option
  return options[-1]


def sample_morphology(rng: np.random.Generator) -> Morphology:
  """Draws a galaxy's morphology from the population mix.

  Only uniform draws and arithmetic, so the result (and hence the votes) is
  the same on every machine.  Sizes and brightnesses are skewed towards small
  and faint, as in a magnitude-limited survey.
  """
  kind = pick(rng, KINDS, _KIND_WEIGHTS)
  u = float(rng.random())
  radius = 8.0 + 34.0 * u * (0.5 + 0.5 * u)
  brightness = 1.5 + 30.0 * float(rng.random()) ** 2
  position_angle = uniform(rng, 0.0, np.pi)
  common = dict(
      kind=kind,
      radius=radius,
      brightness=brightness,
      position_angle=position_angle,
  )
  if kind == 'elliptical':
    low, high = pick(
        rng, ((0.8, 1.0), (0.5, 0.8), (0.2, 0.45)), (0.4, 0.35, 0.25)
    )
    return Morphology(
        axis_ratio=uniform(rng, low, high),
        bulge_fraction=1.0,
        sersic_index=pick(rng, (2, 3, 4), (0.2, 0.4, 0.4)),
        odd_feature=pick(rng, ('', 'lens', 'ring'), (0.94, 0.03, 0.03)),
        **common,
    )
  if kind == 'spiral':
    n_arms = pick(rng, (0, 1, 2, 3, 4, 5), (0.1, 0.05, 0.5, 0.15, 0.12, 0.08))
    return Morphology(
        axis_ratio=uniform(rng, 0.4, 1.0),
        bulge_fraction=uniform(rng, 0.0, 0.8),
        sersic_index=pick(rng, (1, 2, 3, 4), (0.2, 0.4, 0.2, 0.2)),
        n_arms=n_arms,
        winding=pick(rng, WINDINGS, (1, 1, 1)) if n_arms else '',
        bar=float(rng.random()) < 0.45,
        odd_feature=pick(
            rng, ('', 'ring', 'lens', 'other'), (0.86, 0.08, 0.03, 0.03)
        ),
        **common,
    )
  if kind == 'edge_on':
    bulge_shape = pick(rng, BULGE_SHAPES, (0.45, 0.25, 0.3))
    return Morphology(
        axis_ratio=uniform(rng, 0.08, 0.22),
        bulge_fraction=(
            0.0 if bulge_shape == 'none' else uniform(rng, 0.2, 0.8)
        ),
        bulge_shape=bulge_shape,
        sersic_index=pick(rng, (2, 4), (0.5, 0.5)),
        odd_feature=pick(rng, ('', 'dust_lane'), (0.65, 0.35)),
        **common,
    )
  if kind == 'irregular':
    return Morphology(
        axis_ratio=uniform(rng, 0.4, 1.0),
        odd_feature=pick(rng, ('irregular', 'disturbed'), (0.8, 0.2)),
        **common,
    )
  if kind == 'merger':
    return Morphology(
        axis_ratio=uniform(rng, 0.5, 1.0),
        bulge_fraction=1.0,
        odd_feature=pick(rng, ('merger', 'disturbed'), (0.85, 0.15)),
        **common,
    )
  if kind == 'star':
    return Morphology(axis_ratio=1.0, artifact='star', **common)
  return Morphology(
      axis_ratio=1.0, artifact=pick(rng, ('trail', 'column'), (0.6, 0.4)),
      **common,
  )

