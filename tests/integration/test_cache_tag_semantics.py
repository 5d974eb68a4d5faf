# SPDX-License-Identifier: Apache-2.0
"""Tags and manifests as clients see them: a sha512 registry's tag keeps upstream's digest;
HEAD and GET by tag agree on a miss; containerd's HEAD-then-GET-by-digest records the tag
(hits, and stale answers in an outage); `*/*;q=0` accepts nothing more; sha512 by digest."""
import hashlib
import json
import time

import lib
import rawup
from lib import check, eq

V2 = "application/vnd.docker.distribution.manifest.v2+json"
LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
ALL = ", ".join([V2, LIST, OCI, OCI_INDEX])
CONTAINERD = ALL + ", */*"


def sha512(b):
    return "sha512:" + hashlib.sha512(b).hexdigest()


def test_sha512_tag_digest(t):
    """A tag naming a sha512 manifest: upstream's Docker-Content-Digest is sha512. The proxy
    answers the tag's GET with a sha256 digest of its own, records the tag under sha256,
    and so (HEAD passes upstream's sha512 on) HEAD and GET disagree, and every
    revalidation sees a 'moved' tag and refetches the body."""
    m, md, layer, ld, cfg, cd = rawup.image()
    d512 = sha512(m)

    def h(r):
        if r.path in ("/v2/ns/x/manifests/v1", "/v2/ns/x/manifests/" + d512):
            r.answer(m, OCI, d512)
        else:
            r.send(404, b"")
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf(tag_ttl="1s")])
    path = "/v2/ns/x/manifests/v1"
    r = p.get(path, headers={"Accept": CONTAINERD})
    got_get = r.header("Docker-Content-Digest")
    time.sleep(2.2)
    r = p.get(path, method="HEAD", headers={"Accept": CONTAINERD})
    got_head = r.header("Docker-Content-Digest")
    time.sleep(2.2)
    n0 = len([x for x in up.seen("/v2/ns/x/manifests/v1") if x[1] == "GET"])
    r = p.get(path, headers={"Accept": CONTAINERD})
    n1 = len([x for x in up.seen("/v2/ns/x/manifests/v1") if x[1] == "GET"])
    eq(got_get, d512, "GET by tag: Docker-Content-Digest (upstream's is sha512)")
    eq(got_head, got_get, "HEAD by tag vs GET by tag digest")
    eq((r.header("X-Regproxy-Cache"), n1 - n0), ("REVALIDATED", 0),
       "unchanged sha512 tag past tag_ttl: revalidated without a GET")


def test_head_miss_agrees_with_get(t):
    """A client naming only */* (curl -I, scripts): its GET by tag is fetched canonically
    and answered with the schema 2 image (accept_allows: */* takes anything), but its HEAD
    on a miss goes upstream with its own Accept, where docker-registry narrows the tag to
    signed schema 1: HEAD and GET name different digests, and the HEAD's answer flips once
    the tag is cached."""
    reg = t.s.anon_registry
    want = reg.pushed["ns/multi-v2s2:v1"]["digest"]
    path = "/v2/ns/multi-v2s2/manifests/v1"
    p = t.proxy(registries=[reg.conf()], cache={"tag_ttl": "10m"})
    h1 = p.get(path, method="HEAD", headers={"Accept": "*/*"})
    g = p.get(path, headers={"Accept": "*/*"})
    h2 = p.get(path, method="HEAD", headers={"Accept": "*/*"})
    res = [(x.status, x.header("Content-Type"), x.header("Docker-Content-Digest"),
            x.header("X-Regproxy-Cache")) for x in (h1, g, h2)]
    eq(lib.sha256(g.body), want, "GET */*: body")
    eq(h1.header("Docker-Content-Digest"), g.header("Docker-Content-Digest"),
       "HEAD (miss) vs GET by tag, same Accept */*")
    eq(h1.header("Docker-Content-Digest"), h2.header("Docker-Content-Digest"),
       "HEAD (miss) vs HEAD (hit), same Accept */*")


def test_containerd_head_then_digest_records_tag(t):
    """containerd never GETs a tag: it HEADs it (naming every list type), then GETs the
    digest. The proxy records a tag only from a GET by tag, so a containerd-only cluster
    never gets a tag hit (every resolve is an upstream HEAD) and, with upstream down, cannot
    resolve a tag it pulled a minute ago: max_stale never applies to it."""
    s = t.s
    reg = t.private_registry("anon", images={
        "ns/cd:v1": "oci:%s:v1" % s.images["multi"]["dir"]})
    d = reg.pushed["ns/cd:v1"]["digest"]
    p = t.proxy(registries=[reg.conf(tag_ttl="10m")], cache={"max_stale": "1h"})
    path = "/v2/ns/cd/manifests/v1"
    out = []
    for i in range(2):
        mk = reg.mark()
        r = p.get(path, method="HEAD", headers={"Accept": CONTAINERD})
        eq((r.status, r.header("Docker-Content-Digest")), (200, d), "HEAD by tag %d" % i)
        g = p.get("/v2/ns/cd/manifests/" + d, headers={"Accept": CONTAINERD})
        eq((g.status, lib.sha256(g.body)), (200, d), "GET by digest %d" % i)
        ups = [m for m, pth, st in lib.settle(lambda: reg.since(mk), 1) if pth == path]
        out.append((r.header("X-Regproxy-Cache"), ups))
    reg.stop()
    r = p.get(path, method="HEAD", headers={"Accept": CONTAINERD})
    eq(out[1], ("HIT", []), "second containerd pull within tag_ttl: tag HEAD")
    eq(r.status, 200, "containerd HEAD of a pulled tag, upstream down, within max_stale")


def test_sha512_by_digest_cached(t):
    """Probe (expected to pass): a sha512 manifest by digest is verified, cached, a HIT."""
    m, md, layer, ld, cfg, cd = rawup.image()
    d512 = sha512(m)

    def h(r):
        if r.path == "/v2/ns/x/manifests/" + d512:
            r.answer(m, OCI, d512)
        else:
            r.send(404, b"")
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()])
    res = []
    for meth in ("GET", "GET", "HEAD"):
        r = p.get("/v2/ns/x/manifests/" + d512, method=meth, headers={"Accept": CONTAINERD})
        res.append((r.status, r.header("Docker-Content-Digest") == d512,
                    r.header("X-Regproxy-Cache"), meth == "HEAD" or r.body == m))
    eq(res, [(200, True, "MISS", True), (200, True, "HIT", True), (200, True, "HIT", True)],
       "sha512 by digest")


def test_star_q0_is_not_accept_anything(t):
    """'*/*;q=0' says 'nothing else' (RFC 9110 12.4.2). accept_allows treats any '*/*' in
    the list as 'takes anything': a client naming only the OCI image type is answered with
    the cached index (a HIT), where upstream (and the proxy for the same client without the
    '*/*;q=0') would not."""
    reg = t.s.anon_registry
    idx = reg.pushed["ns/multiarch:v1"]["digest"]
    path = "/v2/ns/multiarch/manifests/v1"
    p = t.proxy(registries=[reg.conf()], cache={"tag_ttl": "10m"})
    eq(lib.sha256(p.get(path, headers={"Accept": ALL}).body), idx, "wide client fills the tag")
    plain = p.get(path, headers={"Accept": OCI})
    q0 = p.get(path, headers={"Accept": OCI + ", */*;q=0"})
    res = [(x.status, x.header("Content-Type"), x.header("X-Regproxy-Cache")) for x in (plain, q0)]
    check(q0.header("Content-Type") != OCI_INDEX,
          "client refusing everything but %s got %r" % (OCI, res[1]))


def test_head_only_client_one_upstream_head(t):
    """A node that already has the image (imagePullPolicy: Always) only HEADs the tag: the
    proxy records the tag but never gets its manifest. Each later HEAD, within tag_ttl or
    past it, revalidated with a HEAD and then, the manifest being uncached, sent the same
    HEAD upstream a second time. The revalidation's own HEAD now answers it."""
    s = t.s
    reg = t.private_registry("anon", images={
        "ns/ho:v1": "oci:%s:v1" % s.images["multi"]["dir"]})
    d = reg.pushed["ns/ho:v1"]["digest"]
    p = t.proxy(registries=[reg.conf(tag_ttl="10m")])
    path = "/v2/ns/ho/manifests/v1"
    g = reg.client(None).manifest("ns/ho", "v1", accept=CONTAINERD, method="HEAD")
    for i in range(3):
        mk = reg.mark()
        r = p.get(path, method="HEAD", headers={"Accept": CONTAINERD})
        ups = [m for m, pth, st in lib.settle(lambda: reg.since(mk), 1) if pth == path]
        eq((r.status, r.header("Docker-Content-Digest"), r.header("Content-Type"),
            r.header("Content-Length")),
           (200, d, g.header("Content-Type"), g.header("Content-Length")), "HEAD %d" % i)
        eq(ups, ["HEAD"], "upstream requests for HEAD %d" % i)


def test_head_by_digest_other_digest_refused(t):
    """A manifest asked for by digest must be that digest: a GET whose body is another is
    refused, but a HEAD whose upstream named another digest was answered as the one asked
    for, with the other manifest's length and type."""
    m, md, layer, ld, cfg, cd = rawup.image()
    other = b'{"schemaVersion":2,"mediaType":"%s"}' % OCI_INDEX.encode()

    def h(r):
        if r.path.startswith("/v2/ns/x/manifests/"):
            r.answer(other, OCI_INDEX, lib.sha256(other))
        else:
            r.send(404, b"")
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()])
    path = "/v2/ns/x/manifests/" + md
    g = p.get(path, headers={"Accept": CONTAINERD})
    r = p.get(path, method="HEAD", headers={"Accept": CONTAINERD})
    eq((g.status, r.status, r.header("Docker-Content-Digest")), (502, 502, None),
       "GET and HEAD by digest, upstream naming another digest")


def test_head_seeing_moved_tag_records_it(t):
    """A HEAD of a tag past tag_ttl whose revalidation finds the tag moved to a manifest not
    cached is answered from the revalidation's own HEAD. The tag record kept the old digest,
    so in a later outage (within max_stale) the proxy served the old manifest for a tag it
    had seen move: a HEAD and a GET answered the digest upstream no longer names."""
    m1, d1, _, _, _, _ = rawup.image()
    m2, d2, _, _, _, _ = rawup.image()
    state = {"tag": (m1, d1), "down": False}

    def h(r):
        if state["down"]:
            r.send(503, b"")
        elif r.path == "/v2/ns/mv/manifests/v1":
            m, d = state["tag"]
            r.answer(m, OCI, d)
        elif r.path in ("/v2/ns/mv/manifests/" + d1, "/v2/ns/mv/manifests/" + d2):
            m = m1 if r.path.endswith(d1) else m2
            r.answer(m, OCI, lib.sha256(m))
        else:
            r.send(404, b"")
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf(tag_ttl="1s")], cache={"max_stale": "1h"})
    path = "/v2/ns/mv/manifests/v1"
    g = p.get(path, headers={"Accept": CONTAINERD})
    eq((g.status, g.header("Docker-Content-Digest")), (200, d1), "GET by tag fills it")
    state["tag"] = (m2, d2)
    time.sleep(2.2)
    r = p.get(path, method="HEAD", headers={"Accept": CONTAINERD})
    eq((r.status, r.header("Docker-Content-Digest")), (200, d2),
       "HEAD past tag_ttl after the tag moved upstream")
    state["down"] = True
    res = [(x.status, x.header("Docker-Content-Digest"))
           for x in (p.get(path, method="HEAD", headers={"Accept": CONTAINERD}),
                     p.get(path, headers={"Accept": CONTAINERD}))]
    check(all(d != d1 for _, d in res),
          "upstream down after a HEAD saw the tag move to %s: HEAD and GET by tag answered %r "
          "(the old digest %s)" % (d2, res, d1))


def test_get_seeing_moved_tag_not_answered_stale(t):
    """A GET of a tag past tag_ttl whose revalidation finds the tag moved fetches the new
    manifest; when that fetch fails (5xx) it must not fall back to the old manifest as
    STALE: upstream has just said the tag names another."""
    m1, d1, _, _, _, _ = rawup.image()
    m2, d2, _, _, _, _ = rawup.image()
    state = {"tag": (m1, d1)}

    def h(r):
        if r.path == "/v2/ns/mv/manifests/v1":
            m, d = state["tag"]
            if r.method == "GET" and d == d2:
                r.send(503, b"")
            else:
                r.answer(m, OCI, d)
        else:
            r.send(404, b"")
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf(tag_ttl="1s")], cache={"max_stale": "1h"})
    path = "/v2/ns/mv/manifests/v1"
    g = p.get(path, headers={"Accept": CONTAINERD})
    eq((g.status, g.header("Docker-Content-Digest")), (200, d1), "GET by tag fills it")
    state["tag"] = (m2, d2)
    time.sleep(2.2)
    r = p.get(path, headers={"Accept": CONTAINERD})
    check(r.status != 200 or r.header("Docker-Content-Digest") != d1,
          "GET past tag_ttl, upstream HEAD naming %s then its GET failing: answered %r with "
          "the old digest %s" % (d2, (r.status, r.header("X-Regproxy-Cache")), d1))


def test_get_seeing_tag_moved_to_cached_other_type_not_answered_stale(t):
    """As above, with the tag moved to a manifest the repository has cached already (an
    index pulled by digest) of a type this client does not take: its own fetch follows, and
    when that fails (5xx), or is slow past revalidate_timeout, the client must not get the
    old manifest as STALE either: the tag names the index now."""
    m1, d1, _, _, _, _ = rawup.image()
    idx = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI, "digest": d1, "size": len(m1),
         "platform": {"architecture": "amd64", "os": "linux"}}]}).encode()
    d2 = rawup.sha256(idx)
    state = {"tag": (m1, d1, OCI)}

    def h(r):
        if r.path == "/v2/ns/mv/manifests/v1":
            m, d, mt = state["tag"]
            if r.method == "GET" and d == d2:
                r.send(503, b"")
            else:
                r.answer(m, mt, d)
        elif r.path == "/v2/ns/mv/manifests/" + d2:
            r.answer(idx, OCI_INDEX, d2)
        else:
            r.send(404, b"")
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf(tag_ttl="1s")], cache={"max_stale": "1h"})
    path = "/v2/ns/mv/manifests/v1"
    g = p.get(path, headers={"Accept": OCI})
    eq((g.status, g.header("Docker-Content-Digest")), (200, d1), "GET by tag fills it")
    g = p.get("/v2/ns/mv/manifests/" + d2, headers={"Accept": CONTAINERD})
    eq((g.status, g.header("Docker-Content-Digest")), (200, d2), "GET of the index by digest")
    state["tag"] = (idx, d2, OCI_INDEX)
    time.sleep(2.2)
    r = p.get(path, headers={"Accept": OCI})
    check(r.status != 200 or r.header("Docker-Content-Digest") != d1,
          "GET past tag_ttl, upstream HEAD naming the cached index %s then its GET failing: "
          "answered %r with the old digest %s" % (d2, (r.status, r.header("X-Regproxy-Cache")),
                                                  d1))


def test_schema1_get_names_the_payload_digest(t):
    """docker-registry answers a schema 2 tag, to a client naming only schema 1, with a
    signed schema 1 manifest, signed anew at every request, and names it in
    Docker-Content-Digest by its payload's digest (the bytes without the signatures), in the
    GET's answer as in the HEAD's. The proxy named its GET's answer by the hash of the signed
    bytes: another digest at every GET, never the HEAD's or upstream's."""
    schema1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
    reg = t.s.anon_registry
    path = "/v2/ns/multi-v2s2/manifests/v1"
    h = {"Accept": schema1}
    up = reg.client(None).get(path, "GET", h)
    eq((up.status, up.header("Content-Type")), (200, schema1), "upstream GET, schema 1 only")
    want = up.header("Docker-Content-Digest")
    p = t.proxy(registries=[reg.conf()], cache={"tag_ttl": "10m"})
    for n in (1, 2):
        g = p.get(path, headers=h)
        hd = p.get(path, method="HEAD", headers=h)
        eq((g.status, g.header("Content-Type"), hd.status), (200, schema1, 200),
           "GET and HEAD %d, schema 1 only" % n)
        eq((g.header("Docker-Content-Digest"), hd.header("Docker-Content-Digest")),
           (want, want), "GET and HEAD %d: Docker-Content-Digest (upstream's: %s)" % (n, want))
        eq(lib.schema1_payload_digest(g.body), want, "GET %d: the body's payload digest" % n)
