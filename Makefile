# The commands of the README. `make train` and `make test` do all set-up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# A real CUDA toolkit (bin/nvcc + lib64/libcudart.so); torch's guess from PATH can be a wrapper.
CUDA_HOME ?= $(shell for d in "$$CUDA_HOME" /usr/local/cuda; do [ -x "$$d/bin/nvcc" ] && echo "$$d" && break; done)
export CUDA_HOME
MAX_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
export MAX_JOBS
# `make build` compiles the extension at install time (a plain `pip install .` does not; README,
# "Installing"). UNET_FAST_BUILD_EXT=0 installs the pure-Python package instead.
UNET_FAST_BUILD_EXT ?= 1
export UNET_FAST_BUILD_EXT

.PHONY: setup build train test bench gpu-suite device-prebuild clean

# Reinstall (and rebuild the extension) only when its sources, the build script or the package's
# metadata (pyproject.toml: the `unet-fast` entry point) change.
BUILD_INPUTS := setup.py pyproject.toml unet_fast/_build.py $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh')

setup: build

$(VENV)/.deps: requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

# Builds unet_fast._C in place against the venv's torch (UNET_FAST_BUILD_EXT=1: CUDA + C++ kernels
# when a toolkit is found, else C++ only, said below), then shows what was built.
build: $(VENV)/.built

$(VENV)/.built: $(VENV)/.deps $(BUILD_INPUTS)
	@echo "building unet_fast._C (UNET_FAST_BUILD_EXT=$(UNET_FAST_BUILD_EXT); log: build.log) ..."
	@$(PY) -m pip install --no-build-isolation --no-deps -v -e . > build.log 2>&1 || { tail -60 build.log; exit 1; }
	@grep -A6 "unet_fast build configuration" build.log | sed 's/^ *//' || true
	@grep -E "^unet_fast: (built|WARNING|no extension)" build.log || true
	@$(PY) -m unet_fast info | sed -n '/^backends:/,$$p'
	touch $@

# The main job: default training run on the built-in data.
train: setup
	$(VENV)/bin/unet-fast train $(ARGS)

# The whole test suite (the extension must have built: a missing one fails, never skips), one
# pytest-xdist worker a core, at most 8 (TEST_WORKERS=0: one process); worksteal evens out the
# long tests.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ "$$n" -gt 8 ] && n=8; echo $$n)
test: setup
	UNET_FAST_REQUIRE_EXTENSION=1 $(PY) -m pytest tests/ -q -n $(TEST_WORKERS) --dist worksteal $(ARGS)

bench: setup
	$(PY) -m pytest benchmarks/ -q $(ARGS)

gpu-suite:
	PYTHON=$(if $(wildcard $(PY)),$(PY),python3) bash benchmarks/gpu_suite.sh $(ARGS)

# The extension for the device tool's GPU machines (Python 3.12, torch 2.11), built here into
# build/device/ to carry there (benchmarks/README.md); reuses this build's CUTLASS objects.
device-prebuild: setup
	$(PY) tools/device_prebuild.py build --jobs $(MAX_JOBS) $(ARGS)

clean:
	rm -rf build unet_fast/_C*.so unet_fast/_C*.build.json *.egg-info $(VENV)/.built
