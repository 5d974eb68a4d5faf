# SPDX-License-Identifier: Apache-2.0
"""Blob GETs answered with 307 to a CDN on another port with a signed URL (the
registry.redhat.io shape): the proxy follows it, never sends the registry credentials to
the CDN, and the bytes arrive intact."""
import json

import lib
from lib import check, eq


def test_pull_through_cdn_redirect(t):
    s = t.s
    fr = s.fakereg
    m_reg, m_cdn = fr.mark()
    p = t.proxy(registries=[fr.conf()])
    for ref, kind in (("ns/multi:v1", "multi"), ("ns/multiarch:v1", "multiarch"),
                      ("ns/large:v1", "large")):
        _, tags = t.pull(p, ref)
        eq(tags["v1"], s.images[kind]["tags"]["v1"], "pulled %s through the CDN redirect" % ref)
    cdn = fr.cdn_requests(m_cdn)
    reg = fr.requests(m_reg)
    check(cdn, "the CDN received no request: blobs did not go through the redirect")
    leaked = [x for x in cdn if x["authorization"]]
    check(not leaked, lambda: "the CDN received Authorization headers (%d of %d requests), "
          "first: %s" % (len(leaked), len(cdn), json.dumps(leaked[0])))
    authed = [x for x in reg if x["headers"].get("Authorization", "").startswith("Basic user=")]
    check(authed, "the registry host never received Basic credentials")
    bad = [x for x in authed if x["headers"]["Authorization"] != "Basic user=" + fr.user]
    check(not bad, "the registry host got credentials of another user: %r" % bad[:1])
    redirected = [x for x in reg if x["status"] == 307]
    check(redirected, "no blob GET was answered with a redirect")
    # Bad statuses at the CDN (e.g. 403 for an expired signature) must not have happened.
    eq(sorted({x["status"] for x in cdn} - {200, 206}), [], "unexpected CDN statuses")


def test_blob_range_and_head_through_redirect(t):
    s = t.s
    fr = s.fakereg
    p = t.proxy(registries=[fr.conf()])
    r = fr.client().manifest("ns/multi", "v1")
    layer = json.loads(r.body)["layers"][2]
    st, h, body = p.raw("HEAD", "/v2/ns/multi/blobs/" + layer["digest"])
    eq((st, h.get("content-length"), body), (200, str(layer["size"]), b""), "HEAD blob")
    r = p.get("/v2/ns/multi/blobs/" + layer["digest"], headers={"Range": "bytes=10-99"})
    full = lib.request(fr.client().get("/v2/ns/multi/blobs/" + layer["digest"])
                       .header("Location"), ca=s.ca["ca.crt"]).body
    eq(r.status, 206, "ranged blob GET through a redirect")
    eq(r.header("Content-Range"), "bytes 10-99/%d" % layer["size"], "Content-Range")
    check(r.body == full[10:100], "ranged bytes differ from the blob's bytes 10..99")
    r = p.get("/v2/ns/multi/blobs/" + layer["digest"])
    eq((r.status, lib.sha256(r.body)), (200, layer["digest"]), "full blob GET")
    check(not any(x["authorization"] for x in fr.cdn_requests()),
          "the CDN received an Authorization header")
