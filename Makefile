PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: test test-fast demo images clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-export.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $@

# One pytest worker per core, each torch on one thread: most tests are small and single-threaded, and workers
# of several threads each oversubscribe the cores (2 cores: 1,287 s on one worker, 680 s on two). Each test file
# stays on one worker, so a file's shared run (a search, an export) is made once, not once per worker.
PYTEST := OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n auto --dist loadfile

test: $(VENV)/.installed
	$(PYTEST)

test-fast: $(VENV)/.installed
	$(PYTEST) -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache

demo: $(VENV)/.installed
	$(BIN)/python demo.py

images: $(VENV)/.installed
	$(BIN)/python demo.py --images images
