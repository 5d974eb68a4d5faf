# SPDX-License-Identifier: Apache-2.0
"""Manifests carry docker-registry's validator, `ETag: "<digest>"`, and a GET or HEAD whose
If-None-Match names it is answered 304, by tag and by digest, whether the proxy answers
from its cache or from upstream: as docker-registry answers the same requests. Blobs
likewise, cached or not."""
import http.client
import json

import lib
from lib import check, eq


def _proxy(t):
    return t.proxy(registries=[t.s.anon_registry.conf()])


def _same_as_upstream(t, p, method, path, headers, want_status, what):
    """The proxy's answer to a request, checked against docker-registry's to the same one:
    status, ETag (the proxy's 304 carries it, as RFC 9110 15.4.5 asks; docker-registry's
    has none) and body. Returns the proxy's headers."""
    reg = t.s.anon_registry
    u = reg.client(None).get(path, method, headers)
    eq(u.status, want_status, "docker-registry's status for %s (the fixture)" % what)
    st, h, body = p.raw(method, path, headers)
    eq(st, u.status, "%s: status (docker-registry's)" % what)
    digest = reg.pushed[REF[path.split("/manifests/")[0]]]["digest"]
    eq(h.get("etag"), '"%s"' % digest, "%s: ETag" % what)
    if u.header("ETag"):
        eq(h.get("etag"), u.header("ETag"), "%s: ETag (docker-registry's)" % what)
    eq(h.get("docker-content-digest"), digest, "%s: Docker-Content-Digest" % what)
    if st == 304:
        eq(body, b"", "%s: a 304 has no body" % what)
        check("content-length" not in h or h["content-length"] == u.header("Content-Length"),
              "%s: a 304's Content-Length must be the 200's or absent, got %r"
              % (what, h.get("content-length")))
    elif method == "GET":
        eq(lib.sha256(body), digest, "%s: body" % what)
    return h


REF = {"/v2/ns/multi": "ns/multi:v1", "/v2/ns/multi-v2s2": "ns/multi-v2s2:v1",
       "/v2/ns/multiarch": "ns/multiarch:v1"}


def _inm(digest, accept=lib.ACCEPT_ALL):
    return {"Accept": accept, "If-None-Match": '"%s"' % digest}


def test_if_none_match_by_tag_and_digest(t):
    """Every way a manifest is answered: a GET missed (fetched, then 304), a HEAD passed
    upstream, a digest fetched, then the cached tag and digest, and a moved-on ETag (200)."""
    reg = t.s.anon_registry
    p = _proxy(t)
    for repo in ("/v2/ns/multi", "/v2/ns/multi-v2s2", "/v2/ns/multiarch"):
        d = reg.pushed[REF[repo]]["digest"]
        tag, by_digest = repo + "/manifests/v1", repo + "/manifests/" + d
        # Cold: HEADs go upstream and are not cached; the GET by tag is fetched.
        _same_as_upstream(t, p, "HEAD", tag, _inm(d), 304, "cold HEAD %s If-None-Match" % tag)
        _same_as_upstream(t, p, "HEAD", by_digest, _inm(d), 304,
                          "cold HEAD %s If-None-Match" % by_digest)
        _same_as_upstream(t, p, "GET", tag, _inm(d), 304, "cold GET %s If-None-Match" % tag)
        # Warm: both from the cache.
        for path in (tag, by_digest):
            for method in ("GET", "HEAD"):
                _same_as_upstream(t, p, method, path, _inm(d), 304,
                                  "warm %s %s If-None-Match" % (method, path))
                _same_as_upstream(t, p, method, path, {"Accept": lib.ACCEPT_ALL}, 200,
                                  "warm %s %s" % (method, path))
                _same_as_upstream(t, p, method, path, _inm("sha256:" + "1" * 64), 200,
                                  "warm %s %s If-None-Match of another digest" % (method, path))
    # A digest never fetched by tag: the GET by digest is a miss here.
    d = reg.pushed["ns/multi:v1"]["digest"]
    p2 = _proxy(t)
    _same_as_upstream(t, p2, "GET", "/v2/ns/multi/manifests/" + d, _inm(d), 304,
                      "cold GET by digest If-None-Match")
    hits = [a for a in p.access() if a.get("status") == "304"]
    check(hits, "304s are logged as such: %r" % p.access()[-3:])


def test_if_none_match_lists_and_weak_tags(t):
    """RFC 9110 13.1.2: a list (or repeated lines) naming the ETag, a weak W/ form of it,
    and "*" all mean the client has it; the 304 leaves a keep-alive connection usable."""
    reg = t.s.anon_registry
    p = _proxy(t)
    d = reg.pushed["ns/multi:v1"]["digest"]
    path = "/v2/ns/multi/manifests/v1"
    r = p.get(path, headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, r.header("ETag")), (200, '"%s"' % d), "GET %s" % path)
    for inm in ('"sha256:%s", "%s"' % ("2" * 64, d), 'W/"%s"' % d, "*", d):
        st, h, body = p.raw("GET", path, {"Accept": lib.ACCEPT_ALL, "If-None-Match": inm})
        eq((st, body), (304, b""), "GET %s with If-None-Match: %s" % (path, inm))
    st, _, body = p.raw("GET", path, {"Accept": lib.ACCEPT_ALL,
                                      "If-None-Match": 'W/"sha256:%s"' % ("2" * 64)})
    eq((st, lib.sha256(body)), (200, d), "GET with an If-None-Match naming something else")
    # Two requests on one connection: the 304 has no body, so the next answer is whole.
    c = http.client.HTTPConnection("127.0.0.1", p.port, timeout=30)
    try:
        c.request("GET", path, headers={"Accept": lib.ACCEPT_ALL, "If-None-Match": '"%s"' % d})
        r1 = c.getresponse()
        eq((r1.status, r1.read()), (304, b""), "first answer on a kept-alive connection")
        c.request("GET", path, headers={"Accept": lib.ACCEPT_ALL})
        r2 = c.getresponse()
        eq((r2.status, lib.sha256(r2.read())), (200, d), "the next answer after a 304")
    finally:
        c.close()


def test_if_none_match_cached_blob(t):
    """A cached blob's digest is its ETag too: a GET or HEAD naming it in If-None-Match,
    with a Range or without, gets a 304 with no body, as from docker-registry; another
    ETag gets the blob."""
    reg = t.s.anon_registry
    p = _proxy(t)
    layer = json.loads(reg.pushed["ns/multi:v1"]["body"])["layers"][0]["digest"]
    path = "/v2/ns/multi/blobs/" + layer
    r = lib.stream_get(p.port, path)
    eq((r.status, r.digest), (200, layer), "GET %s (fills the cache)" % path)
    lib.wait_until(lambda: p.get(path, method="HEAD").header("X-Regproxy-Cache") == "HIT", 10,
                   "the blob to be cached")
    for method, extra in (("GET", {}), ("HEAD", {}), ("GET", {"Range": "bytes=0-9"})):
        headers = dict(extra, **{"If-None-Match": '"%s"' % layer})
        u = reg.client(None).get(path, method, headers)
        st, h, body = p.raw(method, path, headers)
        what = "%s %s %s" % (method, path, headers)
        eq((st, body), (304, b""), what)
        eq(st, u.status, "%s: status (docker-registry's)" % what)
        eq((h.get("etag"), h.get("docker-content-digest"), h.get("x-regproxy-cache")),
           ('"%s"' % layer, layer, "HIT"), "%s: headers" % what)
    st, h, body = p.raw("GET", path, {"If-None-Match": '"sha256:%s"' % ("3" * 64)})
    eq((st, lib.sha256(body), h.get("etag")), (200, layer, '"%s"' % layer),
       "GET with an If-None-Match naming another blob")


def test_if_none_match_uncached_blob(t):
    """A blob's ETag is its digest whether the proxy has it or not: a GET or HEAD of an
    uncached blob naming it in If-None-Match (an HTTP cache in front revalidating a blob
    the proxy evicted) gets a 304 as from docker-registry, after an upstream HEAD says the
    repository has it, and nothing is downloaded. It used to get the whole blob (a GET
    downloaded it), a HEAD a 200. A blob upstream does not have is still a 404."""
    reg = t.s.anon_registry
    p = _proxy(t)
    layer = json.loads(reg.pushed["ns/multi:v1"]["body"])["layers"][1]["digest"]
    path = "/v2/ns/multi/blobs/" + layer
    for method, extra in (("GET", {}), ("HEAD", {}), ("GET", {"Range": "bytes=0-9"}),
                          ("GET", {"Range": "bytes=0-"})):
        headers = dict(extra, **{"If-None-Match": '"%s"' % layer})
        what = "%s %s %s" % (method, path, headers)
        u = reg.client(None).get(path, method, headers)
        mk = reg.mark()
        st, h, body = p.raw(method, path, headers)
        eq((st, len(body)), (304, 0), "%s: status and body length" % what)
        eq(st, u.status, "%s: status (docker-registry's)" % what)
        eq((h.get("etag"), h.get("docker-content-digest")), ('"%s"' % layer, layer),
           "%s: headers" % what)
        ups = lib.settle(lambda: [(m, s) for m, pa, s in reg.since(mk) if pa == path], 1)
        eq(ups, [("HEAD", 200)], "%s: upstream requests" % what)
    check(not lib.cache_files(p.cache_dir, "blobs"), "a blob was cached: %s"
          % lib.cache_files(p.cache_dir, "blobs"))
    missing = "sha256:" + "4" * 64
    st, h, body = p.raw("GET", "/v2/ns/multi/blobs/" + missing,
                        {"If-None-Match": '"%s"' % missing})
    eq(st, 404, "GET of a blob upstream does not have, with If-None-Match naming it")
