# SPDX-License-Identifier: Apache-2.0
"""Disconnected clusters. `regproxy mirror` pulls a list (single-arch, multi-arch, Docker
schema 2 by digest, 110 MB) from an upstream through the in-process proxy; a mirror killed
half-way resumes fetching only what is missing; with the upstream stopped, `export` writes a
bundle (whole, split, and as an OCI layout skopeo reads); `import` refuses a bundle with a
flipped byte, a truncated one, one missing a part and one of a newer format version, each
without touching the cache, then loads the good one (twice: the second changes nothing) into
the cache of a proxy configured `offline = yes` with no upstream url, from which skopeo pulls
every image with every digest checked. What is not there is a quick 404 naming it. Export
and import throughput of the large image is printed next to cp's."""
import json
import os
import re
import shutil
import signal
import subprocess
import time

import lib
from lib import check, eq

NAME = "registry.private0.test"
ASAN_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:halt_on_error=1:print_summary=1:"
                    "detect_stack_use_after_return=0",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
}


def _conf(t, path, cache_dir, reg=None, offline=False):
    """A configuration for the one-off commands and the offline proxy: the registry with
    its url (mirror) or without (offline)."""
    lines = ['[listen "127.0.0.1:%d"]' % lib.free_port(), "default = %s" % NAME, "",
             "[cache]", "dir = %s" % cache_dir]
    if offline:
        lines.append("offline = yes")
    lines += ["", '[registry "%s"]' % NAME, "test_login = no"]
    if reg is not None:
        lines += ["url = %s" % reg.url, "ca_file = %s" % t.s.ca["ca.crt"]]
    lines += ["", "[admin]", "listen = off", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def _run(t, args, timeout=600, ok=True):
    """Runs regproxy ARGS; fails on a sanitizer report, and on a non-zero exit when ok."""
    env = lib.clean_env(ASAN_ENV)
    p = subprocess.run([t.s.bin] + args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=env, timeout=timeout)
    out, err = p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")
    for m in lib.SANITIZER_MARKERS:
        check(m not in out + err, "sanitizer report from regproxy %s:\n%s" % (args[0], err[-6000:]))
    if ok:
        check(p.returncode == 0, "regproxy %s exited %d\nstdout:\n%s\nstderr:\n%s"
              % (" ".join(args), p.returncode, out[-3000:], err[-3000:]))
    return p.returncode, out, err


def _listing(d):
    """{relative path: (size, mtime_ns)} of every file under d but the index snapshot and the
    lock (rewritten by any clean open and close)."""
    out = {}
    for dp, _, fns in os.walk(d):
        for fn in fns:
            p = os.path.join(dp, fn)
            rel = os.path.relpath(p, d)
            if rel in ("index", "lock"):
                continue
            st = os.stat(p)
            out[rel] = (st.st_size, st.st_mtime_ns)
    return out


def _blobs_of(reg, ref):
    out = []
    for m in lib.image_manifests(reg, ref):
        out += [m["config"]["digest"]] + [x["digest"] for x in m["layers"]]
    return out


def _blob_gets(reg, mark):
    time.sleep(0.3)  # docker-registry logs a request when it has ended
    return [p.rsplit("/", 1)[1] for m, p, st in reg.since(mark)
            if m == "GET" and "/blobs/" in p and st == 200]


def _registry(t):
    s = t.s
    reg = t.private_registry("anon", images={
        "ns/multi:v1": "oci:%s:v1" % s.images["multi"]["dir"],
        "ns/multiarch:v1": "oci:%s:v1" % s.images["multiarch"]["dir"],
        "ns/large:v1": "oci:%s:v1" % s.images["large"]["dir"]})
    s.push(reg, "oci:%s:v1" % s.images["multi"]["dir"], "ns/multi-v2s2:v1", fmt="v2s2")
    eq(reg.name, NAME, "private registry name")
    return reg


def _mbps(nbytes, secs):
    return nbytes / 1e6 / secs if secs > 0 else float("inf")


def test_mirror_export_import(t):
    s = t.s
    reg = _registry(t)
    v2s2 = reg.pushed["ns/multi-v2s2:v1"]["digest"]
    refs = {"ns/multi:v1": "%s/ns/multi:v1" % NAME,
            "ns/multiarch:v1": "%s/ns/multiarch:v1" % NAME,
            "ns/large:v1": "%s/ns/large:v1" % NAME,
            "ns/multi-v2s2:v1": "%s/ns/multi-v2s2@%s" % (NAME, v2s2)}
    lst = os.path.join(t.tmp, "images.list")
    with open(lst, "w") as f:
        f.write("# images for the disconnected cluster\n\n")
        for ref in refs.values():
            f.write("%s   # %s\n" % (ref, "by digest" if "@" in ref else "by tag"))
    cache1 = os.path.join(t.tmp, "cache-connected")
    conf1 = _conf(t, os.path.join(t.tmp, "connected.conf"), cache1, reg=reg)

    # -- an interrupted mirror, then a rerun that fetches only what is missing
    m0 = reg.mark()
    env = lib.clean_env(ASAN_ENV)
    log = open(os.path.join(t.tmp, "mirror1.out"), "wb")
    p = subprocess.Popen([s.bin, "mirror", "-c", conf1, lst, "-j", "1"], stdout=subprocess.PIPE,
                         stderr=log, env=env)
    first = p.stdout.readline().decode()
    check(first.startswith("ok %s/ns/multi:v1@" % NAME),
          "first line of the interrupted mirror: %r" % first)
    p.kill()  # SIGKILL: no clean shutdown, no index snapshot, fills cut mid-write
    p.wait(10)
    log.close()
    have = set(lib.cache_digests(cache1, "blobs"))
    all_blobs = set()
    for ref in refs:
        all_blobs |= set(_blobs_of(reg, ref))
    check(set(_blobs_of(reg, "ns/multi:v1")) <= have,
          "after the interrupted mirror the blobs of ns/multi:v1 should be cached")
    check(all_blobs - have, "the mirror was not interrupted before the end (nothing missing)")
    first_gets = _blob_gets(reg, m0)

    m1 = reg.mark()
    _, out, _ = _run(t, ["mirror", "-c", conf1, lst, "-j", "3"])
    print(out.strip())
    again = _blob_gets(reg, m1)
    refetched = sorted(set(again) & have)
    check(not refetched, "the rerun fetched blobs that were cached before it: %s" % refetched)
    eq(sorted(set(again)), sorted(all_blobs - have), "blobs the rerun fetched from upstream")
    eq(len(again), len(set(again)), "upstream GETs per blob in the rerun (each once)")
    check(len(first_gets) >= len(_blobs_of(reg, "ns/multi:v1")), "first run's GETs")
    for ref, line in refs.items():
        check(re.search(r"^ok %s" % re.escape(line.split("@")[0]), out, re.M),
              "mirror output should have an ok line for %s:\n%s" % (line, out))
    check(re.search(r"^mirror: 4 of 4 images ok, 0 failed", out, re.M),
          "mirror summary: %s" % out[-500:])
    with open(os.path.join(cache1, "pins")) as f:
        pins = f.read().split()
    eq(len(pins), 4, "lines in the pins file %s" % pins)
    for ref in ("ns/multi:v1", "ns/multiarch:v1", "ns/large:v1"):
        check("%s/%s@%s" % (NAME, ref, reg.pushed[ref]["digest"]) in pins,
              "pins file should list %s: %s" % (ref, pins))
    check("%s/ns/multi-v2s2@%s" % (NAME, v2s2) in pins, "pins file lists the digest image")
    check(all_blobs <= set(lib.cache_digests(cache1, "blobs")), "every blob is cached")
    lib.check_cache_store(cache1, "connected cache: ")

    # -- a third run with everything cached reaches upstream for no blob at all
    m2 = reg.mark()
    _, out, _ = _run(t, ["mirror", "-c", conf1, lst])
    eq(_blob_gets(reg, m2), [], "upstream blob GETs of a mirror with everything cached")

    # -- disconnected from here on
    reg.stop()
    bundle = os.path.join(t.tmp, "media", "images.rpb")
    os.makedirs(os.path.dirname(bundle))
    _, out, _ = _run(t, ["export", "-c", conf1, "-o", bundle])
    print(out.strip().splitlines()[-1])
    check(os.path.isfile(bundle) and not os.path.exists(bundle + ".tmp"), "bundle written")
    split = os.path.join(t.tmp, "media", "split.rpb")
    _, out, _ = _run(t, ["export", "-c", conf1, "-o", split, "--split", "32M"])
    parts = sorted(x for x in os.listdir(os.path.dirname(split)) if x.startswith("split.rpb."))
    eq(parts, ["split.rpb.%03d" % i for i in range(len(parts))], "parts of the split bundle")
    check(len(parts) >= 4, "a 140 MB bundle in 32 MiB parts: %s" % parts)
    with open(os.path.join(t.tmp, "media", parts[0]), "rb") as f:
        head = f.read(32)
    eq(sum(os.path.getsize(os.path.join(t.tmp, "media", x)) for x in parts),
       int.from_bytes(head[16:24], "big"), "split parts add up to the header's total length")
    eq(int.from_bytes(head[24:32], "big"), 32 << 20, "part size in the header")
    check(all(os.path.getsize(os.path.join(t.tmp, "media", x)) == 32 << 20
              for x in parts[:-1]), "every part but the last is 32 MiB")
    small_list = os.path.join(t.tmp, "small.list")
    with open(small_list, "w") as f:
        f.write(refs["ns/multi:v1"] + "\n")
    small = os.path.join(t.tmp, "media", "small.rpb")
    _run(t, ["export", "-c", conf1, small_list, "-o", small])

    # -- the disconnected side: an offline proxy with no upstream url at all
    cache2 = os.path.join(t.tmp, "cache-offline")
    conf2 = _conf(t, os.path.join(t.tmp, "offline.conf"), cache2, offline=True)
    _run(t, ["import", "-c", conf2, small])
    base = _listing(cache2)
    check(any(k.startswith("blobs/") for k in base), "small bundle imported")

    def refused(path, want, what):
        rc, out, err = _run(t, ["import", "-c", conf2, path], ok=False)
        check(rc != 0, "%s: import should fail, exited 0:\n%s" % (what, out))
        check(re.search(want, err), "%s: expected an error matching %r, got:\n%s"
              % (what, want, err[-2000:]))
        eq(_listing(cache2), base, "%s: the cache's files after the refused import" % what)

    size = os.path.getsize(bundle)
    flipped = os.path.join(t.tmp, "flipped.rpb")
    shutil.copy(bundle, flipped)
    with open(flipped, "r+b") as f:
        f.seek(size // 2)
        b = f.read(1)
        f.seek(size // 2)
        f.write(bytes([b[0] ^ 0x01]))
    refused(flipped, r"does not match its digest", "one flipped byte mid-blob")
    flipped2 = os.path.join(t.tmp, "flipped2.rpb")
    shutil.copy(bundle, flipped2)
    with open(flipped2, "r+b") as f:
        f.seek(size - 5)
        b = f.read(1)
        f.seek(size - 5)
        f.write(bytes([b[0] ^ 0x80]))
    refused(flipped2, r"checksum does not match", "one flipped byte in the trailer")
    truncated = os.path.join(t.tmp, "truncated.rpb")
    with open(bundle, "rb") as src, open(truncated, "wb") as dst:
        dst.write(src.read(size - 1000))
    refused(truncated, r"truncated", "a truncated bundle")
    newer = os.path.join(t.tmp, "newer.rpb")
    shutil.copy(bundle, newer)
    with open(newer, "r+b") as f:
        f.seek(11)
        f.write(b"\x02")
    refused(newer, r"format version 2, newer than this regproxy reads", "a newer format")
    missing = os.path.join(t.tmp, "missing")
    os.makedirs(missing)
    for x in parts:
        if x != "split.rpb.002":
            shutil.copy(os.path.join(t.tmp, "media", x), missing)
    refused(os.path.join(missing, "split.rpb.000"), r"part .*split\.rpb\.002 is missing",
            "a bundle with a part missing")
    short_part = os.path.join(t.tmp, "shortpart")
    shutil.copytree(missing, short_part)
    shutil.copy(os.path.join(t.tmp, "media", "split.rpb.002"), short_part)
    with open(os.path.join(short_part, "split.rpb.001"), "r+b") as f:
        f.truncate(1000)
    refused(os.path.join(short_part, "split.rpb"), r"split\.rpb\.001 has 1000 bytes",
            "a bundle with a short part (named by its prefix)")

    # -- the good bundle, from its parts; then the same again: nothing changes
    t0 = time.monotonic()
    _, out, _ = _run(t, ["import", "-c", conf2, os.path.join(t.tmp, "media", "split.rpb.000")])
    print(out.strip().splitlines()[-1])
    check("4 images" in out, "import summary: %s" % out[-500:])
    after = _listing(cache2)
    _, out, _ = _run(t, ["import", "-c", conf2, bundle])
    check(re.search(r"0 new manifests, 0 new blobs .*, 0 tags set", out),
          "second import of the same images should add nothing: %s" % out[-500:])
    eq(_listing(cache2), after, "the cache's files after importing the same images again")
    lib.check_cache_store(cache2, "offline cache: ")

    # -- skopeo pulls everything from the offline proxy; no url is configured anywhere
    p2 = t.proxy(registries=[{"name": NAME}], cache={"dir": cache2, "offline": "yes"})
    for ref in ("ns/multi:v1", "ns/multiarch:v1", "ns/large:v1"):
        _, tags = t.pull(p2, ref)
        eq(tags.get("v1"), reg.pushed[ref]["digest"], "offline pull of %s" % ref)
    _, tags = t.pull(p2, "%s/ns/multi:v1" % NAME)  # by the registry prefix too
    eq(tags.get("v1"), reg.pushed["ns/multi:v1"]["digest"], "offline pull via the prefix")
    out_dir = os.path.join(t.tmp, "pull-v2s2")
    s.skopeo(["copy", "-q", "--preserve-digests", "--src-tls-verify=false", "--src-no-creds",
              "docker://%s/ns/multi-v2s2@%s" % (p2.hostport, v2s2), "oci:%s:x" % out_dir],
             timeout=300)
    eq(lib.verify_oci_layout(out_dir).get("x"), v2s2, "offline pull of the v2s2 image by digest")
    r = p2.get("/v2/ns/multi-v2s2/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 404, "the v2s2 image was mirrored by digest: its tag is unknown offline")
    hits = [a for a in p2.access() if a.get("cache") not in ("HIT",) and
            ("/blobs/" in a.get("path", "") or "/manifests/" in a.get("path", ""))
            and a.get("status") == "200"]
    eq(hits, [], "offline pulls: every manifest and blob answered from the cache")

    # -- what is not there: a quick 404 naming it, never 503, never a hang
    large_blob = _blobs_of(reg, "ns/large:v1")[1]
    for path, code in (("/v2/ns/nothere/manifests/v1", "MANIFEST_UNKNOWN"),
                       ("/v2/ns/multi/manifests/v2", "MANIFEST_UNKNOWN"),
                       ("/v2/ns/multi/manifests/sha256:" + "0" * 64, "MANIFEST_UNKNOWN"),
                       ("/v2/ns/multi/blobs/sha256:" + "1" * 64, "BLOB_UNKNOWN"),
                       ("/v2/ns/multi/blobs/" + large_blob, "BLOB_UNKNOWN")):
        t0 = time.monotonic()
        r = p2.get(path, headers={"Accept": lib.ACCEPT_ALL}, timeout=10)
        took = time.monotonic() - t0
        eq((r.status, r.error_codes()), (404, [code]), "offline GET %s" % path)
        e = json.loads(r.body)["errors"][0]
        check("offline" in e["message"] and e.get("detail", {}).get("offline") is True,
              "offline GET %s: the error should say the registry is offline: %r" % (path, e))
        check(took < 2, "offline GET %s took %.1f s" % (path, took))
    st, _, body = p2.raw("HEAD", "/v2/ns/multi/blobs/sha256:" + "1" * 64)
    eq((st, body), (404, b""), "offline HEAD of a missing blob")
    r = p2.get("/v2/ns/multi/tags/list")
    eq(r.status, 404, "offline tags/list")

    # -- a proxy restart keeps the pins (the pins file): logged at start
    p2.restart()
    check("pins: 5 mirrored or imported images pinned" in p2.log_text() or
          "pins: 4 mirrored or imported images pinned" in p2.log_text(),
          "the offline proxy should re-pin the imported images at start:\n%s"
          % lib.tail(p2.log, 20))
    p2.stop()

    # -- the OCI layout export, read by skopeo
    oci = os.path.join(t.tmp, "oci-layout")
    _run(t, ["export", "-c", conf1, "--oci", oci])
    for ref in ("ns/multi:v1", "ns/multiarch:v1"):
        other = os.path.join(t.tmp, "oci-copy-" + ref.replace("/", "_").replace(":", "_"))
        s.skopeo(["copy", "-q", "--all", "--preserve-digests",
                  "--dest-oci-accept-uncompressed-layers",
                  "oci:%s:%s/%s" % (oci, NAME, ref), "oci:%s:v1" % other], timeout=300)
        eq(lib.verify_oci_layout(other).get("v1"), reg.pushed[ref]["digest"],
           "skopeo copy from the exported OCI layout: %s" % ref)
    large_list = os.path.join(t.tmp, "large.list")
    with open(large_list, "w") as f:
        f.write(refs["ns/large:v1"] + "\n")
    oci2 = os.path.join(t.tmp, "oci-large")
    _run(t, ["export", "-c", conf1, large_list, "--oci", oci2])
    r = s.skopeo(["inspect", "--raw", "oci:%s:v1" % oci2])  # bare tag: unique in this layout
    eq(lib.sha256(r.stdout), reg.pushed["ns/large:v1"]["digest"], "skopeo inspect oci:DIR:v1")

    # -- throughput of the large image, next to cp of the same bytes on the same disk
    lb = os.path.join(t.tmp, "large.rpb")
    t0 = time.monotonic()
    _run(t, ["export", "-c", conf1, large_list, "-o", lb])
    t_export = time.monotonic() - t0
    nbytes = os.path.getsize(lb)
    cache3 = os.path.join(t.tmp, "cache-large")
    conf3 = _conf(t, os.path.join(t.tmp, "large.conf"), cache3, offline=True)
    t0 = time.monotonic()
    _run(t, ["import", "-c", conf3, lb])
    t_import = time.monotonic() - t0
    cpdir = os.path.join(t.tmp, "cp-large")
    os.makedirs(cpdir)
    t0 = time.monotonic()
    subprocess.run(["cp", lb, os.path.join(cpdir, "copy")], check=True)
    t_cp = time.monotonic() - t0
    t0 = time.monotonic()
    subprocess.run(["sh", "-c", 'cp "$0" "$1" && sync "$1"', lb, os.path.join(cpdir, "copy2")],
                   check=True)
    t_cpsync = time.monotonic() - t0
    print("throughput (%.0f MB, %s): export %.0f MB/s, import %.0f MB/s "
          "(verify pass + publish pass), cp %.0f MB/s, cp+sync %.0f MB/s"
          % (nbytes / 1e6, os.path.relpath(s.bin, lib.ROOT), _mbps(nbytes, t_export), _mbps(nbytes, t_import),
             _mbps(nbytes, t_cp), _mbps(nbytes, t_cpsync)))


def test_mirror_platform_and_failures(t):
    """--platform mirrors only the named platform of an index; an image that does not exist
    fails alone, named with the proxy's error, and the exit status is 1."""
    s = t.s
    reg = t.private_registry("anon", images={
        "ns/multiarch:v1": "oci:%s:v1" % s.images["multiarch"]["dir"]})
    idx = json.loads(reg.pushed["ns/multiarch:v1"]["body"])
    arm = [d for d in idx["manifests"] if d["platform"]["architecture"] == "arm64"][0]
    amd = [d for d in idx["manifests"] if d["platform"]["architecture"] == "amd64"][0]
    ms = {d["digest"]: m for d, m in zip(idx["manifests"],
                                          lib.image_manifests(reg, "ns/multiarch:v1"))}
    arm_blobs = {ms[arm["digest"]]["config"]["digest"]} | {
        x["digest"] for x in ms[arm["digest"]]["layers"]}
    amd_only = ({ms[amd["digest"]]["config"]["digest"]} |
                {x["digest"] for x in ms[amd["digest"]]["layers"]}) - arm_blobs
    lst = os.path.join(t.tmp, "list")
    with open(lst, "w") as f:
        f.write("%s/ns/multiarch:v1\n%s/ns/nothere:v1\n" % (NAME, NAME))
    cache = os.path.join(t.tmp, "cache")
    conf = _conf(t, os.path.join(t.tmp, "c.conf"), cache, reg=reg)
    mk = reg.mark()
    rc, out, err = _run(t, ["mirror", "-c", conf, lst, "--platform", "linux/arm64"], ok=False)
    eq(rc, 1, "mirror exit status with one image failing (stdout %r, stderr %r)"
       % (out[-800:], err[-800:]))
    check(re.search(r"^ok %s/ns/multiarch:v1@%s" % (re.escape(NAME), idx and
                                                   reg.pushed["ns/multiarch:v1"]["digest"]),
                    out, re.M), "ok line for the multi-arch image: %s" % out)
    m = re.search(r"^FAILED %s/ns/nothere:v1: manifest v1: HTTP 404 (.*)$" % re.escape(NAME),
                  out, re.M)
    check(m, "the failing image should be named with the proxy's error: %s" % out)
    check("MANIFEST_UNKNOWN" in m.group(1), "the proxy's error JSON in the failure: %s"
          % m.group(1))
    check(re.search(r"^mirror: 1 of 2 images ok, 1 failed", out, re.M), "summary: %s" % out)
    got = set(_blob_gets(reg, mk))
    eq(got & amd_only, set(), "blobs of linux/amd64 fetched by a linux/arm64 mirror")
    check(arm_blobs <= got, "blobs of linux/arm64 fetched: %s of %s" % (got, arm_blobs))
    child_gets = [p for m_, p, st in reg.since(mk) if "/manifests/" in p]
    check(not any(amd["digest"] in p for p in child_gets),
          "the amd64 manifest should not be fetched: %s" % child_gets)
    rc, _, err = _run(t, ["mirror", "-c", conf, lst, "--platform", "linux"], ok=False)
    eq(rc, 2, "exit status for a bad --platform")
    check("bad --platform" in err, "message for a bad --platform: %r" % err)

    # The platform mirrored is all an offline proxy on that cache has.
    p = t.proxy(registries=[{"name": NAME}], cache={"dir": cache, "offline": "yes"})
    r = p.get("/v2/ns/multiarch/manifests/" + arm["digest"], headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, lib.sha256(r.body)), (200, arm["digest"]), "arm64 manifest offline")
    r = p.get("/v2/ns/multiarch/manifests/" + amd["digest"], headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, r.error_codes()), (404, ["MANIFEST_UNKNOWN"]), "amd64 manifest offline")
    s.skopeo(["copy", "-q", "--override-arch", "arm64", "--preserve-digests",
              "--src-tls-verify=false", "--src-no-creds",
              "docker://%s/ns/multiarch:v1" % p.hostport, "oci:%s/arm:v1" % t.tmp], timeout=120)


def test_offline_conf_and_lock(t):
    """A registry section may have no url only when offline; import refuses a cache that a
    running proxy holds, saying so."""
    cache = os.path.join(t.tmp, "cache")
    bad = os.path.join(t.tmp, "bad.conf")
    with open(bad, "w") as f:
        f.write('[listen "127.0.0.1:1"]\n[cache]\ndir = %s\n[registry "%s"]\n' % (cache, NAME))
    rc, _, err = _run(t, ["check", "-c", bad], ok=False)
    check(rc != 0 and "missing required key 'url'" in err,
          "a registry without url that is not offline: %r" % err)
    p = t.proxy(registries=[{"name": NAME, "offline": "yes"}], cache={"dir": cache})
    check("is offline" in p.log_text(), "start-up log should say the registry is offline")
    conf = _conf(t, os.path.join(t.tmp, "c.conf"), cache, offline=True)
    bundle = os.path.join(t.tmp, "none.rpb")
    with open(bundle, "wb") as f:
        f.write(b"RPBUNDLE" + b"\0" * 24)
    rc, _, err = _run(t, ["import", "-c", conf, bundle], ok=False)
    check(rc != 0 and "bad bundle header" in err, "garbage header: %r" % err)
    lb = os.path.join(t.tmp, "l.list")
    with open(lb, "w") as f:
        f.write("%s/ns/x:v1\n" % NAME)
    rc, _, err = _run(t, ["export", "-c", conf, lb, "-o", bundle], ok=False)
    check(rc != 0 and "in use" in err and "lock" in err,
          "export while a proxy holds the cache: %r" % err)
    r = p.get("/v2/ns/x/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, r.error_codes()), (404, ["MANIFEST_UNKNOWN"]), "offline, empty cache")


def test_mirror_fails_an_image_it_could_not_cache(t):
    """A cache whose disk cannot take ns/large:v1's 100 MiB layer: the proxy passes the layer
    through uncached, verified. The mirror used to say ok, exit 0 and pin the image; export
    then found it missing, and every rerun said ok again. It must fail the image, naming
    the blob, and pin nothing."""
    import test_cache_disk_full
    fs = test_cache_disk_full._small_fs(t)
    if not fs:
        return
    reg = t.s.anon_registry
    cache = os.path.join(fs, "cache")
    conf = os.path.join(t.tmp, "m.conf")
    _conf(t, conf, cache, reg)
    lst = os.path.join(t.tmp, "list")
    with open(lst, "w") as f:
        f.write("%s/ns/large:v1\n" % NAME)
    rc, out, err = _run(t, ["mirror", "-c", conf, lst], ok=False)
    big = max(lib.image_manifests(reg, "ns/large:v1")[0]["layers"], key=lambda x: x["size"])
    check(not os.path.exists(lib.cache_path(cache, "blobs", big["digest"])),
          "the 100 MiB layer fit on a 24 MiB file system?")
    eq(rc, 1, "mirror's exit status:\n%s\n%s" % (out, err[-1500:]))
    check(("FAILED %s/ns/large:v1: %s" % (NAME, big["digest"])) in out,
          "the failure does not name the layer:\n" + out)
    pins = os.path.join(cache, "pins")
    check(not os.path.exists(pins) or "ns/large" not in open(pins).read(),
          "the image was pinned though not cached")
