# SPDX-License-Identifier: Apache-2.0
"""A client that goes away mid-download does not stop the fill: the blob lands in the cache
anyway, and the next client is a HIT with no second upstream download."""
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
