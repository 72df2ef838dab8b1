"""Regenerates every BUILD file from the imports of the Python sources.

  .venv/bin/python tools/update_build_files.py

One target per module: py_test for *_test.py, py_binary for entry points,
py_library otherwise; deps are the project modules and pinned packages each
file imports. `tests/build_files_test.py` checks the result against the tree.

Under `bazel test` (see WORKSPACE, .bazelrc) every target runs on the .venv
interpreter; `requirement(name)` is an empty target of the offline `@pypi`
stub, also written here. Tests that reach outside their runfiles are tagged:
`local` when they spawn the interpreter on the checkout (subprocess) or read
../shared/data (outside the workspace), so no sandbox stands in between;
`external` when they read the whole checkout or every page of docs/
(build_files_test, docs_test), so Bazel never serves a cached result for them.
"""
import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ('tff_flame', 'experiments', 'tasks', 'tests', 'benchmarks', 'tools')
THIRD = {'numpy': 'numpy', 'tensorflow': 'tensorflow', 'tensorflow_federated': 'tensorflow-federated',
         'absl': 'absl-py', 'pytest': 'pytest', 'hdbscan': 'hdbscan', 'sklearn': 'scikit-learn',
         'matplotlib': 'matplotlib', 'pandas': 'pandas', 'scipy': 'scipy', 'psutil': 'psutil'}
files = sorted(p for pkg in PACKAGES for p in (REPO / pkg).glob('**/*.py') if '.venv' not in p.parts)
modules = {p.relative_to(REPO).as_posix()[:-3].replace('/', '.').removesuffix('.__init__'): p for p in files}
# Files tests read, by the name a test's source quotes: the data label they get.
DATA_FILES = {'README.md': '//:README.md', 'experiments.md': '//:docs/experiments.md'}
# tests dir modules importable by basename (conftest, oracles, attack_views)
test_basenames = {'conftest': 'tests.conftest', 'oracles': 'tests.oracles',
                  'attack_views': 'tests.attack_views'}

def label_of(mod):
  p = modules[mod]
  pkg = p.parent.relative_to(REPO).as_posix()
  name = p.stem if p.stem != '__init__' else p.parent.name
  return pkg, name

def imports_subprocess(tree):
  return any(isinstance(n, ast.Import) and any(a.name == 'subprocess' for a in n.names)
             for n in ast.walk(tree))

def deps_of(path):
  text = path.read_text()
  tree = ast.parse(text)
  local, third = set(), set()
  spawns = imports_subprocess(tree)
  for node in ast.walk(tree):
    names = []
    # `sys.executable -m experiments.run` in a subprocess: the module is a dep too.
    if (spawns and isinstance(node, ast.Constant) and isinstance(node.value, str)
        and '.' in node.value and node.value in modules):
      local.add(node.value)
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      cand = [f'{node.module}.{a.name}' for a in node.names]
      names = [c for c in cand if c in modules]
      if len(names) < len(cand):
        names.append(node.module)
    for n in names:
      top = n.split('.')[0]
      if n in test_basenames:
        local.add(test_basenames[n]); continue
      if top in PACKAGES:
        while n not in modules and '.' in n:
          n = n.rsplit('.', 1)[0]
        if n in modules:
          local.add(n)
      elif top in THIRD:
        third.add(THIRD[top])
  return local, third

def main() -> None:
  by_pkg = {}
  for mod, p in modules.items():
    pkg, name = label_of(mod)
    by_pkg.setdefault(pkg, []).append((name, mod, p))

  for pkg, entries in sorted(by_pkg.items()):
    kinds = set()
    blocks = []
    for name, mod, p in sorted(entries):
      local, third = deps_of(p)
      src = p.name
      is_test = p.name.endswith('_test.py')
      is_bin = (not is_test) and "if __name__ == '__main__'" in p.read_text() and pkg != 'experiments' or (pkg == 'experiments' and name in ('run', 'worker'))
      if pkg == 'experiments' and name == 'config':
        is_bin = False
      kind = 'py_test' if is_test else 'py_binary' if is_bin else 'py_library'
      kinds.add(kind)
      deps = []
      if is_test and mod != 'tests.conftest':
        local.add('tests.conftest')
      for m in sorted(local):
        if m == mod: continue
        dpkg, dname = label_of(m)
        deps.append(f'":{dname}"' if dpkg == pkg else f'"//{dpkg}:{dname}"')
      deps = sorted(deps, key=lambda d: (not d.startswith('":'), d))
      deps += [f'requirement("{t}")' for t in sorted(third)]
      lines = [f'{kind}(', f'    name = "{name}",', f'    srcs = ["{src}"],']
      if kind == 'py_binary':
        lines.append(f'    main = "{src}",')
      if mod in test_basenames.values():
        # Tests import these by basename, as pytest puts tests/ on sys.path.
        lines.append('    imports = ["."],')
      if kind == 'py_test':
        text = p.read_text()
        data = [label for name, label in DATA_FILES.items() if f"'{name}'" in text]
        tags = []
        if imports_subprocess(ast.parse(text)) or "'shared'" in text:
          tags.append('local')
        if "glob('**/BUILD')" in text or "glob('*.md')" in text:
          tags.append('external')
        lines.append('    size = "medium",')
        lines.append('    timeout = "long",')
        if data:
          lines.append(f'    data = [{", ".join(chr(34) + d + chr(34) for d in data)}],')
        if tags:
          lines.append(f'    tags = [{", ".join(chr(34) + t + chr(34) for t in tags)}],')
      if deps:
        lines.append('    deps = [')
        lines += [f'        {d},' for d in deps]
        lines.append('    ],')
      lines.append(')')
      blocks.append('\n'.join(lines))
    head = f'load("@rules_python//python:defs.bzl", {", ".join(repr(k).replace(chr(39), chr(34)) for k in sorted(kinds))})\nload("@pypi//:requirements.bzl", "requirement")\n\npackage(default_visibility = ["//visibility:public"])\n\nlicenses(["notice"])\n'
    (REPO / pkg / 'BUILD').write_text(head + '\n' + '\n\n'.join(blocks) + '\n')
    print('wrote', pkg + '/BUILD')

  (REPO / 'BUILD').write_text(
      'package(default_visibility = ["//visibility:public"])\n\nlicenses(["notice"])\n\n'
      '# Files tests read (tools/update_build_files.py, DATA_FILES): the README (its\n'
      '# example, links and size) and the flag table in docs/experiments.md.\n'
      f'exports_files([{", ".join(chr(34) + label[3:] + chr(34) for label in DATA_FILES.values())}])\n')
  print('wrote BUILD')

  pypi = ['# Written by tools/update_build_files.py. The packages come from the .venv',
          '# interpreter that runs every target (python.sh, .bazelrc --python_top): one empty',
          '# target per package the sources import, named as in requirements.txt.', '']
  pypi += ['py_runtime(', '    name = "python",', '    interpreter = "python.sh",',
           '    python_version = "PY3",', '    visibility = ["//visibility:public"],', ')', '']
  for name in sorted(set(THIRD.values())):
    pypi += ['py_library(', f'    name = "{name}",', '    visibility = ["//visibility:public"],',
             ')', '']
  (REPO / 'third_party/bazel/pypi/BUILD').write_text('\n'.join(pypi[:-1]) + '\n')
  print('wrote third_party/bazel/pypi/BUILD')


if __name__ == '__main__':
  main()
