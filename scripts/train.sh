#!/usr/bin/env bash
# Set up (idempotent) and run the main job: train the default hybrid (GF-MH, small) on the embedded corpus.
# Extra arguments go to train.py (python3 train.py --help).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q -e .
exec python3 train.py "$@"
