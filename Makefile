.PHONY: setup demo test test-fast bench

setup:
	bash scripts/setup.sh

# The main job on the embedded default: build the emoji data, embed its captions with the packaged
# LLM, train FLAME and the CLIP baseline the same way, evaluate both and write runs/demo/report.
demo: setup
	.venv/bin/flameclip demo --out runs/demo

test: setup
	bash scripts/test.sh

# The everyday loop: everything but the tests marked slow (real LLM loads, subprocesses, torchrun,
# the demo end to end). CI runs `make test`, which includes them.
test-fast: setup
	bash scripts/test.sh -m "not slow"

bench: setup
	.venv/bin/python benchmarks/bench_fda.py
