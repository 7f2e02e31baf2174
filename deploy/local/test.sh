#!/usr/bin/env bash
# Runs every tokenmeter test from a clean clone: installs dependencies (Debian packages),
# builds, checks formatting, and runs the unit, integration and fault tests with CTest.
set -euo pipefail
cd "$(dirname "$0")/../.."

bash deploy/local/install-deps.sh

BUILD_DIR="${BUILD_DIR:-build}"
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}" >/dev/null
ninja -C "$BUILD_DIR"

echo "== clang-format check"
mapfile -t sources < <(git ls-files '*.cc' '*.h' 2>/dev/null || find proto storage services tests -name '*.cc' -o -name '*.h')
clang-format --dry-run --Werror "${sources[@]}"

echo "== tests"
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "${TEST_JOBS:-2}" --timeout 600
