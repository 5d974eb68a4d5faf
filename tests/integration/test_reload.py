# SPDX-License-Identifier: Apache-2.0
"""Credential rotation: the upstream's password changes and the credential file is
rewritten while a large pull is in flight; SIGHUP (or the file watch) applies it without
dropping the pull, and the next pull uses the new credentials. A broken configuration on
SIGHUP leaves the proxy serving with the old one."""
import base64
import http.server
import json
import os
import secrets
import signal
import socket
import threading
import time

import lib
from lib import check, eq


def _write_pw(path, pw):
    with open(path + ".new", "w") as f:
        f.write(pw + "\n")
    os.chmod(path + ".new", 0o600)
    os.rename(path + ".new", path)


def test_rotation_during_pull(t):
    s = t.s
    reg = s.token_registry
    old = s.sa_password
    new = "sa-" + secrets.token_hex(16)
    p = t.proxy(registries=[reg.conf("registry.token.test")])
    pwfile = os.path.join(p.dir, "registry.token.test.pw")
    check(os.path.exists(pwfile), "password file %s missing" % pwfile)
    layer = max(lib.image_manifests(reg, "ns/large:v1")[0]["layers"], key=lambda x: x["size"])
    c, body, length = lib.slow_get_start(p.port, "/v2/ns/large/blobs/%s" % layer["digest"])
    try:
        s.write_accounts({}, sa_password=new)
        _write_pw(pwfile, new)
        os.kill(p.pid, signal.SIGHUP)
        lib.wait_until(lambda: "reload (SIGHUP): configuration applied" in p.log_text(), 10,
                       "the reload to be applied")
        got, digest = lib.slow_get_finish(c, body, length)
        eq((got, digest), (layer["size"], layer["digest"]), "the blob in flight across the reload")
        # The next pull needs a new token, which only the new password can get.
        mark = time.time()
        _, tags = t.pull(p, "ns/multi-v2s2:v1")
        eq(tags["v1"], reg.pushed["ns/multi-v2s2:v1"]["digest"], "pull after rotation")
        fetched = s.issuer.fetches(lib.SA_USER, since=mark)
        check(fetched, "no token fetched after the reload (tokens were not dropped?)")
        check(new not in p.log_text() and old not in p.log_text(),
              "a password appears in the proxy log")
    finally:
        s.write_accounts({}, sa_password=old)


def _wrong_password_proxy(t, reg):
    """A proxy whose password file for reg is wrong (checked: a 502 UNAUTHORIZED); (proxy, that
    file)."""
    p = t.proxy(registries=[reg.conf("registry.token.test", password="wrong-at-first")])
    r = p.get("/v2/ns/multi/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 502, "manifest with a wrong password")
    eq([e["code"] for e in r.json()["errors"]], ["UNAUTHORIZED"], "error code")
    eq(r.header("WWW-Authenticate"), None, "a challenge to the anonymous client")
    return p, os.path.join(p.dir, "registry.token.test.pw")


def test_file_change_triggers_reload(t):
    s = t.s
    reg = s.token_registry
    old = s.sa_password
    p, pwfile = _wrong_password_proxy(t, reg)
    _write_pw(pwfile, old)
    lib.wait_until(lambda: "reload (a watched file changed)" in p.log_text(), 15,
                   "the proxy to notice the rewritten password file")
    r = p.get("/v2/ns/multi/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 200, "manifest after the password file was fixed")


def test_broken_config_keeps_serving(t):
    s = t.s
    reg = s.anon_registry
    p = t.proxy(registries=[reg.conf("registry.anon.test")])
    r = p.get("/v2/ns/multi/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 200, "manifest before the reload")
    with open(p.conf_path, "a") as f:
        f.write("\n[registry \"broken\"]\nnot a key value line\n")
    os.kill(p.pid, signal.SIGHUP)
    lib.wait_until(lambda: "reload (SIGHUP) refused" in p.log_text(), 10,
                   "the refused reload to be logged")
    check("regproxy.conf:" in p.log_text().split("reload (SIGHUP) refused")[1][:300],
          "the refusal does not name the file and line:\n" + p.log_text()[-1500:])
    r = p.get("/v2/ns/multi/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 200, "manifest after the refused reload")
    check(p.proc.alive(), "the proxy died")


def _sighup(p, n, what="applied"):
    """SIGHUP, then waits for the proxy's n-th reload line saying `what`."""
    os.kill(p.pid, signal.SIGHUP)
    key = {"applied": "reload (SIGHUP): configuration applied",
           "refused": "reload (SIGHUP) refused"}[what]
    lib.wait_until(lambda: p.log_text().count(key) >= n, 10, "reload %d (%s)" % (n, what))


def test_reload_offline_change_refused(t):
    """A registry going off or on line is a restart: a reload that tried used to keep it
    offline but take test_login from the new file, and log in to a registry that must never
    be contacted."""
    s = t.s
    reg = s.anon_registry
    p = t.proxy(registries=[reg.conf("registry.anon.test")])
    p.cache["offline"] = "yes"
    p.write_conf()
    _sighup(p, 1, "refused")
    check("offline setting changed" in p.log_text().split("reload (SIGHUP) refused")[1][:300],
          "the refusal does not say why:\n" + p.log_text()[-800:])
    r = p.get("/v2/ns/multi/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 200, "the registry, still on line, after the refused reload")


def test_reload_max_size_and_restart_only_keys(t):
    """max_size is applied by a reload (evicting down to it, /metrics showing it); a new
    admin listen address is said to need a restart rather than silently kept."""
    s = t.s
    reg = s.anon_registry
    p = t.proxy(registries=[reg.conf("registry.anon.test")], cache={"max_size": "1G"})
    t.pull(p, "ns/multi:v1")
    check(lib.cache_bytes(p.cache_dir) > 300 * 1024, "ns/multi:v1 not cached")
    p.cache["max_size"] = "100K"
    old_admin = p.admin_port
    p.admin_port = lib.free_port()
    p.write_conf()
    p.admin_port = old_admin
    _sighup(p, 1)
    check("[admin] listen changed; it applies at the next start" in p.log_text(),
          "no word of the admin address change:\n" + p.log_text()[-800:])
    lib.wait_until(lambda: lib.cache_bytes(p.cache_dir) <= 100 * 1024, 5,
                   "the store to shrink to the new max_size")
    m = p.metrics()
    eq(m.get(("regproxy_cache_max_size_bytes", frozenset())), 100 * 1024,
       "regproxy_cache_max_size_bytes after the reload")


def test_reload_lowers_log_level_from_debug(t):
    """log_level = debug lowered by a reload takes effect (it used to stay debug until a
    restart; only -v on the command line keeps debug)."""
    s = t.s
    reg = s.anon_registry
    p = t.proxy(registries=[reg.conf("registry.anon.test")], admin={"log_level": "debug"})
    p.admin_keys["log_level"] = "warn"
    p.write_conf()
    os.kill(p.pid, signal.SIGHUP)
    time.sleep(2)  # the reload is logged at info: nothing says it is done
    r = p.get("/v2/", headers={"X-Probe": "1"})
    eq(r.status, 200, "GET /v2/ after the reload")
    rid = r.header("X-Request-Id")
    time.sleep(1)
    check("id=%s " % rid not in p.log_text(),
          "an access line (info) logged after log_level was lowered to warn")


def test_reload_restarts_login_checks(t):
    """A reload checks each registry anew: a registry no longer checked (test_login = no)
    says skipped, not its last verdict; one checked again says what the new check found."""
    s = t.s
    reg = s.anon_registry
    conf = reg.conf("registry.anon.test")
    conf["test_login"] = "yes"
    conf["test_image"] = "ns/multi:v1"
    p = t.proxy(registries=[conf])

    def check_state():
        return json.loads(p.admin("/readyz").body)["registries"]["registry.anon.test"]["check"]
    lib.wait_until(lambda: check_state() == "ok", 15, "the start-up check to pass")
    p.registries[0]["test_login"] = "no"
    p.write_conf()
    _sighup(p, 1)
    eq(check_state(), "skipped", "the check state once test_login = no")
    p.registries[0]["test_login"] = "yes"
    p.registries[0]["test_image"] = "ns/nothing-here:v1"
    p.write_conf()
    _sighup(p, 2)
    lib.wait_until(lambda: check_state() == "failed", 15, "the new check to fail")


def test_rotation_while_config_broken_applied_once_fixed(t):
    """A credential rotated while the configuration file is broken: the reload is refused,
    and applied once the file is fixed, without a SIGHUP (refused reloads used to mark the
    rotated file as seen, so the rotation waited for a SIGHUP nobody knew was needed)."""
    s = t.s
    reg = s.token_registry
    p, pwfile = _wrong_password_proxy(t, reg)
    with open(p.conf_path) as f:
        good = f.read()
    with open(p.conf_path, "a") as f:
        f.write("\nnot a key value line\n")
    _write_pw(pwfile, s.sa_password)
    lib.wait_until(lambda: "reload (a watched file changed) refused" in p.log_text(), 15,
                   "the reload with the broken file to be refused")
    with open(p.conf_path + ".tmp", "w") as f:
        f.write(good)
    os.rename(p.conf_path + ".tmp", p.conf_path)
    lib.wait_until(lambda: "reload (the configuration changed after a refused reload): "
                   "configuration applied" in p.log_text(), 15,
                   "the reload once the file was fixed")
    r = p.get("/v2/ns/multi/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 200, "manifest with the rotated password")


def test_reload_during_token_fetch_uses_new_account(t):
    """A reload that changes the credentials while a token fetch with the old ones is in
    flight: that fetch's answer is neither joined nor cached, and the request that was
    waiting for it retries with the new credentials. Every registry request after the
    reload carries a token issued for the new account."""
    up = lib.SelfIssuingRegistry(t)
    p = t.proxy(registries=[{"name": "local.test", "url": up.url, "user": "alice",
                             "password": "alice-secret"}])
    up.token_delay = 3.0
    res = {}
    th = threading.Thread(target=lambda: res.setdefault("a", p.get("/v2/ns/x/tags/list")))
    th.start()
    lib.wait_until(lambda: any(x[1].startswith("/token") for x in up.seen()), 10,
                   "the first token fetch")
    p.registries[0].update(user="bob", password="bob-secret")
    p.write_conf()
    os.kill(p.pid, signal.SIGHUP)
    lib.wait_until(lambda: "reload (SIGHUP): configuration applied" in p.log_text(), 10,
                   "the reload")
    mark = time.time()
    r = p.get("/v2/ns/x/tags/list?n=5")  # while alice's fetch is still running
    th.join(30)
    r2 = p.get("/v2/ns/x/tags/list?n=6")  # later still: from the token cache
    used = [x for x in up.seen(mark) if x[1].startswith("/v2/") and x[2]]
    old = [x for x in used if x[2] != "Bearer tok-bob"]
    check(not old, "after the reload to bob, registry requests went with another "
          "Authorization: %r" % old)
    eq((res.get("a") and res["a"].status, r.status, r2.status), (200, 200, 200),
       "statuses of the request waiting across the reload, and the two after it")


def test_sighup_during_startup(t):
    """A SIGHUP that comes while the proxy is still starting (`systemctl reload` soon after
    `start`: even with Type=notify, a reload sent by hand) must not end it. SIGHUP's
    default action terminates, and Restart=on-failure does not restart a service that
    SIGHUP ended. The reload is applied once the proxy serves."""
    p = t.proxy(registries=[t.s.anon_registry.conf("registry.anon.test")], start=False)
    left, failed = lib.start_during_cache_open(p, lambda pid: os.kill(pid, signal.SIGHUP))
    check(not failed, "regproxy ended by a SIGHUP during startup: %s" % str(failed)[:300])
    check(left > 1000, "SIGHUP sent with %d leftovers in tmp/: the test raced" % left)
    lib.wait_until(lambda: "reload (SIGHUP): configuration applied" in p.log_text(), 10,
                   "the reload asked for during startup to be applied")
    eq(p.get("/v2/").status, 200, "ping after the SIGHUP during startup")


def test_reload_keeps_tokens_of_unchanged_registries(t):
    """A reload drops the tokens obtained with credentials it replaced, and only those: a
    SIGHUP that changes nothing for a registry (`systemctl reload` run by configuration
    management, a listener's certificate or client accounts rotated, a log level) used to
    drop every registry's tokens and learned challenge, so each one's next request went
    upstream anonymously for a 401 and fetched a new token, and a token fetch under way was
    thrown away as if "the credentials changed in a reload"."""
    s = t.s
    reg = s.token_registry
    p = t.proxy(registries=[reg.conf("registry.token.test")])
    r = p.get("/v2/ns/tags/manifests/t00", headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 200, "manifest before the reload")
    p.admin_keys["log_level"] = "info"  # a change, none of it the registry's
    p.write_conf()
    _sighup(p, 1)
    since, mark = time.time(), reg.mark()
    r = p.get("/v2/ns/tags/manifests/t01", headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 200, "manifest after the reload")
    eq(len(s.issuer.fetches(since=since)), 0,
       "token fetches after a reload that left the registry's credentials alone")
    eq(reg.count("GET", "/v2/ns/tags/", status=401, since=mark), 0,
       "requests answered 401 after a reload that left the registry's credentials alone")


def test_refused_reload_shown_in_metrics(t):
    """A refused reload leaves the proxy serving a configuration that is no longer the
    file's (a renewed certificate not taken, a rotated password not used). It was said only
    in the log: /metrics now counts reloads by result and says whether the last one was
    refused, so that it can be alerted on."""
    s = t.s
    reg = s.anon_registry
    p = t.proxy(registries=[reg.conf("registry.anon.test")])

    def state():
        m = p.metrics()
        return (m.get(("regproxy_config_reloads_total", frozenset({("result", "applied")}))),
                m.get(("regproxy_config_reloads_total", frozenset({("result", "refused")}))),
                m.get(("regproxy_config_last_reload_successful", frozenset())))
    eq(state(), (0, 0, 1), "reloads applied, refused, last successful at the start")
    with open(p.conf_path) as f:
        good = f.read()
    with open(p.conf_path, "a") as f:
        f.write("\nnot a key value line\n")
    _sighup(p, 1, "refused")
    eq(state(), (0, 1, 0), "reloads applied, refused, last successful after a refused one")
    with open(p.conf_path, "w") as f:
        f.write(good)
    _sighup(p, 1)
    eq(state(), (1, 1, 1), "reloads applied, refused, last successful once the file was fixed")


def test_watch_quiet_while_draining(t):
    """A watched file that changes while the proxy drains after SIGTERM is not reloaded,
    and said once: the watch looked again every 2 s and logged "ignored: shutting down"
    each time, for as long as the drain lasted (25 s by default)."""
    s = t.s
    p = t.proxy(registries=[s.anon_registry.conf("registry.anon.test", user="u",
                                                 password="p1")],
                admin={"drain_timeout": "60s"})
    # A request head left unfinished keeps the drain going (until the 10 s head deadline).
    c = socket.create_connection(("127.0.0.1", p.port), timeout=30)
    c.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
    time.sleep(0.3)
    os.kill(p.pid, signal.SIGTERM)
    lib.wait_until(lambda: "draining" in p.log_text(), 10, "the drain to begin")
    _write_pw(os.path.join(p.dir, "registry.anon.test.pw"), "p2")
    key = "reload (a watched file changed) ignored: shutting down"
    lib.wait_until(lambda: key in p.log_text(), 10, "the changed file to be noticed")
    time.sleep(5)  # two more looks of the watch, were it still looking
    n = p.log_text().count(key)
    # Still draining (the head deadline had not ended it): else the watch had no chance to
    # look again, and one line would prove nothing.
    check(p.proc.p.poll() is None, "the proxy had stopped draining before the count")
    c.close()
    eq(n, 1, "lines saying the watched file's reload was ignored while draining")


class _BasicRegistry:
    """A plain-http registry on 127.0.0.1 taking Basic credentials for `password` (user
    alice), recording (time, path, authorization). hold_next holds the next /v2/ns/ answer
    that many seconds, then judges the credentials as they are by then (a password rotated
    upstream meanwhile refuses the old one)."""

    def __init__(self, t):
        self.reqs = []
        self.password = "old-secret"
        self.hold_next = 0.0
        self.lock = threading.Lock()
        up = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                auth = self.headers.get("Authorization")
                with up.lock:
                    up.reqs.append((time.time(), self.path, auth))
                    hold = 0.0
                    if self.path.startswith("/v2/ns/"):
                        hold, up.hold_next = up.hold_next, 0.0
                if hold:
                    time.sleep(hold)
                want = "Basic " + base64.b64encode(
                    ("alice:%s" % up.password).encode()).decode()
                if auth != want:
                    body = b'{"errors":[{"code":"UNAUTHORIZED","message":"no"}]}'
                    return self._send(401, body, {"WWW-Authenticate": 'Basic realm="r"'})
                return self._send(200, json.dumps({"name": "ns/x", "tags": ["v1"]}).encode())

            def _send(self, status, body, extra=None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = "http://127.0.0.1:%d" % self.srv.server_port
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        t.defer(self.srv.server_close)
        t.defer(self.srv.shutdown)

    def seen(self, since=0.0):
        with self.lock:
            return [r for r in self.reqs if r[0] >= since]


def test_reload_during_basic_request_retries_with_new_password(t):
    """A Basic request sent with the old password whose 401 comes back after a reload
    replaced that password: the 401 is about credentials no longer configured, so the
    request is made again with the new ones. It used to be taken as the new credentials
    rejected, and the client got an error although the new password works."""
    up = _BasicRegistry(t)
    p = t.proxy(registries=[{"name": "local.test", "url": up.url, "user": "alice",
                             "password": "old-secret"}])
    eq(p.get("/v2/ns/x/tags/list").status, 200, "tags with the old password")
    up.hold_next = 3.0
    res = {}
    th = threading.Thread(target=lambda: res.setdefault("a", p.get("/v2/ns/x/tags/list?n=1")))
    th.start()
    lib.wait_until(lambda: any(x[1].startswith("/v2/ns/x/tags/list?n=1") for x in up.seen()),
                   10, "the held request upstream")
    up.password = "new-secret"
    p.registries[0]["password"] = "new-secret"
    p.write_conf()
    _sighup(p, 1)
    th.join(30)
    eq(res.get("a") and res["a"].status, 200,
       "status of the request whose 401 (for the old password) came after the reload")
    eq(p.get("/v2/ns/x/tags/list?n=2").status, 200, "tags after the reload")
