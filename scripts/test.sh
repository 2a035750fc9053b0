#!/usr/bin/env bash
# Builds klcl and runs every test suite (the command README.md gives). Run .ci/run first on a new machine,
# or install the Debian packages it lists.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc)"
ctest --test-dir build --output-on-failure --no-tests=error
