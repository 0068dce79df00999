#!/usr/bin/env bash
# Set up everything (venv with pinned packages, Fashion-MNIST, git + DVC repo) and run the
# pipeline with `dvc repro`. `./run.sh --setup-only` stops after the set-up (used by CI).
set -euo pipefail
cd "$(dirname "$0")"

# 1. Python environment with the pinned packages.
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements.txt

# 2. The embedded dataset: Debian's dataset-fashion-mnist. Without it (and without root),
#    prepare_data falls back to torchvision's download.
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update && apt-get install -y dataset-fashion-mnist
  elif command -v sudo >/dev/null; then
    sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist
  else
    echo "note: dataset-fashion-mnist not installed and no root: prepare_data will try torchvision's download" >&2
  fi
fi

# 3. git + DVC repository (dvc exp needs a git repo with one commit).
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git init -q -b main
fi
if [ ! -d .dvc ]; then
  .venv/bin/dvc init -q
fi
.venv/bin/dvc config core.autostage true
if ! git rev-parse -q --verify HEAD >/dev/null; then
  git add -A && git -c user.name=dreamprune -c user.email=dreamprune@localhost commit -q -m "initial commit"
fi

[ "${1:-}" = "--setup-only" ] && exit 0

# 4. The pipeline.
export PATH="$PWD/.venv/bin:$PATH"
time dvc repro
cat reports/report.md | head -12
