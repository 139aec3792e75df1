"""The book's plumbing: running notebooks and presets, experiment grids, recorded numbers.

runner        ``python -m sidlib.book``: presets, runs, re-execution, measured spread
experiments   method x seed grids, one results JSON per run, and their summaries
notebook      deterministic printing and recorded numbers with their tolerances
nbval_plugin  the pytest hook that checks recorded numbers while nbval runs a notebook
reference     the papers' reported numbers, with sources, for display beside ours
"""
