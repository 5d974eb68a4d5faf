# SPDX-License-Identifier: Apache-2.0
"""Concurrent misses for one manifest share one upstream request, as blobs and tokens do:
30 clients asking for the same uncached tag at once make one upstream manifest GET, and all
get the same bytes. Clients with a different Accept list are not merged with them."""
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
