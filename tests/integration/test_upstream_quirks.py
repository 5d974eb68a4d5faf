# SPDX-License-Identifier: Apache-2.0
"""Misbehaving or unusual upstreams, scripted byte by byte (rawup.RawUpstream): Bearer
registries refusing their own tokens, CDNs refusing expired URLs, manifests redirected
(registry.k8s.io), 1xx and trailers, unasked-for Content-Encoding, Content-Type
parameters (quay, pulp, Satellite add '; charset=utf-8'), lying resumes, many headers and
several challenges. What the client gets must be right, and nothing wrong is cached."""
import base64
import gzip
import json
import os
import socket
import ssl
import time

import lib
import rawup
from lib import check, eq

OCI_INDEX = "application/vnd.oci.image.index.v1+json"

MT = "application/vnd.oci.image.manifest.v1+json"



def _body_json(r):
    try:
        return json.loads(r.body)
    except ValueError:
        return None


def test_bearer_401_forever_not_relayed_as_401(t):
    """A registry that keeps refusing the proxy's tokens (Docker Hub's insufficient_scope for
    a private or missing repository): the client must not get a bare 401 with no challenge
    (the proxy's rule: 502, never 401, when upstream refuses the proxy)."""
    def h(r):
        if r.path.startswith("/token"):
            r.send(200, json.dumps({"token": "tok%d" % r.n, "expires_in": 600}).encode(),
                   [("Content-Type", "application/json")])
            return False
        r.send(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required",'
               b'"detail":null}]}',
               [("Content-Type", "application/json"),
                ("WWW-Authenticate", 'Bearer realm="%s/token",service="svc",scope="repository:'
                 'ns/x:pull",error="insufficient_scope"' % up.url)])
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()])
    for path in ("/v2/ns/x/manifests/v1", "/v2/ns/x/blobs/sha256:" + "a" * 64):
        r = p.get(path, headers={"Accept": lib.ACCEPT_ALL})
        check(any((x[3].get("authorization") or "").startswith("Bearer ") for x in up.seen()),
              "the proxy never sent a token")
        eq(r.status, 502, "GET %s from a registry that refuses the proxy's tokens" % path)
        eq([e["code"] for e in _body_json(r)["errors"]], ["UNAUTHORIZED"], "%s: code" % path)
        eq(r.header("WWW-Authenticate"), None, "%s: a challenge to the anonymous client" % path)


def test_cdn_401_not_relayed_bare(t):
    """A blob CDN (redirect target, never sent our credentials) answering 401: the client is
    anonymous to us; a 401 with no challenge tells it nothing true."""
    m, md, layer, ld, cfg, cd = rawup.image()

    def h(r):
        if r.path.startswith("/v2/ns/x/blobs/"):
            r.send(307, b"", [("Location", "%s/cdn/%s?sig=old" % (up.url, ld))])
        elif r.path.startswith("/cdn/"):
            r.send(401, b"<Error><Code>Unauthorized</Code></Error>",
                   [("Content-Type", "application/xml")])
        else:
            r.send(404, b"")
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()])
    r = p.get("/v2/ns/x/blobs/" + ld)
    check(r.status != 401 or "www-authenticate" in r.headers,
          "a CDN's 401 reached the client as a bare 401: %r" % r.body)


def test_manifest_redirect_followed(t):
    """A registry that 307-redirects manifest GETs (registry.k8s.io redirects every /v2/
    request to Artifact Registry): clients follow it; does the proxy?"""
    m, md, layer, ld, cfg, cd = rawup.image()

    def h(r):
        if r.path == "/v2/ns/x/manifests/v1":
            r.send(307, b"", [("Location", "/v2/real/ns/x/manifests/v1")])
        elif r.path == "/v2/real/ns/x/manifests/v1":
            r.send(200, m, [("Content-Type", MT), ("Docker-Content-Digest", md)])
        else:
            r.send(404, b"")
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()])
    r = p.get("/v2/ns/x/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, r.body), (200, m), "manifest behind a same-origin 307")


def test_oversized_headers_named(t):
    """An answer the proxy refuses for its header size (a 9 KiB CDN Location, 70 KiB of
    header lines): the client gets 502 naming that, not 'unreachable', and so does the log.
    Nothing is cached: the next GET asks upstream again."""
    m, md, layer, ld, cfg, cd = rawup.image()

    def h(r):
        if r.path == "/v2/ns/x/blobs/" + ld:
            r.send(307, b"", [("Location", "%s/cdn/%s?sig=%s" % (up.url, ld, "a" * 9000))])
        elif r.path == "/v2/ns/x/manifests/v1":
            r.send(200, m, [("Content-Type", MT), ("Docker-Content-Digest", md)] +
                   [("X-Pad-%d" % i, "p" * 1000) for i in range(70)])
        else:
            r.send(404, b"")
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()])
    for path, why in (("/v2/ns/x/blobs/" + ld, "a header value in the answer exceeds 8 KiB"),
                      ("/v2/ns/x/manifests/v1", "the answer's header lines exceed 64 KiB")):
        for i in range(2):
            r = p.get(path, headers={"Accept": lib.ACCEPT_ALL})
            eq(r.status, 502, "%s answer %d: %r" % (path, i, r.body))
            body = json.loads(r.body)
            check(body["errors"][0]["detail"]["error"] == why,
                  "%s: the error names the header size: %r" % (path, r.body))
        check(why in p.log_text(), "the log names it: %s" % why)
    eq(sum(1 for q in up.reqs if q[2] == "/v2/ns/x/blobs/" + ld), 2,
       "each blob GET asked upstream: nothing cached")
    eq(sum(1 for q in up.reqs if q[2] == "/v2/ns/x/manifests/v1"), 2,
       "each manifest GET asked upstream: nothing cached")


def test_1xx_trailers_manifest(t):
    """1xx answers before the manifest, chunked framing with trailers (one of them a wrong
    Docker-Content-Digest): the manifest is served and cached right, nothing leaks."""
    m, md, layer, ld, cfg, cd = rawup.image()

    def h(r):
        if r.path == "/v2/ns/x/manifests/v1":
            hd = ("HTTP/1.1 100 Continue\r\n\r\n"
                  "HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n"
                  "Content-Type: text/evil\r\n\r\n"
                  "HTTP/1.1 200 OK\r\nContent-Type: %s\r\nDocker-Content-Digest: %s\r\n"
                  "Transfer-Encoding: chunked\r\nTrailer: X-A, Docker-Content-Digest\r\n"
                  "Connection: close\r\n\r\n" % (MT, md)).encode()
            half = len(m) // 2
            body = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\nX-A: 1\r\nDocker-Content-Digest: sha256:%s\r\n" \
                   b"Content-Type: text/evil\r\n\r\n" % (half, m[:half], len(m) - half, m[half:],
                                                        b"0" * 64)
            r.raw(hd + body)
        else:
            r.send(404, b"")
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()])
    for i in range(2):
        r = p.get("/v2/ns/x/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
        eq((r.status, r.body, r.headers.get("content-type"),
            r.headers.get("docker-content-digest")), (200, m, MT, md),
           "manifest answer %d" % i)


def test_gzip_manifest_by_tag_not_cached(t):
    """A registry that gzips a manifest nobody asked it to encode (no Accept-Encoding sent),
    without Docker-Content-Digest: the proxy must not cache and serve the gzip bytes as the
    tag's manifest."""
    m, md, layer, ld, cfg, cd = rawup.image()
    gz = gzip.compress(m)

    def h(r):
        if r.path == "/v2/ns/x/manifests/v1":
            r.send(200, gz, [("Content-Type", MT), ("Content-Encoding", "gzip")])
        else:
            r.send(404, b"")
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()])
    r = p.get("/v2/ns/x/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    check(not (r.status == 200 and r.body == gz),
          "gzip bytes served as the manifest, digest %s" % r.headers.get("docker-content-digest"))


def test_refused_and_tls_errors(t):
    s = t.s
    fr = s.fakereg
    port = lib.free_port()
    bad_tls = fr.conf(name="tls.test")
    bad_tls.pop("ca_file", None)
    p = t.proxy(registries=[{"name": "refused.test", "url": "http://127.0.0.1:%d" % port},
                            bad_tls])
    for reg, msg, why in (("refused.test", "upstream registry unreachable", "connect"),
                          ("tls.test", "TLS with the upstream registry failed", "certificate")):
        r = p.get("/v2/%s/ns/multi/manifests/v1" % reg, headers={"Accept": lib.ACCEPT_ALL})
        eq(r.status, 503, "%s: status" % reg)
        e = _body_json(r)["errors"][0]
        eq((e["code"], e["message"]), ("UNAVAILABLE", msg), "%s: error" % reg)
        check(why in e["detail"]["error"], "%s: the reason (%r) names no %s"
              % (reg, e["detail"]["error"], why))
        # The log is written after the answer (batched per loop iteration): wait for it.
        lib.wait_until(lambda: "upstream %s:" % reg in lib.tail(p.log, 50), 10,
                       "%s: a log line giving the reason" % reg)


def _cross_origin_cdn(t, ld, cdn_h):
    """A registry that redirects every blob GET to a CDN on another origin, answered by
    cdn_h; the proxy in front of it, and the CDN."""
    cdn = rawup.RawUpstream(t, cdn_h)

    def h(r):
        if r.path.startswith("/v2/ns/x/blobs/"):
            r.send(307, b"", [("Location", "%s/cdn/%s?sig=old" % (cdn.url, ld))])
        else:
            r.send(404, b"")
        return False
    up = rawup.RawUpstream(t, h)
    return t.proxy(registries=[up.conf()]), cdn


def test_cross_origin_cdn_401_403(t):
    """The blob CDN on another origin answers 401 (no challenge) or 403 (expired URL)."""
    m, md, layer, ld, cfg, cd = rawup.image()
    status = {"v": 401}

    def cdn_h(r):
        r.send(status["v"], b"<Error><Code>AccessDenied</Code><Message>Request has expired"
               b"</Message></Error>", [("Content-Type", "application/xml")])
        return False
    p, _ = _cross_origin_cdn(t, ld, cdn_h)
    for st in (401, 403):
        status["v"] = st
        r = p.get("/v2/ns/x/blobs/" + ld)
        # Not the registry's own 401/403 for the client to act on: the proxy's download URL
        # went bad, which is a 502 that says so.
        eq(r.status, 502, "CDN answering %d" % st)
        e = _body_json(r)["errors"][0]
        check("redirected to a location that answered %d" % st in e["message"],
              "CDN %d: message %r" % (st, e["message"]))


def test_cdn_429_keeps_retry_after(t):
    """The blob CDN rate-limits (429 with Retry-After), for a plain GET and for one that
    joins a fill: the client gets 429 TOOMANYREQUESTS with the CDN's Retry-After, so it
    backs off as it would pulling directly, not a 502 that says the URL went bad."""
    m, md, layer, ld, cfg, cd = rawup.image()

    def cdn_h(r):
        r.send(429, b"<Error><Code>SlowDown</Code></Error>",
               [("Content-Type", "application/xml"), ("Retry-After", "17")])
        return False
    p, cdn = _cross_origin_cdn(t, ld, cdn_h)
    for i in range(2):
        r = p.get("/v2/ns/x/blobs/" + ld)
        eq(r.status, 429, "GET %d through a rate-limiting CDN: %r" % (i, r.body))
        eq(r.header("Retry-After"), "17", "GET %d: Retry-After" % i)
        eq([e["code"] for e in _body_json(r)["errors"]], ["TOOMANYREQUESTS"], "GET %d: code" % i)
    check(not any(x[3].get("authorization") for x in cdn.seen()),
          "credentials sent to the CDN")


def test_resume_wrong_content_range(t):
    """A cut download resumed; the 206 names the wrong range. Nothing wrong served/cached."""
    m, md, layer, ld, cfg, cd = rawup.image()

    def h(r):
        if r.path != "/v2/ns/x/blobs/" + ld:
            r.send(404, b"")
            return False
        rng = r.h("range")
        if not rng:
            r.send(200, b"", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(len(layer)))], close=True)
            r.raw(layer[:len(layer) // 2])
            return False
        start = int(rng[len("bytes="):-1])
        r.send(206, layer[start - 10:len(layer) - 10],
               [("Content-Type", "application/octet-stream"),
                ("Content-Range", "bytes %d-%d/%d" % (start - 10, len(layer) - 11,
                                                      len(layer)))])
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()])
    r = lib.stream_get(p.port, "/v2/ns/x/blobs/" + ld, timeout=30)
    check(not (r.complete and r.status == 200), "complete answer %r" % r)


def _multiarch():
    import json as _j
    imgs = {}
    for arch in ("amd64", "arm64"):
        cfg = _j.dumps({"architecture": arch, "os": "linux"}).encode()
        m = _j.dumps({"schemaVersion": 2,
                      "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                      "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                                 "digest": rawup.sha256(cfg), "size": len(cfg)},
                      "layers": []}).encode()
        imgs[arch] = (m, rawup.sha256(m))
    idx = _j.dumps({"schemaVersion": 2,
                    "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
                    "manifests": [{"mediaType":
                                   "application/vnd.docker.distribution.manifest.v2+json",
                                   "digest": d, "size": len(m),
                                   "platform": {"architecture": a, "os": "linux"}}
                                  for a, (m, d) in imgs.items()]}).encode()
    return idx, rawup.sha256(idx), imgs


LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONTAINERD_ACCEPT = ", ".join([V2, LIST, "application/vnd.oci.image.manifest.v1+json",
                               "application/vnd.oci.image.index.v1+json", "*/*"])


def _charset_upstream(t, param="; charset=utf-8"):
    idx, idxd, imgs = _multiarch()
    by_digest = {idxd: (idx, LIST)}
    for a, (m, d) in imgs.items():
        by_digest[d] = (m, V2)

    def h(r):
        ref = r.path.rsplit("/", 1)[-1]
        if "/manifests/" not in r.path:
            r.send(404, b"")
            return False
        if ref == "v1":
            # A registry narrows a list to linux/amd64 for a client that does not take lists.
            body, mt = (idx, LIST) if LIST in (r.h("accept") or "") else (imgs["amd64"][0], V2)
        elif ref in by_digest:
            body, mt = by_digest[ref]
        else:
            r.send(404, b"")
            return False
        r.answer(body, mt + param, rawup.sha256(body))
        return False
    up = rawup.RawUpstream(t, h)
    return up, idx, idxd, imgs


def test_content_type_with_charset_cached(t):
    """quay.io / pulp / Satellite append '; charset=utf-8' to manifest Content-Types: the
    manifest must still be served from the cache the second time."""
    up, idx, idxd, imgs = _charset_upstream(t)
    p = t.proxy(registries=[up.conf()])
    for ref in ("v1", idxd):
        n0 = len(up.seen("/v2/ns/x/manifests/"))
        for i in range(2):
            r = p.get("/v2/ns/x/manifests/" + ref, headers={"Accept": lib.ACCEPT_ALL})
            eq(r.status, 200, "GET %s" % ref)
        n = len(up.seen("/v2/ns/x/manifests/")) - n0
        check(n <= 1, "GET %s twice with a charset Content-Type: %d upstream GETs (cache never "
              "answers)" % (ref, n))


def test_content_type_with_charset_narrowed_tag(t):
    """With '; charset=utf-8' on Content-Types, a client that does not name list types makes
    the proxy record the tag as the linux/amd64 image it was narrowed to; containerd (Accept
    ends with */*) on any platform then gets that image for the tag instead of the list."""
    up, idx, idxd, imgs = _charset_upstream(t)
    p = t.proxy(registries=[up.conf()])
    r = p.get("/v2/ns/x/manifests/v1", headers={"Accept": V2})
    eq((r.status, r.body), (200, imgs["amd64"][0]), "narrow client gets the amd64 image")
    for method in ("HEAD", "GET"):
        r = p.get("/v2/ns/x/manifests/v1", method=method, headers={"Accept": CONTAINERD_ACCEPT})
        eq(r.headers.get("docker-content-digest"), idxd,
           "containerd's %s of the tag after a narrow client: the list's digest (amd64 image is "
           "%s)" % (method, imgs["amd64"][1]))


def test_many_headers_and_two_challenges(t):
    m, md, layer, ld, cfg, cd = rawup.image()

    def h(r):
        if r.path.startswith("/token"):
            r.send(200, json.dumps({"token": "T1", "access_token": "T2", "expires_in": -5}
                                   ).encode(), [("Content-Type", "application/json")])
            return False
        if r.h("authorization") != "Bearer T1":
            r.raw(("HTTP/1.1 401 U\r\nContent-Length: 0\r\nConnection: close\r\n"
                   "WWW-Authenticate: Basic realm=\"a, b\"\r\n"
                   "WWW-Authenticate: Bearer realm=\"%s/token\",service=\"s\\\"x\",scope=\"repository:ns/x:pull\"\r\n\r\n"
                   % up.url).encode())
            return False
        extra = [("X-Filler-%d" % i, "v" * 100) for i in range(300)]
        r.send(200, m, [("Content-Type", MT), ("Docker-Content-Digest", md)] + extra)
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()])
    r = p.get("/v2/ns/x/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, r.body), (200, m), "manifest")


def test_moved_realm_learned_again(t):
    """The registry's challenge names a realm that gives no token (moved away, or named by
    a gateway in front for a while), then names a working one: with no token to send, the
    proxy must still ask the registry again rather than dial the dead realm forever."""
    realm = {"path": "/old-token"}

    def h(r):
        if r.path.startswith("/old-token"):
            r.send(404, b"<html>moved</html>", [("Content-Type", "text/html")])
        elif r.path.startswith("/new-token"):
            r.send(200, json.dumps({"token": "tok-new", "expires_in": 600}).encode(),
                   [("Content-Type", "application/json")])
        elif r.h("authorization") == "Bearer tok-new":
            r.send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown",'
                   b'"detail":null}]}', [("Content-Type", "application/json")])
        else:
            r.send(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"no","detail":null}]}',
                   [("Content-Type", "application/json"),
                    ("WWW-Authenticate", 'Bearer realm="%s%s",service="svc"'
                     % (up.url, realm["path"]))])
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()])
    path = "/v2/ns/x/manifests/v1"
    r = p.get(path, headers={"Accept": lib.ACCEPT_ALL})
    check(r.status >= 500, "GET %s while the realm gives no token: got %d" % (path, r.status))
    eq(len(up.seen("/old-token")), 1, "token requests to the old realm")
    realm["path"] = "/new-token"
    for i in range(2):
        r = p.get(path, headers={"Accept": lib.ACCEPT_ALL})
        eq(r.status, 404, "GET %s (%d) once the registry names a working realm (body %r; "
           "requests seen: %r)" % (path, i, r.body, [x[1:3] for x in up.seen()]))
    eq(len(up.seen("/new-token")), 1, "token requests to the new realm")


def test_token_refused_with_unusable_challenge_not_sent_again(t):
    """A cached token the registry refuses with a 401 whose challenge the proxy cannot use
    (RFC 6750's realm-less `Bearer error="invalid_token"`): that token is dead, and must not
    be sent (and refused) again by every later request until its expires_in runs out; the
    next request fetches a fresh one from the realm learned before."""
    m, md, layer, ld, cfg, cd = rawup.image()
    st = {"issued": 0, "valid": "tok1"}

    def h(r):
        if r.path.startswith("/token"):
            st["issued"] += 1
            r.send(200, json.dumps({"token": "tok%d" % st["issued"], "expires_in": 3600}
                                   ).encode(), [("Content-Type", "application/json")])
            return False
        auth = r.h("authorization")
        if auth == "Bearer " + st["valid"]:
            r.send(200, m, [("Content-Type", MT), ("Docker-Content-Digest", md)])
        elif auth:
            r.send(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"invalid token",'
                   b'"detail":null}]}', [("Content-Type", "application/json"),
                                         ("WWW-Authenticate", 'Bearer error="invalid_token"')])
        else:
            r.send(401, b"", [("WWW-Authenticate",
                               'Bearer realm="%s/token",service="svc"' % up.url)])
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()])
    r = p.get("/v2/ns/x/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, r.body), (200, m), "manifest with the first token")
    st["valid"] = "tok2"  # tok1 revoked: the registry refuses it from now on
    mark = len(up.seen())
    for tag in ("v2", "v3", "v4"):
        p.get("/v2/ns/x/manifests/" + tag, headers={"Accept": lib.ACCEPT_ALL})
    sent_dead = [x for x in up.seen()[mark:] if x[3].get("authorization") == "Bearer tok1"]
    eq(len(sent_dead), 1, "requests upstream with the refused token tok1 (requests seen: %r)"
       % [(x[2], x[3].get("authorization")) for x in up.seen()[mark:]])
    r = p.get("/v2/ns/x/manifests/v5", headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, r.body), (200, m), "manifest once a fresh token was fetched")
    eq(st["issued"], 2, "tokens issued")


def test_token_slower_than_its_life_still_used(t):
    """A realm that answers more slowly than the token's expires_in minus the proxy's
    margin (expires_in 1: kept 750 ms, counted from when it was asked): the token the
    request waited for is the best there is, and is sent. Taken for expired on arrival, it
    was dropped and asked for again, and again, by the same request, without end."""
    m, md, layer, ld, cfg, cd = rawup.image()
    st = {"issued": 0}

    def h(r):
        if r.path.startswith("/token"):
            st["issued"] += 1
            if st["issued"] > 3:  # ends the endless refetching the bug makes
                r.send(500, b"enough", [("Content-Type", "text/plain")])
                return False
            time.sleep(1.2)
            r.send(200, json.dumps({"token": "tok%d" % st["issued"], "expires_in": 1}
                                   ).encode(), [("Content-Type", "application/json")])
            return False
        if (r.h("authorization") or "").startswith("Bearer tok"):
            r.send(200, m, [("Content-Type", MT), ("Docker-Content-Digest", md)])
        else:
            r.send(401, b"", [("WWW-Authenticate",
                               'Bearer realm="%s/token",service="svc"' % up.url)])
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()])
    r = p.get("/v2/ns/x/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, r.body), (200, m), "manifest with a token the realm was slow to give")
    eq(st["issued"], 1, "token requests for the one GET")


def test_405_allow_split_across_lines_is_joined(t):
    """Allow is a list (RFC 9110 10.2.1), which an upstream may send over several lines:
    the relayed 405 names every method of them the proxy serves, not those of the first
    line only."""
    def h(r):
        if r.path.startswith("/v2/ns/x/tags/list"):
            r.send(405, b"", [("Allow", "GET"), ("Allow", "HEAD"), ("Allow", "DELETE")])
        else:
            r.send(200, b"{}", [("Content-Type", "application/json")])
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()])
    st, hd, body = p.raw("HEAD", "/v2/ns/x/tags/list")
    eq((st, hd.get("allow")), (405, "GET, HEAD"), "HEAD of tags/list through the proxy")


def test_405_to_a_blob_download_keeps_its_allow(t):
    """A blob GET is answered by the download that fills the cache, which relayed
    upstream's 405 without its Allow (RFC 9110 15.5.6 requires one), while the same 405
    answered through the request path (a HEAD) kept it: both now say upstream's methods
    that the proxy serves."""
    blob = b"b" * 1000
    digest = rawup.sha256(blob)

    def h(r):
        if "/blobs/" in r.path:
            r.send(405, b"", [("Allow", "GET, HEAD, PUT")])
        else:
            r.send(200, b"{}", [("Content-Type", "application/json")])
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()])
    for method in ("HEAD", "GET"):
        st, hd, body = p.raw(method, "/v2/ns/x/blobs/" + digest)
        eq((st, hd.get("allow")), (405, "GET, HEAD"), "upstream's 405 to a blob %s" % method)


def test_basic_offered_beside_a_foreign_realm(t):
    """A registry offering Bearer with a realm the policy does not allow, and Basic beside
    it: the credentials may go to the registry itself, so Basic is used rather than failing
    (the foreign realm is never dialed)."""
    want = "Basic " + base64.b64encode(b"u:p4ss").decode()

    def h(r):
        if r.h("authorization") == want:
            r.send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown",'
                   b'"detail":null}]}', [("Content-Type", "application/json")])
        else:
            r.send(401, b"", [("WWW-Authenticate",
                               'Bearer realm="https://auth.elsewhere.invalid/token",'
                               'service="s", Basic realm="r"')])
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf(user="u", password="p4ss")])
    r = p.get("/v2/ns/x/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 404, "GET through a registry offering Basic beside a foreign Bearer realm "
       "(body %r)" % r.body)


def _short_length_cdn(t, blob, **proxy_args):
    """A registry whose blob CDN answers 200 with a Content-Length 10 bytes short of blob,
    head and body in one write (so they reach the proxy together), ignoring Range."""
    digest = rawup.sha256(blob)

    def cdn_h(r):
        r.send(200, blob[:-10], [("Content-Type", "application/octet-stream"),
                                 ("Content-Length", str(len(blob) - 10))])
        return False
    cdn = rawup.RawUpstream(t, cdn_h)

    def h(r):
        if r.path.startswith("/v2/ns/x/blobs/"):
            r.send(307, b"", [("Location", "%s/cdn/%s?sig=x" % (cdn.url, digest))])
        else:
            r.send(404, b"")
        return False
    up = rawup.RawUpstream(t, h)
    return t.proxy(registries=[up.conf()], **proxy_args), "/v2/ns/x/blobs/" + digest


def test_cdn_wrong_length_answered_502(t):
    """A CDN's 200 with a wrong Content-Length fails the digest check in the same moment its
    head arrived: nothing of the answer has left the proxy, so the client gets a 502 in the
    registry error format, not a connection closed before any response head. (Once bytes
    have left, cutting the connection is all that is left: test_upstream_damage.)"""
    blob = os.urandom(4096)
    _, key, crt = lib.serving_cert(t, "tls")
    p, path = _short_length_cdn(t, blob, listeners=[
        {"default": "raw.test"}, {"default": "raw.test", "tls_cert": crt, "tls_key": key}])
    for what, headers, tls in (("GET", {}, False), ("GET of a range (passed through)",
                                                    {"Range": "bytes=100-199"}, False),
                               ("GET over TLS", {}, True)):
        if tls:
            r = lib.request("https://127.0.0.1:%d%s" % (p.ports[1], path), timeout=30)
        else:
            r = lib.stream_get(p.port, path, headers=headers, timeout=30)
        eq(r.status, 502, "%s of a blob its CDN sends with a short Content-Length (%r)"
           % (what, r))
        e = json.loads(r.body)["errors"][0]
        eq(e["code"], "UNKNOWN", "%s: error code (%r)" % (what, e))
        check("digest" in json.dumps(e["detail"]), "%s: detail %r does not say why" % (what, e))
    check(not os.path.exists(lib.cache_path(p.cache_dir, "blobs", rawup.sha256(blob))),
          "a blob cached from a short answer")


def _read_responses(s, n):
    """Up to n pipelined responses from socket s, read until they are complete or the proxy
    closes: [(status, body)], body None for one cut short."""
    buf, out, eof = b"", [], False
    while len(out) < n:
        head_end = buf.find(b"\r\n\r\n")
        if head_end >= 0:
            lines = buf[:head_end].decode("latin-1").split("\r\n")
            hd = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
            need = head_end + 4 + int(hd.get("content-length", "0"))
            if len(buf) >= need:
                out.append((int(lines[0].split()[1]), buf[head_end + 4:need]))
                buf = buf[need:]
                continue
        if eof:
            if head_end >= 0:
                out.append((int(buf.split(b" ", 2)[1]), None))
            break
        b = s.recv(65536)
        eof = not b
        buf += b
    return out


def test_cdn_wrong_length_answered_502_behind_pipelined_answers(t):
    """A client that pipelines requests and reads slowly: the answers to its GETs of a
    cached manifest are still queued in the proxy when the blob GET behind them fails (its
    CDN's Content-Length is short). Nothing of the blob's answer has left, but it was taken
    back only when it was all that was queued: the client got the manifests, then the
    blob's 200 head and a closed connection, instead of a 502. Over TLS too, where the
    front of the queue is sealed in a record OpenSSL could not send yet (the socket is full)
    and the blob's answer, queued after, is not."""
    blob = os.urandom(4096)
    digest = rawup.sha256(blob)
    idx = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [],
                      "annotations": {"pad": "x" * 300000}}).encode()
    md = rawup.sha256(idx)

    def cdn_h(r):
        r.send(200, blob[:-10], [("Content-Type", "application/octet-stream"),
                                 ("Content-Length", str(len(blob) - 10))])
        return False
    cdn = rawup.RawUpstream(t, cdn_h)

    def h(r):
        if r.path.startswith("/v2/ns/x/blobs/"):
            r.send(307, b"", [("Location", "%s/cdn/%s?sig=x" % (cdn.url, digest))])
        elif r.path == "/v2/ns/x/manifests/" + md:
            r.answer(idx, OCI_INDEX, md)
        else:
            r.send(404, b"")
        return False
    up = rawup.RawUpstream(t, h)
    _, key, crt = lib.serving_cert(t, "tls")
    p = t.proxy(registries=[up.conf()], listeners=[
        {"default": "raw.test"}, {"default": "raw.test", "tls_cert": crt, "tls_key": key}])
    mpath = "/v2/ns/x/manifests/" + md
    eq(p.get(mpath, headers={"Accept": OCI_INDEX}).status, 200, "manifest cached first")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    for tls in (False, True):
        what = "over TLS" if tls else "plain"
        n0 = len(p.access())
        s = socket.socket()
        t.defer(s.close)
        # A small window and segments: the kernel holds far less than the queued answers.
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1000)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", p.ports[1] if tls else p.port))
        if tls:
            s = ctx.wrap_socket(s)
            t.defer(s.close)
        req = "GET %s HTTP/1.1\r\nHost: x\r\nAccept: %s\r\n\r\n"
        s.sendall(("".join(req % (mpath, OCI_INDEX) for _ in range(3)) +
                   req % ("/v2/ns/x/blobs/" + digest, "*/*")).encode())
        p.wait_access(n0 + 4, timeout=60)  # the blob's request has ended, one way or the other
        s.settimeout(60)
        got = _read_responses(s, 4)
        eq([(st, b == idx) for st, b in got[:3]], [(200, True)] * 3,
           "pipelined manifest GETs, %s" % what)
        eq([st for st, b in got[3:]], [502],
           "blob GET behind them, its CDN's answer short, %s (responses: %r)"
           % (what, [(st, None if b is None else len(b)) for st, b in got]))
        e = json.loads(got[3][1])["errors"][0]
        check("digest" in json.dumps(e["detail"]), "502 detail %r does not say why" % e)


def test_empty_blob_pipelined_fetched_once(t):
    """The empty blob (size 0: empty layers use it), GET twice pipelined on one connection,
    cold. Its first answer has no byte to hold back until the verdict, so it ends as the
    fill is published; the second must find the fill or the cached blob then, not fetch
    again. One upstream GET, two 200s."""
    empty = b""
    d = rawup.sha256(empty)

    def h(r):
        if r.path == "/v2/ns/x/blobs/" + d:
            r.send(200, empty, [("Content-Type", "application/octet-stream")])
        else:
            r.send(404, b"")
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()])
    s = socket.create_connection(("127.0.0.1", p.port), timeout=30)
    t.defer(s.close)
    req = "GET /v2/ns/x/blobs/%s HTTP/1.1\r\nHost: x\r\n\r\n" % d
    s.sendall((req * 2).encode())
    got = _read_responses(s, 2)
    eq(got, [(200, b""), (200, b"")], "two pipelined GETs of the empty blob")
    eq(len(up.seen("/v2/ns/x/blobs/")), 1, "upstream GETs of the empty blob")


def test_manifest_partial_success_not_cached(t):
    """A manifest GET answered with a success other than 200 (a 206 with a piece of it that
    nobody asked for, a 204 with nothing): by tag there is no digest to check the bytes
    against, so they must not be cached as the tag's manifest nor served as a manifest; by
    digest, not relayed as a 206 without Content-Range. Each GET asks upstream again. A
    HEAD by tag answered 204 does not record the tag."""
    m, md, layer, ld, cfg, cd = rawup.image()
    m2 = rawup.image()[0]
    md2 = rawup.sha256(m2)

    def h(r):
        if r.path == "/v2/ns/x/manifests/piece":
            r.send(206, m[:100], [("Content-Type", MT),
                                  ("Content-Range", "bytes 0-99/%d" % len(m))])
        elif r.path == "/v2/ns/x/manifests/" + md:
            r.send(206, m, [("Content-Type", MT),
                            ("Content-Range", "bytes 0-%d/%d" % (len(m) - 1, len(m)))])
        elif r.path == "/v2/ns/x/manifests/empty":
            r.send(204, b"", [("Content-Type", MT)])
        elif r.path == "/v2/ns/x/manifests/head" and r.method == "HEAD":
            r.send(204, b"", [("Content-Type", MT), ("Docker-Content-Digest", md2)])
        elif r.path == "/v2/ns/x/manifests/head":
            r.answer(m2, MT, md2)
        else:
            r.send(404, b"")
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()])
    # A HEAD by tag answered 204: the tag is not recorded, so the GET after it goes upstream.
    r = p.get("/v2/ns/x/manifests/head", method="HEAD", headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 502, "HEAD by tag answered 204 by upstream")
    r = p.get("/v2/ns/x/manifests/head", headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, r.body), (200, m2), "GET by tag after the refused HEAD")
    eq([q[1] for q in up.seen("/v2/ns/x/manifests/head")], ["HEAD", "GET"],
       "upstream requests for the tag (a GET answered from a recorded tag would not be here)")
    for ref in ("piece", md, "empty"):
        path = "/v2/ns/x/manifests/" + ref
        for i in range(2):
            r = p.get(path, headers={"Accept": lib.ACCEPT_ALL})
            eq((r.status, [e["code"] for e in _body_json(r)["errors"]]), (502, ["UNKNOWN"]),
               "GET %s (%d) answered %d by upstream: %r" % (ref, i, 206 if ref != "empty"
                                                            else 204, r.body[:80]))
        eq(len(up.seen(path)), 2, "GET %s twice: upstream GETs (one: the answer was cached)"
           % ref)


def test_list_204_has_no_content_length(t):
    """A tags list answered 204 (an empty answer some registries give a repository with no
    tags) passes on as 204 with no Content-Length, which a 204 must not carry (RFC 9110
    8.6), and the connection goes on to the next pipelined answer."""
    def h(r):
        if r.path == "/v2/ns/x/tags/list":
            r.send(204, b"", [])
        else:
            r.send(404, b"")
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()])
    req = b"GET /v2/ns/x/tags/list HTTP/1.1\r\nHost: x\r\n\r\n"
    got = lib.raw_exchange(p.port, req + req.replace(b"HTTP/1.1\r\n",
                                                     b"HTTP/1.1\r\nConnection: close\r\n"))
    heads = [x for x in got.split(b"\r\n\r\n") if x.startswith(b"HTTP/1.1")]
    eq(len(heads), 2, "answers to two pipelined GETs: %r" % got)
    for head in heads:
        check(head.startswith(b"HTTP/1.1 204 No Content\r\n"), "status: %r" % head[:40])
        check(b"content-length" not in head.lower(), "a 204 with a Content-Length: %r" % head)


def test_101_is_no_redirect(t):
    """A 101 nobody asked for (with a byte after its head, which curl takes as a body): no
    final answer came. It is not a redirect to follow: a CDN answering so was fetched again
    at its own Location up to the redirect limit, and the client told "too many redirects"
    or "redirect to a malformed location". One request each, and a 502 naming the 101."""
    m, md, layer, ld, cfg, cd = rawup.image()

    def h(r):
        if r.path == "/v2/ns/x/blobs/" + ld:
            r.send(307, b"", [("Location", "/cdn/" + ld)])
        elif r.path.startswith("/cdn/") or r.path == "/v2/ns/x/manifests/v1":
            r.send(101, b"x", [("Upgrade", "h2c")])
        elif r.path == "/v2/ns/y/manifests/v1":  # past what a redirect's body may be
            r.send(101, b"x" * 100000, [("Upgrade", "h2c")])
        else:
            r.send(404, b"")
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()])
    for path, seen in (("/v2/ns/x/blobs/" + ld, "/cdn/"),
                       ("/v2/ns/x/manifests/v1", "/v2/ns/x/manifests/"),
                       ("/v2/ns/y/manifests/v1", "/v2/ns/y/manifests/")):
        r = p.get(path, headers={"Accept": lib.ACCEPT_ALL})
        eq(r.status, 502, "GET %s answered 101: %r" % (path, r.body))
        d = _body_json(r)["errors"][0]["detail"]
        eq((d.get("upstream_status"), "101" in d.get("error", "")), (101, True),
           "GET %s: the detail names the 101 (%r)" % (path, d))
        eq(len(up.seen(seen)), 1, "GET %s: requests to %s" % (path, seen))
    # Answers, not transport failures: an unsolicited 101 must not look like an outage.
    m = p.metrics()
    eq([m.get(("regproxy_upstream_requests_total",
               frozenset({"registry": "raw.test", "status": c}.items()))) for c in ("1xx", "other")],
       [3.0, 0.0], "upstream requests counted as 1xx and as other (no answer)")


def test_manifest_without_media_type_not_relabelled(t):
    """An OCI image manifest whose bytes have no mediaType field (it is optional in OCI),
    cached from one registry, then served by another (or another repository) under an
    index's Content-Type: the cache took the second label for the bytes, and the first
    registry's clients then got their image manifest as an index (their pulls fail). With no
    mediaType, the bytes' shape names the type that is cached and answered; likewise an
    index without it, served by the other registry as an image manifest."""
    m, md, layer, ld, cfg, cd = rawup.image()
    doc = json.loads(m)
    del doc["mediaType"]
    m = json.dumps(doc).encode()
    md = rawup.sha256(m)
    idx = json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": MT, "digest": md, "size": len(m),
         "platform": {"architecture": "amd64", "os": "linux"}}]}).encode()
    xd = rawup.sha256(idx)
    # (tag, bytes, digest, the type a.test labels them with, the one b.test does)
    cases = (("v1", m, md, MT, OCI_INDEX), ("idx", idx, xd, OCI_INDEX, MT))

    def good(r):
        for tag, body, d, mine, _ in cases:
            if r.path in ("/v2/ns/x/manifests/" + tag, "/v2/ns/x/manifests/" + d):
                r.answer(body, mine, d)
                return False
        r.send(404, b"")
        return False

    def relabel(r):
        for _, body, d, _, theirs in cases:
            if r.path == "/v2/evil/x/manifests/" + d:
                r.answer(body, theirs, d)
                return False
        r.send(404, b"")
        return False
    a = rawup.RawUpstream(t, good)
    b = rawup.RawUpstream(t, relabel)
    p = t.proxy(registries=[a.conf(name="a.test"), b.conf(name="b.test")])
    for tag, body, d, mine, theirs in cases:
        r = p.get("/v2/a.test/ns/x/manifests/" + tag, headers={"Accept": lib.ACCEPT_ALL})
        eq((r.status, r.body, r.header("Content-Type")), (200, body, mine),
           "a.test ns/x:%s first" % tag)
        r = p.get("/v2/b.test/evil/x/manifests/" + d, headers={"Accept": lib.ACCEPT_ALL})
        eq((r.status, r.body), (200, body), "b.test's answer for the same bytes (%s)" % tag)
        eq(len(b.seen("/v2/evil/x/manifests/" + d)), 1, "b.test asked for them (%s)" % tag)
        for ref in (tag, d):
            r = p.get("/v2/a.test/ns/x/manifests/" + ref, headers={"Accept": lib.ACCEPT_ALL})
            eq((r.status, r.body, r.header("Content-Type")), (200, body, mine),
               "a.test ns/x %s after b.test served the bytes as %s" % (ref, theirs))


def test_manifest_short_content_length_not_cached(t):
    """A manifest by tag without Docker-Content-Digest whose Content-Length lies short (the
    first 100 bytes), or is 0: curl reads what the length says, which framing alone takes for
    whole. The piece, not even JSON, was cached, recorded as the tag's manifest and served
    as a 200 HIT until tag_ttl ran out. It is refused: 502 MANIFEST_INVALID, nothing cached."""
    m, md, layer, ld, cfg, cd = rawup.image()

    def h(r):
        if r.path == "/v2/ns/x/manifests/short":
            r.send(200, m, [("Content-Type", MT), ("Content-Length", "100")])
        elif r.path == "/v2/ns/x/manifests/empty":
            r.send(200, b"", [("Content-Type", MT)])
        else:
            r.send(404, b"")
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()])
    for tag in ("short", "empty"):
        path = "/v2/ns/x/manifests/" + tag
        for i in range(2):
            r = p.get(path, headers={"Accept": lib.ACCEPT_ALL})
            codes = [e["code"] for e in (_body_json(r) or {}).get("errors", [])]
            eq((r.status, codes), (502, ["MANIFEST_INVALID"]),
               "GET ns/x:%s (%d): %r" % (tag, i, r.body[:120]))
        eq(len(up.seen(path)), 2, "GET ns/x:%s twice: upstream GETs (one: it was cached)" % tag)


def test_manifest_jansson_cannot_read_served_by_tag(t):
    """Manifests that are valid JSON, or that Go's encoding/json reads (docker-registry
    stores them, skopeo, podman and containerd pull them), but jansson refuses: a string with
    \\u0000 in it, an integer beyond 64 bits, a byte that is not UTF-8 (an annotation written
    in Latin-1). By tag, the proxy took its parse failing for a body cut short and answered
    502 MANIFEST_INVALID, though upstream's Docker-Content-Digest vouched for the bytes: every
    pull of such an image failed through the proxy only (by digest they passed). Now a body
    that matches upstream's digest is whole, and is passed on and cached; one with no digest
    to check it still has to parse."""
    m, md, layer, ld, cfg, cd = rawup.image()
    doc = json.loads(m)
    variants = {
        "nul": json.dumps(dict(doc, annotations={"x": "a\u0000b"})).encode(),
        "bigint": json.dumps(dict(doc, annotations={"x": "y"}, extra=10 ** 30)).encode(),
        "latin1": json.dumps(dict(doc, annotations={"org.opencontainers.image.authors": "@"}))
        .encode().replace(b'"@"', b'"Jos\xe9"'),
    }
    by = {}
    for name, body in variants.items():
        by["/v2/ns/x/manifests/" + name] = body
        by["/v2/ns/x/manifests/" + rawup.sha256(body)] = body
        by["/v2/ns/x/manifests/nodigest-" + name] = body

    def h(r):
        path = r.path.split("?")[0]
        if path in ("/v2/", "/v2"):
            r.send(200, b"{}", [("Content-Type", "application/json")])
        elif path.startswith("/v2/ns/x/manifests/nodigest-") and path in by:
            r.send(200, by[path] if r.method == "GET" else b"", [("Content-Type", MT)])
        elif path in by:
            r.answer(by[path], MT, rawup.sha256(by[path]))
        elif path == "/v2/ns/x/blobs/" + ld:
            r.answer(layer, "application/octet-stream", ld)
        elif path == "/v2/ns/x/blobs/" + cd:
            r.answer(cfg, "application/octet-stream", cd)
        else:
            r.send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}',
                   [("Content-Type", "application/json")])
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()])
    for name, body in variants.items():
        d = rawup.sha256(body)
        for i, want_cache in enumerate(("MISS", "HIT")):
            r = p.get("/v2/ns/x/manifests/" + name, headers={"Accept": lib.ACCEPT_ALL})
            eq((r.status, r.body == body, r.header("Docker-Content-Digest"),
                r.header("X-Regproxy-Cache")), (200, True, d, want_cache),
               "GET ns/x:%s (%d), body %r" % (name, i, r.body[:160]))
        out = os.path.join(t.tmp, "pull-" + name)
        t.s.skopeo(["copy", "-q", "--src-tls-verify=false", "--src-no-creds",
                    "docker://%s/ns/x:%s" % (p.hostport, name), "dir:" + out])
        with open(os.path.join(out, "manifest.json"), "rb") as f:
            eq(rawup.sha256(f.read()), d, "manifest skopeo pulled of ns/x:%s" % name)
        for bd in (ld, cd):
            eq(lib.sha256_file(os.path.join(out, bd.split(":", 1)[1])), bd,
               "blob %s skopeo pulled of ns/x:%s" % (bd, name))
        # No digest to vouch for the bytes: unreadable, they may be a body cut short.
        r = p.get("/v2/ns/x/manifests/nodigest-" + name, headers={"Accept": lib.ACCEPT_ALL})
        eq(r.status, 502, "GET ns/x:nodigest-%s (no Docker-Content-Digest)" % name)


def test_token_answer_too_big_is_named(t):
    """A token realm whose answer is past the 64 KiB the proxy keeps of one (chunked, or
    with its Content-Length): the client's error and the log say so, not curl's "Failed
    writing received data to disk/application", which sent an admin to look at the disk."""
    tok = json.dumps({"token": "x" * 70000, "expires_in": 600}).encode()

    def h(r):
        path = r.path.split("?")[0]
        if path.startswith("/token"):
            if path == "/token/chunked":
                r.raw(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                      b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" +
                      b"%x\r\n" % len(tok) + tok + b"\r\n0\r\n\r\n")
            else:
                r.send(200, tok, [("Content-Type", "application/json")])
            return False
        if not (r.h("authorization") or "").startswith("Bearer "):
            realm = "%s/token%s" % (up.url, "/chunked" if "/chunked/" in r.path else "")
            r.send(401, b'{"errors":[]}', [("Content-Type", "application/json"),
                   ("WWW-Authenticate", 'Bearer realm="%s",service="svc"' % realm)])
            return False
        r.send(404, b"")
        return False
    up = rawup.RawUpstream(t, h)
    for how in ("sized", "chunked"):
        realm = "%s/token%s" % (up.url, "/chunked" if how == "chunked" else "")
        p = t.proxy(registries=[up.conf(token_realms=realm)])
        r = p.get("/v2/%s/x/manifests/v1" % ("chunked" if how == "chunked" else "ns"),
                  headers={"Accept": lib.ACCEPT_ALL})
        eq(r.status, 503, "%s: status (%r)" % (how, r.body))
        err = _body_json(r)["errors"][0]["detail"]["error"]
        eq(err, "the token realm's answer exceeds 64 KiB", "%s: the error" % how)
        lib.wait_until(lambda: "the token realm's answer exceeds 64 KiB" in p.log_text(), 10,
                       "%s: the log names it" % how)


def test_conflicting_content_lengths_refused(t):
    """An answer with two Content-Length lines of different values: which one frames the
    body is anybody's guess (curl read by the last, the proxy announced the first), and a
    proxy must treat it as an unrecoverable error (RFC 9112 6.3): a 502 naming it, nothing
    cached. The same value twice is only redundant, and served."""
    m, md, layer, ld, cfg, cd = rawup.image()

    def h(r):
        first = "10" if r.path == "/v2/ns/x/manifests/v1" else str(len(m))
        if r.path in ("/v2/ns/x/manifests/v1", "/v2/ns/y/manifests/v1"):
            r.raw(("HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %s\r\n"
                   "Content-Length: %d\r\nConnection: close\r\n\r\n" % (MT, first, len(m)))
                  .encode() + (m if r.method == "GET" else b""))
        else:
            r.send(404, b"")
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()])
    for i in range(2):
        r = p.get("/v2/ns/x/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
        eq(r.status, 502, "answer %d with Content-Length 10 and %d (%r)" % (i, len(m), r.body))
        eq(_body_json(r)["errors"][0]["detail"]["error"],
           "the answer has Content-Length lines of different values", "answer %d: error" % i)
    eq(len(up.seen("/v2/ns/x/manifests/v1")), 2, "each GET asked upstream: nothing cached")
    r = p.get("/v2/ns/y/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, r.body), (200, m), "the same Content-Length twice")


def test_token_from_a_realm_left_while_it_was_asked_is_not_sent(t):
    """The registry moves to another realm while a token request to the old one is under
    way (its challenge, answering a request with a token of the old realm, names the new
    one): the old realm's late answer is for an account the registry no longer trusts.
    The request that waited for it must not be sent with it (a fresh token's 401 is final,
    so its client got the 401), but ask the new realm; nor may the answer be cached for
    the next request."""
    import threading
    m, md, layer, ld, cfg, cd = rawup.image()
    st = {"realm": "/token-a", "issued": 0}
    slow = threading.Event()
    t.defer(slow.set)
    asked_slow = threading.Event()

    def h(r):
        path = r.path.split("?")[0]
        if path in ("/token-a", "/token-b"):
            st["issued"] += 1
            if path == "/token-a" and "ns%2Fslow" in r.path:
                asked_slow.set()
                slow.wait(60)
            tok = "%s-%d" % (path[len("/token-"):], st["issued"])
            r.send(200, json.dumps({"token": tok, "expires_in": 3600}).encode(),
                   [("Content-Type", "application/json")])
            return False
        auth = r.h("authorization") or ""
        if auth.startswith("Bearer " + st["realm"][len("/token-"):] + "-"):
            r.send(200, m, [("Content-Type", MT), ("Docker-Content-Digest", md)])
        else:
            r.send(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"no","detail":null}]}',
                   [("Content-Type", "application/json"),
                    ("WWW-Authenticate", 'Bearer realm="%s%s",service="svc"'
                     % (up.url, st["realm"]))])
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()])
    r = p.get("/v2/ns/fast/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, r.body), (200, m), "manifest of ns/fast with a token of realm a")
    got = []
    th = threading.Thread(target=lambda: got.append(
        p.get("/v2/ns/slow/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})))
    th.start()
    check(asked_slow.wait(30), "the proxy never asked realm a for ns/slow")
    st["realm"] = "/token-b"  # the registry moves: tokens of realm a are refused now
    r = p.get("/v2/ns/fast/manifests/v2", headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, r.body), (200, m), "manifest of ns/fast once the registry names realm b")
    slow.set()  # realm a's token for ns/slow arrives, after the move
    th.join(60)
    check(got, "the client of ns/slow got no answer")
    eq((got[0].status, got[0].body), (200, m),
       "manifest of ns/slow, whose token request to realm a outlived the move (requests "
       "seen: %r)" % [(x[2], x[3].get("authorization")) for x in up.seen()])
    mark = len(up.seen())
    r = p.get("/v2/ns/slow/manifests/v3", headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, r.body), (200, m), "manifest of ns/slow again")
    sent_a = [x for x in up.seen()[mark:] if (x[3].get("authorization") or "").startswith(
        "Bearer a-")]
    eq(sent_a, [], "requests sent with a token of realm a, after the move")
