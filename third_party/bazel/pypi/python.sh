#!/bin/sh
# The interpreter of every Bazel py_* target (py_runtime @pypi//:python, see
# .bazelrc): the project's virtual environment, with its pinned packages.
# $0 is a runfiles symlink; it resolves into third_party/bazel/pypi/.
here=$(dirname "$(readlink -f "$0")")
exec "$here/../../../.venv/bin/python" "$@"
