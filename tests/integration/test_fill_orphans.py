# SPDX-License-Identifier: Apache-2.0
"""Blob downloads whose clients left are bounded. A download the cache will keep goes on
after its last client leaves (the next client will want the blob), for as long as upstream
takes. A client on the anonymous port that asks for blob after blob and hangs up after each
response head so made one download per blob, each holding a temp file, an upstream
connection and some 340 KB: against a slow upstream, 100 blobs left 100 downloads, 200
descriptors and 100 temp files with no client connected. Now at most 64 downloads with no
client go on (FILL_ORPHANS_MAX in proxy/fill.c); the download whose last client leaves
beyond that stops. A blob whose download stopped is fetched whole by the next client, and
the rest finish and are cached once upstream sends."""
import os
import socket
import threading

import lib
import rawup
from lib import check, eq

BLOBS = 100
ORPHANS_MAX = 64
SIZE = 256 * 1024


def _blob(i):
    return (b"%08d" % i) * (SIZE // 8)


def test_abandoned_fills_are_bounded(t):
    digests = {lib.sha256(_blob(i)): i for i in range(BLOBS)}
    order = list(digests)
    gate = threading.Event()
    t.defer(gate.set)

    def h(r):
        d = r.path.split("?")[0].rsplit("/", 1)[1]
        if d not in digests:
            r.send(404, b"")
            return False
        body = _blob(digests[d])
        if r.method == "HEAD":
            r.send(200, b"", [("Content-Length", str(len(body))), ("Docker-Content-Digest", d)])
            return False
        try:
            r.raw(("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                   "Content-Length: %d\r\nDocker-Content-Digest: %s\r\nConnection: close\r\n"
                   "\r\n" % (len(body), d)).encode())
            r.raw(body[:65536])
            gate.wait(120)  # a slow upstream: the rest comes when the test says
            r.raw(body[65536:])
        except OSError:
            pass
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()])

    def gauge(name):
        return p.metrics()[(name, frozenset())]

    for d in order:
        c = socket.create_connection(("127.0.0.1", p.port))
        c.sendall(b"GET /v2/ns/x/blobs/%s HTTP/1.1\r\nHost: x\r\n\r\n" % d.encode())
        status, _, _ = lib.read_head(c)
        check(status.startswith("HTTP/1.1 200"), "GET blob %s: %s" % (d, status))
        c.close()
    lib.wait_until(lambda: gauge("regproxy_open_connections") == 0, 10,
                   "the clients' connections to close")
    lib.settle(lambda: [], quiet=0.5)
    fills = gauge("regproxy_fills_in_flight")
    tmp = len(os.listdir(os.path.join(p.cache_dir, "tmp")))
    check(fills <= ORPHANS_MAX and tmp <= ORPHANS_MAX,
          "%d downloads and %d temp files with no client connected after %d clients asked "
          "for distinct blobs and left (at most %d may go on)" % (fills, tmp, BLOBS, ORPHANS_MAX))

    # A blob whose download stopped is fetched whole by the next client.
    gate.set()
    s = lib.stream_get(p.port, "/v2/ns/x/blobs/" + order[-1])
    check(s.complete, "the last blob, its download stopped, fetched again: %r" % s)
    eq(s.digest, order[-1], "the last blob's bytes")
    # The downloads that went on finish and are cached; none is left behind.
    lib.wait_until(lambda: gauge("regproxy_fills_in_flight") == 0, 60, "the downloads to end")
    eq(os.listdir(os.path.join(p.cache_dir, "tmp")), [], "temp files left")
    s = lib.stream_get(p.port, "/v2/ns/x/blobs/" + order[0])
    eq((s.status, s.header("X-Regproxy-Cache"), s.digest), (200, "HIT", order[0]),
       "the first blob, downloaded with no client")


def test_fill_behind_a_range_left_before_its_head_counts_as_an_orphan(t):
    """A download begun behind a range, with the size that range's answer gave, is an
    orphan from its start, and is counted so. A client that joins it before upstream's head
    (a "bytes=0-" GET) and leaves again makes it one again: that must be judged against the
    bound, as for a download whose last client left while it ran. Round one: 64 downloads
    begun behind ranges, each then joined by a waiting client (no orphans left); round two:
    64 more begun behind ranges; then every joined client hangs up before upstream sent a
    head. Once upstream answers, at most 64 of the 128 go on with no client."""
    n = 2 * ORPHANS_MAX
    blobs = {lib.sha256(_blob(i)): i for i in range(n)}
    order = list(blobs)
    heads, rest = threading.Event(), threading.Event()
    sent = []
    t.defer(heads.set)
    t.defer(rest.set)

    def h(r):
        d = r.path.split("?")[0].rsplit("/", 1)[1]
        if d not in blobs or r.method != "GET":
            r.send(404, b"")
            return False
        body = _blob(blobs[d])
        try:
            if r.h("range") == "bytes=10-19":
                r.send(206, body[10:20], [("Content-Range", "bytes 10-19/%d" % len(body)),
                                          ("Content-Type", "application/octet-stream")])
                return False
            heads.wait(120)  # the downloads' heads come when the test says
            r.raw(("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                   "Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)).encode())
            r.raw(body[:65536])
            sent.append(d)
            rest.wait(120)
            r.raw(body[65536:])
        except OSError:
            pass
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()], admin={"log_level": "debug"})

    def gauge(name):
        return p.metrics()[(name, frozenset())]

    def fill_gets():
        return [x for x in up.seen("/v2/ns/x/blobs/") if "range" not in x[3]]

    def behind(ds):
        for d in ds:
            st, hd, body = p.raw("GET", "/v2/ns/x/blobs/" + d, {"Range": "bytes=10-19"})
            eq((st, body), (206, _blob(blobs[d])[10:20]), "range of %s" % d)

    behind(order[:ORPHANS_MAX])
    lib.wait_until(lambda: len(fill_gets()) == ORPHANS_MAX, 30, "the first downloads upstream")
    joined = []
    for d in order[:ORPHANS_MAX]:
        c = socket.create_connection(("127.0.0.1", p.port), timeout=30)
        c.sendall(b"GET /v2/ns/x/blobs/%s HTTP/1.1\r\nHost: x\r\nRange: bytes=0-\r\n\r\n"
                  % d.encode())
        joined.append(c)
    lib.wait_until(lambda: p.log_text().count("joins the download of") == ORPHANS_MAX, 30,
                   "the clients to join the downloads")
    behind(order[ORPHANS_MAX:])
    lib.wait_until(lambda: len(fill_gets()) == n, 30, "the second downloads upstream")
    for c in joined:
        c.close()
    lib.wait_until(lambda: gauge("regproxy_open_connections") == 0, 10,
                   "the clients' connections to close")
    heads.set()
    lib.wait_until(lambda: len(sent) == n, 30, "upstream's heads to the downloads")
    lib.settle(lambda: [], quiet=0.5)
    fills = gauge("regproxy_fills_in_flight")
    check(fills <= ORPHANS_MAX,
          "%d downloads with no client connected (at most %d may go on)" % (fills, ORPHANS_MAX))
    rest.set()
    lib.wait_until(lambda: gauge("regproxy_fills_in_flight") == 0, 60, "the downloads to end")
    eq(os.listdir(os.path.join(p.cache_dir, "tmp")), [], "temp files left")
