"""gzjax: a JAX/Flax training engine for Galaxy Zoo morphology."""

__version__ = '0.1.0'
