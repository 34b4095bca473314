r"""Measures survey prediction: images/s against PyTorch, workers, peak RSS.

  python tools/benchmark_predict.py --out=/tmp/bench_predict
  python tools/benchmark_predict.py --out=/tmp/b --predict_models=cnn \
      --rss_counts=10000,50000

Prints markdown tables for BUILD.md:

* Throughput: gzjax's survey path (``gzjax.predict.predict_catalog``: grain
  decoding with the evaluation preprocessing, the jitted predict function,
  Parquet shards) on a catalogue of synthetic 424 px JPEG cut-outs, against a
  plain PyTorch loop doing the same work: a ``Dataset`` that reads the file,
  decodes it with Pillow at the JPEG draft scale, cuts the centre 207 px and
  resizes it bilinearly to the model's input, normalises; a ``DataLoader``;
  the model in ``eval()`` under ``torch.no_grad()``; rows kept in memory.
  Both at 1 and 2 decoding worker processes.  Each rate is
  ``(N2 - N1) / (t2 - t1)`` over two catalogue sizes, so start-up, restoring,
  compilation and worker start-up cancel out.
* Peak RSS: ``predict_catalog`` in a fresh process (no workers) over 10,000
  and 50,000 rows (``--rss_counts``) of small cut-outs, its
  ``ru_maxrss``, beside the RSS before the prediction starts.

The PyTorch models: the seed CNN is ``tools/benchmark.py``'s ``torch.nn``
copy; EfficientNet-B0 is timm's when timm is installed, else
:func:`torch_efficientnet_b0` below (the B0 architecture: MBConv blocks with
squeeze-excitation and SiLU, 5.3 M parameters with a 1000-way top; here a
37-way top).
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
from PIL import Image

_OUT = flags.DEFINE_string('out', None, 'Working folder (cut-outs, outputs).')
_MODELS = flags.DEFINE_list(
    'predict_models', ['cnn', 'efficientnet_b0'], 'Models to time.')
_WORKER_COUNTS = flags.DEFINE_list(
    'worker_counts', ['1', '2'], 'Decoding worker processes to compare.')
_RSS_COUNTS = flags.DEFINE_list(
    'rss_counts', ['10000', '50000'], 'Catalogue sizes for peak RSS.')
_RSS_CHILD = flags.DEFINE_string(
    'rss_child', '', 'Internal: run one peak-RSS measurement (its folder).')
_JSON = flags.DEFINE_string('json_out', '', 'Also write the results here.')
_TORCH_CHILD = flags.DEFINE_string(
    'torch_child', '', 'Internal: time PyTorch for "MODEL,WORKERS" (no JAX in'
    ' the process, so DataLoader workers fork safely).')

CUTOUT = 424
CROP = 207
DISTINCT = 128
# (input side, eval batch, N1, N2) per model: N2 - N1 images are timed.
SETTINGS = {
    'cnn': (64, 64, 128, 640),
    'efficientnet_b0': (224, 32, 32, 160),
}
RSS_SIDE, RSS_CROP, RSS_INPUT, RSS_SHARD = 40, 40, 32, 10_000


def _galaxy(rng: np.random.Generator, size: int) -> np.ndarray:
  y, x = np.mgrid[:size, :size] - size / 2
  a, b = rng.uniform(0.02, 0.1, 2) * size
  angle = rng.uniform(0, np.pi)
  u = x * np.cos(angle) + y * np.sin(angle)
  v = -x * np.sin(angle) + y * np.cos(angle)
  light = np.exp(-(u / a) ** 2 - (v / b) ** 2)
  noise = rng.normal(0, 0.02, (size, size, 1))
  pixels = light[..., None] * rng.uniform(0.5, 1.0, 3) + noise
  return (255 * np.clip(pixels, 0, 1)).astype(np.uint8)


def make_cutouts(folder: pathlib.Path, size: int, count: int) -> list[str]:
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  paths = []
  for i in range(count):
    path = folder / f'{i}.jpg'
    if not path.exists():
      Image.fromarray(_galaxy(rng, size)).save(path, quality=90)
    paths.append(str(path))
  return paths


def write_catalog(path: pathlib.Path, files: list[str], rows: int) -> None:
  """``rows`` rows cycling over ``files``, with 64-bit-style string ids."""
  with path.open('w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(('id', 'path'))
    for i in range(rows):
      writer.writerow((str(1237648720693755918 + i), files[i % len(files)]))


def _config(model: str, side: int, batch: int, crop: int):
  from gzjax import config as base  # pylint: disable=g-import-not-at-top
  config = base.base_config()
  config.model.name = model
  config.input.crop_size = crop
  config.input.image_size = side
  config.input.batch_size = batch
  config.eval_batch_size = batch
  return config


def make_workdir(folder: pathlib.Path, config) -> pathlib.Path:
  """A checkpoint of the initial weights: speed does not depend on them."""
  from gzjax import checkpoint  # pylint: disable=g-import-not-at-top
  from gzjax import experiment as experiments  # pylint: disable=g-import-not-at-top
  if not (folder / 'checkpoints').exists():
    experiment = experiments.create_experiment(config)
    checkpointer = checkpoint.Checkpointer(folder)
    checkpointer.save(0, experiment.initial_state(), {})
    checkpointer.wait()
    checkpointer.close()
  return folder


def _difference_rate(run, n1: int, n2: int) -> float:
  times = []
  for n in (n1, n2):
    start = time.perf_counter()
    run(n)
    times.append(time.perf_counter() - start)
  return (n2 - n1) / (times[1] - times[0])


def gzjax_rate(out: pathlib.Path, model: str, workers: int,
               files: list[str]) -> float:
  from gzjax import predict  # pylint: disable=g-import-not-at-top
  from gzjax.data import catalog as catalogs  # pylint: disable=g-import-not-at-top
  side, batch, n1, n2 = SETTINGS[model]
  config = _config(model, side, batch, CROP)
  workdir = make_workdir(out / f'workdir_{model}', config)

  def run(rows: int):
    table = out / f'catalog_{rows}.csv'
    write_catalog(table, files, rows)
    output = out / f'pred_{model}_{workers}_{rows}'
    subprocess.run(['rm', '-rf', str(output)], check=True)
    predict.predict_catalog(
        config, workdir, catalogs.from_table(table),
        predict.Options(output, shard_size=100_000, num_workers=workers,
                        progress_interval=1e9))

  return _difference_rate(run, n1, n2)


def torch_efficientnet_b0(num_outputs: int = 37):
  """EfficientNet-B0 in torch.nn (timm's layout without its extras)."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  class MBConv(nn.Module):

    def __init__(self, inputs, outputs, expand, kernel, stride):
      super().__init__()
      hidden = inputs * expand
      squeeze = max(1, inputs // 4)
      layers = []
      if expand != 1:
        layers += [nn.Conv2d(inputs, hidden, 1, bias=False),
                   nn.BatchNorm2d(hidden), nn.SiLU()]
      layers += [nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2,
                           groups=hidden, bias=False),
                 nn.BatchNorm2d(hidden), nn.SiLU()]
      self.expand_depthwise = nn.Sequential(*layers)
      self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1),
                              nn.Conv2d(hidden, squeeze, 1), nn.SiLU(),
                              nn.Conv2d(squeeze, hidden, 1), nn.Sigmoid())
      self.project = nn.Sequential(nn.Conv2d(hidden, outputs, 1, bias=False),
                                   nn.BatchNorm2d(outputs))
      self.residual = stride == 1 and inputs == outputs

    def forward(self, x):
      y = self.expand_depthwise(x)
      y = self.project(y * self.se(y))
      return x + y if self.residual else y

  stages = ((1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5),
            (6, 80, 3, 2, 3), (6, 112, 3, 1, 5), (6, 192, 4, 2, 5),
            (6, 320, 1, 1, 3))
  layers = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32),
            nn.SiLU()]
  width = 32
  for expand, outputs, repeats, stride, kernel in stages:
    for i in range(repeats):
      layers.append(MBConv(width, outputs, expand, kernel,
                           stride if i == 0 else 1))
      width = outputs
  layers += [nn.Conv2d(width, 1280, 1, bias=False), nn.BatchNorm2d(1280),
             nn.SiLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
             nn.Linear(1280, num_outputs)]
  del torch
  return nn.Sequential(*layers)


def torch_network(model: str):
  if model == 'cnn':
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    import benchmark  # pylint: disable=g-import-not-at-top
    return benchmark.torch_model('cnn'), 'tools/benchmark.py torch.nn copy'
  try:
    import timm  # pylint: disable=g-import-not-at-top,unused-import
    return timm.create_model(model, num_classes=37), 'timm'
  except ImportError:
    return torch_efficientnet_b0(), 'torch.nn B0 (timm not installed)'


class _TorchCutouts:
  """The catalogue's images as the model sees them, decoded with Pillow."""

  def __init__(self, table: pathlib.Path, side: int):
    with table.open(newline='') as f:
      self.rows = list(csv.DictReader(f))
    self.side = side

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, index):
    import torch  # pylint: disable=g-import-not-at-top
    image = Image.open(self.rows[index]['path'])
    width, height = image.size
    image.draft('RGB', (max(1, width * self.side // CROP),
                        max(1, height * self.side // CROP)))
    scale = image.width / width
    left = (width - CROP) / 2 * scale
    top = (height - CROP) / 2 * scale
    image = image.convert('RGB').resize(
        (self.side, self.side), Image.Resampling.BILINEAR,
        box=(left, top, left + CROP * scale, top + CROP * scale))
    pixels = np.asarray(image, np.float32) / 127.5 - 1.0
    return torch.from_numpy(pixels.transpose(2, 0, 1).copy())


def torch_rate(out: pathlib.Path, model: str, workers: int,
               files: list[str]) -> tuple[float, str]:
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count())
  side, batch, n1, n2 = SETTINGS[model]
  network, source = torch_network(model)
  network.eval()

  def run(rows: int):
    table = out / f'catalog_{rows}.csv'
    write_catalog(table, files, rows)
    loader = torch.utils.data.DataLoader(
        _TorchCutouts(table, side), batch_size=batch, num_workers=workers)
    outputs = []
    with torch.no_grad():
      for images in loader:
        outputs.append(torch.sigmoid(network(images)).numpy())
    assert sum(len(o) for o in outputs) == rows

  return _difference_rate(run, n1, n2), source


def _child(flag: str, value: str) -> dict:
  """Runs this tool with one internal flag; returns its last JSON line."""
  result = subprocess.run(
      [sys.executable, __file__, f'--{flag}={value}',
       f'--out={_OUT.value}'], check=True, capture_output=True, text=True,
      env=dict(os.environ, PYTHONPATH=str(pathlib.Path(__file__).parents[1])))
  return json.loads(result.stdout.strip().splitlines()[-1])


def rss_child(folder: pathlib.Path) -> None:
  """One peak-RSS run: ``folder/catalog.csv`` into ``folder/out``."""
  from gzjax import predict  # pylint: disable=g-import-not-at-top
  from gzjax.data import catalog as catalogs  # pylint: disable=g-import-not-at-top
  config = _config('cnn', RSS_INPUT, 256, RSS_CROP)
  workdir = make_workdir(folder.parent / 'workdir_rss', config)
  catalog = catalogs.from_table(folder / 'catalog.csv')
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  start = time.perf_counter()
  summary = predict.predict_catalog(
      config, workdir, catalog,
      predict.Options(folder / 'out', shard_size=RSS_SHARD,
                      progress_interval=1e9))
  print(json.dumps({
      'rows': summary.rows, 'seconds': time.perf_counter() - start,
      'rss_before_mib': before / 1024,
      'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
  }))


def peak_rss(out: pathlib.Path, rows: int) -> dict:
  files = make_cutouts(out / f'cutouts_{RSS_SIDE}', RSS_SIDE, DISTINCT)
  folder = out / f'rss_{rows}'
  subprocess.run(['rm', '-rf', str(folder)], check=True)
  folder.mkdir(parents=True)
  write_catalog(folder / 'catalog.csv', files, rows)
  return _child('rss_child', str(folder))


def main(argv):
  del argv
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)  # Orbax's per-save chatter.
  if not _OUT.value:
    flags.FLAGS.out = tempfile.mkdtemp(prefix='bench_predict_')
  out = pathlib.Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  if _RSS_CHILD.value:
    rss_child(pathlib.Path(_RSS_CHILD.value))
    return
  files = make_cutouts(out / f'cutouts_{CUTOUT}', CUTOUT, DISTINCT)
  if _TORCH_CHILD.value:
    model, workers = _TORCH_CHILD.value.split(',')
    rate, source = torch_rate(out, model, int(workers), files)
    print(json.dumps({'rate': rate, 'source': source}))
    return
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  results = {
      'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
      'machine': (f'{platform.processor() or platform.machine()},'
                  f' {os.cpu_count()} cores, load average'
                  f' {os.getloadavg()[0]:.1f} at start'),
      'versions': (f'Python {platform.python_version()}, jax {jax.__version__}'
                   f', torch {torch.__version__}'),
      'throughput': [], 'rss': [],
  }
  print(f'{results["date"]}; {results["machine"]}; {results["versions"]}')
  print('\n| model | input | workers | gzjax images/s | PyTorch images/s |'
        ' gzjax / PyTorch | PyTorch model |')
  print('|---|---|---|---|---|---|---|')
  for model in _MODELS.value:
    for workers in map(int, _WORKER_COUNTS.value):
      ours = gzjax_rate(out, model, workers, files)
      measured = _child('torch_child', f'{model},{workers}')
      theirs, source = measured['rate'], measured['source']
      side = SETTINGS[model][0]
      results['throughput'].append(dict(
          model=model, side=side, workers=workers, gzjax=ours, torch=theirs,
          torch_model=source))
      print(f'| {model} | {side} px | {workers} | {ours:.1f} | {theirs:.1f} |'
            f' {ours / theirs:.2f} | {source} |', flush=True)
  print(f'\n| rows ({RSS_SIDE} px JPEG, cnn at {RSS_INPUT} px, shards of'
        f' {RSS_SHARD}) | RSS before predicting (MiB) | peak RSS (MiB) |'
        ' seconds |')
  print('|---|---|---|---|')
  for rows in map(int, _RSS_COUNTS.value):
    measured = peak_rss(out, rows)
    results['rss'].append(measured)
    print(f'| {rows:,} | {measured["rss_before_mib"]:.0f} |'
          f' {measured["peak_rss_mib"]:.0f} | {measured["seconds"]:.0f} |',
          flush=True)
  if _JSON.value:
    pathlib.Path(_JSON.value).write_text(json.dumps(results, indent=2))


if __name__ == '__main__':
  app.run(main)
