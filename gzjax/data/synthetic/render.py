"""Rendering a morphology as an SDSS-like colour cut-out.

Sérsic bulges, exponential disks, bars, spiral arms, rings, dust lanes,
edge-on disks, mergers, point sources, trails and bad columns, blurred by a
PSF with wings, over sky noise, mapped to RGB like the SDSS colour images.
Pixels use fast vectorised transcendental functions and may differ by an ULP
between machines, which JPEG encoding absorbs.
"""

from __future__ import annotations

import dataclasses
import functools
import io

import numpy as np
from PIL import Image
from scipy import ndimage

from gzjax.data.synthetic.morphology import MORE_THAN_FOUR_ARMS
from gzjax.data.synthetic.morphology import Morphology
from gzjax.data.synthetic.morphology import pick
from gzjax.data.synthetic.morphology import REFERENCE_SIZE
from gzjax.data.synthetic.morphology import uniform

JPEG_QUALITY = 90
# Pitch angle of the spiral arms for each winding.
_PITCH_DEGREES = {'tight': 10.0, 'medium': 20.0, 'loose': 32.0}

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
  bulge_radius = scale_length * uniform(rng, 0.2, 0.45)
  r_bulge = np.sqrt(u * u + (v / np.float32(max(m.axis_ratio, 0.7))) ** 2)
  bulge = _sersic(r_bulge / np.float32(bulge_radius), m.sersic_index)
  bar_length = scale_length * uniform(rng, 0.9, 1.6)
  inner_radius = bar_length if m.bar else 1.5 * bulge_radius
  disk_share = 1.0
  if m.n_arms:
    theta = np.arctan2(v_plane, u)
    n_arms = 7 if m.n_arms == MORE_THAN_FOUR_ARMS else m.n_arms
    arms = _spiral_pattern(
        r_plane / np.float32(inner_radius), theta, n_arms,
        _PITCH_DEGREES[m.winding], uniform(rng, 0.0, 2 * np.pi),
    )
    starts = np.minimum(
        np.float32(1.0), (r_plane / np.float32(inner_radius)) ** 2
    )
    arm_strength = uniform(rng, 1.2, 2.2)
    canvas.add(disk * arms * starts, _SED_YOUNG, m.brightness * arm_strength)
    disk_share = 0.45
  canvas.add(disk, _SED_DISK, m.brightness * disk_share)
  canvas.add(bulge, _SED_BULGE, m.brightness * 4.0 * m.bulge_fraction ** 2)
  if m.bar:
    ub, vb = _rotate(u, v_plane, uniform(rng, 0.0, np.pi))
    shape = (ub / np.float32(bar_length)) ** 2 + (
        vb / np.float32(bar_length * uniform(rng, 0.18, 0.3))
    ) ** 2
    canvas.add(np.exp(-shape * shape), _SED_BULGE, m.brightness * 1.6)
  if m.odd_feature == 'ring':
    ring_radius = np.float32(scale_length * uniform(rng, 1.8, 3.0))
    width = np.float32(scale_length * 0.25)
    ring = np.exp(-(((r_plane - ring_radius) / width) ** 2))
    canvas.add(ring, _SED_YOUNG, m.brightness * 1.2)
  elif m.odd_feature == 'lens':
    plateau = np.float32(scale_length * uniform(rng, 1.0, 1.6))
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
    ring = np.exp(-(((r - np.float32(uniform(rng, 2.5, 3.5))) / 0.3) ** 2))
    canvas.add(ring, _SED_YOUNG, m.brightness * 0.8)
  elif m.odd_feature == 'lens':
    canvas.add(1.0 / (1.0 + (r / np.float32(1.5)) ** 8), _SED_BULGE,
               m.brightness * 0.6)


def _render_clumps(canvas, m: Morphology, rng, count: int, spread: float):
  """Blue star-forming knots scattered around the centre (irregulars)."""
  s = canvas.scale
  for _ in range(count):
    distance = m.radius * s * spread * float(rng.random())
    angle = uniform(rng, 0.0, 2 * np.pi)
    cx, cy = distance * np.cos(angle), distance * np.sin(angle)
    width = np.float32(m.radius * s * uniform(rng, 0.15, 0.45))
    dx, dy = canvas.x - np.float32(cx), canvas.y - np.float32(cy)
    clump = np.exp(-(dx * dx + dy * dy) / (2 * width * width))
    canvas.add(clump, _SED_YOUNG, m.brightness * uniform(rng, 1.0, 3.0))


def _render_irregular(canvas: _Canvas, m: Morphology, rng) -> None:
  """A lopsided diffuse body with bright blue clumps and no order."""
  s = canvas.scale
  offset = m.radius * s * 0.4
  u, v = _rotate(canvas.x - np.float32(offset * uniform(rng, -1, 1)),
                 canvas.y - np.float32(offset * uniform(rng, -1, 1)),
                 m.position_angle)
  r = np.sqrt(u * u + (v / np.float32(m.axis_ratio)) ** 2)
  canvas.add(np.exp(np.float32(1.0) - r / np.float32(m.radius * s)), _SED_DISK,
             m.brightness * 0.7)
  _render_clumps(canvas, m, rng, int(rng.integers(4, 10)), spread=1.8)


def _render_merger(canvas: _Canvas, m: Morphology, rng) -> None:
  """Two galaxies close together with a tidal tail between them."""
  s = canvas.scale
  separation = m.radius * s * uniform(rng, 1.5, 3.0)
  angle = uniform(rng, 0.0, 2 * np.pi)
  # The nuclei sit either side of their light-weighted centre, which is the
  # centre of the cut-out.
  secondary = uniform(rng, 0.4, 1.0)  # its light relative to the primary
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
  halo_width = np.float32(size * uniform(rng, 0.015, 0.04))
  halo = 1.0 / (1.0 + (x * x + y * y) / (halo_width * halo_width)) ** 2
  spike_length = np.float32(size * uniform(rng, 0.08, 0.25))
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
  angle = uniform(rng, 0.0, np.pi)
  offset = np.float32(size * uniform(rng, -0.15, 0.15))
  cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
  across = x * sin - y * cos - offset
  along = x * cos + y * sin
  line = np.exp(across * across / np.float32(-2 * (psf.sigma + 0.5) ** 2))
  dash = np.float32(size * uniform(rng, 0.1, 0.3))
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
  fwhm = uniform(rng, 2.0, 4.0) * canvas.scale
  psf = _Psf(sigma=max(0.5, fwhm / 2.355),
             wing_fraction=pick(rng, (0.0, 0.2), (0.5, 0.5)))
  bands = psf.blur(canvas.bands)
  for _ in range(int(rng.integers(0, 5))):
    cx, cy = (rng.random(2) - 0.5) * image_size
    flux = 40.0 * (1.0 + 60.0 * float(rng.random()) ** 3) * canvas.scale**2
    sed = np.array([uniform(rng, 0.4, 1.1), 0.9, 1.0], np.float32)
    _add_point_source(bands, psf, cx, cy, flux, sed, 6 * psf.sigma + 3)
  if m.artifact == 'star':
    flux = 2000.0 * (1.0 + 10.0 * float(rng.random())) * canvas.scale**2
    sed = np.array([uniform(rng, 0.5, 1.2), 0.95, 1.0], np.float32)
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
