# SPDX-License-Identifier: Apache-2.0
"""`regproxy check` and serve's start-up checks: one line per registry, `ok` or the precise
reason (credentials rejected by the realm, none configured where the realm wants some,
realm not allowed, TLS verification failed, image not found, unreachable), a non-zero exit
when any fails."""
import base64
import datetime
import json
import os
import pty
import select
import signal
import socket
import struct
import subprocess
import threading
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import lib
from lib import check, eq


def _run_check(t, p):
    r = subprocess.run([t.s.bin, "check", "-c", p.conf_path], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=120, env=lib.clean_env())
    out = r.stdout.decode()
    lines = {}
    for line in out.splitlines():
        if line.startswith("registry "):
            name, _, verdict = line[len("registry "):].partition(": ")
            lines[name] = verdict
    return r.returncode, lines, out + r.stderr.decode()


def test_check_reports_each_registry(t):
    s = t.s
    tok = s.token_registry
    closed = lib.free_port()  # nothing listens there
    regs = [
        tok.conf("good.test", test_image="ns/multi:v1", test_login="yes"),
        tok.conf("wrongpass.test", password="not-the-password", test_image="ns/multi:v1",
                 test_login="yes"),
        tok.conf("missing.test", test_image="ns/does-not-exist:v1", test_login="yes"),
        tok.conf("notallowed.test", token_realms="https://localhost:1/token",
                 test_image="ns/multi:v1", test_login="yes"),
        dict(tok.conf("wrongca.test", test_image="ns/multi:v1", test_login="yes"),
             ca_file=None),
        # No credentials at all: the realm refuses the anonymous token, and the line must
        # not claim that credentials were rejected.
        dict(tok.conf("nocreds.test", test_image="ns/multi:v1", test_login="yes"), user=None,
             password=None),
        {"name": "down.test", "url": "https://127.0.0.1:%d" % closed, "test_login": "yes"},
        {"name": "skipped.test", "url": "https://127.0.0.1:%d" % closed, "test_login": "no"},
    ]
    p = t.proxy(registries=regs, start=False)
    p.ports = [lib.free_port()]
    p.write_conf()
    rc, lines, out = _run_check(t, p)
    check(rc != 0, "check exited 0 although registries fail:\n" + out)
    eq(lines.get("good.test", "")[:2], "ok", "good.test verdict (%s)" % out)
    expect = {
        "wrongpass.test": "FAILED: credentials rejected by realm https://127.0.0.1:",
        "missing.test": "FAILED: image not found: ns/does-not-exist:v1",
        "notallowed.test": "FAILED: realm not allowed: https://127.0.0.1:",
        "wrongca.test": "FAILED: TLS verification failed",
        "down.test": "FAILED: unreachable",
        "nocreds.test": "FAILED: no credentials configured, and realm https://127.0.0.1:",
        "skipped.test": "skipped",
    }
    for name, prefix in expect.items():
        check(lines.get(name, "").startswith(prefix),
              "check line for %s: expected %r..., got %r\n%s" % (name, prefix, lines.get(name),
                                                                 out))
    check(s.sa_password not in out, "the password appears in check's output")
    # The token log line says so too (it said the credentials, of which there were none,
    # were rejected).
    tok_lines = [x for x in out.splitlines() if "token registry=nocreds.test" in x]
    check(tok_lines and all("anonymous token refused" in x for x in tok_lines),
          "token log lines for nocreds.test: %r" % tok_lines)
    # All good: exit 0.
    p2 = t.proxy(registries=[regs[0]], start=False)
    p2.ports = [lib.free_port()]
    p2.write_conf()
    rc, lines, out = _run_check(t, p2)
    eq(rc, 0, "check exit status with a good registry only (%s)" % out)


def test_serve_logs_startup_checks_and_keeps_serving(t):
    s = t.s
    tok = s.token_registry
    closed = lib.free_port()
    p = t.proxy(registries=[
        tok.conf("registry.token.test", test_image="ns/multi:v1", test_login="yes"),
        {"name": "down.test", "url": "https://127.0.0.1:%d" % closed, "test_login": "yes"}])
    lib.wait_until(lambda: "check registry=down.test" in p.log_text()
                   and "check registry=registry.token.test" in p.log_text(), 30,
                   "start-up check lines in the log")
    text = p.log_text()
    check("check registry=registry.token.test: ok" in text, "no ok line:\n" + text[-2000:])
    check("check registry=down.test: FAILED: unreachable" in text,
          "no failure line:\n" + text[-2000:])
    _, tags = t.pull(p, "ns/multi:v1")
    eq(tags["v1"], tok.pushed["ns/multi:v1"]["digest"], "pull while another registry fails")
    check(s.sa_password not in p.log_text(), "the password appears in the log")


def test_check_loads_listener_files(t):
    """A listener's key that is not its certificate's, or an htpasswd file with a line that is
    not user:hash, kept serve from starting while `check` said the configuration was ok:
    check loads them as serve does."""
    s = t.s
    _, key, crt = lib.serving_cert(t, "check-a")
    _, other_key, _ = lib.serving_cert(t, "check-b")
    bad_htp = os.path.join(t.tmp, "bad.htpasswd")
    with open(bad_htp, "w") as f:
        f.write("justaname\n")
    reg = s.anon_registry.conf("registry.anon.test", test_login="no")
    cases = [({"tls_cert": crt, "tls_key": other_key}, "cannot load tls_cert/tls_key"),
             ({"htpasswd": bad_htp}, "bad.htpasswd:1: expected user:hash"),
             ({"tls_cert": crt, "tls_key": key, "htpasswd": lib.htpasswd_file(t, "n", "pw")},
              None)]
    for keys, why in cases:
        p = t.proxy(registries=[reg],
                    listeners=[dict({"default": "registry.anon.test"}, **keys)], start=False)
        p.ports = [lib.free_port()]
        p.write_conf()
        rc, _, out = _run_check(t, p)
        if why is None:
            eq(rc, 0, "check of good listener files (%s)" % out)
            continue
        check(rc != 0 and why in out and "configuration ok" not in out,
              "check with %r: exit %d, expected a failure saying %r:\n%s" % (keys, rc, why, out))


def _openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def test_check_says_which_tls_file_is_wrong(t):
    """An EC key given with an RSA certificate was reported as OpenSSL's "no certificate
    assigned", and a chain file with the intermediate before the server's own certificate
    as "key values mismatch": both now say the key is not the first certificate's."""
    s = t.s
    d = os.path.join(t.tmp, "pki")
    os.makedirs(d)
    f = lambda name: os.path.join(d, name)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f("ca.key"), "-out",
             f("ca.crt"), "-days", "1", "-subj", "/CN=test-ca", "-addext",
             "basicConstraints=critical,CA:TRUE")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f("rsa.key"), "-out",
             f("rsa.csr"), "-subj", "/CN=127.0.0.1")
    _openssl("x509", "-req", "-in", f("rsa.csr"), "-CA", f("ca.crt"), "-CAkey", f("ca.key"),
             "-CAcreateserial", "-out", f("rsa.crt"), "-days", "1")
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out",
             f("ec.key"))
    with open(f("reversed.crt"), "wb") as out:
        for name in ("ca.crt", "rsa.crt"):
            with open(f(name), "rb") as part:
                out.write(part.read())
    reg = s.anon_registry.conf("registry.anon.test", test_login="no")
    for crt, key in (("rsa.crt", "ec.key"), ("reversed.crt", "rsa.key")):
        p = t.proxy(registries=[reg], start=False,
                    listeners=[{"default": "registry.anon.test", "tls_cert": f(crt),
                                "tls_key": f(key)}])
        p.ports = [lib.free_port()]
        p.write_conf()
        rc, _, out = _run_check(t, p)
        want = "tls_key %s is not the private key of the first certificate in tls_cert %s" % (
            f(key), f(crt))
        check(rc != 0 and want in out, "check of tls_cert %s with tls_key %s: exit %d, "
              "expected a failure saying %r:\n%s" % (crt, key, rc, want, out))


def _cert_valid_from(d, not_before, not_after):
    """A self-signed certificate and key for 127.0.0.1 valid between the two times."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .sign(key, hashes.SHA256()))
    os.makedirs(d)
    crt, key_path = os.path.join(d, "tls.crt"), os.path.join(d, "tls.key")
    with open(crt, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return crt, key_path


def test_expired_tls_cert_warned(t):
    """An expired serving certificate (or one not valid yet) loaded without a word: `check`
    said the configuration was ok, serve started, and only each client's failed handshake
    told. It still loads (a client that does not verify can use it), with a warning naming
    the date."""
    s = t.s
    now = datetime.datetime.now(datetime.timezone.utc)
    day = datetime.timedelta(days=1)
    cases = (("expired", now - 2 * day, now - day, "expired on "),
             ("future", now + day, now + 2 * day, "is not valid until "))
    for name, start, end, words in cases:
        crt, key = _cert_valid_from(os.path.join(t.tmp, name), start, end)
        p = t.proxy(registries=[s.anon_registry.conf("registry.anon.test", test_login="no")],
                    listeners=[{"default": "registry.anon.test", "tls_cert": crt,
                                "tls_key": key}], start=False)
        p.ports = [lib.free_port()]
        p.write_conf()
        rc, _, out = _run_check(t, p)
        want = "tls_cert %s %s" % (crt, words)
        check(rc == 0 and want in out and "configuration ok" in out,
              "check of a tls_cert valid from %s to %s: exit %d, expected ok with a warning "
              "%r:\n%s" % (start, end, rc, want, out))


def test_unusable_htpasswd_entries_warned(t):
    """{SHA} and locked htpasswd entries failed every login without a word at load: check
    and serve name each (file, line, user), never its hash, and the good entry still works."""
    s = t.s
    htp = os.path.join(t.tmp, "mixed.htpasswd")
    with open(lib.htpasswd_file(t, "node", "node-secret")) as good, open(htp, "w") as f:
        f.write(good.read().strip() + "\n")
        f.write("old:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\nlocked:!$2y$05$abcdefghijklmnopqrstuu"
                "J3q0Y1Yb3m0m3Yf8k2m1Zq0a4b5c6d7e\n")
    want = ["mixed.htpasswd:2: user 'old' can never log in: {SHA}",
            "mixed.htpasswd:3: user 'locked' can never log in: the entry is locked"]
    reg = s.anon_registry.conf("registry.anon.test", test_login="no")
    p = t.proxy(registries=[reg], listeners=[{"default": "registry.anon.test", "htpasswd": htp}],
                start=False)
    p.ports = [lib.free_port()]
    p.write_conf()
    rc, _, out = _run_check(t, p)
    eq(rc, 0, "check with unusable entries beside a good one (%s)" % out)
    for w in want:
        eq(out.count(w), 1, "check's lines saying %r:\n%s" % (w, out))
    p.start()
    eq(lib.ping_from(p.port, b"node:node-secret"), 200, "the good entry's login")
    log = p.log_text()
    for w in want:
        eq(log.count(w), 1, "serve's log lines saying %r" % w)
    for secret in ("W6ph5Mm5Pz8GgiULbPgzG37mj9g", "abcdefghijklmnopqrstuu"):
        check(secret not in out + log, "a hash in the output")


def test_http_registry_credentials_warned(t):
    """Credentials for a plain http:// registry went out in clear text without a word:
    check and serve warn about that registry, and only that one."""
    s = t.s
    closed = lib.free_port()  # test_login = no: nothing is dialed
    regs = [{"name": "plain.test", "url": "http://127.0.0.1:%d" % closed, "user": "u",
             "password": "clear-text-pw", "test_login": "no"},
            {"name": "anon.test", "url": "http://127.0.0.1:%d" % closed, "test_login": "no"},
            s.anon_registry.conf("registry.anon.test", test_login="no")]
    want = ('[registry "plain.test"] has credentials but its url is plain http://: they '
            'travel in clear text')
    p = t.proxy(registries=regs, start=False)
    p.ports = [lib.free_port()]
    p.write_conf()
    rc, _, out = _run_check(t, p)
    eq(rc, 0, "check (%s)" % out)
    warnings = [ln for ln in out.splitlines() if ln.startswith("warning: ")]
    eq(len(warnings), 1, "check's warnings:\n%s" % out)
    check(want in warnings[0], "check's warning: %r" % warnings[0])
    p.start()
    log = p.log_text()
    eq(log.count(want), 1, "serve's warnings about clear-text credentials")
    check("clear-text-pw" not in out + log, "the password in the output")


def test_encrypted_tls_key_refused_not_prompted(t):
    """A tls_key with a passphrase made OpenSSL ask for it on the controlling terminal: check
    and serve started from a shell waited for input, and a reload (SIGHUP, or the watch
    seeing a rotated key) held the event loop, and every pull, until someone typed. Such a
    key is refused, saying why."""
    s = t.s
    d = os.path.join(t.tmp, "enc")
    os.makedirs(d)
    key, crt = os.path.join(d, "tls.key"), os.path.join(d, "tls.crt")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-passout", "pass:abcd",
                    "-keyout", key, "-out", crt, "-days", "1", "-subj", "/CN=enc"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p = t.proxy(registries=[s.anon_registry.conf("registry.anon.test", test_login="no")],
                listeners=[{"default": "registry.anon.test", "tls_cert": crt, "tls_key": key}],
                start=False)
    p.ports = [lib.free_port()]
    p.write_conf()
    pid, fd = pty.fork()
    if pid == 0:  # a terminal of its own, as from an operator's shell
        try:
            os.execve(t.s.bin, [t.s.bin, "check", "-c", p.conf_path], lib.clean_env())
        finally:
            os._exit(127)
    out, deadline, status = b"", time.monotonic() + 20, None
    try:
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 0.2)[0]:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    chunk = b""
                out += chunk
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = st
                break
            if b"pass phrase" in out:
                break
    finally:
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    text = out.decode(errors="replace")
    check(b"pass phrase" not in out, "check asked for the key's passphrase:\n" + text)
    check(status is not None and os.WEXITSTATUS(status) == 1 and "encrypted" in text,
          "check with an encrypted tls_key: expected exit 1 saying it is encrypted, got "
          "status %r:\n%s" % (status, text))


def test_check_waits_for_every_registry(t):
    """A registry whose test_image is malformed fails at once, before any connection: the
    checks of the registries after it must still run and be printed (they were dropped,
    the loop ending as soon as that first verdict came in, and their memory leaked)."""
    tok = t.s.token_registry
    regs = [tok.conf("badimage.test", test_image="foo:bar:baz", test_login="yes"),
            tok.conf("good.test", test_image="ns/multi:v1", test_login="yes")]
    p = t.proxy(registries=regs, start=False)
    p.ports = [lib.free_port()]
    p.write_conf()
    rc, lines, out = _run_check(t, p)
    eq(rc, 1, "check exit status (%s)" % out)
    check(lines.get("badimage.test", "").startswith("FAILED: test_image 'foo:bar:baz'"),
          "badimage.test verdict: %r\n%s" % (lines.get("badimage.test"), out))
    eq(lines.get("good.test", "")[:2], "ok", "good.test verdict, after badimage.test (%s)" % out)
    check("Sanitizer" not in out, "sanitizer report from check:\n" + out)


def test_check_basic_registry_verdicts(t):
    """A Basic-auth registry: with no credentials configured the line says so and how to
    add them (it said "credentials rejected by the registry (registry asks for Basic
    credentials, none configured)", blaming credentials that do not exist); a wrong
    password is a rejection; the right one passes."""
    b = t.s.basic_registry
    regs = [dict(b.conf("nocreds.test", test_image="ns/multi:v1", test_login="yes"),
                 user=None, password=None),
            b.conf("wrongpass.test", password="not-the-password", test_image="ns/multi:v1",
                   test_login="yes"),
            b.conf("good.test", test_image="ns/multi:v1", test_login="yes")]
    # docker login's identity token only: for a token realm, not Basic.
    idfile = os.path.join(t.tmp, "config.json")
    with open(idfile, "w") as f:
        json.dump({"auths": {b.hostport: {"auth": base64.b64encode(b"<token>:").decode(),
                                          "identitytoken": "refresh-me"}}}, f)
    os.chmod(idfile, 0o600)
    regs.append(dict(b.conf("idtoken.test", test_image="ns/multi:v1", test_login="yes"),
                     user=None, password=None, auth_file=idfile))
    p = t.proxy(registries=regs, start=False)
    p.ports = [lib.free_port()]
    p.write_conf()
    rc, lines, out = _run_check(t, p)
    eq(rc, 1, "check exit status (%s)" % out)
    got = lines.get("nocreds.test", "")
    check(got.startswith("FAILED: no credentials configured") and "rejected" not in got,
          "check line for a Basic registry without credentials: %r\n%s" % (got, out))
    check(lines.get("wrongpass.test", "").startswith("FAILED: credentials rejected by the "
                                                     "registry"),
          "check line for a wrong Basic password: %r\n%s" % (lines.get("wrongpass.test"), out))
    eq(lines.get("good.test", "")[:2], "ok", "good.test verdict (%s)" % out)
    check(lines.get("idtoken.test", "").startswith(
        "FAILED: the registry asks for Basic credentials, and the auth_file gives only an "
        "identity token"), "check line for an identity token only: %r\n%s"
        % (lines.get("idtoken.test"), out))


def test_check_ping_401_but_anonymous_pulls(t):
    """A registry that answers 401 to /v2/ (a Basic challenge, or none at all) but serves its
    images anonymously: a pull, which never pings, works, yet check said FAILED (no
    credentials configured / no usable challenge). With a test_image, a 401 to the ping
    that rejected nothing we sent is not the verdict: the manifest request is."""
    import rawup
    m, md, _, _, _, _ = rawup.image()

    def handler(challenge):
        def h(r):
            if r.path == "/v2/":
                r.send(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                       [("WWW-Authenticate", challenge)] if challenge else [])
            elif r.path == "/v2/ns/x/manifests/v1":
                r.answer(m, "application/vnd.oci.image.manifest.v1+json", md)
            else:
                r.send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
        return h

    basic = rawup.RawUpstream(t, handler('Basic realm="r"'))
    bare = rawup.RawUpstream(t, handler(None))
    regs = [basic.conf("basic.test", test_image="ns/x:v1", test_login="yes"),
            bare.conf("bare.test", test_image="ns/x:v1", test_login="yes"),
            # Its test image is not there, and the 401 to the ping still is not the reason.
            basic.conf("missing.test", test_image="ns/gone:v1", test_login="yes")]
    p = t.proxy(registries=regs, start=False)
    p.ports = [lib.free_port()]
    p.write_conf()
    rc, lines, out = _run_check(t, p)
    for name in ("basic.test", "bare.test"):
        check(lines.get(name, "").startswith("ok ("),
              "check line for %s, whose images a pull gets anonymously: %r\n%s"
              % (name, lines.get(name), out))
    check(lines.get("missing.test", "").startswith("FAILED: image not found: ns/gone:v1"),
          "check line for missing.test: %r\n%s" % (lines.get("missing.test"), out))
    eq(rc, 1, "check exit status (%s)" % out)
    # As a pull sees it.
    p.start()
    r = p.get("/v2/basic.test/ns/x/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, r.body), (200, m), "the manifest pulled anonymously through the proxy")


def test_check_tls_handshake_failure_not_called_verification(t):
    """An https:// url whose server speaks plain HTTP (OpenSSL: wrong version number), or
    that resets the connection during the handshake, was reported as "TLS verification
    failed": no certificate was ever seen, and the operator went looking at ca_file. Those
    are handshake failures; a certificate that does not verify still says verification."""
    def server(answer):
        """A listener that reads the ClientHello and answers it with answer(conn)."""
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(8)
        t.defer(ls.close)

        def run():
            while True:
                try:
                    c, _ = ls.accept()
                except OSError:
                    return
                c.recv(4096)
                answer(c)
                c.close()
        threading.Thread(target=run, daemon=True).start()
        return ls.getsockname()[1]

    # What an HTTP server answers to bytes that are not HTTP.
    plain = server(lambda c: c.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                       b"Connection: close\r\n\r\n"))
    reset = server(lambda c: c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                          struct.pack("ii", 1, 0)))
    tok = t.s.token_registry
    regs = [{"name": "plain.test", "url": "https://127.0.0.1:%d" % plain,
             "test_login": "yes"},
            {"name": "reset.test", "url": "https://127.0.0.1:%d" % reset,
             "test_login": "yes"},
            dict(tok.conf("wrongca.test", test_image="ns/multi:v1", test_login="yes"),
                 ca_file=None)]
    p = t.proxy(registries=regs, start=False)
    p.ports = [lib.free_port()]
    p.write_conf()
    rc, lines, out = _run_check(t, p)
    eq(rc, 1, "check exit status (%s)" % out)
    for name in ("plain.test", "reset.test"):
        check(lines.get(name, "").startswith("FAILED: TLS handshake failed: https://"),
              "check line for %s: %r\n%s" % (name, lines.get(name), out))
    check(lines.get("wrongca.test", "").startswith("FAILED: TLS verification failed"),
          "check line for a certificate that does not verify: %r\n%s"
          % (lines.get("wrongca.test"), out))


def test_check_registry_without_manifest_head(t):
    """A registry that answers HEAD on manifests with 405 (or 501) and GET with the manifest:
    a pull (which GETs) works, yet check said "manifest request ... answered 405". Its
    manifest request falls back to a GET, as a pull's is."""
    import rawup
    m, md, _, _, _, _ = rawup.image()

    def handler(code):
        def h(r):
            if r.path == "/v2/":
                r.send(200, b"{}")
            elif r.path == "/v2/ns/x/manifests/v1" and r.method == "HEAD":
                r.send(code, b"")
            elif r.path == "/v2/ns/x/manifests/v1":
                r.answer(m, "application/vnd.oci.image.manifest.v1+json", md)
            else:
                r.send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
        return h

    ups = {code: rawup.RawUpstream(t, handler(code)) for code in (405, 501)}
    regs = [up.conf("h%d.test" % code, test_image="ns/x:v1", test_login="yes")
            for code, up in ups.items()]
    regs.append(ups[405].conf("missing.test", test_image="ns/gone:v1", test_login="yes"))
    p = t.proxy(registries=regs, start=False)
    p.ports = [lib.free_port()]
    p.write_conf()
    rc, lines, out = _run_check(t, p)
    for code in ups:
        check(lines.get("h%d.test" % code, "").startswith("ok ("),
              "check line for a registry answering HEAD with %d: %r\n%s"
              % (code, lines.get("h%d.test" % code), out))
    check(lines.get("missing.test", "").startswith("FAILED: image not found: ns/gone:v1"),
          "check line for missing.test: %r\n%s" % (lines.get("missing.test"), out))
    eq(rc, 1, "check exit status (%s)" % out)


def test_check_anonymous_token_without_access(t):
    """A realm that hands out anonymous tokens, and a registry that refuses the manifest to
    them (one that wants an account for every image may): with no credentials configured, check said "access to IMAGE denied (401): check the
    account's permissions", about an account that does not exist. It says none is
    configured, and how to add one; with credentials, permissions are still the reason."""
    import rawup

    def h(r):
        challenge = 'Bearer realm="%s/token",service="s"' % up.url
        authed = (r.h("authorization") or "").startswith("Bearer ")
        if r.path.startswith("/token"):
            r.send(200, b'{"token": "anonymous-token"}', [("Content-Type", "application/json")])
        elif r.path == "/v2/" and authed:
            r.send(200, b"{}")
        else:
            r.send(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                   [("WWW-Authenticate", challenge + ',error="insufficient_scope"'
                     if authed else challenge)])
    up = rawup.RawUpstream(t, h)
    regs = [up.conf("anon.test", token_realms=up.url + "/token", test_image="ns/x:v1",
                    test_login="yes"),
            up.conf("creds.test", token_realms=up.url + "/token", user="u", password="pw",
                    test_image="ns/x:v1", test_login="yes")]
    p = t.proxy(registries=regs, start=False)
    p.ports = [lib.free_port()]
    p.write_conf()
    rc, lines, out = _run_check(t, p)
    eq(rc, 1, "check exit status (%s)" % out)
    got = lines.get("anon.test", "")
    check(got.startswith("FAILED: access to ns/x:v1 denied (401) to an anonymous pull: no "
                         "credentials configured") and "account" not in got,
          "check line with no credentials configured: %r\n%s" % (got, out))
    check(lines.get("creds.test", "").startswith("FAILED: access to ns/x:v1 denied (401): "
                                                 "check the account's permissions"),
          "check line with credentials: %r\n%s" % (lines.get("creds.test"), out))


def test_check_ping_401_to_a_token_but_anonymous_pulls(t):
    """A Bearer registry whose /v2/ answers 401 even to the anonymous token its realm gives
    (a token with no scope grants nothing there), while its repositories' anonymous tokens
    pull: a pull, which never pings, works. The ping's 401 came back as the answer after the
    token retry (not as an auth failure), and check said FAILED 'ping answered 401'; it
    rejected nothing configured, so the manifest request is the verdict, as for a 401 to the
    ping with a Basic challenge or none."""
    import rawup
    m, md, _, _, _, _ = rawup.image()

    def h(r):
        if r.path.startswith("/token"):
            tok = "pull" if "scope=repository" in r.path else "bare"
            r.send(200, json.dumps({"token": tok, "expires_in": 600}).encode(),
                   [("Content-Type", "application/json")])
        elif r.path == "/v2/ns/x/manifests/v1" and r.h("authorization") == "Bearer pull":
            r.answer(m, "application/vnd.oci.image.manifest.v1+json", md)
        elif r.path.startswith("/v2/ns/") and r.h("authorization") == "Bearer pull":
            r.send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
        else:
            scope = "" if r.path == "/v2/" else ',scope="repository:ns/%s:pull"' % (
                r.path.split("/")[3])
            r.send(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                   [("WWW-Authenticate", 'Bearer realm="%s/token",service="svc"%s'
                     % (up.url, scope))])
        return False

    up = rawup.RawUpstream(t, h)
    regs = [up.conf("tok.test", test_image="ns/x:v1", test_login="yes"),
            up.conf("missing.test", test_image="ns/gone:v1", test_login="yes")]
    p = t.proxy(registries=regs, start=False)
    p.ports = [lib.free_port()]
    p.write_conf()
    rc, lines, out = _run_check(t, p)
    check(lines.get("tok.test", "").startswith("ok (ping answered 401, anonymous"),
          "check line for tok.test, whose images a pull gets anonymously: %r\n%s"
          % (lines.get("tok.test"), out))
    check(lines.get("missing.test", "").startswith("FAILED: image not found: ns/gone:v1"),
          "check line for missing.test: %r\n%s" % (lines.get("missing.test"), out))
    eq(rc, 1, "check exit status (%s)" % out)
    p.start()
    r = p.get("/v2/tok.test/ns/x/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, r.body), (200, m), "the manifest pulled anonymously through the proxy")
