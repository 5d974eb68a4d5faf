# SPDX-License-Identifier: Apache-2.0
"""A client reading a 100 MB blob slowly must not make the proxy buffer it in memory
(DESIGN: the temp file is the buffer), nor hold back a fast client of the same blob. Over
TLS a cached blob, or the parts of a multipart answer, are read into the connection a piece
at a time, so the proxy's memory stays flat there too, and requests pipelined behind are
answered after them."""
import hashlib
import os
import socket
import ssl
import threading
import time

import lib
from lib import check, eq

RSS_LIMIT_KB = 64 * 1024
# ASan keeps freed memory in a quarantine (256 MB by default) that shows up in RSS; keep it
# small here so the test measures the proxy's buffering, not the sanitizer's.
ASAN = ("detect_leaks=1:halt_on_error=1:quarantine_size_mb=8:"
        "thread_local_quarantine_size_kb=256:malloc_context_size=10")


def _big_layer(s):
    reg = s.token_registry
    layers = lib.image_manifests(reg, "ns/large:v1")[0]["layers"]
    big = max(layers, key=lambda x: x["size"])
    check(big["size"] >= 100 * 1024 * 1024, "large layer is only %d bytes" % big["size"])
    return big


def _open(p, path, rcvbuf=None):
    c = socket.socket()
    if rcvbuf:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    c.settimeout(60)
    c.connect(("127.0.0.1", p.port))
    c.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
               % (path, p.hostport)).encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        b = c.recv(4096)
        check(b, "connection closed before the response header")
        buf += b
    head, _, rest = buf.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return c, status, head.decode("latin-1"), rest


def _read_all(c, h, rest, want):
    h.update(rest)
    n = len(rest)
    while True:
        b = c.recv(1 << 20)
        if not b:
            break
        h.update(b)
        n += len(b)
    c.close()
    return n


def test_slow_reader_memory_stays_flat(t):
    s = t.s
    big = _big_layer(s)
    p = t.proxy(env={"ASAN_OPTIONS": ASAN})
    base = p.rss_kb()
    c, status, head, rest = _open(p, "/v2/ns/large/blobs/" + big["digest"], rcvbuf=16384)
    eq(status, 200, "status of the blob GET (header: %s)" % head)
    h = hashlib.sha256()
    h.update(rest)
    got = len(rest)
    peak = base
    t0 = time.monotonic()
    # ~1 MB/s for 8 s, sampling the proxy's RSS.
    while time.monotonic() - t0 < 8:
        b = c.recv(64 * 1024)
        check(b, "connection closed after %d bytes" % got)
        h.update(b)
        got += len(b)
        peak = max(peak, p.rss_kb())
        time.sleep(0.06)
    slow_bytes = got
    n = _read_all(c, h, b"", big["size"])
    got += n
    peak = max(peak, p.rss_kb())
    eq(got, big["size"], "bytes received")
    eq("sha256:" + h.hexdigest(), big["digest"], "digest of what the slow client received")
    check(peak < RSS_LIMIT_KB, "proxy RSS peaked at %d MB while a client read slowly "
          "(%d MB read slowly; RSS at start %d MB; limit %d MB)"
          % (peak // 1024, slow_bytes // 1048576, base // 1024, RSS_LIMIT_KB // 1024))


def test_fast_client_not_held_back_by_slow_one(t):
    s = t.s
    big = _big_layer(s)
    p = t.proxy(env={"ASAN_OPTIONS": ASAN})
    mark = s.token_registry.mark()
    path = "/v2/ns/large/blobs/" + big["digest"]
    slow, status, head, rest = _open(p, path, rcvbuf=16384)
    eq(status, 200, "slow client's status")
    stop = threading.Event()

    def trickle():
        while not stop.is_set():
            try:
                if not slow.recv(16 * 1024):
                    return
            except OSError:
                return
            time.sleep(0.05)
    th = threading.Thread(target=trickle, daemon=True)
    th.start()
    try:
        time.sleep(1)
        t0 = time.monotonic()
        fast, status, head, rest = _open(p, path)
        eq(status, 200, "fast client's status")
        h = hashlib.sha256()
        n = _read_all(fast, h, rest, big["size"])
        took = time.monotonic() - t0
        eq((n, "sha256:" + h.hexdigest()), (big["size"], big["digest"]), "fast client's blob")
        check(took < 30, "a fast client needed %.0f s for 100 MB while a slow one was reading "
              "the same blob" % took)
        check(th.is_alive(), "the slow client's connection ended early")
    finally:
        stop.set()
        slow.close()
    # docker-registry logs a request when it ends: give an aborted second fetch time to show.
    time.sleep(1.5)
    reg = s.token_registry
    n_up = sum(1 for m, path_, st in reg.since(mark)
               if m == "GET" and path_.startswith(path) and st != 401)
    check(n_up <= 1, "the blob was fetched %d times from upstream for two clients" % n_up)


class _Responses:
    """Reads responses with a Content-Length off one connection, in order."""

    def __init__(self, c):
        self.c, self.buf = c, b""

    def next(self, h):
        """(status, body length), the body hashed into h."""
        while b"\r\n\r\n" not in self.buf:
            b = self.c.recv(65536)
            check(b, "connection closed before a response head")
            self.buf += b
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.head = lines
        length = int(next(x.split(":", 1)[1] for x in lines
                          if x.lower().startswith("content-length:")))
        h.update(self.buf[:length])
        left = length - min(length, len(self.buf))
        self.buf = self.buf[length:]
        while left:
            b = self.c.recv(min(left, 1 << 20))
            check(b, "connection closed %d bytes before the body's end" % left)
            h.update(b)
            left -= len(b)
        return int(lines[0].split()[1]), length


def _tls_proxy(t):
    reg = t.s.token_registry
    _, key, crt = lib.serving_cert(t, "slow-tls")
    return t.proxy(registries=[reg.conf()], env={"ASAN_OPTIONS": ASAN},
                   listeners=[{"default": reg.name, "tls_cert": crt, "tls_key": key}])


def _tls_fetch(p, path, then=None):
    """GET path over TLS, then (pipelined behind it, sent at once) GET `then`: the first
    response's (status, length, digest), and the second's status or None."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", p.port), timeout=60) as raw:
        with ctx.wrap_socket(raw) as c:
            reqs = [path] + ([then] if then else [])
            c.sendall("".join("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (x, p.hostport)
                              for x in reqs).encode())
            rs = _Responses(c)
            h = hashlib.sha256()
            first = rs.next(h) + ("sha256:" + h.hexdigest(),)
            return first, rs.next(hashlib.sha256())[0] if then else None


class _PeakRss:
    def __init__(self, p):
        self.p, self.peak, self.stop = p, p.rss_kb(), threading.Event()
        self.base = self.peak
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()

    def _run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.p.rss_kb())
            time.sleep(0.01)

    def done(self, what):
        self.stop.set()
        self.th.join()
        check(self.peak < RSS_LIMIT_KB, "proxy RSS peaked at %d MB %s (at start %d MB; limit "
              "%d MB)" % (self.peak // 1024, what, self.base // 1024, RSS_LIMIT_KB // 1024))


def test_tls_fill_readers(t):
    """Clients of one download over TLS: each gets the blob whole, from one upstream GET,
    and the proxy's memory stays flat."""
    big = _big_layer(t.s)
    p = _tls_proxy(t)
    path = "/v2/ns/large/blobs/" + big["digest"]
    mark = t.s.token_registry.mark()
    rss = _PeakRss(p)
    try:
        res = lib.parallel([lambda: _tls_fetch(p, path)] * 6)
    finally:
        rss.done("while 6 clients read a 100 MB download over TLS")
    for i, (first, _) in enumerate(res):
        eq(first, (200, big["size"], big["digest"]), "TLS client %d of the download" % (i + 1))
    time.sleep(1.5)  # docker-registry logs a request when it ends
    gets = [x for x in t.s.token_registry.since(mark)
            if x[0] == "GET" and x[1].startswith(path) and x[2] != 401]
    eq(len(gets), 1, "upstream GETs of the blob for 6 TLS clients (%s)" % gets)


def test_tls_cached_blob_memory_flat_and_pipelining(t):
    big = _big_layer(t.s)
    p = _tls_proxy(t)
    path = "/v2/ns/large/blobs/" + big["digest"]
    first, _ = _tls_fetch(p, path)  # the cold pull fills the cache
    eq(first, (200, big["size"], big["digest"]), "the blob over TLS, cold")
    lib.wait_until(lambda: lib.cache_files(p.cache_dir, "blobs"), 10, "the blob in the cache")
    rss = _PeakRss(p)
    try:
        first, st = _tls_fetch(p, path, then="/v2/")
    finally:
        rss.done("sending a cached %d MB blob over TLS" % (big["size"] >> 20))
    eq(first, (200, big["size"], big["digest"]), "the cached blob over TLS")
    eq(st, 200, "the request pipelined behind the cached blob over TLS")


def test_tls_multipart_memory_flat(t):
    """Two halves of a cached 100 MB blob in one multipart answer over TLS: every byte right,
    memory flat, and a request pipelined behind it answered after it."""
    big = _big_layer(t.s)
    p = _tls_proxy(t)
    path = "/v2/ns/large/blobs/" + big["digest"]
    first, _ = _tls_fetch(p, path)  # the cold pull fills the cache
    eq(first, (200, big["size"], big["digest"]), "the blob over TLS, cold")
    blob_file = lib.cache_path(p.cache_dir, "blobs", big["digest"])
    lib.wait_until(lambda: os.path.isfile(blob_file), 10, "the blob in the cache")
    size = big["size"]
    spans = [(0, size // 2 - 1), (size // 2, size - 1)]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    got = hashlib.sha256()
    rss = _PeakRss(p)
    try:
        with socket.create_connection(("127.0.0.1", p.port), timeout=60) as raw:
            with ctx.wrap_socket(raw) as c:
                c.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nRange: bytes=%s\r\n\r\n"
                           "GET /v2/ HTTP/1.1\r\nHost: %s\r\n\r\n"
                           % (path, p.hostport, ",".join("%d-%d" % x for x in spans),
                              p.hostport)).encode())
                rs = _Responses(c)
                st, length = rs.next(got)
                head = rs.head
                st2 = rs.next(hashlib.sha256())[0]
    finally:
        rss.done("sending a %d MB multipart answer over TLS" % (size >> 20))
    eq((st, st2), (206, 200), "the multipart answer and the request behind it")
    ctype = next(x.split(":", 1)[1].strip() for x in head if x.lower().startswith("content-type:"))
    check(ctype.startswith("multipart/byteranges; boundary="), "Content-Type %r" % ctype)
    boundary = ctype.split("boundary=", 1)[1]
    want = hashlib.sha256()
    n = 0
    with open(blob_file, "rb") as f:
        for i, (lo, hi) in enumerate(spans):
            part = ("%s--%s\r\nContent-Type: application/octet-stream\r\n"
                    "Content-Range: bytes %d-%d/%d\r\n\r\n"
                    % ("\r\n" if i else "", boundary, lo, hi, size)).encode()
            want.update(part)
            n += len(part)
            f.seek(lo)
            left = hi - lo + 1
            while left:
                b = f.read(min(left, 1 << 20))
                want.update(b)
                n += len(b)
                left -= len(b)
        tail = ("\r\n--%s--\r\n" % boundary).encode()
        want.update(tail)
        n += len(tail)
    eq((length, got.hexdigest()), (n, want.hexdigest()), "the multipart body over TLS")
    # A client that leaves early is logged with what left the proxy, not the whole answer.
    mark = len(p.access())
    with socket.create_connection(("127.0.0.1", p.port), timeout=60) as raw:
        with ctx.wrap_socket(raw) as c:
            c.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nRange: bytes=%s\r\n\r\n"
                       % (path, p.hostport, ",".join("%d-%d" % x for x in spans))).encode())
            check(c.recv(65536).startswith(b"HTTP/1.1 206"), "the multipart answer, cut")
    line = lib.wait_until(lambda: [x for x in p.access()[mark:]
                                   if x.get("path", "").endswith(big["digest"])], 10,
                          "the access line of the cut multipart answer")[0]
    eq((line.get("status"), line.get("aborted")), ("206", "client"),
       "access line of a multipart answer cut short: %r" % line)
    check(int(line["bytes"]) < n // 2, "a client that read 64 KiB is logged with bytes=%s of %d"
          % (line["bytes"], n))
