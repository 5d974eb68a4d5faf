# SPDX-License-Identifier: Apache-2.0
"""The cache's disk fills before max_size (the default, 100G, is more than many nodes have,
and other files share the disk). The proxy then evicts least recently used blobs to make
room and the pull goes on; when nothing is left to evict, the blob is passed through from
upstream uncached (nothing evicted in vain, nothing partial left behind). Once
the disk has room again, everything works. The cache lives on a 24 MiB tmpfs of the test's
own (mounting needs root; the test says so and skips otherwise)."""
import os
import subprocess

import lib
from lib import check, eq


def _skipped(why):
    print("    skipped: %s" % why, flush=True)


def _fill_up(path):
    """Takes every free byte of path's file system."""
    with open(path, "ab") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def _small_fs(t):
    """A 24 MiB tmpfs of the test's own (unmounted at its end), or None (said) when the tests
    do not run as root."""
    if os.geteuid() != 0:
        _skipped("mounting a tmpfs needs root (the tests run as uid %d)" % os.geteuid())
        return None
    fs = os.path.join(t.tmp, "small-fs")
    os.makedirs(fs)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", fs], check=True)
    # Lazily: the proxy still holds the cache open when cleanups run.
    t.defer(lambda: subprocess.run(["umount", "-l", fs], check=True))
    return fs


def test_disk_full_evicts_then_passes_through(t):
    fs = _small_fs(t)
    if not fs:
        return
    reg = t.s.anon_registry
    cache = os.path.join(fs, "cache")
    junk = os.path.join(fs, "junk")
    p = t.proxy(registries=[reg.conf()], cache={"dir": cache})
    p.cache_dir = cache
    with open(p.log) as f:
        check("the disk bounds the cache, not max_size" in f.read(),
              "no start-up line saying the 24 MiB disk, not max_size (100G), bounds the cache")

    # multi (0.6 MiB) and large's 10 MiB layer, in that order: the cache's LRU order.
    _, tags = t.pull(p, "ns/multi:v1")
    eq(tags.get("v1"), reg.pushed["ns/multi:v1"]["digest"], "digest of ns/multi:v1")
    layers = lib.image_manifests(reg, "ns/large:v1")[0]["layers"]
    big = max(layers, key=lambda x: x["size"])
    small = min(layers, key=lambda x: x["size"])
    r = p.get("/v2/ns/large/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 200, "manifest of ns/large:v1")
    r = lib.stream_get(p.port, "/v2/ns/large/blobs/" + small["digest"])
    eq((r.status, r.complete, r.digest), (200, True, small["digest"]), "the 10 MiB layer")
    multi_blobs = [lib.cache_path(cache, "blobs", d) for d in lib.cache_digests(cache, "blobs")
                   if d != small["digest"]]
    check(multi_blobs, "ns/multi's blobs are not in the cache")
    small_file = lib.cache_path(cache, "blobs", small["digest"])
    lib.wait_until(lambda: os.path.isfile(small_file), 10, "the 10 MiB layer to be cached")

    # Something else takes the rest of the disk. A pull of another image needs room: the
    # oldest blobs go (multi's, then the 10 MiB layer to get a MiB of slack), and it works.
    _fill_up(junk)
    mark = os.path.getsize(p.log)
    _, tags = t.pull(p, "ns/multiarch:v1")
    eq(tags.get("v1"), reg.pushed["ns/multiarch:v1"]["digest"], "digest of ns/multiarch:v1")
    check(not any(os.path.exists(f) for f in multi_blobs),
          "ns/multi's blobs, the least recently used, were not evicted for room")
    with open(p.log) as f:
        f.seek(mark)
        log = f.read()
    check("file system full: evicted" in log,
          "no log line about making room; log since the pull:\n%s" % log[-2000:])
    lib.check_cache_store(cache, "after making room: ")
    r = p.admin("/readyz")
    eq(r.status, 200, "readyz on a full disk with blobs left to evict (%s)" % r.body[:300])
    m = p.metrics()
    check(m[("regproxy_cache_evictions_total", frozenset())] >= len(multi_blobs),
          "regproxy_cache_evictions_total %s after making room"
          % m[("regproxy_cache_evictions_total", frozenset())])
    eq(m[("regproxy_cache_disk_full_total", frozenset())], 0, "regproxy_cache_disk_full_total")

    # The 100 MiB layer cannot fit however much is evicted: it is passed through from
    # upstream, uncached, and the cache is not emptied in vain.
    before = sorted(lib.cache_digests(cache, "blobs"))
    r = lib.stream_get(p.port, "/v2/ns/large/blobs/" + big["digest"])
    eq((r.status, r.complete, r.digest, r.header("x-regproxy-cache")),
       (200, True, big["digest"], "PASS"), "GET of a blob larger than the cache's disk (%r)" % r)
    check("clients waiting for it are passed through, uncached" in p.log_text(),
          "the log does not say the blob was passed through:\n%s" % lib.tail(p.log, 10))
    eq(lib.cache_files(cache, "tmp"), [], "temp files left after the refused fill")
    check(not os.path.exists(lib.cache_path(cache, "blobs", big["digest"])),
          "the refused blob is in the cache")
    eq(sorted(lib.cache_digests(cache, "blobs")), before, "blobs after the refused fill")
    m = p.metrics()
    eq(m[("regproxy_cache_disk_full_total", frozenset())], 1,
       "regproxy_cache_disk_full_total after the refused fill")
    eq(m[("regproxy_fill_no_room_total", frozenset({("registry", reg.name)}))], 1,
       "regproxy_fill_no_room_total after the refused fill")
    lib.check_cache_store(cache, "after the refused fill: ")
    # A range of it passes through; the download that would follow it is not even started,
    # since its temp file cannot be allocated.
    mk = reg.mark()
    path = "/v2/ns/large/blobs/" + big["digest"]
    r = p.get(path, headers={"Range": "bytes=10-19"})
    eq((r.status, r.header("x-regproxy-cache")), (206, "PASS"), "a range of the refused blob")
    gets = lib.settle(lambda: [(m_, st) for m_, p_, st in reg.since(mk) if p_.endswith(path)], 1)
    eq(gets, [("GET", 206)], "upstream requests for a range of the refused blob")
    eq(p.metrics()[("regproxy_fill_no_room_total", frozenset({("registry", reg.name)}))], 2,
       "regproxy_fill_no_room_total after the range")
    eq(lib.cache_files(cache, "tmp"), [], "temp files after the range")
    eq(sorted(lib.cache_digests(cache, "blobs")), before, "blobs after the range")
    # What is cached is still served (manifests are never evicted for room).
    r = p.get("/v2/ns/multiarch/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, r.header("docker-content-digest")),
       (200, reg.pushed["ns/multiarch:v1"]["digest"]), "cached manifest on the full disk")

    # Room again: nothing is stuck.
    os.unlink(junk)
    _, tags = t.pull(p, "ns/multi:v1")
    eq(tags.get("v1"), reg.pushed["ns/multi:v1"]["digest"], "digest of ns/multi:v1 again")
    lib.check_cache_store(cache, "at the end: ")


def test_confirmed_blob_served_when_its_link_cannot_be_written(t):
    """A blob cached for one repository, asked for through another: upstream confirms the
    other has it, and the blob is served even when the disk is too full for the new link
    (pinned content leaves nothing to evict). It used to look up again, find no link, and
    confirm again, without end: no answer, and thousands of HEADs upstream."""
    fs = _small_fs(t)
    if not fs:
        return
    reg = t.s.anon_registry
    cache = os.path.join(fs, "cache")
    p = t.proxy(registries=[reg.conf()],
                cache={"dir": cache, "pin": "registry.anon.test/ns/multi"})
    p.cache_dir = cache
    a = lib.image_manifests(reg, "ns/multi:v1")[0]["layers"]
    b = {x["digest"] for x in lib.image_manifests(reg, "ns/multi-v2s2:v1")[0]["layers"]}
    layer = min((x for x in a if x["digest"] in b), key=lambda x: x["size"])
    r = p.get("/v2/ns/multi/blobs/" + layer["digest"])
    eq(r.status, 200, "the layer through ns/multi")
    lib.wait_until(lambda: os.path.isfile(lib.cache_path(cache, "blobs", layer["digest"])), 10,
                   "the layer to be cached")
    _fill_up(os.path.join(fs, "junk"))
    mark = reg.mark()
    r = p.get("/v2/ns/multi-v2s2/blobs/" + layer["digest"], timeout=20)
    eq(r.status, 200, "the same layer through ns/multi-v2s2 on a full disk")
    eq(lib.sha256(r.body), layer["digest"], "digest of the layer served")
    asked = [x for x in reg.since(mark) if x[1].endswith(layer["digest"])]
    check(len(asked) <= 2, "upstream was asked %d times for the layer" % len(asked))
    check("cannot record the repository link" in p.log_text(),
          "no log line saying the link could not be recorded")




def test_cache_that_cannot_create_files_passes_through(t):
    """The cache cannot start a fill for a reason other than room (its file system turned
    read-only after a disk error, descriptors exhausted; here its tmp/ is gone, so every
    create fails): like a full disk, an uncached blob is passed through from upstream,
    uncached, rather than answered with a 502 for every pull, and what is cached is still
    served."""
    reg = t.s.anon_registry
    p = t.proxy(registries=[reg.conf()])
    layers = lib.image_manifests(reg, "ns/multi:v1")[0]["layers"]
    cached, other = layers[0], layers[1]
    r = lib.stream_get(p.port, "/v2/ns/multi/blobs/" + cached["digest"])
    eq((r.status, r.complete, r.digest), (200, True, cached["digest"]), "a layer of ns/multi")
    lib.wait_until(lambda: os.path.isfile(lib.cache_path(p.cache_dir, "blobs", cached["digest"])),
                   10, "the layer to be cached")
    lib.wait_until(lambda: not lib.cache_files(p.cache_dir, "tmp"), 10, "tmp/ to be empty")
    os.rmdir(os.path.join(p.cache_dir, "tmp"))
    r = lib.stream_get(p.port, "/v2/ns/multi/blobs/" + other["digest"])
    eq((r.status, r.complete, r.digest, r.header("x-regproxy-cache")),
       (200, True, other["digest"], "PASS"),
       "an uncached layer when the cache cannot create its temp file (%r)" % r)
    check(not os.path.exists(lib.cache_path(p.cache_dir, "blobs", other["digest"])),
          "the layer passed through is in the cache")
    r = lib.stream_get(p.port, "/v2/ns/multi/blobs/" + cached["digest"])
    eq((r.status, r.complete, r.digest, r.header("x-regproxy-cache")),
       (200, True, cached["digest"], "HIT"), "the cached layer")
    os.mkdir(os.path.join(p.cache_dir, "tmp"))
