"""Benchmarks: each module in this folder with a ``main(argv) -> dict`` measures ours and the
reference side by side in one run, prints its figures and writes ``bench/results/NAME.json``.
``python -m bench [NAME ...]`` runs them (all by default)."""
