# SPDX-License-Identifier: Apache-2.0
"""The fixtures themselves, without regproxy: when these fail, the other integration tests'
failures say nothing about the proxy."""
import base64
import json
import os
import time

import lib
from lib import check, eq


def test_registries_serve_pushed_images(t):
    s = t.s
    for reg in (s.token_registry, s.basic_registry, s.anon_registry):
        for ref, info in reg.pushed.items():
            raw = t.inspect_raw(ref, registry=reg)
            eq(lib.sha256(raw), info["digest"], "digest of %s on %s" % (ref, reg.kind))
        eq(reg.pushed["ns/multi-v2s2:v1"]["media_type"],
           "application/vnd.docker.distribution.manifest.v2+json", "v2s2 media type")
        eq(reg.pushed["ns/multi:v1"]["media_type"],
           "application/vnd.oci.image.manifest.v1+json", "oci media type")
        eq(reg.pushed["ns/multiarch:v1"]["media_type"],
           "application/vnd.oci.image.index.v1+json", "index media type")
    # The pushed OCI manifests are byte-identical to the layouts (--preserve-digests).
    eq(s.token_registry.pushed["ns/multi:v1"]["digest"], s.images["multi"]["tags"]["v1"],
       "pushed multi digest vs layout")
    eq(s.token_registry.pushed["ns/large:v1"]["digest"], s.images["large"]["tags"]["v1"],
       "pushed large digest vs layout")


def test_direct_pull_each_registry(t):
    s = t.s
    for reg in (s.token_registry, s.basic_registry, s.anon_registry):
        for ref in ("ns/multi:v1", "ns/multiarch:v1", "ns/multi-v2s2:v1"):
            out = os.path.join(t.tmp, "%s-%s" % (reg.kind, ref.replace("/", "_").replace(":", "_")))
            args = ["copy", "-q", "--all", "--preserve-digests",
                    "--dest-oci-accept-uncompressed-layers", "--src-cert-dir", s.ca["certdir"]]
            args += (["--src-creds", "%s:%s" % reg.pull_creds] if reg.pull_creds
                     else ["--src-no-creds"])
            s.skopeo(args + ["docker://%s/%s" % (reg.hostport, ref), "oci:%s:v1" % out])
            tags = lib.verify_oci_layout(out)
            eq(tags["v1"], reg.pushed[ref]["digest"], "pulled %s from %s" % (ref, reg.kind))
        n = reg.count("GET", "/v2/ns/multi/blobs/sha256:")
        check(n >= 4, "access log of %s counts %d blob GETs for ns/multi" % (reg.kind, n))


def test_token_issuer_flow(t):
    s = t.s
    reg, iss = s.token_registry, s.issuer
    r = lib.request(reg.url + "/v2/ns/multi/manifests/v1", ca=s.ca["ca.crt"])
    eq(r.status, 401, "anonymous manifest GET on the token registry")
    scheme, params = lib.parse_www_authenticate(r.header("WWW-Authenticate"))
    eq((scheme, params["realm"], params["service"]), ("bearer", iss.realm, "test-registry"),
       "challenge")
    basic = "Basic " + base64.b64encode(("%s:%s" % (lib.SA_USER, s.sa_password))
                                        .encode()).decode()
    q = "?service=test-registry&scope=repository:ns/multi:pull,push"
    r = lib.request(iss.realm + q, headers={"Authorization": basic}, ca=s.ca["ca.crt"])
    eq(r.status, 200, "token for the service account")
    body = r.json()
    for k in ("token", "access_token", "expires_in", "issued_at"):
        check(k in body, "token answer lacks %s: %r" % (k, body))
    eq(body["expires_in"], 300, "expires_in")
    payload = body["token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    eq(claims["access"], [{"type": "repository", "name": "ns/multi", "actions": ["pull"]}],
       "service account gets pull only")
    eq(claims["aud"], "test-registry", "aud")
    r = lib.request(reg.url + "/v2/ns/multi/manifests/v1",
                    headers={"Authorization": "Bearer " + body["token"],
                             "Accept": lib.ACCEPT_ALL}, ca=s.ca["ca.crt"])
    eq(r.status, 200, "manifest GET with the token")
    bad = "Basic " + base64.b64encode(("%s:wrong" % lib.SA_USER).encode()).decode()
    r = lib.request(iss.realm + q, headers={"Authorization": bad}, ca=s.ca["ca.crt"])
    eq(r.status, 401, "token with a wrong password")
    r = lib.request(iss.realm + q, ca=s.ca["ca.crt"])
    eq(r.status, 401, "anonymous token request")
    check(len(iss.fetches(lib.SA_USER)) >= 1, "issuer log records the fetch")
    # Password rotation: the accounts file is re-read on every request.
    old = s.sa_password
    s.write_accounts({}, sa_password="rotated-" + old)
    try:
        r = lib.request(iss.realm + q, headers={"Authorization": basic}, ca=s.ca["ca.crt"])
        eq(r.status, 401, "old password after rotation")
    finally:
        s.write_accounts({}, sa_password=old)


def test_lie_issuer_tokens_die(t):
    s = t.s
    reg = s.lie_registry
    c = reg.client("pull")
    r = c.manifest("ns/multi", "v1")
    eq(r.status, 200, "manifest with a fresh lying token")
    iss = s.lie_issuer
    basic = "Basic " + base64.b64encode(("%s:%s" % reg.pull_creds).encode()).decode()
    r = lib.request(iss.realm + "?service=test-registry&scope=repository:ns/multi:pull",
                    headers={"Authorization": basic}, ca=s.ca["ca.crt"])
    body = r.json()
    eq(body["expires_in"], 300, "lying issuer reports 300 s")
    h = {"Authorization": "Bearer " + body["token"], "Accept": lib.ACCEPT_ALL}
    eq(lib.request(reg.url + "/v2/ns/multi/manifests/v1", headers=h, ca=s.ca["ca.crt"]).status,
       200, "token right after issue")
    time.sleep(3.5)
    eq(lib.request(reg.url + "/v2/ns/multi/manifests/v1", headers=h, ca=s.ca["ca.crt"]).status,
       401, "token 3.5 s after issue")


def test_anonymous_token_registry(t):
    s = t.s
    reg = s.anon_token_registry
    r = reg.client(None).manifest("ns/multi", "v1")
    eq(r.status, 200, "anonymous pull through anonymous tokens")
    eq(lib.sha256(r.body), reg.pushed["ns/multi:v1"]["digest"], "digest")


def test_fakereg_redirects_without_auth(t):
    s = t.s
    fr = s.fakereg
    ca = s.ca["ca.crt"]
    c = fr.client()
    r = c.manifest("ns/multi", "v1")
    eq(r.status, 200, "fakereg manifest")
    eq(lib.sha256(r.body), s.images["multi"]["tags"]["v1"], "fakereg manifest digest")
    layer = json.loads(r.body)["layers"][2]
    r = c.get("/v2/ns/multi/blobs/" + layer["digest"])
    eq(r.status, 307, "blob GET is redirected")
    loc = r.header("Location")
    check(loc.startswith("https://127.0.0.1:%d/blobs/" % fr.cdn_port), "Location " + loc)
    r = lib.request(loc, ca=ca)
    eq((r.status, lib.sha256(r.body)), (200, layer["digest"]), "CDN body")
    r = lib.request(loc, headers={"Range": "bytes=10-99"}, ca=ca)
    eq((r.status, r.header("Content-Range"), len(r.body)),
       (206, "bytes 10-99/%d" % layer["size"], 90), "CDN range")
    r = lib.request(loc.replace("sig=", "sig=0"), ca=ca)
    eq(r.status, 403, "CDN with a bad signature")
    check(not any(x["authorization"] for x in fr.cdn_requests()), "no Authorization at CDN")
    r = c.get("/v2/mode/429/ns/multi/manifests/v1")
    eq((r.status, r.header("Retry-After"), r.error_codes()), (429, "7", ["TOOMANYREQUESTS"]),
       "429 mode")
    r = c.get("/v2/mode/corrupt/ns/multi/blobs/" + layer["digest"])
    r = lib.request(r.header("Location"), ca=ca)
    check(r.status == 200 and lib.sha256(r.body) != layer["digest"] and
          len(r.body) == layer["size"], "corrupt mode flips a byte")
    r = lib.request(fr.url + "/v2/ns/multi/manifests/v1", ca=ca)
    eq(r.status, 401, "fakereg without credentials")
    r = c.get("/v2/ns/tags/tags/list?n=5")
    eq(r.json()["tags"], ["t00", "t01", "t02", "t03", "t04"], "first page")
    eq(r.header("Link"), '</v2/ns/tags/tags/list?last=t04&n=5>; rel="next"', "Link")
