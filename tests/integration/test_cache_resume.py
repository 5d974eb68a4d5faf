# SPDX-License-Identifier: Apache-2.0
"""A blob download the network cuts midway is resumed where the cache's temp file ends, so
the bytes already fetched do not cross the internet again and the clients waiting on it see
a pause, not an error. The fake registry cuts the first GET of each blob at half its length
(mode cutonce): the proxy asks again, through the registry and its CDN redirect, with
`Range: bytes=N-`, and every client gets the whole blob with the right digest. A server
that ignores Range (cutonce-norange) answers 200 with the whole blob: the proxy skips what
it has. The fake registry's global mode is switched and restored."""
import os

import lib
from lib import check, eq

CLIENTS = 4


def _resumed(t, mode):
    fr, p, layer, path = lib.fakereg_blob_in_mode(t, mode)
    digest = layer["digest"]
    mark = fr.mark()
    res = lib.parallel([lambda: lib.stream_get(p.port, path, timeout=60)] * CLIENTS)
    for i, r in enumerate(res):
        eq((r.status, r.complete, r.digest), (200, True, digest),
           "client %d of %d, upstream cutting the first download (%s)" % (i + 1, CLIENTS, mode))
    gets = lib.settle(lambda: [x for x in fr.cdn_requests(mark[1])
                               if x["method"] == "GET" and x["path"] == "/blobs/" + digest], 2)
    eq(len(gets), 2, "CDN GETs of the blob: the cut one and its resumption (%s)" % gets)
    h0 = {k.lower(): v for k, v in gets[0]["headers"].items()}
    h1 = {k.lower(): v for k, v in gets[1]["headers"].items()}
    check("range" not in h0, "the first download asked for a range: %s" % h0)
    rng = h1.get("range", "")
    check(rng.startswith("bytes=") and rng.endswith("-"),
          "the resumption's Range header is %r, want bytes=N-" % rng)
    start = int(rng[len("bytes="):-1])
    check(0 < start < layer["size"],
          "resumed at byte %d of %d: not where the cut left it" % (start, layer["size"]))
    blob_file = lib.cache_path(p.cache_dir, "blobs", digest)
    lib.wait_until(lambda: os.path.isfile(blob_file), 10, "%s in the cache" % blob_file)
    eq(lib.sha256_file(blob_file), digest, "content of the cached blob")
    eq(lib.cache_files(p.cache_dir, "tmp"), [], "temp files after the resumed fill")
    with open(p.log) as f:
        log = f.read()
    check("resuming there (1 of" in log and "resumed=1" in log,
          "the log does not tell of the resumption:\n%s" % lib.tail(p.log, 15))
    eq(p.metrics()[("regproxy_fill_resumes_total", frozenset({("registry", fr.name)}))], 1,
       "regproxy_fill_resumes_total")
    mark = fr.mark()
    r = lib.stream_get(p.port, path)
    eq((r.status, r.digest, r.header("x-regproxy-cache")), (200, digest, "HIT"),
       "GET once the resumed blob is cached")
    eq(len(fr.cdn_requests(mark[1])), 0, "CDN requests for the hit")


def test_cut_download_resumes_with_range(t):
    _resumed(t, "cutonce")


def test_cut_download_resumes_when_range_is_ignored(t):
    _resumed(t, "cutonce-norange")


def test_skopeo_pull_through_cuts(t):
    """Every blob's first download is cut: skopeo's pull still succeeds, digests checked."""
    _, p, _, _ = lib.fakereg_blob_in_mode(t, "cutonce")
    _, tags = t.pull(p, "ns/large:v1")
    eq(tags.get("v1"), t.s.images["large"]["tags"]["v1"], "digest pulled through the cuts")


def _range_starts_download(t, up, digest, blob, what):
    """A proxy in front of up, asked bytes 10-19 of the blob: the download that starts behind
    the range must end with the blob cached. Returns (proxy, the blob's path)."""
    p = t.proxy(registries=[up.conf()])
    path = "/v2/ns/x/blobs/" + digest
    st, _, body = p.raw("GET", path, {"Range": "bytes=10-19"})
    eq((st, body), (206, blob[10:20]), "the range that starts the download behind it")
    blob_file = lib.cache_path(p.cache_dir, "blobs", digest)
    lib.wait_until(lambda: os.path.isfile(blob_file) or
                   "failed after" in open(p.log).read(), 30, "the download to end")
    check(os.path.isfile(blob_file), "%s was not cached:\n%s" % (what, lib.tail(p.log, 10)))
    return p, path


def _chunked(b, size=4096):
    return b"".join(b"%x\r\n%s\r\n" % (len(b[i:i + size]), b[i:i + size])
                    for i in range(0, len(b), size))


def test_cut_chunked_download_of_known_size_resumes(t):
    """An upstream that sends blobs chunked (Harbor's proxy-cache projects), 206s to ranges
    too. A download begun behind a range knows the blob's size from that range's
    Content-Range; cut midway, its resumption's 206 names exactly the rest, chunked as
    everything that upstream sends: the rest is fetched from there and the blob cached, as
    for a download whose size upstream's first answer gave."""
    import rawup
    blob = bytes(range(256)) * 1200 + b"tail"
    n = len(blob)
    digest = lib.sha256(blob)
    cut_at = 100000
    te = ("Transfer-Encoding", "chunked")

    def h(r):
        rng = r.h("range")
        if r.method != "GET" or not r.path.endswith("/blobs/" + digest):
            r.send(404, b"")
            return False
        try:
            if rng == "bytes=10-19":
                r.send(206, blob[10:20], [("Content-Range", "bytes 10-19/%d" % n)])
            elif rng is None:  # the download: cut before its end, no terminating chunk
                r.raw(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                      b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                      + _chunked(blob[:cut_at]))
            else:
                k = int(rng[len("bytes="):-1])
                r.send(206, _chunked(blob[k:]) + b"0\r\n\r\n",
                       [("Content-Range", "bytes %d-%d/%d" % (k, n - 1, n)), te])
        except OSError:
            pass
        return False
    up = rawup.RawUpstream(t, h)
    p, path = _range_starts_download(t, up, digest, blob, "the cut download, resumed,")
    resumed = [x for x in up.seen(path) if x[3].get("range", "").startswith("bytes=")
               and x[3]["range"] != "bytes=10-19"]
    eq([x[3]["range"] for x in resumed], ["bytes=%d-" % cut_at], "the resumption's Range")
    r = lib.stream_get(p.port, path)
    eq((r.status, r.digest, r.header("x-regproxy-cache")), (200, digest, "HIT"),
       "GET once the resumed blob is cached")


def test_chunked_download_cut_after_its_last_byte_is_verified(t):
    """A download of known size (begun behind a range) sent chunked, whose connection
    closed after the blob's last byte but before the terminating chunk: every byte is in,
    so there is nothing to resume, and the download failed ("failed after 307204 bytes"),
    its readers cut one byte short. The digest judges the bytes, as at a clean end: the
    blob is cached."""
    import rawup
    blob = bytes(range(256)) * 1200 + b"tail"
    n = len(blob)
    digest = lib.sha256(blob)

    def h(r):
        rng = r.h("range")
        if r.method != "GET" or not r.path.endswith("/blobs/" + digest):
            r.send(404, b"")
            return False
        try:
            if rng == "bytes=10-19":
                r.send(206, blob[10:20], [("Content-Range", "bytes 10-19/%d" % n)])
            else:  # every byte, then the connection closes without the terminating chunk
                r.raw(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                      b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                      + _chunked(blob))
        except OSError:
            pass
        return False
    up = rawup.RawUpstream(t, h)
    p, path = _range_starts_download(t, up, digest, blob, "the download with every byte in")
    r = lib.stream_get(p.port, path)
    eq((r.status, r.digest, r.header("x-regproxy-cache")), (200, digest, "HIT"),
       "GET once the blob is cached")
