.PHONY: setup demo test bench

setup:
	bash scripts/setup.sh

# The main job on the embedded default: embed the shipped captions with the packaged LLM.
demo: setup
	.venv/bin/flameclip embed --captions examples/captions.jsonl --out runs/demo-store \
		--llm smollm2-135m --prompts raw=single short=short3 long=long7

test: setup
	bash scripts/test.sh

bench: setup
	.venv/bin/python benchmarks/bench_fda.py
