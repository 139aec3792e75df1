# The two commands (see README):
#   make test   set up everything on a fresh machine (Debian/Ubuntu, Python >= 3.11), then run the
#               unit tests and re-execute every notebook, comparing outputs with the committed ones
#   make book   set up likewise, then build the Jupyter Book into _build/html (fails on any warning)
# Set-up is idempotent: a second run only re-installs when pyproject.toml changed.
#
#   make test-lowest / make test-newest   the same suite on the lowest / newest supported torch
#                                         (requirements/lowest.txt, newest.txt; own virtual envs)
#   make test CONSTRAINTS=requirements/lock.txt   the committed environment exactly
#   make lock                             re-write requirements/lock.txt from .venv
#   make mutants                          the mutation sweep: which small mistakes in sidlib the tests miss
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?=
PY := $(VENV)/bin/python
FASHION_MNIST := /usr/share/datasets/fashion-mnist
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with notebooks/sanitize.cfg

.PHONY: setup test book system-packages clean test-lowest test-newest lock mutants

setup: $(VENV)/.installed system-packages

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "sidbook needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(if $(CONSTRAINTS),--constraint $(CONSTRAINTS)) --editable '.[test,book]'
	touch $@

# Fashion-MNIST for offline machines, from Debian's package (a no-op where it is already there).
system-packages:
	@if [ ! -d $(FASHION_MNIST) ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "note: $(FASHION_MNIST) missing; Fashion-MNIST will be downloaded by torchvision when used"; fi; \
	fi

test: setup
	$(PY) -m pytest -q --durations=20 $(NBVAL) tests notebooks

book: setup
	$(VENV)/bin/jupyter-book build . --warningiserror --keep-going
	@echo "book: _build/html/index.html"

# The mutation sweep: small mistakes applied to a shadow copy of sidlib, one at a time (tests/mutants.yml);
# reports which ones the unit tests miss, in results/mutants/summary.json (65 mistakes: 549 s of tests, one at a time).
mutants: setup
	$(PY) tests/mutants.py --jobs 2 --full

test-lowest:
	$(MAKE) test VENV=.venv-lowest CONSTRAINTS=requirements/lowest.txt

test-newest:
	$(MAKE) test VENV=.venv-newest CONSTRAINTS=requirements/newest.txt

lock: setup
	{ echo "# Every package \`make test\` installed (Python $$($(PY) -c 'import platform; print(platform.python_version())'), $$(uname -m)), exactly:"; \
	  echo "#   make test CONSTRAINTS=requirements/lock.txt"; \
	  $(PY) -m pip freeze --exclude-editable; } > requirements/lock.txt.partial
	mv requirements/lock.txt.partial requirements/lock.txt

clean:
	rm -rf $(VENV) .venv-lowest .venv-newest _build .pytest_cache
