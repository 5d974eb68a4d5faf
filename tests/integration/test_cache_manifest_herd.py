# SPDX-License-Identifier: Apache-2.0
"""Concurrent misses for one manifest share one upstream request, as blobs and tokens do:
30 clients asking for the same uncached tag at once make one upstream manifest GET, and all
get the same bytes. Clients with a different Accept list are not merged with them. A
leading client that gives up before upstream answered hands the fetch on to the others."""
import socket
import threading
import time

import lib
import rawup
from lib import check, eq


def test_manifest_herd_one_upstream_get(t):
    s = t.s
    reg = s.anon_registry
    p = t.proxy(registries=[reg.conf("registry.anon.test")])
    mark = reg.mark()
    path = "/v2/ns/multiarch/manifests/v1"
    results = lib.parallel([lambda: p.get(path, headers={"Accept": lib.ACCEPT_ALL})
                            for _ in range(30)])
    eq(sorted({r.status for r in results}), [200], "statuses")
    bodies = {lib.sha256(r.body) for r in results}
    eq(bodies, {reg.pushed["ns/multiarch:v1"]["digest"]}, "manifest digests")
    lib.settle(lambda: reg.since(mark), at_least=1)
    n = reg.count("GET", "/v2/ns/multiarch/manifests/", since=mark)
    eq(n, 1, "upstream manifest GETs for 30 concurrent cold requests")
    caches = sorted(r.header("x-regproxy-cache") for r in results)
    eq(caches.count("MISS"), 1, "one MISS (the leader); the others %r" % caches)


def test_miss_after_the_leader_is_done(t):
    """A miss that comes while the waiters of a finished fetch are about to be woken (here a
    request pipelined behind the leader, parsed as soon as the leader's 404 is out) starts a
    fetch of its own: it used to lead the entry the wake then freed (use-after-free)."""
    fr = t.s.fakereg
    p = t.proxy(registries=[fr.conf()])
    req = b"GET /v2/mode/slow404/ns/multi/manifests/missing HTTP/1.1\r\nHost: x\r\n\r\n"
    a = socket.create_connection(("127.0.0.1", p.port), timeout=30)
    b = socket.create_connection(("127.0.0.1", p.port), timeout=30)
    try:
        a.sendall(req + req)  # the second waits, pipelined, for the first
        time.sleep(0.3)
        b.sendall(req)  # joins the first as a waiter
        got = {"a": b"", "b": b""}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (got["a"].count(b"HTTP/1.1 404") < 2 or
                                               got["b"].count(b"HTTP/1.1 404") < 1):
            for name, sock in (("a", a), ("b", b)):
                sock.settimeout(0.2)
                try:
                    got[name] += sock.recv(65536)
                except socket.timeout:
                    pass
        eq((got["a"].count(b"HTTP/1.1 404"), got["b"].count(b"HTTP/1.1 404")), (2, 1),
           "404s on the pipelining and the waiting connection")
    finally:
        a.close()
        b.close()
    eq(p.get("/v2/").status, 200, "the proxy still answers")


def _answer(sock):
    """Status line and body of one response with a Content-Length (b"" when cut)."""
    buf = b""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        head, sep, body = buf.partition(b"\r\n\r\n")
        if sep:
            length = [int(x.split(b":", 1)[1]) for x in head.split(b"\r\n")
                      if x.lower().startswith(b"content-length:")]
            if length and len(body) >= length[0]:
                return head.split(b"\r\n", 1)[0], body[:length[0]]
        try:
            d = sock.recv(65536)
        except socket.timeout:
            break
        if not d:
            break
        buf += d
    return buf.split(b"\r\n", 1)[0], b""


def _herd_with_leavers(t, leavers, waiters=10):
    """One client leads a miss for a tag upstream answers after 1.5 s, `waiters` wait on
    it; then the leader and the first leavers-1 waiters hang up, one after the other, each
    while it leads. Returns the upstream manifest GETs with credentials and what the rest
    were answered."""
    fr = t.s.fakereg
    p = t.proxy(registries=[fr.conf()])
    path = "/v2/mode/slowmanifest/ns/multi/manifests/v1"
    req = ("GET %s HTTP/1.1\r\nHost: x\r\nAccept: %s\r\n\r\n"
           % (path, lib.ACCEPT_ALL)).encode()
    mark = len(fr.requests())
    socks = [socket.create_connection(("127.0.0.1", p.port), timeout=30)]
    socks[0].sendall(req)
    time.sleep(0.3)
    for _ in range(waiters):
        s = socket.create_connection(("127.0.0.1", p.port), timeout=30)
        s.sendall(req)
        socks.append(s)
    for s in socks[:leavers]:
        time.sleep(0.3)  # well inside upstream's 1.5 s
        s.close()
    got = []
    for s in socks[leavers:]:
        got.append(_answer(s))
        s.close()
    time.sleep(2)  # the fake registry logs a GET when it ends, a cancelled one late
    # The proxy's first GET learns that the registry wants Basic auth (a 401): not counted.
    gets = [r for r in fr.requests(since=mark)
            if r.get("method") == "GET" and "/manifests/" in r.get("path", "") and
            "Authorization" in r.get("headers", {})]
    return len(gets), got


def _check_answers(t, got):
    eq(sorted({status for status, _ in got}), [b"HTTP/1.1 200 OK"], "waiter statuses")
    eq({lib.sha256(body) for _, body in got}, {t.s.images["multi"]["tags"]["v1"]},
       "manifest digests the waiters got")


def test_manifest_herd_leader_leaves(t):
    """The leader's client hangs up before upstream answered: its fetch is cancelled, and
    the waiters used to be woken to fetch one each (11 GETs for 10 waiters)."""
    n, got = _herd_with_leavers(t, leavers=1)
    _check_answers(t, got)
    check(n <= 2, "upstream manifest GETs for a leader that left and 10 waiters: want at most "
          "2 (the cancelled one and one for all waiters), got %d" % n)


def test_manifest_herd_leaders_leave_in_turn(t):
    """The waiter that took over leaves too: the next one takes over from it."""
    n, got = _herd_with_leavers(t, leavers=3)
    _check_answers(t, got)
    check(n <= 4, "upstream manifest GETs for 3 leaders that left in turn and 8 waiters: want "
          "at most 4, got %d" % n)


def test_expired_tag_herd_one_upstream_exchange(t):
    """Concurrent GETs of a tag past tag_ttl share one revalidation; when the tag moved
    upstream, one GET of its new manifest too. Each used to revalidate on its own, and after
    a move each fetched the manifest on its own: 30 HEADs and 30 GETs, the herd of a
    cluster pulling a release tag that was just pushed again."""
    s = t.s
    reg = t.private_registry("anon", images={
        "ns/hd:v1": "oci:%s:v1" % s.images["multi"]["dir"]})
    p = t.proxy(registries=[reg.conf(tag_ttl="2s")])  # tag ages are whole seconds
    path = "/v2/ns/hd/manifests/v1"

    def herd(what, want_digest, want_ups):
        mark = reg.mark()
        results = lib.parallel([lambda: p.get(path, headers={"Accept": lib.ACCEPT_ALL})
                                for _ in range(30)])
        eq(sorted({r.status for r in results}), [200], "statuses (%s)" % what)
        eq({lib.sha256(r.body) for r in results}, {want_digest}, "manifests (%s)" % what)
        ups = sorted(m for m, pth, st in lib.settle(lambda: reg.since(mark), 1) if pth == path)
        eq(ups, want_ups, "upstream exchanges for 30 concurrent GETs (%s)" % what)

    eq(p.get(path, headers={"Accept": lib.ACCEPT_ALL}).status, 200, "first GET")
    old = reg.client(None).manifest("ns/hd", "v1", accept=lib.ACCEPT_ALL)
    time.sleep(3.2)
    herd("unchanged", lib.sha256(old.body), ["HEAD"])
    new = s.push(reg, "oci:%s:t00" % s.images["tags"]["dir"], "ns/hd:v1")["digest"]
    time.sleep(3.2)
    herd("moved", new, ["GET", "HEAD"])


def test_expired_tag_head_herd_one_revalidation(t):
    """containerd resolves a tag by HEAD: a cluster's nodes HEAD a tag past tag_ttl at once,
    and each sent its own revalidation upstream. HEADs of a tag whose manifest is cached
    share one, as GETs do. Upstream holds the revalidation until all 20 are inside the
    proxy (it took 1.5 s before, and a loaded machine let a HEAD arrive after it)."""
    hold = threading.Event()
    up, release, m, d = _held_upstream(t, hold)
    # Held until every request is in, however long a loaded machine takes: no
    # revalidate_timeout to serve the tag stale first.
    p = t.proxy(registries=[up.conf(tag_ttl="1s")], admin={"log_level": "debug"},
                cache={"revalidate_timeout": "0"})
    path = "/v2/ns/multi/manifests/v1"
    eq(p.get(path, headers={"Accept": lib.ACCEPT_ALL}).status, 200, "first GET")
    time.sleep(2.2)  # past tag_ttl
    hold.set()
    got, ups = lib.held_herd(p, up, path, ["HEAD"] * 20, release, first=False,
                             headers={"Accept": lib.ACCEPT_ALL},
                             all_in=lambda waiting: len(up.seen(path)) - 1 + waiting >= 20)
    _check_herd(got, d, "20 concurrent HEADs past tag_ttl")
    eq(ups, ["GET", "HEAD"], "upstream exchanges: the first GET, then for 20 concurrent "
       "HEADs past tag_ttl")


def _held_upstream(t, hold=None):
    """An upstream that holds every manifest request (with `hold`, an event: only those
    that arrive once it is set) until the test releases it, then answers an OCI image
    manifest: (upstream, release event, manifest, digest)."""
    m, d, _l, _ld, _c, _cd = rawup.image()
    release = threading.Event()

    def h(r):
        if "/manifests/" not in r.path:
            r.send(404, b"")
            return False
        if hold is None or hold.is_set():
            release.wait(120)
        r.answer(m, "application/vnd.oci.image.manifest.v1+json", d)
        return False
    up = rawup.RawUpstream(t, h)
    t.defer(release.set)
    return up, release, m, d


def _cold_tag_herd(t, methods, first=None):
    """Requests of one cold tag, all inside the proxy before upstream answers any: each
    either went upstream or waits on another (the proxy's debug line). `first` is sent, and
    seen upstream, before the rest. Returns (responses in order, upstream methods, the
    manifest and its digest)."""
    up, release, m, d = _held_upstream(t)
    p = t.proxy(registries=[up.conf()], admin={"log_level": "debug"})
    order = ([first] if first else []) + list(methods)
    got, ups = lib.held_herd(p, up, "/v2/ns/cold/manifests/v1", order, release,
                             first=bool(first), headers={"Accept": lib.ACCEPT_ALL})
    return got, ups, m, d


def _check_herd(got, digest, what):
    for r in got:
        check(r is not None, "%s: a request got no answer" % what)
    eq({r.status for r in got}, {200}, "%s: statuses" % what)
    eq({r.header("Docker-Content-Digest") for r in got}, {digest}, "%s: digests" % what)
    eq({lib.sha256(r.body) for r in got if r.body}, {digest} if any(r.body for r in got)
       else set(), "%s: bodies" % what)


def test_cold_tag_head_herd_one_upstream_head(t):
    """containerd resolves a tag by HEAD: a cluster's nodes HEADing a tag nobody pulled yet
    each sent a HEAD upstream (a HEAD caches no manifest for waiters to find). They share
    one now, and its answer (digest, type, length) is every waiter's."""
    got, ups, m, d = _cold_tag_herd(t, ["HEAD"] * 12)
    _check_herd(got, d, "12 HEADs of a cold tag")
    eq({(r.header("Content-Type"), r.header("Content-Length")) for r in got},
       {("application/vnd.oci.image.manifest.v1+json", str(len(m)))}, "types and lengths")
    eq(ups, ["HEAD"], "upstream requests for 12 concurrent HEADs of a cold tag")


def test_cold_tag_heads_wait_for_a_get(t):
    """HEADs (and GETs) of a cold tag that come while a GET of it is upstream wait for that
    GET and are answered from what it cached: one upstream request for all."""
    got, ups, _m, d = _cold_tag_herd(t, ["HEAD", "GET"] * 5, first="GET")
    _check_herd(got, d, "a GET, then 5 HEADs and 5 GETs of a cold tag")
    eq(ups, ["GET"], "upstream requests for a GET of a cold tag and 10 requests behind it")


def test_expired_tag_herd_upstream_failing_one_revalidation(t):
    """A tag past tag_ttl asked by many clients at once while upstream is failing (here:
    each HEAD held, as a stalled upstream holds it, then cut without an answer): the one
    revalidation fails, its client gets the stale tag, and so do those waiting on it. Each
    waiter used to revalidate again on its own once the leader had served stale: as many
    upstream connections as clients, and, upstream stalled, each waiter kept for a second
    full timeout before it got the same stale answer."""
    m, d, _l, _ld, _c, _cd = rawup.image()
    release = threading.Event()

    def h(r):
        if "/manifests/" not in r.path:
            r.send(404, b"")
            return False
        if r.method == "GET":
            r.answer(m, "application/vnd.oci.image.manifest.v1+json", d)
            return False
        release.wait(120)
        return False  # cut without an answer
    up = rawup.RawUpstream(t, h)
    t.defer(release.set)
    # Held until every request is in, however long a loaded machine takes: no
    # revalidate_timeout to serve the tag stale first.
    p = t.proxy(registries=[up.conf(tag_ttl="1s")], admin={"log_level": "debug"},
                cache={"revalidate_timeout": "0"})
    path = "/v2/ns/st/manifests/v1"
    eq(p.get(path, headers={"Accept": lib.ACCEPT_ALL}).status, 200, "first GET")
    time.sleep(2.2)  # tag ages are whole seconds
    order = ["GET"] * 8 + ["HEAD"] * 3
    n = len(order)
    got, _ = lib.held_herd(p, up, path, order, release, headers={"Accept": lib.ACCEPT_ALL},
                           first_seen=lambda: up.seen(path)[1:],
                           all_in=lambda waiting: waiting >= n - 1)
    for r in got:
        check(r is not None, "a request got no answer")
    eq([(r.status, r.header("X-Regproxy-Cache"), r.header("Docker-Content-Digest"))
        for r in got], [(200, "STALE", d)] * n, "(status, cache, digest) of each request")
    eq({lib.sha256(r.body) for r in got[:8]}, {d}, "bodies of the GETs")
    heads = [x for x in up.seen(path) if x[1] == "HEAD"]
    eq(len(heads), 1, "upstream HEADs for %d concurrent requests of a tag past tag_ttl" % n)


def _cold_tag_herd_cut(t, head):
    """Requests of a cold tag waiting on one upstream GET that upstream holds, as a stalled
    upstream does, then cuts: before any head, or (head) after a head and part of the body.
    Every waiter gets the leader's 503 UNAVAILABLE (502 for the cut answer). Each used to
    ask upstream again on its own: as many upstream connections as clients, and, upstream
    stalled, every client but the first kept for a second full timeout before the same
    error (a blob's waiting readers share its download's failure so already)."""
    release = threading.Event()

    def h(r):
        if head:
            r.raw(b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json"
                  b"\r\nContent-Length: 1000\r\n\r\n{\"schemaVersion\"")
        release.wait(120)
        return False  # cut
    up = rawup.RawUpstream(t, h)
    t.defer(release.set)
    p = t.proxy(registries=[up.conf()], admin={"log_level": "debug"})
    path = "/v2/ns/cold/manifests/v1"
    order = ["GET"] * 6 + ["HEAD"] * 4
    got, _ = lib.held_herd(p, up, path, order, release, headers={"Accept": lib.ACCEPT_ALL})
    for r in got:
        check(r is not None, "a request got no answer")
    want, code = (502, "UNKNOWN") if head else (503, "UNAVAILABLE")
    eq([r.status for r in got], [want] * len(order), "statuses")
    for r in got[:6]:
        eq(r.error_codes(), [code], "error codes (body %r)" % r.body[:200])
    eq([x[1] for x in up.seen(path)], ["GET"],
       "upstream requests for %d concurrent requests of a cold tag" % len(order))


def test_cold_tag_herd_upstream_silent_one_upstream_get(t):
    _cold_tag_herd_cut(t, head=False)


def test_cold_tag_herd_upstream_cut_answer_one_upstream_get(t):
    _cold_tag_herd_cut(t, head=True)


def test_cold_tag_herd_realm_silent_one_token_request(t):
    """The same when it is the token realm that gives no answer (held, then cut): the
    requests waiting on the one that asked for a token get its 503; they used to ask the
    realm again, and wait for it again."""
    release = threading.Event()

    def h(r):
        if r.path.startswith("/token"):
            release.wait(120)
            return False  # cut without an answer
        r.send(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"no","detail":null}]}',
               [("Content-Type", "application/json"),
                ("WWW-Authenticate", 'Bearer realm="%s/token",service="svc"' % up.url)])
        return False
    up = rawup.RawUpstream(t, h)
    t.defer(release.set)
    p = t.proxy(registries=[up.conf()], admin={"log_level": "debug"})
    path = "/v2/ns/cold/manifests/v1"
    got, _ = lib.held_herd(p, up, path, ["GET"] * 8, release, headers={"Accept": lib.ACCEPT_ALL},
                           first_seen=lambda: up.seen("/token"),
                           all_in=lambda waiting: waiting >= 7)
    for r in got:
        check(r is not None, "a request got no answer")
    eq([(r.status, r.error_codes()) for r in got], [(503, ["UNAVAILABLE"])] * len(got),
       "(status, error codes) of each GET")
    eq(len(up.seen("/token")), 1, "token requests for %d concurrent GETs" % len(got))
    eq(len(up.seen(path)), 1, "registry requests for %d concurrent GETs" % len(got))
