# SPDX-License-Identifier: Apache-2.0
"""Cached content is served per (registry, repository). The same name ns/same:v1 holds
different images on the anon and basic registries: each prefix route gets its own
manifest and blobs. A blob cached through one repository is served for another repository
of the same registry only after upstream confirmed (a HEAD) that the repository has it; a
repository (or registry) that does not have it upstream gets 404 BLOB_UNKNOWN although the
bytes are in the cache, and a manifest digest cached for one registry is not served for
another. A download of a digest from one registry is not joined by a client of another
whose registry gives the digest another length."""
import os
import threading

import lib
import rawup
from lib import check, eq

ANON = "registry.anon.test"
BASIC = "registry.basic.test"


def _ups(reg, mark, needle, n=0):
    """(method, status) of upstream requests whose path has needle, since mark (waiting for
    n of them: docker-registry logs a request when it has ended)."""
    return lib.settle(lambda: [(m, st) for m, p, st in reg.since(mark) if needle in p], n)


def _blob_404(p, path, what):
    r = p.get(path)
    eq(r.status, 404, "%s: GET %s (body %r)" % (what, path, r.body[:200]))
    eq(r.error_codes(), ["BLOB_UNKNOWN"], "%s: error codes" % what)
    st, h, body = p.raw("HEAD", path)
    eq((st, body), (404, b""), "%s: HEAD %s" % (what, path))


def test_same_name_two_registries(t):
    s = t.s
    anon, basic = s.anon_registry, s.basic_registry
    a_img = s.push(anon, "oci:%s:v1" % s.images["multi"]["dir"], "ns/same:v1")
    b_img = s.push(basic, "oci:%s:t00" % s.images["tags"]["dir"], "ns/same:v1")
    check(a_img["digest"] != b_img["digest"], "fixture: both ns/same:v1 have one digest")
    p = t.proxy()

    for name, reg, img in ((ANON, anon, a_img), (BASIC, basic, b_img)):
        path = "/v2/%s/ns/same/manifests/v1" % name
        r = p.get(path, headers={"Accept": lib.ACCEPT_ALL})
        eq((r.status, lib.sha256(r.body)), (200, img["digest"]), "GET %s" % path)
        _, tags = t.pull(p, "%s/ns/same:v1" % name)
        eq(tags.get("v1"), img["digest"], "pull of %s/ns/same:v1" % name)
        r = p.get(path, headers={"Accept": lib.ACCEPT_ALL})
        eq((r.status, lib.sha256(r.body), r.header("X-Regproxy-Cache")),
           (200, img["digest"], "HIT"), "GET %s again" % path)
    # Each registry's image, by digest, through the other registry's route: not served from
    # the cache (upstream says it does not know it).
    for name, reg, img in ((ANON, anon, b_img), (BASIC, basic, a_img)):
        path = "/v2/%s/ns/same/manifests/%s" % (name, img["digest"])
        r = p.get(path, headers={"Accept": lib.ACCEPT_ALL})
        check(r.status == 404 and r.error_codes() == ["MANIFEST_UNKNOWN"],
              "GET %s (a digest only the other registry has, cached through it): expected "
              "404 MANIFEST_UNKNOWN, got %d %s %r" % (path, r.status,
                                                       r.header("X-Regproxy-Cache"), r.body[:200]))

    a_layers = lib.image_manifests(anon, "ns/same:v1")[0]["layers"]
    layer = a_layers[1]["digest"]  # cached via registry.anon.test/ns/same by the pull
    check(len(lib.cache_files(p.cache_dir, "blobs")) > 0 and
          os.path.isfile(lib.cache_path(p.cache_dir, "blobs", layer)),
          "layer %s not in the cache after the pull" % layer)

    # Same registry, another repository that has the blob upstream: one HEAD, then hits.
    path = "/v2/%s/ns/multi/blobs/%s" % (ANON, layer)
    mk = anon.mark()
    r = lib.stream_get(p.port, path)
    eq((r.status, r.complete, r.digest), (200, True, layer),
       "GET %s (cached via ns/same, upstream has it in ns/multi too)" % path)
    eq(_ups(anon, mk, "/v2/ns/multi/blobs/" + layer, 1), [("HEAD", 200)],
       "upstream requests to confirm ns/multi has %s before serving it from cache" % layer)
    mk = anon.mark()
    r = lib.stream_get(p.port, path)
    eq((r.status, r.digest, r.header("x-regproxy-cache")), (200, layer, "HIT"),
       "GET %s once confirmed" % path)
    eq(_ups(anon, mk, "/blobs/" + layer), [], "upstream requests for a confirmed, linked blob")

    # Same registry, a repository that does not have it: 404 although the bytes are cached.
    mk = anon.mark()
    _blob_404(p, "/v2/%s/ns/multiarch/blobs/%s" % (ANON, layer),
              "a cached blob asked for through a repository that does not have it upstream")
    got = _ups(anon, mk, "/v2/ns/multiarch/blobs/" + layer, 2)
    check(got and all(m == "HEAD" for m, _ in got),
          "upstream should have been asked (HEAD only) whether ns/multiarch has %s; saw %s"
          % (layer, got))
    # Another registry, same repository name, without that blob upstream.
    mk = basic.mark()
    _blob_404(p, "/v2/%s/ns/same/blobs/%s" % (BASIC, layer),
              "a blob cached for %s/ns/same asked for through %s/ns/same" % (ANON, BASIC))
    got = _ups(basic, mk, "/blobs/" + layer, 2)
    check(got and all(m == "HEAD" for m, _ in got),
          "the basic registry should have been asked (HEAD only); saw %s" % got)
    # And the negative answers did not link anything: still 404 the second time.
    _blob_404(p, "/v2/%s/ns/multiarch/blobs/%s" % (ANON, layer), "second ask via ns/multiarch")


def test_manifest_type_not_rewritten_by_another_registry(t):
    """A manifest's bytes name their media type (mediaType): another registry answering the
    same bytes under another Content-Type (a hostile one, or one that says application/json
    for everything) does not change what the first registry's clients are told it is."""
    reg = t.s.anon_registry
    digest = reg.pushed["ns/multi-v2s2:v1"]["digest"]
    path = "/v2/%s/ns/multi-v2s2/manifests/%s" % (ANON, digest)
    want = "application/vnd.docker.distribution.manifest.v2+json"
    bad = "application/vnd.oci.image.manifest.v1+json"
    body = []

    def h(r):
        if r.path == "/v2/ns/x/manifests/" + digest:
            r.answer(body[0], bad, digest)
        else:
            r.send(404, b"")
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[reg.conf(), up.conf()])
    r = p.get(path, headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, r.header("Content-Type")), (200, want), "GET %s" % path)
    body.append(r.body)
    r = p.get("/v2/raw.test/ns/x/manifests/%s" % digest, headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, r.header("Content-Type")), (200, want),
       "the same bytes from a registry that calls them %s" % bad)
    r = p.get(path, headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, r.header("X-Regproxy-Cache"), r.header("Content-Type")), (200, "HIT", want),
       "GET %s again, after the other registry answered it" % path)


def test_download_of_another_length_not_joined(t):
    """A digest being downloaded from one registry, which announced the wrong length (a
    broken registry, or a hostile one), and asked meanwhile from another registry that
    confirms it with the right one: the second client used to join the first download, got
    its length in the head, then a cut when the digest failed. It is passed through from its
    own registry instead, whole and verified; the broken download still caches nothing."""
    anon = t.s.anon_registry
    layer = lib.image_manifests(anon, "ns/multi:v1")[0]["layers"][0]
    digest, size = layer["digest"], layer["size"]
    body = anon.client().get("/v2/ns/multi/blobs/" + digest).body
    eq(lib.sha256(body), digest, "the layer straight from upstream")
    reached, release = threading.Event(), threading.Event()

    def handler(r):
        if r.path == "/v2/":
            r.send(200, b"{}", [("Content-Type", "application/json")])
        elif r.path == "/v2/ns/bad/blobs/" + digest and r.method == "GET":
            # 100 bytes more than the blob, the first bytes, then nothing until released
            r.raw(("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                   "Content-Length: %d\r\nConnection: close\r\n\r\n" % (size + 100)).encode()
                  + body[:10])
            reached.set()
            release.wait(60)
        else:
            r.send(404, b'{"errors":[{"code":"BLOB_UNKNOWN","message":"unknown"}]}',
                   [("Content-Type", "application/json")])
        return False
    up = rawup.RawUpstream(t, handler)
    t.defer(release.set)
    p = t.proxy(registries=[anon.conf(), up.conf()])
    first = {}
    th = threading.Thread(target=lambda: first.update(
        s=lib.stream_get(p.port, "/v2/raw.test/ns/bad/blobs/" + digest, timeout=60)),
        daemon=True)
    th.start()
    check(reached.wait(30), "the proxy never asked the broken registry for the blob")
    s = lib.stream_get(p.port, "/v2/%s/ns/multi/blobs/%s" % (ANON, digest), timeout=15)
    eq((s.status, s.length, s.complete, s.digest), (200, size, True, digest),
       "GET from the good registry while the broken one's download of the digest runs "
       "(%r)" % s)
    release.set()
    th.join(60)
    f = first.get("s")
    check(f is not None and not f.complete, "the broken registry's client must not get a "
          "complete answer: %r" % f)
    lib.wait_until(lambda: not lib.cache_files(p.cache_dir, "tmp"), 10,
                   "the broken download's temp file to go")
    lib.check_cache_store(p.cache_dir)
