# SPDX-License-Identifier: Apache-2.0
"""The index snapshot is disposable: a clean stop writes cache/index, the next start reads
and deletes it; a snapshot that is truncated, garbage, or has one byte flipped is ignored
and the index rebuilt from the files, so cached content is still served without fetching a
blob upstream, and the store accounts for it (a later eviction still works)."""
import os
import time

import lib
from lib import check, eq

REFS = ("ns/multi:v1", "ns/multiarch:v1")


def _index(p):
    return os.path.join(p.cache_dir, "index")


def _stop_clean(p):
    problems = p.stop()
    check(not problems, "stopping the proxy: %s" % "; ".join(problems))
    check(os.path.isfile(_index(p)), "no index snapshot %s after a clean stop" % _index(p))
    return os.path.getsize(_index(p))


def _pull_from_cache(t, p, reg, what):
    mk = reg.mark()
    a0 = len(p.access())
    for ref in REFS:
        _, tags = t.pull(p, ref)
        eq(tags.get("v1"), reg.pushed[ref]["digest"], "%s: digest of %s" % (what, ref))
    time.sleep(0.3)
    gets = [x for x in reg.since(mk) if x[0] == "GET" and "/blobs/" in x[1]]
    check(not gets, "%s: upstream blob GETs %s (the cached blobs should be hits)"
          % (what, gets[:5]))
    mans = [x for x in reg.since(mk) if "/manifests/" in x[1]]
    check(not mans, "%s: upstream manifest requests %s (tags are within tag_ttl)"
          % (what, mans[:5]))
    bad = [(a["path"], a.get("cache")) for a in p.access(a0)
           if "/v2/ns/" in a.get("path", "") and a.get("cache") != "HIT"]
    check(not bad, "%s: requests not answered as cache hits: %s" % (what, bad[:5]))
    check(not os.path.exists(_index(p)),
          "%s: the index snapshot still exists while the proxy runs (it is deleted once "
          "read)" % what)


def _damage(path, how):
    with open(path, "rb") as f:
        data = f.read()
    if how == "truncated":
        data = data[:len(data) // 2]
    elif how == "garbage":
        data = os.urandom(len(data))
    elif how == "one byte flipped":
        b = bytearray(data)
        b[len(b) // 2] ^= 0x01
        data = bytes(b)
    elif how == "empty":
        data = b""
    elif how == "magic kept, garbage after":
        data = data[:8] + os.urandom(max(64, len(data) - 8))
    with open(path, "wb") as f:
        f.write(data)


def test_damaged_index_rebuilt(t):
    s = t.s
    reg = s.anon_registry
    p = t.proxy(registries=[reg.conf()])
    for ref in REFS:
        t.pull(p, ref)
    on_disk = lib.cache_bytes(p.cache_dir)
    _stop_clean(p)
    p.start()
    _pull_from_cache(t, p, reg, "restart with an intact index")
    for how in ("truncated", "garbage", "one byte flipped", "empty",
                "magic kept, garbage after"):
        _stop_clean(p)
        _damage(_index(p), how)
        p.start()
        _pull_from_cache(t, p, reg, "restart with the index %s" % how)
        lib.check_cache_store(p.cache_dir, "index %s: " % how)
    eq(lib.cache_bytes(p.cache_dir), on_disk, "bytes in the store after the restarts")

    # The rebuilt index accounts for everything: a smaller max_size now evicts down to it.
    _stop_clean(p)
    _damage(_index(p), "garbage")
    p.cache["max_size"] = "300K"
    p.start()
    t.pull(p, "ns/multiarch:v1")
    n = lib.cache_bytes(p.cache_dir)
    check(n <= 300 * 1024, "with a rebuilt index and max_size 300K the store holds %d bytes "
          "(was %d): the rebuilt index does not account for the files" % (n, on_disk))
