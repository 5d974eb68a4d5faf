# SPDX-License-Identifier: Apache-2.0
"""One access-log line per request with method, path, status, bytes, ms, registry, cache,
upstream; a blob's line is written once the client has it (its ms is the delivery's; a
client gone midway is logged with aborted=client and the bytes it got); and no secret
(service-account password, Basic credentials, bearer token) ever appears in the proxy's
output."""
import base64
import re
import socket
import time

import lib
from lib import check, eq


def test_one_line_per_request(t):
    s = t.s
    reg = s.token_registry
    p = t.proxy()
    time.sleep(0.3)
    mark = len(p.access())
    layer = lib.image_manifests(reg, "ns/multi:v1")[0]["layers"][0]
    reqs = [("GET", "/v2/", {}),
            ("GET", "/v2/ns/multi/manifests/v1", {"Accept": lib.ACCEPT_ALL}),
            ("HEAD", "/v2/ns/multi/manifests/v1", {"Accept": lib.ACCEPT_ALL}),
            ("HEAD", "/v2/ns/multi/blobs/" + layer["digest"], {}),
            ("GET", "/v2/ns/multi/blobs/" + layer["digest"], {}),
            ("GET", "/v2/ns/multi/blobs/" + layer["digest"], {"Range": "bytes=0-9"}),
            ("GET", "/v2/ns/multi/manifests/nosuchtag", {"Accept": lib.ACCEPT_ALL}),
            ("GET", "/v2/registry.basic.test/ns/multi/manifests/v1", {"Accept": lib.ACCEPT_ALL}),
            ("GET", "/v2/%2e%2e/manifests/latest", {}),
            ("GET", "/v2/evil.example/x/manifests/latest", {}),
            ("PUT", "/v2/ns/multi/manifests/v1", {})]
    got = []
    for method, path, h in reqs:
        st, hd, body = p.raw(method, path, h)
        got.append((method, path, st, len(body)))
    lines = lib.wait_until(lambda: len(p.access()) - mark >= len(reqs) and p.access()[mark:],
                           10, "%d access lines" % len(reqs))
    time.sleep(0.5)
    lines = p.access()[mark:]
    eq(len(lines), len(reqs), "access lines for %d requests (lines: %r)" % (len(reqs), lines))
    problems = []
    for (method, path, st, blen), line in zip(got, lines):
        for k in ("method", "path", "status", "bytes", "ms"):
            if k not in line:
                problems.append("%s %s: access line lacks %s: %r" % (method, path, k, line))
        if line.get("method") != method or line.get("path", "").split("?")[0] != path:
            problems.append("line for %s %s is %r" % (method, path, line))
        if line.get("status") != str(st):
            problems.append("%s %s: client got %d, log says %r" % (method, path, st,
                                                                   line.get("status")))
        if not re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$", line["time"]):
            problems.append("timestamp %r is not RFC 3339 UTC" % line["time"])
        if "/ns/multi/" in path:
            for k in ("registry", "cache", "upstream"):
                if k not in line:
                    problems.append("%s %s: access line lacks %s: %r" % (method, path, k, line))
        try:
            if method != "HEAD" and int(line.get("bytes", -1)) < blen:
                problems.append("%s %s: %d body bytes sent, log says bytes=%s"
                                % (method, path, blen, line.get("bytes")))
        except ValueError:
            problems.append("bytes=%r is not a number" % line.get("bytes"))
    eq(lines[1].get("registry"), "registry.token.test", "registry of the default route")
    eq(lines[7].get("registry"), "registry.basic.test", "registry of the prefix route")
    # Refused by routing (400, 404) or at the connection (405): never routed, no cache.
    eq([(lines[i].get("status"), lines[i].get("cache")) for i in (8, 9, 10)],
       [(str(got[i][2]), "-") for i in (8, 9, 10)], "status and cache of refused requests")
    eq(got[10][2], 405, "PUT")
    check(not problems, "\n".join(problems))


def _blob_line(p, mark, digest, what):
    lines = lib.wait_until(lambda: [x for x in p.access()[mark:]
                                    if x.get("path", "").endswith(digest)], 10, what)
    eq(len(lines), 1, "%s: access lines %r" % (what, lines))
    return lines[0]


def test_blob_line_written_when_delivered(t):
    reg = t.s.token_registry
    big = max(lib.image_manifests(reg, "ns/large:v1")[0]["layers"], key=lambda x: x["size"])
    path = "/v2/ns/large/blobs/" + big["digest"]
    p = t.proxy()
    r = lib.stream_get(p.port, path)  # fills the cache
    eq((r.status, r.complete, r.digest), (200, True, big["digest"]), "the cold GET")
    lib.wait_until(lambda: lib.cache_files(p.cache_dir, "blobs"), 10, "the blob in the cache")
    for how in ("slow", "cut"):
        mark = len(p.access())
        hits = p.metrics()[("regproxy_cache_requests_total", frozenset({("result", "hit")}))]
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        c.settimeout(30)
        c.connect(("127.0.0.1", p.port))
        c.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                   % (path, p.hostport)).encode())
        got, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < 1.5:  # about 4 MB/s for 1.5 s
            b = c.recv(65536)
            check(b, "connection closed after %d bytes" % got)
            got += len(b)
            time.sleep(0.015)
        check(not [x for x in p.access()[mark:] if x.get("path", "").endswith(big["digest"])],
              "the hit's access line was written before the client had the blob")
        if how == "cut":
            c.close()
            line = _blob_line(p, mark, big["digest"], "the line of a client gone midway")
            eq((line.get("status"), line.get("cache"), line.get("aborted")),
               ("200", "HIT", "client"), "access line of a hit cut short: %r" % line)
            check(0 < int(line["bytes"]) < big["size"],
                  "a client that left after %d bytes is logged with bytes=%s (of %d)"
                  % (got, line["bytes"], big["size"]))
            eq(p.metrics()[("regproxy_cache_requests_total", frozenset({("result", "hit")}))],
               hits + 1, "cache hits counted after a hit cut short")
            continue
        while True:  # the rest, up to the close that Connection: close asked for
            b = c.recv(1 << 20)
            if not b:
                break
            got += len(b)
        c.close()
        check(got > big["size"], "%d bytes (head and body) for a %d byte blob"
              % (got, big["size"]))
        line = _blob_line(p, mark, big["digest"], "the line of a slowly read hit")
        eq((line.get("status"), line.get("cache"), line.get("aborted")), ("200", "HIT", None),
           "access line of a slowly read hit: %r" % line)
        check(int(line["ms"]) >= 1400, "a hit delivered over 1.5 s is logged with ms=%s"
              % line["ms"])
        eq(int(line["bytes"]), big["size"], "bytes of the slowly read hit")


def test_no_secrets_in_logs(t):
    s = t.s
    iss = s.issuer
    p = t.proxy()
    t.pull(p, "ns/multi:v1")
    t.pull(p, "registry.basic.test/ns/multi:v1")
    r = p.get("/v2/registry.basic.test/ns/nosuch/manifests/v1")  # an upstream error, logged
    check(r.status >= 400, "unknown repository status %d" % r.status)
    text = p.log_text()
    check(text.strip(), "the proxy wrote nothing to its log")
    secrets = {"service-account password": s.sa_password,
               "alice's password": s.alice_password}
    for u, pw in ((lib.SA_USER, s.sa_password), ("alice", s.alice_password)):
        secrets["Basic credentials of %s" % u] = base64.b64encode(
            ("%s:%s" % (u, pw)).encode()).decode()
    tokens = iss.tokens()
    check(tokens, "the issuer issued no token: the pull did not exercise the token flow")
    for i, tok in enumerate(tokens):
        secrets["token %d" % i] = tok
        secrets["token %d signature" % i] = tok.rsplit(".", 1)[1]
    leaked = [k for k, v in secrets.items() if v and v in text]
    check(not leaked, "secrets in the proxy's log: %s" % ", ".join(leaked))
    check("Bearer ey" not in text, "a bearer token in the proxy's log")


def _logfmt(line):
    """A text log line parsed as go-logfmt (Loki's `| logfmt`) decodes it: space-separated
    key[=value]; a key is bytes above ' ' other than '=' and '"'; a bare value holds
    neither '=' nor '"'; a quoted value runs to the first unescaped '"'. Raises ValueError
    where such a parser stops."""
    out, i, n = {}, 0, len(line)
    while i < n:
        if line[i] == " ":
            i += 1
            continue
        j = i
        while j < n and line[j] > " " and line[j] not in '="':
            j += 1
        if j == i:
            raise ValueError("unexpected %r at %d" % (line[i], i))
        key = line[i:j]
        if j == n or line[j] == " ":
            out[key], i = None, j
            continue
        if line[j] != "=":
            raise ValueError("unexpected %r after key %r" % (line[j], key))
        j += 1
        if j < n and line[j] == '"':
            v, j = [], j + 1
            while j < n and line[j] != '"':
                if line[j] == "\\" and j + 1 < n:
                    j += 1
                v.append(line[j])
                j += 1
            if j == n:
                raise ValueError("unterminated quoted value of %r" % key)
            out[key], i = "".join(v), j + 1
            continue
        k = j
        while k < n and line[k] > " ":
            if line[k] in '="':
                raise ValueError("unexpected %r in the value of %r" % (line[k], key))
            k += 1
        out[key], i = line[j:k], k
    return out


def test_text_line_is_logfmt(t):
    """Each text access line reads as logfmt whatever the client's target holds: a target
    with '=' (a query: tags/list?n=, referrers?artifactType=) or '"', which logfmt parsers
    refuse in a bare value (dropping the line, status and peer with it), is written quoted,
    and parses back to what was sent."""
    p = t.proxy()
    targets = ["/v2/ns/multi/tags/list?n=1&last=a",
               '/v2/a"b\\c/manifests/x', "/v2/ns/multi/manifests/v1?x=%22y%22"]

    def access():
        return [x for x in p.log_text().splitlines() if " info access " in x]

    mark = len(lib.wait_until(access, 10, "the access line of the harness's ping"))
    sent = []
    for target in targets:
        out = lib.raw_exchange(p.port, ("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                        "\r\n" % target).encode())
        sent.append((target, out.split(b" ", 2)[1].decode()))
    lines = lib.wait_until(lambda: len(access()) >= mark + len(targets) and access()[mark:],
                           10, "the access lines of %d requests" % len(targets))
    problems = []
    for (target, status), line in zip(sent, lines):
        try:
            f = _logfmt(line)
        except ValueError as e:
            problems.append("%s: not logfmt (%s): %s" % (target, e, line))
            continue
        if (f.get("path"), f.get("status")) != (target, status) or not f.get("peer"):
            problems.append("%s (status %s) read back as path=%r status=%r peer=%r: %s"
                            % (target, status, f.get("path"), f.get("status"), f.get("peer"),
                               line))
    check(not problems, "\n".join(problems))
