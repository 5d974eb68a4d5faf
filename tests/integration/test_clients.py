# SPDX-License-Identifier: Apache-2.0
"""The client configurations of docs/clients.md, as shipped under dist/clients/, driven
against a proxy: every file is used as written, with only proxy.example.com:PORT replaced by
the proxy under test. The upstreams are configured in the proxy under the real names
(registry.redhat.io is the token registry, quay.io the anonymous one, docker.io the
htpasswd one), so a pull of registry.redhat.io/ns/multi:v1 only works through the mirror:
the test checks the proxy's access log for it and every digest of what arrived.

Clients: skopeo (always), podman and containerd's ctr when installed and able to run here
(rootful, vfs/native storage under the test's temp dir); otherwise the test says
"skipped: ..." and why. docker has no engine here: daemon.json is parsed and the request
docker sends to a mirror is replayed. OpenShift 3.11 (inventory) and 4 (IDMS/ITMS) are
checked through the registries.conf / image names they produce on the nodes."""
import configparser
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile

import lib
from lib import check, eq, fail

CLIENTS = os.path.join(lib.ROOT, "dist", "clients")
PLACEHOLDER = "proxy.example.com:5000"
PLACEHOLDER_DOCKER = "proxy.example.com:5002"


def skipped(what, why):
    print("    skipped: %s: %s" % (what, why), flush=True)


def read(rel):
    with open(os.path.join(CLIENTS, rel)) as f:
        return f.read()


def render(rel, proxy, out_dir, docker_listener=None):
    """dist/clients/REL with the proxy's address in place of the placeholder; returns the
    path of the rendered copy under out_dir."""
    text = read(rel)
    check(PLACEHOLDER in text, "dist/clients/%s does not mention %s" % (rel, PLACEHOLDER))
    text = text.replace(PLACEHOLDER, proxy.hostport)
    if docker_listener is not None:
        text = text.replace(PLACEHOLDER_DOCKER, "127.0.0.1:%d" % proxy.ports[docker_listener])
    text = no_fallback(text, proxy.hostport)
    out = os.path.join(out_dir, rel)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    return out


# Tests send traffic to loopback only. A client whose mirror fails falls back to the real
# registry (registries.conf `location`, hosts.toml `server`), so the rendered copies point
# those at a closed loopback port: a broken mirror then fails the test instead of reaching
# out to registry.redhat.io.
DEAD_END = "127.0.0.1:9"


def no_fallback(text, proxy_hostport):
    def loc(m):
        v = m.group(2)
        if proxy_hostport in v or v.startswith(DEAD_END):
            return m.group(0)
        return '%s"%s/%s"' % (m.group(1), DEAD_END, v)
    text = re.sub(r'^(\s*location\s*=\s*)"([^"]*)"', loc, text, flags=re.M)
    return re.sub(r'^(\s*server\s*=\s*)"https?://[^"]*"', r'\1"https://%s"' % DEAD_END, text,
                  flags=re.M)


def client_proxy(t, listeners=None):
    s = t.s
    regs = [s.token_registry.conf(name="registry.redhat.io"),
            s.anon_registry.conf(name="quay.io"),
            s.basic_registry.conf(name="docker.io")]
    return t.proxy(registries=regs, listeners=listeners)


def run(argv, env=None, timeout=180):
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=env or lib.clean_env(), timeout=timeout,
                           preexec_fn=lib._child_setup)
    except subprocess.TimeoutExpired:
        fail("timed out after %d s: %s" % (timeout, " ".join(argv)))
    p.out = p.stdout.decode("utf-8", "replace")
    p.err = p.stderr.decode("utf-8", "replace")
    return p


def verify_dir(d, want):
    """A `skopeo copy ... dir:D` of one image: manifest.json is the manifest with digest
    `want`, and its config and every layer are there and hash to their names."""
    with open(os.path.join(d, "manifest.json"), "rb") as f:
        body = f.read()
    eq(lib.sha256(body), want, "digest of the manifest pulled into %s" % d)
    m = json.loads(body)
    for desc in [m["config"]] + m["layers"]:
        p = os.path.join(d, desc["digest"].split(":", 1)[1])
        check(os.path.isfile(p), "blob %s missing from %s" % (desc["digest"], d))
        eq(lib.sha256_file(p), desc["digest"], "content of blob file %s" % p)
        eq(os.path.getsize(p), desc["size"], "size of blob %s" % desc["digest"])


def proxied(p, prefix, since=0):
    """Access-log lines of the proxy whose path starts with prefix."""
    return [a for a in p.access(since) if a.get("path", "").startswith(prefix)]


def skopeo_copy(t, conf, src, dest, extra=()):
    t.s.skopeo(["--registries-conf", conf, "copy", "-q", "--src-no-creds"] + list(extra) +
               [src, dest])


# ------------------------------------------------------------------------- docs vs files

def significant(text):
    return [x.rstrip() for x in text.splitlines() if x.strip() and not x.lstrip().startswith("#")]


def test_docs_match_files(t):
    """Each snippet in docs/clients.md that follows a mention of dist/clients/FILE is that
    file (comments aside), and every file there is shown."""
    with open(os.path.join(lib.ROOT, "docs", "clients.md")) as f:
        md = f.read()
    shown = set()
    pos = 0
    for m in re.finditer(r"^```\w*\n(.*?)^```$", md, re.M | re.S):
        before = md[pos:m.start()]
        pos = m.end()
        refs = re.findall(r"dist/clients/([\w./-]+\w)", before)
        if not refs:
            continue
        rel = refs[-1]
        check(os.path.isfile(os.path.join(CLIENTS, rel)),
              "docs/clients.md shows dist/clients/%s, which does not exist" % rel)
        eq(significant(m.group(1)), significant(read(rel)),
           "docs/clients.md snippet vs dist/clients/%s" % rel)
        shown.add(rel)
    for dp, _, fns in os.walk(CLIENTS):
        for fn in fns:
            rel = os.path.relpath(os.path.join(dp, fn), CLIENTS)
            if rel.startswith("containerd/certs.d/") and "registry.redhat.io" not in rel:
                continue  # "the other registries' files are next to it"
            check(rel in shown, "docs/clients.md does not show dist/clients/%s" % rel)


# ---------------------------------------------------------------- CRI-O / podman / skopeo

def test_registries_conf_skopeo(t):
    s = t.s
    p = client_proxy(t)
    conf = render("containers/registries.conf", p, t.tmp)
    tok, anon = s.token_registry, s.anon_registry
    # registry.redhat.io (token auth upstream) via the mirror, one image and an index.
    out = os.path.join(t.tmp, "multi")
    skopeo_copy(t, conf, "docker://registry.redhat.io/ns/multi:v1", "dir:" + out)
    verify_dir(out, tok.pushed["ns/multi:v1"]["digest"])
    out = os.path.join(t.tmp, "multiarch")
    skopeo_copy(t, conf, "docker://registry.redhat.io/ns/multiarch:v1", "oci:%s:v1" % out,
                ["--all", "--preserve-digests", "--dest-oci-accept-uncompressed-layers"])
    eq(lib.verify_oci_layout(out)["v1"], tok.pushed["ns/multiarch:v1"]["digest"],
       "index pulled through the registry.redhat.io mirror")
    # quay.io (anonymous upstream), Docker schema 2.
    out = os.path.join(t.tmp, "v2s2")
    skopeo_copy(t, conf, "docker://quay.io/ns/multi-v2s2:v1", "dir:" + out)
    verify_dir(out, anon.pushed["ns/multi-v2s2:v1"]["digest"])
    # docker.io (htpasswd upstream), by digest.
    dig = s.basic_registry.pushed["ns/multi:v1"]["digest"]
    out = os.path.join(t.tmp, "bydigest")
    skopeo_copy(t, conf, "docker://docker.io/ns/multi@" + dig, "dir:" + out)
    verify_dir(out, dig)
    for prefix in ("/v2/registry.redhat.io/ns/multi/manifests/v1",
                   "/v2/registry.redhat.io/ns/multiarch/manifests/v1",
                   "/v2/quay.io/ns/multi-v2s2/manifests/v1",
                   "/v2/docker.io/ns/multi/manifests/" + dig):
        check(proxied(p, prefix), "the proxy saw no request for %s: the pull did not go "
              "through the mirror in dist/clients/containers/registries.conf" % prefix)


def podman_env(d, conf):
    for sub in ("home", "run", "config", "data"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    storage = os.path.join(d, "storage.conf")
    with open(storage, "w") as f:
        f.write('[storage]\ndriver = "vfs"\ngraphroot = "%s/graph"\nrunroot = "%s/runroot"\n'
                % (d, d))
    cc = os.path.join(d, "containers.conf")
    with open(cc, "w") as f:
        f.write('[engine]\nevents_logger = "file"\ncgroup_manager = "cgroupfs"\n')
    auth = os.path.join(d, "auth.json")
    with open(auth, "w") as f:
        f.write('{"auths": {}}\n')
    policy = os.path.join(d, "policy.json")
    with open(policy, "w") as f:
        f.write('{"default": [{"type": "insecureAcceptAnything"}]}\n')
    env = lib.clean_env({"CONTAINERS_REGISTRIES_CONF": conf, "CONTAINERS_STORAGE_CONF": storage,
                         "CONTAINERS_CONF": cc, "REGISTRY_AUTH_FILE": auth,
                         "HOME": os.path.join(d, "home"),
                         "XDG_RUNTIME_DIR": os.path.join(d, "run"),
                         "XDG_CONFIG_HOME": os.path.join(d, "config"),
                         "XDG_DATA_HOME": os.path.join(d, "data")})
    argv = ["podman", "--root", os.path.join(d, "graph"), "--runroot",
            os.path.join(d, "runroot"), "--storage-driver", "vfs", "--tmpdir",
            os.path.join(d, "run")]
    return argv, env, policy


def test_registries_conf_podman(t):
    if not shutil.which("podman"):
        skipped("podman", "podman is not installed")
        return
    v = run(["podman", "--version"])
    if v.returncode != 0:
        skipped("podman", "podman --version fails: %s" % v.err.strip())
        return
    s = t.s
    p = client_proxy(t)
    conf = render("containers/registries.conf", p, t.tmp)
    # A short directory: podman refuses a runroot longer than 50 characters.
    d = tempfile.mkdtemp(prefix="rppod-")
    t.defer(lambda: shutil.rmtree(d, ignore_errors=True))
    argv, env, policy = podman_env(d, conf)
    info = run(argv + ["info", "--format", "{{.Store.GraphDriverName}}"], env=env)
    if info.returncode != 0:
        skipped("podman (%s)" % v.out.strip(), "cannot run here: podman info: %s"
                % info.err.strip()[-500:])
        return
    ref = "registry.redhat.io/ns/multi:v1"
    pull = run(argv + ["pull", "-q", "--signature-policy", policy, ref], env=env)
    check(pull.returncode == 0, "podman pull %s through dist/clients/containers/registries.conf "
          "failed (exit %d):\n%s" % (ref, pull.returncode, pull.err[-3000:]))
    want = s.token_registry.pushed["ns/multi:v1"]
    manifest = json.loads(want["body"])
    cfg = s.token_registry.client("pull").get(
        "/v2/ns/multi/blobs/" + manifest["config"]["digest"])
    eq(cfg.status, 200, "config blob straight from the upstream")
    insp = run(argv + ["image", "inspect", ref], env=env)
    check(insp.returncode == 0, "podman image inspect %s: %s" % (ref, insp.err))
    img, = json.loads(insp.out)
    eq(img["Digest"], want["digest"], "manifest digest podman pulled")
    eq("sha256:" + img["Id"], manifest["config"]["digest"], "podman image ID (config digest)")
    eq(img["RootFS"]["Layers"], json.loads(cfg.body)["rootfs"]["diff_ids"],
       "layer diff IDs podman unpacked")
    check(proxied(p, "/v2/registry.redhat.io/ns/multi/manifests/v1"),
          "podman's pull did not reach the proxy's /v2/registry.redhat.io/ prefix")
    print("    (%s pulled %s through the mirror)" % (v.out.strip(), ref), flush=True)


# ------------------------------------------------------------------------------- containerd

CONTAINERD_CONF = """version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{d}/c.sock"
[ttrpc]
  address = "{d}/c.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
"""


def test_containerd_hosts_toml(t):
    missing = [x for x in ("containerd", "ctr") if not shutil.which(x)]
    if missing:
        skipped("containerd", "%s not installed (Debian package containerd)"
                % " and ".join(missing))
        return
    if os.geteuid() != 0:
        skipped("containerd", "needs root to run (the tests run as uid %d)" % os.geteuid())
        return
    s = t.s
    p = client_proxy(t)
    for r in sorted(os.listdir(os.path.join(CLIENTS, "containerd", "certs.d"))):
        render("containerd/certs.d/%s/hosts.toml" % r, p, t.tmp)
    text = read("containerd/certs.d/registry.redhat.io/hosts.toml")
    check('[host."http://%s"]' % PLACEHOLDER in text and
          re.search(r'capabilities = \["pull", "resolve"\]', text),
          "hosts.toml should name the proxy as a pull/resolve host")
    # A short directory: the socket path must fit in sun_path (108 bytes).
    d = tempfile.mkdtemp(prefix="rpctd-")
    t.defer(lambda: shutil.rmtree(d, ignore_errors=True))
    cfg = os.path.join(d, "config.toml")
    with open(cfg, "w") as f:
        f.write(CONTAINERD_CONF.format(d=d))
    log = os.path.join(t.tmp, "containerd.log")
    proc = lib.Proc("containerd", ["containerd", "--config", cfg], log)
    t.defer(lambda: proc.stop(10))
    sock = os.path.join(d, "c.sock")
    ctr = ["ctr", "--address", sock, "--namespace", "regproxy-test"]
    try:
        lib.wait_until(lambda: run(ctr + ["version"], timeout=10).returncode == 0, 20,
                       "containerd to answer on %s" % sock, proc=proc)
    except lib.Failure as e:
        skipped("containerd", "cannot run here: %s" % str(e)[-800:])
        return
    ver = run(["containerd", "--version"]).out.strip()
    ref = "registry.redhat.io/ns/multi:v1"
    mark = len(p.access())
    pull = run(ctr + ["images", "pull", "--hosts-dir", os.path.join(t.tmp, "containerd",
                                                                     "certs.d"),
                      "--snapshotter", "native", ref])
    check(pull.returncode == 0, "ctr images pull --hosts-dir (dist/clients/containerd/certs.d) "
          "%s failed (exit %d):\n%s%s\n--- containerd log:\n%s"
          % (ref, pull.returncode, pull.out[-2000:], pull.err[-2000:], lib.tail(log, 30)))
    want = s.token_registry.pushed["ns/multi:v1"]["digest"]
    ls = run(ctr + ["images", "ls"])
    row = [x.split() for x in ls.out.splitlines() if x.startswith(ref + " ")]
    check(row, "ctr images ls does not list %s:\n%s" % (ref, ls.out))
    eq(row[0][2], want, "digest containerd recorded for %s" % ref)

    def content(dig):
        c = subprocess.run(ctr + ["content", "get", dig], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=lib.clean_env(), timeout=60)
        check(c.returncode == 0, "ctr content get %s: %s" % (dig, c.stderr.decode()[-500:]))
        eq("sha256:" + hashlib.sha256(c.stdout).hexdigest(), dig,
           "content containerd stored as %s" % dig)
        return c.stdout
    m = json.loads(content(want))
    for desc in [m["config"]] + m["layers"]:
        eq(len(content(desc["digest"])), desc["size"], "size of %s" % desc["digest"])
    seen = [a for a in p.access(mark) if "ns=registry.redhat.io" in a.get("path", "") or
            a.get("query", "").find("ns=registry.redhat.io") >= 0]
    check(seen, "no request with ?ns=registry.redhat.io in the proxy's access log: %r"
          % p.access(mark)[:5])
    print("    (%s pulled %s through hosts.toml)" % (ver, ref), flush=True)


# ------------------------------------------------------------------------------- OpenShift 3

def test_openshift3_inventory(t):
    cp = configparser.ConfigParser(interpolation=None, delimiters=("=",))
    cp.optionxform = str
    cp.read_string(read("openshift3/inventory-vars.ini"))
    v = cp["OSEv3:vars"]
    oreg = v["oreg_url"]
    check(oreg.startswith(PLACEHOLDER + "/") and "${component}" in oreg and
          "${version}" in oreg, "oreg_url %r should be PROXY/...${component}:${version}" % oreg)
    eq(v["openshift_examples_registryurl"], PLACEHOLDER, "openshift_examples_registryurl")
    eq(v["openshift_docker_insecure_registries"], PLACEHOLDER,
       "openshift_docker_insecure_registries")
    # The nodes pull oreg_url with ${component}=pod: an upstream holding openshift3/ose-pod
    # behind the proxy's default route.
    reg = t.private_registry("anon", name="registry.redhat.io", images={
        "openshift3/ose-pod:v3.11": "oci:%s:v1" % t.s.images["multi"]["dir"]})
    p = t.proxy(registries=[reg.conf()])
    ref = oreg.replace(PLACEHOLDER, p.hostport).replace("${component}", "pod") \
        .replace("${version}", "v3.11")
    out = os.path.join(t.tmp, "ose-pod")
    t.s.skopeo(["copy", "-q", "--src-tls-verify=false", "--src-no-creds",
                "docker://" + ref, "dir:" + out])
    verify_dir(out, reg.pushed["openshift3/ose-pod:v3.11"]["digest"])
    check(proxied(p, "/v2/openshift3/ose-pod/manifests/v3.11"),
          "the oreg_url pull did not use the default route")


# ---------------------------------------------------------------------------------- docker

def test_docker_registry_mirrors(t):
    daemon = json.loads(read("docker/daemon.json"))
    mirrors = daemon["registry-mirrors"]
    eq(mirrors, ["http://" + PLACEHOLDER_DOCKER], "daemon.json registry-mirrors")
    for hp in (PLACEHOLDER, PLACEHOLDER_DOCKER):
        check(hp in daemon["insecure-registries"], "daemon.json insecure-registries lacks %s"
              % hp)
    snippet = read("docker/regproxy-dockerhub.conf")
    m = re.search(r'^\[listen "0\.0\.0\.0:(\d+)"\]\ndefault = docker\.io$', snippet, re.M)
    check(m, "regproxy-dockerhub.conf should add a listener whose default is docker.io")
    eq(m.group(1), PLACEHOLDER_DOCKER.rsplit(":", 1)[1], "the mirror's port in daemon.json")
    # The snippet appended to the example configuration is valid.
    d = os.path.join(t.tmp, "conf")
    os.makedirs(d)
    base = open(os.path.join(lib.ROOT, "conf", "regproxy.conf")).read()
    base = re.sub(r'^(\[registry "[^"]+"\]\n)', r"\1test_login = no\n", base, flags=re.M)
    base = re.sub(r"^dir = .*$", "dir = " + os.path.join(d, "cache"), base, flags=re.M)
    path = os.path.join(d, "regproxy.conf")
    with open(path, "w") as f:
        f.write(base + "\n" + snippet)
    c = run([t.s.bin, "check", "-c", path])
    check(c.returncode == 0 and "2 listener(s)" in c.out, "regproxy check of conf/regproxy.conf "
          "plus regproxy-dockerhub.conf: exit %d\n%s%s" % (c.returncode, c.out, c.err))
    # What docker sends its mirror: Hub names without a registry prefix, on the second port.
    p = client_proxy(t, listeners=[{"default": "registry.redhat.io"}, {"default": "docker.io"}])
    reg = t.s.basic_registry
    for ref in ("ns/multi:v1", "ns/multi-v2s2:v1"):
        repo, tag = ref.split(":")
        r = p.get("/v2/%s/manifests/%s" % (repo, tag), listener=1,
                  headers={"Accept": lib.ACCEPT_ALL})
        eq(r.status, 200, "GET /v2/%s/manifests/%s on the docker.io listener" % (repo, tag))
        eq(lib.sha256(r.body), reg.pushed[ref]["digest"], "manifest of %s from docker.io" % ref)
        m = json.loads(r.body)
        for desc in [m["config"]] + m["layers"]:
            b = p.get("/v2/%s/blobs/%s" % (repo, desc["digest"]), listener=1)
            eq(b.status, 200, "blob %s" % desc["digest"])
            eq(lib.sha256(b.body), desc["digest"], "blob content of %s" % desc["digest"])


# ------------------------------------------------------------------------------- OpenShift 4

def mirror_sets():
    import yaml
    out = {}
    for fn, kind, field in (("imagedigestmirrorset.yaml", "ImageDigestMirrorSet",
                             "imageDigestMirrors"),
                            ("imagetagmirrorset.yaml", "ImageTagMirrorSet", "imageTagMirrors")):
        doc, = [x for x in yaml.safe_load_all(read("openshift4/" + fn)) if x]
        eq(doc["apiVersion"], "config.openshift.io/v1", "%s apiVersion" % fn)
        eq(doc["kind"], kind, "%s kind" % fn)
        check(doc["metadata"]["name"], "%s has no name" % fn)
        items = doc["spec"][field]
        check(items, "%s: spec.%s is empty" % (fn, field))
        for it in items:
            check(set(it) <= {"source", "mirrors", "mirrorSourcePolicy"},
                  "%s: unknown fields %r" % (fn, sorted(it)))
            eq(it["mirrors"], ["%s/%s" % (PLACEHOLDER, it["source"])],
               "%s mirrors of %s" % (fn, it["source"]))
        out[kind] = items
    patch = yaml.safe_load(read("openshift4/image-config-patch.yaml"))
    eq(patch["spec"]["registrySources"]["insecureRegistries"], [PLACEHOLDER],
       "image-config-patch.yaml insecureRegistries")
    return out


def registries_conf_from(items, digest_only, hostport):
    """What the Machine Config Operator writes to the nodes' registries.conf for a mirror
    set (the skopeo here predates pull-from-mirror, so digest-only is spelled
    mirror-by-digest-only)."""
    out = ["unqualified-search-registries = []"]
    for it in items:
        out += ["", "[[registry]]", 'prefix = "%s"' % it["source"],
                'location = "%s/%s"' % (DEAD_END, it["source"])]
        if digest_only:
            out.append("mirror-by-digest-only = true")
        for m in it["mirrors"]:
            out += ["", "[[registry.mirror]]", 'location = "%s"' % m.replace(PLACEHOLDER,
                                                                            hostport),
                    "insecure = true"]
    return "\n".join(out) + "\n"


def test_openshift4_mirror_sets(t):
    sets = mirror_sets()
    s = t.s
    p = client_proxy(t)
    tok = s.token_registry
    dig = tok.pushed["ns/multi:v1"]["digest"]
    # IDMS: by digest through the mirror.
    conf = os.path.join(t.tmp, "idms.conf")
    with open(conf, "w") as f:
        f.write(registries_conf_from(sets["ImageDigestMirrorSet"], True, p.hostport))
    out = os.path.join(t.tmp, "idms")
    skopeo_copy(t, conf, "docker://registry.redhat.io/ns/multi@" + dig, "dir:" + out)
    verify_dir(out, dig)
    check(proxied(p, "/v2/registry.redhat.io/ns/multi/manifests/" + dig),
          "the IDMS pull by digest did not go through the proxy")
    # ITMS: by tag through the mirror.
    conf = os.path.join(t.tmp, "itms.conf")
    with open(conf, "w") as f:
        f.write(registries_conf_from(sets["ImageTagMirrorSet"], False, p.hostport))
    out = os.path.join(t.tmp, "itms")
    skopeo_copy(t, conf, "docker://quay.io/ns/multi:v1", "dir:" + out)
    verify_dir(out, s.anon_registry.pushed["ns/multi:v1"]["digest"])
    check(proxied(p, "/v2/quay.io/ns/multi/manifests/v1"),
          "the ITMS pull by tag did not go through the proxy")
