#!/usr/bin/env bash
# Builds klcl and runs every test suite (the command README.md gives). Run .ci/run first on a new machine,
# or install the Debian packages it lists.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc)"
# Suites are independent (each works in its own temporary folders): one per core at a time.
ctest --test-dir build --output-on-failure --no-tests=error --parallel "$(nproc)"
