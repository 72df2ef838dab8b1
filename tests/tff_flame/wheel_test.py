"""The `tff-flame` wheel holds the library alone and works outside the checkout.

pip builds the wheel from a copy of the checkout (offline: no build isolation,
no index, the venv's setuptools) and installs it with --no-deps into a folder;
the README's library example then runs from a folder outside the checkout with
only that folder on the path, and its round is checked against the NumPy +
`hdbscan` oracle.
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from oracles import flame_round_numpy
from tff_flame import tff_worker

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE_MARK = '<!-- library-example:'
# Appended to the README's example: what it computed, for the oracle.
REPORT = '''
import json as _json, tff_flame as _tff_flame
print(_json.dumps(dict(
    module=_tff_flame.__file__, version=_tff_flame.__version__,
    updates=np.asarray(updates, np.float64).tolist(),
    result=np.asarray(output.result, np.float64).tolist(),
    measurements={k: np.asarray(v).tolist() for k, v in output.measurements.items()})))
'''


def readme_example() -> tuple:
  """(the python block after the library-example mark, the text block it says it prints)."""
  readme = (REPO / 'README.md').read_text()
  after = readme[readme.index(EXAMPLE_MARK):]
  blocks = re.findall(r'```(python|text)\n(.*?)```', after, re.S)
  assert [kind for kind, _ in blocks[:2]] == ['python', 'text'], blocks[:2]
  return blocks[0][1], blocks[1][1]


@pytest.fixture(scope='module')
def wheel(tmp_path_factory) -> pathlib.Path:
  source = tmp_path_factory.mktemp('source')
  shutil.copytree(REPO, source, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
      '.git', '.venv', 'output', 'results', 'docs', 'build', '*.egg-info', '__pycache__',
      'bazel-*'))
  dist = tmp_path_factory.mktemp('dist')
  out = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-index',
                        '--no-build-isolation', '--wheel-dir', str(dist), str(source)],
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  wheels = list(dist.glob('*.whl'))
  assert len(wheels) == 1, wheels
  return wheels[0]


def test_the_wheel_holds_tff_flame_only_with_its_version_and_dependencies(wheel):
  import tff_flame  # pylint: disable=g-import-not-at-top
  assert wheel.name == f'tff_flame-{tff_flame.__version__}-py3-none-any.whl'
  with zipfile.ZipFile(wheel) as archive:
    names = archive.namelist()
    metadata = archive.read(f'tff_flame-{tff_flame.__version__}.dist-info/METADATA').decode()
  tops = {name.split('/')[0] for name in names}
  assert tops == {'tff_flame', f'tff_flame-{tff_flame.__version__}.dist-info'}, tops
  modules = {name for name in names if name.startswith('tff_flame/')}
  assert modules == {f'tff_flame/{p.name}' for p in (REPO / 'tff_flame').glob('*.py')}
  requires = re.findall(r'^Requires-Dist: ([\w.-]+)([^;\n]*)(;.*)?$', metadata, re.M)
  core = {name for name, _, marker in requires if not marker}
  assert core == {'tensorflow-federated', 'tensorflow', 'numpy', 'grpcio'}, core
  assert {'plots', 'harness', 'test'} <= set(re.findall(r'^Provides-Extra: (\S+)', metadata, re.M))


def test_the_readme_example_runs_from_the_installed_wheel(wheel, tmp_path):
  site = tmp_path / 'site'
  out = subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-index',
                        '--target', str(site), str(wheel)],
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  example, printed = readme_example()
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  env = dict(os.environ, PYTHONPATH=str(site), TF_CPP_MIN_LOG_LEVEL='3')
  # Pipes for the output: a worker left holding them would make this hang.
  out = subprocess.run([sys.executable, '-c', example + REPORT], cwd=elsewhere, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.strip().splitlines()
  report = json.loads(lines[-1])
  assert pathlib.Path(report['module']).is_relative_to(site)
  assert '\n'.join(lines[:-1]) == printed.strip()  # what the README says it prints

  updates = np.array(report['updates'])
  expected, want = flame_round_numpy(updates)
  admitted, bound = want['admitted'].astype(bool), want['clipping_bound']
  m = report['measurements']
  assert m['num_clients'] == len(updates) and m['num_admitted'] == admitted.sum()
  assert not admitted[-2:].any() and admitted.sum() >= 4  # the two attackers are left out
  assert m['clipping_bound'] == pytest.approx(bound, rel=1e-5)
  assert m['noise_stddev'] == pytest.approx(0.001 * bound, rel=1e-5)  # the default lambda
  # Seeded Gaussian noise of that stddev on each coordinate of the oracle's mean.
  np.testing.assert_allclose(report['result'], expected, atol=6 * m['noise_stddev'] + 1e-6)
  assert not tff_worker.orphaned_tff_worker_pids(cwd=elsewhere)


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parents[1]
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
