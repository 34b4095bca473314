"""Smoke run of tools/benchmark.py at tiny settings (about 40 s on 2 cores):
every row it promises is there, with a number or a reason."""

import json
import pathlib
import re
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
NUMBER = re.compile(r'[\d,.]+')


def _is_number_or_missing(cell: str) -> bool:
  return bool(NUMBER.fullmatch(cell)) or cell.startswith('missing: ')


def test_benchmark_prints_gzjax_and_its_peers(kaggle_sample, tmp_path):
  # Cold torch.compile takes a minute on 2 cores, and Keras's torch backend
  # ten seconds to import: both stay out of the smoke run.
  result = subprocess.run(
      [sys.executable, 'tools/benchmark.py', '--model=cnn', '--image_size=32',
       '--batch_size=8', '--steps=2', '--repeats=2', '--images=64',
       '--workers=0', f'--manual_dir={kaggle_sample}',
       '--peers=keras_jax,torch', '--notorch_compile',
       f'--json={tmp_path / "rows.json"}'],
      capture_output=True, text=True, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = {}
  for line in result.stdout.splitlines():
    if line.startswith('| ') and not line.startswith(('| measurement',
                                                      '| ---')):
      name, rate, ratio, _ = (cell.strip() for cell in line.split('|')[1:-1])
      rows[name] = (rate, ratio)
  gzjax_rate, gzjax_ratio = rows['gzjax train step (cnn, 32 px, batch 8)']
  assert float(gzjax_rate.replace(',', '')) > 0 and gzjax_ratio == '1.00'
  for name in ('Keras 3 (jax backend) train step', 'PyTorch train step',
               'gzjax pipeline -> 32 px, 0 workers',
               'plain Pillow loop -> 32 px',
               'PyTorch DataLoader -> 32 px, 0 workers'):
    assert _is_number_or_missing(rows[name][0]), (name, rows[name])
  for mode in ('host', 'device'):
    rate = rows[f'gzjax cached ({mode}) -> 32 px, augmented on device'][0]
    assert float(rate.replace(',', '')) > 0
  assert float(rows['keeps up: best gzjax pipeline / train step'][1]) > 0
  written = json.loads((tmp_path / 'rows.json').read_text())
  assert [row['measurement'] for row in written] == list(rows)


def test_profile_step_splits_the_step(tmp_path):
  result = subprocess.run(
      [sys.executable, 'tools/profile_step.py', '--model=cnn',
       '--image_size=32', '--batch_size=8', '--steps=2', '--repeats=2',
       f'--trace_dir={tmp_path / "trace"}'],
      capture_output=True, text=True, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  milliseconds = {}
  for line in result.stdout.splitlines():
    if line.startswith('| ') and line.split('|')[2].strip()[:1].isdigit():
      milliseconds[line.split('|')[1].strip()] = float(line.split('|')[2])
  assert 0 < milliseconds['forward'] < milliseconds['forward + backward']
  # By hand, the seed CNN's convolutions at 32 px (valid 3x3: 30, 28, pool,
  # 12, 10, pool, 3, 1 px) cost 2 * 9 * (30*30*3*64 + 28*28*64*64
  # + 12*12*64*128 + 10*10*128*128 + 3*3*128*128 + 128*128) = 114.6 MFLOP
  # forward per image; a step is forward + 2x for the backward, batch 8.
  # BUILD.md claims XLA's count matches this within 1 %: it reports 2.74
  # against 2.750 (-0.4 %: the first convolution needs no input gradient,
  # -0.9 %, and the biases, ReLUs, pools, dense head and Adam add the rest).
  by_hand = 2 * 9 * (30 * 30 * 3 * 64 + 28 * 28 * 64 * 64 + 12 * 12 * 64 * 128
                     + 10 * 10 * 128 * 128 + 3 * 3 * 128 * 128 + 128 * 128)
  by_hand *= 3 * 8 / 1e9
  reported = float(re.search(r'([\d.]+) GFLOP per step', result.stdout)[1])
  assert abs(reported - by_hand) / by_hand < 0.01, (reported, by_hand)
  assert any((tmp_path / 'trace').rglob('*.xplane.pb'))


def _benchmark_module():
  sys.path.insert(0, str(REPO / 'tools'))
  try:
    import benchmark  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  return benchmark


def test_benchmark_configures_every_model_at_its_native_size():
  from gzjax import models  # pylint: disable=g-import-not-at-top
  benchmark = _benchmark_module()
  native = {'cnn': 64, 'inception_v3': 299, 'viewpoint': 69,
            **dict(zip([f'efficientnet_b{i}' for i in range(8)],
                       (224, 240, 260, 300, 380, 456, 528, 600))),
            **dict(zip([f'efficientnet_lite{i}' for i in range(5)],
                       (224, 240, 260, 280, 300)))}
  assert set(native) == set(models.MODEL_NAMES)
  for name in models.MODEL_NAMES:
    config = benchmark.configure('', name, None, 16)
    assert (config.model.name, config.input.image_size,
            config.input.batch_size) == (name, native[name], 16)
  assert benchmark.configure('', 'efficientnet_b7', 96, 4).input.image_size \
      == 96


def test_step_flops_count_the_convolutions():
  from gzjax import config as base  # pylint: disable=g-import-not-at-top
  from gzjax import experiment as experiments  # pylint: disable=g-import-not-at-top
  benchmark = _benchmark_module()
  config = base.base_config()
  config.input.image_size = 32
  config.input.batch_size = 8
  flops = benchmark.step_flops(experiments.create_experiment(config), 8)
  # The seed CNN's convolutions by hand (see test_profile_step_splits_the_
  # step): forward + 2x for the backward, batch 8.  The lowered count lacks
  # only the first layer's input gradient, which nothing needs (0.9%).
  by_hand = 3 * 8 * 2 * 9 * (30 * 30 * 3 * 64 + 28 * 28 * 64 * 64
                             + 12 * 12 * 64 * 128 + 10 * 10 * 128 * 128
                             + 3 * 3 * 128 * 128 + 128 * 128)
  assert abs(flops - by_hand) / by_hand < 0.02, (flops, by_hand)
  assert benchmark.peak_flops('NVIDIA H200') == 989e12
  assert benchmark.peak_flops('NVIDIA H100 PCIe') == 756e12
  assert benchmark.peak_flops('cpu') is None


def _gpu_report():
  sys.path.insert(0, str(REPO / 'tools'))
  try:
    import gpu_report  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  return gpu_report


def _results(folder, status, rates, settings=None):
  folder.mkdir()
  (folder / 'settings.json').write_text(json.dumps(settings or {
      'cnn': 64, 'b0': 224, 'inception': 299, 'small': 256, 'large': 1024,
      'b0_batch': 128, 'inception_batch': 64, 'e2e_steps': 200,
      'steps': '', 'smoke': 0}))
  (folder / 'status.tsv').write_text(
      ''.join(f'{name}\t{code}\t10\n' for name, code in status))
  for name, rate in rates.items():
    (folder / f'{name}.json').write_text(json.dumps(
        {'images_per_s': rate, 'warmup_s': 1.0, 'mode': 'm'}))
  return folder


def _table_rows(text):
  """(measurement, images/s, ratio, notes) of each row of a report."""
  return [tuple(cell.strip() for cell in line.split('|')[1:-1])
          for line in text.splitlines()
          if line.startswith('| ') and not line.startswith(('| measurement',
                                                            '| ---'))]


def test_gpu_report_tables_every_measurement_or_why_not(tmp_path):
  gpu_report = _gpu_report()
  results = _results(tmp_path / 'results',
                     [('gzjax_cnn_small', '0'), ('torch_cnn_small', '0'),
                      ('keras_cnn_small', '124'),
                      ('torch_b0', 'skipped: 9 s of the budget left')],
                     {'gzjax_cnn_small': 1000.0, 'torch_cnn_small': 800.0})
  (results / 'keras_cnn_small.json').write_text('')
  (results / 'keras_cnn_small.err').write_text('compiling\nstill compiling')
  cells = {}
  for name, rate, ratio, _ in _table_rows(gpu_report.tables(results)):
    cells.setdefault(name, (rate, ratio))
  assert cells['**cnn, 64 px, batch 256**: gzjax'] == ('1,000', '1.00')
  torch_label = 'PyTorch (torch.compile, bf16 autocast, channels-last)'
  assert cells[torch_label] == ('800', '1.25')
  keras_label = 'Keras 3 on jax (mixed_bfloat16 on GPUs)'
  assert cells[keras_label][0] == ('missing: timed out after 10 s: still'
                                   ' compiling')
  assert cells[f'{torch_label}, timm'][0] == (
      'missing: skipped: 9 s of the budget left')
  assert cells['**inception_v3, 299 px, batch 64**: gzjax'][0] == \
      'missing: not run'


def test_gpu_report_joins_two_calls_of_one_lease(tmp_path):
  gpu_report = _gpu_report()
  first = _results(tmp_path / 'first',
                   [('gzjax_b0', '0'), ('torch_b0', '124'),
                    ('keras_b0', 'skipped: 3 s of the budget left'),
                    ('gzjax_b0_autotune0', '0')],
                   {'gzjax_b0': 6000.0, 'gzjax_b0_autotune0': 5000.0})
  (first / 'startup.md').write_text('start-up table of the first call')
  second = _results(tmp_path / 'second',
                    [('torch_b0', '0'), ('keras_b0', '1'),
                     ('gzjax_b0_autotune0', '124')],
                    {'torch_b0': 2400.0})
  text = gpu_report.tables(first, second)
  rows = _table_rows(text)
  # B0's rows: from its gzjax row to the next model's.
  start = next(i for i, row in enumerate(rows) if 'efficientnet_b0' in row[0])
  cells = {}
  for name, rate, ratio, _ in rows[start:]:
    if name.startswith('**') and cells:
      break
    cells[name] = (rate, ratio)
  assert cells['**efficientnet_b0, 224 px, batch 128**: gzjax'] == (
      '6,000', '1.00')
  torch_label = 'PyTorch (torch.compile, bf16 autocast, channels-last), timm'
  assert cells[torch_label] == ('2,400', '2.50')  # The second call's.
  # The second call's failure replaces the first call's skip ...
  assert cells['Keras 3 on jax (mixed_bfloat16 on GPUs)'][0] == (
      'missing: exit status 1 after 10 s')
  # ... but never a measurement.
  assert cells['gzjax, --xla_gpu_autotune_level=0 (no kernel autotuning)'] \
      == ('5,000', '1.20')
  assert 'start-up table of the first call' in text
  other = _results(tmp_path / 'other', [], {}, settings={'smoke': 1})
  try:
    gpu_report.tables(first, other)
  except SystemExit as error:
    assert 'other settings' in str(error) and str(other) in str(error)
  else:
    raise AssertionError('folders of other settings were joined')


def test_gpu_benchmark_runs_the_rows_asked_for_in_order(tmp_path):
  # A stand-in python records each measurement's command and XLA_FLAGS.
  stub = tmp_path / 'python'
  stub.write_text('#!/bin/sh\necho "$XLA_FLAGS|$*" >> "$OUT/calls"\n'
                  'echo \'{"images_per_s": 1.0}\'\n')
  stub.chmod(0o755)
  out = tmp_path / 'out'
  env = {'PATH': '/usr/bin:/bin', 'PYTHON': str(stub), 'OUT': str(out),
         'ROWS': 'gzjax_b0_autotune0,e2e_torch,gzjax_b0'}
  result = subprocess.run(['bash', 'tools/gpu_benchmark.sh'], env=env,
                          capture_output=True, text=True, cwd=REPO)
  assert result.returncode == 0, result.stderr
  names = [line.split('\t')[0]
           for line in (out / 'status.tsv').read_text().splitlines()]
  # The script's order, not ROWS's; the set is rendered for e2e_torch.
  assert names == ['gzjax_b0', 'gzjax_b0_autotune0', 'e2e_render',
                   'e2e_torch']
  calls = [line for line in (out / 'calls').read_text().splitlines()
           if 'benchmark.py' in line]
  assert len(calls) == 3
  assert '--peer=gzjax --model=efficientnet_b0' in calls[0]
  assert 'autotune' not in calls[0].split('|')[0]
  assert calls[1].split('|')[0].split() == ['--xla_gpu_autotune_level=0']
  assert '--peer=torch_e2e' in calls[2]
  result = subprocess.run(['bash', 'tools/gpu_benchmark.sh'],
                          env={**env, 'ROWS': 'gzjax_b0,gzjax_b7'},
                          capture_output=True, text=True, cwd=REPO)
  assert result.returncode == 2
  assert result.stderr.count('\n') == 1
  assert "'gzjax_b7', which is not a measurement" in result.stderr
