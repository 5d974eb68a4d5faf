# SPDX-License-Identifier: Apache-2.0
"""Operating it: /metrics change as expected across a miss, a hit, a stale serve and an
eviction (parsed, not grepped); /readyz turns unready when the cache directory becomes
unwritable; JSON logs parse line by line and carry no secret."""
import json
import os
import pwd
import re
import select
import socket
import shutil
import signal
import subprocess
import tempfile
import time

import lib
from lib import check, eq


def _m(metrics, name, **labels):
    return metrics.get((name, frozenset(labels.items())), 0.0)


MAX, MAX_BYTES = "10500K", 10500 * 1024  # holds the 10 MiB layer, not ns/multi beside it


def test_metrics_miss_hit_stale_eviction(t):
    s = t.s
    reg = t.private_registry("anon", images={
        "ns/multi:v1": "oci:%s:v1" % s.images["multi"]["dir"],
        "ns/large:v1": "oci:%s:v1" % s.images["large"]["dir"]})
    p = t.proxy(registries=[reg.conf("registry.private.test", tag_ttl="1s")],
                cache={"max_size": MAX, "max_stale": "1h"})
    m0 = p.metrics()
    # miss
    r = p.get("/v2/ns/multi/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 200, "manifest")
    m1 = p.metrics()
    eq(_m(m1, "regproxy_cache_requests_total", result="miss") -
       _m(m0, "regproxy_cache_requests_total", result="miss"), 1, "misses after a miss")
    check(_m(m1, "regproxy_upstream_requests_total", registry="registry.private.test",
             status="2xx") >= 1, "upstream 2xx not counted")
    eq(_m(m1, "regproxy_requests_total", route="manifest", status="2xx"), 1, "requests")
    check(_m(m1, "regproxy_cache_entries") >= 1, "cache entries after a miss")
    # hit
    r = p.get("/v2/ns/multi/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    m2 = p.metrics()
    eq(_m(m2, "regproxy_cache_requests_total", result="hit") -
       _m(m1, "regproxy_cache_requests_total", result="hit"), 1, "hits after a hit")
    check(_m(m2, "regproxy_served_bytes_total", source="cache") >=
          _m(m1, "regproxy_served_bytes_total", source="cache") + len(r.body),
          "bytes served from cache")
    # stale: upstream gone, tag past its ttl
    reg.stop()
    time.sleep(1.5)
    r = p.get("/v2/ns/multi/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, r.header("x-regproxy-cache")), (200, "STALE"), "stale serve")
    m3 = p.metrics()
    eq(_m(m3, "regproxy_cache_requests_total", result="stale") -
       _m(m2, "regproxy_cache_requests_total", result="stale"), 1, "stale serves")
    check(_m(m3, "regproxy_upstream_requests_total", registry="registry.private.test",
             status="other") >= 1, "failed upstream request not counted")
    # An error the proxy writes itself (upstream down, nothing cached) is no content: it
    # counts as a request, not as a miss or as bytes from upstream.
    r = p.get("/v2/ns/multi/manifests/v2", headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 503, "an uncached tag while upstream is down")
    m3e = p.metrics()
    for name, label in (("regproxy_cache_requests_total", {"result": "miss"}),
                        ("regproxy_cache_requests_total", {"result": "pass"}),
                        ("regproxy_served_bytes_total", {"source": "upstream"})):
        eq(_m(m3e, name, **label) - _m(m3, name, **label), 0, "%s %s after a 503" % (name, label))
    eq(_m(m3e, "regproxy_requests_total", route="manifest", status="5xx") -
       _m(m3, "regproxy_requests_total", route="manifest", status="5xx"), 1, "5xx requests")
    # eviction: bring upstream back and pull more than max_size (ns/multi's 600 KB, then
    # ns/large, whose 10 MiB layer is kept and whose 100 MiB one is only served)
    reg.restart()
    t.pull(p, "ns/multi:v1")
    t.pull(p, "ns/large:v1")
    m4 = p.metrics()
    check(_m(m4, "regproxy_cache_evictions_total") > _m(m3, "regproxy_cache_evictions_total"),
          "no eviction counted after pulling ns/multi and ns/large into a %s cache" % MAX)
    check(_m(m4, "regproxy_cache_size_bytes") <= MAX_BYTES, "cache size over max_size")
    eq(_m(m4, "regproxy_fills_in_flight"), 0, "fills in flight at rest")
    check(_m(m4, "regproxy_open_connections") >= 0, "open connections gauge")
    text = p.admin("/metrics").body.decode()
    check("password" not in text.lower(), "a password-like label in /metrics")


_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABELS = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(r"^(%s)(?:\{(%s(?:,%s)*)?\})? (\S+)$" % (_NAME, _LABELS, _LABELS))


def _exposition_problems(text):
    """What in a /metrics body breaks the text exposition format 0.0.4 as Prometheus
    reads it: # HELP and # TYPE at most once per family and before its samples, a family's
    samples together, label values escaped, counters named *_total, histograms with
    cumulative buckets up to le="+Inf" equal to _count beside _sum, no series twice."""
    problems, types, helped, done, series = [], {}, set(), set(), set()
    hist, current = {}, None
    if not text.endswith("\n"):
        problems.append("no newline at the end")
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) < 4 or parts[1] not in ("HELP", "TYPE"):
                problems.append("comment line %r" % line)
                continue
            name = parts[2]
            seen = helped if parts[1] == "HELP" else types
            if name in seen or name in done:
                problems.append("second # %s for %s" % (parts[1], name))
            if parts[1] == "TYPE":
                if parts[3] not in ("counter", "gauge", "histogram", "summary", "untyped"):
                    problems.append("type %r of %s" % (parts[3], name))
                types[name] = parts[3]
            else:
                helped.add(name)
            if current not in (None, name):
                done.add(current)
            current = name
            continue
        m = _SAMPLE.match(line)
        if not m:
            problems.append("not a sample line: %r" % line)
            continue
        name, labels, value = m.groups()
        family = name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and types.get(name[:-len(suffix)]) == "histogram":
                family = name[:-len(suffix)]
        if family != current or family in done:
            problems.append("%s outside its family's block (under %s)" % (name, current))
        if family not in types:
            problems.append("%s has no # TYPE before it" % name)
        if types.get(family) == "counter" and not family.endswith("_total"):
            problems.append("counter %s is not named *_total" % family)
        key = (name, labels or "")
        if key in series:
            problems.append("series %s{%s} twice" % key)
        series.add(key)
        try:
            v = float(value)
        except ValueError:
            problems.append("value %r of %s" % (value, name))
            continue
        if types.get(family) == "histogram":
            pairs = re.findall(r'([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"', labels or "")
            le = [b for a, b in pairs if a == "le"]
            rest = tuple((a, b) for a, b in pairs if a != "le")
            h = hist.setdefault((family, rest), {"buckets": []})
            if name.endswith("_bucket"):
                h["buckets"].append((le[0] if le else None, v))
            else:
                h[name[len(family) + 1:]] = v
    for (family, rest), h in hist.items():
        les = [le for le, _ in h["buckets"]]
        counts = [c for _, c in h["buckets"]]
        if not les or les[-1] != "+Inf":
            problems.append("%s%r: last bucket le=%r, not +Inf" % (family, rest, les[-1:]))
        if counts != sorted(counts):
            problems.append("%s%r: buckets not cumulative: %r" % (family, rest, counts))
        if [float(x) for x in les[:-1]] != sorted(float(x) for x in les[:-1]):
            problems.append("%s%r: bucket bounds out of order: %r" % (family, rest, les))
        if "count" not in h or "sum" not in h:
            problems.append("%s%r: _sum or _count missing" % (family, rest))
        elif counts and counts[-1] != h["count"]:
            problems.append("%s%r: +Inf bucket %s != _count %s" % (family, rest, counts[-1],
                                                                   h["count"]))
    return problems


def test_metrics_exposition_format(t):
    """/metrics as Prometheus's text parser (format 0.0.4) takes it, checked strictly after
    pulls that fill every family (label values are registry names, which the configuration
    keeps to letters, digits and ._-:[], so none needs escaping), with the Content-Type that
    names the format."""
    s = t.s
    p = t.proxy(registries=[s.token_registry.conf("registry.token.test"),
                            s.basic_registry.conf("basic_test:5000")])
    t.pull(p, "ns/multi:v1")
    t.pull(p, "ns/multi:v1")
    p.get("/v2/nosuch/thing/manifests/v1")  # a 4xx
    r = p.admin("/metrics")
    eq(r.status, 200, "GET /metrics")
    eq(r.header("content-type").replace(" ", "").split(";")[:2], ["text/plain", "version=0.0.4"],
       "Content-Type of /metrics")
    text = r.body.decode("utf-8")
    check('registry="basic_test:5000"' in text, "the second registry's label: %s" % text[:2000])
    problems = _exposition_problems(text)
    check(not problems, "/metrics breaks the exposition format:\n%s" % "\n".join(problems))


def _proxy_as_nobody(t, name, **kw):
    """A proxy running as nobody (setpriv), with a cache directory nobody owns."""
    nobody = pwd.getpwnam("nobody")
    cache = os.path.join(t.tmp, name)
    os.makedirs(cache)
    os.chown(cache, nobody.pw_uid, nobody.pw_gid)
    reg = t.s.anon_registry
    p = t.proxy(registries=[reg.conf("registry.anon.test", ca_file=None, tls_verify="no")],
                cache={"dir": cache}, start=False,
                wrapper=["setpriv", "--reuid", str(nobody.pw_uid), "--regid",
                         str(nobody.pw_gid), "--clear-groups"], **kw)
    # The unprivileged proxy must reach its config through the test's private dirs.
    d = p.dir
    while d.startswith(tempfile.gettempdir() + os.sep) and d != tempfile.gettempdir():
        os.chmod(d, os.stat(d).st_mode | 0o011)
        d = os.path.dirname(d)
    old = os.umask(0o022)  # the config file must be readable by nobody
    try:
        p.start()
    finally:
        os.umask(old)
    return p, cache, nobody


def test_not_dumpable(t):
    """A core file would hold the credentials, the tokens and the Authorization headers in
    memory: the proxy makes itself undumpable (proc(5): its /proc/PID files then belong to
    root, and its own user can neither read its memory nor ptrace it), unless [admin]
    core_dumps says otherwise."""
    for name, admin, want_owner in (("no-core", None, "root"),
                                    ("core", {"core_dumps": "yes"}, "nobody")):
        p, _, nobody = _proxy_as_nobody(t, "cache-" + name, admin=admin)
        eq(p.get("/v2/").status, 200, "ping (%s)" % name)
        uid = os.stat("/proc/%d/environ" % p.pid).st_uid
        eq(pwd.getpwuid(uid).pw_name, want_owner,
           "owner of /proc/PID/environ (%s: %s)" % (name, "dumpable" if admin else
                                                     "not dumpable"))
        # nobody itself cannot read the undumpable process's memory map.
        r = subprocess.run(["setpriv", "--reuid", str(nobody.pw_uid), "--regid",
                            str(nobody.pw_gid), "--clear-groups", "cat",
                            "/proc/%d/maps" % p.pid], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, timeout=30)
        eq(r.returncode == 0, bool(admin), "nobody reads /proc/PID/maps (%s): %s"
           % (name, r.stderr.decode()[:200]))
        p.stop()


def test_readyz_unwritable_cache(t):
    p, cache, _ = _proxy_as_nobody(t, "cache-nobody")
    r = p.admin("/readyz")
    eq(r.status, 200, "readyz with a writable cache (%s)" % r.body[:300])
    body = json.loads(r.body)
    check(body["ready"] and body["cache_writable"], "readyz body %r" % body)
    check("registry.anon.test" in body["registries"], "registry missing from readyz")
    os.chmod(os.path.join(cache, "tmp"), 0o500)
    try:
        r = p.admin("/readyz")
        eq(r.status, 503, "readyz with an unwritable cache (%s)" % r.body[:300])
        check(not json.loads(r.body)["cache_writable"], "cache_writable still true")
        eq(p.admin("/healthz").status, 200, "healthz stays 200 (alive)")
    finally:
        os.chmod(os.path.join(cache, "tmp"), 0o700)
    eq(p.admin("/readyz").status, 200, "readyz after the cache is writable again")


def test_json_logs(t):
    s = t.s
    reg = s.token_registry
    p = t.proxy(registries=[reg.conf("registry.token.test")],
                extra="[admin]\nlisten = 127.0.0.1:%d\nlog_format = json\n" % lib.free_port())
    _, tags = t.pull(p, "ns/multi:v1")
    r = p.get("/v2/%2e%2e/manifests/latest")
    eq(r.status, 400, "bad request")
    time.sleep(0.3)
    access = []
    for line in p.log_text().splitlines():
        if not line.startswith("{"):
            continue  # sanitizer/runtime noise would be caught by the harness
        o = json.loads(line)
        for k in ("ts", "level", "msg"):
            check(k in o, "log line without %s: %s" % (k, line))
        if o["msg"] == "access":
            access.append(o)
    check(len(access) >= 4, "too few access lines: %d" % len(access))
    for o in access:
        for k in ("id", "method", "path", "status", "bytes", "ms", "registry", "cache",
                  "upstream", "peer"):
            check(k in o, "access line without %s: %r" % (k, o))
    check(len({o["id"] for o in access}) == len(access), "request ids are not unique")
    check(any(o["status"] == 400 for o in access), "the bad request is not logged")
    check(s.sa_password not in p.log_text(), "the password appears in the JSON log")
    for tok in s.issuer.tokens()[-5:]:
        check(tok not in p.log_text(), "a token appears in the JSON log")


def test_admin_head_has_no_body(t):
    """HEAD on the admin listener (load balancers probe so) gets the head alone, its
    Content-Length saying what a GET would get."""
    p = t.proxy(registries=[t.s.anon_registry.conf("registry.anon.test")])
    for path, want in (("/healthz", b"ok\n"), ("/nothing", b"not found\n")):
        got = lib.raw_exchange(p.admin_port, ("HEAD %s HTTP/1.1\r\nHost: x\r\n\r\n"
                                              % path).encode())
        head, _, body = got.partition(b"\r\n\r\n")
        check(b"Content-Length: %d\r\n" % len(want) in head + b"\r\n", "HEAD %s: %r"
              % (path, head))
        eq(body, b"", "body of HEAD %s" % path)


def test_idle_admin_connection_at_exit(t):
    """A scraper's connection left open when the proxy stops (half a request, or none) is
    closed and freed with the rest: the harness fails the test on a leak report."""
    p = t.proxy(registries=[t.s.anon_registry.conf("registry.anon.test")])
    idle = socket.create_connection(("127.0.0.1", p.admin_port))
    half = socket.create_connection(("127.0.0.1", p.admin_port))
    half.sendall(b"GET /metr")
    try:
        eq(p.admin("/healthz").status, 200, "healthz beside two open admin connections")
        problems = p.stop()
        check(not problems, "; ".join(problems))
    finally:
        idle.close()
        half.close()


def test_systemd_notify(t):
    """Under a systemd Type=notify unit the proxy says READY=1 once its listeners answer,
    RELOADING=1 (with MONOTONIC_USEC) then READY=1 around a SIGHUP reload, and STOPPING=1
    when told to stop: the messages arrive on the datagram socket $NOTIFY_SOCKET names (an
    abstract one here, as systemd's own is a path)."""
    name = "regproxy-test-notify-%d-%d" % (os.getpid(), lib.free_port())
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as mgr:
        mgr.bind("\0" + name)
        mgr.settimeout(60)
        p = t.proxy(registries=[t.s.anon_registry.conf("registry.anon.test")],
                    env={"NOTIFY_SOCKET": "@" + name})
        got = mgr.recv(4096).decode()
        eq(got.splitlines()[0], "READY=1", "the first message")
        eq(p.get("/v2/").status, 200, "a ping once READY=1 came")
        os.kill(p.pid, signal.SIGHUP)
        reloading = mgr.recv(4096).decode().splitlines()
        eq(reloading[0], "RELOADING=1", "the message a SIGHUP brings first")
        check(len(reloading) == 2 and reloading[1].startswith("MONOTONIC_USEC=")
              and reloading[1][len("MONOTONIC_USEC="):].isdigit(),
              "MONOTONIC_USEC beside RELOADING=1: %r" % reloading)
        eq(mgr.recv(4096).decode().splitlines()[0], "READY=1", "after the reload")
        # The log line is written at the end of the loop iteration that sent READY=1.
        lib.wait_until(lambda: "configuration applied" in p.log_text(), 10,
                       "the reload applied, around READY=1")
        # A refused reload: READY=1 still (it serves), and the unit's status says so.
        with open(p.conf_path, "a") as f:
            f.write("\nnot a key value line\n")
        os.kill(p.pid, signal.SIGHUP)
        eq(mgr.recv(4096).decode().splitlines()[0], "RELOADING=1", "a refused reload's first")
        refused = mgr.recv(4096).decode().splitlines()
        check(refused[0] == "READY=1" and len(refused) == 2 and "refused" in refused[1],
              "READY=1 with a STATUS= naming the refused reload: %r" % refused)
        eq(p.stop(), [], "problems at the stop")
        eq(mgr.recv(4096).decode(), "STOPPING=1", "the message SIGTERM brings")
    check("NOTIFY_SOCKET" not in p.log_text(), "a notification failed: %s"
          % lib.tail(p.log, 20))


def test_admin_slow_head_cut_off(t):
    """A client trickling its request head to the admin listener a byte at a time (each
    byte within the idle timeout) is answered 408 once the head has taken longer than the
    admin's 10 s, rather than held for as long as it keeps trickling: such connections
    would otherwise pile up and use the descriptors the registry listeners need."""
    p = t.proxy(registries=[t.s.anon_registry.conf("registry.anon.test")])
    req = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 30 + b"\r\n\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", p.admin_port), timeout=30) as c:
        for b in req:  # a byte every 0.5 s (37 s for the whole head) until answered
            c.sendall(bytes([b]))
            sent += 1
            if select.select([c], [], [], 0.5)[0]:
                break
        got = lib.read_to_eof(c)
    check(sent < len(req), "the proxy took the whole %d-byte head sent a byte every 0.5 s"
          % len(req))
    check(got.startswith(b"HTTP/1.1 408"), "a head trickled past the deadline got %r"
          % got[:80])


def test_admin_connections_closed_as_it_stops(t):
    """Scrapers and probes that hang up just as the proxy stops (a rollout: SIGTERM while
    the kubelet's probes come and go) leave nothing behind: each admin connection is freed
    with its descriptor, the harness failing the test on a leak report."""
    p = t.proxy(registries=[t.s.anon_registry.conf("registry.anon.test")])
    # Fewer than the admin listener's 64 at once, so that /healthz is served beside them.
    conns = [socket.create_connection(("127.0.0.1", p.admin_port)) for _ in range(60)]
    try:
        eq(p.admin("/healthz").status, 200, "healthz beside 60 open admin connections")
    finally:
        for c in conns:
            c.close()
    problems = p.stop()  # at once: their hang-ups are still being taken in
    check(not problems, "; ".join(problems))


def test_admin_other_methods(t):
    """Methods other than GET and HEAD on the admin listener are answered 405 with the
    Allow header RFC 9110 requires of a 405, naming both methods, as the registry
    listeners do."""
    p = t.proxy(registries=[t.s.anon_registry.conf("registry.anon.test")])
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        got = lib.raw_exchange(p.admin_port, ("%s /metrics HTTP/1.1\r\nHost: x\r\n"
                                              "Content-Length: 0\r\n\r\n" % method).encode())
        head, _, body = got.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        eq(lines[0], "HTTP/1.1 405 Method Not Allowed", "status line of %s" % method)
        allow = [x.split(":", 1)[1].strip() for x in lines[1:]
                 if x.lower().startswith("allow:")]
        eq(allow, ["GET, HEAD"], "Allow header of the 405 to %s (head %r)" % (method, head))
        check(b"HEAD" in body, "the 405's body names HEAD as allowed too: %r" % body)


def test_admin_connections_capped(t):
    """The admin listener had no bound on connections open at once (the registry listeners
    have max_connections): a flood of them could take the descriptors the registry
    listeners need. Past 64, a connection is closed at once, unanswered; pulls go on, and
    /healthz answers again once the flood has closed."""
    p = t.proxy(registries=[t.s.anon_registry.conf("registry.anon.test")])
    held = [socket.create_connection(("127.0.0.1", p.admin_port), timeout=30)
            for _ in range(64)]
    try:
        # Accepted in order after the 64: closed without an answer (a reset, as it sent a
        # request the proxy never read, or a plain close).
        for i in range(3):
            with socket.create_connection(("127.0.0.1", p.admin_port), timeout=30) as c:
                c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                try:
                    got = lib.read_to_eof(c)
                except ConnectionResetError:
                    got = b""
            eq(got, b"", "what admin connection %d past 64 open ones receives" % (65 + i))
        eq(p.get("/v2/").status, 200, "a ping on the registry listener during the flood")
        lib.wait_until(lambda: "admin listen: connection closed unanswered: 64 admin "
                       "connections open" in p.log_text(), 10, "the refusal logged")
        # The held connections are still served.
        held[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        check(lib.read_to_eof(held[0]).startswith(b"HTTP/1.1 200"),
              "a held admin connection answered")
    finally:
        for c in held:
            c.close()
    lib.wait_until(lambda: p.admin("/healthz").status == 200, 10,
                   "/healthz once the flood closed")


def test_cache_lock_file_not_ours_named(t):
    """A cache directory the service user owns, holding a `lock` file root left behind (a
    `regproxy mirror` run as root): serve exited with "cache: opening DIR: Permission
    denied", naming the directory, which is fine, not the file that is not. The message
    names the lock file."""
    nobody = pwd.getpwnam("nobody")
    cache = os.path.join(t.tmp, "cache-rootlock")
    os.makedirs(cache)
    os.chown(cache, nobody.pw_uid, nobody.pw_gid)
    with open(os.path.join(cache, "lock"), "w"):
        pass
    os.chmod(os.path.join(cache, "lock"), 0o644)  # root's, as a root run leaves it
    p = t.proxy(registries=[t.s.anon_registry.conf("registry.anon.test", test_login="no")],
                cache={"dir": cache}, start=False)
    p.ports = [lib.free_port()]
    old = os.umask(0o022)  # the config file must be readable by nobody
    try:
        p.write_conf()
    finally:
        os.umask(old)
    d = p.dir
    while d.startswith(tempfile.gettempdir() + os.sep) and d != tempfile.gettempdir():
        os.chmod(d, os.stat(d).st_mode | 0o011)
        d = os.path.dirname(d)
    r = subprocess.run(["setpriv", "--reuid", str(nobody.pw_uid), "--regid",
                        str(nobody.pw_gid), "--clear-groups", t.s.bin, "serve", "-c",
                        p.conf_path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=60, env=lib.clean_env())
    out = r.stdout.decode()
    eq(r.returncode, 1, "serve's exit status with a lock file it cannot open (%s)" % out)
    want = "cache: opening %s: Permission denied" % os.path.join(cache, "lock")
    check(want in out, "serve's message, expected %r:\n%s" % (want, out))
