# SPDX-License-Identifier: Apache-2.0
"""Pulls through the proxy from a token-auth docker-registry (the registry.redhat.io shape:
a service account `12345678|...`, tokens from a realm on another port), default route and
prefix routes; a token that dies mid-pull is refreshed."""
import time

import lib
from lib import check, eq


def _same_as_upstream(t, p, reg, ref, proxy_ref=None):
    via = t.inspect_raw(proxy_ref or ref, proxy=p)
    direct = t.inspect_raw(ref, registry=reg)
    check(via == direct, lambda: "manifest bytes of %s through the proxy differ from upstream:"
          "\nproxy:    %s (%r...)\nupstream: %s (%r...)" % (
              ref, lib.sha256(via), via[:120], lib.sha256(direct), direct[:120]))
    eq(lib.sha256(via), reg.pushed[ref]["digest"], "digest of %s through the proxy" % ref)


def test_pull_default_route(t):
    reg = t.s.token_registry
    p = t.proxy()
    for ref in ("ns/multi:v1", "ns/multi-v2s2:v1", "ns/multiarch:v1"):
        _, tags = t.pull(p, ref)
        eq(tags["v1"], reg.pushed[ref]["digest"], "pulled manifest digest of %s" % ref)
        _same_as_upstream(t, p, reg, ref)
    # --all pulled both platforms of the index.
    _, tags = t.pull(p, "ns/multiarch:v1")
    n_children = len(lib.image_manifests(reg, "ns/multiarch:v1"))
    eq(n_children, 2, "platforms in ns/multiarch:v1")


def test_pull_large(t):
    reg = t.s.token_registry
    p = t.proxy()
    t0 = time.monotonic()
    _, tags = t.pull(p, "ns/large:v1")
    took = time.monotonic() - t0
    eq(tags["v1"], reg.pushed["ns/large:v1"]["digest"], "pulled manifest digest of ns/large")
    _same_as_upstream(t, p, reg, "ns/large:v1")
    check(took < 120, "pulling 110 MB over loopback took %.0f s" % took)


def test_pull_prefix_route(t):
    reg = t.s.token_registry
    # The default registry is another one, so only the prefix can select the token registry.
    s = t.s
    p = t.proxy(registries=[s.anon_registry.conf(), reg.conf(), s.basic_registry.conf()])
    for ref in ("ns/multi:v1", "ns/multiarch:v1"):
        _, tags = t.pull(p, "registry.token.test/" + ref)
        eq(tags["v1"], reg.pushed[ref]["digest"], "pulled %s by name prefix" % ref)
        _same_as_upstream(t, p, reg, ref, "registry.token.test/" + ref)
    # By hostport: not a valid docker reference for skopeo (':' in a path component), so
    # plain HTTP, as a CRI-O mirror with a location of PROXY/127.0.0.1:PORT would send it.
    path = "/v2/%s/ns/multi/manifests/v1" % reg.hostport
    r = p.get(path, headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 200, "GET %s" % path)
    eq(lib.sha256(r.body), reg.pushed["ns/multi:v1"]["digest"], "manifest digest by hostport")
    layer = lib.image_manifests(reg, "ns/multi:v1")[0]["layers"][1]
    r = p.get("/v2/%s/ns/multi/blobs/%s" % (reg.hostport, layer["digest"]))
    eq((r.status, lib.sha256(r.body)), (200, layer["digest"]), "blob by hostport")


def test_token_refreshed_when_it_dies_mid_pull(t):
    """The issuer says expires_in=300 but its tokens die after ~2 s (docker-registry's 60 s
    leeway accounted for): the proxy's cached token is refused (401) and it must fetch a
    new one and retry, invisibly to the client."""
    s = t.s
    reg = s.lie_registry
    iss = s.lie_issuer
    t0 = time.time()
    p = t.proxy(registries=[reg.conf()])
    r = p.get("/v2/ns/multi/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 200, "manifest through the proxy (first token)")
    first = len(iss.fetches(lib.SA_USER, since=t0))
    check(first >= 1, "no token fetched for the first request (issuer log %s)" % iss.log)
    time.sleep(4)  # the token the proxy holds is dead now
    _, tags = t.pull(p, "ns/multi:v1")
    eq(tags["v1"], reg.pushed["ns/multi:v1"]["digest"], "pull after the token died")
    time.sleep(4)
    _, tags = t.pull(p, "ns/large:v1")  # outlives any single token
    eq(tags["v1"], reg.pushed["ns/large:v1"]["digest"], "large pull with dying tokens")
    n = len(iss.fetches(lib.SA_USER, since=t0))
    check(n > first, "the proxy never fetched a new token (%d fetches); registry 401s: %d"
          % (n, reg.count(None, "/v2/ns/", 401)))


def test_refused_fresh_token_is_not_fetched_again(t):
    """A token the realm has just issued and the registry refuses (docker-registry and Docker
    Hub say insufficient_scope for a repository the account may not pull, or that does not
    exist) would be refused again: the proxy answers after one token, not two. A cached token
    that is refused gets exactly one fresh one."""
    s = t.s
    reg, iss = s.token_registry, s.issuer
    p = t.proxy(registries=[reg.conf(user="narrow", password=s.narrow_password)])
    path = "/v2/ns/large/manifests/v1"
    for what, want_gets in (("first contact", 2), ("with the cached token", 2)):
        m, t0 = reg.mark(), time.time()
        r = p.get(path, headers={"Accept": lib.ACCEPT_ALL})
        check(r.status in (401, 502), "GET %s (%s) for an account that may only pull ns/multi: "
              "got %d" % (path, what, r.status))
        gets = reg.count("GET", path, since=m)
        fetches = len(iss.fetches("narrow", since=t0))
        eq((gets, fetches), (want_gets, 1),
           "(registry GETs, token fetches) for one refused request, %s" % what)
    # The account's own repository still works through the same proxy.
    r = p.get("/v2/ns/multi/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 200, "GET ns/multi's manifest")
