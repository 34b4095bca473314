"""Synthetic Galaxy Zoo galaxies: SDSS-like colour images with volunteer votes.

The real Kaggle "Galaxy Challenge" download is not available to the project,
so this generator is its embedded stand-in: it draws a galaxy's morphology,
renders it the way the SDSS colour cut-outs look, and has ~40 simulated
volunteers walk the Galaxy Zoo 2 decision tree about it.  A model trained on
the result has something real to learn: the votes follow the morphology that
the pixels show, blurred by the confusion that faint or small galaxies cause.

Three pure steps, each with its own random stream so that one cannot shift
another:

* :func:`sample_morphology` draws the generating parameters;
* :func:`simulate_votes` turns them into Kaggle cumulative vote fractions;
* :func:`render_image` turns them into an RGB image.

Reproducibility.  Every galaxy's randomness comes only from
``(seed, galaxy_id)``, so results do not depend on the number of workers or the
order of work.  The votes must be identical on every machine, so the morphology
and the votes are computed with uniform draws and plain arithmetic only (no
``exp``/``log``/``normal`` whose last bit may differ between CPUs or libm
builds): they are exact integer counts over the number of volunteers.  Pixels
use the fast vectorised transcendental functions and may differ by an ULP,
which JPEG encoding absorbs.

Lengths in :class:`Morphology` are in pixels of the 424×424 Kaggle cut-out and
are scaled to the requested image size, so a galaxy looks the same (and has the
same votes) at every resolution.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import multiprocessing
import os
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from gzjax import taxonomy

REFERENCE_SIZE = 424
"""Side of the Kaggle cut-outs; morphology lengths are in its pixels."""

JPEG_QUALITY = 90

KINDS = (
    'elliptical', 'spiral', 'edge_on', 'irregular', 'merger', 'star',
    'artifact',
)
# Population mix, tuned so that ~2000 galaxies hold every 7-class and 3-class
# label in useful numbers (stars and artifacts ~5%, as the issue asks).
_KIND_WEIGHTS = (0.30, 0.39, 0.12, 0.07, 0.07, 0.035, 0.015)

WINDINGS = ('tight', 'medium', 'loose')
_PITCH_DEGREES = {'tight': 10.0, 'medium': 20.0, 'loose': 32.0}
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


@dataclasses.dataclass(frozen=True)
class SyntheticGalaxy:
  """One generated galaxy.

  Attributes:
    galaxy_id: the id it was generated from (with the seed).
    jpeg: encoded JPEG, ``image_size × image_size`` RGB.
    votes: float32[37] Kaggle cumulative vote fractions, tree-consistent.
    morphology: the generating parameters, for tests and debugging.
  """

  galaxy_id: int
  jpeg: bytes
  votes: np.ndarray
  morphology: Morphology

  def decode(self) -> np.ndarray:
    """The image as uint8 ``[H, W, 3]``."""
    return np.asarray(Image.open(io.BytesIO(self.jpeg)).convert('RGB'))


# ---------------------------------------------------------------- sampling ---


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
  return low + (high - low) * float(rng.random())


def _pick(
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
  kind = _pick(rng, KINDS, _KIND_WEIGHTS)
  u = float(rng.random())
  radius = 8.0 + 34.0 * u * (0.5 + 0.5 * u)
  brightness = 1.5 + 30.0 * float(rng.random()) ** 2
  position_angle = _uniform(rng, 0.0, np.pi)
  common = dict(
      kind=kind,
      radius=radius,
      brightness=brightness,
      position_angle=position_angle,
  )
  if kind == 'elliptical':
    low, high = _pick(
        rng, ((0.8, 1.0), (0.5, 0.8), (0.2, 0.45)), (0.4, 0.35, 0.25)
    )
    return Morphology(
        axis_ratio=_uniform(rng, low, high),
        bulge_fraction=1.0,
        sersic_index=_pick(rng, (2, 3, 4), (0.2, 0.4, 0.4)),
        odd_feature=_pick(rng, ('', 'lens', 'ring'), (0.94, 0.03, 0.03)),
        **common,
    )
  if kind == 'spiral':
    n_arms = _pick(rng, (0, 1, 2, 3, 4, 5), (0.1, 0.05, 0.5, 0.15, 0.12, 0.08))
    return Morphology(
        axis_ratio=_uniform(rng, 0.4, 1.0),
        bulge_fraction=_uniform(rng, 0.0, 0.8),
        sersic_index=_pick(rng, (1, 2, 3, 4), (0.2, 0.4, 0.2, 0.2)),
        n_arms=n_arms,
        winding=_pick(rng, WINDINGS, (1, 1, 1)) if n_arms else '',
        bar=float(rng.random()) < 0.45,
        odd_feature=_pick(
            rng, ('', 'ring', 'lens', 'other'), (0.86, 0.08, 0.03, 0.03)
        ),
        **common,
    )
  if kind == 'edge_on':
    bulge_shape = _pick(rng, BULGE_SHAPES, (0.45, 0.25, 0.3))
    return Morphology(
        axis_ratio=_uniform(rng, 0.08, 0.22),
        bulge_fraction=(
            0.0 if bulge_shape == 'none' else _uniform(rng, 0.2, 0.8)
        ),
        bulge_shape=bulge_shape,
        sersic_index=_pick(rng, (2, 4), (0.5, 0.5)),
        odd_feature=_pick(rng, ('', 'dust_lane'), (0.65, 0.35)),
        **common,
    )
  if kind == 'irregular':
    return Morphology(
        axis_ratio=_uniform(rng, 0.4, 1.0),
        odd_feature=_pick(rng, ('irregular', 'disturbed'), (0.8, 0.2)),
        **common,
    )
  if kind == 'merger':
    return Morphology(
        axis_ratio=_uniform(rng, 0.5, 1.0),
        bulge_fraction=1.0,
        odd_feature=_pick(rng, ('merger', 'disturbed'), (0.85, 0.15)),
        **common,
    )
  if kind == 'star':
    return Morphology(axis_ratio=1.0, artifact='star', **common)
  return Morphology(
      axis_ratio=1.0, artifact=_pick(rng, ('trail', 'column'), (0.6, 0.4)),
      **common,
  )


# ------------------------------------------------------------------- votes ---

# An answer model maps (morphology, clarity of each volunteer asked) to
# unnormalised answer weights ``[volunteers, answers]``.  Weights are built
# from arithmetic only; normalisation happens by a sequential cumulative sum.
AnswerModel = Callable[[Morphology, np.ndarray], np.ndarray]


def _columns(c: np.ndarray, *weights) -> np.ndarray:
  """Stacks answer weights (scalars or per volunteer) into ``[len(c), n]``."""
  return np.stack(
      [np.broadcast_to(np.asarray(w, np.float64), c.shape) for w in weights],
      axis=1,
  )


def _ordinal(c: np.ndarray, truth: int, num: int, hit) -> np.ndarray:
  """``hit`` on the true answer, the rest on the others by 1/distance²."""
  weights = [0.0 if i == truth else 1.0 / (i - truth) ** 2 for i in range(num)]
  spread = sum(weights)
  miss = 1.0 - hit
  return _columns(c, *[
      hit if i == truth else miss * (w / spread) for i, w in enumerate(weights)
  ])


def _categorical(c: np.ndarray, truth: int, num: int, hit) -> np.ndarray:
  """``hit`` on the true answer, the rest shared equally by the others."""
  miss = (1.0 - hit) / (num - 1)
  return _columns(c, *[hit if i == truth else miss for i in range(num)])


def _q1_smooth_features_star(m: Morphology, c: np.ndarray) -> np.ndarray:
  blur = 1.0 - c
  if m.kind == 'elliptical':
    features = 0.03 + 0.04 * blur
    star = 0.01 + 0.03 * blur
  elif m.kind == 'spiral':
    # Faint small spirals and bulge-dominated disks look smooth.
    bulge_look = 1.0 - 0.35 * m.bulge_fraction * m.bulge_fraction
    features = (0.08 + 0.9 * c) * bulge_look
    star = 0.005
  elif m.kind == 'edge_on':
    features = 0.25 + 0.74 * c
    star = 0.005 + 0.01 * blur
  elif m.kind in ('irregular', 'merger'):
    features = 0.35 + 0.62 * c
    star = 0.01 + 0.03 * blur
  else:  # star, artifact
    star = 0.8 + 0.18 * c
    features = 0.3 * (1.0 - star)
  return _columns(c, 1.0 - features - star, features, star)


def _q2_edge_on(m: Morphology, c: np.ndarray) -> np.ndarray:
  if m.kind == 'edge_on':
    yes = 0.55 + 0.43 * c
  elif m.kind in ('spiral', 'elliptical'):
    # Inclined disks and flattened spheroids pass for edge-on now and then.
    yes = 0.03 + 1.2 * max(0.0, 0.5 - m.axis_ratio)
  elif m.artifact == 'trail':
    yes = 0.4
  else:
    yes = 0.05 + 0.05 * (1.0 - c)
  return _columns(c, yes, 1.0 - yes)


def _q3_bar(m: Morphology, c: np.ndarray) -> np.ndarray:
  yes = 0.3 + 0.68 * c if m.bar else 0.03 + 0.12 * (1.0 - c)
  return _columns(c, yes, 1.0 - yes)


def _q4_spiral(m: Morphology, c: np.ndarray) -> np.ndarray:
  if m.n_arms:
    yes = 0.25 + 0.73 * c
  elif m.kind == 'merger':  # tidal tails look like arms
    yes = 0.25
  else:
    yes = 0.04 + 0.12 * (1.0 - c)
  return _columns(c, yes, 1.0 - yes)


def _q5_bulge_prominence(m: Morphology, c: np.ndarray) -> np.ndarray:
  truth = sum(m.bulge_fraction >= edge for edge in (0.08, 0.3, 0.6))
  return _ordinal(c, truth, 4, 0.4 + 0.5 * c)


def _q6_odd(m: Morphology, c: np.ndarray) -> np.ndarray:
  if m.kind in ('irregular', 'merger'):
    yes = 0.5 + 0.48 * c
  elif m.odd_feature:
    yes = 0.3 + 0.65 * c
  else:
    yes = 0.03 + 0.08 * (1.0 - c)
  return _columns(c, yes, 1.0 - yes)


def _q7_roundness(m: Morphology, c: np.ndarray) -> np.ndarray:
  if m.artifact in ('trail', 'column'):
    truth = 2
  else:
    truth = sum(m.axis_ratio < edge for edge in (0.48, 0.78))
  return _ordinal(c, truth, 3, 0.55 + 0.43 * c)


def _q8_odd_feature(m: Morphology, c: np.ndarray) -> np.ndarray:
  if m.odd_feature:
    truth = ODD_FEATURES.index(m.odd_feature)
    return _categorical(c, truth, 7, 0.45 + 0.52 * c)
  # Volunteers who saw an odd feature that is not there mostly say 'other'.
  return _ordinal(c, ODD_FEATURES.index('other'), 7, 0.4)


def _q9_bulge_shape(m: Morphology, c: np.ndarray) -> np.ndarray:
  if m.kind == 'edge_on':
    return _categorical(c, BULGE_SHAPES.index(m.bulge_shape), 3, 0.5 + 0.45 * c)
  return _columns(c, 0.6, 0.15, 0.25)


def _q10_winding(m: Morphology, c: np.ndarray) -> np.ndarray:
  if m.winding:
    return _ordinal(c, WINDINGS.index(m.winding), 3, 0.45 + 0.45 * c)
  return _columns(c, 1.0, 1.0, 1.0)


def _q11_arm_count(m: Morphology, c: np.ndarray) -> np.ndarray:
  if m.n_arms:
    cant_tell = 0.05 + 0.45 * (1.0 - c)
    counts = _ordinal(c, m.n_arms - 1, 5, 0.35 + 0.6 * c)
  else:
    cant_tell = np.full_like(c, 0.6)
    counts = _ordinal(c, 1, 5, 0.4)
  return np.concatenate(
      [counts * (1.0 - cant_tell)[:, None], cant_tell[:, None]], axis=1
  )


_ANSWER_MODELS: dict[int, AnswerModel] = {
    1: _q1_smooth_features_star,
    2: _q2_edge_on,
    3: _q3_bar,
    4: _q4_spiral,
    5: _q5_bulge_prominence,
    6: _q6_odd,
    7: _q7_roundness,
    8: _q8_odd_feature,
    9: _q9_bulge_shape,
    10: _q10_winding,
    11: _q11_arm_count,
}


def simulate_votes(
    morphology: Morphology, rng: np.random.Generator
) -> np.ndarray:
  """Kaggle cumulative vote fractions from 30–50 simulated volunteers.

  Each volunteer walks the decision tree (Q1, then the questions its answers
  lead to; Q6 always), answering from the true morphology with a personal
  skill that scales the galaxy's clarity.  A value is the number of volunteers
  who gave that answer over the number of volunteers, so each question's
  answers sum exactly to its parent answer's value (1 for Q1 and Q6), and a
  question nobody reached has all zeros.

  Returns:
    float32[37], multiples of ``1 / n`` for the drawn ``n``.
  """
  num_volunteers = int(rng.integers(30, 51))
  skill = 0.75 + 0.5 * rng.random(num_volunteers)
  clarity = np.minimum(1.0, morphology.clarity * skill)
  answers = np.full((taxonomy.NUM_QUESTIONS, num_volunteers), -1, np.int8)
  counts = np.zeros(taxonomy.NUM_ANSWERS, np.int64)
  for question in taxonomy.TREE_ORDER:
    if question.parent is None:
      reached = np.ones(num_volunteers, bool)
    else:
      parent = taxonomy.index(question.parent)
      parent_question = taxonomy.QUESTIONS[taxonomy.QUESTION_OF_ANSWER[parent]]
      reached = answers[parent_question.number - 1] == (
          parent - parent_question.start
      )
    if not reached.any():
      continue
    weights = _ANSWER_MODELS[question.number](morphology, clarity[reached])
    cumulative = np.cumsum(weights, axis=1)  # sequential, hence bit-exact
    target = rng.random(len(weights)) * cumulative[:, -1]
    choice = (target[:, None] >= cumulative[:, :-1]).sum(axis=1)
    answers[question.number - 1, reached] = choice
    counts[question.slice] += np.bincount(
        choice, minlength=len(question.answers)
    )
  return (counts / num_volunteers).astype(np.float32)


# --------------------------------------------------------------- rendering ---

# Spectral energy of each component in the (g, r, i) bands: old stellar
# populations (bulges, ellipticals) are red, star-forming disks and arms blue.
_SED_BULGE = np.array([0.42, 0.78, 1.0], np.float32)
_SED_DISK = np.array([0.72, 0.9, 1.0], np.float32)
_SED_YOUNG = np.array([1.0, 0.92, 0.8], np.float32)
_SED_ARC = np.array([1.0, 0.75, 0.55], np.float32)
# Dust dims blue light most.
_DUST_DEPTH = np.array([0.85, 0.7, 0.55], np.float32)
# Lupton-style colour balance of (g, r, i) → (B, G, R).
_BAND_GAIN = np.array([1.55, 1.1, 0.85], np.float32)


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  """Pixel-centre coordinates relative to the image centre, float32."""
  axis = np.arange(size, dtype=np.float32) - np.float32((size - 1) / 2)
  return axis[None, :], axis[:, None]


def _rotate(x, y, angle: float):
  cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
  return x * cos + y * sin, -x * sin + y * cos


def _sersic(r_over_re: np.ndarray, n: int) -> np.ndarray:
  """Sérsic profile normalised to 1 at the half-light radius.

  Integer ``n`` keeps ``r**(1/n)`` to square and cube roots, which are much
  cheaper than a general power on a whole image.
  """
  b = 2.0 * n - 1.0 / 3.0 + 0.009876 / n
  if n == 1:
    root = r_over_re
  elif n == 2:
    root = np.sqrt(r_over_re)
  elif n == 3:
    root = np.cbrt(r_over_re)
  else:
    root = np.sqrt(np.sqrt(r_over_re))
  return np.exp(np.float32(-b) * (root - np.float32(1.0)))


class _Canvas:
  """A ``[3, H, W]`` float32 (g, r, i) image in sky-noise units.

  Galaxy light goes into :attr:`bands` and is blurred by the PSF in one pass;
  point sources and trails are drawn afterwards already PSF-shaped, so the
  (costly) blur covers only the galaxy's own window.
  """

  def __init__(self, size: int):
    self.size = size
    self.scale = size / REFERENCE_SIZE
    self.bands = np.zeros((3, size, size), np.float32)
    self.x, self.y = _grid(size)

  def add(self, image: np.ndarray, sed: np.ndarray, amplitude: float):
    self.bands += (np.float32(amplitude) * sed)[:, None, None] * image


def _spiral_pattern(
    radius, theta, n_arms: int, pitch_degrees: float, phase: float
) -> np.ndarray:
  """0 … 1 brightness of logarithmic spiral arms in the disk plane."""
  winding = np.float32(1.0 / np.tan(np.radians(pitch_degrees)))
  angle = n_arms * (theta - winding * np.log(radius + np.float32(1e-3))) + phase
  wave = np.float32(0.5) + np.float32(0.5) * np.cos(angle)
  return wave * wave * wave


def _render_disk_galaxy(canvas: _Canvas, m: Morphology, rng) -> None:
  """Exponential disk, Sérsic bulge, and optional bar, arms, ring or lens."""
  s = canvas.scale
  scale_length = m.radius * s
  u, v = _rotate(canvas.x, canvas.y, m.position_angle)
  v_plane = v / np.float32(m.axis_ratio)  # deprojected onto the disk plane
  r_plane = np.sqrt(u * u + v_plane * v_plane)
  disk = np.exp(np.float32(1.0) - r_plane / np.float32(scale_length))
  bulge_radius = scale_length * _uniform(rng, 0.2, 0.45)
  r_bulge = np.sqrt(u * u + (v / np.float32(max(m.axis_ratio, 0.7))) ** 2)
  bulge = _sersic(r_bulge / np.float32(bulge_radius), m.sersic_index)
  bar_length = scale_length * _uniform(rng, 0.9, 1.6)
  inner_radius = bar_length if m.bar else 1.5 * bulge_radius
  disk_share = 1.0
  if m.n_arms:
    theta = np.arctan2(v_plane, u)
    n_arms = 7 if m.n_arms == MORE_THAN_FOUR_ARMS else m.n_arms
    arms = _spiral_pattern(
        r_plane / np.float32(inner_radius), theta, n_arms,
        _PITCH_DEGREES[m.winding], _uniform(rng, 0.0, 2 * np.pi),
    )
    starts = np.minimum(
        np.float32(1.0), (r_plane / np.float32(inner_radius)) ** 2
    )
    arm_strength = _uniform(rng, 1.2, 2.2)
    canvas.add(disk * arms * starts, _SED_YOUNG, m.brightness * arm_strength)
    disk_share = 0.45
  canvas.add(disk, _SED_DISK, m.brightness * disk_share)
  canvas.add(bulge, _SED_BULGE, m.brightness * 4.0 * m.bulge_fraction ** 2)
  if m.bar:
    ub, vb = _rotate(u, v_plane, _uniform(rng, 0.0, np.pi))
    shape = (ub / np.float32(bar_length)) ** 2 + (
        vb / np.float32(bar_length * _uniform(rng, 0.18, 0.3))
    ) ** 2
    canvas.add(np.exp(-shape * shape), _SED_BULGE, m.brightness * 1.6)
  if m.odd_feature == 'ring':
    ring_radius = np.float32(scale_length * _uniform(rng, 1.8, 3.0))
    width = np.float32(scale_length * 0.25)
    ring = np.exp(-(((r_plane - ring_radius) / width) ** 2))
    canvas.add(ring, _SED_YOUNG, m.brightness * 1.2)
  elif m.odd_feature == 'lens':
    plateau = np.float32(scale_length * _uniform(rng, 1.0, 1.6))
    lens = 1.0 / (1.0 + (r_plane / plateau) ** 8)
    canvas.add(lens, _SED_BULGE, m.brightness * 1.5)


def _render_edge_on(canvas: _Canvas, m: Morphology, rng) -> None:
  """A thin disk seen edge-on, its bulge rounded, boxy or absent, dust lane."""
  s = canvas.scale
  scale_length = m.radius * s
  u, v = _rotate(canvas.x, canvas.y, m.position_angle)
  height = np.float32(scale_length * m.axis_ratio)
  disk = np.exp(
      np.float32(1.0)
      - np.abs(u) / np.float32(scale_length)
      - np.abs(v) / height
  )
  canvas.add(disk, _SED_DISK, m.brightness * 1.4)
  if m.bulge_shape != 'none':
    bulge_radius = np.float32(scale_length * 0.35)
    if m.bulge_shape == 'boxy':
      ub, vb = u / bulge_radius, v / (bulge_radius * np.float32(0.75))
      r_bulge = np.sqrt(np.sqrt(ub**4 + vb**4))
      bulge = _sersic(r_bulge, 1)
    else:
      r_bulge = np.sqrt(u * u + (v / np.float32(0.8)) ** 2) / bulge_radius
      bulge = _sersic(r_bulge, m.sersic_index)
    canvas.add(bulge, _SED_BULGE, m.brightness * 3.0 * m.bulge_fraction)
  if m.odd_feature == 'dust_lane':
    lane = np.exp(-((v / (height * np.float32(0.35))) ** 2)) * np.exp(
        -((u / np.float32(3.5 * scale_length)) ** 2)
    )
    canvas.bands *= 1.0 - _DUST_DEPTH[:, None, None] * lane


def _render_elliptical(canvas: _Canvas, m: Morphology, rng) -> None:
  """A smooth Sérsic spheroid, with an occasional lens or ring."""
  s = canvas.scale
  u, v = _rotate(canvas.x, canvas.y, m.position_angle)
  radius = np.float32(m.radius * s)
  r = np.sqrt(u * u + (v / np.float32(m.axis_ratio)) ** 2) / radius
  canvas.add(_sersic(r, m.sersic_index), _SED_BULGE, m.brightness)
  if m.odd_feature == 'ring':
    ring = np.exp(-(((r - np.float32(_uniform(rng, 2.5, 3.5))) / 0.3) ** 2))
    canvas.add(ring, _SED_YOUNG, m.brightness * 0.8)
  elif m.odd_feature == 'lens':
    canvas.add(1.0 / (1.0 + (r / np.float32(1.5)) ** 8), _SED_BULGE,
               m.brightness * 0.6)


def _render_clumps(canvas, m: Morphology, rng, count: int, spread: float):
  """Blue star-forming knots scattered around the centre (irregulars)."""
  s = canvas.scale
  for _ in range(count):
    distance = m.radius * s * spread * float(rng.random())
    angle = _uniform(rng, 0.0, 2 * np.pi)
    cx, cy = distance * np.cos(angle), distance * np.sin(angle)
    width = np.float32(m.radius * s * _uniform(rng, 0.15, 0.45))
    dx, dy = canvas.x - np.float32(cx), canvas.y - np.float32(cy)
    clump = np.exp(-(dx * dx + dy * dy) / (2 * width * width))
    canvas.add(clump, _SED_YOUNG, m.brightness * _uniform(rng, 1.0, 3.0))


def _render_irregular(canvas: _Canvas, m: Morphology, rng) -> None:
  """A lopsided diffuse body with bright blue clumps and no order."""
  s = canvas.scale
  offset = m.radius * s * 0.4
  u, v = _rotate(canvas.x - np.float32(offset * _uniform(rng, -1, 1)),
                 canvas.y - np.float32(offset * _uniform(rng, -1, 1)),
                 m.position_angle)
  r = np.sqrt(u * u + (v / np.float32(m.axis_ratio)) ** 2)
  canvas.add(np.exp(np.float32(1.0) - r / np.float32(m.radius * s)), _SED_DISK,
             m.brightness * 0.7)
  _render_clumps(canvas, m, rng, int(rng.integers(4, 10)), spread=1.8)


def _render_merger(canvas: _Canvas, m: Morphology, rng) -> None:
  """Two galaxies close together with a tidal tail between them."""
  s = canvas.scale
  separation = m.radius * s * _uniform(rng, 1.5, 3.0)
  angle = _uniform(rng, 0.0, 2 * np.pi)
  # The nuclei sit either side of their light-weighted centre, which is the
  # centre of the cut-out.
  secondary = _uniform(rng, 0.4, 1.0)  # its light relative to the primary
  for light, distance in (
      (1.0, separation * secondary / (1.0 + secondary)),
      (secondary, -separation / (1.0 + secondary)),
  ):
    dx = canvas.x - np.float32(distance * np.cos(angle))
    dy = canvas.y - np.float32(distance * np.sin(angle))
    radius = np.float32(m.radius * s * (0.5 + 0.5 * light))
    r = np.sqrt(dx * dx + dy * dy) / radius
    canvas.add(_sersic(r, 2), _SED_BULGE, m.brightness * light)
  u, v = _rotate(canvas.x, canvas.y, angle)
  r = np.sqrt(u * u + v * v)
  tail = _spiral_pattern(r / np.float32(separation), np.arctan2(v, u), 1, 30.0,
                         0.0)
  envelope = np.exp(-r / np.float32(separation)) * np.minimum(
      np.float32(1.0), (r / np.float32(separation)) ** 2)
  canvas.add(tail * envelope, _SED_DISK, m.brightness * 0.8)
  if m.odd_feature == 'disturbed':
    _render_clumps(canvas, m, rng, 3, spread=2.0)


def _render_faint_blob(canvas: _Canvas, m: Morphology, rng) -> None:
  """The small faint object an artifact's cut-out was centred on."""
  r = np.sqrt(canvas.x**2 + canvas.y**2) / np.float32(3.0 * canvas.scale)
  canvas.add(_sersic(r, 2), _SED_DISK, min(m.brightness, 3.0))


_GALAXY_RENDERERS = {
    'elliptical': _render_elliptical,
    'spiral': _render_disk_galaxy,
    'edge_on': _render_edge_on,
    'irregular': _render_irregular,
    'merger': _render_merger,
    'star': lambda canvas, m, rng: None,
    'artifact': _render_faint_blob,
}


@dataclasses.dataclass(frozen=True)
class _Psf:
  """Seeing: a Gaussian core, plus Moffat-like wings as a second Gaussian."""

  sigma: float
  wing_fraction: float

  def blur(self, bands: np.ndarray) -> np.ndarray:
    """Blurs ``bands`` in place, within the window where there is light.

    Outside the galaxy the canvas is (nearly) empty, and blurring only the
    box around it makes the PSF several times cheaper for small galaxies.
    """
    lit = bands[1] > np.float32(0.01)
    rows = np.flatnonzero(lit.any(axis=1))
    cols = np.flatnonzero(lit.any(axis=0))
    if not rows.size:
      return bands
    reach = int(3 * 2.5 * self.sigma) + 2
    size = bands.shape[-1]
    window = (
        slice(None),
        slice(max(0, rows[0] - reach), min(size, rows[-1] + reach + 1)),
        slice(max(0, cols[0] - reach), min(size, cols[-1] + reach + 1)),
    )
    light = bands[window]
    core = ndimage.gaussian_filter(light, (0, self.sigma, self.sigma),
                                   truncate=3.0)
    if self.wing_fraction:
      wings = ndimage.gaussian_filter(
          light, (0, 2.5 * self.sigma, 2.5 * self.sigma), truncate=3.0)
      core *= np.float32(1.0 - self.wing_fraction)
      core += np.float32(self.wing_fraction) * wings
    bands[window] = core
    return bands

  def profile(self, r2: np.ndarray) -> np.ndarray:
    """Normalised PSF at squared radius ``r2``, for point sources."""
    total = np.zeros_like(r2)
    for sigma, share in ((self.sigma, 1.0 - self.wing_fraction),
                         (2.5 * self.sigma, self.wing_fraction)):
      if share:
        total += np.float32(share / (2 * np.pi * sigma**2)) * np.exp(
            r2 / np.float32(-2 * sigma**2))
    return total


def _add_point_source(bands, psf: _Psf, cx, cy, flux, sed, stamp_radius):
  """A star, drawn PSF-shaped on a stamp around it."""
  size = bands.shape[-1]
  centre = (size - 1) / 2
  px, py = centre + cx, centre + cy
  x0, x1 = max(0, int(px - stamp_radius)), min(size, int(px + stamp_radius) + 1)
  y0, y1 = max(0, int(py - stamp_radius)), min(size, int(py + stamp_radius) + 1)
  if x0 >= x1 or y0 >= y1:
    return
  dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(px)
  dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(py)
  star = psf.profile(dx * dx + dy * dy)
  bands[:, y0:y1, x0:x1] += (np.float32(flux) * sed)[:, None, None] * star


def _add_bright_star(bands, psf: _Psf, flux: float, sed, rng):
  """A saturated star with a halo and diffraction spikes along the axes."""
  size = bands.shape[-1]
  _add_point_source(bands, psf, 0.0, 0.0, flux, sed, 6 * psf.sigma + 3)
  x, y = _grid(size)
  halo_width = np.float32(size * _uniform(rng, 0.015, 0.04))
  halo = 1.0 / (1.0 + (x * x + y * y) / (halo_width * halo_width)) ** 2
  spike_length = np.float32(size * _uniform(rng, 0.08, 0.25))
  spike_width = np.float32(-2.0 * psf.sigma**2)
  spikes = np.exp(-np.abs(x) / spike_length + y * y / spike_width) + np.exp(
      -np.abs(y) / spike_length + x * x / spike_width)
  peak = flux / (2 * np.pi * psf.sigma**2)
  bands += (np.float32(peak) * sed)[:, None, None] * (
      np.float32(0.02) * halo + np.float32(0.08) * spikes)


def _add_trail(bands, psf: _Psf, brightness: float, rng):
  """A satellite trail: a straight line whose bands show as coloured dashes.

  The SDSS camera reads g, r and i at different times, so a moving satellite
  lights a different stretch of the line in each band.
  """
  size = bands.shape[-1]
  x, y = _grid(size)
  angle = _uniform(rng, 0.0, np.pi)
  offset = np.float32(size * _uniform(rng, -0.15, 0.15))
  cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
  across = x * sin - y * cos - offset
  along = x * cos + y * sin
  line = np.exp(across * across / np.float32(-2 * (psf.sigma + 0.5) ** 2))
  dash = np.float32(size * _uniform(rng, 0.1, 0.3))
  segment = np.floor(along / dash).astype(np.int32) % 3
  amplitude = np.float32(brightness * 3 + 15)
  for band in range(3):
    bands[band] += amplitude * line * (segment == band)


def _add_bad_column(bands, brightness: float, rng):
  """A bright detector column (or a few) in one band or all of them."""
  size = bands.shape[-1]
  column = size // 2 + int(rng.integers(-size // 8, size // 8 + 1))
  width = max(1, int(round(size / REFERENCE_SIZE * rng.integers(1, 4))))
  band_values = np.where(rng.random(3) < 0.5, 1.0, 0.0).astype(np.float32)
  if not band_values.any():
    band_values[int(rng.integers(0, 3))] = 1.0
  bands[:, :, column:column + width] += (
      np.float32(brightness * 2 + 20) * band_values)[:, None, None]


def _sky_noise(rng: np.random.Generator, shape) -> np.ndarray:
  """Unit-variance sky noise, as the sum of two uniform draws.

  The triangular sum looks Gaussian to the eye (and to JPEG) and is about
  three times cheaper than the ziggurat normal on a whole image.
  """
  noise = rng.random(shape, dtype=np.float32)
  noise += rng.random(shape, dtype=np.float32)
  noise -= np.float32(1.0)
  noise *= np.float32(np.sqrt(6.0))
  return noise


def _to_rgb(bands: np.ndarray) -> np.ndarray:
  """SDSS-like colour image: asinh stretch of the total, band ratios kept.

  After Lupton et al. (2004): stretching the mean intensity and scaling all
  bands by the same factor keeps colours in saturated cores, unlike a
  per-band stretch which bleaches them white.  Overwrites ``bands``.
  """
  sky_cut = np.float32(0.6)  # a touch above the sky, so the background is black
  softening = np.float32(2.5)
  gained = np.multiply(bands, _BAND_GAIN[:, None, None], out=bands)
  intensity = gained.mean(axis=0)
  intensity -= sky_cut
  np.maximum(intensity, np.float32(0.0), out=intensity)
  stretched = np.arcsinh(intensity / softening)
  stretched *= np.float32(255.0 / np.arcsinh(120.0 / 2.5))
  intensity += sky_cut
  factor = np.divide(stretched, intensity, out=stretched)
  # Scale saturated pixels down as a whole, so that they keep their colour.
  brightest = gained.max(axis=0)
  brightest *= factor
  np.maximum(brightest, np.float32(255.0), out=brightest)
  factor *= np.float32(255.0) / brightest
  rgb = np.empty(bands.shape[1:] + (3,), np.float32)
  np.multiply(gained[::-1].transpose(1, 2, 0), factor[:, :, None], out=rgb)
  np.clip(rgb, np.float32(0.0), np.float32(255.0), out=rgb)
  rgb += np.float32(0.5)
  return rgb.astype(np.uint8)


def render_image(
    morphology: Morphology, rng: np.random.Generator, image_size: int = 424
) -> np.ndarray:
  """Renders a morphology to an RGB image, uint8 ``[size, size, 3]``.

  Observing conditions (seeing, field stars, noise) come from ``rng``; they
  are not part of the morphology because volunteers' answers do not hinge on
  them.
  """
  canvas = _Canvas(image_size)
  m = morphology
  _GALAXY_RENDERERS[m.kind](canvas, m, rng)
  fwhm = _uniform(rng, 2.0, 4.0) * canvas.scale
  psf = _Psf(sigma=max(0.5, fwhm / 2.355),
             wing_fraction=_pick(rng, (0.0, 0.2), (0.5, 0.5)))
  bands = psf.blur(canvas.bands)
  for _ in range(int(rng.integers(0, 5))):
    cx, cy = (rng.random(2) - 0.5) * image_size
    flux = 40.0 * (1.0 + 60.0 * float(rng.random()) ** 3) * canvas.scale**2
    sed = np.array([_uniform(rng, 0.4, 1.1), 0.9, 1.0], np.float32)
    _add_point_source(bands, psf, cx, cy, flux, sed, 6 * psf.sigma + 3)
  if m.artifact == 'star':
    flux = 2000.0 * (1.0 + 10.0 * float(rng.random())) * canvas.scale**2
    sed = np.array([_uniform(rng, 0.5, 1.2), 0.95, 1.0], np.float32)
    _add_bright_star(bands, psf, flux, sed, rng)
  elif m.artifact == 'trail':
    _add_trail(bands, psf, m.brightness, rng)
  elif m.artifact == 'column':
    _add_bad_column(bands, m.brightness, rng)
  bands += _sky_noise(rng, bands.shape)
  return _to_rgb(bands)


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, 'JPEG', quality=quality)
  return buffer.getvalue()


# -------------------------------------------------------------- generation ---

_MORPHOLOGY_STREAM, _VOTES_STREAM, _RENDER_STREAM = 0, 1, 2


def _stream(seed: int, galaxy_id: int, purpose: int) -> np.random.Generator:
  return np.random.default_rng([seed, galaxy_id, purpose])


def describe_galaxy(seed: int, galaxy_id: int) -> tuple[Morphology, np.ndarray]:
  """A galaxy's morphology and votes without its image: cheap label studies."""
  morphology = sample_morphology(_stream(seed, galaxy_id, _MORPHOLOGY_STREAM))
  votes = simulate_votes(morphology, _stream(seed, galaxy_id, _VOTES_STREAM))
  return morphology, votes


def render_galaxy(
    seed: int, galaxy_id: int, image_size: int = REFERENCE_SIZE
) -> SyntheticGalaxy:
  """Generates one galaxy, determined by ``(seed, galaxy_id)`` alone."""
  morphology, votes = describe_galaxy(seed, galaxy_id)
  image = render_image(
      morphology, _stream(seed, galaxy_id, _RENDER_STREAM), image_size
  )
  return SyntheticGalaxy(galaxy_id, encode_jpeg(image), votes, morphology)


def _render_chunk(
    args: tuple[int, Sequence[int], int],
) -> list[SyntheticGalaxy]:
  seed, galaxy_ids, image_size = args
  return [render_galaxy(seed, i, image_size) for i in galaxy_ids]


def generate_galaxies(
    seed: int,
    galaxy_ids: Sequence[int],
    image_size: int = REFERENCE_SIZE,
    num_workers: int | None = None,
    chunk_size: int = 16,
) -> Iterator[SyntheticGalaxy]:
  """Generates galaxies in ``galaxy_ids`` order, in parallel processes.

  Args:
    seed: dataset seed.
    galaxy_ids: which galaxies; each depends only on ``(seed, id)``.
    image_size: side of the square images.
    num_workers: processes; ``None`` for one per CPU, 1 to stay in-process.
    chunk_size: galaxies per task, to amortise inter-process transfer.

  Yields:
    :class:`SyntheticGalaxy`, in the order of ``galaxy_ids``.
  """
  galaxy_ids = [int(i) for i in galaxy_ids]
  if num_workers is None:
    num_workers = os.cpu_count() or 1
  chunks = [
      (seed, galaxy_ids[start:start + chunk_size], image_size)
      for start in range(0, len(galaxy_ids), chunk_size)
  ]
  if num_workers <= 1 or len(chunks) <= 1:
    for chunk in chunks:
      yield from _render_chunk(chunk)
    return
  # 'spawn' is safe next to JAX's threads, which a forked child would inherit
  # in an undefined state.
  context = multiprocessing.get_context('spawn')
  with context.Pool(min(num_workers, len(chunks))) as pool:
    for galaxies in pool.imap(_render_chunk, chunks):
      yield from galaxies
