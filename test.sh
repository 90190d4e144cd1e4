#!/usr/bin/env bash
# Install the dev requirements into .venv and run the test suite. Extra arguments go to pytest,
# e.g.   bash test.sh -m "not slow"   (skips the real-photo training test)
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh requirements-dev.txt
python -m pytest "$@"
