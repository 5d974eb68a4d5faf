# SPDX-License-Identifier: Apache-2.0
"""Hostile or malformed request targets get the right 4xx with a registry JSON error body,
and none of them opens a connection to any upstream: the default registry's url points at
a canary listener that counts connections, and the docker-registry access logs must not
grow."""
import re

import lib
from lib import check, eq

UPPER = "sha256:" + "ABCDEF0123456789" * 4
CASES = [
    # (target, status, code)
    ("/v2/..%2f..%2fetc/manifests/x", 400, "NAME_INVALID"),
    ("/v2/%2e%2e/manifests/latest", 400, "NAME_INVALID"),
    ("/v2/a/../b/manifests/latest", 400, "NAME_INVALID"),
    ("/v2/a/./b/manifests/latest", 400, "NAME_INVALID"),
    ("/v2/a%2fb/manifests/latest", 400, "NAME_INVALID"),
    ("/v2/a//b/manifests/latest", 400, "NAME_INVALID"),
    ("/v2/ns/multi/blobs/" + UPPER, 400, "DIGEST_INVALID"),
    ("/v2/ns/multi/blobs/sha256:abc123", 400, "DIGEST_INVALID"),
    ("/v2/ns/multi/blobs/md5:" + "0123456789abcdef" * 2, 400, "DIGEST_INVALID"),
    ("/v2/ns/multi/blobs/sha256:" + "g" * 64, 400, "DIGEST_INVALID"),
    ("/v2/" + "a" * 300 + "/manifests/latest", 400, "NAME_INVALID"),
    ("/v2/ns/multi/manifests/latest?ns=evil.example", 404, "NAME_UNKNOWN"),
    ("/v2/ns/multi/manifests/latest?ns=169.254.169.254", 404, "NAME_UNKNOWN"),
    ("/v2/ns/multi/manifests/latest?ns=127.0.0.1:1", 404, "NAME_UNKNOWN"),
    ("/v2/evil.example/foo/manifests/latest", 404, "NAME_UNKNOWN"),
    ("/v2/169.254.169.254/foo/manifests/latest", 404, "NAME_UNKNOWN"),
    ("/v2/localhost:5000/foo/manifests/latest", 404, "NAME_UNKNOWN"),
    ("/v2/_catalog", 404, "UNSUPPORTED"),
    ("/v2/ns/multi/manifests/-badtag", 400, "TAG_INVALID"),
    ("/v2/ns/multi/tags/list?n=abc", 400, "PAGINATION_NUMBER_INVALID"),
    ("/v2/NS/Multi/manifests/latest", 400, "NAME_INVALID"),
]


def test_bad_targets_rejected_without_upstream_contact(t):
    s = t.s
    canary = t.canary()
    regs = [{"name": "registry.canary.test", "url": canary.url, "ca_file": s.ca["ca.crt"],
             "user": "canary", "password": "canary-pw"},
            s.token_registry.conf(), s.basic_registry.conf(), s.anon_registry.conf()]
    p = t.proxy(registries=regs)
    ups = [s.token_registry, s.basic_registry, s.anon_registry]
    marks = [u.mark() for u in ups]
    c0 = canary.count
    problems = []
    for target, status, code in CASES:
        for method in ("GET", "HEAD"):
            try:
                st, h, body = p.raw(method, target)
            except Exception as e:  # noqa: BLE001
                problems.append("%s %s: %r" % (method, target[:80], e))
                continue
            if st != status:
                problems.append("%s %s: expected %d %s, got %d %r"
                                % (method, target[:80], status, code, st, body[:200]))
                continue
            if method == "HEAD":
                if body:
                    problems.append("HEAD %s: response has a body %r" % (target[:80], body[:80]))
                continue
            r = lib.Resp(st, "", list(h.items()), body)
            codes = r.error_codes()
            if codes != [code]:
                problems.append("GET %s: expected error code %s, got body %r"
                                % (target[:80], code, body[:200]))
            if not h.get("content-type", "").startswith("application/json"):
                problems.append("GET %s: error Content-Type %r" % (target[:80],
                                                                   h.get("content-type")))
    check(not problems, lambda: "%d problems:\n" % len(problems) + "\n".join(problems))
    eq(canary.count - c0, 0, "connections to the canary (default registry) upstream")
    for u, m in zip(ups, marks):
        eq(u.since(m), [], "requests that reached %s" % u.kind)


def test_oversized_and_garbage_requests(t):
    s = t.s
    canary = t.canary()
    regs = [{"name": "registry.canary.test", "url": canary.url, "ca_file": s.ca["ca.crt"]}]
    p = t.proxy(registries=regs)
    st, _, _ = p.raw("GET", "/v2/" + "a/" * 1200 + "manifests/latest")
    check(st in (400, 414), "target longer than 2048 bytes: expected 414 (or 400), got %d" % st)
    st, _, _ = p.raw("GET", "/v2/ns/multi/manifests/latest",
                     {"X-Big": "x" * 100000})
    check(400 <= st <= 499, "100 kB header: expected a 4xx, got %d" % st)
    out = lib.raw_request("127.0.0.1", p.port, b"\x16\x03\x01\x00\xa5garbage\r\n\r\n", 10)
    check(out == b"" or re.match(rb"^HTTP/1\.[01] 4\d\d ", out),
          "garbage request: expected a 4xx or a closed connection, got %r" % out[:80])
    for method in ("PUT", "POST", "DELETE", "PATCH"):
        st, _, body = p.raw(method, "/v2/ns/multi/manifests/latest")
        eq(st, 405, "%s without a body (%r)" % (method, body[:100]))
    # A push, body and all, is told 405 as a read-only registry tells it, and the body is
    # never read as a request.
    man = b'{"schemaVersion":2}'
    for req in (b"PUT /v2/ns/multi/manifests/pushed HTTP/1.1\r\nHost: x\r\nContent-Type: "
                b"application/vnd.oci.image.manifest.v1+json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(man), man),
                b"PATCH /v2/ns/multi/blobs/uploads/u HTTP/1.1\r\nHost: x\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n4\r\nGET \r\n0\r\n\r\n",
                b"PUT /v2/ns/multi/manifests/pushed HTTP/1.1\r\nHost: x\r\nExpect: 100-continue"
                b"\r\nContent-Length: 10\r\n\r\n"):
        out = lib.raw_exchange(p.port, req)
        check(re.match(rb"^HTTP/1\.1 405 ", out) and b"\r\nAllow: GET, HEAD\r\n" in out
              and out.count(b"HTTP/1.1 ") == 1,
              "%r: expected one 405 with Allow, got %r" % (req[:40], out[:300]))
    # absolute-form (RFC 9112 3.2.2): the path is served; the authority is never dialed.
    out = lib.raw_exchange(p.port, b"GET http://169.254.169.254:80/v2/ HTTP/1.1\r\nHost: x\r\n"
                           b"Connection: close\r\n\r\n")
    check(out.startswith(b"HTTP/1.1 200 "), "absolute-form /v2/: got %r" % out[:200])
    eq(p.get("/v2/").status, 200, "the proxy still answers after all that")
    eq(canary.count, 0, "connections to the canary upstream")
