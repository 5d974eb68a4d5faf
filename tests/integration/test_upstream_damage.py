# SPDX-License-Identifier: Apache-2.0
"""Upstream bytes that do not match their digest (a flipped byte, a short body, a
connection cut mid-body) never become a cache entry and never reach a client as a
complete, successful response; once upstream is healthy again the right bytes are served.
The fake registry's global mode is switched for these tests and restored afterwards."""
import json
import socket

import lib
from lib import check, eq


def _get(p, path, timeout=60):
    """(status, announced length, received bytes, complete?) of a GET on a fresh connection.
    complete means the announced Content-Length arrived in full."""
    c = socket.create_connection(("127.0.0.1", p.port), timeout=timeout)
    try:
        c.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                   % (path, p.hostport)).encode())
        buf = b""
        while True:
            try:
                b = c.recv(1 << 16)
            except (ConnectionResetError, socket.timeout):
                break
            if not b:
                break
            buf += b
    finally:
        c.close()
    head, sep, body = buf.partition(b"\r\n\r\n")
    if not sep:
        return 0, None, b"", False
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    h = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    if h.get("transfer-encoding", "").lower() == "chunked":
        try:
            return status, None, lib.dechunk(body), True
        except (ValueError, IndexError):
            return status, None, body, False
    n = int(h["content-length"]) if "content-length" in h else None
    return status, n, body, n is not None and len(body) >= n


def _layer(s):
    r = s.fakereg.client().manifest("ns/multi", "v1")
    return json.loads(r.body)["layers"][2]  # 512 KiB of random bytes, gzip'd


def _damaged_then_healthy(t, mode):
    s = t.s
    fr = s.fakereg
    layer = _layer(s)
    p = t.proxy(registries=[fr.conf()])
    path = "/v2/ns/multi/blobs/" + layer["digest"]
    fr.set_mode(mode)
    t.defer(lambda: fr.set_mode("ok"))
    for attempt in (1, 2):
        st, n, body, complete = _get(p, path)
        bad = st == 200 and complete and lib.sha256(body[:layer["size"]]) != layer["digest"]
        check(not bad, "attempt %d with upstream mode %s: a complete 200 with bytes that do "
              "not match %s" % (attempt, mode, layer["digest"]))
        check(not (st == 200 and complete and lib.sha256(body) == layer["digest"]),
              "attempt %d with upstream mode %s: the right bytes came back, so the damage "
              "did not reach the proxy (fixture problem?)" % (attempt, mode))
    fr.set_mode("ok")
    _, m_cdn = fr.mark()
    st, n, body, complete = _get(p, path)
    eq((st, complete, lib.sha256(body)), (200, True, layer["digest"]),
       "GET after upstream recovered from mode %s" % mode)
    check(fr.cdn_requests(m_cdn), "the good copy came from somewhere other than upstream: "
          "a damaged copy must not have been cached")
    st, n, body, complete = _get(p, path)
    eq((st, lib.sha256(body)), (200, layer["digest"]), "GET once the good copy is cached")


def test_corrupt_blob_not_served_or_cached(t):
    _damaged_then_healthy(t, "corrupt")


def test_truncated_blob_not_served_or_cached(t):
    _damaged_then_healthy(t, "truncate")


def test_cut_connection_not_served_or_cached(t):
    _damaged_then_healthy(t, "cut")


def test_corrupt_pull_fails_cleanly(t):
    s = t.s
    fr = s.fakereg
    p = t.proxy(registries=[fr.conf()])
    fr.set_mode("corrupt")
    t.defer(lambda: fr.set_mode("ok"))
    out = t.tmp + "/corrupt-pull"
    r = s.skopeo(["copy", "-q", "--src-tls-verify=false", "--src-no-creds",
                  "--dest-oci-accept-uncompressed-layers",
                  "docker://%s/ns/multi:v1" % p.hostport, "oci:%s:v1" % out], check_rc=False,
                 timeout=300)
    check(r.returncode != 0, "skopeo pulled an image whose upstream blobs are corrupt")
    fr.set_mode("ok")
    _, tags = t.pull(p, "ns/multi:v1")
    eq(tags["v1"], s.images["multi"]["tags"]["v1"], "pull after upstream recovered")


def _manifest_get(p):
    return p.get("/v2/ns/multi/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})


def test_cut_manifest_by_tag_not_served_or_cached(t):
    """A manifest by tag whose body ends where upstream closed the connection (no
    Content-Length, not chunked) may be cut short: with upstream's Docker-Content-Digest it
    must match it, without one it is refused. It used to be cached, tagged and served as a
    complete 200 until tag_ttl ran out."""
    s = t.s
    fr = s.fakereg
    want = s.images["multi"]["tags"]["v1"]
    p = t.proxy(registries=[fr.conf()])
    t.defer(lambda: fr.set_mode("ok"))
    for mode in ("manifest-cut", "manifest-cut-nodigest"):
        fr.set_mode(mode)
        r = _manifest_get(p)
        eq(r.status, 502, "manifest by tag cut short (%s): %s" % (mode, r.body[:300]))
        eq(json.loads(r.body)["errors"][0]["code"], "MANIFEST_INVALID", "error code (%s)" % mode)
    fr.set_mode("ok")
    r = _manifest_get(p)
    eq((r.status, lib.sha256(r.body), r.header("X-Regproxy-Cache")), (200, want, "MISS"),
       "manifest once upstream is whole again (nothing was cached)")


def test_close_delimited_manifest_with_digest_accepted(t):
    """A manifest whose end is the connection's is taken when it matches upstream's
    Docker-Content-Digest, and cached."""
    s = t.s
    fr = s.fakereg
    want = s.images["multi"]["tags"]["v1"]
    p = t.proxy(registries=[fr.conf()])
    fr.set_mode("manifest-close")
    t.defer(lambda: fr.set_mode("ok"))
    r = _manifest_get(p)
    eq((r.status, lib.sha256(r.body), r.header("Docker-Content-Digest")), (200, want, want),
       "close-delimited manifest with its digest")
    r = _manifest_get(p)
    eq((r.status, lib.sha256(r.body), r.header("X-Regproxy-Cache")), (200, want, "HIT"),
       "the manifest again, from the cache")


def test_blob_other_success_not_passed_through(t):
    """A blob GET answered with a 2xx other than 200 (or a 206 to a Range) is not the blob:
    its bytes used to reach the client under the blob's Docker-Content-Digest, unhashed."""
    s = t.s
    fr = s.fakereg
    layer = _layer(s)
    p = t.proxy(registries=[fr.conf()])
    fr.set_mode("blob-203")
    t.defer(lambda: fr.set_mode("ok"))
    path = "/v2/ns/multi/blobs/" + layer["digest"]
    r = p.get(path, headers={"Range": "bytes=100-"})
    eq(r.status, 502, "a 203 to an uncached Range GET: %s" % r.body[:300])
    check(b"EEEE" not in r.body, "the 203's bytes reached the client")
    st, n, body, complete = _get(p, path)
    check(not (st == 200 and complete), "a 203 to a whole-blob GET reached the client as a 200")
    check(b"EEEE" not in body, "the 203's bytes reached the client")
    fr.set_mode("ok")
    st, n, body, complete = _get(p, path)
    eq((st, complete, lib.sha256(body)), (200, True, layer["digest"]), "GET once upstream is ok")


def _b64url(b):
    import base64
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def test_schema1_payload_must_be_the_manifest_served(t):
    """A signed schema 1 manifest is named by its payload's digest, and its JWS says which
    bytes that payload is: the manifest's first formatLength bytes, then formatTail. The
    proxy took that word as it came: an upstream that sends any manifest it likes, with a
    "signature" whose formatLength is 0 and whose formatTail is another manifest's whole
    bytes, had it passed on under the other manifest's digest, also to a GET by that digest
    (a client that reads the fields it was sent rather than the payload would use a manifest
    it never pinned). The payload must be the manifest served, less its signatures: by
    digest such bytes are refused, by tag they are named by their own hash."""
    import rawup
    schema1 = "application/vnd.docker.distribution.manifest.v1+prettyjws"
    genuine = json.dumps({"schemaVersion": 1, "name": "ns/x", "tag": "v1",
                          "architecture": "amd64", "fsLayers": [{"blobSum": "sha256:" + "1" * 64}],
                          "history": [{"v1Compatibility": "{}"}]}, indent=3).encode()
    d = lib.sha256(genuine)
    evil = json.dumps({"schemaVersion": 1, "name": "ns/x", "tag": "v1", "architecture": "amd64",
                       "fsLayers": [{"blobSum": "sha256:" + "2" * 64}],
                       "history": [{"v1Compatibility": "{}"}],
                       "signatures": [{"header": {"alg": "ES256"}, "signature": "AAAA",
                                       "protected": _b64url(json.dumps(
                                           {"formatLength": 0,
                                            "formatTail": _b64url(genuine)}).encode())}]},
                      indent=3).encode()

    def h(r):
        if r.path.startswith("/v2/ns/x/manifests/"):
            r.answer(evil, schema1, d)
        else:
            r.send(404, b"")
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()])
    r = p.get("/v2/ns/x/manifests/" + d, headers={"Accept": schema1})
    eq(r.status, 502, "schema 1 manifest whose payload is another's, by that one's digest: "
       "%s %s" % (r.header("Docker-Content-Digest"), r.body[:200]))
    eq(json.loads(r.body)["errors"][0]["code"], "MANIFEST_INVALID", "error code")
    r = p.get("/v2/ns/x/manifests/v1", headers={"Accept": schema1})
    eq((r.status, r.header("Docker-Content-Digest"), r.header("ETag")),
       (200, lib.sha256(evil), '"%s"' % lib.sha256(evil)),
       "the same by tag: named by its own bytes, not the other manifest's digest %s" % d)
