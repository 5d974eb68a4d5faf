# SPDX-License-Identifier: Apache-2.0
"""`regproxy verify -c FILE`: a scrub of the cache. Damage on disk that keeps a file's size is
not seen when a blob is served (it was verified once, as it arrived), so without a scrub every
node's pull would fail its digest check and retry into the same bytes. verify names each
damaged blob and manifest, removes it, and the next pull through the proxy fetches it again
from upstream; a cache in use by a running proxy is refused."""
import os
import time

import lib
from lib import check, eq
from test_disconnected import _run


def _flip(path, at=None):
    """Flips one byte of the file, keeping its size (what a bad sector or a bit flip does)."""
    with open(path, "r+b") as f:
        size = os.fstat(f.fileno()).st_size
        pos = size // 2 if at is None else at
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x55]))
    return size


def test_verify_removes_damaged_content(t):
    reg = t.s.anon_registry
    p = t.proxy(registries=[reg.conf("registry.anon.test")])
    t.pull(p, "ns/multi:v1")

    # In use: refused at once, with what to do.
    rc, out, err = _run(t, ["verify", "-c", p.conf_path], ok=False)
    eq(rc, 1, "verify on a cache a running proxy holds")
    check("in use" in err and "stop it first" in err, "verify's refusal: %r" % err)

    problems = p.stop()
    check(not problems, "; ".join(problems))
    # Clean: everything matches.
    rc, out, err = _run(t, ["verify", "-c", p.conf_path], ok=False)
    eq(rc, 0, "verify of an undamaged cache: stdout %r stderr %r" % (out, err))
    blobs = lib.cache_digests(p.cache_dir, "blobs")
    mans = lib.cache_digests(p.cache_dir, "manifests")
    check(len(blobs) >= 2 and mans, "the pull cached too little: %r %r" % (blobs, mans))
    check(("verified %d blobs" % len(blobs)) in out and
          ("and %d manifest%s" % (len(mans), "" if len(mans) == 1 else "s")) in out and
          "0 damaged" in out,
          "verify's summary of a clean cache: %r" % out)

    # The largest blob (a layer) gets a flipped byte in its middle, one manifest too.
    blob = max(blobs, key=lambda d: blobs[d])
    size = _flip(lib.cache_path(p.cache_dir, "blobs", blob))
    man = sorted(mans)[0]
    _flip(lib.cache_path(p.cache_dir, "manifests", man))
    rc, out, err = _run(t, ["verify", "-c", p.conf_path], ok=False)
    eq(rc, 1, "verify's exit status with damage found")
    lines = out.splitlines()
    damaged = sorted(line.split()[1].rstrip(":") for line in lines
                     if line.startswith("damaged "))
    eq(damaged, sorted([blob, man]), "what verify named damaged (stdout %r)" % out)
    check(any(line.startswith("damaged %s: its %d bytes hash to sha256:" % (blob, size))
              for line in lines), "verify's line for the blob: %r" % out)
    check("2 damaged and removed" in lines[-1], "verify's summary: %r" % lines[-1])
    check(not os.path.exists(lib.cache_path(p.cache_dir, "blobs", blob)),
          "the damaged blob is still in the cache")
    check(not os.path.exists(lib.cache_path(p.cache_dir, "manifests", man)),
          "the damaged manifest is still in the cache")
    lib.check_cache_store(p.cache_dir, "after verify: ")

    # Removed for good: a second pass finds nothing, and the index agrees.
    rc, out, err = _run(t, ["verify", "-c", p.conf_path], ok=False)
    eq(rc, 0, "verify after the damage was removed: %r %r" % (out, err))
    check(("verified %d blobs" % (len(blobs) - 1)) in out, "second summary: %r" % out)

    # The next pull gets the right bytes: the damaged blob once more from upstream, the rest
    # from the cache.
    p.start()
    mark = reg.mark()
    t.pull(p, "ns/multi:v1")
    time.sleep(0.3)  # docker-registry logs a request when it has ended
    eq(reg.count("GET", "/v2/ns/multi/blobs/%s" % blob, since=mark), 1,
       "upstream GETs of the blob verify removed")
    eq(reg.count("GET", "/v2/ns/multi/blobs/", since=mark), 1,
       "upstream blob GETs after verify (only the damaged one should be fetched)")
    check(os.path.exists(lib.cache_path(p.cache_dir, "blobs", blob)),
          "the refetched blob was not cached again")


def test_verify_needs_config_and_cache(t):
    rc, out, err = _run(t, ["verify"], ok=False)
    eq(rc, 2, "verify without -c")
    check("-c FILE is required" in err, "verify without -c: %r" % err)
    # A mistyped cache dir is an error, not an empty cache created and "verified".
    missing = os.path.join(t.tmp, "no-such-cache")
    conf = os.path.join(t.tmp, "v.conf")
    with open(conf, "w") as f:
        f.write('[listen "127.0.0.1:%d"]\n[cache]\ndir = %s\n[registry "r.example"]\n'
                "offline = yes\n[admin]\nlisten = off\n" % (lib.free_port(), missing))
    rc, out, err = _run(t, ["verify", "-c", conf], ok=False)
    eq(rc, 1, "verify of a cache dir that does not exist")
    check(("no cache at %s" % missing) in err, "its message: %r" % err)
    check(not os.path.exists(missing), "verify created the missing cache dir")
