# SPDX-License-Identifier: Apache-2.0
"""HEAD and Range against the cache. On an uncached blob a HEAD is a HEAD upstream (no
download, nothing cached); a range past the end is a 416 and downloads nothing; a bounded
Range GET passes through to upstream (206 with exactly the asked bytes), and the download
that fills the cache starts behind it, once, with the size its answer gave (lazy-pulling
snapshotters read layers only in ranges: every node's ranges would otherwise cross the
internet), unless the blob is too large to keep. A range to the blob's end from byte 0
(containerd 2.1's parallel layer fetch asks for every blob so) starts that download itself;
ranges to the end while it runs (the fetch's further chunks) are served from it. Once
cached, HEAD and Range are answered from disk (HIT) with no upstream request, several ranges
in one request as multipart/byteranges."""
import hashlib
import json
import os
import re
import socket
import ssl
import threading

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

    # Past the end: upstream says 416. docker-registry announces the whole blob's length
    # with it and sends one line, an answer no client could use: the proxy answers 416
    # itself, as it does from the cache. Nothing is downloaded behind it.
    mk = reg.mark()
    r = p.get(path, headers={"Range": "bytes=%d-" % (size + 10)})
    eq((r.status, [e["code"] for e in r.json()["errors"]]), (416, ["RANGE_INVALID"]),
       "uncached Range past the end (%s)" % r.body[:300])
    cr = r.header("Content-Range")
    check(cr is None or cr == "bytes */%d" % size, "Content-Range %r for an uncached "
          "Range past the end" % cr)
    eq(_ups(reg, mk, digest, 1), [("GET", 416)], "upstream requests for it")
    _not_cached(p, digest, "after a Range GET past the end")

    mk = reg.mark()
    r = p.get(path, headers={"Range": "bytes=1000-1999"})
    eq((r.status, r.header("Content-Range"), len(r.body)),
       (206, "bytes 1000-1999/%d" % size, 1000), "Range GET of an uncached blob")
    check(r.body == full[1000:2000], "Range GET of an uncached blob: wrong bytes")
    eq(r.header("X-Regproxy-Cache"), "PASS", "X-Regproxy-Cache of an uncached Range")
    blob_file = lib.cache_path(p.cache_dir, "blobs", digest)
    lib.wait_until(lambda: os.path.isfile(blob_file), 10, "the blob cached behind the range")
    eq(sorted(_ups(reg, mk, digest, 2)), [("GET", 200), ("GET", 206)],
       "upstream requests for an uncached Range GET: the range, then the whole blob")
    with open(blob_file, "rb") as f:
        eq(lib.sha256(f.read()), digest, "the blob cached behind the range")
    eq(lib.cache_files(p.cache_dir, "tmp"), [], "tmp/ of the cache after the fill")
    eq(p.metrics()[("regproxy_fill_behind_range_total", frozenset({("registry", reg.name)}))],
       1, "regproxy_fill_behind_range_total")

    mk = reg.mark()
    r = lib.stream_get(p.port, path)
    eq((r.status, r.complete, r.digest, r.header("x-regproxy-cache")),
       (200, True, digest, "HIT"), "whole-blob GET once filled behind the range")

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


def test_range_never_satisfiable_uncached(t):
    """A range no blob can satisfy ("bytes=-0": RFC 9110 14.1.1; a first byte past any
    size) is a 416 naming the blob's size, cached or not, after an upstream HEAD; nothing
    is downloaded. It used to pass through, and docker-registry answers "bytes=-0" with a
    206 of no bytes and a Content-Range whose first byte is past its last, which reached
    the client as it was."""
    reg = t.s.anon_registry
    layer = lib.image_manifests(reg, "ns/multi:v1")[0]["layers"][1]
    digest, size = layer["digest"], layer["size"]
    path = "/v2/ns/multi/blobs/" + digest
    p = t.proxy(registries=[reg.conf()])
    for rng in ("bytes=-0", "bytes=-0, -0", "bytes=18446744073709551615-"):
        mk = reg.mark()
        r = p.get(path, headers={"Range": rng})
        codes = [e["code"] for e in r.json()["errors"]] if r.status == 416 else None
        eq((r.status, r.header("Content-Range"), codes),
           (416, "bytes */%d" % size, ["RANGE_INVALID"]), "uncached Range %s (%.300r)"
           % (rng, r.body))
        eq(_ups(reg, mk, digest, 1), [("HEAD", 200)], "upstream requests for Range %s" % rng)
        st, h, body = p.raw("HEAD", path, {"Range": rng})
        eq((st, h.get("content-length"), h.get("content-range")), (200, str(size), None),
           "HEAD with Range %s" % rng)
    _not_cached(p, digest, "after ranges no blob can satisfy")
    missing = "sha256:" + "5" * 64
    r = p.get("/v2/ns/multi/blobs/" + missing, headers={"Range": "bytes=-0"})
    eq(r.status, 404, "Range bytes=-0 of a blob upstream does not have")


def test_range_from_zero_fills_the_cache(t):
    """"bytes=0-" of an uncached blob is a whole-blob pull: one upstream GET without Range,
    a 206 for all of it, and the blob cached."""
    reg = t.s.anon_registry
    layer = lib.image_manifests(reg, "ns/multi:v1")[0]["layers"][2]
    digest, size = layer["digest"], layer["size"]
    path = "/v2/ns/multi/blobs/" + digest
    p = t.proxy(registries=[reg.conf()])
    mk = reg.mark()
    r = lib.stream_get(p.port, path, headers={"Range": "bytes=0-"})
    eq((r.status, r.header("Content-Range"), r.complete, r.digest, r.header("X-Regproxy-Cache")),
       (206, "bytes 0-%d/%d" % (size - 1, size), True, digest, "MISS"),
       "bytes=0- of an uncached blob (%r)" % r)
    eq(_ups(reg, mk, digest, 1), [("GET", 200)], "upstream requests for bytes=0-")
    blob_file = lib.cache_path(p.cache_dir, "blobs", digest)
    lib.wait_until(lambda: os.path.isfile(blob_file), 10, "%s in the cache" % blob_file)
    eq(lib.sha256_file(blob_file), digest, "content of the cached blob")
    mk = reg.mark()
    r = lib.stream_get(p.port, path, headers={"Range": "bytes=0-"})
    eq((r.status, r.complete, r.digest, r.header("X-Regproxy-Cache")), (206, True, digest, "HIT"),
       "bytes=0- once cached")
    eq(_ups(reg, mk, digest), [], "upstream requests for bytes=0- once cached")


def test_malformed_range_is_ignored_and_cached(t):
    """A Range that does not parse is ignored (RFC 9110 14.2): the whole blob, 200, from one
    download that fills the cache, so the next such request is a hit. It used to pass
    through to upstream, which ignored it too, uncached, at every request."""
    reg = t.s.anon_registry
    layer = lib.image_manifests(reg, "ns/multi:v1")[0]["layers"][1]
    digest = layer["digest"]
    path = "/v2/ns/multi/blobs/" + digest
    p = t.proxy(registries=[reg.conf()])
    for n, bad in enumerate(("bytes=abc", "", "bytes=5-2", "items=0-1")):
        mk = reg.mark()
        r = lib.stream_get(p.port, path, headers={"Range": bad})
        eq((r.status, r.complete, r.digest), (200, True, digest), "Range %r (%r)" % (bad, r))
        if n == 0:
            eq(_ups(reg, mk, digest, 1), [("GET", 200)], "upstream requests for the first")
            blob_file = lib.cache_path(p.cache_dir, "blobs", digest)
            lib.wait_until(lambda: os.path.isfile(blob_file), 10, "the blob in the cache")
        else:
            eq(r.header("X-Regproxy-Cache"), "HIT", "Range %r once cached" % bad)
            eq(_ups(reg, mk, digest), [], "upstream requests for Range %r once cached" % bad)


CHUNK = 2 << 20


def test_parallel_chunks_share_one_download(t):
    """containerd's parallel layer fetch, against a slow upstream (about 1 MB/s): "bytes=0-",
    then "bytes=K-" per 2 MiB chunk, each read to the chunk's end and closed. Every chunk
    has the right bytes and the blob crosses the network once. Meanwhile a bounded range
    passes through, a suffix range waits for the verified end, and a range past the end is
    answered 416 without asking upstream."""
    fr, p, layer, path = lib.fakereg_blob_in_mode(t, "slow")
    digest, size = layer["digest"], layer["size"]
    check(size > 3 * CHUNK, "the slow layer is %d bytes: too small for chunks" % size)
    mark = fr.mark()

    def chunk(k):
        return lambda: lib.stream_get(p.port, path, headers={"Range": "bytes=%d-" % k},
                                      limit=min(CHUNK, size - k), timeout=60)

    first = {}
    th = threading.Thread(target=lambda: first.update(r=chunk(0)()))
    th.start()
    t.defer(th.join)
    # The others are sent once the download runs, as containerd sends them once the first
    # answer's head has come.
    lib.wait_until(lambda: lib.cache_files(p.cache_dir, "tmp"), 10, "the download's temp file")
    offsets = list(range(CHUNK, size, CHUNK))
    others = [
        lambda: lib.stream_get(p.port, path, headers={"Range": "bytes=1000-1999"}, timeout=60),
        lambda: lib.stream_get(p.port, path, headers={"Range": "bytes=-10"}, timeout=60),
        lambda: lib.stream_get(p.port, path, headers={"Range": "bytes=%d-" % (size + 10)},
                               timeout=60),
    ]
    res = lib.parallel([chunk(k) for k in offsets] + others)
    th.join()
    blob_file = lib.cache_path(p.cache_dir, "blobs", digest)
    lib.wait_until(lambda: os.path.isfile(blob_file), 10, "%s in the cache" % blob_file)
    eq(lib.sha256_file(blob_file), digest, "content of the cached blob")
    with open(blob_file, "rb") as f:
        blob = f.read()

    for k, r in zip([0] + offsets, [first["r"]] + res[:len(offsets)]):
        want = "sha256:" + hashlib.sha256(blob[k:k + CHUNK]).hexdigest()
        eq((r.status, r.header("Content-Range"), r.length, r.complete, r.digest,
            r.header("X-Regproxy-Cache")),
           (206, "bytes %d-%d/%d" % (k, size - 1, size), size - k, True, want, "MISS"),
           "chunk at byte %d (%r)" % (k, r))
    bounded, suffix, past = res[len(offsets):]
    eq((bounded.status, bounded.header("Content-Range"), bounded.complete),
       (206, "bytes 1000-1999/%d" % size, True), "bounded range during the download")
    check(bounded.body == blob[1000:2000], "bounded range during the download: wrong bytes")
    eq((suffix.status, suffix.header("Content-Range"), suffix.complete, suffix.body),
       (206, "bytes %d-%d/%d" % (size - 10, size - 1, size), True, blob[-10:]),
       "suffix range during the download")
    eq((past.status, past.header("Content-Range"), [e["code"] for e in
                                                    json.loads(past.body)["errors"]]),
       (416, "bytes */%d" % size, ["RANGE_INVALID"]), "range past the end during the download")

    gets = lib.settle(lambda: [x for x in fr.cdn_requests(mark[1])
                               if x["method"] == "GET" and x["path"] == "/blobs/" + digest], 2)
    ranges = sorted({k.lower(): v for k, v in x["headers"].items()}.get("range", "")
                    for x in gets)
    eq(ranges, ["", "bytes=1000-1999"],
       "CDN GETs of the blob: the one download and the bounded range")
    eq(lib.cache_files(p.cache_dir, "tmp"), [], "temp files after the download")

    mark = fr.mark()
    r = lib.stream_get(p.port, path, headers={"Range": "bytes=%d-" % CHUNK})
    eq((r.status, r.complete, r.header("X-Regproxy-Cache")), (206, True, "HIT"),
       "a chunk once cached")
    check(r.body == blob[CHUNK:CHUNK + len(r.body)], "a chunk once cached: wrong bytes")
    eq(len(fr.cdn_requests(mark[1])), 0, "CDN requests for the hit")


def test_whole_blob_pass_through_is_verified(t):
    """A range of an uncached blob that upstream answers with the whole blob (200, Range
    ignored) is passed through whole, hashed on the way: the last byte goes out only when
    the digest matched, so corrupt bytes never look complete. The fill started behind it
    rejects them too; once upstream is sound, the fill behind the range caches the blob."""
    fr, p, layer, path = lib.fakereg_blob_in_mode(t, "corrupt-norange")
    digest, size = layer["digest"], layer["size"]
    r = lib.stream_get(p.port, path, headers={"Range": "bytes=100-"})
    eq((r.status, r.length, r.complete), (200, size, False),
       "corrupt whole blob passed through (%r)" % r)
    check(r.got < size, "all %d bytes of a corrupt blob reached the client" % r.got)
    # Log lines leave once per loop iteration, which may be after the client saw the cut.
    lib.wait_until(lambda: "do not match the digest" in p.log_text(), 5,
                   "the log telling of the corrupt pass-through")
    lib.wait_until(lambda: "rejected: content does not match" in p.log_text(), 10,
                   "the fill behind the corrupt pass-through rejected")
    _not_cached(p, digest, "after the corrupt pass-through")
    fr.set_mode("norange")
    r = lib.stream_get(p.port, path, headers={"Range": "bytes=100-"})
    eq((r.status, r.length, r.complete, r.digest, r.header("x-regproxy-cache")),
       (200, size, True, digest, "PASS"), "whole blob passed through for a range (%r)" % r)
    blob_file = lib.cache_path(p.cache_dir, "blobs", digest)
    lib.wait_until(lambda: os.path.isfile(blob_file), 20, "the blob cached behind the range")
    eq(lib.sha256_file(blob_file), digest, "content of the blob cached behind the range")


def _large_layer(t, **proxy_args):
    fr = t.s.fakereg
    r = fr.client().manifest("ns/large", "v1")
    eq(r.status, 200, "ns/large manifest straight from the fake registry")
    layer = min(json.loads(r.body)["layers"], key=lambda x: x["size"])
    p = t.proxy(registries=[fr.conf()], **proxy_args)
    return fr, p, layer, "/v2/ns/large/blobs/" + layer["digest"]


def _whole_gets(fr, since, digest):
    """CDN GETs of the blob without Range: downloads of the whole blob."""
    return [x for x in fr.cdn_requests(since)
            if x["method"] == "GET" and x["path"] == "/blobs/" + digest and
            "range" not in {k.lower() for k in x["headers"]}]


def test_lazy_ranges_fill_the_cache_once(t):
    """A lazy-pulling snapshotter reads a layer in bounded ranges, from many nodes at once.
    Each range is passed through; the whole blob is downloaded once behind them, and later
    ranges are cache hits that ask upstream nothing."""
    fr, p, layer, path = _large_layer(t)
    digest, size = layer["digest"], layer["size"]
    mark = fr.mark()
    spans = [(k * (size // 24), k * (size // 24) + 65535) for k in range(24)]
    res = lib.parallel([
        (lambda lo, hi: lambda: p.get(path, headers={"Range": "bytes=%d-%d" % (lo, hi)}))(lo, hi)
        for lo, hi in spans])
    blob_file = lib.cache_path(p.cache_dir, "blobs", digest)
    lib.wait_until(lambda: os.path.isfile(blob_file), 20, "the blob cached behind the ranges")
    eq(lib.sha256_file(blob_file), digest, "content of the blob cached behind the ranges")
    with open(blob_file, "rb") as f:
        blob = f.read()
    for (lo, hi), r in zip(spans, res):
        eq((r.status, r.header("Content-Range")), (206, "bytes %d-%d/%d" % (lo, hi, size)),
           "range %d-%d of an uncached blob" % (lo, hi))
        check(r.body == blob[lo:hi + 1], "range %d-%d of an uncached blob: wrong bytes" % (lo, hi))
    eq(len(lib.settle(lambda: _whole_gets(fr, mark[1], digest), 1)), 1,
       "whole-blob downloads behind %d concurrent ranges" % len(spans))
    eq(p.metrics()[("regproxy_fill_behind_range_total", frozenset({("registry", fr.name)}))], 1,
       "regproxy_fill_behind_range_total")
    eq(lib.cache_files(p.cache_dir, "tmp"), [], "temp files after the fill")

    mark = fr.mark()
    for lo, hi in spans[::5]:
        r = p.get(path, headers={"Range": "bytes=%d-%d" % (lo, hi)})
        eq((r.status, r.header("X-Regproxy-Cache")), (206, "HIT"), "range %d-%d once cached"
           % (lo, hi))
        check(r.body == blob[lo:hi + 1], "range %d-%d once cached: wrong bytes" % (lo, hi))
    eq(fr.cdn_requests(mark[1]), [], "CDN requests for ranges once cached")


def test_range_ignored_upstream_fills_the_cache_behind(t):
    """An upstream (or its CDN) that ignores Range answers a bounded range with 200 and the
    whole blob. The client gets that whole, verified answer; the cache is filled behind it
    as behind a 206, so the next ranges are hits, not one whole download each."""
    import rawup
    _m, _md, blob, digest, _cfg, _cd = rawup.image()

    def h(r):
        if r.path.endswith("/blobs/" + digest):
            r.answer(blob, "application/octet-stream")
        else:
            r.send(404, b"")
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()])
    path = "/v2/ns/x/blobs/" + digest
    r = lib.stream_get(p.port, path, headers={"Range": "bytes=100-199"}, timeout=30)
    eq((r.status, r.complete, r.digest), (200, True, digest),
       "a range answered by an upstream that ignores Range")
    blob_file = lib.cache_path(p.cache_dir, "blobs", digest)
    lib.wait_until(lambda: os.path.isfile(blob_file), 20,
                   "the blob cached behind a range upstream answered whole")
    eq(lib.sha256_file(blob_file), digest, "content of the blob cached behind the range")
    gets = len([x for x in up.seen() if x[1] == "GET"])
    for _ in range(3):
        r = p.get(path, headers={"Range": "bytes=100-199"})
        eq((r.status, r.header("X-Regproxy-Cache"), r.body), (206, "HIT", blob[100:200]),
           "a range once the blob is cached")
    eq(len([x for x in up.seen() if x[1] == "GET"]), gets, "upstream GETs for ranges once cached")


def test_range_of_blob_over_max_size_starts_no_fill(t):
    """A blob larger than max_size would not be kept: a range of it is passed through and
    nothing is downloaded behind it."""
    fr, p, layer, path = _large_layer(t, cache={"max_size": "5M"})
    digest, size = layer["digest"], layer["size"]
    check(size > 5 << 20, "the layer is only %d bytes" % size)
    mark = fr.mark()
    r = p.get(path, headers={"Range": "bytes=100-199"})
    eq((r.status, r.header("Content-Range"), len(r.body)), (206, "bytes 100-199/%d" % size, 100),
       "range of a blob over max_size")
    gets = lib.settle(lambda: [x for x in fr.cdn_requests(mark[1])
                               if x["path"] == "/blobs/" + digest], 1)
    eq([{k.lower(): v for k, v in x["headers"].items()}.get("range") for x in gets],
       ["bytes=100-199"], "CDN requests for a range of a blob over max_size")
    eq(p.metrics()[("regproxy_fill_behind_range_total", frozenset({("registry", fr.name)}))], 0,
       "regproxy_fill_behind_range_total")
    _not_cached(p, digest, "after a range of a blob over max_size")


def test_range_of_pinned_blob_over_max_size_fills(t):
    """A pin lets the cache keep a blob over max_size, so a range of a pinned image's blob
    starts the download behind it like any other."""
    fr, p, layer, path = _large_layer(t, cache={"max_size": "5M",
                                                "pin": t.s.fakereg.name + "/ns/*"})
    digest, size = layer["digest"], layer["size"]
    check(size > 5 << 20, "the layer is only %d bytes" % size)
    r = p.get(path, headers={"Range": "bytes=100-199"})
    eq((r.status, r.header("Content-Range")), (206, "bytes 100-199/%d" % size),
       "range of a pinned blob over max_size")
    blob_file = lib.cache_path(p.cache_dir, "blobs", digest)
    lib.wait_until(lambda: os.path.isfile(blob_file), 30, "the pinned blob cached behind the range")
    eq(lib.sha256_file(blob_file), digest, "the pinned blob cached behind a range")


def test_multipart_range_of_blob_over_max_size_is_never_downloaded(t):
    """A multipart answer does not say the blob's size, so the fill behind it learns it from
    the whole blob's answer: over max_size, that download stops at its headers. That
    length is not remembered (no digest vouched for it), so each multipart range costs one
    such stopped GET, and the blob is never downloaded."""
    reg = t.s.anon_registry
    layer = max(lib.image_manifests(reg, "ns/large:v1")[0]["layers"], key=lambda x: x["size"])
    digest, size = layer["digest"], layer["size"]
    check(size > 5 << 20, "the layer is only %d bytes" % size)
    p = t.proxy(registries=[reg.conf()], cache={"max_size": "5M"})
    path = "/v2/ns/large/blobs/" + digest
    full = reg.client().get(path).body
    rng = "bytes=0-9,%d-%d" % (size - 100, size - 1)
    want = [("bytes 0-9/%d" % size, full[:10]),
            ("bytes %d-%d/%d" % (size - 100, size - 1, size), full[-100:])]
    for i in range(2):
        mk = reg.mark()
        r = p.get(path, headers={"Range": rng})
        eq((r.status, r.header("X-Regproxy-Cache")), (206, "PASS"), "multipart range #%d" % i)
        eq(_multipart(r, "multipart range #%d" % i), want, "parts of answer #%d" % i)
        ups = _ups(reg, mk, digest, 2)
        eq(sorted(ups), [("GET", 200), ("GET", 206)],
           "upstream requests for multipart range #%d of a blob over max_size" % i)
    m = p.metrics()
    key = frozenset({("registry", reg.name)})
    eq((m[("regproxy_fill_behind_range_total", key)], m[("regproxy_fill_not_kept_total", key)]),
       (2, 2), "fills started behind the ranges, and not kept")
    _not_cached(p, digest, "after multipart ranges of a blob over max_size")
    check("not downloaded behind a range: larger than the cache's max_size" in p.log_text(),
          "no log line says why the blob was not downloaded")


def _multipart(r, what):
    """The parts of a multipart/byteranges answer: [(Content-Range, bytes)]; the declared
    Content-Length checked against the body."""
    ctype = r.header("Content-Type") or ""
    check(ctype.startswith("multipart/byteranges; boundary="), "%s: Content-Type %r"
          % (what, ctype))
    eq(int(r.header("Content-Length")), len(r.body), "%s: Content-Length" % what)
    boundary = ctype.split("boundary=", 1)[1].encode()
    body = r.body
    check(body.startswith(b"--" + boundary + b"\r\n"), "%s: body starts %r" % (what, body[:80]))
    check(body.endswith(b"\r\n--" + boundary + b"--\r\n"), "%s: body ends %r"
          % (what, body[-80:]))
    parts = []
    for chunk in body[:-len(b"\r\n--" + boundary + b"--\r\n")].split(b"--" + boundary + b"\r\n")[1:]:
        head, _, data = chunk.partition(b"\r\n\r\n")
        if data.endswith(b"\r\n"):
            data = data[:-2]
        hs = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        eq(hs.get("Content-Type"), "application/octet-stream", "%s: part type" % what)
        parts.append((hs.get("Content-Range"), data))
    return parts


def test_multipart_range_after_a_bad_whole_answer_still_fills(t):
    """The fill behind a multipart range learns the blob's size from the whole blob's
    answer. One such answer that was wrong (a CDN's error page sent as a 200) fails its
    digest; its length must not be remembered as the blob's size, or every later fill
    behind a multipart range would begin with it and fail, and the cache never fill."""
    import rawup
    _m, _md, blob, digest, _cfg, _cd = rawup.image()
    size = len(blob)
    whole = []

    def h(r):
        if not r.path.endswith("/blobs/" + digest):
            r.send(404, b"")
            return False
        if r.h("range"):
            b = "B0UNDARY"
            body = b"".join(
                ("%s--%s\r\nContent-Type: application/octet-stream\r\n"
                 "Content-Range: bytes %d-%d/%d\r\n\r\n" % ("\r\n" if lo else "", b, lo, hi,
                                                              size)).encode() + blob[lo:hi + 1]
                for lo, hi in ((0, 9), (20, 29))) + ("\r\n--%s--\r\n" % b).encode()
            r.send(206, body, [("Content-Type", "multipart/byteranges; boundary=" + b)])
            return False
        whole.append(r.n)
        if len(whole) == 1:
            r.send(200, b"<html>busy</html>", [("Content-Type", "text/html")])
        else:
            r.send(200, blob, [("Content-Type", "application/octet-stream")])
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()])
    path = "/v2/ns/x/blobs/" + digest
    blob_file = lib.cache_path(p.cache_dir, "blobs", digest)
    r = p.get(path, headers={"Range": "bytes=0-9,20-29"})
    eq(r.status, 206, "first multipart range")
    lib.wait_until(lambda: "rejected: content does not match" in open(p.log).read(), 10,
                   "the fill behind the first range rejected")
    r = p.get(path, headers={"Range": "bytes=0-9,20-29"})
    eq(r.status, 206, "second multipart range")
    lib.wait_until(lambda: os.path.isfile(blob_file), 10,
                   "the blob cached behind the second multipart range")
    eq(lib.sha256_file(blob_file), digest, "content of the blob cached behind the range")


def test_multipart_range_after_a_lying_length_still_fills(t):
    """The fill behind a multipart range that meets a Content-Length too large to keep stops
    at its headers, unverified: a lie there (a CDN's wrong length for a blob the cache can
    hold) must not be remembered as the blob's size. It used to be, and every later
    multipart range of the blob started no fill: the cache never filled."""
    import rawup
    _m, _md, blob, digest, _cfg, _cd = rawup.image()
    size = len(blob)
    whole = []

    def h(r):
        if not r.path.endswith("/blobs/" + digest):
            r.send(404, b"")
            return False
        if r.h("range"):
            b = "B0UNDARY"
            body = b"".join(
                ("%s--%s\r\nContent-Type: application/octet-stream\r\n"
                 "Content-Range: bytes %d-%d/%d\r\n\r\n" % ("\r\n" if lo else "", b, lo, hi,
                                                              size)).encode() + blob[lo:hi + 1]
                for lo, hi in ((0, 9), (20, 29))) + ("\r\n--%s--\r\n" % b).encode()
            r.send(206, body, [("Content-Type", "multipart/byteranges; boundary=" + b)])
            return False
        whole.append(r.n)
        if len(whole) == 1:
            # The head only: the proxy stops reading at a length it will not keep.
            r.send(200, b"", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(100 << 20))])
        else:
            r.send(200, blob, [("Content-Type", "application/octet-stream")])
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()], cache={"max_size": "5M"})
    check(size < 5 << 20, "the blob is %d bytes: too large for max_size 5M" % size)
    path = "/v2/ns/x/blobs/" + digest
    key = ("regproxy_fill_behind_range_total", frozenset({("registry", "raw.test")}))
    r = p.get(path, headers={"Range": "bytes=0-9,20-29"})
    eq(r.status, 206, "first multipart range")
    lib.wait_until(lambda: "not downloaded behind a range: larger than the cache's max_size"
                   in p.log_text(), 10, "the fill behind the first range declined at its headers")
    r = p.get(path, headers={"Range": "bytes=0-9,20-29"})
    eq(r.status, 206, "second multipart range")
    # A fill behind it starts before its answer's head goes out, or not at all.
    eq(p.metrics()[key], 2, "fills started behind the two multipart ranges")
    blob_file = lib.cache_path(p.cache_dir, "blobs", digest)
    lib.wait_until(lambda: os.path.isfile(blob_file), 20,
                   "the blob cached behind the second multipart range")
    eq(lib.sha256_file(blob_file), digest, "content of the blob cached behind the range")


def test_several_ranges_multipart(t):
    """Lazy pullers (stargz, SOCI) ask for several chunks in one Range. Uncached, the
    request passes through (upstream answers multipart) and the download starts behind it;
    cached, the proxy answers multipart/byteranges itself, over plain HTTP from the file and
    over TLS, with every part's bytes right. Overlapping ranges, and HEAD, get the whole
    blob; no satisfiable range is a 416."""
    reg = t.s.anon_registry
    layer = lib.image_manifests(reg, "ns/multi:v1")[0]["layers"][2]
    digest, size = layer["digest"], layer["size"]
    full = reg.client().get("/v2/ns/multi/blobs/" + digest).body
    path = "/v2/ns/multi/blobs/" + digest
    _, key, crt = lib.serving_cert(t, "multipart-tls")
    p = t.proxy(registries=[reg.conf()], listeners=[
        {"default": reg.name}, {"default": reg.name, "tls_cert": crt, "tls_key": key}])
    spans = [(0, 9), (1000, 1999), (size - 10, size - 1)]
    rng = "bytes=0-9, 1000-1999,-10"
    want = [("bytes %d-%d/%d" % (lo, hi, size), full[lo:hi + 1]) for lo, hi in spans]

    mk = reg.mark()
    r = p.get(path, headers={"Range": rng})
    eq((r.status, r.header("X-Regproxy-Cache")), (206, "PASS"), "several ranges, uncached")
    eq(_multipart(r, "several ranges, uncached"), want, "parts of the uncached answer")
    blob_file = lib.cache_path(p.cache_dir, "blobs", digest)
    lib.wait_until(lambda: os.path.isfile(blob_file), 10, "the blob cached behind the ranges")
    eq(sorted(_ups(reg, mk, digest, 2)), [("GET", 200), ("GET", 206)],
       "upstream requests: the ranges, then the whole blob")
    eq(lib.sha256_file(blob_file), digest, "the blob cached behind several ranges")

    mk = reg.mark()
    r = p.get(path, headers={"Range": rng})
    eq((r.status, r.header("X-Regproxy-Cache")), (206, "HIT"), "several ranges, cached")
    eq(_multipart(r, "several ranges, cached"), want, "parts of the cached answer")
    tls = lib.request("https://127.0.0.1:%d%s" % (p.ports[1], path), headers={"Range": rng})
    eq((tls.status, tls.header("X-Regproxy-Cache")), (206, "HIT"), "several ranges over TLS")
    eq(_multipart(tls, "several ranges over TLS"), want, "parts of the answer over TLS")
    # Unsatisfiable ranges are left out; one left is a plain 206.
    r = p.get(path, headers={"Range": "bytes=%d-,5-14" % (size + 1)})
    eq((r.status, r.header("Content-Range"), r.body), (206, "bytes 5-14/%d" % size, full[5:15]),
       "one satisfiable range of two")
    r = p.get(path, headers={"Range": "bytes=%d-,%d-" % (size, size + 5)})
    eq((r.status, r.header("Content-Range")), (416, "bytes */%d" % size),
       "no satisfiable range")
    r = p.get(path, headers={"Range": "bytes=0-%d,10-20" % (size - 5)})
    eq((r.status, lib.sha256(r.body)), (200, digest), "overlapping ranges: the whole blob")
    # Range is for GET only (RFC 9110 14.2): a HEAD gets the whole blob's head, whatever
    # its Range says.
    for what, hr in (("several ranges", rng), ("one range", "bytes=0-9"),
                     ("no satisfiable range", "bytes=%d-,%d-" % (size, size + 5))):
        st, h, body = p.raw("HEAD", path, {"Range": hr})
        eq((st, h.get("content-length"), h.get("content-range"), body),
           (200, str(size), None, b""), "HEAD with %s" % what)
    # A request pipelined behind a multipart answer is answered after it, whole.
    req = ("GET %s HTTP/1.1\r\nHost: x\r\nRange: %s\r\n\r\n"
           "GET %s HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\nConnection: close\r\n\r\n"
           % (path, rng, path)).encode()
    got = lib.raw_exchange(p.ports[0], req, timeout=30)
    answers = []
    while got:
        head, _, rest = got.partition(b"\r\n\r\n")
        n = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
        answers.append((head.split(b" ")[1], rest[:n]))
        got = rest[n:]
    eq([st for st, _ in answers], [b"206", b"206"], "pipelined answers")
    eq(answers[1][1], full[:10], "the answer pipelined behind a multipart one")
    check(all(data in answers[0][1] for _, data in want),
          "the multipart answer on a pipelined connection lacks a part")
    eq(_ups(reg, mk, digest), [], "upstream requests for cached ranges")


def _large_layer_cached(t, name):
    """ns/large's 10 MiB layer, cached by a proxy with a plain and a TLS listener:
    (proxy, layer, path, the layer's bytes)."""
    _, key, crt = lib.serving_cert(t, name)
    fr = t.s.fakereg
    fr, p, layer, path = _large_layer(t, listeners=[
        {"default": fr.name}, {"default": fr.name, "tls_cert": crt, "tls_key": key}])
    r = p.get(path)
    eq((r.status, lib.sha256(r.body)), (200, layer["digest"]), "whole GET that caches the layer")
    lib.wait_until(lambda: os.path.isfile(lib.cache_path(p.cache_dir, "blobs", layer["digest"])),
                   10, "the layer in the cache")
    return p, layer, path, r.body


def test_large_multipart_plain_and_tls(t):
    """Large parts: over plain HTTP they go out from the file (sendfile slices of one
    segment), over TLS read in a piece at a time; the same answer either way."""
    p, layer, path, blob = _large_layer_cached(t, "multipart-large")
    size = layer["size"]
    half = size // 2
    rng = "bytes=0-%d,%d-%d" % (half - 1, half, size - 2)
    want = [("bytes 0-%d/%d" % (half - 1, size), blob[:half]),
            ("bytes %d-%d/%d" % (half, size - 2, size), blob[half:size - 1])]
    for how, r in (("plain HTTP", p.get(path, headers={"Range": rng})),
                   ("TLS", lib.request("https://127.0.0.1:%d%s" % (p.ports[1], path),
                                       headers={"Range": rng}))):
        eq((r.status, r.header("X-Regproxy-Cache")), (206, "HIT"), "large parts over " + how)
        eq(_multipart(r, "large parts over " + how), want,
           "parts of the large multipart answer over " + how)


def test_multipart_cut_short_keeps_no_descriptor(t):
    """Clients that leave in the middle of a multipart answer leave no descriptor open: over
    plain HTTP its parts are slices of one file segment that owns the blob's descriptor,
    over TLS the request holds it while it reads the parts in."""
    p, layer, path, _ = _large_layer_cached(t, "multipart-cut")
    size = layer["size"]
    fds = lambda: len(os.listdir("/proc/%d/fd" % p.pid))  # noqa: E731
    before = fds()
    rng = "bytes=0-%d,%d-%d" % (size // 2 - 1, size // 2, size - 1)
    for _ in range(20):
        r = lib.stream_get(p.port, path, headers={"Range": rng}, limit=100000)
        eq(r.status, 206, "multipart answer read in part")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    for _ in range(10):
        with socket.create_connection(("127.0.0.1", p.ports[1]), timeout=30) as raw:
            with ctx.wrap_socket(raw) as c:
                c.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nRange: %s\r\n\r\n"
                           % (path, rng)).encode())
                got = c.recv(65536)
                check(got.startswith(b"HTTP/1.1 206"), "TLS multipart answer: %r" % got[:60])
    # The last connections close as the proxy notices.
    lib.wait_until(lambda: fds() <= before, 10, "descriptors back to %d (now %d)"
                   % (before, fds()))
    r = p.get(path, headers={"Range": rng})
    eq((r.status, len(_multipart(r, "after the cut answers"))), (206, 2),
       "a whole multipart answer after the cut ones")


def _raw_status_and_body(port, head):
    """Status and body of one raw request (Connection: close)."""
    got = lib.raw_exchange(port, head, timeout=30)
    h, _, body = got.partition(b"\r\n\r\n")
    return int(h.split(b" ", 2)[1]), body


def test_range_after_a_long_accept_list_and_repeated_range(t):
    """A Range after an Accept list long enough to be cut still counts (the cut used to end
    the scan of the headers, and the blob came whole); two Range headers are ignored, as an
    invalid one is (the second one used to be taken when the first was long)."""
    reg = t.s.anon_registry
    layer = lib.image_manifests(reg, "ns/multi:v1")[0]["layers"][1]
    digest = layer["digest"]
    path = "/v2/ns/multi/blobs/" + digest
    p = t.proxy(registries=[reg.conf()])
    r = lib.stream_get(p.port, path)
    eq((r.status, r.digest), (200, digest), "the blob, cached")
    accepts = b"".join(b"Accept: application/x-%d-%s\r\n" % (i, b"a" * 1990) for i in range(3))
    st, body = _raw_status_and_body(p.port, b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                                    + accepts + b"Range: bytes=0-9\r\nConnection: close\r\n\r\n")
    eq((st, body), (206, r.body[:10]), "Range after a cut Accept list")
    st, body = _raw_status_and_body(p.port, b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                                    b"Range: bytes=" + b"1," * 1200 + b"2\r\n"
                                    b"Range: bytes=0-9\r\nConnection: close\r\n\r\n")
    eq((st, lib.sha256(body)), (200, digest), "two Range headers: the whole blob")


def test_if_range(t):
    """If-Range (RFC 9110 13.1.5): the range for the blob's digest as a strong ETag (sent
    as its ETag, as distribution does), the whole blob for anything else (a date, another
    tag, a weak one); it used to be ignored."""
    reg = t.s.anon_registry
    layer = lib.image_manifests(reg, "ns/multi:v1")[0]["layers"][1]
    digest = layer["digest"]
    path = "/v2/ns/multi/blobs/" + digest
    p = t.proxy(registries=[reg.conf()])
    r = lib.stream_get(p.port, path)
    eq((r.status, r.digest, r.header("ETag")), (200, digest, '"%s"' % digest),
       "the blob, cached, with its digest as ETag")
    for cond, want in (('"%s"' % digest, 206), ('W/"%s"' % digest, 200), ('"sha256:%s"' % ("0" * 64), 200),
                       ("Mon, 30 Nov 2026 10:00:00 GMT", 200)):
        got = lib.stream_get(p.port, path, headers={"Range": "bytes=0-9", "If-Range": cond})
        eq(got.status, want, "If-Range %s" % cond)
        if want == 200:
            eq(got.digest, digest, "If-Range %s: the whole blob" % cond)
        else:
            eq(got.body, r.body[:10], "If-Range %s: the range" % cond)


def _lying_range_upstream(t, answers):
    """A plain upstream whose 206 to each Range value is answers[range]: (Content-Range or
    None, body, extra headers). The blob (3 MB) is over the proxy's max_size, so every range
    passes through and nothing is cached behind it. (proxy, blob, path, upstream)."""
    import rawup
    _m, _md, blob, digest, _cfg, _cd = rawup.image()

    def h(r):
        if not r.path.endswith("/blobs/" + digest) or r.method != "GET":
            r.send(404, b"")
            return False
        if not r.h("range"):  # the fill behind a range of unknown size: declined at the head
            r.answer(blob, "application/octet-stream")
            return False
        cr, body, extra = answers[r.h("range")]
        hs = [("Content-Type", "application/octet-stream")] + list(extra)
        if cr is not None:
            hs.append(("Content-Range", cr))
        r.send(206, body, hs)
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()], cache={"max_size": "1M"})
    return p, blob, "/v2/ns/x/blobs/" + digest, up


def test_pass_through_206_must_answer_the_range_asked(t):
    """A range passed through is answered by upstream's 206 only when its Content-Range is
    the range asked for (resolved against the blob's size as a server resolves it) and its
    Content-Length that range's length. Any other (another start or end, none, one that
    does not parse, a length that disagrees) used to reach the client as upstream's word:
    a client resuming a layer at byte K would splice in bytes from elsewhere. It is a 502
    in the registry's error format, and nothing is cached."""
    answers = {}
    p, blob, path, up = _lying_range_upstream(t, answers)
    n = len(blob)
    bad = [
        ("bytes=100-199", "bytes 90-189/%d" % n, blob[90:190], (), "another start"),
        ("bytes=100-199", "bytes 100-299/%d" % n, blob[100:300], (), "another end"),
        ("bytes=100-199", None, blob[100:200], (), "no Content-Range"),
        ("bytes=100-199", "bytes 100-199", blob[100:200], (), "no complete length"),
        ("bytes=100-199", "bytes=100-199/%d" % n, blob[100:200], (), "not a Content-Range"),
        ("bytes=100-199", "bytes 100-199/150", blob[100:200], (), "last past the length"),
        ("bytes=100-199", "bytes 100-199/%d" % n, blob[100:150], (), "Content-Length short"),
        ("bytes=100-199", "bytes 100-199/%d" % n, blob[100:250], (), "Content-Length long"),
        ("bytes=100-", "bytes 100-199/%d" % n, blob[100:200], (), "open range cut short"),
        ("bytes=100-", "bytes 0-%d/%d" % (n - 1, n), blob, (), "open range from 0"),
        ("bytes=-10", "bytes 0-9/%d" % n, blob[:10], (), "suffix from the start"),
        ("bytes=-10", "bytes %d-%d/%d" % (n - 20, n - 11, n), blob[-20:-10], (),
         "suffix not at the end"),
        ("bytes=0-9", "bytes 0-9/*", blob[:10] + b"x", (), "unknown length, Content-Length"),
        ("bytes=0-99999999", "bytes 0-99999999/*", blob[:20], (), "clamped, length unknown"),
        ("bytes=0-9,20-29", None, blob[:10] + blob[20:30], (), "several ranges, not multipart"),
        ("bytes=0-9,20-29", "bytes 0-9/%d" % n, blob[:10], (), "one of several ranges"),
    ]
    for rng, cr, body, extra, what in bad:
        answers.clear()
        answers[rng] = (cr, body, extra)
        r = p.get(path, headers={"Range": rng})
        eq((r.status, r.header("Content-Range"), r.error_codes() if r.status == 502 else None),
           (502, None, ["UNKNOWN"]), "%s: Range %s answered %r (%.200r)" % (what, rng, cr, r.body))
    _not_cached(p, path.rsplit("/", 1)[1], "after 206s that answer other ranges")
    good = [
        ("bytes=100-199", "bytes 100-199/%d" % n, 100, 199),
        ("bytes=100-", "bytes 100-%d/%d" % (n - 1, n), 100, n - 1),
        ("bytes=-10", "bytes %d-%d/%d" % (n - 10, n - 1, n), n - 10, n - 1),
        ("bytes=%d-99999999" % (n - 5), "bytes %d-%d/%d" % (n - 5, n - 1, n), n - 5, n - 1),
        ("bytes=-99999999", "bytes 0-%d/%d" % (n - 1, n), 0, n - 1),
        ("bytes=0-9", "bytes 0-9/*", 0, 9),
        ("BYTES=0-9", "Bytes 0-9/%d" % n, 0, 9),
        ("bytes=0-9,20-29", "bytes 0-29/%d" % n, 0, 29),  # coalesced
    ]
    for rng, cr, lo, hi in good:
        answers.clear()
        answers[rng] = (cr, blob[lo:hi + 1], ())
        r = lib.stream_get(p.port, path, headers={"Range": rng}, timeout=30)
        eq((r.status, r.complete, r.got, r.header("content-range")),
           (206, True, hi - lo + 1, "bytes %d-%d/%s" % (lo, hi, cr.rsplit("/", 1)[1])),
           "Range %s answered %s" % (rng, cr))
        eq(r.digest, lib.sha256(blob[lo:hi + 1]), "bytes of Range %s" % rng)


def _chunked(b, size=4096):
    return b"".join(b"%x\r\n%s\r\n" % (len(b[i:i + size]), b[i:i + size])
                    for i in range(0, len(b), size)) + b"0\r\n\r\n"


def test_pass_through_chunked_whole_blob_206_cut_after_its_last_byte(t):
    """A 206 of the whole blob sent chunked, whose connection closed after its last byte
    but before the terminating chunk: every byte is in and its digest decides, as for one
    that ended cleanly. The client was cut one byte short of a whole, right blob; a damaged
    one cut so must still never arrive whole."""
    answers = {}
    p, blob, path, up = _lying_range_upstream(t, answers)
    n = len(blob)
    bad = blob[:n // 2] + bytes([blob[n // 2] ^ 1]) + blob[n // 2 + 1:]
    te = [("Transfer-Encoding", "chunked")]
    rng = "bytes=0-99999999"
    answers[rng] = ("bytes 0-%d/%d" % (n - 1, n), _chunked(bad)[:-5], te)
    r = lib.stream_get(p.port, path, headers={"Range": rng}, timeout=30)
    check(not (r.status == 206 and r.complete), "a damaged whole-blob 206 cut after its last "
          "byte reached the client whole: %r" % r)
    answers[rng] = ("bytes 0-%d/%d" % (n - 1, n), _chunked(blob)[:-5], te)
    r = lib.stream_get(p.port, path, headers={"Range": rng}, timeout=30)
    eq((r.status, r.complete, r.digest), (206, True, lib.sha256(blob)),
       "a whole-blob 206 cut after its last byte")


def test_pass_through_chunked_206_bounded_by_its_range(t):
    """A 206 sent chunked (no Content-Length) to a range passed through used to be a 502, so
    an upstream that frames its answers so failed every range of an uncached blob (a lazy
    puller's, a resumed pull's). Its Content-Range, once checked against the range asked,
    says how many bytes it has: the client gets them with that Content-Length, HTTP/1.1 or
    1.0. An upstream that sends fewer (a chunked body that ends early, which would look
    whole) or more than that must never leave the client with a whole-looking answer."""
    answers = {}
    p, blob, path, up = _lying_range_upstream(t, answers)
    n = len(blob)
    te = [("Transfer-Encoding", "chunked")]
    for rng, lo, hi in (("bytes=100-199", 100, 199), ("bytes=1000-", 1000, n - 1),
                        ("bytes=-5000", n - 5000, n - 1)):
        answers.clear()
        answers[rng] = ("bytes %d-%d/%d" % (lo, hi, n), _chunked(blob[lo:hi + 1]), te)
        r = lib.stream_get(p.port, path, headers={"Range": rng}, timeout=30)
        eq((r.status, r.complete, r.length, r.header("content-range")),
           (206, True, hi - lo + 1, "bytes %d-%d/%d" % (lo, hi, n)), "chunked 206 to %s" % rng)
        eq(r.digest, lib.sha256(blob[lo:hi + 1]), "bytes of the chunked 206 to %s" % rng)
    rng = "bytes=100-199"
    answers[rng] = ("bytes 100-199/%d" % n, _chunked(blob[100:200]), te)
    st, body = _raw_status_and_body(p.port, ("GET %s HTTP/1.0\r\nRange: %s\r\n\r\n"
                                             % (path, rng)).encode())
    eq((st, body), (206, blob[100:200]), "chunked 206 to an HTTP/1.0 client")
    # Wrong sizes: a short body, a long one, a long one far past the range.
    for what, body in (("short", blob[100:150]), ("long", blob[100:201]),
                       ("far too long", blob[100:100 + (2 << 20)])):
        answers[rng] = ("bytes 100-199/%d" % n, _chunked(body), te)
        r = lib.stream_get(p.port, path, headers={"Range": rng}, timeout=30)
        check(not (r.status == 206 and r.complete), "a %s chunked 206 reached the client "
              "whole: %r" % (what, r))
        check(r.status in (206, 502), "a %s chunked 206: %r" % (what, r))
    # Its range is checked as any 206's is.
    answers[rng] = ("bytes 90-189/%d" % n, _chunked(blob[90:190]), te)
    r = p.get(path, headers={"Range": rng})
    eq((r.status, r.error_codes()), (502, ["UNKNOWN"]), "a chunked 206 for another range")
    _not_cached(p, path.rsplit("/", 1)[1], "after chunked 206s")


def test_pass_through_206_of_the_whole_blob_is_verified(t):
    """A range that covers the whole blob ("bytes=0-" past its end, a suffix longer than it)
    may pass through, and upstream's 206 then carries every byte of the blob under its
    Docker-Content-Digest, as a 200 would. A 200 passed through is hashed and its last byte
    held until the digest matched; such a 206 was not, and damaged bytes (a CDN's) reached
    the client whole. It is checked as a 200 is: damaged, the client is cut."""
    answers = {}
    p, blob, path, up = _lying_range_upstream(t, answers)
    n = len(blob)
    bad = blob[:n // 2] + bytes([blob[n // 2] ^ 1]) + blob[n // 2 + 1:]
    for rng in ("bytes=0-99999999", "bytes=-99999999"):
        answers.clear()
        answers[rng] = ("bytes 0-%d/%d" % (n - 1, n), bad, ())
        r = lib.stream_get(p.port, path, headers={"Range": rng}, timeout=30)
        check(not (r.status == 206 and r.complete), "a damaged 206 of the whole blob to %s "
              "reached the client whole: %r" % (rng, r))
        answers[rng] = ("bytes 0-%d/%d" % (n - 1, n), blob, ())
        r = lib.stream_get(p.port, path, headers={"Range": rng}, timeout=30)
        eq((r.status, r.complete, r.digest, r.header("content-range")),
           (206, True, lib.sha256(blob), "bytes 0-%d/%d" % (n - 1, n)),
           "the 206 of the whole blob to %s" % rng)
    _not_cached(p, path.rsplit("/", 1)[1], "after 206s of the whole blob")
