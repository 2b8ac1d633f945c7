PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: test test-fast demo images clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-export.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $@

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache

demo: $(VENV)/.installed
	$(BIN)/python demo.py

images: $(VENV)/.installed
	$(BIN)/python demo.py --images images
