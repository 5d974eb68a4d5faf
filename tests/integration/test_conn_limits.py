# SPDX-License-Identifier: Apache-2.0
"""Connections at the edges: IPv4 clients on a dual-stack [::] listener are each their own
peer for password budgets; running out of file descriptors does not spin the loop;
narrowing `allow` on reload reaches keep-alive connections; a connection refused for
max_connections ends right after its 503."""
import os
import signal
import socket
import time

import lib
from lib import check, eq


def _v6_proxy(t, keys):
    """A proxy with a second listener on [::] (IPv4 clients arrive as ::ffff:a.b.c.d)."""
    reg = t.s.anon_registry
    port = lib.free_port()
    extra = '[listen "[::]:%d"]\ndefault = registry.anon.test\n' % port
    for k, v in keys.items():
        extra += "%s = %s\n" % (k, v)
    p = t.proxy(registries=[reg.conf("registry.anon.test")], extra=extra)
    return p, port


def _accounts(t, n, cost=10):
    path = os.path.join(t.tmp, "accounts.htpasswd")
    with open(path, "wb") as f:
        for i in range(n):
            with open(lib.htpasswd_file(t, "node%d" % i, "secret%d" % i, cost), "rb") as one:
                f.write(one.read())
    return path


def test_v6_listener_guesser_leaves_others_their_logins(t):
    """As test_safety's guesser test, on a [::] listener: the guesser's budget is its own."""
    htp = lib.htpasswd_file(t, "node", "node-secret")
    p, port = _v6_proxy(t, {"htpasswd": htp})
    statuses = [lib.ping_from(port, b"node:guess%d" % i) for i in range(20)]
    eq(statuses, [401] * 20, "20 guesses from 127.0.0.1")
    eq(lib.ping_from(port, b"node:node-secret", source="127.0.0.2"), 200,
       "the first login from 127.0.0.2 right after them")


def test_parallel_first_logins_dual_stack_listener(t):
    """4 nodes with 4 accounts log in at once on a [::] listener: all get in."""
    htp = _accounts(t, 4)
    p, port = _v6_proxy(t, {"htpasswd": htp})
    res = [None] * 4

    def one(i):
        res[i] = lib.ping_from(port, b"node%d:secret%d" % (i, i), source="127.0.0.%d" % (i + 1))
    lib.parallel([lambda i=i: one(i) for i in range(4)])
    eq(res, [200] * 4, "parallel first logins from 4 addresses")


def _cpu(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_fd_exhaustion_does_not_spin(t):
    """RLIMIT_NOFILE below max_connections: once accept() fails with EMFILE the loop must
    not spin, the log must not flood, and the proxy serves again once descriptors free."""
    p = t.proxy(registries=[t.s.anon_registry.conf("registry.anon.test")],
                wrapper=["prlimit", "--nofile=128:128", "--"])
    held = []
    try:
        for _ in range(160):
            held.append(socket.create_connection(("127.0.0.1", p.port), timeout=10))
        time.sleep(0.5)
        c0, size0 = _cpu(p.pid), os.path.getsize(p.log)
        time.sleep(3)
        c1, size1 = _cpu(p.pid), os.path.getsize(p.log)
        check(c1 - c0 < 0.5, "the proxy used %.2f s of CPU in 3 idle seconds while out of "
              "descriptors" % (c1 - c0))
        check(size1 - size0 < 100000, "the log grew %d bytes in 3 s" % (size1 - size0))
        check("open files limited to 128" in p.log_text(), "no warning about the limit")
    finally:
        for c in held:
            c.close()
    lib.wait_until(lambda: p.get("/v2/").status == 200, 20, "serving again")


def test_reload_past_the_open_files_limit_warns(t):
    """The start warns when the listeners' max_connections pass the open-files limit; a
    reload raising max_connections past it said nothing, and the proxy then left
    connections waiting in the backlog instead of answering 503. It warns now, and a reload
    that changes no max_connections does not repeat it."""
    p = t.proxy(registries=[t.s.anon_registry.conf("registry.anon.test")],
                listeners=[{"default": "registry.anon.test", "max_connections": "100"}],
                wrapper=["prlimit", "--nofile=256:256", "--"])
    check("open files limited" not in p.log_text(), "a warning with 164 of 256 wanted")
    for n, conns in enumerate(("1000", "1000"), 1):
        p.listeners[0]["max_connections"] = conns
        p.write_conf()
        os.kill(p.pid, signal.SIGHUP)
        lib.wait_until(lambda: p.log_text().count("reload (SIGHUP): configuration applied")
                       >= n, 10, "reload %d applied" % n)
    eq(p.log_text().count("reload (SIGHUP): open files limited to 256, below the listeners' "
                          "max_connections (1064 in all)"), 1,
       "warnings after a reload to max_connections 1000, then one changing nothing")
    eq(p.get("/v2/").status, 200, "GET /v2/ after the reloads")


def test_fd_exhaustion_admin_probe_does_not_spin(t):
    """As above, with a probe or scrape arriving at the admin listener while descriptors
    are out: its accept() fails with EMFILE too, and that must not spin the loop or flood
    the log either. Once descriptors free, the admin listener answers again."""
    p = t.proxy(registries=[t.s.anon_registry.conf("registry.anon.test")],
                wrapper=["prlimit", "--nofile=128:128", "--"])
    held, probes = [], []
    try:
        for _ in range(160):
            held.append(socket.create_connection(("127.0.0.1", p.port), timeout=10))
        for _ in range(3):
            probes.append(socket.create_connection(("127.0.0.1", p.admin_port), timeout=10))
        time.sleep(0.5)
        c0, size0 = _cpu(p.pid), os.path.getsize(p.log)
        time.sleep(3)
        c1, size1 = _cpu(p.pid), os.path.getsize(p.log)
        check(c1 - c0 < 0.5, "the proxy used %.2f s of CPU in 3 s with admin connections "
              "waiting while out of descriptors" % (c1 - c0))
        check(size1 - size0 < 100000, "the log grew %d bytes in 3 s" % (size1 - size0))
    finally:
        for c in held + probes:
            c.close()
    lib.wait_until(lambda: p.admin("/healthz").status == 200, 20, "the admin listener again")
    lib.wait_until(lambda: p.get("/v2/").status == 200, 20, "serving again")


def test_allow_reload_applies_to_open_connections(t):
    """Keep-alive connections opened before a reload that narrows `allow` are judged by the
    new list at their next request: a GET gets 403 DENIED, a HEAD the same without a body;
    a new connection is closed at accept."""
    p = t.proxy(registries=[t.s.anon_registry.conf("registry.anon.test")],
                listeners=[{"default": "registry.anon.test", "allow": "127.0.0.0/8"}])
    req = b"%s /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", p.port), timeout=10) as c1, \
            socket.create_connection(("127.0.0.1", p.port), timeout=10) as c2:
        for c in (c1, c2):
            c.sendall(req % b"GET")
            check(c.recv(4096).startswith(b"HTTP/1.1 200"), "before the reload")
        p.listeners[0]["allow"] = "10.0.0.0/8"
        p.write_conf()
        os.kill(p.pid, signal.SIGHUP)
        lib.wait_until(lambda: "configuration applied" in p.log_text(), 10, "reload applied")
        eq(lib.ping_from(p.port, None), 403, "a new connection after the reload")
        c1.sendall(req % b"GET")
        got = lib.read_to_eof(c1)
        c2.sendall(req % b"HEAD")
        head = lib.read_to_eof(c2)
    check(got.startswith(b"HTTP/1.1 403") and b"DENIED" in got, "the open keep-alive "
          "connection after 127.0.0.0/8 was removed from allow: %r" % got[:300])
    check(head.startswith(b"HTTP/1.1 403") and head.endswith(b"\r\n\r\n"),
          "a HEAD on the other one (403, no body): %r" % head[:300])


def test_refused_connection_closed_after_its_503(t):
    p = t.proxy(registries=[t.s.anon_registry.conf("registry.anon.test")],
                listeners=[{"default": "registry.anon.test", "max_connections": "1"}])
    open_conns = ("regproxy_open_connections", frozenset())
    lib.wait_until(lambda: p.metrics().get(open_conns, 0) == 0, 10, "no connection open")
    held = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    try:
        lib.wait_until(lambda: p.metrics().get(open_conns, 0) == 1, 10, "one held")
        with socket.create_connection(("127.0.0.1", p.port), timeout=10) as c:
            c.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
            first = c.recv(4096)
            t1 = time.monotonic()
            lib.read_to_eof(c)
            t2 = time.monotonic()
    finally:
        held.close()
    check(first.startswith(b"HTTP/1.1 503"), "%r" % first[:40])
    check(b"\r\nDocker-Distribution-API-Version: registry/2.0\r\n" in first.split(b"\r\n\r\n")[0],
          "the 503 names the API version, as every answer does: %r" % first[:300])
    check(t2 - t1 < 0.5, "the end came %.2f s after the 503" % (t2 - t1))


def test_outsider_refused_at_accept_holds_no_slot(t):
    """A connection from an address no `allow` entry matches is answered 403 DENIED at
    accept, before it sends anything, and holds no max_connections slot: idle connections
    from outside cannot lock allowed clients out. Each is counted and logged as a 403."""
    p = t.proxy(registries=[t.s.anon_registry.conf("registry.anon.test")],
                listeners=[{"default": "registry.anon.test", "allow": "127.0.0.2/32",
                            "max_connections": "1"}])
    with socket.socket() as outsider:
        outsider.settimeout(20)
        outsider.bind(("127.0.0.1", 0))
        outsider.connect(("127.0.0.1", p.port))
        peer = "127.0.0.1:%d" % outsider.getsockname()[1]
        # Accepted before the allowed client's connection, which queues behind it.
        eq(lib.ping_from(p.port, source="127.0.0.2"), 200,
           "an allowed client while an outsider's idle connection is open")
        got = lib.read_to_eof(outsider)
    check(got.startswith(b"HTTP/1.1 403 ") and b"DENIED" in got,
          "what the outsider got without asking: %r" % got[:300])
    check(b"\r\nDocker-Distribution-API-Version: registry/2.0\r\n" in got.split(b"\r\n\r\n")[0],
          "the 403 names the API version, as every answer does: %r" % got[:300])
    lines = lib.wait_until(lambda: [a for a in p.access() if a.get("peer") == peer], 10,
                           "the outsider's access line")
    eq([(a.get("method"), a.get("path"), a.get("status")) for a in lines], [("-", "-", "403")],
       "the outsider's access lines")
    other_4xx = ("regproxy_requests_total", frozenset({"route": "other", "status": "4xx"}.items()))
    check(p.metrics().get(other_4xx, 0) >= 1, "the refusal is not counted as a 4xx: %r"
          % p.metrics())


def test_outsider_closed_unanswered_logged_as_unanswered(t):
    """Past the budget of refusals under way (256, each lingering up to 2 s for its client
    to close), a connection from outside `allow` is closed without an answer. Its access
    line and /metrics say so: status 0 and 0 bytes, not the 403 it never got."""
    p = t.proxy(registries=[t.s.anon_registry.conf("registry.anon.test")],
                listeners=[{"default": "registry.anon.test", "allow": "127.0.0.2/32"}])
    def other(m, c):
        return m.get(("regproxy_requests_total",
                      frozenset({"route": "other", "status": c}.items())), 0)
    before = p.metrics()
    socks = []
    try:
        for _ in range(400):  # held open: each answered one keeps its slot while it lingers
            s = socket.create_connection(("127.0.0.1", p.port), timeout=20)
            socks.append(s)
        got = {}
        for s in socks:
            port = s.getsockname()[1]
            try:
                got[port] = lib.read_to_eof(s)
            except ConnectionResetError:
                got[port] = b""
    finally:
        for s in socks:
            s.close()
    unanswered = sorted(port for port, b in got.items() if not b)
    answered = [port for port, b in got.items() if b]
    check(unanswered, "every one of 400 outsiders was answered: the budget was not reached")
    check(len(answered) >= 256, "only %d outsiders were answered" % len(answered))
    check(all(got[port].startswith(b"HTTP/1.1 403 ") for port in answered),
          "an answered outsider got something other than a 403")
    by_port = {}
    ports = set(got)
    lib.wait_until(lambda: ports <= {int(a.get("peer", ":0").rsplit(":", 1)[1])
                                     for a in p.access()}, 10, "400 access lines")
    for a in p.access():
        by_port[int(a.get("peer", ":0").rsplit(":", 1)[1])] = a
    for port in unanswered:
        a = by_port.get(port)
        check(a is not None, "no access line for the outsider on port %d" % port)
        eq((a.get("status"), a.get("bytes")), ("0", "0"), "the unanswered outsider's line")
        check("unanswered" in a.get("reason", ""), "reason: %r" % a.get("reason"))
    for port in answered:
        eq(by_port[port].get("status"), "403", "an answered outsider's line")
    m = p.metrics()
    eq((other(m, "4xx") - other(before, "4xx"), other(m, "other") - other(before, "other")),
       (len(answered), len(unanswered)),
       "/metrics: refusals answered (4xx) and closed unanswered (other)")
