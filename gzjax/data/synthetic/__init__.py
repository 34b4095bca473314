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

The package holds one module per job: :mod:`.morphology` (what a galaxy is,
and sampling it), :mod:`.volunteers` (the votes), :mod:`.render` (the image)
and :mod:`.generate` (whole galaxies, in parallel processes).
"""

from gzjax.data.synthetic.generate import describe_galaxy
from gzjax.data.synthetic.generate import generate_galaxies
from gzjax.data.synthetic.generate import render_galaxy
from gzjax.data.synthetic.generate import SyntheticGalaxy
from gzjax.data.synthetic.morphology import ARTIFACTS
from gzjax.data.synthetic.morphology import BULGE_SHAPES
from gzjax.data.synthetic.morphology import KINDS
from gzjax.data.synthetic.morphology import MORE_THAN_FOUR_ARMS
from gzjax.data.synthetic.morphology import Morphology
from gzjax.data.synthetic.morphology import ODD_FEATURES
from gzjax.data.synthetic.morphology import REFERENCE_SIZE
from gzjax.data.synthetic.morphology import sample_morphology
from gzjax.data.synthetic.morphology import WINDINGS
from gzjax.data.synthetic.render import encode_jpeg
from gzjax.data.synthetic.render import JPEG_QUALITY
from gzjax.data.synthetic.render import render_image
from gzjax.data.synthetic.volunteers import simulate_votes

__all__ = [
    'ARTIFACTS',
    'BULGE_SHAPES',
    'describe_galaxy',
    'encode_jpeg',
    'generate_galaxies',
    'JPEG_QUALITY',
    'KINDS',
    'MORE_THAN_FOUR_ARMS',
    'Morphology',
    'ODD_FEATURES',
    'REFERENCE_SIZE',
    'render_galaxy',
    'render_image',
    'sample_morphology',
    'simulate_votes',
    'SyntheticGalaxy',
    'WINDINGS',
]
