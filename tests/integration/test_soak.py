# SPDX-License-Identifier: Apache-2.0
"""Soak: many clients at once doing everything a registry client does (whole blobs, ranges,
aborted downloads, manifests by tag and digest with assorted Accept lists, HEADs, tag lists,
pipelined requests, garbage) on a plain and a TLS listener, and logins right, wrong and
missing on a listener with client accounts, while the cache evicts under a small max_size,
tags expire every second, the configuration is reloaded, the upstream goes away and comes
back, the proxy is killed (SIGKILL) and restarted, a second registry serves the same blobs
and manifests damaged, and the scrub re-reads the cache every second.
What must hold: every 200 or 206 the proxy finishes carries exactly the bytes its digest or
range names, no wrong or missing login gets content, the cache holds only verified content,
the scrub removes nothing (nothing damaged reached the disk), and the sanitizer build reports nothing (checked when the proxy stops). SOAK_SECONDS sets the length (default 30), SOAK_SEED the
random seed (printed)."""
import base64
import json
import os
import random
import secrets
import signal
import socket
import threading
import time

import lib
from lib import check

ACCEPTS = [
    None,
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json, "
    "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json",
    "*/*",
]
REFS = ["ns/multi:v1", "ns/multi-v2s2:v1", "ns/large:v1", "ns/multiarch:v1", "ns/tags:t00"]


def _blobs(shared):
    """{digest: (repo, size)} of every blob of REFS, and {digest: bytes} of the small ones."""
    out, small = {}, {}
    for ref in REFS:
        repo = ref.split(":")[0]
        for m in lib.image_manifests(shared, ref):
            for d in [m["config"]] + m["layers"]:
                out[d["digest"]] = (repo, d["size"])
                if d["size"] < 4 << 20 and d["digest"] not in small:
                    small[d["digest"]] = shared.client().get(
                        "/v2/%s/blobs/%s" % (repo, d["digest"])).body
    return out, small


SECONDS = float(os.environ.get("SOAK_SECONDS", "30"))


def test_soak(t):
    seconds = SECONDS
    seed = int(os.environ.get("SOAK_SEED", str(int(time.time()))))
    print("    soak: %.0f s, seed %d" % (seconds, seed), flush=True)
    # A token-auth registry of the test's own over the shared one's storage, so that it
    # can be stopped: every outage and reload makes the proxy log in again.
    shared = t.s.token_registry
    reg = lib.Registry(t.s, "token", "registry.soak.test", storage=shared.storage,
                       realm=t.s.issuer.realm, dir=os.path.join(t.tmp, "reg-soak"))
    t.defer(reg.stop)
    blobs, small = _blobs(shared)
    _, key, crt = lib.serving_cert(t, "soak-tls")
    # A third listener takes client accounts: a wrong or missing login must never be
    # answered with content, whatever else is going on.
    account = ("node", "soak-" + secrets.token_hex(8))
    htp = lib.htpasswd_file(t, account[0], account[1])
    # The fake registry (Basic auth, blobs redirected to its CDN) serves the same layouts,
    # so the same digests, also damaged: a repository under mode/corrupt/ gets one byte
    # flipped, mode/truncate/ and mode/long/ the wrong length, mode/cut/ and the first
    # GET of each blob under mode/cutonce/ a connection cut midway.
    fake = t.s.fakereg
    fake_blobs = [d for d, (repo, _) in blobs.items() if repo != "ns/multi-v2s2"]
    p = t.proxy(registries=[reg.conf(tag_ttl="1s"), fake.conf()],
                listeners=[{"default": reg.name},
                           {"default": reg.name, "tls_cert": crt, "tls_key": key},
                           {"default": reg.name, "htpasswd": htp}],
                cache={"max_size": "105M", "max_stale": "1h", "scrub_interval": "1s",
                       "scrub_rate": "200M"})
    bad = []
    stats = {}
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def note(kind, what):
        with lock:
            stats[kind] = stats.get(kind, 0) + 1
            if kind == "BAD":
                bad.append(what)

    def listener(rnd):
        """(port, tls) of the plain or the TLS listener."""
        i = rnd.randrange(2)
        return p.ports[i], i == 1

    def connect(rnd):
        port, tls = listener(rnd)
        c = socket.create_connection(("127.0.0.1", port), timeout=20)
        return lib._unverified_tls().wrap_socket(c) if tls else c

    def get(rnd, path, **kw):
        port, tls = listener(rnd)
        return lib.stream_get(port, path, tls=tls, **kw)

    def prefix(rnd):
        return "/v2/" + ("registry.soak.test/" if rnd.random() < 0.5 else "")

    def blob_get(rnd):
        d = rnd.choice(list(blobs))
        repo, size = blobs[d]
        path = prefix(rnd) + "%s/blobs/%s" % (repo, d)
        r = rnd.random()
        if r < 0.2:
            s = get(rnd, path, limit=rnd.randrange(1, size + 1))
            note("aborted", None)
            if s.status not in (0, 200, 502, 503, 504):
                note("BAD", "aborted GET %s: %r" % (path, s))
            return
        if r < 0.5 and d in small and size > 1:
            a = rnd.randrange(0, size)
            b = rnd.randrange(a, size)
            s = get(rnd, path, headers={"Range": "bytes=%d-%d" % (a, b)})
            if s.status == 206 and s.complete:
                if s.digest != lib.sha256(small[d][a:b + 1]):
                    note("BAD", "range %d-%d of %s: wrong bytes %r" % (a, b, d, s))
                note("range", None)
            elif s.status not in (0, 502, 503, 504) or (s.status == 206 and not s.error):
                note("BAD", "range %d-%d of %s: %r" % (a, b, d, s))
            return
        method = "HEAD" if r < 0.6 else "GET"
        s = get(rnd, path, method=method)
        # A GET that joined a download of the same digest from the damaged registry gets
        # that one's length, and is cut when its digest fails: no wrong bytes complete.
        if (s.status == 200 and (s.length is not None and s.length != size) and
                (method == "HEAD" or s.complete)):
            note("BAD", "%s %s: length %s, want %d: %r" % (method, path, s.length, size, s))
        if s.status == 200 and r >= 0.6:
            if s.complete and s.digest != d:
                note("BAD", "GET %s: digest %s" % (path, s.digest))
            if s.complete:
                note("blob", None)
            else:
                note("cut", None)
        elif s.status not in (0, 200, 502, 503, 504):
            note("BAD", "%s: %r" % (path, s))

    def fake_blob(rnd):
        d = rnd.choice(fake_blobs)
        repo, size = blobs[d]
        mode = rnd.choice(["", "mode/cutonce/", "mode/corrupt/", "mode/truncate/",
                           "mode/long/", "mode/cut/"])
        path = "/v2/%s/%s%s/blobs/%s" % (fake.name, mode, repo, d)
        s = get(rnd, path)
        if s.status == 200 and s.complete and s.digest != d:
            note("BAD", "GET %s: %d bytes, digest %s" % (path, s.got, s.digest))
        elif s.status == 200 and s.complete:
            note("fake blob", None)
        elif s.status == 200 or s.status in (0, 502, 503, 504):
            note("fake blob refused", None)
        else:
            note("BAD", "GET %s: %r" % (path, s))

    def fake_manifest(rnd):
        ref = rnd.choice(["ns/multi:v1", "ns/multiarch:v1", "ns/large:v1"])
        repo, tag = ref.split(":")
        want = shared.pushed[ref]["digest"]
        mode = rnd.choice(["", "manifest-cut", "manifest-cut-nodigest", "manifest-close",
                           "bigmanifest", "artifact", "500", "429", "slowmanifest"])
        by = tag if rnd.random() < 0.7 else want
        path = "/v2/%s/%s%s/manifests/%s" % (fake.name, "mode/%s/" % mode if mode else "",
                                             repo, by)
        s = get(rnd, path, headers={"Accept": lib.ACCEPT_ALL})
        if s.status == 200 and s.complete:
            dg = s.header("docker-content-digest")
            if mode in ("manifest-cut", "manifest-cut-nodigest", "bigmanifest"):
                note("BAD", "GET %s: a damaged manifest served: %r" % (path, s))
            elif dg != s.digest or (mode != "artifact" and s.digest != want):
                note("BAD", "GET %s: Docker-Content-Digest %s, body %s, want %s"
                     % (path, dg, s.digest, want))
            else:
                note("fake manifest", None)
        elif s.status in (0, 200, 404, 429, 500, 502, 503, 504):
            note("fake manifest refused", None)
        else:
            note("BAD", "GET %s: %r" % (path, s))

    def login(rnd):
        ref = rnd.choice(REFS)
        repo, tag = ref.split(":")
        path = "/v2/%s/manifests/%s" % (repo, tag)
        who = rnd.choice(["right", "wrong", "none"])
        creds = {"right": account, "wrong": (account[0], "not-" + account[1]),
                 "none": None}[who]
        headers = {"Accept": lib.ACCEPT_ALL}
        if creds:
            headers["Authorization"] = "Basic " + base64.b64encode(
                ("%s:%s" % creds).encode()).decode()
        s = lib.stream_get(p.ports[2], path, headers=headers)
        if who != "right" and 200 <= s.status < 300:
            note("BAD", "%s login got %r for %s" % (who, s, path))
        elif who == "right" and s.status == 401:
            note("BAD", "the right login got 401 for %s: %r" % (path, s))
        elif s.status in (0, 200, 401, 404, 429, 502, 503, 504):
            note("login " + who, None)
        else:
            note("BAD", "%s login: %r for %s" % (who, s, path))

    def manifest_get(rnd):
        ref = rnd.choice(REFS)
        repo, tag = ref.split(":")
        by = tag if rnd.random() < 0.6 else shared.pushed[ref]["digest"]
        path = prefix(rnd) + "%s/manifests/%s" % (repo, by)
        acc = rnd.choice(ACCEPTS)
        method = "HEAD" if rnd.random() < 0.3 else "GET"
        s = get(rnd, path, headers={"Accept": acc} if acc else None, method=method)
        if s.status == 200 and method == "HEAD":
            if not s.header("docker-content-digest") or not s.length:
                note("BAD", "HEAD %s (Accept %s): %r" % (path, acc, s))
        elif s.status == 200 and s.complete and s.length:
            dg = s.header("docker-content-digest")
            # Signed schema 1 (docker-registry's answer to an Accept naming no schema 2 type)
            # is named by its payload's digest, as clients verify it.
            got = (lib.schema1_payload_digest(s.body)
                   if s.header("content-type") == lib.SCHEMA1_SIGNED else s.digest)
            if dg != got:
                note("BAD", "%s (Accept %s): Docker-Content-Digest %s, body %s"
                     % (path, acc, dg, got))
            note("manifest", None)
        elif s.status not in (0, 200, 404, 406, 502, 503, 504):
            note("BAD", "%s (Accept %s): %r" % (path, acc, s))

    def tags(rnd):
        s = get(rnd, prefix(rnd) + "ns/tags/tags/list?n=%d" % rnd.randrange(1, 30))
        if s.status == 200 and s.complete:
            json.loads(s.body)
            note("tags", None)
        elif s.status not in (0, 502, 503, 504):
            note("BAD", "tags list: %r" % s)

    def pipelined(rnd):
        ref = rnd.choice(REFS)
        repo, tag = ref.split(":")
        req = ("GET /v2/%s/manifests/%s HTTP/1.1\r\nHost: x\r\n\r\n" % (repo, tag)).encode()
        data = req * rnd.randrange(2, 6)
        if rnd.random() < 0.3:
            data += bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 200)))
        try:
            with connect(rnd) as c:
                c.sendall(data)
                c.shutdown(socket.SHUT_WR)
                while c.recv(65536):
                    pass
        except OSError:
            pass
        note("pipelined", None)

    def garbage(rnd):
        choices = [
            b"GET /v2/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /v2/ns/multi/blobs/sha256:zz HTTP/1.1\r\n\r\n",
            b"GET http://evil.example/v2/ HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /v2/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            b"GET /v2/ns/multi/manifests/v1 HTTP/1.1\r\nRange: bytes=5-1,\r\n\r\n",
            bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 2000))),
        ]
        try:
            with connect(rnd) as c:
                c.sendall(rnd.choice(choices))
                if rnd.random() < 0.5:
                    c.recv(65536)
        except OSError:
            pass
        note("garbage", None)

    def herd(rnd):
        d = rnd.choice(list(blobs))
        repo, size = blobs[d]
        path = prefix(rnd) + "%s/blobs/%s" % (repo, d)
        got = lib.parallel([lambda: get(rnd, path)] * rnd.randrange(2, 8))
        for s in got:
            if s.status == 200 and s.complete and s.digest != d:
                note("BAD", "herd GET %s: digest %s" % (path, s.digest))
            elif s.status not in (0, 200, 502, 503, 504):
                note("BAD", "herd GET %s: %r" % (path, s))
        note("herd", None)

    ops = [(blob_get, 4), (fake_blob, 2), (fake_manifest, 1), (herd, 1), (login, 1), (manifest_get, 4), (tags, 1), (pipelined, 1), (garbage, 1)]
    table = [f for f, w in ops for _ in range(w)]

    def worker(i):
        rnd = random.Random(seed * 100 + i)
        while time.monotonic() < stop:
            rnd.choice(table)(rnd)

    def chaos():
        rnd = random.Random(seed)
        while time.monotonic() < stop - 3:
            time.sleep(rnd.uniform(1, 4))
            r = rnd.random()
            if r < 0.4:
                os.kill(p.pid, signal.SIGHUP)
                note("reload", None)
            elif r < 0.7:
                reg.stop()
                time.sleep(rnd.uniform(0.2, 2))
                reg.restart()
                note("outage", None)
            elif r < 0.85:
                # A crash: fills cut mid-write, no index snapshot. The restarted proxy
                # (new ports; the workers follow) must serve only verified content.
                p.kill9()
                p.start()
                note("crash", None)

    errors = []

    def workers():
        try:
            lib.parallel([lambda i=i: worker(i) for i in range(10)], timeout=seconds + 300)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)
    wt = threading.Thread(target=workers, daemon=True)
    wt.start()
    # Chaos on this thread: children die with the thread that started them (the runner's
    # PR_SET_PDEATHSIG is per thread), and the proxy and registry it restarts must outlive it.
    chaos()
    wt.join(seconds + 310)
    check(not wt.is_alive(), "soak clients still running %d s after the end" % 310)
    if errors:
        raise errors[0]
    print("    soak: %s" % ", ".join("%s %d" % kv for kv in sorted(stats.items())), flush=True)
    check(not bad, "%d bad answers (seed %d); first: %s" % (len(bad), seed, bad[:5]))
    # Whatever was in flight has settled: everything under blobs/ and manifests/ verifies.
    time.sleep(1)
    lib.check_cache_store(p.cache_dir, "after the soak: ")
    # The scrub ran all along (passes every second, through evictions, fills and crashes) and
    # must never have taken an intact blob for a damaged one: nothing damaged reached disk.
    log = p.log_text()
    check("cache scrub: " in log, "no scrub pass completed during the soak")
    damaged = [line for line in log.splitlines() if "cache scrub: blob" in line]
    check(not damaged, "the scrub removed blobs during the soak: %s" % damaged[:3])
    st, _, _ = p.raw("GET", "/v2/")
    check(st == 200, "the proxy answers /v2/ after the soak (%s)" % st)


# The runner's limit, past the clients' own (workers end by SECONDS; set-up, the last
# chaos action and the final checks take the rest).
test_soak.timeout = int(SECONDS) + 300
