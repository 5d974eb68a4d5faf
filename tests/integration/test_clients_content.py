# SPDX-License-Identifier: Apache-2.0
"""Real clients pulling less common content through the proxy: zstd layers, the OCI empty
config, zero-layer images, foreign (non-distributable) layers fetched elsewhere, OCI
artifacts (helm chart, cosign signature and attestation tags), each cold, warm and with
the upstream stopped; every byte a client gets is checked against its digest."""
import gzip
import http.server
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading

import lib
import test_clients as tc
import test_disconnected as td
from lib import check, eq

OCI = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
V2 = "application/vnd.docker.distribution.manifest.v2+json"
LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
EMPTY = "application/vnd.oci.empty.v1+json"


def _tar_gz(name, data):
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w") as tf:
        ti = tarfile.TarInfo(name)
        ti.size = len(data)
        ti.mtime = 0
        tf.addfile(ti, io.BytesIO(data))
    raw = bio.getvalue()
    return gzip.compress(raw, mtime=0), lib.sha256(raw)


def _desc(mt, body, **extra):
    d = {"mediaType": mt, "digest": lib.sha256(body), "size": len(body)}
    d.update(extra)
    return d


def push_blob(t, reg, repo, body):
    ca = t.s.ca["ca.crt"]
    r = lib.request(reg.url + "/v2/%s/blobs/uploads/" % repo, "POST", {}, b"", ca=ca)
    eq(r.status, 202, "blob upload start in %s: %r" % (repo, r))
    loc = r.header("Location")
    sep = "&" if "?" in loc else "?"
    r = lib.request(loc + sep + "digest=" + lib.sha256(body), "PUT",
                    {"Content-Type": "application/octet-stream"}, body, ca=ca)
    eq(r.status, 201, "blob upload to %s: %r" % (repo, r))


def push_manifest(t, reg, repo, ref, body, mt):
    r = lib.request(reg.url + "/v2/%s/manifests/%s" % (repo, ref), "PUT",
                    {"Content-Type": mt}, body, ca=t.s.ca["ca.crt"])
    eq(r.status, 201, "manifest PUT %s:%s: %r" % (repo, ref, r))
    reg.pushed["%s:%s" % (repo, ref)] = {"digest": lib.sha256(body), "body": body,
                                        "media_type": mt}
    return lib.sha256(body)


def image_parts(arch="amd64"):
    layer, diff = _tar_gz("hello-%s" % arch, os.urandom(4096))
    cfg = json.dumps({"architecture": arch, "os": "linux",
                      "rootfs": {"type": "layers", "diff_ids": [diff]}}).encode()
    return cfg, layer


class ForeignServer:
    """Serves foreign layers at http://127.0.0.1:PORT/<digest> (what a Windows base layer's
    urls point at)."""

    def __init__(self, t):
        self.blobs = {}
        self.hits = []
        srv = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                srv.hits.append(self.path)
                b = srv.blobs.get(self.path.lstrip("/"))
                if b is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(b)))
                self.end_headers()
                self.wfile.write(b)

            def log_message(self, *a):
                pass
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        t.defer(self.httpd.shutdown)

    def add(self, body):
        self.blobs[lib.sha256(body)] = body
        return "http://127.0.0.1:%d/%s" % (self.port, lib.sha256(body))


def _push_signed_artifact(t, reg, repo, tag, payload, cfg, layer_type, annotations, out):
    """A cosign-style tag (".sig", ".att"): an OCI manifest whose one layer is payload,
    pushed as repo:tag and recorded in out as an artifact."""
    push_blob(t, reg, repo, payload)
    push_blob(t, reg, repo, cfg)
    m = {"schemaVersion": 2, "mediaType": OCI,
         "config": _desc("application/vnd.oci.image.config.v1+json", cfg),
         "layers": [_desc(layer_type, payload, annotations=annotations)]}
    push_manifest(t, reg, repo, tag, json.dumps(m).encode(), OCI)
    out["%s:%s" % (repo, tag)] = "artifact"


def build_content(t, reg):
    """Pushes the hand-made images to reg; returns {ref: kind}."""
    s = t.s
    out = {}
    # zstd layers, by skopeo.
    s.skopeo(["copy", "-q", "--dest-compress", "--dest-compress-format", "zstd", "--format",
              "oci", "--dest-cert-dir", s.ca["certdir"], "--dest-no-creds",
              "oci:%s:v1" % s.images["multi"]["dir"],
              "docker://%s/ns/zstd:v1" % reg.hostport], timeout=300)
    r = reg.client(None).manifest("ns/zstd", "v1")
    eq(r.status, 200, "zstd manifest upstream")
    m = json.loads(r.body)
    check(all(x["mediaType"].endswith("+zstd") for x in m["layers"]),
          "zstd layers: %r" % [x["mediaType"] for x in m["layers"]])
    reg.pushed["ns/zstd:v1"] = {"digest": lib.sha256(r.body), "body": r.body}
    out["ns/zstd:v1"] = "image"
    # Empty config, with artifactType, one layer.
    repo = "ns/empty"
    data = b"some artifact data\n"
    push_blob(t, reg, repo, b"{}")
    push_blob(t, reg, repo, data)
    m = {"schemaVersion": 2, "mediaType": OCI, "artifactType": "application/vnd.example+type",
         "config": _desc(EMPTY, b"{}"),
         "layers": [_desc("application/vnd.example.data.v1", data,
                          annotations={"org.opencontainers.image.title": "data.txt"})]}
    push_manifest(t, reg, repo, "v1", json.dumps(m).encode(), OCI)
    out[repo + ":v1"] = "artifact"
    # Zero layers.
    repo = "ns/zero"
    cfg = json.dumps({"architecture": "amd64", "os": "linux",
                      "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    push_blob(t, reg, repo, cfg)
    m = {"schemaVersion": 2, "mediaType": OCI,
         "config": _desc("application/vnd.oci.image.config.v1+json", cfg), "layers": []}
    push_manifest(t, reg, repo, "v1", json.dumps(m).encode(), OCI)
    out[repo + ":v1"] = "image"
    # Helm chart.
    repo = "charts/mychart"
    hcfg = json.dumps({"name": "mychart", "version": "0.1.0", "apiVersion": "v2"}).encode()
    chart, _ = _tar_gz("mychart/Chart.yaml", b"apiVersion: v2\nname: mychart\nversion: 0.1.0\n")
    push_blob(t, reg, repo, hcfg)
    push_blob(t, reg, repo, chart)
    m = {"schemaVersion": 2, "mediaType": OCI,
         "config": _desc("application/vnd.cncf.helm.config.v1+json", hcfg),
         "layers": [_desc("application/vnd.cncf.helm.chart.content.v1.tar+gzip", chart)],
         "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"}}
    push_manifest(t, reg, repo, "0.1.0", json.dumps(m).encode(), OCI)
    out[repo + ":0.1.0"] = "artifact"
    # A normal image, signed (cosign) and attested.
    repo = "ns/signed"
    cfg, layer = image_parts()
    push_blob(t, reg, repo, cfg)
    push_blob(t, reg, repo, layer)
    m = {"schemaVersion": 2, "mediaType": OCI,
         "config": _desc("application/vnd.oci.image.config.v1+json", cfg),
         "layers": [_desc("application/vnd.oci.image.layer.v1.tar+gzip", layer)]}
    img = push_manifest(t, reg, repo, "v1", json.dumps(m).encode(), OCI)
    out[repo + ":v1"] = "image"
    sig = json.dumps({"critical": {"identity": {"docker-reference": repo},
                                   "image": {"docker-manifest-digest": img},
                                   "type": "cosign container image signature"},
                      "optional": None}).encode()
    scfg = json.dumps({"architecture": "", "created": "0001-01-01T00:00:00Z", "history": [
        {"created": "0001-01-01T00:00:00Z"}], "os": "", "rootfs": {
        "type": "layers", "diff_ids": [lib.sha256(sig)]}, "config": {}}).encode()
    _push_signed_artifact(t, reg, repo, img.replace(":", "-") + ".sig", sig, scfg,
                          "application/vnd.dev.cosign.simplesigning.v1+json",
                          {"dev.cosignproject.cosign/signature": "MEUCIQ=="}, out)
    att = json.dumps({"payloadType": "application/vnd.in-toto+json", "payload": "e30=",
                      "signatures": [{"sig": "MEUCIQ=="}]}).encode()
    acfg = json.dumps({"architecture": "", "os": "", "rootfs": {
        "type": "layers", "diff_ids": [lib.sha256(att)]}, "config": {}}).encode()
    _push_signed_artifact(t, reg, repo, img.replace(":", "-") + ".att", att, acfg,
                          "application/vnd.dsse.envelope.v1+json",
                          {"predicateType": "https://slsa.dev/provenance/v0.2"}, out)
    # Foreign layers: an OCI and a Docker one, the blob served only from its url.
    # docker-registry refuses manifests with urls unless told which to allow.
    cfgp = os.path.join(reg.dir, "config.yml")
    with open(cfgp) as f:
        text = f.read()
    with open(cfgp, "w") as f:
        f.write(text + "validation:\n  manifests:\n    urls:\n      allow:\n"
                "        - '^http://127[.]0[.]0[.]1:'\n")
    reg.stop()
    reg.restart()
    fs = ForeignServer(t)
    t.foreign = fs
    for repo, mt, lmt, fmt, cmt in (
            ("ns/foreign-oci", OCI, "application/vnd.oci.image.layer.v1.tar+gzip",
             "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
             "application/vnd.oci.image.config.v1+json"),
            ("ns/foreign-v2", V2, "application/vnd.docker.image.rootfs.diff.tar.gzip",
             "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
             "application/vnd.docker.container.image.v1+json")):
        base, bdiff = _tar_gz("base", os.urandom(2048))
        top, tdiff = _tar_gz("top", os.urandom(2048))
        cfg = json.dumps({"architecture": "amd64", "os": "linux",
                          "rootfs": {"type": "layers", "diff_ids": [bdiff, tdiff]}}).encode()
        push_blob(t, reg, repo, cfg)
        push_blob(t, reg, repo, top)
        url = fs.add(base)
        m = {"schemaVersion": 2, "mediaType": mt, "config": _desc(cmt, cfg),
             "layers": [_desc(fmt, base, urls=[url]), _desc(lmt, top)]}
        push_manifest(t, reg, repo, "v1", json.dumps(m).encode(), mt)
        out[repo + ":v1"] = "foreign"
    return out


def plain_pull(p, repo, ref, accept, want):
    """What oras / helm do: GET the manifest naming one type, then every blob."""
    r = p.get("/v2/%s/manifests/%s" % (repo, ref), headers={"Accept": accept})
    eq(r.status, 200, "GET %s:%s Accept %s: %r" % (repo, ref, accept, r.body[:300]))
    eq(lib.sha256(r.body), want, "digest of %s:%s" % (repo, ref))
    eq(r.header("Docker-Content-Digest"), want, "Docker-Content-Digest of %s:%s" % (repo, ref))
    m = json.loads(r.body)
    eq(r.header("Content-Type"), m.get("mediaType"), "Content-Type of %s:%s" % (repo, ref))
    h = p.get("/v2/%s/manifests/%s" % (repo, ref), method="HEAD", headers={"Accept": accept})
    eq((h.status, h.header("Docker-Content-Digest"), h.header("Content-Length")),
       (200, want, str(len(r.body))), "HEAD %s:%s" % (repo, ref))
    for d in ([m["config"]] + m["layers"]) if "config" in m else []:
        if d.get("urls"):
            continue
        b = p.get("/v2/%s/blobs/%s" % (repo, d["digest"]))
        eq((b.status, lib.sha256(b.body), len(b.body)), (200, d["digest"], d["size"]),
           "blob %s of %s" % (d["digest"], repo))
        hb = p.get("/v2/%s/blobs/%s" % (repo, d["digest"]), method="HEAD")
        eq((hb.status, hb.header("Content-Length")), (200, str(d["size"])),
           "HEAD blob %s" % d["digest"])
    return r


def skopeo_dir(t, p, ref, out, extra=()):
    shutil.rmtree(out, ignore_errors=True)
    return t.s.skopeo(["copy", "-q", "--src-tls-verify=false", "--src-no-creds"] + list(extra) +
                      ["docker://%s/%s" % (p.hostport, ref), "dir:" + out], check_rc=False,
                      timeout=300)


def round_(t, p, reg, content, phase):
    problems = []
    for ref, kind in sorted(content.items()):
        repo, tag = ref.rsplit(":", 1)
        want = reg.pushed[ref]["digest"]
        try:
            plain_pull(p, repo, tag, OCI if "v2" not in repo else V2, want)
            plain_pull(p, repo, want, lib.ACCEPT_ALL, want)
        except lib.Failure as e:
            problems.append("%s plain %s: %s" % (phase, ref, e))
        out = os.path.join(t.tmp, "%s-%s" % (phase, ref.replace("/", "_").replace(":", "_")))
        r = skopeo_dir(t, p, ref, out)
        if r.returncode != 0:
            problems.append("%s skopeo copy %s: %s" % (phase, ref, r.err[-800:]))
        else:
            try:
                tc.verify_dir(out, want)
            except lib.Failure as e:
                problems.append("%s skopeo %s: %s" % (phase, ref, e))
        r = t.s.skopeo(["inspect", "--raw", "--tls-verify=false", "--no-creds",
                        "docker://%s/%s" % (p.hostport, ref)], check_rc=False, timeout=120)
        if r.returncode != 0 or lib.sha256(r.stdout) != want:
            problems.append("%s inspect --raw %s: rc %d %s" % (phase, ref, r.returncode,
                                                               r.err[-300:]))
        if kind != "artifact":
            r = t.s.skopeo(["inspect", "--config", "--tls-verify=false", "--no-creds",
                            "docker://%s/%s" % (p.hostport, ref)], check_rc=False,
                           timeout=120)
            if phase == "cold":
                t.configs[ref] = t.s.skopeo(["inspect", "--config", "--cert-dir",
                                             t.s.ca["certdir"], "--no-creds",
                                             "docker://%s/%s" % (reg.hostport, ref)],
                                            timeout=120).stdout
            if r.returncode != 0 or r.stdout != t.configs[ref]:
                problems.append("%s inspect --config %s: rc %d %s %s" % (
                    phase, ref, r.returncode, lib.sha256(r.stdout), r.err[-300:]))
    return problems


def test_content_cold_warm_outage(t):
    """Each kind of content (zstd layers, empty config, no layers, foreign layers, a helm
    chart, cosign signature and attestation tags) by plain GETs as oras and helm make them,
    skopeo copy and inspect: cold, warm, and with the upstream stopped."""
    reg = t.private_registry("anon")
    content = build_content(t, reg)
    p = t.proxy(registries=[reg.conf()])
    t.configs = {}
    problems = round_(t, p, reg, content, "cold")
    problems += round_(t, p, reg, content, "warm")
    reg.stop()
    problems += round_(t, p, reg, content, "outage")
    check(not problems, "\n".join(problems))


# ---------------------------------------------------------------------- multi-arch

def docker_list(t, reg, repo):
    """A Docker manifest list (amd64, arm64) of schema 2 images, pushed as repo:v1."""
    s = t.s
    src = "oci:%s:v1" % s.images["multiarch"]["dir"]
    children = []
    for arch in ("amd64", "arm64"):
        s.skopeo(["copy", "-q", "--override-arch", arch, "--format", "v2s2",
                  "--dest-cert-dir", s.ca["certdir"], "--dest-no-creds", src,
                  "docker://%s/%s:%s" % (reg.hostport, repo, arch)], timeout=300)
        r = reg.client(None).manifest(repo, arch, accept=V2)
        eq((r.status, r.header("Content-Type")), (200, V2), "child %s upstream" % arch)
        children.append({"mediaType": V2, "size": len(r.body), "digest": lib.sha256(r.body),
                         "platform": {"architecture": arch, "os": "linux"}})
    body = json.dumps({"schemaVersion": 2, "mediaType": LIST, "manifests": children}).encode()
    push_manifest(t, reg, repo, "v1", body, LIST)
    return body


def verify_dir_all(d, index_body):
    """skopeo copy --all into dir:D: manifest.json is the index, each child is
    DIGEST.manifest.json, every blob present and right."""
    with open(os.path.join(d, "manifest.json"), "rb") as f:
        eq(lib.sha256(f.read()), lib.sha256(index_body), "index in %s" % d)
    for c in json.loads(index_body)["manifests"]:
        p = os.path.join(d, "%s.manifest.json" % c["digest"].split(":", 1)[1])
        check(os.path.isfile(p), "child %s missing from %s: %s" % (c["digest"], d,
                                                                   sorted(os.listdir(d))))
        with open(p, "rb") as f:
            body = f.read()
        eq(lib.sha256(body), c["digest"], "child manifest %s" % p)
        m = json.loads(body)
        for desc in [m["config"]] + m["layers"]:
            bp = os.path.join(d, desc["digest"].split(":", 1)[1])
            check(os.path.isfile(bp), "blob %s missing from %s" % (desc["digest"], d))
            eq(lib.sha256_file(bp), desc["digest"], "blob %s" % bp)


def multiarch_round(t, p, reg, refs, phase):
    s = t.s
    problems = []
    for repo in refs:
        body = reg.pushed[repo + ":v1"]["body"]
        idx = json.loads(body)
        want = lib.sha256(body)
        tag = "%s:v1" % repo
        for by in (tag, "%s@%s" % (repo, want)):
            what = "%s %s" % (phase, by)
            base = os.path.join(t.tmp, "%s-%s" % (phase, by.replace("/", "_").replace(":", "_")
                                                  .replace("@", "_")))
            # --all into dir:
            r = skopeo_dir(t, p, by, base + "-dirall", ["--all"])
            if r.returncode:
                problems.append("%s: copy --all dir: %s" % (what, r.err[-500:]))
            else:
                try:
                    verify_dir_all(base + "-dirall", body)
                except lib.Failure as e:
                    problems.append("%s: %s" % (what, e))
            # --all into oci:
            out = base + "-ociall"
            shutil.rmtree(out, ignore_errors=True)
            # (a Docker list is converted to an OCI index: digests cannot be kept)
            keep = ["--preserve-digests"] if idx.get("mediaType") != LIST else []
            r = s.skopeo(["copy", "-q", "--all"] + keep +
                         ["--dest-oci-accept-uncompressed-layers", "--src-tls-verify=false",
                          "--src-no-creds", "docker://%s/%s" % (p.hostport, by),
                          "oci:%s:x" % out], check_rc=False, timeout=300)
            if r.returncode:
                problems.append("%s: copy --all oci: %s" % (what, r.err[-500:]))
            else:
                try:
                    got = lib.verify_oci_layout(out)["x"]
                    if keep:
                        eq(got, want, "oci layout index")
                except lib.Failure as e:
                    problems.append("%s: %s" % (what, e))
            # one platform
            for c in idx["manifests"]:
                arch = c["platform"]["architecture"]
                out = base + "-" + arch
                r = skopeo_dir(t, p, by, out, ["--override-arch", arch, "--override-os",
                                               "linux"])
                if r.returncode:
                    problems.append("%s: copy --override-arch %s: %s" % (what, arch,
                                                                       r.err[-500:]))
                    continue
                try:
                    tc.verify_dir(out, c["digest"])
                except lib.Failure as e:
                    problems.append("%s %s: %s" % (what, arch, e))
                r = s.skopeo(["--override-arch", arch, "inspect", "--config",
                              "--tls-verify=false", "--no-creds",
                              "docker://%s/%s" % (p.hostport, by)], check_rc=False,
                             timeout=120)
                with open(os.path.join(out, "manifest.json"), "rb") as f:
                    cd = json.loads(f.read())["config"]["digest"]
                with open(os.path.join(out, cd.split(":", 1)[1]), "rb") as f:
                    cfg = json.loads(f.read())
                if r.returncode or json.loads(r.stdout).get("architecture") != \
                        cfg.get("architecture"):
                    problems.append("%s: inspect --config %s: %s %s" % (
                        what, arch, r.out[:200], r.err[-300:]))
            r = s.skopeo(["inspect", "--raw", "--tls-verify=false", "--no-creds",
                          "docker://%s/%s" % (p.hostport, by)], check_rc=False, timeout=120)
            if r.returncode or lib.sha256(r.stdout) != want:
                problems.append("%s: inspect --raw: %s" % (what, r.err[-300:]))
        for c in idx["manifests"]:
            by = "%s@%s" % (repo, c["digest"])
            r = s.skopeo(["inspect", "--raw", "--tls-verify=false", "--no-creds",
                          "docker://%s/%s" % (p.hostport, by)], check_rc=False, timeout=120)
            if r.returncode or lib.sha256(r.stdout) != c["digest"]:
                problems.append("%s: inspect --raw %s: %s" % (phase, by, r.err[-300:]))
            out = os.path.join(t.tmp, "%s-child-%s" % (phase, c["digest"][7:19]))
            r = skopeo_dir(t, p, by, out)
            if r.returncode:
                problems.append("%s: copy child %s: %s" % (phase, by, r.err[-300:]))
            else:
                try:
                    tc.verify_dir(out, c["digest"])
                except lib.Failure as e:
                    problems.append("%s child %s: %s" % (phase, by, e))
    return problems


def test_multiarch_cold_warm_outage(t):
    """An OCI index and a Docker manifest list: skopeo --all and per platform, by tag, by
    the index's digest and by each child's: cold, warm, and with the upstream stopped."""
    s = t.s
    reg = t.private_registry("anon", images={
        "ns/oci-index:v1": "oci:%s:v1" % s.images["multiarch"]["dir"]})
    docker_list(t, reg, "ns/docker-list")
    p = t.proxy(registries=[reg.conf()])
    refs = ("ns/oci-index", "ns/docker-list")
    problems = multiarch_round(t, p, reg, refs, "cold")
    problems += multiarch_round(t, p, reg, refs, "warm")
    reg.stop()
    problems += multiarch_round(t, p, reg, refs, "outage")
    check(not problems, "\n".join(problems))


def containerd(t, tag):
    """A fresh containerd (own root); returns the ctr argv prefix, or None when it cannot
    run here."""
    if not shutil.which("containerd") or not shutil.which("ctr") or os.geteuid() != 0:
        tc.skipped("containerd", "not installed, or not root")
        return None
    d = tempfile.mkdtemp(prefix="rpctd-")
    t.defer(lambda: shutil.rmtree(d, ignore_errors=True))
    cfg = os.path.join(d, "config.toml")
    with open(cfg, "w") as f:
        f.write(tc.CONTAINERD_CONF.format(d=d))
    proc = lib.Proc("containerd", ["containerd", "--config", cfg],
                    os.path.join(t.tmp, "containerd-%s.log" % tag))
    t.defer(lambda: proc.stop(10))
    ctr = ["ctr", "--address", os.path.join(d, "c.sock"), "--namespace", "rp"]
    try:
        lib.wait_until(lambda: tc.run(ctr + ["version"], timeout=10).returncode == 0, 20,
                       "containerd", proc=proc)
    except lib.Failure as e:
        tc.skipped("containerd", "cannot run here: %s" % str(e)[-800:])
        return None
    return ctr


def ctr_run(argv, timeout=300):
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=lib.clean_env(), timeout=timeout,
                       preexec_fn=lib._child_setup)
    return p.returncode, p.stdout, p.stderr.decode("utf-8", "replace")


def ctr_content(ctr, dig):
    rc, out, err = ctr_run(ctr + ["content", "get", dig], 60)
    check(rc == 0, "ctr content get %s: %s" % (dig, err[-300:]))
    eq(lib.sha256(out), dig, "content containerd stored as %s" % dig)
    return out


def ctr_check_tree(ctr, dig, skip_foreign=True):
    """Every manifest, config and layer reachable from dig is in containerd's store and
    hashes to its name."""
    m = json.loads(ctr_content(ctr, dig))
    if "manifests" in m:
        for c in m["manifests"]:
            ctr_check_tree(ctr, c["digest"])
        return
    ctr_content(ctr, m["config"]["digest"])
    for d in m["layers"]:
        ctr_content(ctr, d["digest"])


def test_ctr(t):
    """containerd's ctr pulls (or fetches, for artifacts) each image with every platform,
    cold, warm and with the upstream stopped; everything it stored hashes to its name."""
    s = t.s
    reg = t.private_registry("anon", images={
        "ns/oci-index:v1": "oci:%s:v1" % s.images["multiarch"]["dir"]})
    docker_list(t, reg, "ns/docker-list")
    content = build_content(t, reg)
    p = t.proxy(registries=[reg.conf()])
    problems = []
    for phase in ("cold", "warm", "outage"):
        if phase == "outage":
            reg.stop()
        ctr = containerd(t, phase)
        if ctr is None:
            return
        for ref in ["ns/oci-index:v1", "ns/docker-list:v1"] + sorted(content):
            want = reg.pushed[ref]["digest"]
            kind = content.get(ref, "index")
            full = "%s/%s" % (p.hostport, ref)
            if kind == "artifact":
                argv = ctr + ["content", "fetch", "--plain-http", full]
            else:
                argv = ctr + ["images", "pull", "--plain-http", "--snapshotter", "native"]
                if kind == "index":
                    argv.append("--all-platforms")
                argv.append(full)
            rc, out, err = ctr_run(argv)
            if rc:
                problems.append("%s %s: %s: %s %s" % (phase, ref, " ".join(argv[4:]),
                                                      out[-500:], err[-800:]))
                continue
            try:
                ctr_check_tree(ctr, want)
            except lib.Failure as e:
                problems.append("%s %s: %s" % (phase, ref, e))
    check(not problems, "\n".join(problems))


def test_concurrent_clients_different_accepts(t):
    """skopeo (every type), ctr (every type and */*) and a schema-2-only client pull the
    same cold images at once; each gets what upstream gives it."""
    s = t.s
    reg = t.private_registry("anon", images={
        "ns/oci-index:v1": "oci:%s:v1" % s.images["multiarch"]["dir"]})
    docker_list(t, reg, "ns/docker-list")
    s.push(reg, "oci:%s:v1" % s.images["multi"]["dir"], "ns/v2s2:v1", fmt="v2s2")
    want_v2 = {}
    for repo in ("ns/docker-list", "ns/v2s2", "ns/oci-index"):
        r = reg.client(None).manifest(repo, "v1", accept=V2)
        want_v2[repo] = (r.status, lib.sha256(r.body) if r.status == 200 else None)
    for rnd in range(3):
        p = t.proxy(registries=[reg.conf()])
        ctr = containerd(t, "c%d" % rnd)
        problems = []
        for repo in ("ns/docker-list", "ns/v2s2", "ns/oci-index"):
            ref = repo + ":v1"
            want = reg.pushed[ref]["digest"]
            res = {}

            def sk():
                out = os.path.join(t.tmp, "sk-%d-%s" % (rnd, repo.replace("/", "_")))
                r = skopeo_dir(t, p, ref, out, ["--all"])
                res["skopeo"] = r.returncode, r.err[-300:]
                if r.returncode == 0:
                    with open(os.path.join(out, "manifest.json"), "rb") as f:
                        res["skopeo-digest"] = lib.sha256(f.read())

            def v2():
                got = []
                for _ in range(5):
                    r = p.get("/v2/%s/manifests/v1" % repo, headers={"Accept": V2})
                    got.append((r.status, lib.sha256(r.body) if r.status == 200 else None))
                res["v2"] = got

            def ct():
                if ctr is None:
                    return
                rc, out, err = ctr_run(ctr + ["images", "pull", "--plain-http", "--snapshotter",
                                              "native", "--all-platforms",
                                              "%s/%s" % (p.hostport, ref)])
                res["ctr"] = rc, err[-300:]
                if rc == 0:
                    try:
                        ctr_check_tree(ctr, want)
                    except lib.Failure as e:
                        res["ctr"] = 1, str(e)
            lib.parallel([sk, v2, ct])
            if res["skopeo"][0] or res.get("skopeo-digest") != want:
                problems.append("%d %s skopeo: %r" % (rnd, repo, res))
            if ctr is not None and res["ctr"][0]:
                problems.append("%d %s ctr: %r" % (rnd, repo, res["ctr"]))
            if set(res["v2"]) != {want_v2[repo]}:
                problems.append("%d %s v2-only: %r want %r" % (rnd, repo, res["v2"],
                                                               want_v2[repo]))
        check(not problems, "\n".join(problems))


def test_podman(t):
    """podman pulls each image (and each platform of the indexes) cold, warm and with the
    upstream stopped; the digest it records and the architecture are checked."""
    if not shutil.which("podman"):
        tc.skipped("podman", "not installed")
        return
    s = t.s
    reg = t.private_registry("anon", images={
        "ns/oci-index:v1": "oci:%s:v1" % s.images["multiarch"]["dir"]})
    docker_list(t, reg, "ns/docker-list")
    content = build_content(t, reg)
    p = t.proxy(registries=[reg.conf()])
    conf = os.path.join(t.tmp, "registries.conf")
    with open(conf, "w") as f:
        f.write('unqualified-search-registries = []\n[[registry]]\nlocation = "%s"\n'
                'insecure = true\n' % p.hostport)
    problems = []
    for phase in ("cold", "warm", "outage"):
        if phase == "outage":
            reg.stop()
        d = tempfile.mkdtemp(prefix="rppod-")
        t.defer(lambda d=d: shutil.rmtree(d, ignore_errors=True))
        argv, env, policy = tc.podman_env(d, conf)
        info = tc.run(argv + ["info"], env=env)
        if info.returncode:
            tc.skipped("podman", "cannot run here: %s" % info.err[-300:])
            return
        refs = [("ns/oci-index:v1", "amd64"), ("ns/oci-index:v1", "arm64"),
                ("ns/docker-list:v1", "arm64")]
        refs += [(r, "amd64") for r, k in sorted(content.items()) if k != "artifact"]
        for ref, arch in refs:
            full = "%s/%s" % (p.hostport, ref)
            pull = tc.run(argv + ["pull", "-q", "--arch", arch, "--signature-policy", policy,
                                  full], env=env)
            if pull.returncode:
                problems.append("%s podman pull %s (%s): %s" % (phase, ref, arch,
                                                                pull.err[-600:]))
                continue
            insp = tc.run(argv + ["image", "inspect", pull.out.strip()], env=env)
            img, = json.loads(insp.out)
            want = reg.pushed[ref]["digest"]
            m = json.loads(reg.pushed[ref]["body"])
            if "manifests" in m:
                want = [c["digest"] for c in m["manifests"]
                        if c["platform"]["architecture"] == arch][0]
            if not any(x.endswith("@" + want) for x in img.get("RepoDigests") or []):
                problems.append("%s podman %s (%s): digest %s, want %s (%r)" % (
                    phase, ref, arch, img["Digest"], want, img.get("RepoDigests")))
            if img["Architecture"] != arch:
                problems.append("%s podman %s: arch %s want %s" % (phase, ref,
                                                                   img["Architecture"], arch))
    check(not problems, "\n".join(problems))


def test_mirror_export_import_content(t):
    """The same content mirrored, exported (bundle and OCI layout) with the upstream gone,
    imported into an offline proxy, and pulled from it by skopeo and ctr, every digest
    checked."""
    s = t.s
    reg = t.private_registry("anon", name=td.NAME, images={
        "ns/oci-index:v1": "oci:%s:v1" % s.images["multiarch"]["dir"]})
    docker_list(t, reg, "ns/docker-list")
    content = build_content(t, reg)
    refs = ["ns/oci-index:v1", "ns/docker-list:v1"] + sorted(content)
    lst = os.path.join(t.tmp, "list")
    with open(lst, "w") as f:
        f.write("".join("%s/%s\n" % (td.NAME, r) for r in refs))
    conf1 = td._conf(t, os.path.join(t.tmp, "c1.conf"), os.path.join(t.tmp, "cache1"), reg)
    td._run(t, ["mirror", "-c", conf1, lst])
    reg.stop()
    bundle = os.path.join(t.tmp, "b.rpb")
    td._run(t, ["export", "-c", conf1, lst, "-o", bundle])
    oci = os.path.join(t.tmp, "oci")
    td._run(t, ["export", "-c", conf1, lst, "--oci", oci])
    with open(os.path.join(oci, "index.json")) as f:
        idx = json.load(f)
    names = {d.get("annotations", {}).get("org.opencontainers.image.ref.name"): d["digest"]
             for d in idx["manifests"]}
    problems = []
    for ref in refs:
        want = reg.pushed[ref]["digest"]
        name = "%s/%s" % (td.NAME, ref)
        if names.get(name) != want:
            problems.append("oci layout names %s %s, want %s" % (name, names.get(name), want))
        if ref in ("ns/docker-list:v1", "ns/foreign-v2:v1"):
            continue  # Docker format: skopeo does not read it from a layout (a warning says)
        r = s.skopeo(["inspect", "--raw", "oci:%s:%s" % (oci, name)], check_rc=False)
        if r.returncode or lib.sha256(r.stdout) != want:
            problems.append("skopeo inspect --raw oci:%s: %s" % (name, r.err[-300:]))
        out = os.path.join(t.tmp, "fromoci-" + ref.replace("/", "_").replace(":", "_"))
        r = s.skopeo(["copy", "-q", "--preserve-digests"] +
                     (["--all"] if content.get(ref, "index") == "index" else []) +
                     ["oci:%s:%s" % (oci, name), "dir:" + out], check_rc=False)
        if r.returncode:
            problems.append("skopeo copy oci:%s: %s" % (name, r.err[-300:]))
    cache2 = os.path.join(t.tmp, "cache2")
    conf2 = td._conf(t, os.path.join(t.tmp, "c2.conf"), cache2, offline=True)
    td._run(t, ["import", "-c", conf2, bundle])
    p = t.proxy(registries=[{"name": td.NAME, "offline": "yes"}], cache={"dir": cache2})
    for ref in refs:
        repo, tag = ref.rsplit(":", 1)
        want = reg.pushed[ref]["digest"]
        kind = content.get(ref, "index")
        try:
            plain_pull(p, repo, tag, lib.ACCEPT_ALL, want)
        except lib.Failure as e:
            problems.append("offline plain %s: %s" % (ref, e))
        out = os.path.join(t.tmp, "off-" + ref.replace("/", "_").replace(":", "_"))
        r = skopeo_dir(t, p, ref, out, ["--all"] if kind == "index" else [])
        if r.returncode:
            problems.append("offline skopeo %s: %s" % (ref, r.err[-500:]))
    ctr = containerd(t, "off")
    if ctr is not None:
        for ref in refs:
            kind = content.get(ref, "index")
            want = reg.pushed[ref]["digest"]
            full = "%s/%s" % (p.hostport, ref)
            if kind == "artifact":
                argv = ctr + ["content", "fetch", "--plain-http", full]
            else:
                argv = ctr + ["images", "pull", "--plain-http", "--snapshotter", "native",
                              "--all-platforms", full]
            rc, o, e = ctr_run(argv)
            if rc:
                problems.append("offline ctr %s: %s" % (ref, e[-600:]))
                continue
            try:
                ctr_check_tree(ctr, want)
            except lib.Failure as e:
                problems.append("offline ctr %s: %s" % (ref, e))
    check(not problems, "\n".join(problems))


def buildx_index(t, reg, repo):
    """An OCI index as docker buildx writes it: amd64 and arm64 images, each with an
    attestation manifest (platform unknown/unknown)."""
    children = []
    atts = []
    for arch in ("amd64", "arm64"):
        cfg, layer = image_parts(arch)
        push_blob(t, reg, repo, cfg)
        push_blob(t, reg, repo, layer)
        m = json.dumps({"schemaVersion": 2, "mediaType": OCI,
                        "config": _desc("application/vnd.oci.image.config.v1+json", cfg),
                        "layers": [_desc("application/vnd.oci.image.layer.v1.tar+gzip",
                                         layer)]}).encode()
        d = push_manifest(t, reg, repo, lib.sha256(m), m, OCI)
        children.append({"mediaType": OCI, "digest": d, "size": len(m),
                         "platform": {"architecture": arch, "os": "linux"}})
        st = json.dumps({"_type": "https://in-toto.io/Statement/v0.1", "arch": arch}).encode()
        acfg = json.dumps({"architecture": "unknown", "os": "unknown", "config": {},
                           "rootfs": {"type": "layers",
                                      "diff_ids": [lib.sha256(st)]}}).encode()
        push_blob(t, reg, repo, st)
        push_blob(t, reg, repo, acfg)
        am = json.dumps({"schemaVersion": 2, "mediaType": OCI,
                         "config": _desc("application/vnd.oci.image.config.v1+json", acfg),
                         "layers": [_desc("application/vnd.in-toto+json", st, annotations={
                             "in-toto.io/predicate-type": "https://spdx.dev/Document"})]}
                        ).encode()
        ad = push_manifest(t, reg, repo, lib.sha256(am), am, OCI)
        atts.append({"mediaType": OCI, "digest": ad, "size": len(am),
                     "annotations": {"vnd.docker.reference.digest": d,
                                     "vnd.docker.reference.type": "attestation-manifest"},
                     "platform": {"architecture": "unknown", "os": "unknown"}})
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                       "manifests": children + atts}).encode()
    return push_manifest(t, reg, repo, "v1", body, OCI_INDEX), children, atts


def test_buildx_index(t):
    """An index as docker buildx writes it (each platform with an attestation manifest of
    platform unknown/unknown): skopeo --all and per platform, ctr, then one platform
    mirrored, moved by bundle and pulled offline by skopeo, podman and ctr."""
    reg = t.private_registry("anon", name=td.NAME)
    want, children, atts = buildx_index(t, reg, "ns/bx")
    problems = []
    p = t.proxy(registries=[reg.conf()])
    for phase in ("cold", "warm"):
        r = skopeo_dir(t, p, "ns/bx:v1", os.path.join(t.tmp, phase + "-all"), ["--all"])
        if r.returncode:
            problems.append("%s skopeo --all: %s" % (phase, r.err[-400:]))
        for arch, c in (("amd64", children[0]), ("arm64", children[1])):
            out = os.path.join(t.tmp, phase + arch)
            r = skopeo_dir(t, p, "ns/bx:v1", out, ["--override-arch", arch])
            if r.returncode:
                problems.append("%s skopeo %s: %s" % (phase, arch, r.err[-400:]))
            else:
                tc.verify_dir(out, c["digest"])
        ctr = containerd(t, "bx" + phase)
        if ctr:
            rc, o, e = ctr_run(ctr + ["content", "fetch", "--plain-http", "--all-platforms",
                                      "%s/ns/bx:v1" % p.hostport])
            if rc:
                problems.append("%s ctr: %s" % (phase, e[-400:]))
            else:
                ctr_check_tree(ctr, want)
            rc, o, e = ctr_run(ctr + ["images", "pull", "--plain-http", "--snapshotter",
                                      "native", "--platform", "linux/arm64",
                                      "%s/ns/bx:v1" % p.hostport])
            if rc:
                problems.append("%s ctr arm64: %s" % (phase, e[-400:]))
    p.stop()
    # mirror one platform, then offline
    lst = os.path.join(t.tmp, "list")
    with open(lst, "w") as f:
        f.write("%s/ns/bx:v1\n" % td.NAME)
    conf1 = td._conf(t, os.path.join(t.tmp, "c1.conf"), os.path.join(t.tmp, "cache1"), reg)
    td._run(t, ["mirror", "-c", conf1, lst, "--platform", "linux/amd64"])
    reg.stop()
    bundle = os.path.join(t.tmp, "b.rpb")
    td._run(t, ["export", "-c", conf1, lst, "-o", bundle])
    cache2 = os.path.join(t.tmp, "cache2")
    conf2 = td._conf(t, os.path.join(t.tmp, "c2.conf"), cache2, offline=True)
    td._run(t, ["import", "-c", conf2, bundle])
    p2 = t.proxy(registries=[{"name": td.NAME, "offline": "yes"}], cache={"dir": cache2})
    out = os.path.join(t.tmp, "off-amd64")
    r = skopeo_dir(t, p2, "ns/bx:v1", out, ["--override-arch", "amd64"])
    if r.returncode:
        problems.append("offline skopeo amd64: %s" % r.err[-400:])
    else:
        tc.verify_dir(out, children[0]["digest"])
    d = tempfile.mkdtemp(prefix="rppod-")
    t.defer(lambda: shutil.rmtree(d, ignore_errors=True))
    conf = os.path.join(t.tmp, "registries.conf")
    with open(conf, "w") as f:
        f.write('unqualified-search-registries = []\n[[registry]]\nlocation = "%s"\n'
                'insecure = true\n' % p2.hostport)
    argv, env, policy = tc.podman_env(d, conf)
    pull = tc.run(argv + ["pull", "-q", "--arch", "amd64", "--signature-policy", policy,
                          "%s/ns/bx:v1" % p2.hostport], env=env)
    if pull.returncode:
        problems.append("offline podman: %s" % pull.err[-500:])
    ctr = containerd(t, "bxoff")
    if ctr:
        rc, o, e = ctr_run(ctr + ["images", "pull", "--plain-http", "--snapshotter", "native",
                                  "--platform", "linux/amd64", "%s/ns/bx:v1" % p2.hostport])
        if rc:
            problems.append("offline ctr amd64: %s" % e[-600:])
    check(not problems, "\n".join(problems))


