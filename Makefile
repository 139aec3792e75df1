# The two commands (see README):
#   make test   set up everything on a fresh machine (Debian/Ubuntu, Python >= 3.11), then run the
#               unit tests and re-execute every notebook, comparing outputs with the committed ones
#   make book   set up likewise, then build the Jupyter Book into _build/html (fails on any warning)
# Set-up is idempotent: a second run only re-installs when pyproject.toml changed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FASHION_MNIST := /usr/share/datasets/fashion-mnist
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg

.PHONY: setup test book system-packages clean

setup: $(VENV)/.installed system-packages

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "sidbook needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --editable '.[test,book]'
	touch $@

# Fashion-MNIST for offline machines, from Debian's package (a no-op where it is already there).
system-packages:
	@if [ ! -d $(FASHION_MNIST) ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "note: $(FASHION_MNIST) missing; Fashion-MNIST will be downloaded by torchvision when used"; fi; \
	fi

test: setup
	$(PY) -m pytest -q $(NBVAL) tests notebooks

book: setup
	$(VENV)/bin/jupyter-book build . --warningiserror --keep-going
	@echo "book: _build/html/index.html"

clean:
	rm -rf $(VENV) _build .pytest_cache
