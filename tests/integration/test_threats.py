# SPDX-License-Identifier: Apache-2.0
"""Upstream-side threats: a blob redirect from https to plain http, a redirect loop, a
redirect or a blob error whose body never ends, an error page over the error-body bound, an
oversized manifest, and a Host header naming an internal host. Each is refused with a
clear error, sends no credential anywhere it should not, dials nothing it should not, and
caches nothing."""
import json
import os
import re
import socket
import time

import lib
from lib import check, eq


def _first_layer(s):
    img = s.images["multi"]
    with open(os.path.join(img["dir"], "index.json")) as f:
        idx = json.load(f)
    mdig = idx["manifests"][0]["digest"].split(":")[1]
    with open(os.path.join(img["dir"], "blobs", "sha256", mdig)) as f:
        return json.load(f)["layers"][0]["digest"]


def _blobs_cached(p):
    d = os.path.join(p.cache_dir, "blobs")
    return [f for _, _, fs in os.walk(d) for f in fs] if os.path.isdir(d) else []


def _local_upstream(t, do_get):
    """A plain-http upstream of the test's own on 127.0.0.1 whose GETs do_get(handler)
    answers; returns its registry entry for t.proxy."""
    import http.server
    import threading

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            do_get(self)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    t.defer(srv.shutdown)
    t.defer(srv.server_close)
    return {"name": "local.test", "url": "http://127.0.0.1:%d" % srv.server_port}


def test_redirect_to_http_refused(t):
    s = t.s
    fr = s.fakereg
    p = t.proxy(registries=[fr.conf()])
    digest = _first_layer(s)
    m_reg, m_cdn = fr.mark()
    r = p.get("/v2/mode/redirect-http/ns/multi/blobs/%s" % digest)
    eq(r.status, 502, "blob redirected from https to http")
    check("https" in json_detail(r), "the error does not say why: %r" % r.body[:300])
    eq(len(fr.cdn_requests(m_cdn)), 0, "requests that reached the plain-http target")
    eq(_blobs_cached(p), [], "blobs cached after a refused redirect")


def test_redirect_loop_bounded(t):
    s = t.s
    fr = s.fakereg
    p = t.proxy(registries=[fr.conf()])
    digest = _first_layer(s)
    m_reg, _ = fr.mark()
    r = p.get("/v2/mode/redirect-loop/ns/multi/blobs/%s" % digest)
    eq(r.status, 502, "blob redirected in a loop")
    hops = [x for x in fr.requests(m_reg) if "/blobs/" in x.get("path", "")]
    check(len(hops) <= 7, "the proxy followed %d redirects (at most 5 allowed)" % len(hops))
    # Redirect targets on the registry's own origin may get credentials; no other may.


def test_redirect_with_endless_body_bounded(t):
    """A redirect whose body never ends: drained up to the error-body bound, then the
    download fails (a blob's transfer has no total timeout that would end it)."""
    s = t.s
    fr = s.fakereg
    p = t.proxy(registries=[fr.conf()])
    digest = _first_layer(s)
    t0 = time.monotonic()
    r = p.get("/v2/mode/redirect-endless/ns/multi/blobs/%s" % digest, timeout=30)
    took = time.monotonic() - t0
    eq(r.status, 502, "blob redirect with an endless body: %s" % r.body[:300])
    check("answer has a body over 65536 bytes" in r.body.decode(),
          "the error does not say why: %s" % r.body[:300])
    check(took < 20, "the answer took %.1f s" % took)
    eq(_blobs_cached(p), [], "blobs cached after the endless redirect")


def test_blob_error_with_endless_body_bounded(t):
    """A blob GET answered 500 with a body that never ends: the body is cut at the error
    bound and the answer passed on at once, to the client whose request started the download
    and to one that joined it; the download ends (it used to run as long as the body did,
    holding both clients, since a blob's transfer has no total timeout)."""
    s = t.s
    fr = s.fakereg
    p = t.proxy(registries=[fr.conf()])
    path = "/v2/mode/error-endless/ns/multi/blobs/%s" % _first_layer(s)
    results = {}

    def get(name):
        t0 = time.monotonic()
        r = p.get(path, timeout=30)
        results[name] = (r, time.monotonic() - t0)
    import threading
    threads = [threading.Thread(target=get, args=(n,)) for n in ("first", "joined")]
    threads[0].start()
    time.sleep(0.2)
    threads[1].start()
    for th in threads:
        th.join(40)
    for name in ("first", "joined"):
        check(name in results, "the %s client got no answer" % name)
        r, took = results[name]
        check(r.status >= 500, "%s client: status %d: %r" % (name, r.status, r.body[:200]))
        check(took < 15, "%s client: the answer took %.1f s" % (name, took))
    m = p.metrics()
    eq(m.get(("regproxy_fills_in_flight", frozenset())), 0, "downloads still running")
    eq(_blobs_cached(p), [], "blobs cached after the error")


def test_big_error_answer_passed_on(t):
    """An upstream error page over the 64 KiB error-body bound (a CDN's or WAF's HTML, say)
    with a Content-Length: the status is passed on, the body cut; it used to be refused at
    its headers and answered 502, losing a 404 or a 503 and its Retry-After."""
    def do_get(h):
        st = 503 if "/manifests/five" in h.path else 404
        body = (b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"x","detail":"' +
                b"y" * 70000 + b'"}]}')
        h.send_response(st)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        if st == 503:
            h.send_header("Retry-After", "9")
        h.end_headers()
        h.wfile.write(body)
    p = t.proxy(registries=[_local_upstream(t, do_get)])
    r = p.get("/v2/local.test/ns/x/manifests/v1", headers={"Accept": lib.ACCEPT_ALL}, timeout=20)
    eq(r.status, 404, "upstream's 404 with a 70 KB body")
    r = p.get("/v2/local.test/ns/x/manifests/five", headers={"Accept": lib.ACCEPT_ALL}, timeout=20)
    eq(r.status, 503, "upstream's 503 with a 70 KB body")
    eq(r.header("retry-after"), "9", "Retry-After of the 503")


def test_empty_body_for_a_blob_refused(t):
    """An upstream answering a blob GET 200 with an empty body: a client would take the head
    alone for the whole answer (there is no last byte to hold back until the digest
    matches), so it is refused at the head, 502, for a download into the cache as for a
    range passed through; the empty blob itself is fine."""
    def do_get(h):
        h.send_response(200)
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", "0")
        h.end_headers()
    p = t.proxy(registries=[_local_upstream(t, do_get)])
    path = "/v2/local.test/ns/x/blobs/" + lib.sha256(b"not empty")
    for what, headers in (("download", {}), ("range passed through", {"Range": "bytes=0-4"})):
        r = p.get(path, headers=headers, timeout=20)
        eq(r.status, 502, "%s of a blob upstream sends empty: %r" % (what, r.body[:200]))
        check("empty body" in r.body.decode(), "%s: the error does not say why: %r"
              % (what, r.body[:300]))
    r = p.get("/v2/local.test/ns/x/blobs/" + lib.sha256(b""), timeout=20)
    eq((r.status, r.body), (200, b""), "the empty blob")
    eq([b for b in _blobs_cached(p) if b != lib.sha256(b"")[7:]], [],
       "blobs cached besides the empty one")


def test_long_retry_after_keeps_framing(t):
    """An upstream 429 whose Retry-After is far longer than any real one: passed on without
    it (cut, it lost its CRLF and the head ran into the body), and the connection stays
    in step for the next request."""
    s = t.s
    fr = s.fakereg
    p = t.proxy(registries=[fr.conf()])
    path = "/v2/mode/429long/ns/multi/manifests/v1"
    req = ("GET %s HTTP/1.1\r\nHost: x\r\n\r\nGET /v2/ HTTP/1.1\r\nHost: x\r\n"
           "Connection: close\r\n\r\n" % path).encode()
    got = lib.raw_exchange(p.port, req, timeout=30)
    head, _, rest = got.partition(b"\r\n\r\n")
    check(head.startswith(b"HTTP/1.1 429 "), "first answer: %r" % got[:200])
    check(b"retry-after" not in head.lower(), "a cut Retry-After was passed on: %r" % head)
    n = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
    json.loads(rest[:n])
    check(rest[n:].startswith(b"HTTP/1.1 200 "), "second answer: %r" % rest[n:n + 100])


def test_oversized_manifest_refused(t):
    s = t.s
    fr = s.fakereg
    p = t.proxy(registries=[fr.conf()])
    r = p.get("/v2/mode/bigmanifest/ns/multi/manifests/v1",
              headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 502, "a 5 MiB manifest")
    check("limit" in json_detail(r), "the error does not name the limit: %r" % r.body[:300])
    mdir = os.path.join(p.cache_dir, "manifests")
    stored = [f for _, _, fs in os.walk(mdir) for f in fs] if os.path.isdir(mdir) else []
    eq(stored, [], "manifests stored after an oversized answer")
    check(p.proc.alive(), "the proxy died")


def test_host_header_does_not_steer(t):
    """Routing never looks at Host: a request naming an internal host there goes to the
    listener's default registry, and the internal host sees nothing."""
    s = t.s
    canary = t.canary()
    reg = s.anon_registry
    p = t.proxy(registries=[reg.conf("registry.anon.test"),
                            {"name": "internal.test", "url": "https://127.0.0.1:%d" % canary.port,
                             "test_login": "no"}],
                listeners=[{"default": "registry.anon.test"}])
    for host in ("127.0.0.1:%d" % canary.port, "internal.test", "169.254.169.254"):
        req = ("GET /v2/ns/multi/manifests/v1 HTTP/1.1\r\nHost: %s\r\nAccept: %s\r\n"
               "Connection: close\r\n\r\n" % (host, lib.ACCEPT_ALL)).encode()
        data = lib.raw_request("127.0.0.1", p.port, req)
        check(data.startswith(b"HTTP/1.1 200"),
              "manifest with Host: %s: %r" % (host, data[:120]))
    eq(canary.count, 0, "connections to the internal host")


def json_detail(r):
    try:
        return str(r.json())
    except Exception:
        return r.body.decode(errors="replace")
