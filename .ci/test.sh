#!/usr/bin/env bash
# The whole test suite on a fresh Debian bookworm machine, as root: system packages,
# Python packages, then pytest. README.md names this as the test command.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
for script in .ci/install-*.sh; do
    echo "== $script"
    bash "$script"
done
python3 -m pip install --quiet torch==2.13.0
python3 -m pip install --quiet -e ".[dev,mic,train]"
python3 -m pytest -q -ra "$@"
