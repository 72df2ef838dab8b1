"""BUILD files stay true: every source in one target, listed files exist, deps resolve.

The BUILD files follow TFF's research code (py_library / py_test / py_binary)
and `bazel test //...` runs them offline (WORKSPACE, .bazelrc, docs/bazel.md). This
test is the fast check without Bazel: it evaluates them as the Starlark subset
they are and checks them against the tree and its imports.
"""

import ast
import pathlib
import re
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ('tff_flame', 'experiments', 'tasks', 'tests', 'benchmarks', 'tools')
RULES = ('py_library', 'py_test', 'py_binary')


def load_targets():
  """{'//pkg:name': {'srcs': [...], 'deps': [...], 'package': 'pkg'}} over all BUILD files."""
  targets, exported = {}, set()
  for build in sorted(REPO.glob('**/BUILD')):
    rel = build.relative_to(REPO).parts
    if '.venv' in rel or rel[0] == 'third_party' or rel[0].startswith('bazel-'):
      continue  # third_party/bazel/ holds the offline stand-ins of external repositories
    package = build.parent.relative_to(REPO).as_posix()
    package = '' if package == '.' else package

    def rule(kind, package=package, build=build):
      def define(name, srcs=(), deps=(), data=(), tags=(), **unused):
        label = f'//{package}:{name}'
        assert label not in targets, f'{build}: duplicate target {name}'
        targets[label] = dict(kind=kind, srcs=list(srcs), deps=list(deps), data=list(data),
                              tags=list(tags), package=package, build=build)
      return define

    namespace = {kind: rule(kind) for kind in RULES}
    namespace.update(load=lambda *a, **k: None, package=lambda **k: None,
                     licenses=lambda *a: None, requirement=lambda name: f'@pypi//{name}',
                     exports_files=lambda files: exported.update(
                         f'//{package}:{f}' for f in files))
    exec(compile(build.read_text(), str(build), 'exec'), namespace)  # pylint: disable=exec-used
  for label, target in targets.items():
    for item in target['data']:
      assert item in exported and (REPO / item.split(':')[1]).is_file(), (label, item)
  return targets


def python_sources():
  return sorted(p.relative_to(REPO).as_posix() for pkg in PACKAGES
                for p in (REPO / pkg).glob('**/*.py'))


def requirement_names():
  names = set()
  for line in (REPO / 'requirements.txt').read_text().splitlines():
    if line.strip() and not line.startswith('#'):
      names.add(re.split(r'[=<>~ ]', line)[0].lower().replace('_', '-'))
  return names | {'tensorflow-federated'}


@pytest.fixture(scope='module')
def targets():
  return load_targets()


def _src_paths(target):
  prefix = f"{target['package']}/" if target['package'] else ''
  return [prefix + s for s in target['srcs']]


def test_every_source_file_is_in_exactly_one_target(targets):
  owners = {}
  for label, target in targets.items():
    for path in _src_paths(target):
      owners.setdefault(path, []).append(label)
  missing = [p for p in python_sources() if p not in owners]
  assert not missing, f'source files in no BUILD target: {missing}'
  doubled = {p: o for p, o in owners.items() if len(o) > 1}
  assert not doubled, f'source files in several targets: {doubled}'


def test_every_listed_file_exists(targets):
  absent = [(label, p) for label, t in targets.items() for p in _src_paths(t)
            if not (REPO / p).is_file()]
  assert not absent, f'BUILD targets list files that do not exist: {absent}'


def test_deps_name_real_targets_or_pinned_packages(targets):
  known = requirement_names()
  for label, target in targets.items():
    for dep in target['deps']:
      if dep.startswith('@pypi//'):
        assert dep[len('@pypi//'):].lower().replace('_', '-') in known, (label, dep)
        continue
      full = f"//{target['package']}{dep}" if dep.startswith(':') else dep
      assert full in targets, f'{label} depends on {dep}, which no BUILD file defines'


def _module_of(path):
  return path[:-3].replace('/', '.').removesuffix('.__init__')


def test_project_imports_are_declared_deps(targets):
  """A target that imports a project module depends on the target holding it."""
  owner_of_module = {}
  for label, target in targets.items():
    for path in _src_paths(target):
      owner_of_module[_module_of(path)] = label
  for label, target in targets.items():
    declared = {f"//{target['package']}{d}" if d.startswith(':') else d for d in target['deps']}
    for path in _src_paths(target):
      tree = ast.parse((REPO / path).read_text())
      for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
          names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
          # `from pkg import module` needs that module's target; `from pkg import
          # name` needs the package's (its __init__).
          names = [f'{node.module}.{a.name}' for a in node.names]
          if not all(n in owner_of_module for n in names):
            names.append(node.module)
        for name in names:
          if name.split('.')[0] not in PACKAGES:
            continue
          owner = owner_of_module.get(name)
          if owner and owner != label:
            assert owner in declared, f'{path} imports {name} but {label} does not depend on {owner}'


def test_deps_have_no_cycles(targets):
  """Bazel rejects cyclic deps; walk the project's own dependency graph."""
  def local(label):
    t = targets[label]
    return [f"//{t['package']}{d}" if d.startswith(':') else d for d in t['deps']
            if not d.startswith('@pypi//')]
  state = {}

  def visit(label, path):
    if state.get(label) == 'done':
      return
    assert state.get(label) != 'active', f"dependency cycle: {' -> '.join(path + [label])}"
    state[label] = 'active'
    for dep in local(label):
      visit(dep, path + [label])
    state[label] = 'done'

  for label in targets:
    visit(label, [])


def test_every_requirement_has_a_target_in_the_offline_pypi_stub(targets):
  stub = (REPO / 'third_party/bazel/pypi/BUILD').read_text()
  defined = set(re.findall(r'name = "([^"]+)"', stub))
  used = {d[len('@pypi//'):] for t in targets.values() for d in t['deps']
          if d.startswith('@pypi//')}
  assert used <= defined, f'run tools/update_build_files.py: {sorted(used - defined)}'


def test_every_test_runs_pytest_when_bazel_runs_it(targets):
  """A py_test runs its file as __main__; without pytest.main it would pass, testing nothing."""
  for label, target in targets.items():
    if target['kind'] != 'py_test':
      continue
    for path in _src_paths(target):
      tree = ast.parse((REPO / path).read_text())
      mains = [n for n in tree.body if isinstance(n, ast.If) and "__name__ == '__main__'"
               in ast.unparse(n.test) and 'pytest.main([__file__' in ast.unparse(n)]
      assert mains, (f'{path} ({label}) needs '
                     '`if __name__ == "__main__": sys.exit(pytest.main([__file__, ...]))`')


if __name__ == '__main__':
  # `bazel test` runs this file as a py_test: pytest, with tests/conftest.py.
  tests_dir = pathlib.Path(__file__).absolute().parent
  sys.exit(pytest.main([__file__, '-p', 'no:cacheprovider', f'--confcutdir={tests_dir}',
                        *sys.argv[1:]]))
