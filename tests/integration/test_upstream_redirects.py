# SPDX-License-Identifier: Apache-2.0
"""Registries that redirect their API to a backing registry (registry.k8s.io answers every
/v2/<name>/... with a 308): the backing registry's 404 stays a 404 (referrers: clients fall
back to tags), tag lists keep their next page though the backing registry names the
repository its own way; and mirror keeps a sha512 registry's tags by their sha512 digest."""
import json

import rawup
from lib import check, eq

MT = "application/vnd.oci.image.manifest.v1+json"



def _setup(t):
    m, md, layer, ld, cfg, cd = rawup.image()

    def back(r):
        if r.path == "/v2/ns/x/manifests/v1":
            r.answer(m, MT, md)
        elif "/manifests/" in r.path:
            r.send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}',
                   [("Content-Type", "application/json")])
        else:
            r.send(404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"not found"}]}',
                   [("Content-Type", "application/json")])
        return False
    backing = rawup.RawUpstream(t, back)

    # registry.k8s.io-style front: every /v2/<name>/... goes to the backing registry
    def front(r):
        if r.path in ("/v2/", "/v2"):
            r.send(200, b"{}", [("Content-Type", "application/json")])
        else:
            r.send(308, b"", [("Location", backing.url + r.path)])
        return False
    up = rawup.RawUpstream(t, front)
    return up, backing, md


def test_redirected_tag_404_stays_404(t):
    """A tag missing at the backing registry is a 404 MANIFEST_UNKNOWN, as from the registry
    itself: not a 502 'expired or refused download URL'."""
    up, backing, md = _setup(t)
    p = t.proxy(registries=[up.conf()])
    r = p.get("/v2/ns/x/manifests/v1")
    eq(r.status, 200, "GET of an existing tag through the redirect")
    for method in ("GET", "HEAD"):
        r = p.get("/v2/ns/x/manifests/nosuchtag", method=method)
        eq(r.status, 404, "%s of a missing tag through the redirect (body %r)" % (method, r.body[:200]))


def test_redirected_referrers_404_stays_404(t):
    """A 404 on the referrers API means 'unsupported' (distribution spec): clients fall back
    to the tag schema. A 502 makes them fail instead."""
    up, backing, md = _setup(t)
    p = t.proxy(registries=[up.conf()])
    r = p.get("/v2/ns/x/referrers/" + md)
    eq(r.status, 404, "referrers through the redirect (body %r)" % r.body[:200])


def test_mirror_sha512_registry_tag(t):
    """1a3f0c7: a GET by tag now stores the manifest under upstream's algorithm (sha512
    here), but mirror still names the image by the sha256 of the bytes (manifest_done's
    rp_digest_of(NULL)): image_missing finds no manifest under that digest, and the image
    fails (or the pin/export names a manifest the cache does not hold)."""
    import hashlib
    import os
    import re
    from test_offline_workflows import Store, _conf, NAME
    from test_disconnected import _run
    st = Store()
    st.image("ns/app", "amd64", tag="v1")
    inner = st.handler()

    def h(r):
        m = re.match(r"^/v2/(.+)/manifests/([^/?]+)$", r.path)
        if m and (m.group(1), m.group(2)) in st.manifests and not m.group(2).startswith("sha"):
            b, mt = st.manifests[(m.group(1), m.group(2))]
            r.answer(b, mt, "sha512:" + hashlib.sha512(b).hexdigest())
            return False
        return inner(r)
    up = rawup.RawUpstream(t, h)
    lst = os.path.join(t.tmp, "list")
    with open(lst, "w") as f:
        f.write("%s/ns/app:v1\n" % NAME)
    conf = _conf(os.path.join(t.tmp, "a.conf"), os.path.join(t.tmp, "cache"), up)
    rc, out, err = _run(t, ["mirror", "-c", conf, lst], ok=False)
    eq(rc, 0, "mirror of a tag from a registry naming manifests with sha512 (stdout %r stderr %r)"
       % (out[-400:], err[-400:]))


def test_redirected_tags_list_keeps_next_link(t):
    """c9726b5 follows redirects for tags/list; a backing registry under a path prefix
    (registry.k8s.io -> .../k8s-artifacts-prod/images/NAME) names its next page under that
    prefix, rewrite_link finds no /v2/NAME/tags/list in it and drops the Link: the client
    sees page 1 as the whole list."""
    def back(r):
        if r.path.startswith("/v2/prefix/ns/x/tags/list"):
            last = "last=b" in r.path
            body = {"name": "prefix/ns/x", "tags": ["c"] if last else ["a", "b"]}
            hdrs = [("Content-Type", "application/json")]
            if not last:
                hdrs.append(("Link", '</v2/prefix/ns/x/tags/list?n=2&last=b>; rel="next"'))
            r.send(200, json.dumps(body).encode(), hdrs)
        else:
            r.send(404, b"")
        return False
    backing = rawup.RawUpstream(t, back)

    def front(r):
        if r.path in ("/v2/", "/v2"):
            r.send(200, b"{}", [("Content-Type", "application/json")])
        else:
            r.send(308, b"", [("Location", backing.url + r.path.replace("/v2/", "/v2/prefix/", 1))])
        return False
    up = rawup.RawUpstream(t, front)
    p = t.proxy(registries=[up.conf()])
    r = p.get("/v2/ns/x/tags/list?n=2")
    eq(r.status, 200, "tags/list through the redirect")
    check("link" in {k.lower() for k in r.headers},
          "page 1 of 2 came back without a Link: the client takes %r as the whole list" % r.body)

