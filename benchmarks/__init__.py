"""The side-by-side benchmark: ``python -m benchmarks.run``.

Modules here are imported from two venvs (the project's .venv and the
anchors' .venv-anchors), so this package imports nothing at load time.
"""
