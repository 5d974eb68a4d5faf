#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Runs regproxy's benchmark suite (bench/run.py; `make bench` builds what it needs first).
# The profile scenario also wants strace and perf; they are installed here, not by
# `make deps`, because only the benchmarks use them (the scenario skips what is missing).
set -eu
cd "$(dirname "$0")/.."
missing=""
for p in strace linux-perf; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ] && command -v apt-get >/dev/null; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO=sudo
    echo "bench: installing$missing"
    { $SUDO apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing; } ||
        echo "bench: could not install$missing; the profile scenario does without"
fi
exec /usr/bin/python3 bench/run.py "$@"
