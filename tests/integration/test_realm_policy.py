# SPDX-License-Identifier: Apache-2.0
"""Credentials go only to token realms the configuration allows (DESIGN: an upstream must
not be able to name a realm and receive the service-account password). The registry here
(127.0.0.1) names a realm on another host (localhost); the later tests use a registry of
their own that names realms escaping the configured token_realms prefix."""
import urllib.parse

import lib
from lib import check, eq


def test_foreign_realm_gets_no_credentials(t):
    s = t.s
    reg = s.foreign_realm_registry
    iss = s.foreign_issuer
    before = len(iss.requests())
    p = t.proxy(registries=[reg.conf()])
    r = p.get("/v2/ns/multi/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    check(r.status != 200, "the pull succeeded, so credentials (or an anonymous token) "
          "were obtained from a realm on another host: %r" % r)
    check(r.status != 404, "a refused realm must not look like a missing manifest: %r" % r)
    sent = [x for x in iss.requests()[before:] if x.get("auth")]
    check(not sent, "the proxy sent credentials to %s, a realm on another host: %r"
          % (reg.realm, sent[:1]))
    check(s.sa_password not in open(iss.log).read(), "password in the realm's log")


def test_configured_realm_is_used(t):
    s = t.s
    reg = s.foreign_realm_registry
    iss = s.foreign_issuer
    before = len(iss.requests())
    p = t.proxy(registries=[reg.conf(token_realms=reg.realm)])
    r = p.get("/v2/ns/multi/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 200, "manifest with token_realms allowing %s" % reg.realm)
    eq(lib.sha256(r.body), reg.pushed["ns/multi:v1"]["digest"], "manifest digest")
    got = [x for x in iss.requests()[before:] if x.get("status") == 200]
    check(got and all(x["user"] == lib.SA_USER for x in got),
          "expected token fetches by %s at the configured realm, got %r" % (lib.SA_USER, got))


def _escape_attempt(t, realm_path):
    up = lib.SelfIssuingRegistry(t)
    up.realm_path = realm_path
    p = t.proxy(registries=[{"name": "local.test", "url": up.url, "user": "alice",
                             "password": "alice-secret", "token_realms": up.url + "/token"}])
    r = p.get("/v2/ns/x/tags/list")
    stray = [x for x in up.seen() if not x[1].startswith("/v2/")
             and urllib.parse.urlsplit(x[1]).path != "/token"]
    check(not stray, "with token_realms = %s/token, a challenge naming %s sent requests "
          "outside it: %r (client got %d)" % (up.url, realm_path, stray, r.status))
    check(r.status != 200, "the realm %s was used: %r" % (realm_path, r))


def test_realm_dot_segments_refused(t):
    """curl removes dot segments: /token/../steal would reach /steal with the password."""
    _escape_attempt(t, "/token/../steal")


def test_realm_encoded_dots_refused(t):
    """Servers that decode before resolving take %2e%2e for .. and %2f for /."""
    _escape_attempt(t, "/token/%2e%2e/steal")
    _escape_attempt(t, "/token/..%2fsteal")
