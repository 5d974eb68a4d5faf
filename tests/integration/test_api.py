# SPDX-License-Identifier: Apache-2.0
"""The registry API as a client sees it through the proxy: ping, manifests and blobs by
tag and digest (GET/HEAD/Range), tags/list pagination with Link rewriting, referrers, and
upstream errors relayed with the right statuses."""
import email.utils
import hashlib
import json
import re
import time
import urllib.parse

import lib
from lib import check, eq


def _proxy(t):
    s = t.s
    fr = s.fakereg
    regs = [s.token_registry.conf(), s.basic_registry.conf(), s.anon_registry.conf(),
            fr.conf(),
            fr.conf(name="registry.badpw.test", password="not-" + fr.password),
            s.token_registry.conf(name="registry.badtoken.test",
                                  password="not-" + s.sa_password)]
    # The second listener's default is the fake registry (tags pagination by default route).
    return t.proxy(registries=regs, listeners=[{"default": "registry.token.test"},
                                               {"default": "registry.fake.test"}])


def _errors(r, what):
    """The registry error body: {"errors": [{"code": ...}, ...]}; returns the codes."""
    codes = r.error_codes()
    check(codes, "%s: expected a JSON error body {\"errors\":[{\"code\":...}]}, got %d %r"
          % (what, r.status, r.body[:300]))
    return codes


def test_ping(t):
    p = _proxy(t)
    r = p.get("/v2/")
    eq(r.status, 200, "GET /v2/")
    eq(r.header("Docker-Distribution-API-Version"), "registry/2.0",
       "Docker-Distribution-API-Version of GET /v2/")
    st, h, body = p.raw("HEAD", "/v2/")
    eq((st, body), (200, b""), "HEAD /v2/")


_IMF_FIXDATE = re.compile(r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d "
                          r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} "
                          r"\d\d:\d\d:\d\d GMT")


def _dated(value, what):
    """A Date value is an IMF-fixdate (RFC 9110 5.6.7) naming today: a client's cache and
    its clock-skew checks read it."""
    check(value and _IMF_FIXDATE.fullmatch(value), "%s: Date %r is no IMF-fixdate" % (what, value))
    off = abs(email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    check(off < 86400, "%s: Date %r is %d s off this machine's clock" % (what, value, off))


def test_every_answer_carries_a_date(t):
    """RFC 9110 6.6.1: an origin server with a clock sends Date in every answer: the ping,
    a manifest and a blob from the cache (the hot paths), errors, refusals, the admin
    listener's answers."""
    s = t.s
    p = _proxy(t)
    reg = s.token_registry
    m = lib.image_manifests(reg, "ns/multi:v1")[0]
    blob = "/v2/ns/multi/blobs/" + m["layers"][0]["digest"]
    manifest = "/v2/ns/multi/manifests/v1"
    for path in (blob, manifest):
        eq(p.get(path, headers={"Accept": lib.ACCEPT_ALL}).status, 200, "GET %s (to cache it)" % path)
    for method, path, want in (("GET", "/v2/", 200), ("GET", blob, 200), ("HEAD", blob, 200),
                               ("GET", manifest, 200), ("HEAD", manifest, 200),
                               ("GET", "/v2/ns/multi/manifests/no-such-tag", 404),
                               ("GET", "/v2/NOT-A-NAME/tags/list", 400),
                               ("DELETE", manifest, 405)):
        st, h, _ = p.raw(method, path, {"Accept": lib.ACCEPT_ALL})
        eq(st, want, "%s %s" % (method, path))
        _dated(h.get("date"), "%s %s" % (method, path))
    r = p.admin("/healthz")
    eq(r.status, 200, "admin /healthz")
    _dated(r.header("Date"), "admin /healthz")


def test_manifests_by_tag_and_digest(t):
    s = t.s
    p = _proxy(t)
    reg = s.token_registry
    up = reg.client("pull")
    for ref in ("ns/multi:v1", "ns/multi-v2s2:v1", "ns/multiarch:v1"):
        repo, tag = ref.split(":")
        digest = reg.pushed[ref]["digest"]
        for r_ in (tag, digest):
            path = "/v2/%s/manifests/%s" % (repo, r_)
            u = up.manifest(repo, r_)
            eq(u.status, 200, "upstream GET %s" % path)
            r = p.get(path, headers={"Accept": lib.ACCEPT_ALL})
            what = "GET %s" % path
            eq(r.status, 200, what)
            eq(lib.sha256(r.body), digest, "%s body digest" % what)
            for h in ("Content-Type", "Content-Length", "Docker-Content-Digest"):
                eq(r.header(h), u.header(h), "%s header %s (upstream's)" % (what, h))
            st, hd, body = p.raw("HEAD", path, {"Accept": lib.ACCEPT_ALL})
            eq((st, body), (200, b""), "HEAD %s (status, body)" % path)
            for h in ("Content-Type", "Content-Length", "Docker-Content-Digest"):
                eq(hd.get(h.lower()), u.header(h), "HEAD %s header %s" % (path, h))
    # Children of the index by digest, too.
    idx = json.loads(reg.pushed["ns/multiarch:v1"]["body"])
    for d in idx["manifests"]:
        r = p.get("/v2/ns/multiarch/manifests/" + d["digest"],
                  headers={"Accept": lib.ACCEPT_ALL})
        eq((r.status, lib.sha256(r.body), r.header("Content-Type")),
           (200, d["digest"], d["mediaType"]), "platform manifest %s" % d["digest"])


def test_blobs_head_get_range(t):
    s = t.s
    p = _proxy(t)
    reg = s.token_registry
    m = lib.image_manifests(reg, "ns/multi:v1")[0]
    cold, warm = m["layers"][2], m["layers"][1]
    # Range on a blob the proxy has never fetched.
    full = reg.client().get("/v2/ns/multi/blobs/" + cold["digest"]).body
    eq(lib.sha256(full), cold["digest"], "upstream blob")
    path = "/v2/ns/multi/blobs/" + cold["digest"]
    r = p.get(path, headers={"Range": "bytes=10-99"})
    eq(r.status, 206, "cold ranged GET %s" % path)
    eq(r.header("Content-Range"), "bytes 10-99/%d" % cold["size"], "cold Content-Range")
    eq(r.header("Content-Length"), "90", "cold ranged Content-Length")
    check(r.body == full[10:100], "cold ranged bytes differ from bytes 10..99 of the blob")
    # HEAD: no body, right length, digest header.
    path = "/v2/ns/multi/blobs/" + warm["digest"]
    st, h, body = p.raw("HEAD", path)
    eq((st, h.get("content-length"), body), (200, str(warm["size"]), b""), "HEAD " + path)
    eq(h.get("docker-content-digest"), warm["digest"], "HEAD Docker-Content-Digest")
    r = p.get(path)
    eq((r.status, lib.sha256(r.body), r.header("Content-Length")),
       (200, warm["digest"], str(warm["size"])), "GET " + path)
    eq(r.header("Docker-Content-Digest"), warm["digest"], "GET Docker-Content-Digest")
    # Now cached: HEAD, Range (several shapes) from the cache.
    blob = r.body
    st, h, body = p.raw("HEAD", path)
    eq((st, h.get("content-length"), body), (200, str(warm["size"]), b""), "warm HEAD")
    for rng, lo, hi in (("bytes=10-99", 10, 99), ("bytes=0-0", 0, 0),
                        ("bytes=%d-" % (warm["size"] - 5), warm["size"] - 5, warm["size"] - 1),
                        ("bytes=-7", warm["size"] - 7, warm["size"] - 1)):
        r = p.get(path, headers={"Range": rng})
        eq(r.status, 206, "warm GET Range: " + rng)
        eq(r.header("Content-Range"), "bytes %d-%d/%d" % (lo, hi, warm["size"]),
           "Content-Range for " + rng)
        check(r.body == blob[lo:hi + 1], "bytes for Range: %s" % rng)
    r = p.get(path, headers={"Range": "bytes=%d-" % (warm["size"] + 10)})
    eq(r.status, 416, "Range past the end")
    # Unknown blob.
    r = p.get("/v2/ns/multi/blobs/sha256:" + "0" * 64)
    eq(r.status, 404, "unknown blob")
    eq(_errors(r, "unknown blob"), ["BLOB_UNKNOWN"], "error code of an unknown blob")


def _link(r):
    """The next URL of a Link header as (path, {query}) or None."""
    h = r.header("Link")
    if not h:
        return None
    check(h.startswith("<") and 'rel="next"' in h, "malformed Link header %r" % h)
    u = urllib.parse.urlsplit(h[1:h.index(">")])
    return u.path, urllib.parse.parse_qs(u.query), h


def _walk_tags(t, p, first, listener, want_path, want_ns=None):
    tags = []
    target = first
    pages = 0
    while target:
        r = p.get(target, listener=listener)
        eq(r.status, 200, "GET %s" % target)
        page = r.json()["tags"]
        check(len(page) <= 5, "page %s has %d tags (n=5)" % (target, len(page)))
        tags += page
        pages += 1
        check(pages <= 10, "more than 10 pages following Links")
        nxt = _link(r)
        if not nxt:
            break
        path, q, raw = nxt
        eq(path, want_path, "path of Link %s" % raw)
        eq(q.get("n"), ["5"], "n in Link %s" % raw)
        eq(q.get("last"), [page[-1]], "last in Link %s" % raw)
        if want_ns:
            eq(q.get("ns"), [want_ns], "ns kept in Link %s" % raw)
        target = raw[1:raw.index(">")]
        if target.startswith("http"):
            u = urllib.parse.urlsplit(target)
            eq(u.netloc, "127.0.0.1:%d" % p.ports[listener], "absolute Link points at proxy")
            target = u.path + "?" + u.query
    eq(tags, ["t%02d" % i for i in range(lib.NTAGS)], "all tags following Links from %s" % first)
    eq(pages, 5, "pages of 5 tags")


def test_tags_links_only_the_next_page(t):
    """Of an upstream Link with several link-values over two lines, the client gets only the
    next page's, rewritten: no foreign URL or other parameter passes through."""
    p = _proxy(t)
    _walk_tags(t, p, "/v2/registry.fake.test/mode/tags-links/ns/tags/tags/list?n=5", 0,
               "/v2/registry.fake.test/mode/tags-links/ns/tags/tags/list")
    r = p.get("/v2/registry.fake.test/mode/tags-links/ns/tags/tags/list?n=5")
    eq(r.header("Link"), '</v2/registry.fake.test/mode/tags-links/ns/tags/tags/list'
       '?last=t04&n=5>; rel="next"', "the rewritten Link")
    # Upstream's ns= would route the client's next page to another registry, or repeat the
    # client's own ns= (a 400): the ns is the client's, not upstream's.
    _walk_tags(t, p, "/v2/mode/tags-links/ns/tags/tags/list?n=5&ns=registry.fake.test", 0,
               "/v2/mode/tags-links/ns/tags/tags/list", want_ns="registry.fake.test")


def test_tags_opaque_paging(t):
    """A registry that pages with its own token (older Quay's next_page) gets it back when
    the client follows the Link: every tag once, no page repeated."""
    fr = t.s.fakereg
    p = _proxy(t)
    mark = fr.mark()
    target, tags, pages = "/v2/registry.fake.test/mode/tags-opaque/ns/tags/tags/list?n=7", [], 0
    while target:
        r = p.get(target)
        eq(r.status, 200, "GET %s" % target)
        tags += r.json()["tags"]
        pages += 1
        check(pages <= 6, "more than 6 pages of 7 tags: the token is not forwarded")
        h = r.header("Link")
        target = h[1:h.index(">")] if h else None
        if target:
            check("next_page=" in target, "Link %r keeps the token" % h)
    eq(tags, ["t%02d" % i for i in range(lib.NTAGS)], "all tags, in order, once")
    eq(pages, 4, "pages of 7 of %d tags" % lib.NTAGS)
    ups = [x for x in fr.requests(mark[0]) if "/tags/list" in x["path"] and x.get("status") == 200]
    eq(len(ups), 4, "upstream tags/list requests")


def test_tags_paged_by_an_opaque_last(t):
    """Amazon ECR pages tags lists by a last= that is no tag but a token of its own (base64,
    '+', '/' and '=' percent-encoded), in an absolute Link. The proxy kept that Link, then
    refused the page it names (400 PAGINATION_NUMBER_INVALID: last must be a tag), so skopeo
    list-tags, crane ls and oras repo tags failed on the second page of such a registry."""
    fr = t.s.fakereg
    p = _proxy(t)
    name = "registry.fake.test/mode/tags-ecr/ns/tags"
    mark = fr.mark()
    target, tags, pages = "/v2/%s/tags/list" % name, [], 0
    while target:
        r = p.get(target)
        eq(r.status, 200, "GET %s (%r)" % (target, r.body[:200]))
        tags += r.json()["tags"]
        pages += 1
        check(pages <= 4, "more than 4 pages of 10 tags: the token is not forwarded")
        h = r.header("Link")
        target = h[1:h.index(">")] if h else None
        if target:
            check(target.startswith("/v2/%s/tags/list?last=" % name) and "%2F" in target,
                  "Link %r: the proxy's path, the token as upstream wrote it" % h)
    eq(tags, ["t%02d" % i for i in range(lib.NTAGS)], "all tags, in order, once")
    eq(pages, 3, "pages of 10 of %d tags" % lib.NTAGS)
    ups = [x for x in fr.requests(mark[0]) if "/tags/list" in x["path"] and
           x.get("status") != 401]  # the first one's challenge
    eq([x.get("status") for x in ups], [200] * 3, "upstream tags/list answers")
    # As a client sees it: skopeo follows the Links.
    r = t.s.skopeo(["list-tags", "--tls-verify=false", "--no-creds",
                    "docker://%s/%s" % (p.hostport, name)], check_rc=False)
    eq(r.returncode, 0, "skopeo list-tags through the proxy (stderr %r)" % r.err[-500:])
    eq(json.loads(r.out)["Tags"], ["t%02d" % i for i in range(lib.NTAGS)], "tags skopeo listed")


def test_tags_pagination_and_links(t):
    s = t.s
    fr = s.fakereg
    p = _proxy(t)
    # prefix route: the Link keeps the prefix
    _walk_tags(t, p, "/v2/registry.fake.test/ns/tags/tags/list?n=5", 0,
               "/v2/registry.fake.test/ns/tags/tags/list")
    # hostport prefix
    _walk_tags(t, p, "/v2/%s/ns/tags/tags/list?n=5" % fr.hostport, 0,
               "/v2/%s/ns/tags/tags/list" % fr.hostport)
    # default route of the second listener
    _walk_tags(t, p, "/v2/ns/tags/tags/list?n=5", 1, "/v2/ns/tags/tags/list")
    # containerd ns=: the Link keeps ns=
    _walk_tags(t, p, "/v2/ns/tags/tags/list?n=5&ns=registry.fake.test", 0,
               "/v2/ns/tags/tags/list", want_ns="registry.fake.test")
    # docker-registry 2.8 does not paginate: all tags at once, no Link
    r = p.get("/v2/ns/tags/tags/list")
    eq(r.status, 200, "tags/list on the token registry")
    eq(sorted(r.json()["tags"]), ["t%02d" % i for i in range(lib.NTAGS)], "token registry tags")
    r = p.get("/v2/ns/tags/tags/list?n=abc", listener=1)
    eq(r.status, 400, "tags/list?n=abc")
    # An empty n or last is not given, as docker-registry reads it: the whole list, upstream's.
    up = s.token_registry.client("pull").get("/v2/ns/tags/tags/list?n=&last=")
    eq(up.status, 200, "upstream tags/list?n=&last=")
    for q in ("?n=&last=", "?n&last", "?last="):
        r = p.get("/v2/ns/tags/tags/list" + q)
        eq((r.status, r.json()), (200, up.json()), "tags/list%s, beside upstream's" % q)


def test_tags_list_of_a_busy_repository(t):
    """docker-registry 2.8 ignores n and answers every tag at once: a repository that CI
    tags at every commit has megabytes of them (40,000 tags, 2.1 MB here). The proxy kept
    tags lists to 1 MiB and answered such a one 502, so skopeo list-tags failed through it
    while working against the registry."""
    p = _proxy(t)
    name = "registry.fake.test/mode/tags-many/ns/tags"
    r = t.s.skopeo(["list-tags", "--tls-verify=false", "--no-creds",
                    "docker://%s/%s" % (p.hostport, name)], check_rc=False)
    eq(r.returncode, 0, "skopeo list-tags through the proxy (stderr %r)" % r.err[-500:])
    tags = json.loads(r.out)["Tags"]
    eq(len(tags), 40000, "tags skopeo listed")
    eq(tags[-1], "ci-39999-" + hashlib.sha1(b"39999").hexdigest(), "the last tag")


def test_referrers_forwarded(t):
    s = t.s
    p = _proxy(t)
    reg = s.token_registry
    d = reg.pushed["ns/multi:v1"]["digest"]
    u = reg.client().get("/v2/ns/multi/referrers/" + d)
    r = p.get("/v2/ns/multi/referrers/" + d)
    eq(r.status, u.status, "referrers status through the proxy vs docker-registry's")
    # docker-registry 2.8 has no referrers API: its plain 404 must not read as NAME_UNKNOWN,
    # which oras-go takes for a missing repository instead of falling back to tags.
    eq(u.status, 404, "docker-registry 2.8 answers referrers")
    eq(_errors(r, "referrers on docker-registry"), ["UNSUPPORTED"], "referrers error code")
    # oras-go encodes artifactType as url.Values does; the registry gets it decoded alike.
    fr = s.fakereg
    mark = fr.mark()
    r = p.get("/v2/registry.fake.test/ns/multi/referrers/" + s.images["multi"]["tags"]["v1"]
              + "?artifactType=application%2Fvnd.example.sig.v1%2Bjson")
    eq(r.status, 200, "referrers with an encoded artifactType")
    qs = [urllib.parse.parse_qs(x["query"]) for x in fr.requests(mark[0])
          if "/referrers/" in x["path"] and x.get("status") == 200]
    eq(qs, [{"artifactType": ["application/vnd.example.sig.v1+json"]}],
       "artifactType as the registry read it")
    # containerd encodes ns the same way: host%3Aport.
    r = p.get("/v2/ns/multi/manifests/v1?ns=" + urllib.parse.quote(fr.hostport, safe=""),
              headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 200, "manifest with ns=%s" % urllib.parse.quote(fr.hostport, safe=""))
    eq(r.header("Docker-Content-Digest"), s.images["multi"]["tags"]["v1"], "digest via ns")
    r = p.get("/v2/registry.fake.test/ns/multi/referrers/" + s.images["multi"]["tags"]["v1"])
    eq(r.status, 200, "referrers on the fake registry")
    eq(r.json().get("manifests"), [], "referrers index")
    eq(r.header("Content-Type"), "application/vnd.oci.image.index.v1+json",
       "referrers Content-Type")


def _walk_referrers(p, first, want_path, want_ns=None):
    """Follows the Link headers from first as oras-go does; returns (digests, pages)."""
    target, got, pages = first, [], 0
    while target:
        r = p.get(target)
        eq(r.status, 200, "GET %s" % target)
        eq(r.header("Content-Type"), "application/vnd.oci.image.index.v1+json",
           "Content-Type of %s" % target)
        got += [d["digest"] for d in r.json()["manifests"]]
        pages += 1
        check(pages <= 6, "more than 6 pages of referrers: the cursor is not forwarded")
        h = r.header("Link")
        if not h:
            break
        target = h[1:h.index(">")]
        u = urllib.parse.urlsplit(target)
        eq(u.path, want_path, "path of the referrers Link %r" % h)
        if want_ns:
            eq(urllib.parse.parse_qs(u.query).get("ns"), [want_ns], "ns kept in Link %r" % h)
    return got, pages


def test_referrers_pages_follow_links(t):
    """A registry that pages referrers names the next page in a Link (OCI distribution spec,
    "Listing Referrers": a Link MUST be included when the list does not fit one answer), with
    parameters of its own. The proxy dropped that Link, and forwarded no paging parameter
    upstream: oras, notation and cosign saw the first page only, and missed the signatures
    and SBOMs on the others."""
    s = t.s
    fr = s.fakereg
    p = _proxy(t)
    d = s.images["multi"]["tags"]["v1"]
    want = ["sha256:" + hashlib.sha256(b"%s referrer %d" % (d.encode(), i)).hexdigest()
            for i in range(5)]
    mark = fr.mark()
    got, pages = _walk_referrers(
        p, "/v2/registry.fake.test/mode/referrers-paged/ns/multi/referrers/" + d,
        "/v2/registry.fake.test/mode/referrers-paged/ns/multi/referrers/" + d)
    eq(got, want, "referrers following the Links (prefix route)")
    eq(pages, 3, "pages of 2 of 5 referrers")
    ups = [x for x in fr.requests(mark[0]) if "/referrers/" in x["path"] and
           x.get("status") == 200]
    eq(len(ups), 3, "upstream referrers requests answered")
    # containerd-style ns=: the Link keeps the client's ns
    got, pages = _walk_referrers(
        p, "/v2/mode/referrers-paged/ns/multi/referrers/%s?ns=registry.fake.test&n=3" % d,
        "/v2/mode/referrers-paged/ns/multi/referrers/" + d, want_ns="registry.fake.test")
    eq((got, pages), (want, 2), "referrers following the Links (ns route, n=3)")



def test_tags_links_ns_for_a_registry_named_with_underscore(t):
    """A containerd client names the registry by its host in ns=; the Link to the next page
    names it by its section name, which may hold a '_' (conf allows it). Following that
    Link must reach the same registry, not be refused as a bad ns."""
    fr = t.s.fakereg
    p = t.proxy(registries=[fr.conf(name="fake_mirror")], listeners=[{"default": None}])
    _walk_tags(t, p, "/v2/ns/tags/tags/list?n=5&ns=%s" % fr.hostport, 0,
               "/v2/ns/tags/tags/list", want_ns="fake_mirror")
    r = p.get("/v2/ns/tags/tags/list?n=5&ns=fake_mirror")
    eq((r.status, len(r.json().get("tags", []))), (200, 5), "ns= naming the registry by name")

def test_upstream_429_relayed(t):
    s = t.s
    p = _proxy(t)
    digest = s.images["multi"]["tags"]["v1"]
    for path in ("/v2/registry.fake.test/mode/429/ns/multi/manifests/v1",
                 "/v2/registry.fake.test/mode/429/ns/multi/manifests/" + digest,
                 "/v2/registry.fake.test/mode/429/ns/multi/blobs/" + digest):
        r = p.get(path, headers={"Accept": lib.ACCEPT_ALL})
        eq(r.status, 429, "GET %s (upstream answers 429)" % path)
        eq(r.header("Retry-After"), "7", "Retry-After of %s" % path)
        eq(_errors(r, path), ["TOOMANYREQUESTS"], "error code of %s" % path)


def test_upstream_5xx_never_404(t):
    s = t.s
    p = _proxy(t)
    digest = s.images["multi"]["tags"]["v1"]
    for mode in ("500", "503"):
        for kind in ("manifests/v1", "manifests/" + digest, "blobs/" + digest,
                     "tags/list"):
            path = "/v2/registry.fake.test/mode/%s/ns/multi/%s" % (mode, kind)
            r = p.get(path, headers={"Accept": lib.ACCEPT_ALL})
            check(500 <= r.status <= 599, "GET %s (upstream answers %s): expected a 5xx, got %r"
                  % (path, mode, r))
            _errors(r, path)


def test_wrong_credentials_never_404(t):
    s = t.s
    p = _proxy(t)
    digest = s.images["multi"]["tags"]["v1"]
    paths = ["/v2/registry.badpw.test/ns/multi/manifests/v1",
             "/v2/registry.badpw.test/ns/multi/blobs/" + digest,
             "/v2/registry.fake.test/mode/401/ns/multi/manifests/v1",
             "/v2/registry.badtoken.test/ns/multi/manifests/v1",
             "/v2/registry.badtoken.test/ns/multi/blobs/" + digest]
    for path in paths:
        r = p.get(path, headers={"Accept": lib.ACCEPT_ALL})
        check(r.status in (403, 502), "GET %s with credentials upstream refuses: expected "
              "502 (or a relayed 403), never 404 or a 401; got %r" % (path, r))
        _errors(r, path)


def test_unknown_manifest_and_repo(t):
    p = _proxy(t)
    r = p.get("/v2/ns/multi/manifests/nosuchtag", headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 404, "unknown tag")
    eq(_errors(r, "unknown tag"), ["MANIFEST_UNKNOWN"], "error code of an unknown tag")
    check(r.header("Content-Type", "").startswith("application/json"),
          "error Content-Type %r" % r.header("Content-Type"))
    r = p.get("/v2/ns/multi/manifests/sha256:" + "1" * 64, headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 404, "unknown digest")
    eq(_errors(r, "unknown digest"), ["MANIFEST_UNKNOWN"], "error code of an unknown digest")
    r = p.get("/v2/ns/nosuchrepo/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 404, "unknown repository")
    check(_errors(r, "unknown repository")[0] in ("NAME_UNKNOWN", "MANIFEST_UNKNOWN"),
          "error code of an unknown repository: %r" % r.body)


def test_upstream_405_keeps_its_allow(t):
    """docker-registry answers a HEAD of tags/list 405 with Allow: GET. Relayed, the 405
    keeps it (RFC 9110 15.5.6: a 405 must say what is allowed), cut to what the proxy
    serves: it lost it before."""
    s = t.s
    p = _proxy(t)
    up = s.anon_registry.client("pull").get("/v2/ns/multi/tags/list", method="HEAD")
    eq((up.status, up.header("Allow")), (405, "GET"), "docker-registry's HEAD of tags/list")
    st, h, body = p.raw("HEAD", "/v2/registry.anon.test/ns/multi/tags/list")
    eq((st, h.get("allow"), body), (405, "GET", b""), "HEAD of tags/list through the proxy")


def test_head_of_an_upstream_error_announces_no_other_length(t):
    """A HEAD answered with upstream's error has the GET's status, and no Content-Length
    other than the GET's body length (RFC 9110 8.6). The GET relays upstream's own error
    body (or quotes it in the proxy's), which a HEAD never sees: the HEAD used to announce
    the length of the proxy's own error body instead (167 bytes beside docker-registry's
    99 for an unknown tag)."""
    s = t.s
    p = _proxy(t)
    digest = s.images["multi"]["tags"]["v1"]
    # docker-registry itself announces on a HEAD the length of the body its GET sends.
    up = s.anon_registry.client("pull")
    uh, ug = (up.manifest("ns/multi", "nosuchtag", method=m) for m in ("HEAD", "GET"))
    eq((uh.status, uh.header("Content-Length")), (404, str(len(ug.body))),
       "docker-registry's HEAD of an unknown tag")
    for path in ("/v2/registry.anon.test/ns/multi/manifests/nosuchtag",
                 "/v2/registry.anon.test/ns/multi/manifests/sha256:" + "1" * 64,
                 "/v2/registry.anon.test/ns/multi/blobs/sha256:" + "1" * 64,
                 "/v2/registry.fake.test/ns/multi/manifests/nosuchtag",
                 "/v2/registry.fake.test/mode/429/ns/multi/manifests/v1",
                 "/v2/registry.fake.test/mode/500/ns/multi/manifests/v1",
                 "/v2/registry.fake.test/mode/503/ns/multi/blobs/" + digest):
        gs, gh, gb = p.raw("GET", path, headers={"Accept": lib.ACCEPT_ALL})
        hs, hh, hb = p.raw("HEAD", path, headers={"Accept": lib.ACCEPT_ALL})
        check(gs >= 400, "GET %s: expected an error, got %d %r" % (path, gs, gb[:200]))
        eq(gh.get("content-length"), str(len(gb)), "Content-Length of GET %s" % path)
        eq((hs, hb), (gs, b""), "HEAD %s: status (the GET's) and body" % path)
        check(hh.get("content-length") in (None, str(len(gb))),
              "HEAD %s announces Content-Length %s; the GET sends %d bytes: %r"
              % (path, hh.get("content-length"), len(gb), gb[:200]))
        eq(hh.get("content-type"), gh.get("content-type"), "Content-Type of HEAD %s" % path)
    # The proxy's own errors are the GET's body exactly: a HEAD still announces its length.
    gs, gh, gb = p.raw("GET", "/v2/ns/multi/manifests/" + "x" * 200)
    hs, hh, hb = p.raw("HEAD", "/v2/ns/multi/manifests/" + "x" * 200)
    eq((hs, hh.get("content-length"), hb), (gs, str(len(gb)), b""),
       "HEAD of an invalid tag beside its GET (%d %r)" % (gs, gb[:200]))
