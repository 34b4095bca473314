r"""Measures the data side: synthetic rendering and the input pipeline.

  python tools/benchmark_input.py --manual_dir=../shared/data/galaxy_zoo_kaggle_sample

One run, one table, everything side by side on the same machine:

* synthetic galaxies rendered per second at 424 px, in-process and with
  ``--render_workers`` processes (what ``make demo``'s build costs);
* input-pipeline training images per second on the real sample's JPEGs
  (decode, crop, augment, normalise, batch) for each output size and worker
  count, against a plain Pillow loop doing the same work the obvious way (full
  decode, crop, resize, rotate, flip: three resamplings), whose ratio shows
  what reduced-size decoding and the single fused warp buy.

The real sample is built into a temporary ArrayRecord dataset first.
"""

from __future__ import annotations

import io
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from gzjax.data import galaxy_zoo
from gzjax.data import pipeline
from gzjax.data import synthetic

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The program's flags, defined only when it runs as one (or
  tools/benchmark.py does): importing its measuring functions beside
  gzjax.main defines no flag twice."""
  flags.DEFINE_string(
      'manual_dir', '../shared/data/galaxy_zoo_kaggle_sample',
      'A Kaggle-layout directory whose JPEGs feed the pipeline.')
  flags.DEFINE_integer(
      'render_count', 200, 'Synthetic galaxies per rendering measurement.')
  flags.DEFINE_integer(
      'render_workers', 2, 'Processes for the parallel rendering measurement.')
  flags.DEFINE_integer(
      'images', 1024, 'Pipeline images per measurement.')
  flags.DEFINE_list(
      'sizes', ['64', '224'], 'Model input sizes to measure.')
  flags.DEFINE_list(
      'workers', ['0', '2'], 'Pipeline worker counts to measure.')
  flags.DEFINE_integer('batch_size', 64, 'Pipeline batch size.')


def per_second(count: int, seconds: float) -> float:
  return count / max(seconds, 1e-9)


def render_rates(count: int, workers: int) -> dict[str, float]:
  """Synthetic 424 px galaxies per second, in-process and in `workers`."""
  rates = {}
  for label, num_workers in (('1 process', 1), (f'{workers} processes',
                                                workers)):
    start = time.perf_counter()
    for _ in synthetic.generate_galaxies(0, range(count), 424, num_workers):
      pass
    rates[label] = per_second(count, time.perf_counter() - start)
  return rates


def plain_pillow_image(jpeg: bytes, size: int, rng: np.random.Generator,
                       crop: int = 207) -> np.ndarray:
  """One training image the obvious way: full decode, crop (the centre
  ``crop`` px), resize, rotate, flip, normalise to [-1, 1]."""
  image = Image.open(io.BytesIO(jpeg)).convert('RGB')
  left = (image.width - crop) // 2
  image = image.crop((left, left, left + crop, left + crop))
  image = image.resize((size, size), Image.Resampling.BILINEAR)
  image = image.rotate(rng.uniform(0, 360), Image.Resampling.BILINEAR)
  if rng.random() < 0.5:
    image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  mean = np.float32(0.5)
  return (np.asarray(image, np.float32) / 255 - mean) / mean


def plain_pillow_rate(jpegs: list[bytes], size: int, count: int) -> float:
  """Images/s of the obvious loop (:func:`plain_pillow_image`), one by one."""
  rng = np.random.default_rng(0)
  start = time.perf_counter()
  for i in range(count):
    plain_pillow_image(jpegs[i % len(jpegs)], size, rng)
  return per_second(count, time.perf_counter() - start)


def pipeline_rate(source, size: int, workers: int, images: int,
                  batch_size: int) -> float:
  """Training images/s of gzjax's grain pipeline, after its first batch."""
  config = pipeline.default_config()
  config.image_size = size
  config.batch_size = batch_size
  config.num_workers = workers
  iterator = pipeline.create_train_iterator(
      source, config, process_index=0, process_count=1)
  next(iterator)  # Start-up (worker processes) is not throughput.
  batches = max(1, images // batch_size)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  rate = per_second(batches * batch_size, time.perf_counter() - start)
  if hasattr(iterator, 'close'):
    iterator.close()
  return rate


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  rows = []
  for label, rate in render_rates(
      FLAGS.render_count, FLAGS.render_workers).items():
    rows.append((f'synthetic render 424 px, {label}', rate, ''))
  with tempfile.TemporaryDirectory() as data_dir:
    galaxy_zoo.prepare('kaggle', data_dir, manual_dir=FLAGS.manual_dir)
    source = galaxy_zoo.data_source('kaggle', data_dir, 'train')
    jpegs = [source[i]['image'] for i in range(min(len(source), 256))]
    for size in map(int, FLAGS.sizes):
      baseline = plain_pillow_rate(jpegs, size, FLAGS.images)
      rows.append((f'plain Pillow loop -> {size} px', baseline, '1.00'))
      for workers in map(int, FLAGS.workers):
        rate = pipeline_rate(source, size, workers, FLAGS.images,
                             FLAGS.batch_size)
        rows.append((f'gzjax pipeline -> {size} px, {workers} workers', rate,
                     f'{rate / baseline:.2f}'))
  print(f'\n{"measurement":<44s}{"images/s":>10s}{"vs plain":>10s}')
  for name, rate, ratio in rows:
    print(f'{name:<44s}{rate:>10.0f}{ratio:>10s}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
