# SPDX-License-Identifier: Apache-2.0
"""Concurrent misses for one manifest share one upstream request, as blobs and tokens do:
30 clients asking for the same uncached tag at once make one upstream manifest GET, and all
get the same bytes. Clients with a different Accept list are not merged with them."""
import socket
import time

import lib
from lib import check, eq


def test_manifest_herd_one_upstream_get(t):
    s = t.s
    reg = s.anon_registry
    p = t.proxy(registries=[reg.conf("registry.anon.test")])
    mark = reg.mark()
    path = "/v2/ns/multiarch/manifests/v1"
    results = lib.parallel([lambda: p.get(path, headers={"Accept": lib.ACCEPT_ALL})
                            for _ in range(30)])
    eq(sorted({r.status for r in results}), [200], "statuses")
    bodies = {lib.sha256(r.body) for r in results}
    eq(bodies, {reg.pushed["ns/multiarch:v1"]["digest"]}, "manifest digests")
    lib.settle(lambda: reg.since(mark), at_least=1)
    n = reg.count("GET", "/v2/ns/multiarch/manifests/", since=mark)
    eq(n, 1, "upstream manifest GETs for 30 concurrent cold requests")
    caches = sorted(r.header("x-regproxy-cache") for r in results)
    eq(caches.count("MISS"), 1, "one MISS (the leader); the others %r" % caches)


def test_miss_after_the_leader_is_done(t):
    """A miss that comes while the waiters of a finished fetch are about to be woken (here a
    request pipelined behind the leader, parsed as soon as the leader's 404 is out) starts a
    fetch of its own: it used to lead the entry the wake then freed (use-after-free)."""
    fr = t.s.fakereg
    p = t.proxy(registries=[fr.conf()])
    req = b"GET /v2/mode/slow404/ns/multi/manifests/missing HTTP/1.1\r\nHost: x\r\n\r\n"
    a = socket.create_connection(("127.0.0.1", p.port), timeout=30)
    b = socket.create_connection(("127.0.0.1", p.port), timeout=30)
    try:
        a.sendall(req + req)  # the second waits, pipelined, for the first
        time.sleep(0.3)
        b.sendall(req)  # joins the first as a waiter
        got = {"a": b"", "b": b""}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (got["a"].count(b"HTTP/1.1 404") < 2 or
                                               got["b"].count(b"HTTP/1.1 404") < 1):
            for name, sock in (("a", a), ("b", b)):
                sock.settimeout(0.2)
                try:
                    got[name] += sock.recv(65536)
                except socket.timeout:
                    pass
        eq((got["a"].count(b"HTTP/1.1 404"), got["b"].count(b"HTTP/1.1 404")), (2, 1),
           "404s on the pipelining and the waiting connection")
    finally:
        a.close()
        b.close()
    eq(p.get("/v2/").status, 200, "the proxy still answers")
