# SPDX-License-Identifier: Apache-2.0
"""HEAD and Range against the cache. On an uncached blob a HEAD is a HEAD upstream (no
download, nothing cached) and a Range GET passes through to upstream (206 with exactly the
asked bytes, nothing cached, tmp/ empty; a range past the end is a 416). Once a whole-blob
GET cached it, HEAD and Range are answered from disk (HIT) with no upstream request."""
import os

import lib
from lib import check, eq


def _ups(reg, mark, digest, n=0):
    """(method, status) of upstream requests for the blob since mark (waiting for n of them:
    docker-registry logs a request when it has ended)."""
    return lib.settle(lambda: [(m, st) for m, p, st in reg.since(mark)
                               if p.endswith("/blobs/" + digest)], n)


def _not_cached(p, digest, what):
    f = lib.cache_path(p.cache_dir, "blobs", digest)
    check(not os.path.exists(f), "%s: %s is in the cache" % (what, f))
    left = lib.cache_files(p.cache_dir, "tmp")
    check(not left, "%s: tmp/ of the cache not empty: %s" % (what, left))


def test_head_and_range(t):
    reg = t.s.anon_registry
    layer = lib.image_manifests(reg, "ns/multi:v1")[0]["layers"][2]
    digest, size = layer["digest"], layer["size"]
    full = reg.client().get("/v2/ns/multi/blobs/" + digest).body
    eq(lib.sha256(full), digest, "the blob straight from upstream")
    path = "/v2/ns/multi/blobs/" + digest
    p = t.proxy(registries=[reg.conf()])

    mk = reg.mark()
    st, h, body = p.raw("HEAD", path)
    eq((st, h.get("content-length"), h.get("docker-content-digest"), body),
       (200, str(size), digest, b""), "HEAD of an uncached blob")
    eq(_ups(reg, mk, digest, 1), [("HEAD", 200)], "upstream requests for HEAD of an uncached blob")
    _not_cached(p, digest, "after a HEAD")

    mk = reg.mark()
    r = p.get(path, headers={"Range": "bytes=1000-1999"})
    eq((r.status, r.header("Content-Range"), len(r.body)),
       (206, "bytes 1000-1999/%d" % size, 1000), "Range GET of an uncached blob")
    check(r.body == full[1000:2000], "Range GET of an uncached blob: wrong bytes")
    check(r.header("X-Regproxy-Cache") != "HIT", "uncached Range answered as a HIT")
    eq(_ups(reg, mk, digest, 1), [("GET", 206)], "upstream requests for an uncached Range GET")
    _not_cached(p, digest, "after a Range GET")

    # Past the end: upstream says 416. docker-registry announces the whole blob's length
    # with it and sends one line, an answer no client could use: the proxy answers 416
    # itself, as it does from the cache.
    mk = reg.mark()
    r = p.get(path, headers={"Range": "bytes=%d-" % (size + 10)})
    eq((r.status, [e["code"] for e in r.json()["errors"]]), (416, ["BLOB_UNKNOWN"]),
       "uncached Range past the end (%s)" % r.body[:300])
    cr = r.header("Content-Range")
    check(cr is None or cr == "bytes */%d" % size, "Content-Range %r for an uncached "
          "Range past the end" % cr)
    eq(_ups(reg, mk, digest, 1), [("GET", 416)], "upstream requests for it")
    _not_cached(p, digest, "after a Range GET past the end")

    mk = reg.mark()
    r = lib.stream_get(p.port, path)
    eq((r.status, r.complete, r.digest, r.header("x-regproxy-cache")),
       (200, True, digest, "MISS"), "whole-blob GET")
    eq(_ups(reg, mk, digest, 1), [("GET", 200)], "upstream requests for the whole-blob GET")
    check(os.path.isfile(lib.cache_path(p.cache_dir, "blobs", digest)),
          "the blob is not cached after a whole GET")

    mk = reg.mark()
    for rng, lo, hi in (("bytes=1000-1999", 1000, 1999), ("bytes=-10", size - 10, size - 1),
                        ("bytes=%d-" % (size - 3), size - 3, size - 1)):
        r = p.get(path, headers={"Range": rng})
        eq((r.status, r.header("Content-Range"), r.header("X-Regproxy-Cache")),
           (206, "bytes %d-%d/%d" % (lo, hi, size), "HIT"), "cached Range %s" % rng)
        check(r.body == full[lo:hi + 1], "cached Range %s: wrong bytes" % rng)
    st, h, body = p.raw("HEAD", path)
    eq((st, h.get("content-length"), h.get("x-regproxy-cache"), body),
       (200, str(size), "HIT", b""), "HEAD of a cached blob")
    r = p.get(path, headers={"Range": "bytes=%d-" % (size + 10)})
    eq((r.status, r.header("Content-Range")), (416, "bytes */%d" % size),
       "cached Range past the end")
    eq(_ups(reg, mk, digest), [], "upstream requests for Range and HEAD of a cached blob")
