.PHONY: setup demo test bench

setup:
	bash scripts/setup.sh

# The main job on the embedded default: build the emoji data, embed its captions with the packaged
# LLM, train FLAME and the CLIP baseline the same way, evaluate both and write runs/demo/report.
demo: setup
	.venv/bin/flameclip demo --out runs/demo

test: setup
	bash scripts/test.sh

bench: setup
	.venv/bin/python benchmarks/bench_fda.py
