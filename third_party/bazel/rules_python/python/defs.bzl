"""Offline stand-in for rules_python: Bazel's native Python rules under their usual names."""

py_binary = native.py_binary
py_library = native.py_library
py_runtime = native.py_runtime
py_test = native.py_test
