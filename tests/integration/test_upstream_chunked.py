# SPDX-License-Identifier: Apache-2.0
"""Blobs that upstream answers with a 200 and no Content-Length (chunked, as Harbor's
proxy-cache projects send proxied blobs): the proxy downloads them once however many clients
wait, verifies the digest, then answers every waiting client with the whole blob. A wrong,
cut or badly framed answer is never cached nor served as complete; a cut one is resumed only
when upstream answers the Range with a 206 naming the total."""
import os
import socket
import subprocess
import threading

import lib
import rawup
from lib import check, eq

CHUNK = 256 * 1024


def _send_chunked(r, body, stop=None, before_rest=None, frame=None):
    """A 200 (Connection: close) with body in chunks. stop: close after that many body bytes,
    with no terminating chunk; before_rest: called after the first half; frame: a function
    giving a chunk's size line (broken framing)."""
    r.send(200, b"", [("Content-Type", "application/octet-stream"),
                      ("Transfer-Encoding", "chunked")], close=True)
    end = len(body) if stop is None else stop
    half = end // 2
    off = 0
    while off < end:
        if before_rest and off >= half:
            before_rest()
            before_rest = None
        piece = body[off:min(off + CHUNK, end)]
        size = frame(len(piece)) if frame else b"%x" % len(piece)
        r.raw(size + b"\r\n" + piece + b"\r\n")
        off += len(piece)
    if stop is None:
        r.raw(b"0\r\n\r\n")


def _registry(t, blobs, blob_handler):
    """A raw upstream serving ns/x:v1 (manifest by Content-Length) and handing every blob
    GET of the given {digest: bytes} to blob_handler(r, body)."""
    m, md = blobs["manifest"]

    def h(r):
        if r.path in ("/v2/ns/x/manifests/v1", "/v2/ns/x/manifests/" + md):
            r.answer(m, "application/vnd.oci.image.manifest.v1+json", md)
            return False
        for d, b in blobs.items():
            if r.path == "/v2/ns/x/blobs/%s" % d:
                if r.method == "HEAD":
                    r.answer(b, "application/octet-stream", d)
                else:
                    blob_handler(r, b)
                return False
        r.send(404, b"")
        return False
    return rawup.RawUpstream(t, h)


def _image():
    m, md, layer, ld, cfg, cd = rawup.image()
    return {"manifest": (m, md), ld: layer, cd: cfg}, ld, layer


def _blob_gets(up, digest):
    return [x for x in up.seen("/v2/ns/x/blobs/" + digest) if x[1] == "GET"]


def _nothing_cached(p, digest, what):
    check(not os.path.exists(lib.cache_path(p.cache_dir, "blobs", digest)),
          "%s: the blob was cached" % what)
    lib.wait_until(lambda: not lib.cache_files(p.cache_dir, "tmp"), 10,
                   "%s: temp files left in %s/tmp" % (what, p.cache_dir))


def test_chunked_blob_herd_one_upstream_get(t):
    """Several clients (one asking for bytes=0-, one joining with bytes=100- once the
    download runs) wait for a multi-MiB blob upstream sends chunked: one upstream GET, each
    gets its bytes with Content-Length and the right digest, the blob is cached, and the next
    GET is a hit. A HEAD meanwhile is answered by upstream's HEAD, as for any uncached blob."""
    blobs, ld, layer = _image()
    go = threading.Event()
    t.defer(go.set)
    up = _registry(t, blobs, lambda r, b: _send_chunked(r, b, before_rest=lambda: go.wait(60)))
    p = t.proxy(registries=[up.conf()])
    path = "/v2/ns/x/blobs/" + ld
    ranges = [None, None, "bytes=0-", "bytes=100-"]
    results = [None] * len(ranges)

    def client(i):
        headers = {"Range": ranges[i]} if ranges[i] else None
        results[i] = lib.stream_get(p.port, path, headers=headers, timeout=120)
    ths = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(len(ranges))]
    for th in ths[:3]:
        th.start()
    # Upstream holds the second half until every client is connected: they wait together.
    lib.wait_until(lambda: _blob_gets(up, ld), 30, "the upstream GET of the blob")
    ths[3].start()
    r = lib.stream_get(p.port, path, method="HEAD")
    eq((r.status, r.length), (200, len(layer)), "HEAD of the blob while it downloads (%r)" % r)
    key = ("regproxy_open_connections", frozenset())
    lib.wait_until(lambda: p.metrics().get(key, 0) >= len(ranges), 30,
                   "%d clients connected" % len(ranges))
    go.set()
    for th in ths:
        th.join(120)
    for i, r in enumerate(results):
        first = int(ranges[i][len("bytes="):-1]) if ranges[i] else 0
        want = (206 if ranges[i] else 200, True, rawup.sha256(layer[first:]), len(layer) - first)
        eq((r.status, r.complete, r.digest, r.length), want,
           "client %d (Range %s) of a chunked blob (%r)" % (i, ranges[i], r))
        if ranges[i]:
            eq(r.header("content-range"), "bytes %d-%d/%d" % (first, len(layer) - 1, len(layer)),
               "Content-Range of %s" % ranges[i])
    eq(len(_blob_gets(up, ld)), 1, "upstream GETs of the chunked blob for 4 clients")
    lib.wait_until(lambda: os.path.isfile(lib.cache_path(p.cache_dir, "blobs", ld)), 10,
                   "the verified chunked blob to be cached")
    r = lib.stream_get(p.port, path)
    eq((r.status, r.complete, r.digest, r.header("x-regproxy-cache")), (200, True, ld, "HIT"),
       "GET after the chunked fill")
    eq(len(_blob_gets(up, ld)), 1, "upstream GETs after the hit")


def test_chunked_blob_with_a_content_length_too(t):
    """A chunked 200 that also carries a Content-Length (a wrong one here): the chunked
    framing is the answer's length, the Content-Length is to be ignored (RFC 9112 6.3), and
    curl reads it so. The proxy took the Content-Length for the blob's size and refused the
    whole, right blob ("content does not match its size"), for a plain GET and a Range alike."""
    blobs, ld, layer = _image()

    def send(r, body):
        r.raw(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
              b"Content-Length: 10\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        for off in range(0, len(body), CHUNK):
            piece = body[off:off + CHUNK]
            r.raw(b"%x\r\n" % len(piece) + piece + b"\r\n")
        r.raw(b"0\r\n\r\n")
    up = _registry(t, blobs, send)
    p = t.proxy(registries=[up.conf()])
    path = "/v2/ns/x/blobs/" + ld
    r = lib.stream_get(p.port, path, headers={"Range": "bytes=100-"})
    eq((r.status, r.complete, r.digest), (206, True, rawup.sha256(layer[100:])),
       "a Range of a chunked blob with a wrong Content-Length (%r)" % r)
    lib.wait_until(lambda: os.path.isfile(lib.cache_path(p.cache_dir, "blobs", ld)), 10,
                   "the verified blob to be cached")
    r = lib.stream_get(p.port, path)
    eq((r.status, r.complete, r.digest, r.length, r.header("x-regproxy-cache")),
       (200, True, ld, len(layer), "HIT"), "GET after the fill")


def test_chunked_blobs_skopeo_pull(t):
    """skopeo pulls an image whose config and layer upstream sends chunked, every digest
    checked."""
    blobs, ld, layer = _image()
    up = _registry(t, blobs, _send_chunked)
    p = t.proxy(registries=[up.conf()], listeners=[{"default": "raw.test"}])
    t.pull(p, "ns/x:v1")
    lib.wait_until(lambda: os.path.isfile(lib.cache_path(p.cache_dir, "blobs", ld)), 10,
                   "the layer to be cached")


def test_close_delimited_blob(t):
    """A 200 with neither Content-Length nor chunked framing, ended by closing the
    connection: served whole and cached. Cut short, the close looks like the end, so only the
    digest tells: the client gets an error and nothing is cached."""
    blobs, ld, layer = _image()
    short = [False]

    def blob(r, b):
        r.raw(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
              b"Connection: close\r\n\r\n")
        r.raw(b[:len(b) // 2] if short[0] else b)
    up = _registry(t, blobs, blob)
    p = t.proxy(registries=[up.conf()])
    r = lib.stream_get(p.port, "/v2/ns/x/blobs/" + ld)
    eq((r.status, r.complete, r.digest, r.length), (200, True, ld, len(layer)),
       "a close-delimited blob (%r)" % r)
    lib.wait_until(lambda: os.path.isfile(lib.cache_path(p.cache_dir, "blobs", ld)), 10,
                   "the blob to be cached")

    blobs, ld, layer = _image()
    short[0] = True
    up = _registry(t, blobs, blob)
    p = t.proxy(registries=[up.conf()])
    r = lib.stream_get(p.port, "/v2/ns/x/blobs/" + ld)
    eq(r.status, 502, "a close-delimited blob cut short (%r)" % r)
    _nothing_cached(p, ld, "close-delimited, cut short")


def test_chunked_blob_wrong_content_not_cached(t):
    """Chunked bytes that do not match the digest: the client gets an error, nothing is
    cached."""
    blobs, ld, layer = _image()
    bad = bytearray(layer)
    bad[len(bad) // 2] ^= 1
    up = _registry(t, blobs, lambda r, b: _send_chunked(r, bytes(bad)))
    p = t.proxy(registries=[up.conf()])
    r = lib.stream_get(p.port, "/v2/ns/x/blobs/" + ld)
    eq(r.status, 502, "a chunked blob with wrong content (%r)" % r)
    check(b"digest" in r.body, "the error does not say why: %r" % r.body)
    _nothing_cached(p, ld, "wrong content")


def test_chunked_blob_cut_resumed_by_206(t):
    """Cut mid-body; upstream answers the Range with a 206 naming the total: the download
    goes on there, the client gets the whole blob, it is cached."""
    blobs, ld, layer = _image()

    def blob(r, b):
        rng = r.h("range")
        if not rng:
            _send_chunked(r, b, stop=len(b) // 2)
            return
        start = int(rng[len("bytes="):-1])
        r.send(206, b[start:], [("Content-Type", "application/octet-stream"),
                                ("Content-Range", "bytes %d-%d/%d" % (start, len(b) - 1,
                                                                      len(b)))])
    up = _registry(t, blobs, blob)
    p = t.proxy(registries=[up.conf()])
    r = lib.stream_get(p.port, "/v2/ns/x/blobs/" + ld)
    eq((r.status, r.complete, r.digest), (200, True, ld), "a cut chunked blob, resumed (%r)" % r)
    gets = _blob_gets(up, ld)
    eq(len(gets), 2, "upstream GETs (the cut one and its resumption)")
    check(gets[1][3].get("range", "").startswith("bytes="), "the resumption has no Range")
    lib.wait_until(lambda: os.path.isfile(lib.cache_path(p.cache_dir, "blobs", ld)), 10,
                   "the blob to be cached")


def test_chunked_blob_cut_range_ignored_fails(t):
    """Cut mid-body; upstream ignores the resumption's Range (a 200 of all of it, chunked):
    there is no total to go on from, so it fails cleanly and nothing is cached."""
    blobs, ld, layer = _image()

    def blob(r, b):
        _send_chunked(r, b, stop=None if r.h("range") else len(b) // 2)
    up = _registry(t, blobs, blob)
    p = t.proxy(registries=[up.conf()])
    r = lib.stream_get(p.port, "/v2/ns/x/blobs/" + ld)
    eq(r.status, 502, "a cut chunked blob whose resumption got a 200 (%r)" % r)
    eq(len(_blob_gets(up, ld)), 2, "upstream GETs (the cut one and one resumption)")
    _nothing_cached(p, ld, "cut, Range ignored")


def test_chunked_blob_ranges_when_range_is_ignored(t):
    """An upstream that ignores Range and sends every blob whole and chunked (Harbor's
    proxy-cache projects): a range that cannot join a download (a bounded one, a suffix, a
    resumption from the middle with none running) used to be passed through, refused for
    its missing length (502), and the download behind it never started, so every such
    request failed for good. The download serves it instead, once verified: a 206 with the
    asked bytes (several ranges: the whole blob), and the blob is cached; over max_size it
    is served and not kept."""
    blobs, ld, layer = _image()
    n = len(layer)
    up = _registry(t, blobs, _send_chunked)
    path = "/v2/ns/x/blobs/" + ld
    for rng, lo, hi in (("bytes=100-199", 100, 199), ("bytes=-10", n - 10, n - 1),
                        ("bytes=%d-" % (n // 2), n // 2, n - 1), ("bytes=0-9,20-29", None, None)):
        p = t.proxy(registries=[up.conf()])
        r = p.get(path, headers={"Range": rng})
        if lo is None:
            eq((r.status, lib.sha256(r.body)), (200, ld), "Range %s: the whole blob" % rng)
        else:
            eq((r.status, r.header("Content-Range"), r.body == layer[lo:hi + 1]),
               (206, "bytes %d-%d/%d" % (lo, hi, n), True), "Range %s (%.200r)" % (rng, r.body))
        lib.wait_until(lambda: os.path.isfile(lib.cache_path(p.cache_dir, "blobs", ld)), 10,
                       "the blob cached after Range %s" % rng)
    p = t.proxy(registries=[up.conf()], cache={"max_size": "1M"})
    r = p.get(path, headers={"Range": "bytes=100-199"})
    eq((r.status, r.header("Content-Range"), r.body == layer[100:200]),
       (206, "bytes 100-199/%d" % n, True), "a range of a blob over max_size")
    _nothing_cached(p, ld, "a range over max_size")


def test_chunked_blob_broken_framing_fails(t):
    """A chunk-size line that is not hex: curl refuses the framing; the client gets an
    error and nothing is cached."""
    blobs, ld, layer = _image()
    n = [0]

    def frame(size):
        n[0] += 1
        return b"zz" if n[0] == 3 else b"%x" % size
    up = _registry(t, blobs, lambda r, b: _send_chunked(r, b, frame=frame))
    p = t.proxy(registries=[up.conf()])
    r = lib.stream_get(p.port, "/v2/ns/x/blobs/" + ld)
    eq(r.status, 502, "a chunked blob with broken framing (%r)" % r)
    check(r.digest != ld, "the client got the blob's bytes")
    _nothing_cached(p, ld, "broken framing")


def test_chunked_blob_over_max_size_served_not_kept(t):
    """A chunked blob larger than max_size: found so at its end, it is served from the temp
    file and not kept."""
    blobs, ld, layer = _image()
    up = _registry(t, blobs, _send_chunked)
    p = t.proxy(registries=[up.conf()], cache={"max_size": "1M"})
    r = lib.stream_get(p.port, "/v2/ns/x/blobs/" + ld)
    eq((r.status, r.complete, r.digest, r.length), (200, True, ld, len(layer)),
       "a chunked blob over max_size (%r)" % r)
    _nothing_cached(p, ld, "over max_size")


def test_chunked_fill_without_clients_stops_past_max_size(t):
    """Its only client gone, a chunked download is judged against max_size as it grows:
    past it, the download stops rather than fill a temp file to be thrown away."""
    blob = os.urandom(8 * 1024 * 1024)
    digest = rawup.sha256(blob)
    go = threading.Event()
    t.defer(go.set)

    def h(r):
        if r.path != "/v2/ns/x/blobs/" + digest:
            r.send(404, b"")
            return False
        try:
            _send_chunked(r, blob, before_rest=lambda: go.wait(60))
        except OSError:
            pass  # the proxy stopped reading
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()], cache={"max_size": "5M"})
    path = "/v2/ns/x/blobs/" + digest
    with socket.create_connection(("127.0.0.1", p.port), timeout=30) as c:
        c.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, p.hostport)).encode())
        lib.wait_until(lambda: up.seen(path), 30, "the proxy's GET of the blob upstream")
    lib.wait_until(lambda: any(a.get("path") == path and a.get("aborted") == "client"
                               for a in p.access()), 30, "the client's departure logged")
    go.set()
    gone = "with its clients gone: larger than the cache's max_size"
    served = "served but not cached"
    lib.wait_until(lambda: gone in p.log_text() or served in p.log_text(), 60,
                   "the fill of %s to end after its only client left" % digest)
    check(served not in p.log_text(), "the blob was downloaded with no client left, to be "
          "thrown away")
    key = frozenset({("registry", "raw.test")})
    eq(p.metrics()[("regproxy_fill_not_kept_total", key)], 1, "fills not kept")
    _nothing_cached(p, digest, "given up past max_size")


def test_chunked_fill_without_clients_beside_a_large_full_cache(t):
    """A chunked download its client left, beside a cache of 150,000 entries filled to
    max_size: whether the cache may keep what has landed is asked as it grows, and the
    cache's answer walks its index once it is nearly full. Asked for every piece that
    landed, that walk made the 128 MiB download take about a minute instead of a second
    (the loop busy with it meanwhile); it must take about as long as any other."""
    import hashlib
    import time
    blob = os.urandom(1024 * 1024) * 128
    digest = rawup.sha256(blob)

    def h(r):
        if r.path != "/v2/ns/x/blobs/" + digest:
            r.send(404, b"")
            return False
        try:
            _send_chunked(r, blob)
        except OSError:
            pass
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()], cache={"max_size": "1G"}, start=False)
    for i in range(150000):
        d = hashlib.sha256(b"%d" % i).hexdigest()
        os.makedirs(os.path.join(p.cache_dir, "blobs", "sha256", d[:2]), exist_ok=True)
        with open(os.path.join(p.cache_dir, "blobs", "sha256", d[:2], d), "wb") as f:
            f.write(b"%d" % i)  # not its digest: never read here
    # The rest of max_size in one (sparse) file, oldest: evicted first to make room.
    filler = lib.cache_path(p.cache_dir, "blobs", "sha256:" + hashlib.sha256(b"f").hexdigest())
    os.makedirs(os.path.dirname(filler), exist_ok=True)
    with open(filler, "wb") as f:
        f.truncate(1023 * 1024 * 1024)
    os.utime(filler, (1, 1))
    p.start()
    path = "/v2/ns/x/blobs/" + digest
    with socket.create_connection(("127.0.0.1", p.port), timeout=30) as c:
        c.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, p.hostport)).encode())
        lib.wait_until(lambda: up.seen(path), 30, "the proxy's GET of the blob upstream")
    t0 = time.monotonic()
    lib.wait_until(lambda: "bytes=%d ms=" % len(blob) in p.log_text(), 120,
                   "the download with no client to end")
    took = time.monotonic() - t0
    check(took < 30, "the 128 MiB download with no client took %.1f s" % took)
    lib.wait_until(lambda: os.path.isfile(lib.cache_path(p.cache_dir, "blobs", digest)), 60,
                   "the blob to be cached")


def test_chunked_blob_disk_full_answered_503(t):
    """The disk fills during a chunked download with nothing left to evict: its client,
    which has had no byte yet, gets a 503 (not passed through: a pass-through cannot hold
    back the last byte of an answer without a length), nothing is left behind, and once
    there is room the blob is fetched and cached. Needs root for a small tmpfs (skipped
    otherwise)."""
    if os.geteuid() != 0:
        print("    skipped: mounting a tmpfs needs root (the tests run as uid %d)"
              % os.geteuid(), flush=True)
        return
    fs = os.path.join(t.tmp, "small-fs")
    os.makedirs(fs)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", fs], check=True)
    t.defer(lambda: subprocess.run(["umount", "-l", fs], check=True))
    blobs, ld, layer = _image()
    up = _registry(t, blobs, _send_chunked)
    cache = os.path.join(fs, "cache")
    p = t.proxy(registries=[up.conf()], cache={"dir": cache})
    p.cache_dir = cache
    junk = os.path.join(fs, "junk")
    with open(junk, "ab") as f:
        try:
            while os.statvfs(fs).f_bavail * os.statvfs(fs).f_frsize > 1024 * 1024:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    r = lib.stream_get(p.port, "/v2/ns/x/blobs/" + ld)
    eq(r.status, 503, "a chunked blob with no room for it (%r)" % r)
    check(b"no room" in r.body, "the error does not say why: %r" % r.body)
    _nothing_cached(p, ld, "disk full")
    os.unlink(junk)
    r = lib.stream_get(p.port, "/v2/ns/x/blobs/" + ld)
    eq((r.status, r.complete, r.digest), (200, True, ld), "the blob once there is room (%r)" % r)
    lib.wait_until(lambda: os.path.isfile(lib.cache_path(cache, "blobs", ld)), 10,
                   "the blob to be cached once there is room")
