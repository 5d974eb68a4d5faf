# SPDX-License-Identifier: Apache-2.0
"""Tags lists and referrers pass through as they arrive, with backpressure, instead of being
buffered whole (docker-registry 2.8 answers every tag of a repository at once: megabytes where
CI tags every commit). Upstream's Content-Length is passed on; a body upstream frames otherwise
goes to HTTP/1.1 clients chunked and to HTTP/1.0 ones to the close. A cut upstream, or one
past the 16 MiB limit, is a cut answer to the client, never one that looks complete; a client
that does not read holds about 1 MiB of the proxy's memory, not the list."""
import hashlib
import json
import re
import socket
import threading
import time

import lib
import rawup
from lib import check, eq

LIST_BYTES = 12 * 1024 * 1024
PIECE = 256 * 1024
SUBJECT = "sha256:" + "ab" * 32
# No ASan quarantine: RSS then follows live memory, not freed buffers kept aside.
ASAN = ("detect_leaks=1:abort_on_error=0:halt_on_error=1:print_summary=1:"
        "detect_stack_use_after_return=0:quarantine_size_mb=0")

_bodies = {}


def _body(kind, name, size):
    """A tags list (or referrers index) of name, of at least size bytes."""
    key = (kind, name, size)
    if key not in _bodies:
        n = size // 52 + 1
        if kind == "tags":
            doc = {"name": name, "tags": ["ci-%07d-%s" % (i, hashlib.sha1(b"%d" % i).hexdigest())
                                          for i in range(n)]}
        else:
            doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                   "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                  "digest": "sha256:" + hashlib.sha256(b"%d" % i).hexdigest(),
                                  "size": 500, "artifactType": "application/vnd.example.sig"}
                                 for i in range(n // 3)]}
        _bodies[key] = json.dumps(doc).encode()
    return _bodies[key]


class _Lists:
    """A raw upstream answering /v2/ns/<mode>/tags/list and /v2/ns/<mode>/referrers/<digest>
    with a list of LIST_BYTES (17 MiB for mode "huge"). mode: length (Content-Length),
    chunked, close (neither: ended by the close); cut-<framing>: half the body, then (once
    the test calls cut()) a close."""

    def __init__(self, t):
        self.lock = threading.Lock()
        self.sent = 0  # body bytes written to the proxy, all requests
        self.go = threading.Event()
        self.up = rawup.RawUpstream(t, self.handle)
        t.defer(self.go.set)

    def cut(self):
        self.go.set()

    def handle(self, r):
        m = re.match(r"^/v2/ns/([a-z-]+)/(tags/list|referrers/(sha256:[0-9a-f]{64}))(\?.*)?$",
                     r.path)
        if not m:
            r.send(404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}',
                   [("Content-Type", "application/json")])
            return False
        mode, referrers = m.group(1), m.group(3) is not None
        size = 17 * 1024 * 1024 if mode == "huge" else LIST_BYTES
        body = _body("referrers" if referrers else "tags", "ns/" + mode, size)
        cut = mode.startswith("cut-")
        framing = (mode[4:] if cut else "chunked" if mode in ("huge", "skopeo")
                   else "length" if mode == "excess" else mode)
        head = ["HTTP/1.1 200 OK", "Connection: close"]
        if referrers:
            head += ["Content-Type: application/vnd.oci.image.index.v1+json",
                     "OCI-Filters-Applied: artifactType",
                     'Link: <https://up.example/v2/ns/%s/referrers/%s?n=5&ns=evil.test&last=x>; '
                     'rel="next"' % (mode, m.group(3))]
        elif mode == "skopeo":  # one page: skopeo follows every Link
            head += ["Content-Type: application/json"]
        else:
            head += ["Content-Type: application/json",
                     'Link: </v2/ns/%s/tags/list?last=t1&n=5>; rel="next"' % mode]
        if framing == "length":
            head.append("Content-Length: %d" % len(body))
        elif framing == "chunked":
            head.append("Transfer-Encoding: chunked")
        if r.method == "HEAD":
            r.raw(("\r\n".join(head) + "\r\n\r\n").encode())
            return False
        r.raw(("\r\n".join(head) + "\r\n\r\n").encode())
        end = len(body) // 2 if cut else len(body)
        for off in range(0, end, PIECE):
            piece = body[off:min(off + PIECE, end)]
            r.raw(b"%x\r\n%s\r\n" % (len(piece), piece) if framing == "chunked" else piece)
            with self.lock:
                self.sent += len(piece)
        if cut:
            self.go.wait(60)
            return False
        if framing == "chunked":
            r.raw(b"0\r\n\r\n")
        if mode == "excess":  # more than the Content-Length said
            r.raw(b'"extra":"bytes"}' * 1000)
        return False


def _proxy(t, env=None):
    lists = _Lists(t)
    p = t.proxy(registries=[lists.up.conf()], listeners=[{"default": "raw.test"}], env=env)
    return lists, p


def _connect(p, rcvbuf=None):
    c = socket.socket()
    if rcvbuf:
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    c.settimeout(60)
    c.connect(("127.0.0.1", p.port))
    return c


def _request(path, version="1.1", close=True):
    return ("GET %s HTTP/%s\r\nHost: x\r\n%s\r\n"
            % (path, version, "Connection: close\r\n" if close else "")).encode()


def _read_rest(c):
    """Everything until the close; (bytes, how it ended: "eof" or the error's name)."""
    out = []
    try:
        while True:
            b = c.recv(1 << 20)
            if not b:
                return b"".join(out), "eof"
            out.append(b)
    except (ConnectionError, OSError) as e:
        return b"".join(out), type(e).__name__


def _dechunk(raw):
    """(body, bytes after the last chunk), or (None, None) when the chunks do not end."""
    out, i = [], 0
    while True:
        j = raw.find(b"\r\n", i)
        if j < 0:
            return None, None
        n = int(raw[i:j].split(b";")[0], 16)
        if n == 0:
            check(raw[j + 2:j + 4] == b"\r\n", "no CRLF after the last chunk")
            return b"".join(out), raw[j + 4:]
        if len(raw) < j + 2 + n + 2:
            return None, None
        out.append(raw[j + 2:j + 2 + n])
        check(raw[j + 2 + n:j + 4 + n] == b"\r\n", "no CRLF after a chunk")
        i = j + 4 + n


def test_large_lists_exact_and_framed(t):
    """12 MiB tags lists and referrers, upstream framed by Content-Length, chunked or the
    close: the client gets upstream's bytes exactly, with the Content-Length when upstream
    gave one, else chunked (HTTP/1.1) or to the close (HTTP/1.0); Link and
    OCI-Filters-Applied as for a small list."""
    lists, p = _proxy(t)
    for mode in ("length", "chunked", "close"):
        for kind in ("tags", "referrers"):
            path = ("/v2/ns/%s/tags/list" % mode if kind == "tags"
                    else "/v2/ns/%s/referrers/%s" % (mode, SUBJECT))
            want = _body(kind, "ns/" + mode, LIST_BYTES)
            for version in ("1.1", "1.0"):
                what = "%s %s HTTP/%s" % (kind, mode, version)
                c = _connect(p)
                c.sendall(_request(path, version))
                status, h, rest = lib.read_head(c)
                more, end = _read_rest(c)
                c.close()
                raw = rest + more
                eq(status.split()[1], "200", what + " status")
                eq(end, "eof", what + ": how the connection ended")
                if mode == "length":
                    eq((h.get("content-length"), h.get("transfer-encoding")),
                       (str(len(want)), None), what + ": framing")
                    body = raw
                elif version == "1.1":
                    eq((h.get("content-length"), h.get("transfer-encoding")), (None, "chunked"),
                       what + ": framing")
                    body, after = _dechunk(raw)
                    check(body is not None, what + ": the chunks do not end (%d bytes)" % len(raw))
                    eq(after, b"", what + ": bytes after the last chunk")
                else:
                    eq((h.get("content-length"), h.get("transfer-encoding"),
                        h.get("connection")), (None, None, "close"), what + ": framing")
                    body = raw
                eq((len(body), lib.sha256(body)), (len(want), lib.sha256(want)),
                   what + ": body")
                if kind == "tags":
                    eq(h.get("link"), '</v2/ns/%s/tags/list?last=t1&n=5>; rel="next"' % mode,
                       what + ": Link")
                else:
                    eq(h.get("link"), '</v2/ns/%s/referrers/%s?n=5&last=x>; rel="next"'
                       % (mode, SUBJECT), what + ": Link")
                    eq(h.get("oci-filters-applied"), "artifactType",
                       what + ": OCI-Filters-Applied")
    # HEAD: upstream's head, no body, whatever the framing.
    for mode in ("length", "chunked"):
        st, h, body = p.raw("HEAD", "/v2/ns/%s/tags/list" % mode)
        eq((st, body, h.get("transfer-encoding")), (200, b"", None), "HEAD tags " + mode)
    # Keep-alive: a chunked list, then another request on the same connection.
    c = _connect(p)
    c.sendall(_request("/v2/ns/chunked/tags/list", close=False) + _request("/v2/"))
    raw, end = _read_rest(c)
    c.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    check(b"transfer-encoding: chunked" in head.lower(), "first answer chunked: %r" % head)
    body, after = _dechunk(rest)
    eq(lib.sha256(body or b""), lib.sha256(_body("tags", "ns/chunked", LIST_BYTES)),
       "the chunked list before a pipelined request")
    check(after.startswith(b"HTTP/1.1 200 "), "the next answer after the list: %r" % after[:200])
    # A real client (Go's net/http) reads the chunked list.
    r = t.s.skopeo(["list-tags", "--tls-verify=false", "--no-creds",
                    "docker://%s/ns/skopeo" % p.hostport], check_rc=False)
    eq(r.returncode, 0, "skopeo list-tags of a chunked list (stderr %r)" % r.err[-500:])
    eq(json.loads(r.out)["Tags"], json.loads(_body("tags", "ns/skopeo", LIST_BYTES))["tags"],
       "the tags skopeo listed")
    # Logged with what the client was sent: the body, not the chunks' framing.
    for mode in ("length", "chunked", "close"):
        path = "/v2/ns/%s/tags/list" % mode
        lines = [(a.get("status"), a.get("bytes"), a.get("aborted"))
                 for a in p.access() if a.get("path") == path and a.get("method") == "GET"]
        eq(set(lines), {("200", str(len(_body("tags", "ns/" + mode, LIST_BYTES))), None)},
           "access lines of %s" % path)


def test_large_lists_over_tls(t):
    """The same through a TLS listener: chunked, and upstream's Content-Length, exact."""
    lists = _Lists(t)
    _, key, crt = lib.serving_cert(t, "list-tls")
    p = t.proxy(registries=[lists.up.conf()],
                listeners=[{"default": "raw.test", "tls_cert": crt, "tls_key": key}])
    for mode in ("length", "chunked"):
        r = lib.stream_get(p.port, "/v2/ns/%s/tags/list" % mode, tls=True)
        want = _body("tags", "ns/" + mode, LIST_BYTES)
        eq((r.status, r.complete, r.got, r.digest), (200, True, len(want), lib.sha256(want)),
           "%s over TLS (%r)" % (mode, r))
        eq(r.header("transfer-encoding"), "chunked" if mode == "chunked" else None,
           mode + " over TLS: framing")


def test_clients_that_do_not_read_hold_little(t):
    """Eight clients ask for a 12 MiB tags list and read nothing: buffered, each held the
    whole list (and a copy on its way out), about 200 MiB in all; streamed with backpressure,
    each holds about 1 MiB. Read at last, every list is whole."""
    lists, p = _proxy(t, env={"ASAN_OPTIONS": ASAN})
    for mode in ("length", "chunked"):
        path = "/v2/ns/%s/tags/list" % mode
        rss0 = p.rss_kb()
        sent0 = lists.sent
        cs = []
        for _ in range(8):
            c = _connect(p, rcvbuf=4096)
            c.sendall(_request(path))
            cs.append(c)
        # Until upstream has sent all it will (all 8 lists, or what backpressure lets
        # through): its count stops moving for a second.
        last, still = -1, 0
        for _ in range(600):
            now = lists.sent - sent0
            still = still + 1 if now == last else 0
            last = now
            if now >= 8 * LIST_BYTES or still >= 10:
                break
            time.sleep(0.1)
        grown = (p.rss_kb() - rss0) / 1024
        check(grown < 40, "%s: RSS grew %.1f MiB with 8 clients not reading a %d MiB list "
              "(upstream sent %.1f MiB)" % (mode, grown, LIST_BYTES >> 20, last / 2**20))
        want = lib.sha256(_body("tags", "ns/" + mode, LIST_BYTES))

        def read(c):
            status, h, rest = lib.read_head(c)
            more, end = _read_rest(c)
            c.close()
            raw = rest + more
            body = _dechunk(raw)[0] if h.get("transfer-encoding") == "chunked" else raw
            return status, end, lib.sha256(body or b"")
        got = lib.parallel([lambda c=c: read(c) for c in cs])
        eq(got, [("HTTP/1.1 200 OK", "eof", want)] * 8, mode + ": the lists read at last")


def test_upstream_cut_mid_body(t):
    """Upstream closes halfway through the list, after the client has had some of it: the
    client sees a cut, never a complete-looking answer: short of the Content-Length, chunks
    that do not end, or (HTTP/1.0 and a chunked upstream: no length) a reset rather than a
    clean close."""
    # (An upstream that ends its list by the close cannot be told cut from whole: that one
    # passes as whole, as it did buffered.)
    for framing, version in (("length", "1.1"), ("length", "1.0"), ("chunked", "1.1"),
                             ("chunked", "1.0")):
        what = "cut %s, HTTP/%s" % (framing, version)
        lists, p = _proxy(t)
        c = _connect(p)
        c.sendall(_request("/v2/ns/cut-%s/tags/list" % framing, version))
        status, h, rest = lib.read_head(c)
        eq(status.split()[1], "200", what + ": status")
        # Some of the body is with the client before upstream goes away.
        while len(rest) < 64 * 1024:
            b = c.recv(65536)
            check(b, what + ": closed after %d body bytes" % len(rest))
            rest += b
        lists.cut()
        more, end = _read_rest(c)
        c.close()
        raw = rest + more
        full = len(_body("tags", "ns/cut-" + framing, LIST_BYTES))
        if h.get("content-length"):
            eq(h["content-length"], str(full), what + ": Content-Length")
            check(len(raw) < full, what + ": %d of %d bytes, yet complete" % (len(raw), full))
        elif h.get("transfer-encoding") == "chunked":
            eq(_dechunk(raw)[0], None, what + ": the chunks ended (%d bytes)" % len(raw))
        else:
            eq(h.get("connection"), "close", what + ": Connection")
            check(end != "eof", what + ": a clean close after %d of %d bytes" % (len(raw), full))
        lib.wait_until(lambda: [a for a in p.access() if a.get("aborted") == "upstream"], 60,
                       what + ": the access line of the cut answer")


def test_list_longer_than_its_content_length(t):
    """Bytes past upstream's Content-Length are not passed on: the client gets the list the
    length announced, and the connection stays usable."""
    lists, p = _proxy(t)
    want = _body("tags", "ns/excess", LIST_BYTES)
    c = _connect(p)
    c.sendall(_request("/v2/ns/excess/tags/list", close=False) + _request("/v2/"))
    raw, end = _read_rest(c)
    c.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    check(b"\r\ncontent-length: %d\r\n" % len(want) in head.lower(), "head %r" % head)
    eq(lib.sha256(rest[:len(want)]), lib.sha256(want), "the list")
    check(rest[len(want):].startswith(b"HTTP/1.1 200 "),
          "the next answer right after it: %r" % rest[len(want):len(want) + 100])


def test_list_past_the_limit_cut(t):
    """A chunked list that runs past 16 MiB is cut there, the client's answer with it."""
    lists, p = _proxy(t)
    r = lib.stream_get(p.port, "/v2/ns/huge/tags/list")
    check(r.status in (200, 502), "status %r" % r)
    if r.status == 200:
        eq((r.complete, r.header("transfer-encoding")), (False, "chunked"),
           "a list past the limit (%r)" % r)
    lib.wait_until(lambda: [a for a in p.access() if a.get("path") == "/v2/ns/huge/tags/list"],
                   60, "the access line")
    a = [a for a in p.access() if a.get("path") == "/v2/ns/huge/tags/list"][0]
    check(a.get("aborted") == "upstream" or a.get("status") == "502", "access line %r" % a)
    check(int(a.get("bytes")) <= 16 * 1024 * 1024, "bytes passed: %r" % a)


def test_slow_readers_past_the_limit(t):
    """Slow readers of a chunked list that runs past 16 MiB: their answers are paused and
    resumed all along, so the piece that crosses the limit often arrives as curl hands back
    what it held while paused. That refusal only made the unpause fail (curl 7.88): the
    transfer went on, met the limit again with the next piece, and the first error's text
    leaked (LeakSanitizer at the proxy's stop, in 10 of 11 runs). Each client must see a
    cut answer, never the last chunk, and the proxy stop clean."""
    lists, p = _proxy(t)
    ends = []

    def reader():
        c = _connect(p, rcvbuf=16384)
        c.sendall(_request("/v2/ns/huge/tags/list"))
        tail = b""
        try:
            while True:
                b = c.recv(16384)
                if not b:
                    break
                tail = (tail + b)[-16:]
                time.sleep(0.0005)
        except OSError:
            pass
        c.close()
        ends.append(tail)
    for _ in range(3):
        readers = [threading.Thread(target=reader) for _ in range(6)]
        for x in readers:
            x.start()
        for x in readers:
            x.join()
    eq(len(ends), 18, "readers done")
    check(not [e for e in ends if e.endswith(b"0\r\n\r\n")],
          "a list past the limit ended with its last chunk: %r" % ends)
    problems = p.stop()
    check(not problems, "; ".join(problems))


def test_client_leaves_mid_list(t):
    """A client that leaves halfway through a streamed list (its transfer paused for it) is
    logged as gone, and its upstream transfer dropped; the next client gets the whole list."""
    lists, p = _proxy(t)
    for mode in ("length", "chunked"):
        path = "/v2/ns/%s/tags/list" % mode
        c = _connect(p, rcvbuf=4096)
        c.sendall(_request(path))
        status, h, rest = lib.read_head(c)
        eq(status.split()[1], "200", mode + ": status")
        while len(rest) < 2 * 1024 * 1024:
            b = c.recv(65536)
            check(b, mode + ": closed after %d body bytes" % len(rest))
            rest += b
        c.close()
        lib.wait_until(lambda: [a for a in p.access() if a.get("path") == path and
                                a.get("aborted") == "client"], 150, mode + ": the client's cut")
        r = lib.stream_get(p.port, path)
        want = _body("tags", "ns/" + mode, LIST_BYTES)
        eq((r.status, r.complete, r.digest), (200, True, lib.sha256(want)),
           mode + ": the next client (%r)" % r)


def test_close_delimited_list_cut_at_shutdown(t):
    """An HTTP/1.0 client's list that upstream sends without a length runs to the close. The
    proxy shutting down mid-list (drain_timeout, 2 s here) cuts it: the connection is reset,
    as for an upstream cut, not closed cleanly, which would make the half list look whole."""
    lists, p = _proxy(t)
    c = _connect(p)
    c.sendall(_request("/v2/ns/cut-chunked/tags/list", "1.0"))
    status, h, rest = lib.read_head(c)
    eq((status.split()[1], h.get("content-length"), h.get("transfer-encoding"),
        h.get("connection")), ("200", None, None, "close"), "the head of a list to the close")
    while len(rest) < 64 * 1024:
        b = c.recv(65536)
        check(b, "closed after %d body bytes" % len(rest))
        rest += b
    # Upstream holds the second half back: the list is under way when the proxy stops.
    problems = p.stop()
    check(not problems, "; ".join(problems))
    more, end = _read_rest(c)
    c.close()
    full = len(_body("tags", "ns/cut-chunked", LIST_BYTES))
    check(len(rest) + len(more) < full, "%d of %d bytes" % (len(rest) + len(more), full))
    check(end != "eof", "the list cut at shutdown ended in a clean close after %d of %d bytes"
          % (len(rest) + len(more), full))
    check([a for a in p.access() if a.get("aborted") == "shutdown"],
          "the access line of the list cut at shutdown")
