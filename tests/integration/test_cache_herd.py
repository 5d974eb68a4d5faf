# SPDX-License-Identifier: Apache-2.0
"""A thundering herd: 50 clients ask at once for the same uncached 100 MiB layer. The proxy
makes exactly one upstream download, every client gets the whole blob with the right
digest, and the blob is then a cache hit. Wall times (the herd vs one cold GET on a fresh
proxy) are printed, not asserted."""
import json
import os
import threading
import time

import lib
import rawup
from lib import check, eq

CLIENTS = 50


def _big_layer(reg):
    layers = lib.image_manifests(reg, "ns/large:v1")[0]["layers"]
    big = max(layers, key=lambda x: x["size"])
    check(big["size"] >= 100 * 1024 * 1024, "ns/large's big layer is %d bytes" % big["size"])
    return big


def _upstream_gets(reg, mark, digest, want=None, timeout=10):
    """GETs of the blob upstream since mark; docker-registry logs a request when it ends, so
    wait (up to timeout) for `want` of them when given, else settle briefly."""
    def n():
        # 200s only: the token dance adds a 401 before the first authorised GET.
        return reg.count("GET", "/v2/ns/large/blobs/" + digest, status=200, since=mark)
    if want is not None:
        lib.wait_until(lambda: n() >= want, timeout,
                       "%d upstream GET(s) of %s in %s" % (want, digest, reg.log))
    time.sleep(0.5)
    return n()


def test_herd_one_upstream_fetch(t):
    reg = t.s.token_registry
    big = _big_layer(reg)
    path = "/v2/ns/large/blobs/" + big["digest"]

    # Reference: one cold GET on a proxy of its own (its own empty cache).
    solo = t.proxy()
    m = reg.mark()
    r = lib.stream_get(solo.port, path)
    eq((r.status, r.complete, r.digest), (200, True, big["digest"]),
       "one cold GET %s (%r)" % (path, r))
    _upstream_gets(reg, m, big["digest"], want=1)
    one_cold = r.elapsed

    p = t.proxy()
    m = reg.mark()
    t0 = time.monotonic()
    res = lib.parallel([lambda: lib.stream_get(p.port, path, timeout=180)] * CLIENTS,
                       timeout=240)
    herd = time.monotonic() - t0
    bad = [(i, r) for i, r in enumerate(res)
           if (r.status, r.complete, r.digest, r.got) != (200, True, big["digest"], big["size"])]
    check(not bad, lambda: "%d of %d herd clients did not get the whole blob %s; first ones: %s"
          % (len(bad), CLIENTS, big["digest"], bad[:3]))
    n = _upstream_gets(reg, m, big["digest"], want=1)
    eq(n, 1, "upstream GETs of %s for %d concurrent cold clients (one shared fill expected)"
       % (big["digest"], CLIENTS))
    total = reg.count("GET", "/v2/ns/large/blobs/" + big["digest"], since=m)
    check(total <= 2, "upstream saw %d GETs of %s in all (at most a 401 of the token dance and "
          "the one download expected)" % (total, big["digest"]))
    misses = [a for a in p.access() if a.get("path") == path]
    eq(len(misses), CLIENTS, "access-log lines for the herd's path")
    check(all(a.get("cache") == "MISS" for a in misses),
          "herd clients should all be cache=MISS (joined the one fill): %s"
          % sorted({a.get("cache") for a in misses}))
    # Clients have the last byte once the digest matched; the rename follows the fsync.
    lib.wait_until(lambda: os.path.isfile(lib.cache_path(p.cache_dir, "blobs", big["digest"])),
                   10, "the blob to be in the cache after the herd")

    m = reg.mark()
    r = lib.stream_get(p.port, path)
    eq((r.status, r.complete, r.digest, r.header("x-regproxy-cache")),
       (200, True, big["digest"], "HIT"), "GET after the herd")
    eq(_upstream_gets(reg, m, big["digest"]), 0, "upstream GETs for a GET after the herd")

    slowest = max(r.elapsed for r in res)
    print("    herd: %d clients x %d MiB in %.2fs (slowest client %.2fs); one cold GET "
          "%.2fs" % (CLIENTS, big["size"] >> 20, herd, slowest, one_cold), flush=True)


def test_herd_across_repositories(t):
    """Two repositories of one registry hold the same layer; clients of both ask at once.
    Those of the repository that did not start the download wait for upstream to confirm
    (a HEAD) and then share the same download: still one upstream GET."""
    s = t.s
    reg = s.anon_registry
    if "ns/large-copy:v1" not in reg.pushed:
        s.push(reg, "oci:%s:v1" % s.images["large"]["dir"], "ns/large-copy:v1")
    big = _big_layer(reg)
    p = t.proxy(registries=[reg.conf()])
    m = reg.mark()
    per_repo = 8
    fns = []
    for i in range(per_repo):
        for repo in ("ns/large", "ns/large-copy"):
            fns.append(lambda repo=repo: (repo, lib.stream_get(
                p.port, "/v2/%s/blobs/%s" % (repo, big["digest"]), timeout=180)))
    res = lib.parallel(fns, timeout=240)
    bad = [(repo, r) for repo, r in res
           if (r.status, r.complete, r.digest) != (200, True, big["digest"])]
    check(not bad, lambda: "%d of %d clients (two repositories) did not get the whole blob: %s"
          % (len(bad), len(res), bad[:3]))

    def gets():
        return [(mth, path, st) for mth, path, st in reg.since(m)
                if path.endswith("/blobs/" + big["digest"]) and mth == "GET"]
    lib.wait_until(gets, 10, "the upstream GET of %s to be logged" % big["digest"])
    time.sleep(0.5)
    eq(len(gets()), 1, "upstream GETs of %s for %d clients over two repositories: %s"
       % (big["digest"], len(res), gets()))
    heads = [(mth, path, st) for mth, path, st in reg.since(m)
             if path.endswith("/blobs/" + big["digest"]) and mth == "HEAD"]
    check(1 <= len(heads) <= per_repo,
          "expected the second repository's clients to be confirmed by HEAD upstream "
          "(1..%d HEADs), saw %s" % (per_repo, heads))


def test_herd_other_repository_fails(t):
    """A shared download fails for the repository that started it (upstream 404s it there
    after 1.5 s): a client of another repository, which upstream confirmed has the blob and
    which joined that download meanwhile, gets the blob from its own repository, not the
    other's 404."""
    fr = t.s.fakereg
    r = fr.client().manifest("ns/large", "v1")
    eq(r.status, 200, "ns/large manifest straight from the fake registry")
    d = min(json.loads(r.body)["layers"], key=lambda x: x["size"])["digest"]
    p = t.proxy(registries=[fr.conf()])
    res = {}

    def a():
        res["a"] = p.get("/v2/mode/slowblob404/ns/large/blobs/" + d)

    th = threading.Thread(target=a)
    th.start()
    time.sleep(0.3)  # A's download is waiting for upstream's slow 404
    rb = lib.stream_get(p.port, "/v2/ns/large/blobs/" + d)
    th.join()
    eq(res["a"].status, 404, "the repository whose upstream 404s the blob")
    eq((rb.status, rb.complete, rb.digest), (200, True, d),
       "the other repository's client, which joined the failed download (%r)" % rb)


def test_head_behind_the_filling_get_not_upstream(t):
    """A HEAD pipelined on the connection whose GET filled the blob is read once the GET's
    last byte is out, while the verified download is still being made durable: it is
    answered from that download (its length verified, its digest its name), not with a HEAD
    of its own upstream (it used to cost one, cache=PASS). A HEAD while the download still
    runs asks upstream: the length so far is only the GET's answer's word (a CDN sending
    100 bytes more than the blob was answered so in the soak)."""
    import socket

    import rawup
    blob = os.urandom(6 << 20)
    digest = rawup.sha256(blob)
    path = "/v2/ns/x/blobs/" + digest
    go = threading.Event()

    def h(r):
        if r.path != path:
            r.send(404, b"")
            return False
        if r.method == "HEAD":
            r.answer(blob, "application/octet-stream", digest)
            return False
        half = len(blob) // 2
        try:
            r.raw(("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                   "Content-Length: %d\r\nConnection: close\r\n\r\n" % len(blob)).encode() +
                  blob[:half])
            go.wait(60)  # the fill stays under way until the test lets it end
            r.raw(blob[half:])
        except OSError:
            pass
        return False
    up = rawup.RawUpstream(t, h)
    t.defer(go.set)
    p = t.proxy(registries=[up.conf()])
    req = "HTTP/1.1\r\nHost: %s\r\n\r\n" % p.hostport
    a = socket.create_connection(("127.0.0.1", p.port), timeout=30)
    t.defer(a.close)
    a.sendall(("GET %s %sHEAD %s %s" % (path, req, path, req)).encode())
    line, _, rest = lib.read_head(a)
    check(line.startswith("HTTP/1.1 200"), "the GET's answer: %r" % line)
    # The fill is under way (its head is out, its end held upstream).
    st, hd, body = p.raw("HEAD", path)
    eq((st, hd.get("content-length"), hd.get("docker-content-digest"), body),
       (200, str(len(blob)), digest, b""), "HEAD on another connection during the fill")
    eq(len([x for x in up.seen(path) if x[1] == "HEAD"]), 1,
       "upstream HEADs for the HEAD during the fill")
    go.set()
    while len(rest) < len(blob):
        b = a.recv(1 << 20)
        check(b, "the GET's connection closed after %d body bytes" % len(rest))
        rest += b
    got, after = rest[:len(blob)], rest[len(blob):]
    eq(rawup.sha256(got), digest, "the GET's body")
    line, hd, extra = lib.read_head(a, after)
    eq((line.split(" ")[1], hd.get("content-length"), hd.get("docker-content-digest"), extra),
       ("200", str(len(blob)), digest, b""), "HEAD pipelined behind the GET")
    heads = [x for x in up.seen(path) if x[1] == "HEAD"]
    eq(len(heads), 1, "upstream HEADs of the blob, the pipelined HEAD's none (%s)"
       % [x.get("cache") for x in p.access() if x.get("method") == "HEAD"])
    eq(len([x for x in up.seen(path) if x[1] == "GET"]), 1, "upstream GETs of the blob")


def _confirm_herd(t, cut):
    """A blob cached from one repository, asked at once through another by many clients
    (a cluster pulling an image whose base layers another image brought): upstream must
    confirm that the other repository has it, once for all of them. Upstream holds that
    HEAD, as a slow or stalled upstream does, then answers it, or (cut) cuts it without an
    answer. Returns (responses, upstream HEADs of the other repository, layer, digest)."""
    _m, _d, layer, ld, _c, _cd = rawup.image()
    release = threading.Event()

    def h(r):
        if "/ns/a/blobs/" in r.path:
            r.send(200, layer if r.method == "GET" else b"",
                   [("Content-Type", "application/octet-stream"),
                    ("Content-Length", str(len(layer))), ("Docker-Content-Digest", ld)])
            return False
        release.wait(120)
        if not cut:
            r.send(200, b"", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(len(layer))),
                              ("Docker-Content-Digest", ld)])
        return False
    up = rawup.RawUpstream(t, h)
    t.defer(release.set)
    p = t.proxy(registries=[up.conf()], admin={"log_level": "debug"})
    eq(p.get("/v2/ns/a/blobs/" + ld).status, 200, "GET of the blob through ns/a")
    got, ups = lib.held_herd(p, up, "/v2/ns/b/blobs/" + ld, ["GET"] * 12 + ["HEAD"] * 4, release)
    for r in got:
        check(r is not None, "a request got no answer")
    return got, ups, layer, ld


def test_confirm_herd_one_upstream_head(t):
    """Each used to send its own HEAD: as many upstream requests (and, upstream stalled,
    connections held) as clients, per shared layer."""
    got, ups, layer, ld = _confirm_herd(t, cut=False)
    eq([r.status for r in got], [200] * len(got), "statuses")
    eq({lib.sha256(r.body) for r in got if r.body}, {ld}, "GET bodies")
    eq({r.header("Content-Length") for r in got}, {str(len(layer))}, "lengths")
    eq(ups, ["HEAD"], "upstream requests for %d concurrent requests of a blob cached from "
       "another repository" % len(got))


def test_confirm_herd_upstream_silent(t):
    got, ups, _layer, _ld = _confirm_herd(t, cut=True)
    eq([r.status for r in got], [503] * len(got), "statuses")
    for r in got[:12]:
        eq(r.error_codes(), ["UNAVAILABLE"], "error codes (body %r)" % r.body[:200])
    eq(ups, ["HEAD"], "upstream requests for %d concurrent requests of a blob cached from "
       "another repository, upstream silent" % len(got))
