# The repository's pytest set-up: notebook cells run by nbval also check their recorded numbers
# against notebooks/tolerances.yml (see sidlib/book/nbval_plugin.py).
pytest_plugins = ["sidlib.book.nbval_plugin"]
