# SPDX-License-Identifier: Apache-2.0
"""[cache] scrub_interval: while serving, every cached blob is read again and checked against
its digest. A blob damaged on disk in a way that keeps its size (which serving, trusting the
check made when it arrived, would send to every client) is found by the scrub, removed, and
fetched again from upstream by the next pull; intact blobs stay, and a reload can turn the
scrub on."""
import os
import signal
import time

import lib
from lib import check, eq


def _flip(path):
    with open(path, "r+b") as f:
        pos = os.fstat(f.fileno()).st_size // 2
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x55]))


def _metric(p, name):
    return p.metrics().get((name, frozenset()), 0)


def test_scrub_removes_a_damaged_blob(t):
    reg = t.s.anon_registry
    p = t.proxy(registries=[reg.conf("registry.anon.test")],
                cache={"scrub_interval": "1s", "scrub_rate": "100M"})
    started = time.time()
    t.pull(p, "ns/multi:v1")
    blobs = lib.cache_digests(p.cache_dir, "blobs")
    total = sum(blobs.values())
    # A whole clean pass first: every byte checked, nothing removed.
    lib.wait_until(lambda: _metric(p, "regproxy_cache_scrubbed_bytes_total") >= total, 30,
                   "a scrub pass over the %d cached bytes" % total)
    eq(_metric(p, "regproxy_cache_scrub_damaged_total"), 0, "blobs the scrub removed, intact")
    lib.wait_until(lambda: _metric(p, "regproxy_cache_scrub_last_pass_end_seconds")
                   >= started - 1, 30, "the end of a whole pass in the last-pass gauge")
    check(_metric(p, "regproxy_cache_scrub_last_pass_end_seconds") <= time.time() + 1,
          "the last-pass gauge is in the future")
    eq(lib.cache_digests(p.cache_dir, "blobs"), blobs, "the cached blobs after a clean pass")

    blob = max(blobs, key=lambda d: blobs[d])
    path = lib.cache_path(p.cache_dir, "blobs", blob)
    _flip(path)
    lib.wait_until(lambda: _metric(p, "regproxy_cache_scrub_damaged_total") == 1, 30,
                   "the scrub to find the damaged blob")
    check(not os.path.exists(path), "the damaged blob is still in the cache")
    log = p.log_text()
    check(("cache scrub: blob %s is damaged (its %d bytes hash to sha256:"
           % (blob, blobs[blob])) in log, "the scrub's log line for the blob:\n%s" % log[-3000:])
    for d in blobs:
        if d != blob:
            check(os.path.exists(lib.cache_path(p.cache_dir, "blobs", d)),
                  "an intact blob %s was removed" % d)

    # Served again right: fetched once more from upstream, the rest from the cache.
    mark = reg.mark()
    t.pull(p, "ns/multi:v1")
    time.sleep(0.3)  # docker-registry logs a request when it has ended
    eq(reg.count("GET", "/v2/ns/multi/blobs/", since=mark), 1,
       "upstream blob GETs after the scrub removed one")
    eq(reg.count("GET", "/v2/ns/multi/blobs/%s" % blob, since=mark), 1,
       "upstream GETs of the removed blob")
    eq(_metric(p, "regproxy_cache_scrub_damaged_total"), 1, "blobs removed after the re-fetch")
    problems = p.stop()
    check(not problems, "; ".join(problems))


def test_scrub_off_by_default_and_on_by_reload(t):
    reg = t.s.anon_registry
    p = t.proxy(registries=[reg.conf("registry.anon.test")])
    t.pull(p, "ns/multi:v1")
    time.sleep(1.5)
    eq(_metric(p, "regproxy_cache_scrubbed_bytes_total"), 0, "bytes scrubbed with no interval")
    eq(_metric(p, "regproxy_cache_scrub_last_pass_end_seconds"), 0, "the last pass, with none")
    blobs = lib.cache_digests(p.cache_dir, "blobs")
    p.cache.update({"scrub_interval": "1s", "scrub_rate": "100M"})
    p.write_conf()
    os.kill(p.pid, signal.SIGHUP)
    lib.wait_until(lambda: "reload (SIGHUP): configuration applied" in p.log_text(), 10,
                   "the reload")
    total = sum(blobs.values())
    lib.wait_until(lambda: _metric(p, "regproxy_cache_scrubbed_bytes_total") >= total, 30,
                   "a scrub pass after the reload turned it on")


def _scrub_reading(p, paths):
    """Whether the proxy holds one of paths open (the scrub reads one blob at a time)."""
    fds = "/proc/%d/fd" % p.pid
    for fd in os.listdir(fds):
        try:
            if os.readlink(os.path.join(fds, fd)) in paths:
                return True
        except OSError:
            pass
    return False


def test_scrub_turned_off_by_reload_stops_the_pass(t):
    """A reload that sets scrub_interval = 0 (say, its reads hurt serving) ends the pass under
    way, the blob being read included. The pass used to run on to its end, at scrub_rate
    over the whole cache: hours on a big one."""
    reg = t.s.anon_registry
    p = t.proxy(registries=[reg.conf("registry.anon.test")],
                cache={"scrub_interval": "1s", "scrub_rate": "1M"})
    t.pull(p, "ns/large:v1")
    layers = lib.image_manifests(reg, "ns/large:v1")[0]["layers"]
    paths = {os.path.realpath(lib.cache_path(p.cache_dir, "blobs", x["digest"]))
             for x in layers}
    # Each layer (10 and 100 MiB) takes at least 10 s to read at 1M a second.
    lib.wait_until(lambda: _scrub_reading(p, paths), 30, "the scrub to read a layer")
    p.cache["scrub_interval"] = "0"
    p.write_conf()
    os.kill(p.pid, signal.SIGHUP)
    lib.wait_until(lambda: "cache scrub: pass stopped" in p.log_text(), 10,
                   "the pass to stop once scrub_interval is 0")
    lib.wait_until(lambda: not _scrub_reading(p, paths), 5, "the layer to be closed")
    eq(_metric(p, "regproxy_cache_scrub_damaged_total"), 0, "blobs the stopped pass removed")
    for x in layers:
        check(os.path.exists(lib.cache_path(p.cache_dir, "blobs", x["digest"])),
              "layer %s was removed by the stopped pass" % x["digest"])
