"""Offline stand-in for a pip_parse repository.

requirement(name) names an empty py_library of this repository: the packages
themselves are those of the project's virtual environment, whose interpreter
runs every target (.bazelrc --python_top, python.sh). tools/update_build_files.py writes
one target per package the sources import.
"""

def requirement(name):
    return "@pypi//:" + name.lower().replace("_", "-")
