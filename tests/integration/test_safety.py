# SPDX-License-Identifier: Apache-2.0
"""Who may pull and strict HTTP: allow networks (403 at accept), client
accounts from an htpasswd file, the repos allow-list (403 before any upstream contact),
TLS serving with a certificate reloaded on SIGHUP, slowloris cut off, conflicting framing
and request bodies refused."""
import base64
import os
import signal
import socket
import ssl
import subprocess
import time

import lib
from lib import check, eq


def test_allow_networks(t):
    s = t.s
    reg = s.anon_registry
    p = t.proxy(registries=[reg.conf("registry.anon.test")],
                listeners=[{"default": "registry.anon.test", "allow": "10.0.0.0/8, fd00::/8"},
                           {"default": "registry.anon.test", "allow": "127.0.0.0/8"}])
    mark = reg.mark()
    seen = len(p.access())
    r = p.get("/v2/ns/multi/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, r.error_codes()), (403, ["DENIED"]), "request from outside allow")
    line = p.wait_access(seen + 1)[seen]
    eq((line.get("status"), line.get("cache"), line.get("bytes")), ("403", "-", str(len(r.body))),
       "access line of a connection refused at accept (bytes: the body that went out)")
    r = p.get("/v2/", listener=0)
    eq(r.status, 403, "even the ping is refused outside allow")
    eq(len(reg.since(mark)), 0, "upstream requests caused by a denied client")
    r = p.get("/v2/ns/multi/manifests/v1", headers={"Accept": lib.ACCEPT_ALL}, listener=1)
    eq(r.status, 200, "request from inside allow")


def test_htpasswd_client_accounts(t):
    s = t.s
    reg = s.anon_registry
    htp = lib.htpasswd_file(t, "node", "node-secret")
    p = t.proxy(registries=[reg.conf("registry.anon.test")],
                listeners=[{"default": "registry.anon.test", "htpasswd": htp}])
    r = p.get("/v2/")
    eq(r.status, 401, "ping without credentials")
    check("basic" in (r.header("www-authenticate") or "").lower(), "no Basic challenge")
    out = os.path.join(t.tmp, "pull-auth")
    r = s.skopeo(["copy", "-q", "--preserve-digests", "--dest-oci-accept-uncompressed-layers",
                  "--src-tls-verify=false", "--src-creds", "node:node-secret",
                  "docker://127.0.0.1:%d/ns/multi:v1" % p.port, "oci:%s:v1" % out],
                 check_rc=False)
    eq(r.returncode, 0, "skopeo with client credentials: %s" % r.stderr.decode()[-500:])
    lib.verify_oci_layout(out)
    r = p.get("/v2/ns/multi/manifests/v1", headers={
        "Accept": lib.ACCEPT_ALL, "Authorization": "Basic bm9kZTp3cm9uZw=="})  # node:wrong
    eq(r.status, 401, "wrong client password")
    # A NUL would end the name or the password as the C strings they are checked as: the
    # right password followed by anything must not pass, nor the name followed by anything.
    for cred in (b"node:node-secret\0junk", b"node\0x:node-secret"):
        r = p.get("/v2/", headers={"Authorization": "Basic " + base64.b64encode(cred).decode()})
        eq(r.status, 401, "credentials with a NUL: %r" % cred)
    check("node-secret" not in p.log_text(), "client password in the log")
    # Guesses pipelined behind a failed one get nothing: the connection ends with its 401
    # (each would cost a bcrypt on the event loop), and the proxy stays responsive.
    guesses = b"".join(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nAuthorization: Basic %s\r\n\r\n"
                       % base64.b64encode(b"node:guess%d" % i) for i in range(100))
    t0 = time.monotonic()
    got = lib.raw_exchange(p.port, guesses, timeout=30)
    eq(got.count(b"HTTP/1.1 "), 1, "answers to 100 pipelined guesses")
    check(got.startswith(b"HTTP/1.1 401"), "the answer to the first guess: %r" % got[:80])
    eq(p.admin("/healthz").status, 200, "healthz during guessing")
    check(time.monotonic() - t0 < 5, "guessing held the proxy %.1f s" % (time.monotonic() - t0))


def _read_quiet(c, settle=1.5):
    """All that arrives until the peer closes or is quiet for settle seconds."""
    c.settimeout(settle)
    buf = b""
    while True:
        try:
            b = c.recv(65536)
        except socket.timeout:
            return buf
        if not b:
            return buf
        buf += b


def test_head_challenge_has_no_body(t):
    """A HEAD without credentials (docker and containerd HEAD manifests before logging in)
    gets a 401 head alone: the connection stays open, and a body after the head was read as
    the start of the next answer. The refusal is logged with its method, path and the id the
    client got as X-Request-Id."""
    reg = t.s.anon_registry
    htp = lib.htpasswd_file(t, "node", "node-secret")
    p = t.proxy(registries=[reg.conf("registry.anon.test")],
                listeners=[{"default": "registry.anon.test", "htpasswd": htp}])
    good = base64.b64encode(b"node:node-secret")
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as c:
        c.sendall(b"HEAD /v2/ns/multi/manifests/v1 HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /v2/ HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + good + b"\r\n\r\n")
        got = _read_quiet(c)
    head, _, rest = got.partition(b"\r\n\r\n")
    check(head.startswith(b"HTTP/1.1 401"), "first answer: %r" % head[:60])
    check(rest.startswith(b"HTTP/1.1 200"),
          "after the HEAD's 401 head the next bytes must be the next answer: %r" % rest[:120])
    rid = [ln.split(b":", 1)[1].strip().decode() for ln in head.split(b"\r\n")
           if ln.lower().startswith(b"x-request-id:")]
    eq(len(rid), 1, "X-Request-Id on the 401")
    lib.wait_until(lambda: "id=%s " % rid[0] in p.log_text(), 10, "the 401's access line")
    line = [ln for ln in p.log_text().splitlines() if "id=%s " % rid[0] in ln][0]
    check("method=HEAD path=/v2/ns/multi/manifests/v1 status=401" in line,
          "the 401's access line: " + line)


def test_htpasswd_guesser_leaves_others_their_logins(t):
    """Failing hashes are rationed per client address as well as in all: one address
    guessing as fast as it can (a connection per guess) gets its own share, and a client
    logging in for the first time from another address is still checked and let in."""
    s = t.s
    reg = s.anon_registry
    htp = lib.htpasswd_file(t, "node", "node-secret")
    p = t.proxy(registries=[reg.conf("registry.anon.test")],
                listeners=[{"default": "registry.anon.test", "htpasswd": htp}])
    statuses = [lib.ping_from(p.port, b"node:guess%d" % i) for i in range(20)]
    eq(statuses, [401] * 20, "20 guesses from 127.0.0.1")
    eq(lib.ping_from(p.port, b"node:node-secret", source="127.0.0.2"), 200,
       "the first login from 127.0.0.2 right after them")
    eq(lib.ping_from(p.port, b"node:node-secret"), 200, "the same credentials from 127.0.0.1, "
       "now known good")


def test_htpasswd_file_change_reloads(t):
    """The client-accounts file is watched like registry credential files: replacing it
    (a rotated secret) reloads, and the new password is the one that works."""
    s = t.s
    reg = s.anon_registry
    htp = lib.htpasswd_file(t, "node", "old-secret")
    p = t.proxy(registries=[reg.conf("registry.anon.test")],
                listeners=[{"default": "registry.anon.test", "htpasswd": htp}])
    eq(lib.ping_from(p.port, b"node:old-secret"), 200, "the old password before the change")
    new = lib.htpasswd_file(t, "node2", "new-secret")
    with open(new, "rb") as f:
        text = f.read().replace(b"node2:", b"node:")
    tmp = htp + ".tmp"
    with open(tmp, "wb") as f:
        f.write(text)
    os.rename(tmp, htp)
    lib.wait_until(lambda: "reload (a watched file changed): configuration applied"
                   in p.log_text(), 15, "the reload after the accounts file changed")
    eq(lib.ping_from(p.port, b"node:new-secret"), 200, "the new password")
    eq(lib.ping_from(p.port, b"node:old-secret", source="127.0.0.2"), 401, "the old password")


def test_htpasswd_parallel_guesses_charged_at_once(t):
    """Guesses from many addresses at the same moment: a hash counts against the budget from
    its start, so only the budget's worth is hashed and the rest refused at once. Charged only
    when each hash ended, all of them were hashed, and the budget was left so far in debt
    that a correct first login seconds later was still refused unchecked."""
    s = t.s
    reg = s.anon_registry
    htp = lib.htpasswd_file(t, "node", "node-secret", cost=10)
    p = t.proxy(registries=[reg.conf("registry.anon.test")],
                listeners=[{"default": "registry.anon.test", "htpasswd": htp}])
    import threading
    statuses = []

    def guess(i):
        statuses.append(lib.ping_from(p.port, b"node:guess%d" % i, source="127.0.0.%d" % (10 + i)))
    threads = [threading.Thread(target=guess, args=(i,)) for i in range(24)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    eq(sorted(statuses), [401] * 24, "24 parallel guesses from 24 addresses")
    time.sleep(1.5)  # the budget refills at 4 a second
    eq(lib.ping_from(p.port, b"node:node-secret", source="127.0.0.100"), 200,
       "a first login from another address 1.5 s later")


def test_htpasswd_hash_off_the_loop(t):
    """A first login's bcrypt (cost 14 here, about a second) runs off the event loop: a
    request sent while it hashes is answered before it, and the login then succeeds. On the
    loop, the second request had to wait for the hash."""
    s = t.s
    reg = s.anon_registry
    htp = lib.htpasswd_file(t, "node", "node-secret", cost=14)
    p = t.proxy(registries=[reg.conf("registry.anon.test")],
                listeners=[{"default": "registry.anon.test", "htpasswd": htp}])
    login = socket.create_connection(("127.0.0.1", p.port), timeout=30)
    try:
        login.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                      b"Authorization: Basic %s\r\n\r\n" % base64.b64encode(b"node:node-secret"))
        time.sleep(0.2)  # the hash has started
        r = p.get("/v2/")  # no credentials: a challenge, which needs no hash
        eq(r.status, 401, "a request without credentials while the login hashes")
        login.settimeout(0)
        try:
            early = login.recv(100)
        except BlockingIOError:
            early = b""
        eq(early, b"", "the login's answer came before the other request's")
        login.settimeout(30)
        got = lib.read_to_eof(login)
    finally:
        login.close()
    check(got.startswith(b"HTTP/1.1 200"), "the login: %r" % got[:60])
    # A reload while a login hashes replaces the accounts under it: the login is checked
    # against the new ones (a second hash) and still succeeds.
    os.kill(p.pid, signal.SIGHUP)
    lib.wait_until(lambda: "reload (SIGHUP): configuration applied" in p.log_text(), 10,
                   "the first reload")
    with socket.create_connection(("127.0.0.1", p.port), timeout=30) as c:
        c.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                  b"Authorization: Basic %s\r\n\r\n" % base64.b64encode(b"node:node-secret"))
        time.sleep(0.2)
        os.kill(p.pid, signal.SIGHUP)
        got = lib.read_to_eof(c)
    check(got.startswith(b"HTTP/1.1 200"), "the login across a reload: %r" % got[:60])
    eq(p.log_text().count("reload (SIGHUP): configuration applied"), 2, "reloads applied")


def test_repos_allow_list(t):
    s = t.s
    reg = s.anon_registry
    p = t.proxy(registries=[reg.conf("registry.anon.test", repos="ns/multi, other/*")])
    mark = reg.mark()
    for path in ("/v2/ns/large/manifests/v1", "/v2/ns/multiarch/manifests/v1",
                 "/v2/ns/large/tags/list"):
        r = p.get(path, headers={"Accept": lib.ACCEPT_ALL})
        eq((r.status, r.error_codes()), (403, ["DENIED"]), "GET %s outside repos" % path)
    eq(len(reg.since(mark)), 0, "upstream requests for repositories outside repos")
    _, tags = t.pull(p, "ns/multi:v1")
    eq(tags["v1"], reg.pushed["ns/multi:v1"]["digest"], "pull inside repos")



def test_repos_docker_hub_short_names(t):
    """On Docker Hub `docker pull nginx` asks for library/nginx: `repos = nginx` (the name a
    Docker user writes) used to refuse it, and `*` refused every official image. An offline
    docker.io (never dialed) answers 404 to what repos lets through."""
    p = t.proxy(registries=[{"name": "docker.io", "offline": "yes",
                             "repos": "nginx, bitnami/*, ubi*"}],
                listeners=[{"default": "docker.io"}])
    for name, want in (("nginx", 404), ("library/nginx", 404), ("bitnami/redis", 404),
                       ("ubi8", 404), ("redis", 403), ("library/redis", 403),
                       ("someone/nginx", 403), ("library/bitnami", 403)):
        r = p.get("/v2/%s/manifests/latest" % name, headers={"Accept": lib.ACCEPT_ALL})
        eq(r.status, want, "GET %s on docker.io with repos = nginx, bitnami/*, ubi*" % name)
    p2 = t.proxy(registries=[{"name": "docker.io", "offline": "yes", "repos": "*"}],
                 listeners=[{"default": "docker.io"}])
    for name, want in (("nginx", 404), ("library/nginx", 404), ("bitnami/redis", 403)):
        r = p2.get("/v2/%s/manifests/latest" % name, headers={"Accept": lib.ACCEPT_ALL})
        eq(r.status, want, "GET %s on docker.io with repos = *" % name)

def _peer_cn(port, cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as c:
            subj = dict(x[0] for x in c.getpeercert()["subject"])
            return subj.get("commonName"), c.version()


def test_tls_serving_and_reload(t):
    s = t.s
    reg = s.anon_registry
    d1, key1, crt1 = lib.serving_cert(t, "first")
    d2, key2, crt2 = lib.serving_cert(t, "second")
    live_key, live_crt = os.path.join(t.tmp, "live.key"), os.path.join(t.tmp, "live.crt")
    for src, dst in ((key1, live_key), (crt1, live_crt)):
        with open(src, "rb") as f, open(dst, "wb") as g:
            g.write(f.read())
    p = t.proxy(registries=[reg.conf("registry.anon.test")],
                listeners=[{"default": "registry.anon.test", "tls_cert": live_crt,
                            "tls_key": live_key}])
    cn, version = _peer_cn(p.port, os.path.join(d1, "ca.crt"))
    eq(cn, "first", "certificate served")
    check(version in ("TLSv1.2", "TLSv1.3"), "TLS version %s" % version)
    # TLS 1.1 is refused.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as raw:
            with ctx.wrap_socket(raw) as c:
                lib.fail("a TLS 1.1 handshake succeeded (%s)" % c.version())
    except (ssl.SSLError, ConnectionResetError, ValueError):
        pass
    out = os.path.join(t.tmp, "pull-tls")
    r = s.skopeo(["copy", "-q", "--preserve-digests", "--dest-oci-accept-uncompressed-layers",
                  "--src-cert-dir", d1, "--src-no-creds",
                  "docker://127.0.0.1:%d/ns/multi:v1" % p.port, "oci:%s:v1" % out],
                 check_rc=False)
    eq(r.returncode, 0, "skopeo over TLS: %s" % r.stderr.decode()[-500:])
    lib.verify_oci_layout(out)
    # Rotate the certificate; SIGHUP makes new connections use it.
    for src, dst in ((key2, live_key), (crt2, live_crt)):
        with open(src, "rb") as f, open(dst, "wb") as g:
            g.write(f.read())
    os.kill(p.pid, signal.SIGHUP)
    lib.wait_until(lambda: "reload (SIGHUP): configuration applied" in p.log_text(), 10,
                   "the reload")
    cn, _ = _peer_cn(p.port, os.path.join(d2, "ca.crt"))
    eq(cn, "second", "certificate served after SIGHUP")


def _tls12_cipher(port, cipher):
    """The suite a TLS 1.2 handshake offering only `cipher` gets, or None when refused."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(cipher)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw) as c:
                return c.cipher()[0]
    except (ssl.SSLError, ConnectionResetError):
        return None


def test_tls12_only_forward_secret_aead_suites(t):
    """OpenSSL's default list let a TLS 1.2 client use RSA key exchange (no forward secrecy)
    and CBC with SHA-1 (AES128-SHA): scanners flag both. TLS 1.2 takes ECDHE with AES-GCM
    or ChaCha20, which every registry client offers."""
    s = t.s
    _, key, crt = lib.serving_cert(t, "ciphers")
    p = t.proxy(registries=[s.anon_registry.conf("registry.anon.test")],
                listeners=[{"default": "registry.anon.test", "tls_cert": crt, "tls_key": key}])
    for weak in ("AES128-SHA", "AES256-SHA256", "AES128-GCM-SHA256", "ECDHE-RSA-AES128-SHA",
                 "ECDHE-RSA-AES256-SHA384"):
        eq(_tls12_cipher(p.port, weak), None, "TLS 1.2 handshake offering only %s" % weak)
    for good in ("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384",
                 "ECDHE-RSA-CHACHA20-POLY1305"):
        eq(_tls12_cipher(p.port, good), good, "TLS 1.2 handshake offering only %s" % good)


def _replace(src, dst):
    """Writes dst as a secret volume or cert-manager would: whole, by rename."""
    with open(src, "rb") as f, open(dst + ".tmp", "wb") as g:
        g.write(f.read())
    os.rename(dst + ".tmp", dst)


def _rotating_tls_proxy(t, reg, name):
    """A proxy whose TLS listener serves live.crt/live.key, a copy of a "first" pair, with a
    "second" pair made for the rotation: (proxy, first, second, live_key, live_crt), each
    pair as lib.serving_cert gives it (dir, key, cert)."""
    first, second = lib.serving_cert(t, "first"), lib.serving_cert(t, "second")
    live_key, live_crt = os.path.join(t.tmp, "live.key"), os.path.join(t.tmp, "live.crt")
    _replace(first[1], live_key)
    _replace(first[2], live_crt)
    p = t.proxy(registries=[reg.conf(name)],
                listeners=[{"default": name, "tls_cert": live_crt, "tls_key": live_key}])
    return p, first, second, live_key, live_crt


def test_tls_rotation_watched(t):
    """A renewed certificate is picked up without SIGHUP. Half a rotation (the certificate
    before its key) is refused once, keeps the old pair serving, and is not retried, nor
    logged again, until the key arrives."""
    p, (d1, _, _), (d2, key2, crt2), live_key, live_crt = \
        _rotating_tls_proxy(t, t.s.anon_registry, "registry.anon.test")
    eq(_peer_cn(p.port, os.path.join(d1, "ca.crt"))[0], "first", "certificate served")
    _replace(crt2, live_crt)
    refused = "reload (a watched file changed) refused"
    lib.wait_until(lambda: refused in p.log_text(), 15, "the half rotation to be refused")
    time.sleep(5)  # more than two looks of the watch
    eq(p.log_text().count(refused), 1, "refusals of the same half rotation")
    eq(_peer_cn(p.port, os.path.join(d1, "ca.crt"))[0], "first", "certificate while refused")
    _replace(key2, live_key)
    lib.wait_until(lambda: "reload (a watched file changed): configuration applied"
                   in p.log_text(), 15, "the completed rotation to be applied")
    eq(_peer_cn(p.port, os.path.join(d2, "ca.crt"))[0], "second", "renewed certificate served")


def test_slowloris_cut_off(t):
    s = t.s
    p = t.proxy(registries=[s.anon_registry.conf("registry.anon.test")])
    c = socket.create_connection(("127.0.0.1", p.port), timeout=30)
    req = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40
    t0 = time.monotonic()
    got = b""
    try:
        for b in req:
            c.sendall(bytes([b]))
            time.sleep(0.5)
            if time.monotonic() - t0 > 25:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    try:
        got = c.recv(4096)
    except (ConnectionResetError, socket.timeout):
        pass
    took = time.monotonic() - t0
    check(took < 20, "a client sending a byte every 0.5 s was held for %.0f s" % took)
    check(got.startswith(b"HTTP/1.1 408"), "expected 408, got %r" % got[:80])


def _raw(p, data):
    return lib.raw_exchange(p.port, data)


def test_framing_and_bodies_refused(t):
    s = t.s
    reg = s.anon_registry
    p = t.proxy(registries=[reg.conf("registry.anon.test")])
    mark = reg.mark()
    both = (b"GET /v2/ns/multi/manifests/v1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v2/ns/large/manifests/v1 HTTP/1.1\r\n"
            b"Host: x\r\n\r\n")
    out = _raw(p, both)
    check(out.startswith(b"HTTP/1.1 400"), "CL+TE: %r" % out[:80])
    eq(out.count(b"HTTP/1.1 "), 1, "responses to a smuggling attempt (the second request "
       "must never be read)")
    body = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd"
    out = _raw(p, body)
    check(out.startswith(b"HTTP/1.1 400"), "request with a body: %r" % out[:80])
    for m in (b"POST", b"PUT", b"DELETE", b"PATCH"):
        out = _raw(p, m + b" /v2/ns/multi/blobs/uploads/ HTTP/1.1\r\nHost: x\r\n\r\n")
        check(out.startswith(b"HTTP/1.1 405"), "%s: %r" % (m, out[:80]))
    # absolute-form is served as its path: the host in it is never dialed.
    out = _raw(p, b"GET http://evil.example/v2/ns/multi/manifests/v1 HTTP/1.1\r\n"
               b"Host: evil.example\r\nConnection: close\r\n"
               b"Accept: application/vnd.oci.image.manifest.v1+json\r\n\r\n")
    check(out.startswith(b"HTTP/1.1 200"), "absolute-form target: %r" % out[:80])
    mark = reg.mark()
    out = _raw(p, b"GET ftp://evil.example/v2/ HTTP/1.1\r\nHost: evil.example\r\n\r\n")
    check(out.startswith(b"HTTP/1.1 400"), "ftp absolute-form target: %r" % out[:80])
    out = _raw(p, b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n")
    check(out.startswith(b"HTTP/1.1 4"), "CONNECT: %r" % out[:80])
    eq(len(reg.since(mark)), 0, "upstream requests caused by refused requests")


def test_admin_not_on_registry_listener(t):
    s = t.s
    p = t.proxy(registries=[s.anon_registry.conf("registry.anon.test")])
    for path in ("/metrics", "/healthz", "/readyz"):
        r = p.get(path)
        check(r.status == 404, "%s answered %d on the registry listener" % (path, r.status))
        r = p.admin(path)
        eq(r.status, 200, "%s on the admin listener" % path)


def test_connections_beyond_the_maximum(t):
    s = t.s
    p = t.proxy(registries=[s.anon_registry.conf("registry.anon.test")],
                listeners=[{"default": "registry.anon.test", "max_connections": "20"}])
    def open_now():
        return p.metrics().get(("regproxy_open_connections", frozenset()), 0)

    # The start-up probe's connection must be gone before we fill the listener.
    lib.wait_until(lambda: open_now() == 0, 10, "no open connection before the test")
    held = [socket.create_connection(("127.0.0.1", p.port), timeout=10) for _ in range(20)]
    try:
        lib.wait_until(lambda: open_now() == 20, 10, "20 open connections in /metrics")
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as c:
            c.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            data = lib.read_to_eof(c)
        check(data.startswith(b"HTTP/1.1 503") and b"Retry-After" in data,
              "connection beyond the maximum: %r" % data[:200])
        m = p.metrics()
        eq(m.get(("regproxy_connections_refused_total", frozenset()), 0), 1,
           "refused connections counted")
        # A herd past the limit: every refusal answered and counted, but the log gets at
        # most a line a second (plus the first), not one per connection.
        t0 = time.monotonic()
        for _ in range(40):
            with socket.create_connection(("127.0.0.1", p.port), timeout=10) as c:
                c.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
                check(lib.read_to_eof(c).startswith(b"HTTP/1.1 503"), "a refusal in the herd")
        elapsed = time.monotonic() - t0
        eq(p.metrics().get(("regproxy_connections_refused_total", frozenset()), 0), 41,
           "refused connections counted after the herd")
        lines = [x for x in p.log_text().splitlines() if ": refused, " in x]
        check(1 <= len(lines) <= 2 + int(elapsed),
              "%d refusal lines for 41 refusals in %.1f s" % (len(lines), elapsed))
        # The held connections still work, and room frees up as they close.
        held[0].sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        check(held[0].recv(4096).startswith(b"HTTP/1.1 200"), "a held connection stopped working")
    finally:
        for c in held:
            c.close()
    lib.wait_until(lambda: p.get("/v2/").status == 200, 10, "new connections after closing")


def test_refused_tls_client_that_never_handshakes_is_closed(t):
    """Past max_connections on a TLS listener, a client that never starts its handshake
    cannot take the 503: it is closed after a moment, not kept for good (256 such held
    every refusal slot)."""
    s = t.s
    _, key, crt = lib.serving_cert(t, "refuse-tls")
    p = t.proxy(registries=[s.anon_registry.conf("registry.anon.test")],
                listeners=[{"default": "registry.anon.test", "max_connections": "1",
                            "tls_cert": crt, "tls_key": key, "idle_timeout": "60s"}])
    lib.wait_until(lambda: p.metrics().get(("regproxy_open_connections", frozenset()), 0) == 0,
                   10, "no open connection before the test")
    held = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    try:
        lib.wait_until(lambda: p.metrics().get(("regproxy_open_connections", frozenset()),
                                               0) == 1, 10, "the held connection counted")
        with socket.create_connection(("127.0.0.1", p.port), timeout=20) as c:
            t0 = time.monotonic()
            try:
                data = c.recv(4096)  # never a ClientHello from us
            except ConnectionResetError:
                data = b""
            took = time.monotonic() - t0
        eq(data, b"", "what a refused client that never handshakes receives")
        check(took < 10, "the refused connection stayed open %.1f s" % took)
    finally:
        held.close()


def test_plain_http_on_tls_listener_told(t):
    """A plain-HTTP request on a TLS listener (an http:// mirror entry, curl without https)
    was reset, which clients report as "connection reset by peer". It gets the 400 Go's
    servers (docker-registry among them) send, with their words, and is logged."""
    s = t.s
    d, key, crt = lib.serving_cert(t, "plain-on-tls")
    p = t.proxy(registries=[s.anon_registry.conf("registry.anon.test")],
                listeners=[{"default": "registry.anon.test", "tls_cert": crt, "tls_key": key}])
    seen = len(p.access())
    sent = []
    for method in (b"GET", b"HEAD"):
        try:
            out = lib.raw_exchange(p.port, method + b" /v2/ HTTP/1.1\r\nHost: x\r\n"
                                   b"User-Agent: containerd/1.7\r\n\r\n")
        except ConnectionResetError:
            out = b"(reset)"
        check(out.startswith(b"HTTP/1.1 400 ") and
              b"Client sent an HTTP request to an HTTPS server." in out,
              "plain-HTTP %s on a TLS listener: %r" % (method.decode(), out[:300]))
        # The method is never read: the body goes out whatever it was.
        sent.append(str(len(out.partition(b"\r\n\r\n")[2])))
    lines = p.wait_access(seen + 2)[seen:]
    eq([(x.get("status"), x.get("reason"), x.get("bytes")) for x in lines],
       [("400", "plain HTTP sent to a TLS listener", n) for n in sent],
       "access-log lines (bytes: the body that went out)")
    eq(_peer_cn(p.port, os.path.join(d, "ca.crt"))[0], "plain-on-tls",
       "a TLS handshake after the plain-HTTP requests")


def test_no_unsolicited_408_after_a_challenge(t):
    """A 401 challenge ends that request: its head deadline must not fire later on the idle
    keep-alive connection (a 408 sent then is read as the answer to the next request)."""
    s = t.s
    reg = s.anon_registry
    htp = lib.htpasswd_file(t, "node", "node-secret")
    p = t.proxy(registries=[reg.conf("registry.anon.test")],
                listeners=[{"default": "registry.anon.test", "htpasswd": htp,
                            "idle_timeout": "60s"}])
    with socket.create_connection(("127.0.0.1", p.port), timeout=20) as c:
        c.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        first = c.recv(65536)
        check(first.startswith(b"HTTP/1.1 401"), "challenge: %r" % first[:100])
        c.settimeout(12)  # past the 10 s head deadline
        try:
            late = c.recv(65536)
        except socket.timeout:
            late = None
        check(late is None, "the idle connection received %r after its 401" % (late or b"")[:80])
        c.settimeout(20)
        c.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nAuthorization: Basic "
                  b"bm9kZTpub2RlLXNlY3JldA==\r\n\r\n")  # node:node-secret
        again = c.recv(65536)
        check(again.startswith(b"HTTP/1.1 200"), "with credentials after the wait: %r"
              % again[:100])


def test_tls_close_sends_close_notify(t):
    """A TLS connection closed after its answer (Connection: close, a refused request) ended
    with a bare TCP close: strict clients reading to the close (rustls ones, Python with
    suppress_ragged_eofs off) report "unexpected eof", and a finished answer could not be
    told from a cut one. It ends with close_notify now."""
    s = t.s
    d, key, crt = lib.serving_cert(t, "close-notify")
    p = t.proxy(registries=[s.anon_registry.conf("registry.anon.test")],
                listeners=[{"default": "registry.anon.test", "tls_cert": crt, "tls_key": key}])
    ctx = ssl.create_default_context(cafile=os.path.join(d, "ca.crt"))
    for req, status in ((b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"200"),
                        (b"POST /v2/ HTTP/1.1\r\nHost: x\r\n\r\n", b"405")):
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1",
                                 suppress_ragged_eofs=False) as c:
                c.sendall(req)
                got, end = b"", "close_notify"
                try:
                    while True:
                        b = c.recv(65536)
                        if not b:
                            break
                        got += b
                except ssl.SSLEOFError as e:
                    end = "a TCP close without close_notify (%s)" % e
                check(got.startswith(b"HTTP/1.1 " + status), "answer: %r" % got[:100])
                eq(end, "close_notify", "how the answer to %r ended" % req.split(b"\r\n")[0])


def test_tls_close_notify_answered(t):
    """A client's close_notify on a keep-alive connection was met with a bare TCP close:
    TLS 1.2 has the other side answer with its own (RFC 5246 7.2.1), and a client that
    waits for it (Python's unwrap) reported "unexpected eof". It is answered now."""
    d, key, crt = lib.serving_cert(t, "close-notify-answered")
    p = t.proxy(registries=[t.s.anon_registry.conf("registry.anon.test")],
                listeners=[{"default": "registry.anon.test", "tls_cert": crt, "tls_key": key}])
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = ssl.create_default_context(cafile=os.path.join(d, "ca.crt"))
        ctx.minimum_version = ctx.maximum_version = version
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as raw:
            c = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
            c.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            got = b""
            while not got.endswith(b"\r\n\r\n{}"):
                b = c.recv(65536)
                check(b, "connection closed before the answer: %r" % got)
                got += b
            check(got.startswith(b"HTTP/1.1 200"), "answer over TLS: %r" % got[:100])
            try:
                c.unwrap()
                end = "close_notify"
            except (ssl.SSLError, OSError) as e:
                end = "no close_notify (%s)" % e
            eq(end, "close_notify", "what answered the client's close_notify (%s)"
               % version.name)


def _tls_fails(p, listener):
    """regproxy_tls_handshake_failures_total of a listener, by reason."""
    return {dict(labels)["reason"]: v for (name, labels), v in p.metrics().items()
            if name == "regproxy_tls_handshake_failures_total"
            and dict(labels).get("listener") == listener}


def _handshake(port, ctx):
    """A TLS handshake with ctx: None when it completed, else the client's error."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1"):
                return None
    except (ssl.SSLError, ssl.CertificateError, OSError) as e:
        return e


def test_tls_handshake_failures_counted_and_logged(t):
    """A failed TLS handshake was logged at debug level only and counted nowhere: an operator
    whose nodes do not trust the proxy's certificate saw nothing but failing pulls. Each is
    counted by listener and reason, and logged at info in an operator's words, at most a line
    a second per listener; a bare TCP connect and close (a load balancer's health check) is
    counted, never logged per connection."""
    s = t.s
    d, key, crt = lib.serving_cert(t, "handshakes")
    p = t.proxy(registries=[s.anon_registry.conf("registry.anon.test")],
                listeners=[{"default": "registry.anon.test", "tls_cert": crt, "tls_key": key}])
    addr = "127.0.0.1:%d" % p.port
    eq(sorted(_tls_fails(p, addr)), sorted([
        "alert_unknown_ca", "alert_bad_certificate", "alert_other", "protocol_version",
        "no_shared_cipher", "http_request", "eof", "timeout", "other"]),
       "reasons of a TLS listener")

    def lines(words):
        return [x for x in p.log_text().splitlines() if words in x]

    def no_ca():  # Python's OpenSSL without the CA: alert unknown_ca
        err = _handshake(p.port, ssl.create_default_context())
        check(isinstance(err, ssl.SSLCertVerificationError), "handshake without the CA: %r"
              % err)

    def go_no_ca():  # Go's crypto/tls (skopeo; containerd, CRI-O, podman alike)
        r = s.skopeo(["inspect", "--raw", "--no-creds", "docker://%s/ns/multi:v1" % addr],
                     check_rc=False, timeout=60)
        check(r.returncode != 0 and "certificate" in r.err, "skopeo without the CA: %d %s"
              % (r.returncode, r.err[-300:]))

    def tls11():
        out = subprocess.run(["openssl", "s_client", "-connect", addr, "-tls1_1", "-cipher",
                              "DEFAULT@SECLEVEL=0"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             env=dict(os.environ, OPENSSL_CONF="/dev/null"), timeout=30)
        check(out.returncode != 0, "openssl s_client -tls1_1 connected: %r" % out.stdout[-300:])

    def weak_cipher():
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers("AES128-SHA")
        check(_handshake(p.port, ctx) is not None, "a TLS 1.2 handshake offering AES128-SHA")

    def scanner():  # a TLS record header, then no handshake message
        try:
            lib.raw_exchange(p.port, b"\x16\x03\x01\x00\x05hello" + b"\x00" * 64)
        except ConnectionResetError:
            pass

    # Each client until its line is logged (a line a second at most): the counter grows
    # by its reason alone meanwhile.
    for provoke, reason, words in (
            (no_ca, "alert_unknown_ca",
             "does not trust the issuer of %s (alert unknown_ca): give clients the CA" % crt),
            (go_no_ca, "alert_bad_certificate", "rejected %s (alert bad_certificate" % crt),
            (tls11, "protocol_version", "no TLS version in common"),
            (weak_cipher, "no_shared_cipher", "no cipher suite in common"),
            (scanner, "other", "other than TLS, or a scanner")):
        before = _tls_fails(p, addr)
        lib.wait_until(lambda: provoke() or lines(words), 15, "a line saying %r" % words,
                       interval=0.2)
        after = _tls_fails(p, addr)
        grew = {k: after[k] - before[k] for k in after if after[k] != before[k]}
        check(list(grew) == [reason] and grew[reason] >= 1,
              "counted after %s: %r, expected %s alone" % (provoke.__name__, grew, reason))
        line = lines(words)[-1]
        check("conn 127.0.0.1:" in line and "on %s failed" % addr in line,
              "the line names the client and the listener: %r" % line)
    # Plain HTTP (answered 400, access-logged) and health checks (connect, close): counted,
    # neither logged as a failed handshake.
    before, logged = _tls_fails(p, addr), len(lines("TLS handshake"))
    lib.raw_exchange(p.port, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
    for _ in range(30):
        socket.create_connection(("127.0.0.1", p.port), timeout=10).close()
    lib.wait_until(lambda: _tls_fails(p, addr)["eof"] - before["eof"] == 30, 10,
                   "30 eof counted")
    eq(_tls_fails(p, addr)["http_request"] - before["http_request"], 1, "http_request counted")
    eq(len(lines("TLS handshake")), logged, "lines about TLS handshakes after a plain-HTTP "
       "request and 30 TCP connects closed at once")
    # A herd of clients without the CA: every one counted, a line a second in the log.
    before, logged = _tls_fails(p, addr), len(lines("alert unknown_ca"))
    t0 = time.monotonic()
    for _ in range(40):
        no_ca()
    lib.wait_until(lambda: _tls_fails(p, addr)["alert_unknown_ca"] -
                   before["alert_unknown_ca"] == 40, 10, "40 alert_unknown_ca counted")
    elapsed = time.monotonic() - t0
    herd = len(lines("alert unknown_ca")) - logged
    check(herd <= 1 + int(elapsed), "%d unknown_ca lines for 40 handshakes in %.1f s"
          % (herd, elapsed))
    # A client with the CA still gets through.
    eq(_peer_cn(p.port, os.path.join(d, "ca.crt"))[0], "handshakes", "a client with the CA")


def _client_hello():
    """The bytes of a real TLS ClientHello, as a client would send first."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="127.0.0.1")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def _closed_by_peer(sock):
    """Waits (up to the socket's timeout) for the peer to close: True when it did."""
    try:
        while True:
            b = sock.recv(4096)
            if not b:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def test_tls_handshake_deadline(t):
    """A TLS client that connected and sent nothing, or half a ClientHello, held its
    connection (and a max_connections slot) until idle_timeout, uncounted: plain HTTP has a
    10 s deadline for its request head, TLS had none for its handshake. A handshake gets
    that deadline now, and one not done in time is counted as reason `timeout`, not logged.
    A connection whose handshake completed still waits for its request until idle_timeout."""
    s = t.s
    d, key, crt = lib.serving_cert(t, "hs-deadline")
    p = t.proxy(registries=[s.anon_registry.conf("registry.anon.test")],
                listeners=[{"default": "registry.anon.test", "tls_cert": crt, "tls_key": key,
                            "idle_timeout": "300s"}])
    addr = "127.0.0.1:%d" % p.port
    ctx = ssl.create_default_context(cafile=os.path.join(d, "ca.crt"))
    done = ctx.wrap_socket(socket.create_connection(("127.0.0.1", p.port), timeout=10),
                           server_hostname="127.0.0.1")
    silent = socket.create_connection(("127.0.0.1", p.port))
    half = socket.create_connection(("127.0.0.1", p.port))
    hello = _client_hello()
    half.sendall(hello[:len(hello) // 2])
    try:
        for name, sock in (("a client sending nothing", silent),
                           ("a client sending half a ClientHello", half)):
            sock.settimeout(120)  # far below idle_timeout (300 s), far above the deadline
            check(_closed_by_peer(sock), "%s closed before idle_timeout" % name)
        lib.wait_until(lambda: _tls_fails(p, addr)["timeout"] == 2, 10, "2 timeouts counted")
        eq(_tls_fails(p, addr)["timeout"], 2, "handshakes counted as timeout")
        check(not [x for x in p.log_text().splitlines() if "TLS handshake" in x],
              "no line per timed-out handshake")
        # Accepted before both, and past the deadline now: its handshake is done, so it
        # waits for a request as long as idle_timeout lets it.
        done.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = lib.read_to_eof(done)
        check(got.startswith(b"HTTP/1.1 200"), "answer after the deadline: %r" % got[:100])
    finally:
        for sock in (done, silent, half):
            sock.close()


def _tls_get(port, ctx, session=None):
    """GET /v2/ over TLS offering `session`: (session after it, reused?, peer commonName)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as c:
            c.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            got = lib.read_to_eof(c)
            check(got.startswith(b"HTTP/1.1 200"), "answer over TLS: %r" % got[:100])
            cn = dict(x[0] for x in c.getpeercert()["subject"]).get("commonName")
            return c.session, c.session_reused, cn


def test_tls12_session_id_resumed_after_a_keep_alive_close(t):
    """A TLS 1.2 client resuming by session ID (no tickets: Java's and Windows' clients
    among others) resumed only after a `Connection: close` answer: a keep-alive connection
    the client closed with close_notify, or idle_timeout ended, was freed without a
    shutdown, and OpenSSL took that for a broken connection and dropped its session from the
    cache; OpenSSL 3 took a client's close without close_notify for a fatal error, which
    drops it too. The session stays now, as it does when the proxy closes (TLS 1.1 on does
    not void a session for a close without close_notify)."""
    d, key, crt = lib.serving_cert(t, "session-id")
    p = t.proxy(registries=[t.s.anon_registry.conf("registry.anon.test")],
                listeners=[{"default": "registry.anon.test", "tls_cert": crt, "tls_key": key,
                            "idle_timeout": "1s"}])
    ctx = ssl.create_default_context(cafile=os.path.join(d, "ca.crt"))
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_TICKET
    for end in ("client's close_notify", "client's bare TCP close", "idle_timeout"):
        session = None
        for attempt in ("first", "second"):
            with socket.create_connection(("127.0.0.1", p.port), timeout=10) as raw:
                with ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as c:
                    c.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
                    got = b""
                    while b"\r\n\r\n" not in got:
                        b = c.recv(65536)
                        check(b, "connection closed before the answer: %r" % got)
                        got += b
                    check(got.startswith(b"HTTP/1.1 200"), "answer over TLS: %r" % got[:100])
                    if attempt == "second":
                        check(c.session_reused, "session resumed after the %s" % end)
                    session = c.session
                    if end == "idle_timeout":
                        eq(lib.read_to_eof(c), b"", "what followed the answer")
                    elif end == "client's close_notify":
                        c.unwrap()  # as curl, Go and Java close
            # The proxy has let the connection go before the session is offered again.
            lib.wait_until(lambda: p.metrics().get(("regproxy_open_connections",
                                                    frozenset())) == 0,
                           10, "the connection to be closed on the proxy")


def test_tls_session_resumed_across_reload(t):
    """Every reload built every TLS listener's SSL_CTX again, its certificate unchanged or
    not: new session ticket keys, so every client lost TLS session resumption at each
    credential rotation or SIGHUP. A listener keeps its SSL_CTX while tls_cert and tls_key
    hold the same bytes, and takes the new pair when they change."""
    p, (d1, key1, crt1), (d2, key2, crt2), live_key, live_crt = \
        _rotating_tls_proxy(t, t.s.token_registry, "registry.token.test")
    pwfile = os.path.join(p.dir, "registry.token.test.pw")
    check(os.path.exists(pwfile), "password file %s missing" % pwfile)
    ctxs = {}
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = ssl.create_default_context(cafile=os.path.join(d1, "ca.crt"))
        ctx.load_verify_locations(os.path.join(d2, "ca.crt"))
        ctx.minimum_version = ctx.maximum_version = version
        ctxs[version.name] = ctx
    sessions = {}
    for name, ctx in ctxs.items():
        sess, _, cn = _tls_get(p.port, ctx)
        eq(cn, "first", "certificate served (%s)" % name)
        sess, reused, _ = _tls_get(p.port, ctx, sess)
        check(reused, "%s session resumed with no reload in between" % name)
        sessions[name] = sess
    # A rotated credential file (the watch reloads), then a SIGHUP: tls_cert/tls_key as
    # they were, and the same bytes rewritten by rename (a secret volume's swap).
    with open(pwfile) as f:
        pw = f.read()
    with open(pwfile + ".new", "w") as f:
        f.write("rotated-" + pw)
    os.chmod(pwfile + ".new", 0o600)
    os.rename(pwfile + ".new", pwfile)
    lib.wait_until(lambda: "reload (a watched file changed): configuration applied"
                   in p.log_text(), 15, "the reload after the password file changed")
    _replace(key1, live_key)
    _replace(crt1, live_crt)
    os.kill(p.pid, signal.SIGHUP)
    lib.wait_until(lambda: "reload (SIGHUP): configuration applied" in p.log_text(), 10,
                   "the reload on SIGHUP")
    for name, ctx in ctxs.items():
        sess, reused, cn = _tls_get(p.port, ctx, sessions[name])
        check(reused, "%s session resumed across reloads that left tls_cert alone" % name)
        eq(cn, "first", "certificate served (%s)" % name)
        sessions[name] = sess
    # The certificate rotated: the new one is served, old sessions are not resumed on it.
    _replace(key2, live_key)
    _replace(crt2, live_crt)
    os.kill(p.pid, signal.SIGHUP)
    lib.wait_until(lambda: p.log_text().count("reload (SIGHUP): configuration applied") >= 2,
                   10, "the reload after the certificate rotated")
    for name, ctx in ctxs.items():
        _, reused, cn = _tls_get(p.port, ctx, sessions[name])
        eq(cn, "second", "certificate served after it rotated (%s)" % name)
        check(not reused, "%s session of the old certificate resumed" % name)
