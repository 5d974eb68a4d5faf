# SPDX-License-Identifier: Apache-2.0
"""Anonymous upstreams: a docker-registry without auth, and a Docker Hub style registry
whose token realm hands out anonymous pull tokens. Also containerd's `?ns=` routing."""
import json

import lib
from lib import check, eq


def test_pull_anonymous_registry(t):
    s = t.s
    reg = s.anon_registry
    p = t.proxy()
    for ref in ("ns/multi:v1", "ns/multi-v2s2:v1", "ns/multiarch:v1"):
        _, tags = t.pull(p, "registry.anon.test/" + ref)
        eq(tags["v1"], reg.pushed[ref]["digest"], "pulled %s from the anonymous registry" % ref)


def test_pull_anonymous_tokens(t):
    s = t.s
    reg = s.anon_token_registry
    iss = s.anon_issuer
    p = t.proxy(registries=[s.token_registry.conf(), reg.conf()])
    before = len(iss.fetches())
    _, tags = t.pull(p, "registry.anontoken.test/ns/multi:v1")
    eq(tags["v1"], reg.pushed["ns/multi:v1"]["digest"], "pull with anonymous tokens")
    new = iss.fetches()[before:]
    check(new, "the proxy fetched no anonymous token (issuer log %s)" % iss.log)
    check(not any(r["auth"] for r in new),
          "the proxy sent credentials to a realm of a registry configured without any: %r"
          % [r for r in new if r["auth"]])


def test_containerd_ns_parameter(t):
    s = t.s
    reg = s.anon_registry
    p = t.proxy()  # default registry is the token one: only ns= can pick the anonymous one
    r = p.get("/v2/ns/multi/manifests/v1?ns=registry.anon.test",
              headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 200, "manifest with ?ns=registry.anon.test")
    eq(lib.sha256(r.body), reg.pushed["ns/multi:v1"]["digest"], "manifest digest with ns=")
    eq(r.header("Docker-Content-Digest"), reg.pushed["ns/multi:v1"]["digest"],
       "Docker-Content-Digest with ns=")
    m = json.loads(r.body)
    for d in [m["config"]] + m["layers"]:
        r = p.get("/v2/ns/multi/blobs/%s?ns=registry.anon.test" % d["digest"])
        eq((r.status, lib.sha256(r.body), len(r.body)), (200, d["digest"], d["size"]),
           "blob %s with ns=" % d["digest"])
    # ns= by host:port works too (containerd sends the registry host as configured).
    r = p.get("/v2/ns/multi/manifests/v1?ns=" + reg.hostport,
              headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 200, "manifest with ?ns=%s" % reg.hostport)
    eq(lib.sha256(r.body), reg.pushed["ns/multi:v1"]["digest"], "digest with ns=hostport")
