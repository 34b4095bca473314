r"""Mutation testing of one module against its own test file, with mutmut 3.

  pip install mutmut==3.8.1   # a dev tool; not a dependency of gzjax
  python tools/mutation_test.py --module=gzjax/taxonomy.py \
      --tests=tests/test_taxonomy.py --workdir=/tmp/mutation/taxonomy
  python tools/mutation_test.py --module=gzjax/losses.py \
      --tests=tests/test_losses.py --workdir=/tmp/mutation/losses \
      --subprocess --sample=30

Copies the project (without its other tests) into ``--workdir`` with a
``[tool.mutmut]`` section naming the module and its test file, then either
runs ``mutmut run`` there (numpy modules: mutmut forks one child per mutant,
about 8 mutants/s on 2 cores), or, with ``--subprocess``, has mutmut
generate the mutants and runs each in a fresh ``pytest -x`` process
(``MUTANT_UNDER_TEST`` picks it): JAX is not fork-safe, and mutmut's forked
children hang on the JAX modules until its timeout.  ``--sample`` draws that
many mutants (seed 0) when running them all would take too long.  Prints
each mutant's status and, for survivors, the mutated line.
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import random
import re
import shutil
import subprocess
import sys
import time

from absl import app
from absl import flags

REPO = pathlib.Path(__file__).resolve().parents[1]
_MODULE = flags.DEFINE_string('module', None, 'Module file to mutate.',
                              required=True)
_TESTS = flags.DEFINE_string('tests', None, 'Its test file.', required=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Scratch directory (erased).',
                               required=True)
_SUBPROCESS = flags.DEFINE_bool('subprocess', False,
                                'One pytest process per mutant (JAX).')
_SAMPLE = flags.DEFINE_integer('sample', 0, 'Mutants to draw; 0: all.')
_TIMEOUT = flags.DEFINE_integer('timeout', 180, 'Seconds per mutant.')


def _copy_project(workdir: pathlib.Path) -> None:
  shutil.rmtree(workdir, ignore_errors=True)
  files = subprocess.run(['git', 'ls-files'], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout.split()
  keep = {'tests/__init__.py', 'tests/conftest.py', _TESTS.value}
  for name in files:
    if name.startswith('tests/') and name not in keep:
      continue
    (workdir / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / name, workdir / name)
  with open(workdir / 'pyproject.toml', 'a') as config:
    config.write(f'\n[tool.mutmut]\npaths_to_mutate = ["{_MODULE.value}"]\n'
                 f'tests_dir = ["{_TESTS.value}"]\n'
                 'also_copy = ["gzjax/", "tests/"]\n')


def _mutated_lines(source: str) -> dict[str, str]:
  """For every mutant function in mutmut's output, its changed lines."""
  tree = ast.parse(source)
  functions = {node.name: ast.get_source_segment(source, node)
               for node in ast.walk(tree)
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
  out = {}
  for name, text in functions.items():
    if not re.search(r'__mutmut_\d+$', name):
      continue
    original = functions.get(re.sub(r'__mutmut_\d+$', '__mutmut_orig', name))
    if original is None:
      continue
    pairs = zip(original.splitlines()[1:], text.splitlines()[1:])
    out[name] = ' | '.join(f'{a.strip()}  ->  {b.strip()}'
                           for a, b in pairs if a != b)
  return out


def main(argv):
  del argv
  workdir = pathlib.Path(_WORKDIR.value)
  _copy_project(workdir)
  env = dict(os.environ)
  conftest_sample = REPO.parent / 'shared' / 'data' / 'galaxy_zoo_kaggle_sample'
  env.setdefault('GZJAX_KAGGLE_SAMPLE', str(conftest_sample))
  mutmut = [sys.executable, '-m', 'mutmut']
  if not _SUBPROCESS.value:
    subprocess.run(mutmut + ['run', '--max-children', '1'], cwd=workdir,
                   env=env, stdout=subprocess.DEVNULL, check=False)
    results = subprocess.run(mutmut + ['results', '--all', 'true'],
                             cwd=workdir, env=env, capture_output=True,
                             text=True).stdout
    statuses = dict(line.strip().rsplit(': ', 1)
                    for line in results.splitlines() if ': ' in line)
  else:
    # Let mutmut write the mutants, then stop it before its forking runner.
    process = subprocess.Popen(mutmut + ['run', '--max-children', '1'],
                               cwd=workdir, env=env,
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    mutated = workdir / 'mutants' / _MODULE.value
    while process.poll() is None and not (
        mutated.exists() and '__mutmut_1' in mutated.read_text()):
      time.sleep(1)
    time.sleep(2)
    process.kill()
    process.wait()
    dotted = _MODULE.value.removesuffix('.py').replace('/', '.')
    names = sorted(set(re.findall(r"\['(x[^']*__mutmut_\d+)'\]",
                                  mutated.read_text())))
    if _SAMPLE.value:
      names = sorted(random.Random(0).sample(names,
                                             min(_SAMPLE.value, len(names))))
    statuses = {}
    root = workdir / 'mutants'
    for name in names:
      try:
        code = subprocess.run(
            [sys.executable, '-m', 'pytest', '-x', '-q', '-p',
             'no:cacheprovider', _TESTS.value], cwd=root,
            env=dict(env, PYTHONPATH=str(root),
                     MUTANT_UNDER_TEST=f'{dotted}.{name}'),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            timeout=_TIMEOUT.value).returncode
        status = {0: 'survived', 1: 'killed'}.get(code, f'exit {code}')
      except subprocess.TimeoutExpired:
        status = 'timeout'
      statuses[f'{dotted}.{name}'] = status
  lines = _mutated_lines((workdir / 'mutants' / _MODULE.value).read_text())
  counts = {}
  for name, status in statuses.items():
    counts[status] = counts.get(status, 0) + 1
    short = name.rsplit('.', 1)[-1]
    print(f'{name}: {status}' + (f'  [{lines.get(short, "")}]'
                                 if status != 'killed' else ''))
  print(json.dumps({'module': _MODULE.value, 'tests': _TESTS.value,
                    'counts': counts}))


if __name__ == '__main__':
  app.run(main)
