# SPDX-License-Identifier: Apache-2.0
"""The client connection itself: pipelined requests answered in order (also more of them
than fit the proxy's input buffer at once), a head that arrives in small pieces,
keep-alive across cache misses and hits, idle and slow connections, and the drain on
SIGTERM. Raw sockets, so nothing hides what the proxy sends."""
import hashlib
import json
import os
import re
import signal
import socket
import ssl
import time

import lib
from lib import check, eq

MANIFEST = "/v2/ns/multi/manifests/v1"


def _request(path, method="GET", close=False, pad=0):
    head = "%s %s HTTP/1.1\r\nHost: proxy.test\r\nAccept: %s\r\n" % (method, path, lib.ACCEPT_ALL)
    if pad:
        head += "X-Pad: %s\r\n" % ("p" * pad)
    if close:
        head += "Connection: close\r\n"
    return (head + "\r\n").encode()


def _responses(data, methods):
    """Splits what came back into (status, headers, body), one per request method."""
    out = []
    for method in methods:
        end = data.find(b"\r\n\r\n")
        check(end >= 0, "response %d of %d is missing (%d bytes left)"
              % (len(out) + 1, len(methods), len(data)))
        if end < 0:
            break
        lines = data[:end].decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = 0 if method == "HEAD" else int(headers.get("content-length", "0"))
        body = data[end + 4:end + 4 + n]
        check(len(body) == n, "response %d: body cut at %d of %d bytes" % (len(out) + 1,
                                                                           len(body), n))
        out.append((status, headers, body))
        data = data[end + 4 + n:]
    eq(data, b"", "bytes after the last response")
    return out




def _check_manifest(resp, want, what):
    status, headers, body = resp
    eq(status, 200, what)
    eq(headers.get("docker-content-digest"), want, "%s: Docker-Content-Digest" % what)
    eq("sha256:" + hashlib.sha256(body).hexdigest(), want, "%s: digest of the body" % what)


def test_pipelined_requests_in_order(t):
    s = t.s
    reg = s.anon_registry
    want = reg.pushed["ns/multi:v1"]["digest"]
    p = t.proxy(registries=[reg.conf("registry.anon.test")])
    methods = ["GET", "GET", "HEAD", "GET", "GET"]
    payload = (_request("/v2/") + _request(MANIFEST) + _request(MANIFEST, "HEAD") +
               _request("/v2/ns/no-such-repo/manifests/v1") + _request(MANIFEST, close=True))
    rs = _responses(lib.raw_exchange(p.port, payload, timeout=20), methods)
    eq(len(rs), 5, "responses to 5 pipelined requests")
    if len(rs) != 5:
        return
    eq(rs[0][0], 200, "ping")
    _check_manifest(rs[1], want, "manifest (a miss)")
    eq((rs[2][0], rs[2][1].get("docker-content-digest")), (200, want), "HEAD of the manifest")
    eq(rs[3][0], 404, "unknown repository")
    check(b"NAME_UNKNOWN" in rs[3][2] or b"MANIFEST_UNKNOWN" in rs[3][2],
          "404 body: %r" % rs[3][2][:200])
    _check_manifest(rs[4], want, "manifest again (a hit)")
    eq(rs[4][1].get("connection"), "close", "the last response closes")
    ids = [r[1].get("x-request-id") for r in rs]
    eq(len(set(ids)), 5, "a request id per response: %s" % ids)


def test_pipelined_beyond_the_input_buffer(t):
    """60 requests of 600 bytes (36 KB) in one write: more than the proxy reads at once
    (16 KiB), so it must stop reading, answer, and read on."""
    s = t.s
    reg = s.anon_registry
    want = reg.pushed["ns/multi:v1"]["digest"]
    p = t.proxy(registries=[reg.conf("registry.anon.test")])
    n = 60
    payload = b"".join(_request(MANIFEST, pad=420, close=(i == n - 1)) for i in range(n))
    check(len(payload) > 32 * 1024, "payload of %d bytes" % len(payload))
    rs = _responses(lib.raw_exchange(p.port, payload, timeout=60), ["GET"] * n)
    eq(len(rs), n, "responses to %d pipelined requests" % n)
    for i, r in enumerate(rs):
        _check_manifest(r, want, "pipelined manifest %d" % (i + 1))


def _pipeline_tiny(t, p, n, exchange):
    """n of the smallest requests (a manifest hit, a ping) in one write; every answer must
    come, in order, and the proxy must live."""
    want = t.s.anon_registry.pushed["ns/multi:v1"]["digest"]
    exchange(_request(MANIFEST, close=True))  # cached now
    hit = ("GET %s HTTP/1.1\r\nHost: p\r\n\r\n" % MANIFEST).encode()
    ping = b"GET /v2/ HTTP/1.1\r\nHost: p\r\n\r\n"
    reqs = [hit if i % 4 == 0 else ping for i in range(n - 1)] + [_request("/v2/", close=True)]
    rs = _responses(exchange(b"".join(reqs)), ["GET"] * n)
    eq(len(rs), n, "responses to %d pipelined requests" % n)
    for i, r in enumerate(rs):
        if i % 4 == 0 and i < n - 1:
            _check_manifest(r, want, "pipelined manifest %d" % (i + 1))
        else:
            eq(r[0], 200, "pipelined ping %d" % (i + 1))
    check(p.proc.alive(), "the proxy is still running")


# The proxy runs with a 1 MiB stack here: answering nested a call per request, and the
# ~530 smallest requests a 16 KiB input buffer holds overflowed it.
SMALL_STACK = ["prlimit", "--stack=1048576:1048576", "--"]


def test_pipelined_many_tiny_requests(t):
    """3,000 of the smallest requests in one write: every one the input buffer holds is
    answered at once, so answering must not nest one call per request."""
    reg = t.s.anon_registry
    p = t.proxy(registries=[reg.conf("registry.anon.test")], wrapper=SMALL_STACK)
    _pipeline_tiny(t, p, 3000, lambda data: lib.raw_exchange(p.port, data, timeout=120))


def test_pipelined_many_tiny_requests_tls(t):
    """The same over a TLS listener, whose input arrives through OpenSSL."""
    reg = t.s.anon_registry
    _, key, crt = lib.serving_cert(t, "pipeline")
    p = t.proxy(registries=[reg.conf("registry.anon.test")], wrapper=SMALL_STACK,
                listeners=[{"default": "registry.anon.test", "tls_cert": crt, "tls_key": key}])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE

    def exchange(data):
        with socket.create_connection(("127.0.0.1", p.port), timeout=120) as raw:
            with ctx.wrap_socket(raw) as c:
                c.sendall(data)
                chunks = []
                while True:
                    try:
                        b = c.recv(65536)
                    except ssl.SSLEOFError:
                        b = b""
                    if not b:
                        return b"".join(chunks)
                    chunks.append(b)
    _pipeline_tiny(t, p, 3000, exchange)


def test_head_in_small_pieces(t):
    s = t.s
    reg = s.anon_registry
    want = reg.pushed["ns/multi:v1"]["digest"]
    p = t.proxy(registries=[reg.conf("registry.anon.test")])
    req = _request(MANIFEST, close=True)
    with socket.create_connection(("127.0.0.1", p.port), timeout=20) as c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(req), 7):
            c.sendall(req[i:i + 7])
            time.sleep(0.005)
        got = lib.read_to_eof(c)
    rs = _responses(got, ["GET"])
    if rs:
        _check_manifest(rs[0], want, "manifest whose head came in 7-byte pieces")


def _read_head(c):
    """A response head from c: (status, lower-cased headers, body bytes already read)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        b = c.recv(65536)
        check(b, "connection closed before a response head")
        buf += b
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip()
               for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, rest


def _read_response(c):
    """One response from a keep-alive socket: (status, headers, sha256 of the body, length)."""
    status, headers, rest = _read_head(c)
    left = int(headers.get("content-length", "0")) - len(rest)
    h = hashlib.sha256(rest)
    n = len(rest)
    while left > 0:
        b = c.recv(min(left, 1 << 20))
        check(b, "connection closed with %d body bytes missing" % left)
        h.update(b)
        n += len(b)
        left -= len(b)
    return status, headers, "sha256:" + h.hexdigest(), n


def test_keep_alive_across_misses_and_hits(t):
    """One connection: a blob miss (streamed from the fill), the same blob again (a hit,
    sendfile from the cache), then the manifest; every body checked."""
    s = t.s
    reg = s.anon_registry
    p = t.proxy(registries=[reg.conf("registry.anon.test")])
    blob = json.loads(reg.pushed["ns/large:v1"]["body"])["layers"][0]["digest"]
    want = reg.pushed["ns/multi:v1"]["digest"]
    path = "/v2/ns/large/blobs/%s" % blob
    with socket.create_connection(("127.0.0.1", p.port), timeout=60) as c:
        for i, (target, close) in enumerate(((path, False), (path, False), (MANIFEST, True))):
            c.sendall(_request(target, close=close))
            r = _read_response(c)
            status, _, digest, _ = r
            eq(status, 200, "request %d on one connection" % (i + 1))
            eq(digest, blob if i < 2 else want, "body of request %d (%s)"
               % (i + 1, ("blob miss", "blob hit", "manifest")[i]))
        eq(c.recv(1), b"", "the connection closes after Connection: close")


def test_http10_keep_alive_is_confirmed(t):
    """An HTTP/1.0 client keeps the connection only when the answer says
    "Connection: keep-alive" (RFC 9112 9.3); without it, as ab -k does, it reads to EOF and
    waits out idle_timeout at every request. Plain 1.0 still closes."""
    s = t.s
    reg = s.anon_registry
    want = reg.pushed["ns/multi:v1"]["digest"]
    p = t.proxy(registries=[reg.conf("registry.anon.test")])
    ka = ("GET %s HTTP/1.0\r\nConnection: Keep-Alive\r\nAccept: %s\r\n\r\n"
          % (MANIFEST, lib.ACCEPT_ALL)).encode()
    with socket.create_connection(("127.0.0.1", p.port), timeout=20) as c:
        for i in range(2):  # a miss, then a hit
            c.sendall(ka)
            status, headers, digest, _ = _read_response(c)
            eq((status, digest), (200, want), "HTTP/1.0 keep-alive request %d" % (i + 1))
            eq(headers.get("connection", "").lower(), "keep-alive",
               "Connection header of the answer to HTTP/1.0 keep-alive request %d" % (i + 1))
    out = lib.raw_exchange(p.port, b"GET /v2/ HTTP/1.0\r\n\r\n")
    check(out.startswith(b"HTTP/1.1 200 ") and b"\r\nConnection: close\r\n" in out,
          "plain HTTP/1.0: expected a 200 with Connection: close, got %r" % out[:300])


def _cached_blob(t, layer, listeners=None, **kw):
    """A proxy in front of the anonymous registry with ns/large's layer `layer` fetched once
    (a miss, read whole and checked) and in its cache, so the next GET is a hit. Returns
    (proxy, digest, path)."""
    reg = t.s.anon_registry
    p = t.proxy(registries=[reg.conf("registry.anon.test")], listeners=listeners, **kw)
    blob = json.loads(reg.pushed["ns/large:v1"]["body"])["layers"][layer]["digest"]
    path = "/v2/ns/large/blobs/%s" % blob
    with socket.create_connection(("127.0.0.1", p.port), timeout=60) as c:
        c.sendall(_request(path))
        r = _read_response(c)
        eq((r[0], r[2]), (200, blob), "blob miss")
    f = lib.cache_path(p.cache_dir, "blobs", blob)
    lib.wait_until(lambda: os.path.isfile(f), 60, "%s to be cached" % f)
    return p, blob, path


def _small_window(port):
    """A connection whose small receive buffer keeps most of a large body on the proxy's
    side until it is read."""
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    c.settimeout(60)
    c.connect(("127.0.0.1", port))
    return c


def test_slow_client_outlasts_idle_timeout(t):
    """A cached blob going to a slow client is not an idle connection: with idle_timeout at
    1 s, a 100 MiB blob read over about 3 s arrives whole, the connection then serves another
    request, and only a connection with nothing to send is closed as idle."""
    p, blob, path = _cached_blob(t, 0, [{"default": "registry.anon.test", "idle_timeout": "1s"}])
    want = t.s.anon_registry.pushed["ns/multi:v1"]["digest"]
    with _small_window(p.port) as c:
        c.sendall(_request(path))
        status, headers, rest = _read_head(c)
        eq((status, headers.get("x-regproxy-cache")), (200, "HIT"), "second GET")
        size = int(headers["content-length"])
        h = hashlib.sha256(rest)
        got = len(rest)
        t0 = time.monotonic()
        while got < size:
            b = c.recv(min(size - got, 256 * 1024))
            check(b, "blob cut at %d of %d bytes after %.1f s" % (got, size,
                                                                 time.monotonic() - t0))
            h.update(b)
            got += len(b)
            time.sleep(0.01)
        took = time.monotonic() - t0
        check(took > 2, "the slow read took %.1f s: too fast to outlast the 1 s idle timeout"
              % took)
        eq("sha256:" + h.hexdigest(), blob, "digest of the blob read slowly")
        c.sendall(_request(MANIFEST))
        r = _read_response(c)
        eq((r[0], r[2]), (200, want), "manifest on the same connection after the slow blob")
        t0 = time.monotonic()
        eq(c.recv(1), b"", "an idle connection is closed")
        took = time.monotonic() - t0
        check(0.5 < took < 10, "closed as idle after %.1f s (idle_timeout = 1s)" % took)


def test_pipelined_after_a_blob_hit(t):
    """A request pipelined behind a cached blob is answered after the whole blob (which the
    proxy sends with sendfile from the connection), never in the middle of it."""
    p, blob, path = _cached_blob(t, 1)
    want = t.s.anon_registry.pushed["ns/multi:v1"]["digest"]
    payload = (_request(path) + _request(path, "HEAD") + _request(MANIFEST) +
               _request(path, close=True))
    rs = _responses(lib.raw_exchange(p.port, payload, timeout=60),
                    ["GET", "HEAD", "GET", "GET"])
    eq(len(rs), 4, "responses to 4 pipelined requests")
    if len(rs) != 4:
        return
    for i in (0, 3):
        eq(rs[i][0], 200, "blob hit %d" % (i + 1))
        eq(rs[i][1].get("x-regproxy-cache"), "HIT", "blob hit %d: cache" % (i + 1))
        eq("sha256:" + hashlib.sha256(rs[i][2]).hexdigest(), blob,
           "blob hit %d: digest of the body" % (i + 1))
    eq((rs[1][0], rs[1][1].get("docker-content-digest")), (200, blob), "HEAD of the blob")
    eq(rs[1][1].get("content-length"), str(len(rs[0][2])), "HEAD: Content-Length")
    _check_manifest(rs[2], want, "manifest pipelined behind the blob")


def _cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_idle_keep_alive_costs_nothing(t):
    """A keep-alive connection that waited on a full socket once (a blob larger than the
    socket buffers, read slowly) and then took a response whole (a manifest) must not stay
    registered for writability: that made the event loop spin at 100% CPU until the
    connection closed. The check is the proxy's CPU time over 2 idle seconds: a spin uses
    all of it, an idle loop none."""
    p, blob, path = _cached_blob(t, 1)
    want = t.s.anon_registry.pushed["ns/multi:v1"]["digest"]
    with _small_window(p.port) as c:
        c.sendall(_request(path))
        time.sleep(0.3)  # the proxy fills the socket and waits for it to drain
        r = _read_response(c)
        eq((r[0], r[2]), (200, blob), "blob hit read after the socket filled")
        c.sendall(_request(MANIFEST))
        r = _read_response(c)
        eq((r[0], r[2]), (200, want), "manifest on the same connection")
        time.sleep(0.2)
        cpu0 = _cpu_seconds(p.proc.pid)
        time.sleep(2)
        used = _cpu_seconds(p.proc.pid) - cpu0
        check(used < 0.5, "the proxy used %.2f CPU s in 2 s with one idle connection open"
              % used)


def _exited(p, timeout):
    lib.wait_until(lambda: not p.proc.alive(), timeout, "regproxy to exit")
    return p.proc.p.returncode


def test_sigterm_drains(t):
    """SIGTERM lets pulls in progress finish: the listener closes at once (new connections
    are refused), an idle keep-alive connection is closed, /readyz says 503 (stopping), a
    100 MiB blob half read by a slow client still arrives whole and verified, and then the
    proxy exits 0 by itself, well before drain_timeout. A SIGHUP meanwhile is ignored."""
    p, blob, path = _cached_blob(t, 0, admin={"drain_timeout": "60s"})
    idle = socket.create_connection(("127.0.0.1", p.port), timeout=10)
    idle.sendall(_request("/v2/"))
    r = _read_response(idle)
    eq(r[0], 200, "GET /v2/ on the connection left idle")
    with _small_window(p.port) as c:
        c.sendall(_request(path))
        status, headers, rest = _read_head(c)
        eq(status, 200, "blob hit")
        h, n = hashlib.sha256(rest), len(rest)
        while n < 8 << 20:
            b = c.recv(1 << 16)
            check(b, "blob cut at %d bytes before SIGTERM" % n)
            h.update(b)
            n += len(b)
        os.kill(p.proc.p.pid, signal.SIGTERM)
        eq(idle.recv(1), b"", "the idle keep-alive connection after SIGTERM")
        idle.close()

        def refused():
            try:
                socket.create_connection(("127.0.0.1", p.port), timeout=2).close()
                return False
            except ConnectionRefusedError:
                return True
        lib.wait_until(refused, 10, "new connections to be refused while draining")
        r = p.admin("/readyz")
        eq(r.status, 503, "readyz while draining (%s)" % r.body[:200])
        check(json.loads(r.body)["stopping"], "readyz body without stopping: %r" % r.body)
        # A SIGHUP while draining (a config rollout as the pod ends) is not a reload.
        os.kill(p.proc.p.pid, signal.SIGHUP)
        lib.wait_until(lambda: "reload (SIGHUP) ignored: shutting down" in p.log_text(), 10,
                       "the SIGHUP while draining to be logged as ignored")
        check("configuration applied" not in p.log_text(), "a reload applied while draining")
        check(p.proc.alive(), "the proxy exited with a response half sent")
        size = int(headers["content-length"])
        while n < size:
            b = c.recv(1 << 20)
            check(b, "blob cut at %d of %d bytes while draining" % (n, size))
            h.update(b)
            n += len(b)
        eq("sha256:" + h.hexdigest(), blob, "digest of the blob sent while draining")
        eq(c.recv(1), b"", "the connection after its last response while draining")
    eq(_exited(p, 20), 0, "exit status after draining")
    log = p.log_text()
    check("draining" in log and "drained: every response was sent" in log,
          "the log does not tell of the drain:\n%s" % lib.tail(p.log, 10))


def _cut_at_shutdown(p, blob, what):
    """The access line of the blob hit the proxy cut when it stopped: there is one, and it
    says so."""
    lines = [a for a in p.access() if a.get("path", "").endswith(blob) and
             a.get("cache") == "HIT"]
    check(lines, "no access line for the blob hit cut by %s:\n%s"
          % (what, lib.tail(p.log, 10)))
    if lines:
        line = lines[-1]
        eq((line.get("status"), line.get("aborted")), ("200", "shutdown"),
           "access line of the blob hit cut by %s: %r" % (what, line))
        size = int(lines[-1]["bytes"])
        check(size < 100 << 20, "a blob cut by %s is logged with bytes=%d, as if whole"
              % (what, size))


def test_sigterm_during_startup_as_pid1(t):
    """In a container regproxy is PID 1, and the kernel drops a signal PID 1 has no handler
    for: a SIGTERM that comes while it still opens its cache (a pod deleted during a long
    start-up) used to be lost, and the pod then served on until the kubelet's SIGKILL at the
    end of the grace period. It is held instead, and ends the proxy as soon as it starts."""
    p = t.proxy(registries=[t.s.anon_registry.conf("registry.anon.test")], start=False,
                wrapper=["unshare", "--pid", "--fork"])
    left, _ = lib.start_during_cache_open(p, lambda pid: os.kill(pid, signal.SIGTERM))
    check(left > 1000, "SIGTERM sent with %d leftovers in tmp/: the test raced" % left)
    eq(_exited(p, 30), 0, "exit status after a SIGTERM during startup (PID 1)")
    check("signal 15: shutting down" in p.log_text(),
          "no line for the SIGTERM:\n%s" % lib.tail(p.log, 10))


def test_drain_timeout_and_second_signal(t):
    """A client that stops reading cannot hold the proxy past drain_timeout (2 s here), and
    a second SIGTERM ends a long drain at once. Either way the response cut short has its
    access line (aborted=shutdown)."""
    p, blob, path = _cached_blob(t, 0)
    with _small_window(p.port) as c:
        c.sendall(_request(path))
        eq(_read_head(c)[0], 200, "blob hit")
        os.kill(p.proc.p.pid, signal.SIGTERM)
        eq(_exited(p, 15), 0, "exit status after drain_timeout")
    check("drain_timeout: 1 connections still busy" in p.log_text(),
          "no drain_timeout line:\n%s" % lib.tail(p.log, 10))
    _cut_at_shutdown(p, blob, "drain_timeout")
    hits = len([a for a in p.access() if a.get("cache") == "HIT"])
    p.admin_keys["drain_timeout"] = "60s"
    p.start()
    with _small_window(p.port) as c:
        c.sendall(_request(path))
        eq(_read_head(c)[0], 200, "blob hit after the restart")
        os.kill(p.proc.p.pid, signal.SIGTERM)
        time.sleep(0.5)
        check(p.proc.alive(), "the proxy exited at once with a response half sent")
        os.kill(p.proc.p.pid, signal.SIGTERM)
        eq(_exited(p, 15), 0, "exit status after a second SIGTERM")
    check("shutting down now" in p.log_text(),
          "no line for the second signal:\n%s" % lib.tail(p.log, 10))
    eq(len([a for a in p.access() if a.get("cache") == "HIT"]), hits + 1,
       "blob hits logged after the second run")
    _cut_at_shutdown(p, blob, "a second SIGTERM")


def test_pipelining_client_that_reads_nothing(t):
    """A client pipelines thousands of requests for a cached manifest and reads nothing: the
    proxy stops taking requests once about 1 MiB of answers waits for it (its input, and
    then TCP, push back), instead of queueing every answer in memory; read at last, every
    answer is there, in order."""
    reg = t.s.anon_registry
    # No ASan quarantine: RSS then follows live memory, not the freed requests kept aside.
    asan = os.environ.get("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:halt_on_error=1:"
                          "print_summary=1:detect_stack_use_after_return=0")
    p = t.proxy(registries=[reg.conf("registry.anon.test")],
                env={"ASAN_OPTIONS": asan + ":quarantine_size_mb=0"})
    r = p.get(MANIFEST, headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 200, "the manifest, cached")
    one = len(r.body)
    n = 9900  # the most one connection may ask (10,000)
    c = socket.socket()
    # A small receive window: the kernel holds little of what the proxy sends, as with a
    # client far away, so the answers pile up in the proxy if anywhere.
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    c.settimeout(30)
    c.connect(("127.0.0.1", p.port))
    try:
        rss0 = p.rss_kb()
        c.setblocking(False)
        data = _request(MANIFEST) * n
        sent, deadline = 0, time.monotonic() + 5
        while sent < len(data) and time.monotonic() < deadline:
            try:
                sent += c.send(data[sent:sent + 65536])
            except BlockingIOError:
                time.sleep(0.05)
        time.sleep(1)  # let the proxy answer all it takes
        grown = (p.rss_kb() - rss0) / 1024
        queued = n * (one + 300) / 2**20
        check(grown < queued / 2, "RSS grew %.1f MiB while the client read nothing (all %d "
              "answers would be about %.1f MiB)" % (grown, n, queued))
        c.setblocking(True)
        if sent < len(data):
            c.sendall(data[sent:])
        got, bodies = b"", 0
        while bodies < n:
            chunk = c.recv(1 << 20)
            check(chunk, "the proxy closed after %d answers" % bodies)
            got += chunk
            bodies = got.count(b"HTTP/1.1 200 ")
        eq(bodies, n, "answers")
    finally:
        c.close()


def test_close_with_pipelined_input_delivers_the_whole_answer(t):
    """A cached blob asked for with Connection: close, with more requests pipelined behind
    it: the connection closes after the blob, and the client gets every byte (closing with
    unread input made the kernel send a reset that cut the blob short)."""
    reg = t.s.anon_registry
    p = t.proxy(registries=[reg.conf("registry.anon.test")])
    layer = min(lib.image_manifests(reg, "ns/large:v1")[0]["layers"], key=lambda x: x["size"])
    path = "/v2/ns/large/blobs/" + layer["digest"]
    r = p.get(path)
    eq((r.status, lib.sha256(r.body)), (200, layer["digest"]), "the blob, cached")
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    c.settimeout(30)
    c.connect(("127.0.0.1", p.port))
    try:
        c.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path).encode() +
                  _request("/v2/") * 200)
        time.sleep(0.5)  # the proxy answers while the pipelined requests sit unread
        got = bytearray()
        while True:
            try:
                chunk = c.recv(1 << 20)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
        got = bytes(got)
    finally:
        c.close()
    head, _, body = got.partition(b"\r\n\r\n")
    check(head.startswith(b"HTTP/1.1 200"), "answer: %r" % got[:100])
    eq((len(body), hashlib.sha256(body).hexdigest()),
       (layer["size"], layer["digest"].split(":")[1]), "the blob's bytes before the close")


def _answers(got):
    """The statuses of the answers in got, bodies skipped by Content-Length."""
    answers = []
    while got:
        head, _, rest = got.partition(b"\r\n\r\n")
        n = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
        answers.append(int(head.split(b" ")[1]))
        got = rest[n:]
    return answers


def test_request_pipelined_behind_an_answer_given_inside_a_download(t):
    """A range past the end of an uncached blob joins its running download and is answered
    416 when upstream's headers say the size, inside that transfer's header callback; the
    request pipelined behind it, a miss, starts an upstream request of its own right there.
    libcurl refuses new transfers from inside its callbacks (it answered a false 503
    "cannot start the upstream request"): such a transfer is added right after, from the
    loop. The fake registry holds the blob's answer for a second (slowhead) so that the
    range surely joins the download before its headers."""
    fr = t.s.fakereg
    r = fr.client().manifest("ns/large", "v1")
    eq(r.status, 200, "ns/large manifest straight from the fake registry")
    layer = min(json.loads(r.body)["layers"], key=lambda x: x["size"])
    p = t.proxy(registries=[fr.conf()])
    blob = "/v2/mode/slowhead/ns/large/blobs/" + layer["digest"]
    with socket.create_connection(("127.0.0.1", p.port), timeout=30) as a, \
            socket.create_connection(("127.0.0.1", p.port), timeout=30) as b:
        a.sendall(_request(blob, close=True))
        time.sleep(0.3)  # the download is waiting for its headers
        b.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nRange: bytes=%d-\r\n\r\n"
                   % (blob, layer["size"] + 1000)).encode() +
                  _request("/v2/ns/large/manifests/v1", close=True))
        got_b = lib.read_to_eof(b)
        got_a = lib.read_to_eof(a)
    eq(_answers(got_b), [416, 200], "answers to the range past the end, then the manifest")
    body = got_a.partition(b"\r\n\r\n")[2]
    eq("sha256:" + hashlib.sha256(body).hexdigest(), layer["digest"], "the whole blob on A")


def test_half_close_after_a_cached_blob_request_gets_it_whole(t):
    """A client that half-closes after its request (shutdown(SHUT_WR), as `nc -N` does) still
    gets a cached blob whole, then the close, as nginx and Go deliver a cached answer (the
    read's EOF used to be taken for a client gone, cutting the blob after a few MB)."""
    reg = t.s.anon_registry
    p = t.proxy(registries=[reg.conf("registry.anon.test")])
    layer = max(lib.image_manifests(reg, "ns/large:v1")[0]["layers"], key=lambda x: x["size"])
    path = "/v2/ns/large/blobs/" + layer["digest"]
    r = lib.stream_get(p.port, path)
    eq((r.status, r.complete, r.digest), (200, True, layer["digest"]), "the blob, cached")
    # Published, not still a download being made durable (whose readers wait on upstream).
    lib.wait_until(lambda: p.raw("HEAD", path)[1].get("x-regproxy-cache") == "HIT", 20,
                   "the blob served from the cache")
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # the blob takes many writes
    c.settimeout(30)
    c.connect(("127.0.0.1", p.port))
    peer = "127.0.0.1:%d" % c.getsockname()[1]
    got = hashlib.sha256()
    n = 0
    try:
        c.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path).encode())
        c.shutdown(socket.SHUT_WR)
        time.sleep(0.3)  # the proxy reads the EOF while the blob is still going out
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = c.recv(65536)
            check(chunk, "closed before the answer's head: %r" % head[:100])
            if not chunk:
                return
            head += chunk
        head, _, body = head.partition(b"\r\n\r\n")
        check(head.startswith(b"HTTP/1.1 200"), "answer: %r" % head[:100])
        got.update(body)
        n = len(body)
        while True:
            chunk = c.recv(1 << 20)
            if not chunk:
                break
            got.update(chunk)
            n += len(chunk)
    finally:
        c.close()
    eq((n, "sha256:" + got.hexdigest()), (layer["size"], layer["digest"]),
       "the blob's bytes after a half-close, then the close")
    lines = lib.settle(lambda: [a for a in p.access() if a.get("peer") == peer], 1)
    eq([(a.get("status"), a.get("aborted")) for a in lines], [("200", None)],
       "its access line: delivered, not aborted")
