r"""Measures gzjax's training speed against Keras 3 and PyTorch, and whether
the input pipeline keeps the device busy.

  python tools/benchmark.py --model=cnn --batch_size=64
  python tools/benchmark.py --model=efficientnet_b0 --batch_size=16 --steps=3
  python tools/benchmark.py --config=configs/effnet_votes.py \
      --json=bench.json

One run, one markdown table, everything side by side on the same machine, for
one model at one input size (``--image_size``; default: the ``--config``
file's, else the model's native side) and one batch size:

* gzjax's jitted train step (``experiment.create_experiment`` and
  ``train.make_train_step`` on the config: its head, loss and optimizer) on a
  fixed random batch sharded over every local device.  Compilation (the first
  call, lowering included) is timed apart; throughput is the median images/s
  of ``--repeats`` timings of ``--steps`` steps.  On accelerators it computes
  in bfloat16 and reports MFU: the compiled per-device program's FLOPs (XLA
  cost analysis) per second over the device's peak (:data:`PEAK_FLOPS`); on a
  CPU it reports the FLOP/s achieved.
* The same model in its peers (a crash or a missing package becomes a
  ``missing: <reason>`` row), each in its fastest usual mode, timed the same
  way: Keras 3 on the jax backend (``jit_compile=True``) and on the torch
  backend (Keras's default, eager), a plain Dense 37 on top, MSE, Adam,
  ``fit`` on a fixed batch; PyTorch with ``torch.compile`` (eager when it
  fails, or with ``--notorch_compile``), the seed CNN written as a
  ``torch.nn`` module and other models from ``timm``.  Mixed precision
  (bfloat16) and channels-last on GPUs only.  The ratio column is gzjax's
  images/s over the peer's.
* The input pipeline on the real sample's JPEGs, built into a temporary
  ArrayRecord dataset, at the model's input size (as tools/benchmark_input.py,
  whose functions it uses): gzjax's grain pipeline for each ``--workers``
  count, its cached modes (``config.input.cache`` host and device: JPEGs
  decoded once, the augmentation run in jit on the device; the one-off
  cache build not counted), a plain Pillow loop (ratio against gzjax's 0
  workers) and a PyTorch
  ``DataLoader`` doing the loop's work per item (ratio against gzjax with as
  many workers); then the keeps-up ratio, the best pipeline's images/s over
  the train step's (above 1: the input pipeline is not the bottleneck).

Every trainer, gzjax's included, runs alone in a fresh process (gzjax first,
so that its errors come early): the same start for each, and on a GPU all of
its memory.  ``--peer`` is that subprocess's entry point.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

from absl import app
from absl import flags
import jax
import numpy as np

import benchmark_input
from gzjax import config as base
from gzjax import distributed
from gzjax import experiment as experiments
from gzjax import models
from gzjax import train
from gzjax.data import cache
from gzjax.data import cached_input
from gzjax.data import fields
from gzjax.data import galaxy_zoo
from gzjax.data import pipeline

FLAGS = flags.FLAGS  # --manual_dir, --images, --workers, --batch_size: shared.
PEER_NAMES = ('keras_jax', 'keras_torch', 'torch')


def define_flags() -> None:
  """The program's flags (with benchmark_input's), defined only when it
  runs as one: a test importing its functions beside gzjax.main defines no
  flag twice."""
  benchmark_input.define_flags()  # --batch_size, --workers, --images.
  flags.DEFINE_string(
      'config', '', 'An experiment config file (configs/*.py); default: the base'
      ' config (gzjax.config.base_config).')
  flags.DEFINE_string(
      'model', None, 'Model name (gzjax.models.MODEL_NAMES); default: the'
      ' config\'s.')
  flags.DEFINE_integer(
      'image_size', None, 'Input side in pixels; default: the --config file\'s,'
      ' else the model\'s native size.')
  flags.DEFINE_integer('steps', 10, 'Train steps per timing.')
  flags.DEFINE_integer(
      'repeats', 5, 'Timings per measurement; the median is reported.')
  flags.DEFINE_list(
      'peers', list(PEER_NAMES),
      f'Training peers to measure ({", ".join(PEER_NAMES)}); the PyTorch'
      ' DataLoader runs whenever torch is among them.')
  flags.DEFINE_bool(
      'torch_compile', True, 'PyTorch peer: torch.compile the model (a cold'
      ' compile takes about a minute on 2 CPU cores).')
  flags.DEFINE_string('json', '', 'Also write the rows to this file.')
  flags.DEFINE_string(
      'peer', '', 'Internal: run only this peer and print its JSON line.')
  flags.DEFINE_bool(
      'input_rows', True, 'Measure the input pipelines on the real sample'
      ' (--manual_dir).')
  flags.DEFINE_integer(
      'e2e_steps', 0, 'End-to-end rows (input + augmentation + step on a'
      ' rendered synthetic set, gzjax\'s loop against a PyTorch DataLoader):'
      ' training steps each, 0 for none; 200 or more on accelerators.')
  flags.DEFINE_integer(
      'e2e_galaxies', 1000, 'End-to-end rows: synthetic galaxies to render.')
  flags.DEFINE_integer(
      'e2e_workers', 0, 'End-to-end rows: DataLoader workers (0: one per core).')
  flags.DEFINE_string(
      'peer_data_dir', '', 'Internal: the torch_dataloader peer\'s dataset.')


# device_kind substring (first match wins): dense peak FLOP/s in
# (bfloat16, float32), from NVIDIA's data sheets (float32 without TF32).
# MFU is reported against the bfloat16 column whatever the compute dtype.
PEAK_FLOPS = {
    'H100 PCIe': (756e12, 51e12),
    'H100': (989e12, 67e12),
    'H200': (989e12, 67e12),
    'B200': (2250e12, 80e12),
    'A100': (312e12, 19.5e12),
    'L4': (121e12, 30e12),
    'TPU v4': (275e12, 275e12 / 4),
    'TPU v5 lite': (197e12, 197e12 / 4),
    'TPU v5p': (459e12, 459e12 / 4),
    'TPU v6 lite': (918e12, 918e12 / 4),
}

KERAS_APPLICATIONS = {
    'inception_v3': 'InceptionV3',
    **{f'efficientnet_b{i}': f'EfficientNetB{i}' for i in range(8)},
}


@dataclasses.dataclass
class Row:
  """One line of the table; ``missing`` replaces the number when set."""

  measurement: str
  images_per_s: float | None = None
  ratio: float | None = None
  notes: str = ''
  missing: str = ''


def timed_rate(run_steps: Callable[[], None], images_per_call: int,
               repeats: int) -> float:
  """Median images/s of ``repeats`` calls of ``run_steps``."""
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    run_steps()
    seconds.append(time.perf_counter() - start)
  return benchmark_input.per_second(images_per_call,
                                    statistics.median(seconds))


# ------------------------------------------------------------------ gzjax ---


def load_config(path: str):
  if not path:
    return base.base_config()
  base.make_importable(path)  # configs/*.py import configs.common.
  spec = importlib.util.spec_from_file_location('benchmarked_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def configure(path: str, model: str | None, image_size: int | None,
              batch_size: int):
  """The experiment config with the command line's model, size and batch."""
  config = load_config(path)
  if model:
    config.model.name = model
  if image_size:
    config.input.image_size = image_size
  elif not path:
    config.input.image_size = models.native_input_size(config.model.name)
  config.input.batch_size = batch_size
  return config


def random_batch(batch_size: int, size: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  return {
      'image': rng.normal(size=(batch_size, size, size, 3)).astype(np.float32),
      'votes': rng.random((batch_size, fields.NUM_VOTES)).astype(np.float32),
      'votes_mask': np.ones((batch_size, fields.NUM_VOTES), bool),
      'label_3class': rng.integers(0, 3, batch_size).astype(np.int32),
      'label_7class': rng.integers(0, 7, batch_size).astype(np.int32),
      'example_mask': np.ones(batch_size, bool),
  }


def peak_flops(device_kind: str, dtype: str = 'bfloat16') -> float | None:
  for name, (bfloat16, float32) in PEAK_FLOPS.items():
    if name in device_kind:
      return bfloat16 if dtype == 'bfloat16' else float32
  return None


def step_flops(experiment: experiments.Experiment, batch_size: int) -> float:
  """FLOPs of one train step on ``batch_size`` images, convolutions included.

  XLA's cost analysis of the step as the CPU lowers it (``train.make_train_step``
  on a one-CPU mesh, shapes only, not compiled): a compiled GPU program's
  analysis leaves out the convolutions, which become cuDNN calls, and so
  reported an MFU of 0.1% for a step running at ~21%.
  """
  cpu = distributed.make_mesh(jax.devices('cpu')[:1])
  on_cpu = dataclasses.replace(experiment, mesh=cpu)
  size = experiment.config.input.image_size
  shapes = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
      (experiment.abstract_state(), random_batch(batch_size, size)))
  lowered = train.make_train_step(on_cpu).lower(*shapes)
  return float(lowered.cost_analysis()['flops'])


def gzjax_peer(config_path: str, model: str, size: int, batch_size: int,
               steps: int, repeats: int) -> dict:
  """gzjax's train step: compile time, images/s, MFU or FLOP/s achieved."""
  config = configure(config_path, model, size, batch_size)
  devices = jax.local_devices()
  if batch_size % len(devices):
    raise ValueError(f'--batch_size={batch_size} does not divide over'
                     f' {len(devices)} devices.')
  experiment = experiments.create_experiment(config)
  state = experiment.initial_state()
  batch = train.to_global(random_batch(batch_size, size),
                          experiment.batch_sharding)
  start = time.perf_counter()
  step = train.make_train_step(experiment).compile(state, batch)
  state, _ = step(state, batch)
  jax.block_until_ready(state)
  compile_seconds = time.perf_counter() - start

  def run_steps():
    nonlocal state
    for _ in range(steps):
      state, _ = step(state, batch)
    jax.block_until_ready(state)

  rate = timed_rate(run_steps, steps * batch_size, repeats)
  flops_per_second = step_flops(experiment, batch_size) * rate / batch_size
  kind = devices[0].device_kind
  mode = [f'{experiments.compute_dtype(config).name} (model.dtype'
          f' {config.model.dtype})', f'{len(devices)}x {kind}',
          f'{flops_per_second / 1e12:.3g} TFLOP/s']
  if peak := peak_flops(kind):
    mode.append(f'MFU {flops_per_second / (peak * len(devices)):.1%} of the'
                ' dense bf16 peak')
  elif jax.default_backend() != 'cpu':
    mode.append('MFU unknown (no peak FLOP/s for this device)')
  return {'images_per_s': rate, 'warmup_s': compile_seconds,
          'mode': ', '.join(mode),
          'tflop_per_s': flops_per_second / 1e12}


# ------------------------------------------------------------------ peers ---


def keras_model(keras, name: str, size: int):
  """``name`` in Keras: the seed CNN layer for layer, or an application."""
  if name == 'cnn':
    layers = [keras.Input((size, size, 3))]
    for block, width in enumerate((64, 128, 128)):
      layers += [keras.layers.Conv2D(width, 3),
                 keras.layers.Conv2D(width, 3, activation='relu')]
      if block < 2:
        layers.append(keras.layers.MaxPooling2D(2))
    layers += [keras.layers.GlobalMaxPooling2D(),
               keras.layers.Dense(37, dtype='float32')]
    return keras.Sequential(layers)
  if name not in KERAS_APPLICATIONS:
    raise ValueError(f'keras.applications has no {name}')
  backbone = getattr(keras.applications, KERAS_APPLICATIONS[name])(
      weights=None, include_top=False, pooling='avg',
      input_shape=(size, size, 3))
  return keras.Sequential(
      [backbone, keras.layers.Dense(37, dtype='float32')])


def keras_peer(model: str, size: int, batch_size: int, steps: int,
               repeats: int) -> dict:
  """Keras 3 on $KERAS_BACKEND: ``fit`` on one batch repeated ``steps``
  times."""
  import keras  # pylint: disable=g-import-not-at-top
  backend = keras.backend.backend()
  if backend == 'torch':
    import torch  # pylint: disable=g-import-not-at-top
    on_gpu = torch.cuda.is_available()
  else:
    on_gpu = jax.default_backend() != 'cpu'
  if on_gpu:
    keras.mixed_precision.set_global_policy('mixed_bfloat16')
  network = keras_model(keras, model, size)
  # Keras compiles the torch backend only experimentally; eager is its default.
  jit_compile = backend == 'jax'
  network.compile(optimizer=keras.optimizers.Adam(), loss='mse',
                  jit_compile=jit_compile)
  batch = random_batch(batch_size, size)
  images = np.repeat(batch['image'], steps, axis=0)
  votes = np.repeat(batch['votes'], steps, axis=0)

  def fit(count: int):
    network.fit(images[:count], votes[:count], batch_size=batch_size,
                epochs=1, shuffle=False, verbose=0)

  start = time.perf_counter()
  fit(batch_size)
  warmup_seconds = time.perf_counter() - start
  return {
      'images_per_s': timed_rate(lambda: fit(len(images)), len(images),
                                 repeats),
      'warmup_s': warmup_seconds,
      'mode': (f'fit, jit_compile={jit_compile},'
               f' {keras.mixed_precision.global_policy().name}'),
  }


def torch_model(name: str):
  """``name`` in PyTorch: the seed CNN as ``torch.nn``, others from timm."""
  if name != 'cnn':
    import timm  # pylint: disable=g-import-not-at-top
    return timm.create_model(name, pretrained=False, num_classes=37)
  from torch import nn  # pylint: disable=g-import-not-at-top
  layers = []
  for block, (inputs, width) in enumerate(((3, 64), (64, 128), (128, 128))):
    layers += [nn.Conv2d(inputs, width, 3), nn.Conv2d(width, width, 3),
               nn.ReLU()]
    if block < 2:
      layers.append(nn.MaxPool2d(2))
  return nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten(),
                       nn.Linear(128, 37))


def torch_peer(model: str, size: int, batch_size: int, steps: int,
               repeats: int, compile_model: bool) -> dict:
  """PyTorch: the (compiled) model, Adam, MSE on one fixed device batch."""
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count())
  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  on_gpu = device.type == 'cuda'
  memory_format = torch.channels_last if on_gpu else torch.contiguous_format
  network = torch_model(model).to(device, memory_format=memory_format)
  batch = random_batch(batch_size, size)
  images = torch.from_numpy(batch['image']).permute(0, 3, 1, 2).to(
      device, memory_format=memory_format)
  votes = torch.from_numpy(batch['votes']).to(device)
  optimizer = torch.optim.Adam(network.parameters())
  forward = torch.compile(network) if compile_model else network

  def train_step():
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, torch.bfloat16, enabled=on_gpu):
      outputs = forward(images)
    torch.nn.functional.mse_loss(outputs.float(), votes).backward()
    optimizer.step()

  def run_steps(count: int):
    for _ in range(count):
      train_step()
    if on_gpu:
      torch.cuda.synchronize()

  mode = 'torch.compile' if compile_model else 'eager'
  start = time.perf_counter()
  try:
    run_steps(1)
  except Exception as error:  # pylint: disable=broad-except
    if forward is network:
      raise
    mode = f'eager (torch.compile failed: {type(error).__name__})'
    forward = network
    run_steps(1)
  warmup_seconds = time.perf_counter() - start
  precision = 'bfloat16 autocast, channels_last' if on_gpu else 'float32'
  return {
      'images_per_s': timed_rate(lambda: run_steps(steps), steps * batch_size,
                                 repeats),
      'warmup_s': warmup_seconds,
      'mode': f'{mode}, {precision}, {torch.get_num_threads()} threads',
  }


def torch_dataloader_peer(data_dir: str, size: int, workers: int,
                          images: int, batch_size: int) -> dict:
  """A ``DataLoader`` over the same records doing the plain loop's work per
  item (benchmark_input.plain_pillow_image), after its first batch."""
  import torch  # pylint: disable=g-import-not-at-top
  source = galaxy_zoo.data_source('kaggle', data_dir, 'train')

  class PlainPillowDataset(torch.utils.data.Dataset):

    def __len__(self):
      return len(source)

    def __getitem__(self, index):
      record = source[index]
      rng = np.random.default_rng(index)
      return (benchmark_input.plain_pillow_image(record['image'], size, rng),
              record['votes'])

  dataset = PlainPillowDataset()
  batches = max(1, images // batch_size)
  sampler = torch.utils.data.RandomSampler(
      dataset, replacement=True, num_samples=(batches + 1) * batch_size)
  loader = iter(torch.utils.data.DataLoader(
      dataset, batch_size=batch_size, sampler=sampler, num_workers=workers))
  start = time.perf_counter()
  next(loader)  # Start-up (worker processes) is not throughput.
  warmup_seconds = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(batches):
    next(loader)
  return {
      'images_per_s': benchmark_input.per_second(
          batches * batch_size, time.perf_counter() - start),
      'warmup_s': warmup_seconds,
      'mode': f'{workers} workers, Pillow per item',
  }


# ------------------------------------------------------------ end to end ---


def synthetic_geometry(size: int) -> tuple[int, int]:
  """(rendered side, centre crop) for end-to-end training at ``size`` px: the
  Kaggle field of view (207 of 424 px), rendered at twice the input side."""
  rendered = min(424, 2 * size)
  return rendered, round(rendered * 207 / 424)


def render_synthetic(data_dir: str, size: int, count: int) -> None:
  """galaxy_zoo/synthetic with ``count`` labelled galaxies for the end-to-end
  rows: needs no download, so it runs on an offline GPU machine."""
  galaxy_zoo.prepare('synthetic', data_dir, num_labelled=count, num_test=0,
                     image_size=synthetic_geometry(size)[0])


def gzjax_end_to_end(config_path: str, model: str, size: int,
                     batch_size: int, steps: int, data_dir: str) -> dict:
  """Images/s of ``train.train_and_evaluate`` itself (input, augmentation,
  step) with its fastest input: the decoded images cached on the device.

  The rate is over the logged windows after the first (which compiles); the
  cache's one-off build and the final evaluation are not in any window.
  """
  config = configure(config_path, model, size, batch_size)
  config.dataset = 'galaxy_zoo/synthetic'
  config.data_dir = data_dir
  config.input.crop_size = synthetic_geometry(size)[1]
  config.input.cache = 'device'
  config.num_train_steps = steps
  config.log_every_steps = max(1, steps // 5)
  config.eval_every_steps = 0
  config.checkpoint_every_steps = steps
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    train.train_and_evaluate(config, workdir)
    total_seconds = time.perf_counter() - start
    logged = [json.loads(line) for line in
              (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()]
  windows = [row['train/images_per_second'] for row in logged
             if 'train/images_per_second' in row][1:]
  # Each window holds log_every_steps batches: the overall rate is the
  # harmonic mean of the windows' rates.
  rate = len(windows) / sum(1 / r for r in windows)
  return {'images_per_s': rate, 'warmup_s': total_seconds,
          'mode': (f'train.train_and_evaluate, {steps} steps, input.cache='
                   f'device, {experiments.compute_dtype(config).name}; warmup ='
                   ' whole run incl. cache build and evaluation')}


def torch_end_to_end(model: str, size: int, batch_size: int, steps: int,
                     data_dir: str, workers: int,
                     compile_model: bool) -> dict:
  """PyTorch's usual training: a ``DataLoader`` (``workers`` processes,
  pinned memory) decoding and augmenting the same records as the plain
  Pillow loop (crop, resize, rotate, flip), feeding the peer's model as
  :func:`torch_peer` trains it."""
  import torch  # pylint: disable=g-import-not-at-top
  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  on_gpu = device.type == 'cuda'
  memory_format = torch.channels_last if on_gpu else torch.contiguous_format
  source = galaxy_zoo.data_source('synthetic', data_dir, 'train')
  crop = synthetic_geometry(size)[1]

  class AugmentedDataset(torch.utils.data.Dataset):

    def __len__(self):
      return len(source)

    def __getitem__(self, index):
      record = source[index]
      rng = np.random.default_rng(index)
      image = benchmark_input.plain_pillow_image(record['image'], size, rng,
                                                 crop)
      return image.transpose(2, 0, 1).copy(), record['votes']

  sampler = torch.utils.data.RandomSampler(
      AugmentedDataset(), replacement=True,
      num_samples=(steps + 1) * batch_size)
  loader = iter(torch.utils.data.DataLoader(
      AugmentedDataset(), batch_size=batch_size, sampler=sampler,
      num_workers=workers, pin_memory=on_gpu,
      persistent_workers=workers > 0))
  network = torch_model(model).to(device, memory_format=memory_format)
  optimizer = torch.optim.Adam(network.parameters())
  forward = torch.compile(network) if compile_model else network

  def train_step():
    images, votes = next(loader)
    images = images.to(device, non_blocking=True,
                       memory_format=memory_format)
    votes = votes.to(device, non_blocking=True)
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, torch.bfloat16, enabled=on_gpu):
      outputs = forward(images)
    torch.nn.functional.mse_loss(outputs.float(), votes).backward()
    optimizer.step()

  start = time.perf_counter()
  train_step()  # Worker start-up and compilation.
  warmup_seconds = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps):
    train_step()
  if on_gpu:
    torch.cuda.synchronize()
  return {
      'images_per_s': benchmark_input.per_second(
          steps * batch_size, time.perf_counter() - start),
      'warmup_s': warmup_seconds,
      'mode': (f'DataLoader {workers} workers, Pillow per item,'
               f' {"torch.compile" if compile_model else "eager"},'
               f' {"bfloat16 autocast" if on_gpu else "float32"}, {steps}'
               ' steps'),
  }


def end_to_end_rows(model: str, size: int, batch_size: int) -> list[Row]:
  """gzjax's training loop against PyTorch's DataLoader + compiled model,
  on a synthetic dataset rendered for the purpose."""
  steps = FLAGS.e2e_steps
  with tempfile.TemporaryDirectory() as data_dir:
    render_synthetic(data_dir, size, FLAGS.e2e_galaxies)
    common = [f'--model={model}', f'--image_size={size}',
              f'--batch_size={batch_size}', f'--e2e_steps={steps}',
              f'--peer_data_dir={data_dir}']
    gzjax = run_peer(['--peer=gzjax_e2e', f'--config={FLAGS.config}',
                      *common])
    rows = [measured_row(
        f'end to end: gzjax training, cached on device ({model}, {size} px,'
        f' batch {batch_size})', gzjax, gzjax.get('images_per_s', 0))]
    if 'torch' in FLAGS.peers:
      workers = FLAGS.e2e_workers or os.cpu_count()
      torch_result = run_peer(
          ['--peer=torch_e2e', *common, f'--workers={workers}',
           f'--torch_compile={FLAGS.torch_compile}'])
      rows.append(measured_row(
          f'end to end: PyTorch DataLoader ({workers} workers) + model',
          torch_result, gzjax.get('images_per_s', 0)))
  return rows


# --peer name -> (table label, $KERAS_BACKEND)
TRAINERS = {
    'gzjax': ('gzjax', ''),
    'keras_jax': ('Keras 3 (jax backend)', 'jax'),
    'keras_torch': ('Keras 3 (torch backend)', 'torch'),
    'torch': ('PyTorch', ''),
}


def run_peer(arguments: list[str], keras_backend: str = '') -> dict:
  """This script with ``arguments`` in a fresh process: its JSON line, or
  ``{'missing': <its error's last line>, 'stderr': <its end>}``."""
  environment = dict(os.environ)
  if keras_backend:
    environment['KERAS_BACKEND'] = keras_backend
  result = subprocess.run([sys.executable, __file__, *arguments],
                          capture_output=True, text=True, env=environment)
  if result.returncode:
    error_lines = result.stderr.strip().splitlines() or [
        f'exit status {result.returncode}']
    return {'missing': error_lines[-1], 'stderr': result.stderr[-3000:]}
  return json.loads(result.stdout.strip().splitlines()[-1])


def measured_row(label: str, result: dict, reference_rate: float) -> Row:
  """A peer's row; its ratio is ``reference_rate`` (gzjax's) over its own."""
  if 'missing' in result:
    return Row(label, missing=result['missing'])
  return Row(label, result['images_per_s'],
             reference_rate / result['images_per_s'],
             f'compile/warmup {result["warmup_s"]:.1f} s, {result["mode"]}')


def run_peer_in_process() -> dict:
  """What the ``--peer`` subprocess measures."""
  size, batch_size = FLAGS.image_size, FLAGS.batch_size
  if FLAGS.peer == 'torch_dataloader':
    return torch_dataloader_peer(FLAGS.peer_data_dir, size,
                                 int(FLAGS.workers[0]), FLAGS.images,
                                 batch_size)
  if FLAGS.peer == 'gzjax_e2e':
    return gzjax_end_to_end(FLAGS.config, FLAGS.model, size, batch_size,
                            FLAGS.e2e_steps, FLAGS.peer_data_dir)
  if FLAGS.peer == 'torch_e2e':
    return torch_end_to_end(FLAGS.model, size, batch_size, FLAGS.e2e_steps,
                            FLAGS.peer_data_dir, int(FLAGS.workers[0]),
                            FLAGS.torch_compile)
  training = (FLAGS.model, size, batch_size, FLAGS.steps, FLAGS.repeats)
  if FLAGS.peer == 'gzjax':
    return gzjax_peer(FLAGS.config, *training)
  if FLAGS.peer == 'torch':
    return torch_peer(*training, compile_model=FLAGS.torch_compile)
  return keras_peer(*training)


def cached_rate(source, data_dir: str, mode: str, size: int, images: int,
                batch_size: int) -> float:
  """Images/s of a cached mode: batches from the decoded uint8 cache,
  augmented on the device (the cache's one-off build is not counted)."""
  config = pipeline.default_config()
  config.image_size = size
  config.batch_size = batch_size
  config.cache = mode
  cached = cache.open_or_build(source, pathlib.Path(data_dir) / 'cache',
                               config, dataset='galaxy_zoo/kaggle',
                               split='train')
  return cached_input.measure_images_per_second(
      cached, config, num_batches=max(1, images // batch_size))


def input_rows(model: str, size: int, batch_size: int,
               train_rate: float) -> list[Row]:
  """gzjax's pipeline, the plain Pillow loop, PyTorch's DataLoader, and
  whether the pipeline keeps up with the train step's ``train_rate``."""
  workers, images = [int(count) for count in FLAGS.workers], FLAGS.images
  with tempfile.TemporaryDirectory() as data_dir:
    galaxy_zoo.prepare('kaggle', data_dir, manual_dir=FLAGS.manual_dir)
    source = galaxy_zoo.data_source('kaggle', data_dir, 'train')
    jpegs = [source[i]['image'] for i in range(min(len(source), 256))]
    pipeline_rates = {
        count: benchmark_input.pipeline_rate(source, size, count, images,
                                             batch_size)
        for count in workers}
    cached_rates = {mode: cached_rate(source, data_dir, mode, size, images,
                                      batch_size)
                    for mode in cache.MODES if mode}
    plain_rate = benchmark_input.plain_pillow_rate(jpegs, size, images)
    loaders = {
        count: run_peer(['--peer=torch_dataloader', f'--model={model}',
                         f'--image_size={size}', f'--batch_size={batch_size}',
                         f'--peer_data_dir={data_dir}', f'--workers={count}',
                         f'--images={images}'])
        for count in workers if 'torch' in FLAGS.peers}
  rows = [Row(f'gzjax pipeline -> {size} px, {count} workers', rate)
          for count, rate in pipeline_rates.items()]
  rows += [Row(f'gzjax cached ({mode}) -> {size} px, augmented on device',
               rate, None, 'decoded once; warp, flips, jitter in jit')
           for mode, rate in cached_rates.items()]
  rows.append(Row(f'plain Pillow loop -> {size} px', plain_rate,
                  pipeline_rates[0] / plain_rate if 0 in pipeline_rates
                  else None, 'vs gzjax 0 workers'))
  rows += [measured_row(f'PyTorch DataLoader -> {size} px, {count} workers',
                        result, pipeline_rates[count])
           for count, result in loaders.items()]
  rows.append(Row('keeps up: best gzjax pipeline / train step', None,
                  max(*pipeline_rates.values(), *cached_rates.values())
                  / train_rate,
                  'above 1: the device is not starved'))
  return rows


# ------------------------------------------------------------------ table ---


def markdown_table(rows: list[Row]) -> str:
  lines = ['| measurement | images/s | gzjax / this | notes |',
           '| --- | ---: | ---: | --- |']
  for row in rows:
    if row.missing:
      rate = f'missing: {row.missing}'
    elif row.images_per_s is None:
      rate = ''
    else:  # Three significant figures below 100.
      rate = (f'{row.images_per_s:,.0f}' if row.images_per_s >= 100
              else f'{row.images_per_s:.3g}')
    ratio = '' if row.ratio is None else f'{row.ratio:.2f}'
    lines.append(f'| {row.measurement} | {rate} | {ratio} | {row.notes} |')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.peer:
    print(json.dumps(run_peer_in_process()))
    return
  # This process only orchestrates: each trainer gets a fresh process (and,
  # on a GPU, all of its memory), gzjax first so that its errors come early.
  config = configure(FLAGS.config, FLAGS.model, FLAGS.image_size,
                     FLAGS.batch_size)
  model, size = config.model.name, config.input.image_size
  batch_size = config.input.batch_size
  training = [f'--model={model}', f'--image_size={size}',
              f'--batch_size={batch_size}', f'--steps={FLAGS.steps}',
              f'--repeats={FLAGS.repeats}']
  gzjax = run_peer(['--peer=gzjax', f'--config={FLAGS.config}', *training])
  if 'missing' in gzjax:
    sys.exit(f'The gzjax train step failed:\n{gzjax["stderr"]}')
  rows = [measured_row(
      f'gzjax train step ({model}, {size} px, batch {batch_size})', gzjax,
      gzjax['images_per_s'])]
  rows += [
      measured_row(f'{TRAINERS[name][0]} train step', run_peer(
          [f'--peer={name}', *training,
           f'--torch_compile={FLAGS.torch_compile}'], TRAINERS[name][1]),
                   gzjax['images_per_s'])
      for name in FLAGS.peers]
  if FLAGS.input_rows:
    rows += input_rows(model, size, batch_size, gzjax['images_per_s'])
  if FLAGS.e2e_steps:
    rows += end_to_end_rows(model, size, batch_size)
  print(f'\n{markdown_table(rows)}')
  if FLAGS.json:
    with open(FLAGS.json, 'w') as f:
      json.dump([dataclasses.asdict(row) for row in rows], f, indent=2)


if __name__ == '__main__':
  define_flags()
  app.run(main)
