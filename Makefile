# One entry point for set-up, the main job, the tests and the benchmark.
# TFF 0.87.0 pins jax/jaxlib 0.4.14, which are no longer on the registry: the
# rest is installed from requirements.txt (jax 0.4.13 instead), then TFF itself
# with --no-deps.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TFF_VERSION := 0.87.0
ARGS ?=

.PHONY: setup demo test bazel-test benchmark clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps tensorflow-federated==$(TFF_VERSION)
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m experiments.run $(ARGS)

test: setup
	$(PY) -m pytest tests -q $(ARGS)

# The same tests as Bazel targets, offline, on .venv's interpreter (WORKSPACE,
# .bazelrc); needs Debian's bazel-bootstrap and bazel-rules-java.
bazel-test: setup
	bazel test //... $(ARGS)

benchmark: setup
	$(PY) -m benchmarks.flame_overhead $(ARGS)

clean:
	rm -rf $(VENV)
