# SPDX-License-Identifier: Apache-2.0
"""Upstream through an egress HTTP proxy, as in clusters whose only way out is a corporate
proxy (openshift_https_proxy): `proxy =` per registry, or the https_proxy environment.
Everything fetched for the registry (its API, its token realm, the CDN its blobs redirect
to) goes through CONNECT tunnels, so the proxy sees host names and never a credential; a
proxy that refuses is reported as such, and nothing is cached."""
import json
import os
import signal
import subprocess

import lib
from lib import check, eq


class Egress:
    """tests/fixtures/egress_proxy.py: CONNECT to loopback only, one JSON line per tunnel."""

    def __init__(self, t, deny=None):
        d = os.path.join(t.tmp, "egress-%d" % len(os.listdir(t.tmp)))
        os.makedirs(d)
        self.log = os.path.join(d, "tunnels.jsonl")
        pf = os.path.join(d, "port")
        argv = [lib.PY, os.path.join(lib.FIXTURES, "egress_proxy.py"), "--port-file", pf,
                "--log", self.log] + (["--deny", deny] if deny else [])
        self.proc = lib.Proc("egress_proxy", argv, os.path.join(d, "stderr.log"))
        t.defer(self.proc.stop)
        self.port = lib.read_port_file(pf, self.proc)[0]
        self.url = "http://127.0.0.1:%d" % self.port

    def tunnels(self):
        try:
            with open(self.log) as f:
                return [json.loads(x) for x in f if x.strip()]
        except OSError:
            return []

    def down(self, target):
        """Bytes that came back through the tunnels to target (closed ones)."""
        return sum(x.get("down", 0) for x in self.tunnels() if x.get("target") == target)


def _blob_bytes(reg, ref):
    return sum(lay["size"] for m in lib.image_manifests(reg, ref) for lay in m["layers"])


def _no_credentials_seen(t, eg):
    for x in eg.tunnels():
        check(x.get("method") == "CONNECT" and x.get("request") is None,
              "the egress proxy saw a request that is not a CONNECT: %r" % x)
        check("authorization" not in x["headers"] and
              "proxy-authorization" not in x["headers"],
              "credentials in a CONNECT head: %r" % x)
    with open(eg.log) as f:
        text = f.read()
    check(t.s.sa_password not in text, "the password reached the egress proxy's log")


def test_pull_through_configured_proxy(t):
    """Token auth: the API and the realm are both tunnelled, and the layers' bytes come
    through the tunnel (so nothing bypassed it); the environment's no_proxy, which names
    the upstream, does not override the configured proxy."""
    s = t.s
    reg, iss = s.token_registry, s.issuer
    eg = Egress(t)
    p = t.proxy(registries=[reg.conf(proxy=eg.url)],
                env=lib.clean_env({"no_proxy": "127.0.0.1,localhost"}))
    _, tags = t.pull(p, "ns/multi:v1")
    eq(tags["v1"], reg.pushed["ns/multi:v1"]["digest"], "pulled digest via the egress proxy")
    p.stop()  # closes upstream connections, so every tunnel is logged with its bytes
    targets = {x.get("target") for x in eg.tunnels()}
    check(reg.hostport in targets, "no tunnel to the registry %s: %s" % (reg.hostport, targets))
    realm_host = "127.0.0.1:%d" % iss.port
    check(realm_host in targets, "no tunnel to the token realm %s: %s" % (realm_host, targets))
    need = _blob_bytes(reg, "ns/multi:v1")
    check(eg.down(reg.hostport) >= need,
          "only %d bytes came through the tunnel for %d bytes of layers"
          % (eg.down(reg.hostport), need))
    _no_credentials_seen(t, eg)


def test_pull_through_environment_proxy(t):
    """No `proxy =`: libcurl's https_proxy from the environment, as a systemd drop-in sets
    it. The CDN a blob redirects to is tunnelled too."""
    s = t.s
    fr = s.fakereg
    eg = Egress(t)
    p = t.proxy(registries=[fr.conf()], env=lib.clean_env({"https_proxy": eg.url}))
    _, tags = t.pull(p, "ns/multi:v1")
    m = fr.client().manifest("ns/multi", "v1")
    eq(tags["v1"], lib.sha256(m.body), "pulled digest via https_proxy")
    p.stop()
    targets = {x.get("target") for x in eg.tunnels()}
    check(fr.hostport in targets, "no tunnel to the registry: %s" % targets)
    cdn = "127.0.0.1:%d" % fr.cdn_port
    check(cdn in targets, "the CDN %s was not reached through the proxy: %s" % (cdn, targets))
    for x in eg.tunnels():
        check("authorization" not in x["headers"], "credentials in a CONNECT head: %r" % x)


def test_refusing_proxy_is_reported(t):
    """A proxy whose policy refuses the registry: the client gets a 503 that says the
    registry is unreachable through its proxy; `regproxy check` says so too; nothing is
    cached, and the password is in neither answer."""
    s = t.s
    reg = s.token_registry
    eg = Egress(t, deny=r":%d$" % reg.port)
    conf = reg.conf(proxy=eg.url, test_image="ns/multi:v1", test_login="yes")
    p = t.proxy(registries=[conf])
    r = p.get("/v2/ns/multi/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 503, "manifest through a refusing proxy: %s" % r.body[:300])
    body = r.body.decode()
    check("egress proxy refused the tunnel (CONNECT answered 403)" in body,
          "the error does not say the egress proxy refused: %s" % body)
    check(s.sa_password not in body, "the password is in the error body")
    check(any(x.get("status") == 403 for x in eg.tunnels()),
          "the egress proxy refused nothing: %s" % eg.tunnels())
    # The upstream was never reached, so nothing can have been cached.
    r = p.get("/v2/ns/multi/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 503, "second try: still refused, nothing served from cache")
    c = subprocess.run([s.bin, "check", "-c", p.conf_path], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=120, env=lib.clean_env())
    out = c.stdout.decode()
    check(c.returncode != 0, "check passed through a refusing proxy:\n" + out)
    line = [x for x in out.splitlines() if x.startswith("registry ")]
    check(line and "FAILED: unreachable" in line[0] and
          "egress proxy refused the tunnel (CONNECT answered 403)" in line[0],
          "check does not name the proxy as the cause:\n" + out)
    check(s.sa_password not in out, "the password is in check's output")


def test_unreachable_proxy_is_named(t):
    """A configured proxy that nothing answers at: the error names the proxy, not only an
    address the admin would take for the registry's."""
    s = t.s
    reg = s.token_registry
    closed = "http://127.0.0.1:%d" % lib.free_port()
    p = t.proxy(registries=[reg.conf(proxy=closed)])
    r = p.get("/v2/ns/multi/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 503, "manifest through an unreachable proxy: %s" % r.body[:300])
    check("cannot reach the egress proxy %s" % closed in r.body.decode(),
          "the error does not name the egress proxy: %s" % r.body.decode())


def test_reload_moves_upstream_onto_the_proxy(t):
    """SIGHUP that adds `proxy =`: the next fetch goes through it, although a direct
    connection to the registry from before the reload is still open in the pool."""
    s = t.s
    reg = s.token_registry
    eg = Egress(t, deny=r":%d$" % reg.port)
    p = t.proxy(registries=[reg.conf()])
    r = p.get("/v2/ns/multi/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 200, "manifest, direct")
    p.registries[0]["proxy"] = eg.url
    p.write_conf()
    os.kill(p.pid, signal.SIGHUP)
    lib.wait_until(lambda: "configuration applied" in p.log_text(), 10,
                   "the reload to be applied")
    # A digest not fetched yet, so the answer cannot come from the cache.
    ref = lib.image_manifests(reg, "ns/multi-v2s2:v1")[0]
    r = p.get("/v2/ns/multi-v2s2/blobs/" + ref["layers"][0]["digest"])
    eq(r.status, 503, "a blob after the reload, through the refusing proxy: %s" % r.body[:300])
    check(any(x.get("status") == 403 for x in eg.tunnels()),
          "the fetch after the reload did not go to the egress proxy: %s" % eg.tunnels())
    # And back: the proxy removed again, the registry is reached directly.
    del p.registries[0]["proxy"]
    p.write_conf()
    n = p.log_text().count("configuration applied")
    os.kill(p.pid, signal.SIGHUP)
    lib.wait_until(lambda: p.log_text().count("configuration applied") > n, 10,
                   "the second reload to be applied")
    r = p.get("/v2/ns/multi-v2s2/blobs/" + ref["layers"][0]["digest"])
    eq((r.status, lib.sha256(r.body)), (200, ref["layers"][0]["digest"]),
       "the blob, direct again")


def test_proxy_password_from_environment_never_shown(t):
    """https_proxy is where a proxy's password goes; when curl cannot use it, its message
    quotes the URL as given. Neither the client's error, the log nor `regproxy check`
    shows the password."""
    s = t.s
    reg = s.token_registry
    pw = "S3cretProxyPw"
    env = lib.clean_env({"https_proxy": "http://proxyuser:%s@127.0.0.1:31280000" % pw})
    p = t.proxy(registries=[reg.conf(test_image="ns/multi:v1", test_login="yes")], env=env)
    r = p.get("/v2/ns/multi/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 503, "manifest through a malformed https_proxy: %s" % r.body[:300])
    check(pw not in r.body.decode() and "proxyuser" not in r.body.decode(),
          "the proxy's credentials are in the error body: %s" % r.body.decode())
    c = subprocess.run([s.bin, "check", "-c", p.conf_path], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=120, env=env)
    out = c.stdout.decode()
    check(c.returncode != 0, "check passed through a malformed proxy:\n" + out)
    check(pw not in out, "the proxy's password is in check's output:\n" + out)
    p.stop()
    check(pw not in p.log_text(), "the proxy's password is in the log")


def test_http_upstream_is_tunnelled_too(t):
    """A plain-http registry with Basic credentials (here another regproxy with client
    accounts) behind the egress proxy: a CONNECT tunnel, never a request forwarded to the
    proxy with our Authorization header in it."""
    s = t.s
    reg = s.anon_registry
    htp = lib.htpasswd_file(t, "node", "node-secret")
    inner = t.proxy(registries=[reg.conf("registry.anon.test")],
                    listeners=[{"default": "registry.anon.test", "htpasswd": htp}])
    eg = Egress(t)
    outer = t.proxy(registries=[{"name": "registry.inner.test",
                                 "url": "http://127.0.0.1:%d" % inner.port,
                                 "user": "node", "password": "node-secret",
                                 "proxy": eg.url}])
    _, tags = t.pull(outer, "ns/multi:v1")
    eq(tags["v1"], reg.pushed["ns/multi:v1"]["digest"], "pulled digest via the tunnel")
    outer.stop()
    tunnels = eg.tunnels()
    check(tunnels and all(x.get("method") == "CONNECT" and
                          x.get("target") == "127.0.0.1:%d" % inner.port for x in tunnels),
          "requests the egress proxy saw: %s" % tunnels)
    _no_credentials_seen(t, eg)
