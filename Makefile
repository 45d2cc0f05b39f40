# Shortcuts for scripts/dev.py, which needs nothing but Python.
.PHONY: demo test lint bench
demo:
	python3 scripts/dev.py demo
test:
	python3 scripts/dev.py test
lint:
	python3 scripts/dev.py lint
bench:
	.venv/bin/python benchmarks/core.py --runs 1000000
