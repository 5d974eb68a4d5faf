# SPDX-License-Identifier: Apache-2.0
"""Tag freshness against a private docker-registry (its own tag_ttl 1s): within the TTL a tag is a
HIT with no upstream request; past it one HEAD goes upstream and an unchanged tag is
REVALIDATED from the cache; after a new image is pushed under the same tag, the next
request past the TTL serves the new digest (a MISS: HEAD then GET) and the old digest stays
fetchable by digest. A cached manifest whose media type the client does not accept is not
served from the cache. A tag file whose fetched time is ahead of the clock (an imported
bundle's, a clock that was ahead) is revalidated past tag_ttl, and a time of INT64_MAX
does not overflow the age."""
import hashlib
import math
import os
import time

import lib
from lib import check, eq

TAG = "/v2/ns/retag/manifests/v1"
OCI_ONLY = "application/vnd.oci.image.manifest.v1+json"
DOCKER_ONLY = "application/vnd.docker.distribution.manifest.v2+json"


def _past(t_after, secs):
    until = math.floor(t_after) + secs + 0.1
    while time.time() < until:
        time.sleep(until - time.time())


def _upstream(reg, mark, path, n=0):
    """Methods of upstream requests for path since mark (waiting for n of them: docker-registry
    logs a request when it has ended)."""
    return lib.settle(lambda: [m for m, p, st in reg.since(mark) if p == path], n)


def _early_in_a_second():
    """The proxy keeps tag times in whole seconds: with tag_ttl 1s, two requests are
    certainly within the TTL of each other only inside one wall-clock second. Waits for the
    start of a fresh one."""
    frac = time.time() % 1
    if frac > 0.2:
        time.sleep(1.02 - frac)
    return time.time()


def _get(p, path, accept=lib.ACCEPT_ALL):
    return p.get(path, headers={"Accept": accept})


def test_tag_revalidation_and_retag(t):
    s = t.s
    reg = t.private_registry("anon", images={
        "ns/retag:v1": "oci:%s:v1" % s.images["multi"]["dir"]})
    old = reg.pushed["ns/retag:v1"]["digest"]
    # The registry's own tag_ttl wins over [cache] tag_ttl.
    p = t.proxy(registries=[reg.conf(tag_ttl="1s")], cache={"tag_ttl": "10m"})

    mk = reg.mark()
    t0 = _early_in_a_second()
    r = _get(p, TAG)
    t_fetched = time.time()
    eq((r.status, lib.sha256(r.body), r.header("X-Regproxy-Cache")), (200, old, "MISS"),
       "first GET %s" % TAG)
    r = _get(p, TAG)
    if math.floor(time.time()) == math.floor(t0):
        eq((r.status, lib.sha256(r.body), r.header("X-Regproxy-Cache")), (200, old, "HIT"),
           "second GET %s within tag_ttl" % TAG)
        eq(_upstream(reg, mk, TAG, 1), ["GET"],
           "upstream requests for a MISS then a HIT within the TTL")

    _past(t_fetched, 1)
    t0 = _early_in_a_second()
    mk = reg.mark()
    r = _get(p, TAG)
    t_reval = time.time()
    eq((r.status, lib.sha256(r.body), r.header("X-Regproxy-Cache")),
       (200, old, "REVALIDATED"), "GET %s past tag_ttl, tag unchanged upstream" % TAG)
    mk2 = reg.mark()
    # Revalidated means fresh again: the next GET within the TTL needs no upstream.
    r = _get(p, TAG)
    if math.floor(time.time()) == math.floor(t0):
        eq(r.header("X-Regproxy-Cache"), "HIT", "GET right after a revalidation")
        eq(_upstream(reg, mk2, TAG), [], "upstream requests right after a revalidation")
        eq(_upstream(reg, mk, TAG, 1), ["HEAD"], "upstream requests for a revalidation")
    else:
        eq(_upstream(reg, mk, TAG, 1)[:1], ["HEAD"], "upstream requests for a revalidation")
    t_reval = time.time()

    # Same tag, new image upstream.
    new = s.push(reg, "oci:%s:t00" % s.images["tags"]["dir"], "ns/retag:v1")["digest"]
    check(new != old, "the re-pushed tag kept its digest %s (fixture problem)" % old)
    _past(t_reval, 1)
    mk = reg.mark()
    r = _get(p, TAG)
    eq((r.status, lib.sha256(r.body), r.header("X-Regproxy-Cache")), (200, new, "MISS"),
       "GET %s past tag_ttl after the tag moved upstream (new digest %s, old %s)"
       % (TAG, new, old))
    eq(r.header("Docker-Content-Digest"), new, "Docker-Content-Digest of the moved tag")
    eq(_upstream(reg, mk, TAG, 2), ["HEAD", "GET"], "upstream requests when the tag moved")
    mk = reg.mark()
    r = _get(p, TAG)
    eq((lib.sha256(r.body), r.header("X-Regproxy-Cache")), (new, "HIT"),
       "GET %s again within the TTL" % TAG)
    r = _get(p, "/v2/ns/retag/manifests/" + old)
    eq((r.status, lib.sha256(r.body), r.header("X-Regproxy-Cache")), (200, old, "HIT"),
       "old digest %s by digest after the tag moved" % old)
    eq(_upstream(reg, mk, TAG) + _upstream(reg, mk, "/v2/ns/retag/manifests/" + old), [],
       "upstream requests for hits")
    # Whole images, both of them, through skopeo.
    _, tags = t.pull(p, "ns/retag:v1")
    eq(tags.get("v1"), new, "pull of the moved tag")
    _, tags = t.pull(p, "ns/retag@" + old, out=t.tmp + "/old")
    eq(list(tags.values()), [old], "pull of the old image by digest after the tag moved")


def test_accept_mismatch_not_from_cache(t):
    """An OCI manifest cached for one client is not handed to a client that accepts only
    Docker schema 2: that request goes upstream (and docker-registry refuses it)."""
    s = t.s
    reg = s.anon_registry
    p = t.proxy(registries=[reg.conf()])
    path = "/v2/ns/multi/manifests/v1"
    digest = reg.pushed["ns/multi:v1"]["digest"]
    # A client naming both list types: its answer is the tag's (rp_manifest_tag_canonical).
    r = _get(p, path, OCI_ONLY + ", application/vnd.oci.image.index.v1+json, "
             "application/vnd.docker.distribution.manifest.list.v2+json")
    eq((r.status, lib.sha256(r.body), r.header("Content-Type")), (200, digest, OCI_ONLY),
       "GET %s accepting OCI" % path)
    r = _get(p, path, OCI_ONLY)
    eq(r.header("X-Regproxy-Cache"), "HIT", "second GET accepting OCI")
    mk = reg.mark()
    r = _get(p, path, DOCKER_ONLY)
    check(not (r.status == 200 and r.header("Content-Type") == OCI_ONLY),
          "a client accepting only %s got the cached OCI manifest: %r" % (DOCKER_ONLY, r))
    check(r.header("X-Regproxy-Cache") != "HIT", "X-Regproxy-Cache HIT for an Accept the "
          "cached media type does not match: %r" % r)
    check(_upstream(reg, mk, path, 1), "no upstream request for an Accept the cached manifest "
          "does not satisfy")
    r = _get(p, "/v2/ns/multi/manifests/" + digest, DOCKER_ONLY)
    check(not (r.status == 200 and r.header("X-Regproxy-Cache") == "HIT"),
          "by digest, a client accepting only %s got the cached OCI manifest from cache: %r"
          % (DOCKER_ONLY, r))


FAKE_REG = "registry.fake.test"
FAKE_REPO = "ns/multi"


def _tag_path(cache_dir, tag):
    h = hashlib.sha256(("%s\0%s\0%s\0" % (FAKE_REG, FAKE_REPO, tag)).encode()).hexdigest()
    return os.path.join(cache_dir, "tags", h[:2], h)


def _rewrite_tag_time(cache_dir, tag, when):
    """Rewrites the cached tag file as the cache writes it, with fetched time `when`."""
    with open(_tag_path(cache_dir, tag), "rb") as f:
        digest = f.read().split(b" ")[3].decode()
    body = "RPTAG 1 %d %s %d %d %d\n%s%s%s\n" % (when, digest, len(FAKE_REG), len(FAKE_REPO),
                                                   len(tag), FAKE_REG, FAKE_REPO, tag)
    data = body.encode() + hashlib.sha256(body.encode()).hexdigest().encode() + b"\n"
    with open(_tag_path(cache_dir, tag), "wb") as f:
        f.write(data)


def _restart_with_tag_time(t, when, cache=None):
    fr = t.s.fakereg
    p = t.proxy(registries=[fr.conf()], cache=cache or {})
    path = "/v2/%s/manifests/v1" % FAKE_REPO
    eq(_get(p, path).status, 200, "first GET of %s" % path)
    p.stop()
    _rewrite_tag_time(p.cache_dir, "v1", when)
    p.start()
    return fr, p, path


def test_tag_time_in_the_future(t):
    fr, p, path = _restart_with_tag_time(t, int(time.time()) + 10 * 365 * 86400,
                                         cache={"tag_ttl": "1s"})
    time.sleep(2)  # past tag_ttl
    mark = len(fr.requests())
    r = _get(p, path)
    eq(r.status, 200, "GET of a tag fetched 'in 10 years'")
    ups = [x for x in fr.requests(since=mark) if "/manifests/" in x.get("path", "")]
    check(len(ups) >= 1, "a tag past its 1s tag_ttl, its fetched time ahead of the clock, is "
          "revalidated upstream (cache=%s, upstream manifest requests %d)"
          % (r.header("x-regproxy-cache"), len(ups)))


def test_tag_time_int64_max(t):
    fr, p, path = _restart_with_tag_time(t, 9223372036854775807)
    try:
        r = _get(p, path)
        eq(r.status, 200, "GET of a tag fetched at INT64_MAX")
    finally:
        time.sleep(0.5)
        check(p.proc.alive(), "proxy alive after a tag lookup (log: %s)" % lib.tail(p.log, 8))


def test_tag_file_stays_readable_by_earlier_versions(t):
    """Tags came to be written as RPTAG 2 files with their manifest's type, an image's as
    well as an artifact's; the previous release reads a version 2 file as damaged, deletes
    it (a warning per tag) and has lost the tag, which an offline registry cannot get back.
    Only a type the proxy's list does not name is worth recording (revalidations name it),
    so only such tags take the new format."""
    fr = t.s.fakereg
    p = t.proxy(registries=[fr.conf(tag_ttl="1s")])
    path = "/v2/%s/manifests/v1" % FAKE_REPO

    def head_of(tag, repo=FAKE_REPO):
        h = hashlib.sha256(("%s\0%s\0%s\0" % (FAKE_REG, repo, tag)).encode()).hexdigest()
        with open(os.path.join(p.cache_dir, "tags", h[:2], h), "rb") as f:
            return f.read().split(b"\n")[0]
    eq(_get(p, path).status, 200, "GET of %s" % path)
    check(head_of("v1").startswith(b"RPTAG 1 "), "an image's tag file: %r" % head_of("v1"))
    time.sleep(2.2)  # past tag_ttl (tag ages are whole seconds): revalidated, written again
    r = _get(p, path)
    eq((r.status, r.header("X-Regproxy-Cache")), (200, "REVALIDATED"), "GET past tag_ttl")
    check(head_of("v1").startswith(b"RPTAG 1 "),
          "an image's tag file after its revalidation: %r" % head_of("v1"))
    art = "application/vnd.oci.artifact.manifest.v1+json"
    eq(_get(p, "/v2/mode/artifact/%s/manifests/v1" % FAKE_REPO, art).status, 200,
       "GET of an artifact tag")
    got = head_of("v1", "mode/artifact/" + FAKE_REPO)
    check(got.startswith(b"RPTAG 2 ") and got.endswith(b" %d" % len(art)),
          "an artifact's tag file records its type: %r" % got)
