#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Runs regproxy's benchmark suite (bench/run.py; `make bench` builds what it needs first).
set -eu
cd "$(dirname "$0")/.."
exec /usr/bin/python3 bench/run.py "$@"
