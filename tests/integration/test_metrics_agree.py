# SPDX-License-Identifier: Apache-2.0
"""/metrics and the access log tell the same story. A mix of requests (pings, manifests and
blobs missed, hit, HEAD, 304, ranges 206 and 416, a tag revalidated and one served stale,
404s from upstream and from routing, a push's 405, bad heads 400/414/431, a 401 challenge, refusals at accept outside allow (403),
plain HTTP on a TLS listener (400), one past max_connections (503), tags lists and referrers
streamed with Content-Length, chunked and to the close, a list upstream cut short, a client
that leaves mid-body, a blob served from a fill while it downloads) is then read back from
both, and their totals compared. Which metric is which access-log field:

- regproxy_requests_total{status=C} summed over routes: access lines whose status is of
  class C; a line with status 0 (nothing was answered) has no sample: the metric counts
  requests answered. A refusal past max_connections has neither (a rationed warning and
  regproxy_connections_refused_total instead).
- regproxy_cache_requests_total{result=R}: lines with cache=R (upper case) and a content
  status (2xx, 304) that are not the ping (/v2/, answered by the proxy itself).
- regproxy_served_bytes_total{source="cache"}: the bytes of those lines with cache HIT, STALE
  or REVALIDATED; {source="upstream"}: those with MISS or PASS. Error bodies (the refusals'
  too: 403 at accept, 400 on a TLS listener) are in the access line's bytes but are no
  content, so in neither (the man page and HELP say content). Each access line's bytes is
  also the body its client received, without chunk framing.
- regproxy_upstream_requests_total{registry=R,status=C}: the requests registry R received
  (its own record here), and the lines of R's requests whose upstream is of class C: one
  request each, but for the proxy's own pings (no access line) and the readers of one fill,
  whose lines all carry that download's status."""
import base64
import hashlib
import json
import re
import socket
import threading
import time

import lib
import rawup
from lib import check, eq

SUBJECT = "sha256:" + "cd" * 32
SLOW_BYTES = 4 * 1024 * 1024


def _list(name, n):
    return json.dumps({"name": name, "tags": ["t%05d-%s" % (i, hashlib.sha1(b"%d" % i).hexdigest())
                                              for i in range(n)]}).encode()


class _Up:
    """raw.test: an image (manifest ns/app:v1, its config and layer), tags lists and
    referrers framed by Content-Length, chunked or to the close, a list cut short, a list
    that waits, once it sent 1 MiB, for the test, and a layer that waits half way for the
    test (so that a second client joins its fill). Every answer it sends is recorded."""

    def __init__(self, t):
        self.m, self.md, self.layer, self.ld, self.cfg, self.cd = rawup.image()
        self.lock = threading.Lock()
        self.sent = []  # (path, status)
        self.down = False  # manifests answer 503
        self.slow_go = threading.Event()
        self.layer_go = threading.Event()
        t.defer(self.slow_go.set)
        t.defer(self.layer_go.set)
        self.up = rawup.RawUpstream(t, self.handle)

    def note(self, r, status):
        with self.lock:
            self.sent.append((r.path, status))

    def handle(self, r):
        path = r.path.split("?")[0]
        if path == "/v2/":
            self.note(r, 200)
            r.send(200, b"{}", [("Content-Type", "application/json")])
            return False
        if path == "/v2/ns/app/manifests/v1":
            if self.down:
                self.note(r, 503)
                r.send(503, b'{"errors":[{"code":"UNAVAILABLE","message":"down"}]}',
                       [("Content-Type", "application/json")])
                return False
            self.note(r, 200)
            r.answer(self.m, "application/vnd.oci.image.manifest.v1+json", self.md)
            return False
        if path == "/v2/ns/app/blobs/" + self.cd:
            self.note(r, 200)
            r.answer(self.cfg, "application/octet-stream", self.cd)
            return False
        if path == "/v2/ns/app/blobs/" + self.ld and r.method == "GET":
            self.note(r, 200)
            r.raw(("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                   "Content-Length: %d\r\nConnection: close\r\n\r\n" % len(self.layer)).encode())
            half = len(self.layer) // 2
            r.raw(self.layer[:half])
            self.layer_go.wait(60)
            r.raw(self.layer[half:])
            return False
        m = re.match(r"^/v2/ns/(length|chunked|close|cut|slow)/"
                     r"(tags/list|referrers/sha256:[0-9a-f]{64})$", path)
        if not m or r.method != "GET":
            self.note(r, 404)
            r.send(404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}',
                   [("Content-Type", "application/json")])
            return False
        self.note(r, 200)
        mode = m.group(1)
        body = _list("ns/" + mode, SLOW_BYTES // 50 if mode == "slow" else 700)
        head = ["HTTP/1.1 200 OK", "Connection: close", "Content-Type: application/json"]
        if mode in ("length", "cut", "slow"):
            head.append("Content-Length: %d" % len(body))
        elif mode == "chunked":
            head.append("Transfer-Encoding: chunked")
        r.raw(("\r\n".join(head) + "\r\n\r\n").encode())
        if mode == "chunked":
            for off in range(0, len(body), 4096):
                piece = body[off:off + 4096]
                r.raw(b"%x\r\n%s\r\n" % (len(piece), piece))
            r.raw(b"0\r\n\r\n")
        elif mode == "cut":
            r.raw(body[:len(body) // 2])
        elif mode == "slow":
            r.raw(body[:1 << 20])
            self.slow_go.wait(60)
            try:
                r.raw(body[1 << 20:])
            except OSError:
                pass
        else:
            r.raw(body)
        return False


def _read_response(c):
    """Reads one response to the close: (status, body bytes after the head, as sent)."""
    data = lib.read_to_eof(c)
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _m(m, name, **labels):
    return m.get((name, frozenset(labels.items())), 0)


def _sum(m, name, **labels):
    return sum(v for (n, ls), v in m.items()
               if n == name and all((k, want) in ls for k, want in labels.items()))


def test_metrics_and_access_log_agree(t):
    s = t.s
    up = _Up(t)
    d, key, crt = lib.serving_cert(t, "agree")
    htp = lib.htpasswd_file(t, "node", "node-secret")
    p = t.proxy(registries=[s.anon_registry.conf("registry.anon.test"),
                            up.up.conf(tag_ttl="1s")],
                listeners=[{"default": "registry.anon.test"},
                           {"default": "registry.anon.test", "tls_cert": crt, "tls_key": key},
                           {"default": "registry.anon.test", "allow": "10.0.0.0/8"},
                           {"default": "registry.anon.test", "htpasswd": htp},
                           {"default": "registry.anon.test", "max_connections": "1"}])
    # From here on every request is counted in both (the start-up probe is in both too,
    # and the comparison takes everything since the start).
    ref = "ns/multi:v1"
    man = lib.image_manifests(s.anon_registry, ref)[0]
    cfg, layer = man["config"]["digest"], man["layers"][0]["digest"]
    pushed = s.anon_registry.pushed[ref]
    acc = {"Accept": lib.ACCEPT_ALL}
    gets = [
        ("GET", "/v2/", {}),
        ("GET", "/v2/ns/multi/manifests/v1", acc),
        ("GET", "/v2/ns/multi/manifests/v1", acc),
        ("HEAD", "/v2/ns/multi/manifests/v1", acc),
        ("GET", "/v2/ns/multi/manifests/v1", dict(acc, **{"If-None-Match": '"%s"'
                                                           % pushed["digest"]})),
        ("GET", "/v2/ns/multi/manifests/nosuchtag", acc),
        ("GET", "/v2/ns/multi/blobs/" + cfg, {}),
        ("GET", "/v2/ns/multi/blobs/" + cfg, {}),
        ("HEAD", "/v2/ns/multi/blobs/" + cfg, {}),
        ("GET", "/v2/ns/multi/blobs/" + cfg, {"Range": "bytes=0-9"}),
        ("GET", "/v2/ns/multi/blobs/" + cfg, {"Range": "bytes=99999999-"}),
        ("GET", "/v2/ns/multi/blobs/" + cfg, {"If-None-Match": '"%s"' % cfg}),
        ("GET", "/v2/ns/multi/blobs/" + layer, {"Range": "bytes=5-100"}),
        ("GET", "/v2/ns/multi/blobs/sha256:" + "0" * 64, {}),
        ("GET", "/v2/%2e%2e/manifests/latest", {}),
        ("GET", "/v2/_catalog", {}),
        ("PUT", "/v2/ns/multi/manifests/v1", {}),
        ("GET", "/v2/raw.test/ns/app/manifests/v1", acc),
        ("GET", "/v2/raw.test/ns/app/blobs/" + up.cd, {}),
        ("GET", "/v2/raw.test/ns/app/blobs/" + up.cd, {}),
        ("GET", "/v2/raw.test/ns/app/blobs/sha256:" + "1" * 64, {}),
        ("GET", "/v2/raw.test/ns/length/tags/list", {}),
        ("GET", "/v2/raw.test/ns/chunked/tags/list", {}),
        ("GET", "/v2/raw.test/ns/close/tags/list", {}),
        ("GET", "/v2/raw.test/ns/chunked/referrers/" + SUBJECT, {}),
        ("HEAD", "/v2/raw.test/ns/chunked/tags/list", {}),
        ("GET", "/v2/raw.test/ns/cut/tags/list", {}),
    ]
    received = {}  # X-Request-Id: body bytes the client got (dechunked)
    for method, path, h in gets:
        try:
            st, hd, body = p.raw(method, path, h)
            received[hd.get("x-request-id")] = len(body)
        except (lib.Failure, OSError):
            pass  # a cut answer: what the proxy logged and counted is what is compared
    # The tag past its tag_ttl: revalidated, then served stale while raw.test fails.
    man_path = "/v2/raw.test/ns/app/manifests/v1"
    for down, want in ((False, "REVALIDATED"), (True, "STALE")):
        up.down = down
        time.sleep(1.2)
        st, hd, body = p.raw("GET", man_path, acc)
        eq((st, hd.get("x-regproxy-cache")), (200, want), "the tag past its tag_ttl")
        received[hd.get("x-request-id")] = len(body)
    # Lists to HTTP/1.0 clients: chunked upstream, sent to the close.
    for path in ("/v2/raw.test/ns/chunked/tags/list", "/v2/raw.test/ns/close/referrers/" + SUBJECT):
        with socket.create_connection(("127.0.0.1", p.port), timeout=30) as c:
            c.sendall(b"GET %s HTTP/1.0\r\nHost: x\r\n\r\n" % path.encode())
            st, _ = _read_response(c)
            eq(st, 200, "HTTP/1.0 GET %s" % path)
    # Bad heads: malformed, too long a target, too large a head.
    for data in (b"GET /v2/ HTTP/1.1\r\nHost x\r\n\r\n",
                 b"GET /v2/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                 b"GET /v2/ HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"b" * 70000 + b"\r\n\r\n"):
        try:
            lib.raw_exchange(p.port, data)
        except OSError:
            pass
    # Plain HTTP on the TLS listener, outside allow, a 401 challenge and a good login.
    for port in (p.ports[1], p.ports[2]):
        try:
            lib.raw_exchange(port, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        except OSError:
            pass
    eq(p.get("/v2/", listener=3).status, 401, "no credentials on the htpasswd listener")
    auth = "Basic " + base64.b64encode(b"node:node-secret").decode()
    eq(p.get("/v2/", listener=3, headers={"Authorization": auth}).status, 200, "login")
    # Past max_connections (1): a 503, in neither the access log nor requests_total.
    with socket.create_connection(("127.0.0.1", p.ports[4]), timeout=10) as held:
        held.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        check(held.recv(4096).startswith(b"HTTP/1.1 200"), "the held connection's ping")
        out = lib.raw_exchange(p.ports[4], b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        check(out.startswith(b"HTTP/1.1 503"), "past max_connections: %r" % out[:100])
    # A blob served from a fill while it downloads: a second client while upstream holds
    # the second half back (if it came late, it is a hit: counted alike either way).
    res = [None, None]
    blob = "/v2/raw.test/ns/app/blobs/" + up.ld

    def fetch(i):
        res[i] = p.raw("GET", blob)
    t1 = threading.Thread(target=fetch, args=(0,))
    t1.start()
    lib.wait_until(lambda: up.up.seen("/v2/ns/app/blobs/" + up.ld), 20, "the layer's fill")
    t2 = threading.Thread(target=fetch, args=(1,))
    t2.start()
    time.sleep(0.5)
    up.layer_go.set()
    t1.join(60)
    t2.join(60)
    eq([r[0] if r else None for r in res], [200, 200], "the layer's two GETs")
    eq([rawup.sha256(r[2]) for r in res], [up.ld, up.ld], "the layer's two bodies")
    # A client that leaves mid-body: a list upstream holds after 1 MiB.
    mark = len(p.access())
    c = socket.create_connection(("127.0.0.1", p.port), timeout=30)
    c.sendall(b"GET /v2/raw.test/ns/slow/tags/list HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    while len(got) < 200000:
        b = c.recv(65536)
        check(b, "the slow list ended early")
        got += b
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    c.close()
    lib.wait_until(lambda: [x for x in p.access(mark) if x.get("aborted") == "client"], 20,
                   "the access line of the client that left")
    up.slow_go.set()

    # Everything is logged once its answer ended: wait for the lines to stop coming.
    lines = lib.settle(lambda: p.access(), at_least=len(gets) + 15)
    m = p.metrics()
    problems = []

    # Bytes: the body a client received whole, without chunk framing.
    for x in lines:
        if x["id"] in received and int(x["bytes"]) != received[x["id"]]:
            problems.append("%s %s: the client got %d body bytes, the access line says %s"
                            % (x["method"], x["path"], received[x["id"]], x["bytes"]))
    check(len([x for x in lines if x["id"] in received]) == len(received),
          "an access line for each of the %d requests" % len(received))
    # Requests by status class.
    by_class = {}
    zero = 0
    for x in lines:
        st = int(x["status"])
        if st == 0:
            zero += 1
            continue
        k = "%dxx" % (st // 100) if 100 <= st < 600 else "other"
        by_class[k] = by_class.get(k, 0) + 1
    for k in ("1xx", "2xx", "3xx", "4xx", "5xx", "other"):
        got_m = _sum(m, "regproxy_requests_total", status=k)
        if got_m != by_class.get(k, 0):
            problems.append("requests of class %s: access log %d, /metrics %d"
                            % (k, by_class.get(k, 0), got_m))
    # Cache results and bytes by source.
    content = [x for x in lines
               if (200 <= int(x["status"]) < 300 or x["status"] == "304")
               and x["path"].split("?")[0] != "/v2/"]
    src = {"cache": 0, "upstream": 0}
    for res_name in ("HIT", "MISS", "STALE", "REVALIDATED", "PASS"):
        n = [x for x in content if x.get("cache") == res_name]
        got_m = _m(m, "regproxy_cache_requests_total", result=res_name.lower())
        if got_m != len(n):
            problems.append("cache %s: access log %d, /metrics %d" % (res_name, len(n), got_m))
        src["upstream" if res_name in ("MISS", "PASS") else "cache"] += sum(int(x["bytes"])
                                                                             for x in n)
    for k, v in src.items():
        got_m = _m(m, "regproxy_served_bytes_total", source=k)
        if got_m != v:
            problems.append("bytes from %s: access log %d, /metrics %d" % (k, v, got_m))
    # Upstream requests of raw.test: what it answered, what /metrics counts, what the
    # access lines say (the layer's readers share one download: counted once).
    with up.lock:
        sent = list(up.sent)
    truth = {}
    for path, st in sent:
        truth["%dxx" % (st // 100)] = truth.get("%dxx" % (st // 100), 0) + 1
    pings = len([x for x in sent if x[0] == "/v2/"])
    logged, seen_blobs = {}, set()
    for x in lines:
        if x.get("registry") != "raw.test" or x.get("upstream", "0") == "0":
            continue
        if "/blobs/" in x["path"]:
            if x["path"] in seen_blobs:
                continue
            seen_blobs.add(x["path"])
        k = "%sxx" % x["upstream"][0]
        logged[k] = logged.get(k, 0) + 1
    logged["2xx"] = logged.get("2xx", 0) + pings
    for k in ("1xx", "2xx", "3xx", "4xx", "5xx", "other"):
        got_m = _m(m, "regproxy_upstream_requests_total", registry="raw.test", status=k)
        if not (got_m == truth.get(k, 0) == logged.get(k, 0)):
            problems.append("raw.test upstream requests of class %s: raw.test answered %d, "
                            "access log %d, /metrics %d"
                            % (k, truth.get(k, 0), logged.get(k, 0), got_m))
    check(not problems, "/metrics and the access log disagree:\n  " + "\n  ".join(problems) +
          "\n(%d access lines, %d with status 0)" % (len(lines), zero))



def test_list_cut_by_upstream_counts_what_left(t):
    """A list upstream cuts while its client reads slowly: the client is cut off, and the
    access line (and the bytes /metrics adds) counts the body bytes that left the proxy,
    which the client then reads to the end, not those still queued when it closed."""
    body = _list("ns/cut", 12 * 1024 * 1024 // 50)
    sent = 8 * 1024 * 1024

    def handle(r):
        r.raw(("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
               "Connection: close\r\n\r\n" % len(body)).encode())
        try:
            r.raw(body[:sent])
        except OSError:
            pass
        return False
    up = rawup.RawUpstream(t, handle)
    p = t.proxy(registries=[up.conf()], listeners=[{"default": "raw.test"}])
    m0 = p.metrics()
    mark = len(p.access())
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    c.settimeout(60)
    c.connect(("127.0.0.1", p.port))
    c.sendall(b"GET /v2/ns/cut/tags/list HTTP/1.1\r\nHost: x\r\n\r\n")
    got = b""
    try:
        while True:
            b = c.recv(16384)
            if not b:
                break
            got += b
            time.sleep(0.002)  # a slow client: the proxy holds some of the list for it
    except OSError:
        pass
    c.close()
    received = len(got.partition(b"\r\n\r\n")[2])
    line = lib.wait_until(lambda: [x for x in p.access(mark) if x.get("aborted")], 20,
                          "the cut list's access line")[0]
    eq(line.get("aborted"), "upstream", "why the list was cut")
    check(received < len(body), "a cut list reached the client whole")
    m1 = p.metrics()
    eq((int(line["bytes"]),
        _m(m1, "regproxy_served_bytes_total", source="upstream") -
        _m(m0, "regproxy_served_bytes_total", source="upstream")),
       (received, received), "body bytes that left the proxy: access line, /metrics")
