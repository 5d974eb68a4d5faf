# SPDX-License-Identifier: Apache-2.0
"""A tag's cached digest must not depend on which client's Accept filled it. Registries
narrow their answer to a client's Accept: docker-registry answers a tag that is a Docker
manifest list, for a client that does not name lists, with its linux/amd64 image, and a
schema 2 image, for one that names no schema 2 type (curl's */*), with signed schema 1. The
proxy recorded tag -> that digest and served it as a HIT to every client: the amd64 image to
arm64 nodes, schema 1 to containerd. Now such answers are passed on and cached by digest,
but the tag records only what a client naming lists and indexes gets (and revalidates with
that list); a tag upstream answers 404 to is forgotten, so an outage cannot serve it
stale."""
import json
import os
import time

import lib
from lib import check, eq

LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
V2 = "application/vnd.docker.distribution.manifest.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI = "application/vnd.oci.image.manifest.v1+json"
ALL = ", ".join([V2, LIST, OCI, OCI_INDEX])  # what docker sends
CONTAINERD = ALL + ", */*"


def _docker_list_registry(t):
    s = t.s
    reg = t.private_registry("anon")
    src = "oci:%s:v1" % s.images["multiarch"]["dir"]
    children = []
    for arch in ("amd64", "arm64"):
        s.skopeo(["copy", "-q", "--override-arch", arch, "--format", "v2s2",
                  "--dest-cert-dir", s.ca["certdir"], "--dest-no-creds", src,
                  "docker://%s/ns/ml:%s" % (reg.hostport, arch)], timeout=300)
        r = reg.client(None).manifest("ns/ml", arch, accept=V2)
        eq((r.status, r.header("Content-Type")), (200, V2), "child %s upstream" % arch)
        children.append({"mediaType": V2, "size": len(r.body), "digest": lib.sha256(r.body),
                         "platform": {"architecture": arch, "os": "linux"}})
    body = json.dumps({"schemaVersion": 2, "mediaType": LIST,
                       "manifests": children}).encode()
    r = lib.request(reg.url + "/v2/ns/ml/manifests/v1", "PUT", {"Content-Type": LIST}, body,
                    ca=s.ca["ca.crt"])
    eq(r.status, 201, "PUT of the manifest list: %r" % (r,))
    return reg, lib.sha256(body), children[0]["digest"]


def test_narrowed_answers_do_not_become_the_tag(t):
    reg, list_digest, amd64 = _docker_list_registry(t)
    path = "/v2/ns/ml/manifests/v1"
    c = reg.client(None)
    eq(lib.sha256(c.manifest("ns/ml", "v1", accept=ALL).body), list_digest, "upstream, ALL")
    eq(lib.sha256(c.manifest("ns/ml", "v1", accept=V2).body), amd64, "upstream, V2 only")
    p = t.proxy(registries=[reg.conf()], cache={"tag_ttl": "10m"})
    # An old client naming only schema 2 first: it gets what upstream gives it.
    r = p.get(path, headers={"Accept": V2})
    eq((r.status, lib.sha256(r.body)), (200, amd64), "V2-only client")
    for n in (1, 2):
        r = p.get(path, headers={"Accept": ALL})
        eq((r.status, r.header("Content-Type"), lib.sha256(r.body)), (200, LIST, list_digest),
           "list-naming client after a V2-only one (%d)" % n)
        r = p.get(path, method="HEAD", headers={"Accept": CONTAINERD})
        eq(r.header("Docker-Content-Digest"), list_digest, "HEAD by tag, as containerd (%d)" % n)
        eq(r.header("X-Regproxy-Cache"), "HIT", "HEAD by tag, as containerd (%d)" % n)
        r = p.get(path, headers={"Accept": V2})
        eq((r.status, lib.sha256(r.body)), (200, amd64), "V2-only client again (%d)" % n)


def test_curl_answer_is_not_the_tag(t):
    reg = t.s.anon_registry
    want = reg.pushed["ns/multi-v2s2:v1"]["digest"]
    path = "/v2/ns/multi-v2s2/manifests/v1"
    p = t.proxy(registries=[reg.conf()], cache={"tag_ttl": "10m"})
    r = p.get(path, headers={"Accept": "*/*"})
    eq(r.status, 200, "curl's */*")
    r = p.get(path, headers={"Accept": CONTAINERD})
    eq((r.status, r.header("Content-Type"), lib.sha256(r.body)), (200, V2, want),
       "containerd's Accept after curl's")


def test_tag_deleted_upstream_not_served_stale(t):
    s = t.s
    reg = t.private_registry("anon", images={
        "ns/del:v1": "oci:%s:v1" % s.images["multi"]["dir"]})
    d = reg.pushed["ns/del:v1"]["digest"]
    p = t.proxy(registries=[reg.conf(tag_ttl="1s")], cache={"max_stale": "1h"})
    path = "/v2/ns/del/manifests/v1"
    r = p.get(path, headers={"Accept": ALL})
    eq((r.status, lib.sha256(r.body)), (200, d), "first GET")
    r = lib.request(reg.url + "/v2/ns/del/manifests/" + d, "DELETE", ca=s.ca["ca.crt"])
    eq(r.status, 202, "DELETE upstream: %r" % (r,))
    time.sleep(2.2)
    r = p.get(path, headers={"Accept": ALL})
    eq(r.status, 404, "GET past tag_ttl after the delete")
    reg.stop()
    r = p.get(path, headers={"Accept": ALL})
    check(r.status != 200, "deleted tag served while upstream is down: %s %s"
          % (r.status, r.header("X-Regproxy-Cache")))


def test_tag_moved_followed_by_head(t):
    """containerd resolves a tag by HEAD, then GETs the digest. After the tag moved
    upstream, each HEAD past tag_ttl cost two upstream HEADs and the tag was never
    refreshed. Now the revalidation's HEAD answers it and records the tag it named, so once
    the new manifest is cached (the GET by digest) the next HEAD within tag_ttl is a hit."""
    s = t.s
    reg = t.private_registry("anon", images={
        "ns/mv:v1": "oci:%s:v1" % s.images["multi"]["dir"]})
    p = t.proxy(registries=[reg.conf(tag_ttl="3s")])  # tag ages are whole seconds
    path = "/v2/ns/mv/manifests/v1"
    eq(p.get(path, headers={"Accept": CONTAINERD}).status, 200, "first GET")
    new = s.push(reg, "oci:%s:t00" % s.images["tags"]["dir"], "ns/mv:v1")["digest"]
    time.sleep(3.5)

    def head_ups():
        mk = reg.mark()
        r = p.get(path, method="HEAD", headers={"Accept": CONTAINERD})
        ups = [m for m, pth, st in lib.settle(lambda: reg.since(mk), 1) if pth == path]
        return r, ups
    r, ups = head_ups()
    eq((r.status, r.header("Docker-Content-Digest"), ups), (200, new, ["HEAD"]),
       "HEAD after the move: one upstream HEAD")
    eq(p.get("/v2/ns/mv/manifests/" + new, headers={"Accept": CONTAINERD}).status, 200,
       "GET by digest")
    r, ups = head_ups()
    eq((r.header("Docker-Content-Digest"), r.header("X-Regproxy-Cache"), ups), (new, "HIT", []),
       "HEAD within tag_ttl once the new manifest is cached")


def _ups(reg, mk, path):
    return [m for m, pth, st in lib.settle(lambda: reg.since(mk), 1) if pth == path]


def test_narrow_client_gets_hits(t):
    """A client naming only the image type (old clients, bench/'s load generator) used to
    miss every time once its answers stopped being recorded as tags: the tag is now asked
    upstream with the proxy's own Accept list, so a tag naming one image is a hit for it;
    a tag naming a list costs it one upstream request per pull, as without the proxy."""
    s = t.s
    reg = s.anon_registry
    p = t.proxy(registries=[reg.conf()], cache={"tag_ttl": "10m"})
    path = "/v2/ns/multi-v2s2/manifests/v1"
    want = reg.pushed["ns/multi-v2s2:v1"]["digest"]
    mk = reg.mark()
    r = p.get(path, headers={"Accept": V2})
    eq((r.status, lib.sha256(r.body), r.header("X-Regproxy-Cache")), (200, want, "MISS"),
       "V2-only client, first")
    r = p.get(path, headers={"Accept": V2})
    eq((r.status, lib.sha256(r.body), r.header("X-Regproxy-Cache")), (200, want, "HIT"),
       "V2-only client, second")
    eq(_ups(reg, mk, path), ["GET"], "upstream requests for the two")
    lreg, list_digest, amd64 = _docker_list_registry(t)
    p2 = t.proxy(registries=[lreg.conf()], cache={"tag_ttl": "10m"})
    lpath = "/v2/ns/ml/manifests/v1"
    mk = lreg.mark()
    r = p2.get(lpath, headers={"Accept": V2})
    eq((r.status, lib.sha256(r.body)), (200, amd64), "V2-only client on a list, first")
    eq(_ups(lreg, mk, lpath), ["GET", "GET"], "upstream: the tag's answer, then the client's")
    mk = lreg.mark()
    r = p2.get(lpath, headers={"Accept": V2})
    eq((r.status, lib.sha256(r.body)), (200, amd64), "V2-only client on a list, second")
    eq(_ups(lreg, mk, lpath), ["GET"], "upstream: the client's answer only")
    r = p2.get(lpath, headers={"Accept": ALL})
    eq((r.status, lib.sha256(r.body), r.header("X-Regproxy-Cache")), (200, list_digest, "HIT"),
       "a list-naming client after them")
    # Past tag_ttl: the revalidation confirms the list, then the client's own answer; not the
    # list asked for a second time.
    p3 = t.proxy(registries=[lreg.conf(tag_ttl="1s")])
    eq(lib.sha256(p3.get(lpath, headers={"Accept": V2}).body), amd64, "V2-only client, p3")
    time.sleep(1.5)
    mk = lreg.mark()
    r = p3.get(lpath, headers={"Accept": V2})
    eq((r.status, lib.sha256(r.body)), (200, amd64), "V2-only client past tag_ttl")
    eq(_ups(lreg, mk, lpath), ["HEAD", "GET"], "upstream: the revalidation, then the client's")


def test_refused_tag_answer_retried_with_the_clients_accept(t):
    """A registry refuses a manifest whose type the Accept list does not name (distribution
    answers 404): a narrow client's tag asked with the proxy's list can be refused where the
    client's own Accept is answered (an OCI artifact manifest for oras, say). It is asked
    again with the client's Accept."""
    fr = t.s.fakereg
    art = "application/vnd.oci.artifact.manifest.v1+json"
    path = "/v2/mode/artifact/ns/multi/manifests/v1"
    eq(fr.client().get(path, headers={"Accept": art}).status, 200, "upstream, client's Accept")
    p = t.proxy(registries=[fr.conf()])
    r = p.get(path, headers={"Accept": art})
    eq((r.status, r.header("Content-Type")), (200, art), "through the proxy")


def test_narrow_client_after_the_tags_manifest_left_the_cache(t):
    """An unchanged revalidation skips the proxy's list only when the tag's manifest is
    still cached: else the tag was refreshed to a manifest nobody had, and every request
    within tag_ttl went HEAD + GET upstream."""
    lreg, list_digest, amd64 = _docker_list_registry(t)
    p = t.proxy(registries=[lreg.conf(tag_ttl="2s")])
    lpath = "/v2/ns/ml/manifests/v1"
    eq(lib.sha256(p.get(lpath, headers={"Accept": V2}).body), amd64, "first")
    p.stop()
    os.unlink(lib.cache_path(p.cache_dir, "manifests", list_digest))
    p.start()
    time.sleep(2.5)
    eq(p.get(lpath, headers={"Accept": V2}).status, 200, "past tag_ttl")
    mk = lreg.mark()
    eq(lib.sha256(p.get(lpath, headers={"Accept": V2}).body), amd64, "within tag_ttl")
    eq(_ups(lreg, mk, lpath), ["GET"], "upstream for a fresh list tag: the client's GET only")


def _artifact_tag_rounds(t, method):
    """Three requests of an artifact tag (Accept: the artifact type only), each past
    tag_ttl: [(status, Content-Type)]."""
    art = "application/vnd.oci.artifact.manifest.v1+json"
    path = "/v2/mode/artifact/ns/multi/manifests/v1"
    p = t.proxy(registries=[t.s.fakereg.conf(tag_ttl="1s")])
    got = []
    for i in range(3):
        r = p.get(path, method=method, headers={"Accept": art})
        got.append((r.status, r.header("Content-Type")))
        time.sleep(2.2)
    eq(got, [(200, art)] * 3, "%ss of the artifact tag, past tag_ttl each time" % method)


def test_artifact_tag_survives_revalidation(t):
    """A tag recorded from an answer only the client's own Accept gets (an OCI artifact
    manifest, which a registry refuses to the proxy's list) was revalidated with the proxy's
    list past tag_ttl: upstream's 404 to that list deleted the tag and reached the client,
    for a tag that exists."""
    _artifact_tag_rounds(t, "GET")


def test_artifact_tag_head_only_survives_revalidation(t):
    """As above for a client that only HEADs the tag (oras resolving it): the tag was
    recorded from the HEAD with the manifest's type unknown to the cache, so the
    revalidation could not name it, and upstream's 404 to the proxy's list deleted the tag
    and reached the client."""
    _artifact_tag_rounds(t, "HEAD")


def test_artifact_tag_head_only_one_upstream_head(t):
    """A HEAD-only client of an artifact tag: the tag is recorded with its type, so past
    tag_ttl it is revalidated with one HEAD naming that type. Unrecorded, each HEAD was a
    miss asked with the proxy's list (404) and then with the client's: two."""
    art = "application/vnd.oci.artifact.manifest.v1+json"
    path = "/v2/mode/artifact/ns/multi/manifests/v1"
    fr = t.s.fakereg
    p = t.proxy(registries=[fr.conf(tag_ttl="1s")])
    eq(p.get(path, method="HEAD", headers={"Accept": art}).status, 200, "first HEAD")
    time.sleep(2.2)  # past tag_ttl (tag ages are whole seconds)
    mark = fr.mark()
    r = p.get(path, method="HEAD", headers={"Accept": art})
    eq((r.status, r.header("Content-Type")), (200, art), "HEAD past tag_ttl")
    heads = [x for x in fr.requests(mark[0]) if x["method"] == "HEAD" and x["path"] == path
             and "Authorization" in x.get("headers", {})]
    eq(len(heads), 1, "upstream HEADs for a HEAD past tag_ttl")


def test_artifact_tag_revalidated_after_its_manifest_left_the_cache(t):
    """An artifact tag whose manifest had left the cache (evicted, or its file lost) was
    revalidated with the proxy's list alone, the type it was cached as being gone with the
    manifest: upstream's 404 to that list deleted the tag and reached the client, for a tag
    that exists. The tag record keeps the type now."""
    art = "application/vnd.oci.artifact.manifest.v1+json"
    path = "/v2/mode/artifact/ns/multi/manifests/v1"
    fr = t.s.fakereg
    p = t.proxy(registries=[fr.conf(tag_ttl="1s")])
    r = p.get(path, headers={"Accept": art})
    eq((r.status, r.header("Content-Type")), (200, art), "first GET")
    digest = r.header("Docker-Content-Digest")
    p.stop()
    os.unlink(lib.cache_path(p.cache_dir, "manifests", digest))
    p.start()
    time.sleep(2.2)  # past tag_ttl (tag ages are whole seconds)
    mark = fr.mark()
    r = p.get(path, headers={"Accept": art})
    eq((r.status, r.header("Content-Type"), r.header("Docker-Content-Digest")),
       (200, art, digest), "GET past tag_ttl, the manifest no longer cached")
    # The first request after the restart learns that the registry wants Basic auth (a
    # 401): not counted.
    heads = [x for x in fr.requests(mark[0]) if x["method"] == "HEAD" and x["path"] == path
             and "Authorization" in x.get("headers", {})]
    eq(len(heads), 1, "upstream revalidations")
    check(art in heads[0].get("headers", {}).get("Accept", ""),
          "the revalidation names the tag's type: Accept %r"
          % heads[0].get("headers", {}).get("Accept"))
