# SPDX-License-Identifier: Apache-2.0
"""Tag and link files go with their content. Every manifest pulled by tag leaves a tag file
and a repository link file under the cache directory; they are not counted in max_size. They
used to be kept for good after their manifest was evicted, so a proxy that runs for months
(CI pulling a new tag per build, or anyone on the anonymous port walking a big registry's
tags) grew its cache directory without bound, whatever max_size said. Now, once content was
evicted, the tag and link files of content no longer cached are removed after enough new ones
were written (at least 1024, KEY_SWEEP_MIN in cache/cache.c), a shard at a time over the
next 512 written (KEY_SWEEP_SHARDS): with max_size far below what is pulled, their number
stays bounded, a pinned image keeps its tag and link, the latest tags
are still answered from the cache, and a tag whose file went is fetched again correctly."""
import json
import os
import random

import lib
import rawup
from lib import check, eq

MT = "application/vnd.oci.image.manifest.v1+json"
PULLS = 1500  # two files each (tag and link): two sweeps' worth
SWEEP_MIN = 1024
SWEEP_SHARDS = 512  # a sweep's steps: files written meanwhile may be left for the next


def _manifest(tag):
    """A distinct manifest per tag, padded to 20 KB (random: manifests are stored LZ4
    compressed) so that max_size holds only a few."""
    pad = random.Random(tag).getrandbits(80000).to_bytes(10000, "big").hex()
    return json.dumps({"schemaVersion": 2, "mediaType": MT,
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                  "digest": "sha256:" + "0" * 64, "size": 2},
                       "layers": [], "annotations": {"tag": tag, "pad": pad}}).encode()


def _files(p, sub):
    n = 0
    for _, _, files in os.walk(os.path.join(p.cache_dir, sub)):
        n += len(files)
    return n


def test_tag_and_link_files_follow_eviction(t):
    def h(r):
        path = r.path.split("?")[0]
        if "/manifests/" in path:
            tag = path.rsplit("/", 1)[1]
            b = _manifest(path)
            if tag.startswith("sha256:"):
                r.send(404, b"")
            else:
                r.answer(b, MT, lib.sha256(b))
            return False
        r.send(200, b"{}", [("Content-Type", "application/json")])
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()],
                cache={"max_size": "256K", "pin": "raw.test/ns/keep"})

    def get(repo, tag):
        s = lib.stream_get(p.port, "/v2/%s/manifests/%s" % (repo, tag), headers={"Accept": MT})
        eq(s.status, 200, "GET %s:%s" % (repo, tag))
        want = _manifest("/v2/%s/manifests/%s" % (repo, tag))
        eq(s.digest, lib.sha256(want), "bytes of %s:%s" % (repo, tag))
        return s

    get("ns/keep", "v1")
    for i in range(PULLS):
        get("ns/r%d" % (i % 50), "t%d" % i)
    tags, links = _files(p, "tags"), _files(p, "links")
    # Without removal: PULLS + 1 of each. With it: what the last sweep kept (the few
    # manifests max_size holds, and the pinned one), what was written during it behind its
    # steps, and what was written since.
    check(tags + links <= SWEEP_MIN + SWEEP_SHARDS + 64,
          "%d tag and %d link files for %d pulls with max_size 256K (%d cached entries): "
          "files of evicted content were kept" % (tags, links, PULLS + 1,
                                                 len(lib.cache_files(p.cache_dir, "manifests"))))
    check("files of content no longer cached removed" in p.log_text(),
          "no sweep was logged")

    # The pinned image keeps its tag and link: answered from the cache, upstream not asked.
    mark = len(up.seen())
    s = get("ns/keep", "v1")
    eq(s.header("X-Regproxy-Cache"), "HIT", "the pinned tag after the sweeps")
    # The latest tag is still cached too.
    s = get("ns/r%d" % ((PULLS - 1) % 50), "t%d" % (PULLS - 1))
    eq(s.header("X-Regproxy-Cache"), "HIT", "the latest tag after the sweeps")
    eq(up.seen()[mark:], [], "upstream requests for cached tags")
    # An early tag, whose files went with its manifest, is a plain miss, fetched correctly.
    s = get("ns/r0", "t0")
    eq(s.header("X-Regproxy-Cache"), "MISS", "an early tag, evicted")


def test_link_confirmed_during_a_download_survives_the_sweep(t):
    """A repository asking for a blob that another repository's download is bringing gets it
    once upstream confirmed that it has it too: the link is recorded then, before the blob is
    in the index. The sweep took such a link for one of content no longer cached, so after
    the download the repository had no link: its next request asked upstream to confirm
    again, and with upstream failing got a 503 for a blob the cache holds. A link whose blob
    is being downloaded stays."""
    import threading
    layer = os.urandom(100 * 1024 + 3)
    ld = lib.sha256(layer)
    release = threading.Event()
    t.defer(release.set)
    failing = threading.Event()

    def h(r):
        path = r.path.split("?")[0]
        if path == "/v2/ns/a/blobs/" + ld:
            r.raw(("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                   "Content-Length: %d\r\nDocker-Content-Digest: %s\r\nConnection: close\r\n\r\n"
                   % (len(layer), ld)).encode() + layer[:1000])
            release.wait(120)
            r.raw(layer[1000:])
            return False
        if path == "/v2/ns/b/blobs/" + ld:
            if failing.is_set():
                r.send(503, b"")
            else:
                r.send(200, b"", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(len(layer))),
                                  ("Docker-Content-Digest", ld)])
            return False
        if "/manifests/" in path:
            b = _manifest(path)
            r.answer(b, MT, lib.sha256(b))
            return False
        r.send(404, b"")
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf()], cache={"max_size": "256K"})
    got = {}

    def one(repo):
        got[repo] = lib.stream_get(p.port, "/v2/%s/blobs/%s" % (repo, ld))
    ta = threading.Thread(target=one, args=("ns/a",), daemon=True)
    ta.start()
    lib.wait_until(lambda: up.seen("/v2/ns/a/blobs/"), 60, "the download upstream")
    tb = threading.Thread(target=one, args=("ns/b",), daemon=True)
    tb.start()
    lib.wait_until(lambda: _files(p, "links") == 1, 60, "ns/b's link, once upstream confirmed")
    # Enough tags of evicted manifests for a whole sweep (its start, then all its shards).
    for i in range(800):
        s = lib.stream_get(p.port, "/v2/ns/r%d/manifests/t%d" % (i % 50, i),
                           headers={"Accept": MT})
        eq(s.status, 200, "GET tag %d" % i)
    check("files of content no longer cached removed" in p.log_text(), "no sweep ended")
    release.set()
    ta.join(120)
    tb.join(120)
    for repo in ("ns/a", "ns/b"):
        eq((got[repo].status, got[repo].digest), (200, ld), "the blob through %s" % repo)
    lib.wait_until(lambda: p.get("/v2/ns/a/blobs/" + ld, method="HEAD").header(
        "X-Regproxy-Cache") == "HIT", 60, "the blob cached")
    failing.set()
    mark = len(up.seen("/v2/ns/b/"))
    r = p.get("/v2/ns/b/blobs/" + ld)
    eq((r.status, r.header("X-Regproxy-Cache")), (200, "HIT"),
       "the blob through ns/b, upstream failing: %s" % r.body[:200])
    eq(up.seen("/v2/ns/b/")[mark:], [], "upstream requests for a blob ns/b had confirmed")
