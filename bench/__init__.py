"""Benchmarks for gloro-serve (issue 6): certification overhead, serving, training, GPU.

`python -m bench.run` runs the whole suite, `python -m bench.run --quick` a small version of it;
results go to `bench/results/` (JSON, PNG) and `docs/benchmarks.md` (Markdown). Nothing here is
imported by the server or the models package.
"""
