r"""The markdown tables of a tools/gpu_benchmark.sh run, from its results.

  python tools/gpu_report.py gpu_results > gpu_results/tables.md
  python tools/gpu_report.py call1 call2 > tables.md   # two calls, one lease

Reads ``status.tsv`` and each measurement's ``<name>.json`` (the line
``tools/benchmark.py --peer=...`` printed); a measurement that failed, timed
out or was skipped for the budget becomes a ``missing: <why>`` row.  With
several result folders (calls of ``gpu_benchmark.sh`` with the same
settings, the later ones run with ``ROWS=`` for what the earlier missed), a
measurement comes from the last folder that measured it, or says why the
last folder that tried it did not.
"""

from __future__ import annotations

import json
import pathlib
import sys

import benchmark

def step_rows(settings: dict) -> list[tuple[str, str, list[tuple[str, str]]]]:
  """(title, gzjax's measurement, [(peer label, measurement)]) in order."""
  torch = 'PyTorch (torch.compile, bf16 autocast, channels-last)'
  keras = 'Keras 3 on jax (mixed_bfloat16 on GPUs)'
  s = settings
  return [
      (f'cnn, {s["cnn"]} px, batch {s["small"]}', 'gzjax_cnn_small',
       [(torch, 'torch_cnn_small'), (keras, 'keras_cnn_small')]),
      (f'cnn, {s["cnn"]} px, batch {s["large"]}', 'gzjax_cnn_large',
       [(torch, 'torch_cnn_large'), (keras, 'keras_cnn_large')]),
      (f'efficientnet_b0, {s["b0"]} px, batch {s["b0_batch"]}', 'gzjax_b0',
       [(f'{torch}, timm', 'torch_b0'), (keras, 'keras_b0'),
        ('gzjax, --xla_gpu_autotune_level=0 (no kernel autotuning)',
         'gzjax_b0_autotune0')]),
      (f'inception_v3, {s["inception"]} px, batch {s["inception_batch"]}',
       'gzjax_inception',
       [(f'{torch}, timm', 'torch_inception'), (keras, 'keras_inception')]),
      (f'end to end ({s["e2e_steps"]} steps of input + augmentation + step):'
       f' cnn, {s["cnn"]} px, batch {s["small"]}', 'e2e_gzjax',
       [('PyTorch DataLoader (a worker per core) + the PyTorch model',
         'e2e_torch')]),
  ]


def load(results: pathlib.Path) -> dict[str, dict]:
  """Each measurement's result, or {'missing': why}."""
  status = {}
  if (results / 'status.tsv').is_file():
    for line in (results / 'status.tsv').read_text().splitlines():
      name, code, seconds = line.split('\t')
      status[name] = (code, seconds)
  loaded = {}
  for name, (code, seconds) in status.items():
    if code.startswith('skipped'):
      loaded[name] = {'missing': code}
      continue
    try:
      loaded[name] = json.loads((results / f'{name}.json').read_text())
    except (OSError, ValueError):
      why = 'timed out' if code in ('124', '137') else f'exit status {code}'
      error = results / f'{name}.err'
      lines = error.read_text().strip().splitlines() if error.is_file() else []
      loaded[name] = {'missing': f'{why} after {seconds} s'
                                 + (f': {lines[-1][:200]}' if lines else '')}
  return loaded


def merged(folders: list[pathlib.Path]) -> tuple[dict, dict[str, dict]]:
  """The settings the folders share and their measurements joined: a
  measured result beats a missing one, a later folder an earlier one."""
  settings = None
  measured: dict[str, dict] = {}
  for folder in folders:
    these = json.loads((folder / 'settings.json').read_text())
    if settings is not None and these != settings:
      raise SystemExit(f'gpu_report.py: {folder} was run with other settings'
                       f' ({these}) than {folders[0]} ({settings}); report'
                       ' them apart.')
    settings = these
    for name, result in load(folder).items():
      if 'missing' not in result or 'missing' in measured.get(name, result):
        measured[name] = result
  return settings, measured


def tables(*folders: pathlib.Path) -> str:
  folders = list(folders)
  settings, measured = merged(folders)
  absent = {'missing': 'not run'}
  rows = []
  for title, reference, peers in step_rows(settings):
    gzjax = measured.get(reference, absent)
    rate = gzjax.get('images_per_s') or float('nan')
    rows.append(benchmark.measured_row(f'**{title}**: gzjax', gzjax, rate))
    rows += [benchmark.measured_row(label, measured.get(name, absent), rate)
             for label, name in peers]
  parts = [benchmark.markdown_table(rows)]
  if settings['smoke']:
    parts.insert(0, 'SMOKE RUN (tiny sizes, seed CNN only): not a measurement.')
  for name, title in (('startup.md', 'Start-up (tools/startup_benchmark.py):'),
                      ('predict.out', 'Survey prediction'
                       ' (tools/benchmark_predict.py):')):
    texts = [(folder / name).read_text().strip() for folder in folders
             if (folder / name).is_file()]
    texts = [text for text in texts if text]
    if texts:
      parts.append(f'{title}\n\n{texts[-1]}')
  for folder in folders:
    versions = folder / 'versions.txt'
    if versions.is_file():
      parts.append(f'```\n# {folder}\n' + versions.read_text().strip()
                   + '\n```')
  return '\n\n'.join(parts) + '\n'


if __name__ == '__main__':
  print(tables(*(pathlib.Path(folder) for folder in sys.argv[1:]
                 or ['gpu_results'])), end='')
