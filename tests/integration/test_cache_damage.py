# SPDX-License-Identifier: Apache-2.0
"""Damaged upstream blobs (a flipped byte, 100 bytes short, 100 bytes extra, a connection
cut half-way) and the cache: several concurrent clients each get an error status or a cut
connection, never a complete 200; no file for the digest appears under blobs/ and tmp/ is
empty afterwards; the next request goes upstream again. Once upstream is healthy the blob
is served, cached, and then served without upstream contact. A cut download is first
resumed (up to RESUMES ranged GETs, each cut again here) before it fails. The fake
registry's global mode is switched and restored."""
import os
import time

import lib
from lib import check, eq

CLIENTS = 4
RESUMES = 3  # proxy/fill.c FILL_RESUMES


def _cdn_gets(fr, mark, digest, at_least=0):
    """CDN GETs of the blob since mark. fakereg logs a request after answering it, so first
    wait (up to 5 s) for at_least of them, then let late lines land."""
    def n():
        return sum(1 for r in fr.cdn_requests(mark[1])
                   if r["method"] == "GET" and r["path"] == "/blobs/" + digest)
    return len(lib.settle(lambda: [0] * n(), at_least))


def _tmp_empty(p):
    return not lib.cache_files(p.cache_dir, "tmp")


def _damaged_then_healthy(t, mode):
    fr, p, layer, path = lib.fakereg_blob_in_mode(t, mode)
    digest = layer["digest"]
    blob_file = lib.cache_path(p.cache_dir, "blobs", digest)
    fetched = 0
    for attempt in (1, 2):
        mark = fr.mark()
        res = lib.parallel([lambda: lib.stream_get(p.port, path, timeout=60)] * CLIENTS)
        what = "attempt %d, upstream mode %s" % (attempt, mode)
        for i, r in enumerate(res):
            check(r.status != 0 or r.error, "%s, client %d: no answer at all %r" % (what, i, r))
            check(not (r.status == 200 and r.complete),
                  "%s, client %d: a complete 200 (%d bytes, digest %s, want %s): damaged "
                  "upstream bytes must end in an error status or a cut connection, never a "
                  "clean body" % (what, i, r.got, r.digest, digest))
            if r.status == 200:
                check(r.length is None or r.got < r.length,
                      "%s, client %d: 200 with %d of %s announced bytes and a clean end"
                      % (what, i, r.got, r.length))
            else:
                check(r.status >= 500, "%s, client %d: status %d (an upstream failure is a "
                      "5xx): %r" % (what, i, r.status, r))
        lib.wait_until(lambda: _tmp_empty(p), 10, "%s: tmp/ of the cache to be empty (left: "
                       "%s)" % (what, lib.cache_files(p.cache_dir, "tmp")))
        check(not os.path.exists(blob_file),
              "%s: %s exists: a damaged download was published" % (what, blob_file))
        n = _cdn_gets(fr, mark, digest, at_least=1)
        check(n >= 1, "%s: no upstream (CDN) GET of %s: the request was not refetched"
              % (what, digest))
        most = CLIENTS * (1 + RESUMES if mode == "cut" else 1)
        check(n <= most, "%s: %d upstream GETs for %d clients" % (what, n, CLIENTS))
        fetched += n
    check(not [x for x in lib.cache_digests(p.cache_dir, "blobs") if x == digest],
          "mode %s: the damaged blob is in the cache" % mode)

    fr.set_mode("ok")
    mark = fr.mark()
    r = lib.stream_get(p.port, path)
    eq((r.status, r.complete, r.digest, r.header("x-regproxy-cache")),
       (200, True, digest, "MISS"), "GET after upstream recovered from mode %s (%r)" % (mode, r))
    eq(_cdn_gets(fr, mark, digest, at_least=1), 1, "upstream GETs for the GET after recovery")
    lib.wait_until(lambda: os.path.isfile(blob_file), 5, "%s in the cache" % blob_file)
    eq(lib.sha256_file(blob_file), digest, "content of the cached %s" % blob_file)
    check(_tmp_empty(p), "tmp/ not empty after a good fill: %s"
          % lib.cache_files(p.cache_dir, "tmp"))
    mark = fr.mark()
    r = lib.stream_get(p.port, path)
    eq((r.status, r.complete, r.digest, r.header("x-regproxy-cache")),
       (200, True, digest, "HIT"), "GET once the good copy is cached (%r)" % r)
    time.sleep(0.3)
    eq((len(fr.requests(mark[0])), len(fr.cdn_requests(mark[1]))), (0, 0),
       "upstream requests (registry, CDN) for a cache hit")


def test_corrupt(t):
    _damaged_then_healthy(t, "corrupt")


def test_truncated(t):
    _damaged_then_healthy(t, "truncate")


def test_extra_bytes(t):
    _damaged_then_healthy(t, "long")


def test_cut(t):
    _damaged_then_healthy(t, "cut")


def test_cached_file_resized_is_fetched_again(t):
    """A cached blob file cut short (or grown) behind the proxy's back cannot match its digest:
    it is removed and fetched again, not served as a HIT that every client rejects."""
    fr, p, layer, path = lib.fakereg_blob_in_mode(t, "ok")
    digest = layer["digest"]
    blob_file = lib.cache_path(p.cache_dir, "blobs", digest)
    r = lib.stream_get(p.port, path)
    eq((r.status, r.complete, r.digest), (200, True, digest), "first GET (%r)" % r)
    lib.wait_until(lambda: os.path.isfile(blob_file), 5, "%s in the cache" % blob_file)
    for how in ("cut short", "grown"):
        with open(blob_file, "r+b") as f:
            if how == "cut short":
                f.truncate(layer["size"] // 2)
            else:
                f.seek(0, os.SEEK_END)
                f.write(b"junk")
        mark = fr.mark()
        r = lib.stream_get(p.port, path)
        eq((r.status, r.complete, r.digest, r.header("x-regproxy-cache")),
           (200, True, digest, "MISS"), "GET after the cached file was %s (%r)" % (how, r))
        eq(_cdn_gets(fr, mark, digest, at_least=1), 1, "upstream GETs after the file was " + how)
        lib.wait_until(lambda: os.path.isfile(blob_file) and
                       os.path.getsize(blob_file) == layer["size"], 5,
                       "%s back in the cache with %d bytes" % (blob_file, layer["size"]))
        eq(lib.sha256_file(blob_file), digest, "content of the refetched %s" % blob_file)
