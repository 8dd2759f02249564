# `make train` and `make test` each create .venv when missing and install the pinned set.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: setup train test test-fast bench bench-time-to-99 bench-parity bench-precision-inference bench-lesson loadtest notebook notebook-run clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-compile --no-deps -e .
	@# pip byte-compiles one file at a time; compileall uses every core. The .pyc files must be
	@# written here: where PYTHONDONTWRITEBYTECODE is set, imports never write them. Files that some
	@# packages ship for other Pythons do not compile; pip skips those too, hence the || true.
	$(BIN)/python -m compileall -qq -j 0 $(VENV)/lib || true
	touch $(STAMP)

## Train the default recipe on MNIST into runs/ (extra flags: make train ARGS="--epochs 3").
train: $(STAMP)
	$(BIN)/mnist-cnn train $(ARGS)

# Test workers (pytest-xdist): one per core, at most 4; tests marked `alone` still run by themselves.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n < 4 ? n : 4 )))

## The whole test suite, including one real-MNIST training run to an accuracy floor.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup $(ARGS)

## Everything but the slow real-MNIST tests.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup -m "not slow" $(ARGS)

## Speed benchmark (issue #4), with the fp32-vs-auto precision table of every preset (issue 22):
## table + bench/results/<date>-<host>.json, ~10 min (ARGS=--quick: ~1 min; ARGS="--sections precision").
bench: $(STAMP)
	$(BIN)/python bench/bench.py $(ARGS)

## Issue 22, time to 99%: `fast` over 5 seeds at --amp auto (only that section of the bench).
bench-time-to-99: $(STAMP)
	$(BIN)/python bench/bench.py --sections time_to_99 --presets fast --seeds 5 $(ARGS)

## Issue 22, accuracy parity: fast and best x seeds 0-2, --amp off against auto (hours on 2 cores).
bench-parity: $(STAMP)
	$(BIN)/python bench/precision_parity.py $(ARGS)

## Issue 22, inference precision: argmax changes fp32 vs bf16 and img/s at batch 1000 (ARGS="RUN", or "--network seed").
bench-precision-inference: $(STAMP)
	$(BIN)/python bench/precision_inference.py $(ARGS)

## Load test of `mnist-cnn serve` beside the framework's ceiling, with wrk (docs/serve.md): make loadtest ARGS="runs/my-run".
loadtest: $(STAMP)
	$(BIN)/python bench/loadtest.py $(ARGS)

## Open the lesson notebook in JupyterLab (installs the `notebook` extra, JupyterLab, on first use).
notebook: $(STAMP)
	$(BIN)/python -c "import jupyterlab" 2>/dev/null || $(BIN)/python -m pip install --quiet -e ".[notebook]"
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/jupyter lab notebooks/lesson.ipynb $$([ "$$(id -u)" = 0 ] && echo --allow-root)

## Re-execute the lesson notebook in place on real MNIST (refreshes its outputs and lesson.py; minutes).
notebook-run: $(STAMP)
	$(BIN)/python tests/notebook_exec.py $(ARGS)

# Optional, not part of `make test`: .venv-lesson holds tensorflow-cpu + Keras 3, kept apart from .venv.
LESSON_VENV := .venv-lesson
LESSON_STAMP := $(LESSON_VENV)/.installed

$(LESSON_STAMP): bench/lesson/requirements.txt
	test -x $(LESSON_VENV)/bin/python || $(PYTHON) -m venv $(LESSON_VENV)
	$(LESSON_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LESSON_VENV)/bin/python -m pip install --quiet -r bench/lesson/requirements.txt
	touch $(LESSON_STAMP)

## The lesson's TF1 program and Keras 3 fit timed beside --preset seed (issue #11), interleaved:
## table + bench/results/lesson-<date>-<host>.json (ARGS="--epochs 3 --rounds 2 --threads 2,1").
bench-lesson: $(STAMP) $(LESSON_STAMP)
	$(BIN)/python bench/lesson/run.py $(ARGS)

clean:
	rm -rf $(VENV) $(LESSON_VENV) build *.egg-info src/*.egg-info .pytest_cache
