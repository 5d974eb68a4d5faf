# SPDX-License-Identifier: Apache-2.0
"""Serving, the event loop never waits for the disk: over a cold pull (blobs, manifests, tags
and links written) the loop's thread makes no fsync, fdatasync or syncfs. The blob bytes are
fsynced on the fill worker before their rename; the rest is made durable by a syncfs on a
thread of its own. After a clean stop (which syncs what is left) a new process serves the
pull from the cache."""
import os
import re
import signal
import subprocess
import time

import lib
from lib import check, eq

SYNCS = ("fsync", "fdatasync", "syncfs")


def _syncs(path):
    """[(tid, syscall)] from strace's -f -o output."""
    out = []
    with open(path) as f:
        for line in f:
            m = re.match(r"(\d+)\s+(?:<\.\.\. )?(\w+)[( ]", line)
            if m and m.group(2) in SYNCS:
                out.append((int(m.group(1)), m.group(2)))
    return out


def test_no_sync_on_the_loop(t):
    reg = t.s.anon_registry
    p = t.proxy(registries=[reg.conf("registry.anon.test")])
    out = os.path.join(t.tmp, "syncs.strace")
    tracer = subprocess.Popen(["strace", "-f", "-qq", "-o", out, "-e", "trace=" + ",".join(SYNCS),
                               "-p", str(p.pid)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        tids = set(int(x) for x in os.listdir("/proc/%d/task" % p.pid))

        def attached():
            for tid in tids:
                with open("/proc/%d/task/%d/status" % (p.pid, tid)) as f:
                    if "TracerPid:\t0\n" in f.read():
                        return False
            return True
        lib.wait_until(attached, 20, "strace attached to every thread of the proxy")
        mark = reg.mark()
        _, tags = t.pull(p, "ns/multi:v1")
        check(reg.count("GET", "/v2/ns/multi/blobs/sha256:", since=mark) > 0,
              "the pull was not cold: no blob came from upstream")
        # The last writes' syncfs may come after the pull, on its own thread (asserted below).
        deadline = time.time() + 20
        while time.time() < deadline and not any(s == "syncfs" and tid != p.pid
                                                 for tid, s in _syncs(out)):
            time.sleep(0.05)
    finally:
        tracer.send_signal(signal.SIGINT)  # detaches
        _, err = tracer.communicate(timeout=20)
    calls = _syncs(out)
    on_loop = [s for tid, s in calls if tid == p.pid]
    eq(on_loop, [], "disk syncs made by the event loop's thread during a cold pull")
    off = [s for tid, s in calls if tid != p.pid]
    check("fsync" in off, "no blob was fsynced (by a worker) before its rename: %r (strace: %s)"
          % (calls, err.decode(errors="replace")[-500:]))
    check("syncfs" in off, "nothing made the manifests, tags and links durable: %r" % calls)

    problems = p.stop()
    check(not problems, "; ".join(problems))
    p.start()
    mark = reg.mark()
    t.pull(p, "ns/multi:v1")
    time.sleep(0.3)  # docker-registry logs a request when it has ended
    eq(reg.count("GET", "/v2/ns/multi/blobs/", since=mark), 0,
       "blob GETs upstream after a restart on the same cache")
