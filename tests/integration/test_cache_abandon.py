# SPDX-License-Identifier: Apache-2.0
"""A client that goes away mid-download does not stop the fill: the blob lands in the cache
anyway, and the next client is a HIT with no second upstream download. Unless the cache
would not keep it (larger than max_size): then the download stops with its last client."""
import json
import os
import socket

import lib
from lib import check, eq


def test_abandoned_fill_completes(t):
    reg = t.s.anon_registry
    big = max(lib.image_manifests(reg, "ns/large:v1")[0]["layers"], key=lambda x: x["size"])
    path = "/v2/ns/large/blobs/" + big["digest"]
    p = t.proxy(registries=[reg.conf()])
    m = reg.mark()
    with socket.create_connection(("127.0.0.1", p.port), timeout=30) as c:
        c.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, p.hostport)).encode())
        got = 0
        while got < 1 << 20:
            b = c.recv(1 << 16)
            check(b, "the proxy closed the connection after %d bytes" % got)
            got += len(b)
    f = lib.cache_path(p.cache_dir, "blobs", big["digest"])
    lib.wait_until(lambda: os.path.isfile(f), 60,
                   "%s to be cached although its only client left after 1 MiB" % f)
    eq(lib.sha256_file(f), big["digest"], "content of %s" % f)
    r = lib.stream_get(p.port, path)
    eq((r.status, r.complete, r.digest, r.header("x-regproxy-cache")),
       (200, True, big["digest"], "HIT"), "GET after the abandoned fill")
    gets = lib.settle(lambda: [x for x in reg.since(m) if x[0] == "GET" and x[1] == path], 1)
    eq(len(gets), 1, "upstream GETs of %s (abandoned download, then a hit): %s" % (path, gets))


def test_abandoned_fill_over_max_size_stops(t):
    """A blob larger than max_size is served but not kept: once its only client has left,
    nobody wants the rest. The upstream download stops then (logged, counted as not kept),
    rather than running to its end to be thrown away, holding a temp file and the upstream
    link meanwhile; a later client downloads it again, whole."""
    fr = t.s.fakereg
    r = fr.client().manifest("ns/large", "v1")
    eq(r.status, 200, "ns/large manifest straight from the fake registry")
    layer = min(json.loads(r.body)["layers"], key=lambda x: x["size"])
    check(layer["size"] > 5 << 20, "the layer is only %d bytes" % layer["size"])
    path = "/v2/ns/large/blobs/" + layer["digest"]
    p = t.proxy(registries=[fr.conf()], cache={"max_size": "5M"})
    fr.set_mode("slow")  # about 1 MB/s: the download outlasts its client by seconds
    t.defer(lambda: fr.set_mode("ok"))
    with socket.create_connection(("127.0.0.1", p.port), timeout=30) as c:
        c.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, p.hostport)).encode())
        got = 0
        while got < 1 << 20:
            b = c.recv(1 << 16)
            check(b, "the proxy closed the connection after %d bytes" % got)
            got += len(b)
    given_up = "given up at"
    served = "served but not cached"
    lib.wait_until(lambda: given_up in p.log_text() or served in p.log_text(), 60,
                   "the fill of %s to end after its only client left" % layer["digest"])
    check(served not in p.log_text(), "the download ran to its end with no client left, to "
          "be thrown away")
    m = p.metrics()
    key = frozenset({("registry", fr.name)})
    eq((m[("regproxy_fill_not_kept_total", key)], m[("regproxy_fills_in_flight", frozenset())]),
       (1, 0), "fills not kept, and in flight, after the abandoned one")
    # Removed just after the log line.
    lib.wait_until(lambda: not lib.cache_files(p.cache_dir, "tmp"), 10,
                   "tmp/ of the cache empty after the abandoned fill")
    fr.set_mode("ok")
    r = lib.stream_get(p.port, path)
    eq((r.status, r.complete, r.digest), (200, True, layer["digest"]),
       "GET after the abandoned fill")
    check(not os.path.exists(lib.cache_path(p.cache_dir, "blobs", layer["digest"])),
          "the %d byte blob is cached with max_size 5M" % layer["size"])


def _held_blob_upstream(t):
    """An upstream holding the 6 MiB blob ns/x's GET until the returned event is set (set at
    the test's end regardless): (upstream, digest, event)."""
    import threading

    import rawup
    blob = os.urandom(6 << 20)
    digest = rawup.sha256(blob)
    go = threading.Event()

    def h(r):
        if r.path != "/v2/ns/x/blobs/" + digest:
            r.send(404, b"")
            return False
        go.wait(60)
        try:
            r.send(200, blob, [("Content-Type", "application/octet-stream")])
        except OSError:
            pass  # the proxy stopped reading
        return False
    up = rawup.RawUpstream(t, h)
    t.defer(go.set)
    return up, digest, go


def _given_up(p, digest, gone):
    """The fill of digest ended with the log line `gone`, not downloaded in vain; counted
    once, and nothing left in tmp/."""
    served = "served but not cached"
    lib.wait_until(lambda: gone in p.log_text() or served in p.log_text(), 60,
                   "the fill of %s to end after its clients left" % digest)
    check(served not in p.log_text(), "the blob was downloaded with no client left, to be "
          "thrown away")
    lib.wait_until(lambda: lib.cache_files(p.cache_dir, "tmp") == [], 30,
                   "tmp/ of the cache to empty after the given-up fill")
    eq(p.metrics()[("regproxy_fill_not_kept_total", frozenset({("registry", "raw.test")}))], 1,
       "fills not kept (counted once)")


def test_fill_over_max_size_left_before_headers_not_downloaded(t):
    """Its only client gone before upstream answered, a blob the cache would not keep is not
    downloaded at all: the fill stops at upstream's headers."""
    up, digest, go = _held_blob_upstream(t)
    p = t.proxy(registries=[up.conf()], cache={"max_size": "5M"})
    path = "/v2/ns/x/blobs/" + digest
    with socket.create_connection(("127.0.0.1", p.port), timeout=30) as c:
        c.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, p.hostport)).encode())
        lib.wait_until(lambda: up.seen(path), 30, "the proxy's GET of the blob upstream")
    lib.wait_until(lambda: any(a.get("path") == path and a.get("aborted") == "client"
                               for a in p.access()), 30, "the client's departure logged")
    go.set()
    _given_up(p, digest, "not downloaded with its clients gone")


def test_fill_over_max_size_left_to_a_past_the_end_range_stops(t):
    """A fill's last reader can also leave by being answered without it: a range past the
    end gets its 416 once upstream's headers give the size. With its other client gone
    before then, a blob the cache would not keep is then given up, as when a client leaves."""
    up, digest, go = _held_blob_upstream(t)
    p = t.proxy(registries=[up.conf()], cache={"max_size": "5M"},
                admin={"log_level": "debug"})
    path = "/v2/ns/x/blobs/" + digest
    joins = "joins the download of " + digest
    with socket.create_connection(("127.0.0.1", p.port), timeout=30) as ranged:
        with socket.create_connection(("127.0.0.1", p.port), timeout=30) as c:
            c.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, p.hostport)).encode())
            lib.wait_until(lambda: up.seen(path), 30, "the proxy's GET of the blob upstream")
            ranged.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nRange: bytes=%d-\r\n\r\n"
                            % (path, p.hostport, 10 << 20)).encode())
            lib.wait_until(lambda: p.log_text().count(joins) >= 2, 30,
                           "the ranged request to join the download")
        lib.wait_until(lambda: any(a.get("path") == path and a.get("aborted") == "client"
                                   for a in p.access()), 30, "the first client's departure")
        go.set()
        head = ranged.recv(4096)
        check(head.startswith(b"HTTP/1.1 416"), "the range past the end: %r" % head[:200])
    _given_up(p, digest, "not downloaded, its clients answered without it")
    eq(len(up.seen(path)), 1, "upstream GETs of the blob")
