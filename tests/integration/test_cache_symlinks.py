# SPDX-License-Identifier: Apache-2.0
"""A symlink planted in the cache directory (by whoever can write there but not read other
files) never makes the proxy serve, write or remove anything outside it. A warm blob's <hh>
directory is replaced by a symlink to a directory holding a file of the blob's name with
other bytes of the same length: the next GETs get the right bytes (fetched again) or an
error, never those; the outside directory is left as it was; the symlink is replaced by a
directory holding the blob again, and the log names the path."""
import os
import shutil

import lib
from lib import check, eq

REF = "ns/multi:v1"


def _listing(d):
    """{name: bytes} of the directory: what must not change."""
    out = {}
    for name in sorted(os.listdir(d)):
        with open(os.path.join(d, name), "rb") as f:
            out[name] = f.read()
    return out


def _warm_layer(t, p):
    """GETs the first layer of REF through p until it is in the cache: its digest, size,
    request path, cache file and <hh> directory."""
    layer = lib.image_manifests(t.s.anon_registry, REF)[0]["layers"][0]
    digest, size = layer["digest"], layer["size"]
    path = "/v2/%s/blobs/%s" % (REF.split(":")[0], digest)
    blob_file = lib.cache_path(p.cache_dir, "blobs", digest)
    r = lib.stream_get(p.port, path)
    eq((r.status, r.complete, r.digest), (200, True, digest), "first GET of %s (%r)" % (path, r))
    lib.wait_until(lambda: os.path.isfile(blob_file), 10, "%s in the cache" % blob_file)
    return digest, size, path, blob_file, os.path.dirname(blob_file)


def test_symlinked_shard_is_not_followed(t):
    reg = t.s.anon_registry
    p = t.proxy(registries=[reg.conf("registry.anon.test")])
    digest, size, path, blob_file, shard = _warm_layer(t, p)
    r = lib.stream_get(p.port, path)
    eq((r.status, r.digest, r.header("x-regproxy-cache")), (200, digest, "HIT"),
       "second GET, from the cache (%r)" % r)

    # Outside the cache: a file of the blob's name, as long as the blob, other bytes.
    outside = os.path.join(t.tmp, "outside")
    os.mkdir(outside)
    fake = bytes((i * 7 + 3) & 0xFF for i in range(size))
    fake_digest = lib.sha256(fake)
    check(fake_digest != digest, "the planted bytes differ from the blob's")
    with open(os.path.join(outside, os.path.basename(blob_file)), "wb") as f:
        f.write(fake)
    with open(os.path.join(outside, "precious"), "wb") as f:
        f.write(b"not the cache's to touch\n")
    before = _listing(outside)
    shutil.rmtree(shard)
    os.symlink(outside, shard)

    for i in range(3):
        r = lib.stream_get(p.port, path)
        check(r.digest != fake_digest,
              "GET %d after the planted symlink: the client got the bytes from outside the "
              "cache (%r)" % (i, r))
        if r.status == 200 and r.complete:
            eq(r.digest, digest, "GET %d after the planted symlink: body digest" % i)
        else:
            check(r.status >= 400 or r.error, "GET %d: neither the blob nor an error (%r)"
                  % (i, r))
    eq(_listing(outside), before, "the directory outside the cache after the GETs")
    lib.wait_until(lambda: not os.path.islink(shard) and os.path.isfile(blob_file), 10,
                   "%s to be a directory holding the blob again" % shard)
    eq(lib.sha256_file(blob_file), digest, "content of the cached %s" % blob_file)
    r = lib.stream_get(p.port, path)
    eq((r.status, r.digest, r.header("x-regproxy-cache")), (200, digest, "HIT"),
       "GET once the blob is cached again (%r)" % r)
    rel = os.path.relpath(shard, p.cache_dir)
    check(any(rel in line and "symlink" in line for line in p.log_text().splitlines()),
          "the proxy log names the planted symlink %s" % rel)
    problems = p.stop()
    check(not problems, "; ".join(problems))
    eq(_listing(outside), before, "the directory outside the cache after the proxy stopped")


def test_scrub_reports_a_symlinked_shard(t):
    """The online scrub opens each blob without following a symlink either: one planted in
    front of a blob is reported and removed (it, not what it points to), the blob forgotten."""
    reg = t.s.anon_registry
    p = t.proxy(registries=[reg.conf("registry.anon.test")],
                cache={"scrub_interval": "1s", "scrub_rate": "100M"})
    digest, size, path, blob_file, shard = _warm_layer(t, p)

    outside = os.path.join(t.tmp, "outside")
    os.mkdir(outside)
    with open(os.path.join(outside, os.path.basename(blob_file)), "wb") as f:
        f.write(b"\0" * size)  # damage the scrub would remove, were it followed
    before = _listing(outside)
    shutil.rmtree(shard)
    os.symlink(outside, shard)
    lib.wait_until(lambda: not os.path.islink(shard) or _listing(outside) != before, 30,
                   "the scrub to remove the symlink %s" % shard)
    eq(_listing(outside), before, "the directory outside the cache after the scrub")
    log = p.log_text()
    check("cache scrub: blob %s: a symlink in its path" % digest in log,
          "the scrub's log line for the blob:\n%s" % log[-3000:])
    r = lib.stream_get(p.port, path)
    eq((r.status, r.digest, r.header("x-regproxy-cache")), (200, digest, "MISS"),
       "GET after the scrub forgot the blob (%r)" % r)
    problems = p.stop()
    check(not problems, "; ".join(problems))
