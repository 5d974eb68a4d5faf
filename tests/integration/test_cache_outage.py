# SPDX-License-Identifier: Apache-2.0
"""stale-if-error. With a short tag_ttl, a cached tag whose upstream is down (a private
docker-registry, stopped) or failing (the fake registry answering 500, 503, 429) is still
served, marked STALE (header, Warning: 110, access log), and a pull of it succeeds; cached
digests are served as hits; content that was never cached gets 503 UNAVAILABLE naming the
upstream error, never 404; past tag_ttl + max_stale the stale tag is no longer served. When
upstream comes back the tag revalidates."""
import base64
import hashlib
import json
import math
import os
import signal
import threading
import time

import lib
import rawup
from lib import check, eq


def _past(t_after, secs):
    """Sleeps until a tag stored before wall time t_after is at least secs whole seconds old
    (the proxy keeps tag times in whole seconds)."""
    until = math.floor(t_after) + secs + 0.1
    while time.time() < until:
        time.sleep(until - time.time())


def _unavailable(r, what, want_status=503):
    eq(r.status, want_status, "%s: status (body %r)" % (what, r.body[:300]))
    codes = r.error_codes()
    check(codes and codes[0] == "UNAVAILABLE",
          "%s: expected error code UNAVAILABLE, got %r" % (what, r.body[:300]))
    detail = json.loads(r.body)["errors"][0].get("detail")
    check(isinstance(detail, dict) and (detail.get("error") or detail.get("upstream_status")),
          "%s: the error detail should name the upstream failure, got %r" % (what, detail))
    return detail


def _stale(r, digest, what):
    eq((r.status, lib.sha256(r.body)), (200, digest), "%s: status, body digest" % what)
    eq(r.header("X-Regproxy-Cache"), "STALE", "%s: X-Regproxy-Cache" % what)
    w = r.header("Warning") or ""
    check(w.startswith("110 "), "%s: expected a `Warning: 110 ...` header, got %r" % (what, w))


def test_upstream_down(t):
    s = t.s
    reg = t.private_registry("anon", images={
        "ns/multi:v1": "oci:%s:v1" % s.images["multi"]["dir"],
        "ns/multiarch:v1": "oci:%s:v1" % s.images["multiarch"]["dir"]})
    p = t.proxy(registries=[reg.conf()], cache={"tag_ttl": "1s", "max_stale": "4s"})
    digest = reg.pushed["ns/multi:v1"]["digest"]
    _, tags = t.pull(p, "ns/multi:v1")
    t_fetched = time.time()
    eq(tags.get("v1"), digest, "pull of ns/multi:v1 with upstream up")
    m = lib.image_manifests(reg, "ns/multi:v1")[0]
    other = lib.image_manifests(reg, "ns/multiarch:v1")[0]["layers"][0]["digest"]

    reg.stop()
    _past(t_fetched, 1)
    a0 = len(p.access())
    _, tags = t.pull(p, "ns/multi:v1")
    eq(tags.get("v1"), digest, "pull of the cached tag with upstream down, past tag_ttl")
    lines = [a for a in p.access(a0) if a.get("path") == "/v2/ns/multi/manifests/v1"]
    check(lines and all(a.get("cache") == "STALE" for a in lines),
          "access log of the pull's tag requests should say cache=STALE: %s"
          % [(a.get("status"), a.get("cache")) for a in lines])
    r = p.get("/v2/ns/multi/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    _stale(r, digest, "GET the cached tag, upstream down")
    st, h, body = p.raw("HEAD", "/v2/ns/multi/manifests/v1", {"Accept": lib.ACCEPT_ALL})
    eq((st, h.get("x-regproxy-cache"), h.get("docker-content-digest"), body),
       (200, "STALE", digest, b""), "HEAD the cached tag, upstream down")
    r = p.get("/v2/ns/multi/manifests/" + digest, headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, lib.sha256(r.body), r.header("X-Regproxy-Cache")), (200, digest, "HIT"),
       "GET the cached manifest by digest, upstream down")
    for b in [m["config"]] + m["layers"]:
        r = lib.stream_get(p.port, "/v2/ns/multi/blobs/" + b["digest"])
        eq((r.status, r.complete, r.digest, r.header("x-regproxy-cache")),
           (200, True, b["digest"], "HIT"), "cached blob %s, upstream down" % b["digest"])

    # Never cached: 503 naming the failure, not 404.
    _unavailable(p.get("/v2/ns/multiarch/manifests/v1", headers={"Accept": lib.ACCEPT_ALL}),
                 "uncached tag ns/multiarch:v1, upstream down")
    _unavailable(p.get("/v2/ns/multi/manifests/v2", headers={"Accept": lib.ACCEPT_ALL}),
                 "uncached tag ns/multi:v2, upstream down")
    _unavailable(p.get("/v2/ns/multiarch/blobs/" + other),
                 "uncached blob %s, upstream down" % other)
    st, h, body = p.raw("HEAD", "/v2/ns/multiarch/blobs/" + other)
    eq((st, body), (503, b""), "HEAD of an uncached blob, upstream down (status, body)")
    r = s.skopeo(["copy", "-q", "--src-tls-verify=false", "--src-no-creds",
                  "docker://%s/ns/multiarch:v1" % p.hostport, "oci:%s/never:v1" % t.tmp],
                 check_rc=False, timeout=120)
    check(r.returncode != 0, "skopeo pulled ns/multiarch:v1 (never cached) with upstream down")
    check("manifest unknown" not in r.err.lower(),
          "skopeo was told the uncached image does not exist (must be unavailable, not "
          "unknown): %s" % r.err[-500:])

    # Past tag_ttl (1 s) + max_stale (4 s): no longer served by tag; by digest still.
    _past(t_fetched, 6)
    a0 = len(p.access())
    _unavailable(p.get("/v2/ns/multi/manifests/v1", headers={"Accept": lib.ACCEPT_ALL}),
                 "cached tag past tag_ttl + max_stale, upstream down")
    # Its failed revalidation is a miss of the cache, not a pass-through (PASS is for what
    # the cache never keeps).
    lines = lib.settle(lambda: [a for a in p.access(a0)
                                if a.get("path") == "/v2/ns/multi/manifests/v1"], 1)
    eq([(a.get("status"), a.get("cache")) for a in lines], [("503", "MISS")],
       "access line of the failed revalidation")
    r = p.get("/v2/ns/multi/manifests/" + digest, headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, lib.sha256(r.body)), (200, digest),
       "cached manifest by digest past tag_ttl + max_stale")

    # Upstream is back: one HEAD revalidates the tag.
    reg.restart()
    mk = reg.mark()
    r = p.get("/v2/ns/multi/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, lib.sha256(r.body), r.header("X-Regproxy-Cache")),
       (200, digest, "REVALIDATED"), "GET the tag once upstream is back")
    ups = lib.settle(lambda: [x for x in reg.since(mk) if x[1] == "/v2/ns/multi/manifests/v1"],
                     1)
    eq([x[0] for x in ups], ["HEAD"], "upstream requests for the revalidation")



def test_unreachable_registry_not_asked_again_at_once(t):
    """A registry that gave no answer is not asked again at once: for 30 s, tags past
    tag_ttl are served stale right away (within max_stale), not each after a revalidation
    of its own. Refused here; for a registry that drops connections, or accepts and says
    nothing, each such revalidation would wait out a 15 s or 60 s timeout. Any answer from
    the registry ends that."""
    s = t.s
    reg = t.private_registry("anon", images={
        "ns/multi:v1": "oci:%s:v1" % s.images["multi"]["dir"],
        "ns/multiarch:v1": "oci:%s:v1" % s.images["multiarch"]["dir"]})
    p = t.proxy(registries=[reg.conf()], cache={"tag_ttl": "1s", "max_stale": "1h"})
    digests = {}
    for repo in ("multi", "multiarch"):
        r = p.get("/v2/ns/%s/manifests/v1" % repo, headers={"Accept": lib.ACCEPT_ALL})
        eq(r.status, 200, "GET ns/%s:v1 with upstream up" % repo)
        digests[repo] = lib.sha256(r.body)
    t_fetched = time.time()

    reg.stop()
    _past(t_fetched, 1)
    r = p.get("/v2/ns/multi/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    _stale(r, digests["multi"], "ns/multi:v1, upstream refusing")
    reg.restart()
    mk = reg.mark()
    # Another tag, within the 30 s: stale at once, the registry not asked.
    r = p.get("/v2/ns/multiarch/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    _stale(r, digests["multiarch"], "ns/multiarch:v1 right after the registry gave no answer")
    st, h, _ = p.raw("HEAD", "/v2/ns/multi/manifests/v1", {"Accept": lib.ACCEPT_ALL})
    eq((st, h.get("x-regproxy-cache")), (200, "STALE"), "HEAD of ns/multi:v1 meanwhile")
    ups = lib.settle(lambda: [x for x in reg.since(mk) if "/manifests/" in x[1]])
    eq(ups, [], "registry requests for stale tags within 30 s of no answer")
    # Something only upstream can answer (an uncached tag) still goes there; its answer
    # ends the hold, and the next tag past tag_ttl revalidates.
    r = p.get("/v2/ns/multi/manifests/v2", headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, r.error_codes()[:1]), (404, ["MANIFEST_UNKNOWN"]), "an uncached tag")
    r = p.get("/v2/ns/multi/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, lib.sha256(r.body), r.header("X-Regproxy-Cache")),
       (200, digests["multi"], "REVALIDATED"), "ns/multi:v1 once the registry answered")

def _held_registry(t, content_type="application/vnd.oci.image.manifest.v1+json"):
    """A plain-HTTP upstream answering manifests (as content_type) at once until hold is
    set; then each waits for release and answers current[0] (manifest bytes, digest).
    Returns (up, hold, release, current, (m, d)): the image it starts with."""
    m, d, _l, _ld, _c, _cd = rawup.image()
    release, hold = threading.Event(), threading.Event()
    current = [(m, d)]

    def h(r):
        if "/manifests/" not in r.path:
            r.send(404, b"")
            return False
        if hold.is_set():
            release.wait(120)
        body, digest = current[0]
        r.answer(body, content_type, digest)
        return False
    up = rawup.RawUpstream(t, h)
    t.defer(release.set)
    return up, hold, release, current, (m, d)


def _heads(up, repo):
    return [x for x in up.seen("/v2/%s/manifests/" % repo) if x[1] == "HEAD"]


def test_stalled_revalidation_served_stale(t):
    """A registry that accepts and then says nothing (overloaded, half up behind its load
    balancer) kept each client of a tag past tag_ttl waiting for the whole answer timeout
    (60 s) before the cached tag was served stale, while kubelet, containerd and CRI-O
    give up sooner. With a stale answer at hand the client waits revalidate_timeout, gets
    the tag stale, and the registry is not asked about other stale tags for 30 s; the
    revalidation goes on in the background, and its answer makes the tag fresh again."""
    up, hold, release, _cur, (_m, d) = _held_registry(t)
    p = t.proxy(registries=[up.conf(tag_ttl="5s")],
                cache={"max_stale": "1h", "revalidate_timeout": "1s"})
    for repo in ("a", "b"):
        r = p.get("/v2/ns/%s/manifests/v1" % repo, headers={"Accept": lib.ACCEPT_ALL})
        eq((r.status, lib.sha256(r.body)), (200, d), "first GET of ns/%s:v1" % repo)
    _past(time.time(), 5)
    hold.set()
    # Well inside the 60 s the proxy would otherwise wait; the client's limit, not a timing.
    r = p.get("/v2/ns/a/manifests/v1", headers={"Accept": lib.ACCEPT_ALL}, timeout=30)
    _stale(r, d, "ns/a:v1 past tag_ttl, upstream holding the revalidation")
    # Log lines are written in batches after the loop's callbacks: maybe after the answer.
    lib.wait_until(lambda: "gave no answer within revalidate_timeout (1000 ms)" in p.log_text(),
                   10, "the stale answer's log line saying the revalidation took too long")
    # Another stale tag: at once, the registry not asked.
    n = len(up.seen("/v2/ns/b/"))
    st, hd, _ = p.raw("HEAD", "/v2/ns/b/manifests/v1", {"Accept": lib.ACCEPT_ALL}, timeout=30)
    eq((st, hd.get("x-regproxy-cache")), (200, "STALE"), "HEAD ns/b:v1 right after")
    eq(len(up.seen("/v2/ns/b/")), n, "upstream requests for ns/b:v1 within 30 s")
    # The held revalidation answers: ns/a:v1 is fresh again without another question.
    release.set()
    lib.wait_until(lambda: "repo=ns/a tag=v1 finished in the background: unchanged, fresh "
                   "again" in p.log_text(), 20, "the background revalidation's end")
    r = p.get("/v2/ns/a/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, lib.sha256(r.body), r.header("X-Regproxy-Cache")), (200, d, "HIT"),
       "ns/a:v1 after the background revalidation")
    eq(len(_heads(up, "ns/a")), 1, "upstream HEADs of ns/a:v1: the one revalidation")


def test_stalled_revalidation_moved_in_background(t):
    """A revalidation answered after its client got the stale tag still moves the tag: the
    next client gets the new manifest, not the old one again."""
    up, hold, release, cur, (_m, d) = _held_registry(t)
    p = t.proxy(registries=[up.conf(tag_ttl="1s")], cache={"revalidate_timeout": "1s"})
    r = p.get("/v2/ns/a/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, lib.sha256(r.body)), (200, d), "first GET of ns/a:v1")
    _past(time.time(), 1)
    m2 = r.body.replace(b'"schemaVersion": 2', b'"schemaVersion":  2')
    check(m2 != r.body, "could not make a second manifest")
    cur[0] = (m2, lib.sha256(m2))
    hold.set()
    r = p.get("/v2/ns/a/manifests/v1", headers={"Accept": lib.ACCEPT_ALL}, timeout=30)
    _stale(r, d, "ns/a:v1 past tag_ttl, upstream holding the revalidation")
    hold.clear()
    release.set()
    lib.wait_until(lambda: "repo=ns/a tag=v1 finished in the background: moved" in p.log_text(),
                   20, "the background revalidation's end")
    r = p.get("/v2/ns/a/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, lib.sha256(r.body)), (200, cur[0][1]),
       "ns/a:v1 after a background revalidation found it moved")


def test_revalidation_past_max_stale_waits(t):
    """A tag past tag_ttl + max_stale has nothing to answer instead: its revalidation is
    waited for however long upstream takes (released here after 3 s, well past
    revalidate_timeout)."""
    up, hold, release, _cur, (_m, d) = _held_registry(t)
    p = t.proxy(registries=[up.conf(tag_ttl="1s")],
                cache={"max_stale": "1s", "revalidate_timeout": "1s"})
    r = p.get("/v2/ns/a/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, lib.sha256(r.body)), (200, d), "first GET of ns/a:v1")
    _past(time.time(), 3)
    hold.set()
    timer = threading.Timer(3, release.set)
    timer.start()
    t.defer(timer.cancel)
    r = p.get("/v2/ns/a/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, lib.sha256(r.body), r.header("X-Regproxy-Cache")), (200, d, "REVALIDATED"),
       "ns/a:v1 past max_stale, upstream slow")


def test_stalled_token_revalidation_served_stale(t):
    """revalidate_timeout counts the token too: a registry that starts asking for a token
    whose realm then says nothing gets the tag served stale as when the registry itself
    is silent. The realm's silence is not the registry's: the next stale tag asks again."""
    m, d, _l, _ld, _c, _cd = rawup.image()
    release, auth = threading.Event(), threading.Event()
    up = None

    def h(r):
        if r.path.startswith("/token"):
            release.wait(120)
            r.send(503, b"")
            return False
        if "/manifests/" not in r.path:
            r.send(404, b"")
            return False
        if auth.is_set() and not r.h("Authorization"):
            r.send(401, b"", [("WWW-Authenticate", 'Bearer realm="%s/token",service="raw"'
                               % up.url)])
            return False
        r.answer(m, "application/vnd.oci.image.manifest.v1+json", d)
        return False
    up = rawup.RawUpstream(t, h)
    t.defer(release.set)
    p = t.proxy(registries=[up.conf(tag_ttl="1s")], cache={"revalidate_timeout": "1s"})
    for repo in ("a", "b"):
        r = p.get("/v2/ns/%s/manifests/v1" % repo, headers={"Accept": lib.ACCEPT_ALL})
        eq((r.status, lib.sha256(r.body)), (200, d), "first GET of ns/%s:v1" % repo)
    _past(time.time(), 1)
    auth.set()
    for repo in ("a", "b"):
        r = p.get("/v2/ns/%s/manifests/v1" % repo, headers={"Accept": lib.ACCEPT_ALL},
                  timeout=25)
        _stale(r, d, "ns/%s:v1 past tag_ttl, the token realm holding" % repo)
    lib.wait_until(lambda: "gave no token within revalidate_timeout (1000 ms)" in p.log_text(),
                   10, "the stale answer's log line saying the token did not come in time")
    # The realm's silence is not the registry's, but ns/a:v1 is still being asked about:
    # stale at once, not after another revalidate_timeout.
    r = p.get("/v2/ns/a/manifests/v1", headers={"Accept": lib.ACCEPT_ALL}, timeout=25)
    _stale(r, d, "ns/a:v1 again, its revalidation still waiting for the realm")
    lib.wait_until(lambda: "is still being asked about it in the background" in p.log_text(),
                   10, "the second stale answer's log line saying the question is under way")
    eq(len(up.seen("/token")), 2, "token requests: one per tag's scope, the second not "
       "skipped for the first one's silence")
    # Stopped with both revalidations still waiting for their tokens: a clean exit.
    eq(p.stop(), [], "stopping with revalidations under way in the background")


def test_stalled_get_after_digestless_head_served_stale(t):
    """A registry whose HEAD names no digest leaves the revalidation to a GET (a registry
    behind a proxy that drops the header). revalidate_timeout is for the whole
    revalidation: that GET, held, used to be waited for up to the 60 s answer timeout, the
    HEAD alone having the deadline. Now the tag is served stale within it, to a GET and to a
    HEAD (whose second question is another HEAD)."""
    m, d, _l, _ld, _c, _cd = rawup.image()
    release, hold = threading.Event(), threading.Event()
    asked = {}

    def h(r):
        if "/manifests/" not in r.path:
            r.send(404, b"")
            return False
        if hold.is_set():
            # The revalidation's HEAD is answered at once without a digest; what follows is
            # held.
            asked[r.path] = asked.get(r.path, 0) + 1
            if asked[r.path] > 1:
                release.wait(120)
            else:
                r.send(200, b"", [("Content-Type", "application/vnd.oci.image.manifest.v1+json"),
                                  ("Content-Length", str(len(m)))])
                return False
        r.answer(m, "application/vnd.oci.image.manifest.v1+json", d)
        return False
    up = rawup.RawUpstream(t, h)
    t.defer(release.set)
    # Two proxies: a registry that then kept the GET unanswered counts as silent for 30 s.
    proxies = [t.proxy(registries=[up.conf(tag_ttl="1s")], cache={"revalidate_timeout": "1s"})
               for _ in range(2)]
    for p, repo in zip(proxies, ("a", "b")):
        r = p.get("/v2/ns/%s/manifests/v1" % repo, headers={"Accept": lib.ACCEPT_ALL})
        eq((r.status, lib.sha256(r.body)), (200, d), "first GET of ns/%s:v1" % repo)
    _past(time.time(), 1)
    hold.set()
    # The client's limit, not a timing: the proxy would otherwise wait 60 s.
    r = proxies[0].get("/v2/ns/a/manifests/v1", headers={"Accept": lib.ACCEPT_ALL}, timeout=30)
    _stale(r, d, "ns/a:v1 past tag_ttl, HEAD without a digest, GET held")
    eq([x[1] for x in up.seen("/v2/ns/a/")], ["GET", "HEAD", "GET"],
       "upstream requests for ns/a:v1")
    st, hd, _ = proxies[1].raw("HEAD", "/v2/ns/b/manifests/v1", {"Accept": lib.ACCEPT_ALL},
                               timeout=30)
    eq((st, hd.get("x-regproxy-cache")), (200, "STALE"), "HEAD ns/b:v1, its second HEAD held")
    eq([x[1] for x in up.seen("/v2/ns/b/")], ["GET", "HEAD", "HEAD"],
       "upstream requests for ns/b:v1")


def test_revalidation_past_deadline_no_longer_stale_waits(t):
    """revalidate_timeout is given to a revalidation whose tag could be served stale when it
    started. A reload that then lowered max_stale (or tag_ttl) leaves it, at the deadline,
    with nothing to answer instead: it waits on for upstream, as for any tag past max_stale,
    rather than answer 503 after giving upstream only revalidate_timeout."""
    up, hold, release, _cur, (_m, d) = _held_registry(t)
    p = t.proxy(registries=[up.conf(tag_ttl="1s")], admin={"log_level": "debug"},
                cache={"max_stale": "1h", "revalidate_timeout": "5s"})  # room for the reload
    path = "/v2/ns/a/manifests/v1"
    eq(p.get(path, headers={"Accept": lib.ACCEPT_ALL}).status, 200, "first GET")
    _past(time.time(), 2)
    hold.set()
    out = []
    th = threading.Thread(target=lambda: out.append(
        p.get(path, headers={"Accept": lib.ACCEPT_ALL}, timeout=60)))
    th.start()
    lib.wait_until(lambda: len(up.seen(path)) >= 2, 10, "the revalidation's HEAD upstream")
    p.cache["max_stale"] = "0s"  # the tag, 2 s old with a tag_ttl of 1 s, is past it now
    p.write_conf()
    os.kill(p.pid, signal.SIGHUP)
    lib.wait_until(lambda: "reload (SIGHUP): configuration applied" in p.log_text(), 10,
                   "the reload")
    lib.wait_until(lambda: "past revalidate_timeout: no stale answer to give, waiting on"
                   in p.log_text(), 20, "the deadline")
    check(not out, "the client was answered at the deadline: %r" % out[:1])
    release.set()
    th.join()
    r = out[0]
    eq((r.status, lib.sha256(r.body), r.header("X-Regproxy-Cache")), (200, d, "REVALIDATED"),
       "ns/a:v1, past the new max_stale, its revalidation past the deadline (body %r)"
       % r.body[:200])
    eq([x[1] for x in up.seen(path)], ["GET", "HEAD"], "upstream requests")


def test_background_revalidation_does_not_undo_a_newer_answer(t):
    """A revalidation finishing in the background answers as of when it was asked. A tag
    recorded again meanwhile (another client's revalidation found it moved) is newer than
    that answer: the late answer must not put the tag back to the old digest, fresh."""
    m, d, _l, _ld, _c, _cd = rawup.image()
    m2 = m.replace(b'"schemaVersion": 2', b'"schemaVersion":  2')
    check(m2 != m, "could not make a second manifest")
    d2 = lib.sha256(m2)
    release, hold = threading.Event(), threading.Event()
    current = [(m, d)]
    held = []

    def h(r):
        if "/manifests/" not in r.path:
            r.send(404, b"")
            return False
        body, digest = current[0]  # the tag as upstream has it when asked
        if hold.is_set() and r.method == "HEAD" and not held:
            held.append(r.n)
            release.wait(120)
        r.answer(body, "application/vnd.oci.image.manifest.v1+json", digest)
        return False
    up = rawup.RawUpstream(t, h)
    t.defer(release.set)
    path = "/v2/ns/a/manifests/v1"
    p = t.proxy(registries=[up.conf(tag_ttl="5s")],
                cache={"max_stale": "1h", "revalidate_timeout": "1s"})
    eq((p.get(path, headers={"Accept": lib.ACCEPT_ALL}).status), 200, "first GET")
    _past(time.time(), 5)
    hold.set()
    r = p.get(path, headers={"Accept": lib.ACCEPT_ALL}, timeout=30)
    _stale(r, d, "ns/a:v1 past tag_ttl, its revalidation held")
    # The tag moves upstream; a client that cannot be served stale (a reload set max_stale
    # 0) revalidates it again, is answered at once, and the tag follows.
    current[0] = (m2, d2)
    p.cache["max_stale"] = "0s"
    p.write_conf()
    os.kill(p.pid, signal.SIGHUP)
    lib.wait_until(lambda: "reload (SIGHUP): configuration applied" in p.log_text(), 10,
                   "the reload")
    r = p.get(path, headers={"Accept": lib.ACCEPT_ALL}, timeout=30)
    eq((r.status, lib.sha256(r.body)), (200, d2), "ns/a:v1 revalidated once it moved")
    # The held HEAD, asked before the move, now answers the old digest.
    release.set()
    lib.wait_until(lambda: "repo=ns/a tag=v1 finished in the background" in p.log_text(), 20,
                   "the background revalidation's end")
    r = p.get(path, headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, lib.sha256(r.body), r.header("X-Regproxy-Cache")), (200, d2, "HIT"),
       "ns/a:v1 after the late background answer (log: %s)"
       % [ln for ln in p.log_text().splitlines() if "background" in ln])


def test_background_revalidation_moved_with_charset_type(t):
    """quay.io, pulp and Satellite append '; charset=utf-8' to manifest Content-Types. A tag
    found moved in the background is recorded as the request records it: with the type as
    the proxy keeps types (no parameters), which for a type its list names is no type at
    all, in the tag file format (RPTAG 1) that earlier versions read."""
    up, hold, release, current, (m, d) = _held_registry(
        t, "application/vnd.oci.image.manifest.v1+json; charset=utf-8")
    m2 = m.replace(b'"schemaVersion": 2', b'"schemaVersion":  2')
    p = t.proxy(registries=[up.conf(tag_ttl="5s")], cache={"revalidate_timeout": "1s"})
    path = "/v2/ns/a/manifests/v1"

    def tag_head():
        k = hashlib.sha256(("%s\0%s\0%s\0" % ("raw.test", "ns/a", "v1")).encode()).hexdigest()
        with open(os.path.join(p.cache_dir, "tags", k[:2], k), "rb") as f:
            return f.read().split(b"\n")[0]
    eq((p.get(path, headers={"Accept": lib.ACCEPT_ALL}).status), 200, "first GET")
    check(tag_head().startswith(b"RPTAG 1 "), "the tag file: %r" % tag_head())
    _past(time.time(), 5)
    current[0] = (m2, lib.sha256(m2))
    hold.set()
    r = p.get(path, headers={"Accept": lib.ACCEPT_ALL}, timeout=30)
    _stale(r, d, "ns/a:v1 past tag_ttl, upstream holding the revalidation")
    hold.clear()
    release.set()
    lib.wait_until(lambda: "repo=ns/a tag=v1 finished in the background: moved" in p.log_text(),
                   20, "the background revalidation's end")
    check(tag_head().startswith(b"RPTAG 1 "),
          "the tag file after the background revalidation found it moved: %r" % tag_head())
    r = p.get(path, headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, lib.sha256(r.body)), (200, current[0][1]), "ns/a:v1 after it moved")
    accepts = [x[3].get("accept", "") for x in up.seen(path) if x[1] == "HEAD"]
    check(all("charset" not in a for a in accepts),
          "revalidations asked with a recorded type's parameters: %r" % accepts)


def test_upstream_errors(t):
    """500, 503 and 429 from upstream on revalidation: the cached tag is served STALE."""
    fr = t.s.fakereg
    p = t.proxy(registries=[fr.conf()], cache={"tag_ttl": "1s"})
    t.defer(lambda: fr.set_mode("ok"))
    path = "/v2/ns/multi/manifests/v1"
    r = p.get(path, headers={"Accept": lib.ACCEPT_ALL})
    t_fetched = time.time()
    eq((r.status, r.header("X-Regproxy-Cache")), (200, "MISS"), "first GET %s" % path)
    digest = lib.sha256(r.body)
    _past(t_fetched, 1)
    for mode in ("500", "503", "429"):
        fr.set_mode(mode)
        mk = fr.mark()
        r = p.get(path, headers={"Accept": lib.ACCEPT_ALL})
        _stale(r, digest, "GET the cached tag while upstream answers %s" % mode)
        ups = lib.settle(lambda: [(x["method"], x["status"]) for x in fr.requests(mk[0])
                                  if x["path"] == path], 1)
        check(ups and all(st == int(mode) for _, st in ups),
              "upstream mode %s: expected the proxy to ask upstream (and get %s), saw %s"
              % (mode, mode, ups))
        # Never cached while failing: not 404, not 200.
        r = p.get("/v2/ns/multiarch/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
        if mode == "429":
            check(r.status in (429, 503), "uncached tag while upstream answers 429: expected "
                  "429 or 503, got %d %r" % (r.status, r.body[:200]))
        else:
            _unavailable(r, "uncached tag while upstream answers %s" % mode)
    fr.set_mode("ok")
    r = p.get(path, headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, lib.sha256(r.body), r.header("X-Regproxy-Cache")),
       (200, digest, "REVALIDATED"), "GET the tag once upstream is healthy")
    stale = [a for a in p.access() if a.get("path") == path and a.get("cache") == "STALE"]
    eq(len(stale), 3, "access-log lines with cache=STALE for %s" % path)


def test_basic_credentials_refused(t):
    """A registry that takes Basic credentials and starts refusing the proxy's (a rotated
    password): a cached tag past tag_ttl is served STALE, as when a token realm refuses
    them, and as documented ("down, or refuses the proxy's credentials"). It used to be
    answered 502 UNAUTHORIZED. A tag never cached still gets that 502."""
    m, d, _l, _ld, _c, _cd = rawup.image()
    accepted = {"auth": "Basic " + base64.b64encode(b"puller:pw").decode()}

    def h(r):
        if r.h("authorization") == accepted["auth"]:
            r.answer(m, "application/vnd.oci.image.manifest.v1+json", d)
        else:
            r.send(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"no","detail":null}]}',
                   [("Content-Type", "application/json"),
                    ("WWW-Authenticate", 'Basic realm="registry"')])
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf(tag_ttl="1s", user="puller", password="pw")])
    path = "/v2/ns/b/manifests/v1"
    r = p.get(path, headers={"Accept": lib.ACCEPT_ALL})
    t_fetched = time.time()
    eq((r.status, r.header("X-Regproxy-Cache"), lib.sha256(r.body)), (200, "MISS", d),
       "first GET %s" % path)
    accepted["auth"] = "Basic " + base64.b64encode(b"puller:rotated").decode()
    _past(t_fetched, 1)
    n = len(up.seen(path))
    _stale(p.get(path, headers={"Accept": lib.ACCEPT_ALL}), d,
           "GET the cached tag while upstream refuses the proxy's credentials")
    r = p.get(path, method="HEAD", headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, r.header("X-Regproxy-Cache"), r.header("Docker-Content-Digest")),
       (200, "STALE", d), "HEAD of the cached tag while upstream refuses the credentials")
    check(len(up.seen(path)) > n, "the proxy should have asked upstream again")
    r = p.get("/v2/ns/b/manifests/v2", headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, r.error_codes()), (502, ["UNAUTHORIZED"]),
       "GET of a tag never cached while upstream refuses the credentials (body %r)"
       % r.body[:200])


def test_answer_cut_inside_its_head_served_stale(t):
    """A registry whose connection closes partway through the head of its answer (a load
    balancer dropping it during a restart) is failing, not answering: the cached tag is
    served STALE. curl takes a close inside a head for the end of a complete answer, and the
    proxy took that for an unusable answer of the registry's (a 502, "upstream answered 200
    and no final answer followed"), so the stale tag was not served."""
    m, md, layer, ld, cfg, cd = rawup.image()
    cut = threading.Event()

    def h(r):
        if r.path == "/v2/ns/x/manifests/v1":
            if cut.is_set():
                r.raw(b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest"
                      b".v1+json\r\nDocker-Content-")
            else:
                r.answer(m, "application/vnd.oci.image.manifest.v1+json", md)
        else:
            r.send(404, b"")
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()], cache={"tag_ttl": "1s"})
    path = "/v2/ns/x/manifests/v1"
    r = p.get(path, headers={"Accept": lib.ACCEPT_ALL})
    t_fetched = time.time()
    eq((r.status, r.header("X-Regproxy-Cache")), (200, "MISS"), "first GET %s" % path)
    _past(t_fetched, 1)
    cut.set()
    r = p.get(path, headers={"Accept": lib.ACCEPT_ALL})
    _stale(r, md, "GET the cached tag while upstream cuts its answers inside the head")
    check(len([x for x in up.seen(path) if x[1] in ("HEAD", "GET")]) >= 2,
          "the proxy asked upstream again")
