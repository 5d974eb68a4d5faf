# SPDX-License-Identifier: Apache-2.0
"""Disconnected-cluster workflows against a static plain-HTTP upstream (rawup): mirror
--platform through an index of indexes, a mirror rerun after a tag moved, an older bundle
imported after a newer one, split parts in the wrong order, a list saved on Windows, an
empty list, an interrupted mirror, mirrors that together exceed max_size, bundles rewritten as a
hostile party would (records re-encoded with the lz4 tool, the trailer recomputed), an import's
disk syncs, and verify naming the imported images it found damaged."""
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import lib
import rawup
from lib import check, eq
from test_cache_verify import _flip
from test_disconnected import ASAN_ENV, _run

NAME = "raw.test"
OCI_IDX = "application/vnd.oci.image.index.v1+json"
OCI_MAN = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MAN = "application/vnd.docker.distribution.manifest.v2+json"


def sha(b):
    return rawup.sha256(b)


class Store:
    def __init__(self):
        self.manifests = {}  # (repo, ref) -> (bytes, media type)
        self.blobs = {}

    def blob(self, data):
        d = sha(data)
        self.blobs[d] = data
        return {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d,
                "size": len(data)}

    def manifest(self, repo, body, mt, tag=None):
        b = json.dumps(body).encode()
        d = sha(b)
        self.manifests[(repo, d)] = (b, mt)
        if tag:
            self.manifests[(repo, tag)] = (b, mt)
        return {"mediaType": mt, "digest": d, "size": len(b)}

    def image(self, repo, arch, tag=None):
        cfg = json.dumps({"architecture": arch, "os": "linux", "rootfs": {"type": "layers",
                          "diff_ids": []}, "x": os.urandom(8).hex()}).encode()
        c = self.blob(cfg)
        c["mediaType"] = "application/vnd.oci.image.config.v1+json"
        layer = self.blob(os.urandom(4096))
        return self.manifest(repo, {"schemaVersion": 2, "mediaType": OCI_MAN, "config": c,
                                    "layers": [layer]}, OCI_MAN, tag)

    def big_image(self, repo, layers, size, tag):
        """An image of `layers` random layers of `size` bytes each: (manifest, layers)."""
        big = [self.blob(os.urandom(size)) for _ in range(layers)]
        cfg = self.blob(b'{"architecture":"amd64","os":"linux"}')
        cfg["mediaType"] = "application/vnd.oci.image.config.v1+json"
        man = self.manifest(repo, {"schemaVersion": 2, "mediaType": OCI_MAN, "config": cfg,
                                   "layers": big}, OCI_MAN, tag)
        return man, big

    def handler(self):
        def h(r):
            m = re.match(r"^/v2/(.+)/(manifests|blobs)/([^/?]+)$", r.path)
            if r.path in ("/v2/", "/v2"):
                r.send(200, b"{}", [("Content-Type", "application/json")])
            elif m and m.group(2) == "manifests" and (m.group(1), m.group(3)) in self.manifests:
                b, mt = self.manifests[(m.group(1), m.group(3))]
                r.answer(b, mt, sha(b))
            elif m and m.group(2) == "blobs" and m.group(3) in self.blobs:
                b = self.blobs[m.group(3)]
                r.answer(b, "application/octet-stream", m.group(3))
            else:
                r.send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}',
                       [("Content-Type", "application/json")])
            return False
        return h


def _conf(path, cache_dir, up=None, offline=False, name=NAME, max_size=None):
    lines = ['[listen "127.0.0.1:%d"]' % lib.free_port(), "default = %s" % name, "",
             "[cache]", "dir = %s" % cache_dir]
    if offline:
        lines.append("offline = yes")
    if max_size:
        lines.append("max_size = %s" % max_size)
    lines += ["", '[registry "%s"]' % name, "test_login = no"]
    if up is not None:
        lines += ["url = %s" % up.url]
    lines += ["", "[admin]", "listen = off", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def _reap(p):
    """Kills child p if it is still running (a test failed while it ran)."""
    if p.poll() is None:
        p.kill()
        p.wait()


def _decoded(out, err, who):
    """A child's stdout and stderr as text; fails on a sanitizer report in either."""
    out, err = out.decode(errors="replace"), err.decode(errors="replace")
    for m in lib.SANITIZER_MARKERS:
        check(m not in out + err, "sanitizer report from %s:\n%s" % (who, err[-6000:]))
    return out, err


def _list(t, ref):
    """A mirror list naming NAME/ref."""
    lst = os.path.join(t.tmp, "list")
    with open(lst, "w") as f:
        f.write("%s/%s\n" % (NAME, ref))
    return lst


def _mirrored(t, up, ref, name="c"):
    """A configuration NAME.conf with cache dir cache-NAME in front of up, ref mirrored into
    it: (configuration path, list path)."""
    lst = _list(t, ref)
    conf = _conf(os.path.join(t.tmp, name + ".conf"), os.path.join(t.tmp, "cache-" + name), up)
    _run(t, ["mirror", "-c", conf, lst])
    return conf, lst


def test_platform_index_of_indexes(t):
    """An index whose children are indexes (no platform on the inner descriptors, as
    buildx/oras write them): --platform linux/arm64 should mirror the arm64 image."""
    st = Store()
    amd = st.image("ns/nest", "amd64")
    arm = st.image("ns/nest", "arm64")
    amd["platform"] = {"os": "linux", "architecture": "amd64"}
    arm["platform"] = {"os": "linux", "architecture": "arm64"}
    inner = st.manifest("ns/nest", {"schemaVersion": 2, "mediaType": OCI_IDX,
                                    "manifests": [amd, arm]}, OCI_IDX)
    st.manifest("ns/nest", {"schemaVersion": 2, "mediaType": OCI_IDX, "manifests": [inner]},
                OCI_IDX, tag="v1")
    up = rawup.RawUpstream(t, st.handler())
    lst = _list(t, "ns/nest:v1")
    conf = _conf(os.path.join(t.tmp, "c.conf"), os.path.join(t.tmp, "cache"), up)
    rc, out, err = _run(t, ["mirror", "-c", conf, lst], ok=False)
    eq(rc, 0, "mirror of an index of indexes without --platform (stderr %r)" % err[-500:])
    conf2 = _conf(os.path.join(t.tmp, "c2.conf"), os.path.join(t.tmp, "cache2"), up)
    rc, out, err = _run(t, ["mirror", "-c", conf2, lst, "--platform", "linux/arm64"], ok=False)
    eq(rc, 0, "mirror --platform linux/arm64 of an index of indexes (stdout %r, stderr %r)"
       % (out, err[-500:]))


def test_platform_child_without_platform(t):
    """An index entry that names no platform is for every platform: containerd's pulls take
    it (images.FilterPlatforms keeps a descriptor whose Platform is nil). mirror --platform
    left it out, so an index whose image names no platform failed to mirror, and an offline
    cluster could not pull it."""
    st = Store()
    img = st.image("ns/noplat", "amd64")
    st.manifest("ns/noplat", {"schemaVersion": 2, "mediaType": OCI_IDX, "manifests": [img]},
                OCI_IDX, tag="v1")
    up = rawup.RawUpstream(t, st.handler())
    lst = _list(t, "ns/noplat:v1")
    conf = _conf(os.path.join(t.tmp, "c.conf"), os.path.join(t.tmp, "cache"), up)
    rc, out, err = _run(t, ["mirror", "-c", conf, lst, "--platform", "linux/amd64"], ok=False)
    eq(rc, 0, "mirror --platform linux/amd64 of an index whose image names no platform "
       "(stdout %r, stderr %r)" % (out, err[-500:]))
    up.close()
    p = t.proxy(registries=[{"name": NAME}],
                cache={"dir": os.path.join(t.tmp, "cache"), "offline": "yes"})
    r = p.get("/v2/ns/noplat/manifests/" + img["digest"], headers={"Accept": lib.ACCEPT_ALL})
    eq(r.status, 200, "the image, offline, after the mirror")


def test_import_disk_full_midway(t):
    """import into a cache that runs out of room half-way through the blobs: no manifest
    naming a blob that did not make it may be published (clients would start that pull and
    fail on a layer). On a 2 MiB tmpfs of the test's own: mounting needs root."""
    if os.geteuid() != 0:
        print("    skipped: mounting a tmpfs needs root (uid %d)" % os.geteuid(), flush=True)
        return
    st = Store()
    man, big = st.big_image("ns/big", 3, 1200 * 1024, "v1")
    conf, _ = _mirrored(t, rawup.RawUpstream(t, st.handler()), "ns/big:v1")
    bundle = os.path.join(t.tmp, "b.rpb")
    _run(t, ["export", "-c", conf, "-o", bundle])
    small = os.path.join(t.tmp, "small-fs")
    os.makedirs(small)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", small], check=True)
    t.defer(lambda: subprocess.run(["umount", "-l", small]))
    cache2 = os.path.join(small, "cache")
    conf2 = _conf(os.path.join(t.tmp, "off.conf"), cache2, offline=True)
    rc, out, err = _run(t, ["import", "-c", conf2, bundle], ok=False)
    check(rc != 0, "import into a 2 MiB file system should fail")
    p = t.proxy(registries=[{"name": NAME}], cache={"dir": cache2, "offline": "yes"})
    r = p.get("/v2/ns/big/manifests/" + man["digest"], headers={"Accept": lib.ACCEPT_ALL})
    blobs = [p.get("/v2/ns/big/blobs/" + b["digest"]).status for b in big]
    check(not (r.status == 200 and 404 in blobs),
          "after the failed import the offline proxy serves manifest %s (HTTP %d) whose "
          "layers answer %s" % (man["digest"], r.status, blobs))


def test_import_older_bundle_rolls_tag_back(t):
    """Weekly bundles imported out of order: the bundle made later (tag v1 -> B) and then an
    older one (v1 -> A, recorded earlier, tag_time in the bundle says so). The import sets
    the tag back to A although the cache's record is newer."""
    st = Store()
    st.image("ns/app", "amd64", tag="v1")
    up = rawup.RawUpstream(t, st.handler())
    confa, _ = _mirrored(t, up, "ns/app:v1", "a")
    old = os.path.join(t.tmp, "week1.rpb")
    _run(t, ["export", "-c", confa, "-o", old])
    time.sleep(2)
    b = st.image("ns/app", "amd64", tag="v1")  # the tag moves upstream
    confb, _ = _mirrored(t, up, "ns/app:v1", "b")
    new = os.path.join(t.tmp, "week2.rpb")
    _run(t, ["export", "-c", confb, "-o", new])
    cache2 = os.path.join(t.tmp, "cache-off")
    conf2 = _conf(os.path.join(t.tmp, "off.conf"), cache2, offline=True)
    _run(t, ["import", "-c", conf2, new])
    _run(t, ["import", "-c", conf2, old])
    p = t.proxy(registries=[{"name": NAME}], cache={"dir": cache2, "offline": "yes"})
    r = p.get("/v2/ns/app/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq(r.headers.get("docker-content-digest"), b["digest"], "tag v1 after importing week 2's bundle and then week 1's")


def test_mirror_rerun_after_tag_moved(t):
    """mirror, the tag moves upstream, mirror again (within [cache] tag_ttl, 10m by
    default): the rerun should mirror what the tag names now, not the cached record."""
    st = Store()
    st.image("ns/app", "amd64", tag="v1")
    up = rawup.RawUpstream(t, st.handler())
    conf, lst = _mirrored(t, up, "ns/app:v1")
    b = st.image("ns/app", "amd64", tag="v1")
    _, out, _ = _run(t, ["mirror", "-c", conf, lst])
    check(b["digest"] in out, "the rerun should mirror the tag's new digest %s:\n%s"
          % (b["digest"], out))


def test_split_parts_swapped(t):
    """Two equal-size parts of a split bundle swapped (copied from media in the wrong
    order): refused without touching the cache, with a message that helps."""
    st = Store()
    st.big_image("ns/big", 2, 300 * 1024, "v1")
    conf, _ = _mirrored(t, rawup.RawUpstream(t, st.handler()), "ns/big:v1")
    d = os.path.join(t.tmp, "media")
    os.makedirs(d)
    _run(t, ["export", "-c", conf, "-o", os.path.join(d, "b.rpb"), "--split", "64K"])
    parts = sorted(os.listdir(d))
    p1, p2 = os.path.join(d, parts[2]), os.path.join(d, parts[3])
    os.rename(p1, p1 + ".x")
    os.rename(p2, p1)
    os.rename(p1 + ".x", p2)
    cache2 = os.path.join(t.tmp, "cache-off")
    conf2 = _conf(os.path.join(t.tmp, "off.conf"), cache2, offline=True)
    rc, out, err = _run(t, ["import", "-c", conf2, os.path.join(d, "b.rpb")], ok=False)
    eq(rc, 1, "exit status of the import of swapped parts (stderr %r)" % err)
    check(re.search(r"\(in parts? %s" % re.escape(os.path.join(d, "b.rpb.00")), err),
          "the message should name where the stream went wrong: %r" % err)
    blobs = os.path.join(cache2, "blobs")
    check(not os.path.exists(blobs) or not os.listdir(blobs), "cache untouched")


def test_mirror_list_written_on_windows(t):
    """A list saved by Notepad or PowerShell (Set-Content -Encoding UTF8): a UTF-8 byte order
    mark, CRLF line ends, trailing spaces. The mark was taken for part of the first reference,
    refused as "spaces or control characters" with an invisible quote. A UTF-16 list
    (Windows PowerShell's `>`) is refused saying what it is."""
    st = Store()
    a = st.image("ns/app", "amd64", tag="v1")
    b = st.image("ns/other", "amd64", tag="v2")
    up = rawup.RawUpstream(t, st.handler())
    conf = _conf(os.path.join(t.tmp, "c.conf"), os.path.join(t.tmp, "cache"), up)
    lst = os.path.join(t.tmp, "list")
    text = "%s/ns/app:v1  \r\n# comment\r\n\r\n%s/ns/other:v2\r\n" % (NAME, NAME)
    with open(lst, "wb") as f:
        f.write(b"\xef\xbb\xbf" + text.encode())
    rc, out, err = _run(t, ["mirror", "-c", conf, lst], ok=False)
    eq(rc, 0, "mirror of a list with a byte order mark (stdout %r, stderr %r)" % (out, err))
    for ref, d in (("ns/app:v1", a["digest"]), ("ns/other:v2", b["digest"])):
        check("ok %s/%s@%s" % (NAME, ref, d) in out, "%s not mirrored:\n%s" % (ref, out))
    with open(lst, "wb") as f:
        f.write(text.encode("utf-16"))
    rc, out, err = _run(t, ["mirror", "-c", conf, lst], ok=False)
    eq(rc, 1, "mirror of a UTF-16 list (stdout %r, stderr %r)" % (out, err))
    check("%s: UTF-16" % lst in err, "the message should name the file and UTF-16: %r" % err)


def test_mirror_empty_list(t):
    """A list with nothing but comments and blank lines, as left by a failed `oc adm release
    info ... > LIST`: the mirror said "0 of 0 images ok" and exited 0, so a script went on to
    disconnect the cluster with nothing mirrored. It must fail, saying the list is empty."""
    st = Store()
    st.image("ns/app", "amd64", tag="v1")
    up = rawup.RawUpstream(t, st.handler())
    conf = _conf(os.path.join(t.tmp, "c.conf"), os.path.join(t.tmp, "cache"), up)
    lst = os.path.join(t.tmp, "list")
    with open(lst, "w") as f:
        f.write("# images for 4.14\n\n   \n")
    rc, out, err = _run(t, ["mirror", "-c", conf, lst], ok=False)
    eq(rc, 1, "mirror of an empty list (stdout %r, stderr %r)" % (out, err))
    check("%s names no image" % lst in err, "the message should say the list is empty: %r" % err)


def _stalled_mirror_upstream(t, repos, stall_repo, drop=False):
    """An upstream holding ns/REPO:v1 for each of repos (one 64 KiB layer each), whose layer
    of ns/stall_repo hangs until `release` is set (then served, or the connection dropped):
    (upstream, {repo: (manifest, layers)}, reached event, release event, list of the paths
    asked for)."""
    st = Store()
    imgs = {r: st.big_image("ns/" + r, 1, 64 * 1024, "v1") for r in repos}
    stall = imgs[stall_repo][1][0]["digest"]
    reached, release = threading.Event(), threading.Event()
    inner = st.handler()
    asked = []

    def handler(r):
        asked.append(r.path)
        if r.path.endswith("/blobs/" + stall) and not release.is_set():
            reached.set()
            release.wait(60)  # until the test has done what it does while it hangs
            if drop:
                return False
        return inner(r)
    up = rawup.RawUpstream(t, handler)
    t.defer(release.set)
    return up, imgs, reached, release, asked


def _mirror_conf(t, cache, up, repos):
    """c.conf in front of up with the cache dir cache, and a list of NAME/ns/REPO:v1 for
    repos: (configuration path, list path)."""
    conf = _conf(os.path.join(t.tmp, "c.conf"), cache, up)
    lst = os.path.join(t.tmp, "list")
    with open(lst, "w") as f:
        f.write("".join("%s/ns/%s:v1\n" % (NAME, r) for r in repos))
    return conf, lst


def test_mirror_interrupted(t):
    """SIGINT while an image is being mirrored: the images finished before it are ok and
    pinned; the one under way is named ("interrupted NAME"), neither reported ok nor pinned;
    the summary counts it apart from those not started, and is the last line (an image whose
    last flush completed as the cache closed used to print a FAILED line after it); exit 1.
    A rerun then mirrors all of them."""
    up, imgs, reached, release, _ = _stalled_mirror_upstream(t, ("a", "b", "c"), "b", drop=True)
    cache = os.path.join(t.tmp, "cache")
    conf, lst = _mirror_conf(t, cache, up, ("a", "b", "c"))
    p = subprocess.Popen([t.s.bin, "mirror", "-c", conf, lst, "-j", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=lib.clean_env(ASAN_ENV))
    try:
        check(reached.wait(60), "the mirror never asked for the layer of ns/b")
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=60)
    finally:
        _reap(p)
    out, err = _decoded(out, err, "the mirror")
    eq(p.returncode, 1, "exit status of the interrupted mirror (stdout %r)" % out)
    lines = out.strip().split("\n")
    check(len(lines) == 4 and lines[0].startswith("ok %s/ns/a:v1@" % NAME) and
          lines[1] == "mirror: signal 2: stopping (a rerun resumes)",
          "the interrupted mirror's output should be the ok line of ns/a, the signal, a line "
          "naming ns/b and the summary:\n%s" % out)
    eq(lines[2], "interrupted %s/ns/b:v1: not mirrored, nor pinned; a rerun resumes it" % NAME,
       "the line for the image under way")
    check(lines[3].startswith("mirror: 1 of 3 images ok, 0 failed, 1 interrupted, "
                              "1 not started; "), "summary of the interrupted mirror: %r"
          % lines[3])
    pins = open(os.path.join(cache, "pins")).read().split()
    eq(pins, ["%s/ns/a:v1@%s" % (NAME, imgs["a"][0]["digest"])], "the pins file")

    release.set()
    rc, out, err = _run(t, ["mirror", "-c", conf, lst])
    check(re.search(r"^mirror: 3 of 3 images ok, 0 failed;", out, re.M),
          "the rerun's summary: %r" % out)
    pins = open(os.path.join(cache, "pins")).read().split()
    eq(sorted(pins), sorted("%s/ns/%s:v1@%s" % (NAME, r, imgs[r][0]["digest"]) for r in imgs),
       "the pins file after the rerun")


def _loopback_listeners(pid):
    """Ports process pid listens on at 127.0.0.1 (/proc/net/tcp: state 0A, its socket inode
    among the process's descriptors)."""
    inodes = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            m = re.match(r"socket:\[(\d+)\]$", os.readlink("/proc/%d/fd/%s" % (pid, fd)))
        except OSError:
            continue
        if m:
            inodes.add(m.group(1))
    ports = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            addr, port = fields[1].split(":")
            if fields[3] == "0A" and addr == "0100007F" and fields[9] in inodes:
                ports.add(int(port, 16))
    return ports


def test_mirror_internal_listener_serves_only_the_mirror(t):
    """`regproxy mirror` pulls through an in-process listener on 127.0.0.1, with the
    configuration's credentials and no allow list or client accounts of its own. Any local
    user who found its port while a mirror ran (a scan of 127.0.0.1, /proc/net/tcp) used to
    pull through it, anonymously, any repository the registry credentials can read. Only the
    mirror's own requests may be served there."""
    up, _, reached, release, asked = _stalled_mirror_upstream(t, ("a", "secret"), "a")
    conf, lst = _mirror_conf(t, os.path.join(t.tmp, "cache"), up, ("a",))
    p = subprocess.Popen([t.s.bin, "mirror", "-c", conf, lst],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=lib.clean_env(ASAN_ENV))
    try:
        check(reached.wait(60), "the mirror never asked for the layer of ns/a")
        served = []
        for port in sorted(_loopback_listeners(p.pid)):
            try:
                r = lib.request("http://127.0.0.1:%d/v2/%s/ns/secret/manifests/v1" % (port, NAME),
                                headers={"Accept": OCI_MAN}, timeout=10)
            except Exception:
                continue
            if r.header("X-Request-Id"):  # a regproxy listener: the mirror's
                served.append((port, r.status, r.body[:100]))
        eq(len(served), 1, "regproxy listeners of the mirror on 127.0.0.1: %r" % served)
        for port, status, body in served:
            check(status in (401, 403),
                  "another local client asked the mirror's listener (port %d) for a repository "
                  "the mirror was not asked for and got %d %r" % (port, status, body))
        check(not any("/ns/secret/" in a for a in asked),
              "upstream was asked for ns/secret: %r" % [a for a in asked if "secret" in a])
        release.set()
        out, err = p.communicate(timeout=120)
    finally:
        _reap(p)
    out, err = _decoded(out, err, "the mirror")
    eq(p.returncode, 0, "exit status of the mirror (stdout %r, stderr %r)" % (out, err[-2000:]))
    check(re.search(r"^mirror: 1 of 1 images ok, 0 failed;", out, re.M),
          "the mirror's summary: %r" % out)


def test_mirror_beyond_max_size(t):
    """Mirrored content is pinned and kept past max_size (as documented), whether the pinned
    bytes come from earlier lines of the list or from an earlier mirror. An image named by
    tag used to fail once they passed max_size ("not kept by the cache"): its manifest, whose
    digest the mirror learns only from the answer, was published unpinned and evicted at
    once, and the image was left out of the pins file."""
    st = Store()
    imgs = {r: st.big_image("ns/" + r, 2, 600 * 1024, "v1") for r in ("a", "b", "c")}
    up = rawup.RawUpstream(t, st.handler())
    cache = os.path.join(t.tmp, "cache")
    conf = _conf(os.path.join(t.tmp, "c.conf"), cache, up, max_size="1M")
    lst = os.path.join(t.tmp, "list")
    for names in (("a", "b"), ("c",)):
        with open(lst, "w") as f:
            f.write("".join("%s/ns/%s:v1\n" % (NAME, r) for r in names))
        # -j 1: b starts once a is complete, its pinned bytes already past max_size
        rc, out, err = _run(t, ["mirror", "-c", conf, lst, "-j", "1"], ok=False)
        eq(rc, 0, "mirror of %s into a cache with max_size 1M (stdout %r, stderr %r)"
           % (names, out, err[-1500:]))
    pins = open(os.path.join(cache, "pins")).read()
    p = t.proxy(registries=[{"name": NAME}], cache={"dir": cache, "offline": "yes",
                                                   "max_size": "1M"})
    for r, (man, layers) in sorted(imgs.items()):
        check("%s/ns/%s:v1@%s" % (NAME, r, man["digest"]) in pins, "ns/%s:v1 not in the pins "
              "file:\n%s" % (r, pins))
        g = p.get("/v2/ns/%s/manifests/v1" % r, headers={"Accept": lib.ACCEPT_ALL})
        eq((g.status, g.headers.get("docker-content-digest")), (200, man["digest"]),
           "ns/%s:v1 served offline after the mirror" % r)
        for layer in layers:
            got = lib.stream_get(p.port, "/v2/ns/%s/blobs/%s" % (r, layer["digest"]))
            eq((got.status, got.digest), (200, layer["digest"]), "ns/%s layer offline" % r)


def test_mirror_writes_the_pins_file_in_batches(t):
    """Each mirrored image rewrote the whole pins file (read, rewritten, fsynced, renamed):
    quadratic in the list's length, 4,000 images spent more time rewriting it than pulling,
    and a list at the 100,000-image limit would have written hundreds of GB. Images that
    complete together are now recorded together (at most one rewrite a second), each
    reported ok only once its line is in the file."""
    n = 300
    st = Store()
    st.image("ns/many", "amd64", tag="t0")
    body = st.manifests[("ns/many", "t0")]
    for i in range(1, n):
        st.manifests[("ns/many", "t%d" % i)] = body
    up = rawup.RawUpstream(t, st.handler())
    cache = os.path.join(t.tmp, "cache")
    conf = _conf(os.path.join(t.tmp, "c.conf"), cache, up)
    lst = os.path.join(t.tmp, "list")
    with open(lst, "w") as f:
        f.write("".join("%s/ns/many:t%d\n" % (NAME, i) for i in range(n)))
    trace = os.path.join(t.tmp, "mirror.strace")
    p = subprocess.run(["strace", "-f", "-qq", "-o", trace, "-e",
                        "trace=rename,renameat,renameat2", t.s.bin, "mirror", "-c", conf, lst,
                        "-j", "8"], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=lib.clean_env(dict(ASAN_ENV, ASAN_OPTIONS=ASAN_ENV["ASAN_OPTIONS"]
                                              .replace("detect_leaks=1", "detect_leaks=0"))),
                       timeout=600)  # LeakSanitizer does not run under ptrace
    out, err = _decoded(p.stdout, p.stderr, "regproxy mirror")
    eq(p.returncode, 0, "exit status of the mirror (stdout %r, stderr %r)" % (out[-2000:],
                                                                            err[-2000:]))
    eq(len(re.findall(r"^ok %s/ns/many:t\d+@" % NAME, out, re.M)), n, "ok lines")
    check(re.search(r"^mirror: %d of %d images ok, 0 failed;" % (n, n), out, re.M),
          "the summary: %r" % out[-300:])
    pins = open(os.path.join(cache, "pins")).read().split()
    eq(sorted(pins), sorted("%s/ns/many:t%d@%s" % (NAME, i, sha(body[0])) for i in range(n)),
       "the pins file")
    with open(trace) as f:
        rewrites = sum(1 for line in f if re.search(r'rename\w*\(.*"[^"]*/pins"', line))
    check(1 <= rewrites <= n // 4, "the pins file was rewritten %d times for %d images"
          % (rewrites, n))

def _lz4(data, decode=False):
    p = subprocess.run(["lz4", "-q", "-c"] + (["-d"] if decode else []), input=data,
                       stdout=subprocess.PIPE, check=True)
    return p.stdout


def _bundle_read(path):
    """A one-file bundle as (metadata dict, [[type, name, data]]), records decoded (LZ4 frames
    of the metadata and manifests undone); the trailer left out."""
    with open(path, "rb") as f:
        b = f.read()
    pos, recs = 32, []
    while True:
        typ, nl, dl = b[pos], int.from_bytes(b[pos + 4:pos + 8], "big"), \
            int.from_bytes(b[pos + 8:pos + 16], "big")
        name = b[pos + 16:pos + 16 + nl].decode()
        data = b[pos + 16 + nl:pos + 16 + nl + dl]
        pos += 16 + nl + dl
        if typ == ord("T"):
            break
        recs.append([chr(typ), name, _lz4(data, True) if typ in b"Mm" else data])
    return json.loads(recs[0][2]), recs[1:]


def _bundle_write(path, meta, recs):
    """The bundle of _bundle_read's parts, as a valid stream (lengths and trailer right)."""
    body = b""
    for typ, name, data in [["M", "", json.dumps(meta).encode()]] + recs:
        data = _lz4(data) if typ in "Mm" else data
        body += bytes([ord(typ), 0, 0, 0]) + len(name).to_bytes(4, "big") + \
            len(data).to_bytes(8, "big") + name.encode() + data
    total = 32 + len(body) + 16 + 32
    head = b"RPBUNDLE" + (1).to_bytes(4, "big") + bytes(4) + total.to_bytes(8, "big") + bytes(8)
    with open(path, "wb") as f:
        f.write(head + body + b"T" + bytes(7) + (32).to_bytes(8, "big") +
                hashlib.sha256(head + body).digest())


def test_import_bundle_media_type_not_relabelling(t):
    """A bundle's metadata gives each manifest a media type, which import stored as it came,
    replacing the type the cache had for those bytes: a bundle (hostile, or made by a tool
    that got it wrong) relabelled an image every registry linking that digest serves, and
    clients then failed to parse it. As the proxy does for what it fetches, the bytes' own
    mediaType is the type kept."""
    st = Store()
    man = st.image("ns/app", "amd64", tag="v1")
    conf, _ = _mirrored(t, rawup.RawUpstream(t, st.handler()), "ns/app:v1")
    good = os.path.join(t.tmp, "good.rpb")
    _run(t, ["export", "-c", conf, "-o", good])
    meta, recs = _bundle_read(good)
    eq([m["media_type"] for m in meta["manifests"]], [OCI_MAN], "exported media types")
    meta["manifests"][0]["media_type"] = "text/html"
    bad = os.path.join(t.tmp, "relabel.rpb")
    _bundle_write(bad, meta, recs)
    cache2 = os.path.join(t.tmp, "cache-off")
    conf2 = _conf(os.path.join(t.tmp, "off.conf"), cache2, offline=True)
    _run(t, ["import", "-c", conf2, good])
    rc, out, err = _run(t, ["import", "-c", conf2, bad], ok=False)
    p = t.proxy(registries=[{"name": NAME}], cache={"dir": cache2, "offline": "yes"})
    r = p.get("/v2/ns/app/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, r.headers.get("content-type"), r.headers.get("docker-content-digest")),
       (200, OCI_MAN, man["digest"]),
       "manifest after importing a bundle that calls it text/html (import exit %d, %r)"
       % (rc, err[-300:]))


def test_import_named_by_a_later_part(t):
    """import given b.rpb.001 of a split bundle (the parts listed, one picked): the header is
    only in b.rpb.000, and the message was "not a regproxy bundle (bad magic)", naming no
    file, as if the media were bad. It names the part to give instead; a file that is not a
    bundle at all is named too."""
    st = Store()
    st.big_image("ns/big", 2, 100 * 1024, "v1")
    conf, _ = _mirrored(t, rawup.RawUpstream(t, st.handler()), "ns/big:v1")
    d = os.path.join(t.tmp, "media")
    os.makedirs(d)
    base = os.path.join(d, "b.rpb")
    _run(t, ["export", "-c", conf, "-o", base, "--split", "64K"])
    check(os.path.exists(base + ".002"), "a 200 kB bundle in 64K parts: %s" % os.listdir(d))
    conf2 = _conf(os.path.join(t.tmp, "off.conf"), os.path.join(t.tmp, "cache-off"),
                  offline=True)
    rc, _, err = _run(t, ["import", "-c", conf2, base + ".001"], ok=False)
    eq(rc, 1, "exit status of an import naming part .001 (stderr %r)" % err)
    check("%s.001 is not the first part of a split bundle: name %s.000" % (base, base) in err,
          "the message should name the first part: %r" % err)
    junk = os.path.join(t.tmp, "junk.bin")
    with open(junk, "wb") as f:
        f.write(b"x" * 64)
    rc, _, err = _run(t, ["import", "-c", conf2, junk], ok=False)
    check(rc == 1 and "%s: not a regproxy bundle" % junk in err,
          "a file that is no bundle, named in the message: %d %r" % (rc, err))
    _run(t, ["import", "-c", conf2, base + ".000"])


def test_import_names_damaged_part(t):
    """A split bundle with one byte flipped in one part (bad media): import refused it with
    "blob sha256:...: content does not match its digest" and no word of which of the parts
    to copy again. The message names the parts the damaged record spans (reordered parts:
    test_split_parts_swapped); a checksum failure of the whole stream names none."""
    st = Store()
    st.big_image("ns/big", 2, 300 * 1024, "v1")
    conf, _ = _mirrored(t, rawup.RawUpstream(t, st.handler()), "ns/big:v1")
    d = os.path.join(t.tmp, "media")
    os.makedirs(d)
    base = os.path.join(d, "b.rpb")
    _run(t, ["export", "-c", conf, "-o", base, "--split", "64K"])
    parts = sorted(x for x in os.listdir(d))
    stream = b"".join(open(os.path.join(d, x), "rb").read() for x in parts)
    # The records of the stream: (start, end, type), to know which parts the blob spans.
    recs, pos = [], 32
    while pos < len(stream):
        nl = int.from_bytes(stream[pos + 4:pos + 8], "big")
        dl = int.from_bytes(stream[pos + 8:pos + 16], "big")
        recs.append((pos, pos + 16 + nl + dl, chr(stream[pos])))
        pos += 16 + nl + dl
    blob = max((r for r in recs if r[2] == "b"), key=lambda r: r[1] - r[0])
    flip = blob[0] + (blob[1] - blob[0]) // 2
    part = 64 << 10
    want = "in parts %s.%03d to %s.%03d" % (base, blob[0] // part, base, (blob[1] - 1) // part)
    check(blob[0] // part < flip // part < (blob[1] - 1) // part, "the blob spans 3+ parts")
    bad = os.path.join(t.tmp, "bad")
    shutil.copytree(d, bad)
    with open(os.path.join(bad, "b.rpb.%03d" % (flip // part)), "r+b") as f:
        f.seek(flip % part)
        b = f.read(1)
        f.seek(flip % part)
        f.write(bytes([b[0] ^ 1]))
    conf2 = _conf(os.path.join(t.tmp, "off.conf"), os.path.join(t.tmp, "cache-off"),
                  offline=True)
    rc, _, err = _run(t, ["import", "-c", conf2, os.path.join(bad, "b.rpb.000")], ok=False)
    eq(rc, 1, "exit status of the import of a damaged part (stderr %r)" % err)
    check("does not match its digest (%s)" % want.replace(d, bad) in err,
          "the message should name the parts of the damaged blob (%r): %r"
          % (want.replace(d, bad), err))
    # The trailer's own checksum covers the whole stream: no part is named.
    shutil.rmtree(bad)
    shutil.copytree(d, bad)
    last = os.path.join(bad, parts[-1])
    with open(last, "r+b") as f:
        f.seek(os.path.getsize(last) - 1)
        b = f.read(1)
        f.seek(os.path.getsize(last) - 1)
        f.write(bytes([b[0] ^ 1]))
    rc, _, err = _run(t, ["import", "-c", conf2, os.path.join(bad, "b.rpb.000")], ok=False)
    check(rc == 1 and "checksum does not match its content (corrupted in transit?)\n" in err,
          "a trailer mismatch names no part: %r" % err)
    _run(t, ["import", "-c", conf2, base])


def test_import_whole_and_split_bundle_of_one_name(t):
    """Last week's export wrote media/b.rpb; this week's bundle outgrew the media's file size
    limit and was exported with --split to the same -o, leaving b.rpb next to b.rpb.000.
    `import b.rpb` read the old file, imported last week's images and exited 0. Both being
    there is refused, naming them."""
    st = Store()
    st.image("ns/app", "amd64", tag="v1")
    conf, lst = _mirrored(t, rawup.RawUpstream(t, st.handler()), "ns/app:v1")
    d = os.path.join(t.tmp, "media")
    os.makedirs(d)
    base = os.path.join(d, "b.rpb")
    _run(t, ["export", "-c", conf, lst, "-o", base])
    new = st.image("ns/app", "amd64", tag="v1")  # the tag moves upstream
    _run(t, ["mirror", "-c", conf, lst])
    _run(t, ["export", "-c", conf, lst, "-o", base, "--split", "64K"])
    cache2 = os.path.join(t.tmp, "cache-off")
    conf2 = _conf(os.path.join(t.tmp, "off.conf"), cache2, offline=True)
    rc, out, err = _run(t, ["import", "-c", conf2, base], ok=False)
    eq(rc, 1, "exit status of `import b.rpb` with b.rpb and b.rpb.000 both there (stdout %r)"
       % out)
    check("both %s and the parts %s.000" % (base, base) in err, "the message: %r" % err)
    check(not os.path.exists(os.path.join(cache2, "pins")), "nothing imported")
    _run(t, ["import", "-c", conf2, base + ".000"])
    p = t.proxy(registries=[{"name": NAME}], cache={"dir": cache2, "offline": "yes"})
    r = p.get("/v2/ns/app/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq(r.headers.get("docker-content-digest"), new["digest"], "tag v1 from the split bundle")


def test_export_oci_warns_of_docker_format(t):
    """export --oci of an image in Docker format (schema 2 manifest or manifest list, most of
    Docker Hub): skopeo and podman look names up in index.json only among OCI manifests and
    indexes, so `skopeo copy oci:DIR:TAG` failed later with "no descriptor found for
    reference" while export had said nothing and exited 0. Export names each such image on
    stderr; OCI images export as before and skopeo reads them."""
    st = Store()
    cfg = st.blob(b'{"architecture":"amd64","os":"linux"}')
    cfg["mediaType"] = "application/vnd.docker.container.image.v1+json"
    layer = st.blob(os.urandom(3000))
    layer["mediaType"] = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    st.manifest("ns/dock", {"schemaVersion": 2, "mediaType": DOCKER_MAN, "config": cfg,
                            "layers": [layer]}, DOCKER_MAN, tag="v1")
    oci_img = st.image("ns/app", "amd64", tag="v2")
    up = rawup.RawUpstream(t, st.handler())
    lst = os.path.join(t.tmp, "list")
    with open(lst, "w") as f:
        f.write("%s/ns/dock:v1\n%s/ns/app:v2\n" % (NAME, NAME))
    conf = _conf(os.path.join(t.tmp, "c.conf"), os.path.join(t.tmp, "cache"), up)
    _run(t, ["mirror", "-c", conf, lst])
    oci = os.path.join(t.tmp, "oci")
    _, out, err = _run(t, ["export", "-c", conf, lst, "--oci", oci])
    check("warning: %s/ns/dock:v1 is in Docker format (%s)" % (NAME, DOCKER_MAN) in err,
          "export should warn of the Docker-format image: %r" % err)
    check("ns/app" not in err, "no warning for the OCI image: %r" % err)
    r = t.s.skopeo(["inspect", "--raw", "oci:%s:v2" % oci])
    eq(lib.sha256(r.stdout), oci_img["digest"], "skopeo inspect of the OCI image")


def test_export_oci_keeps_the_layouts_other_images(t):
    """Two exports into one OCI layout, as `skopeo copy` into oci:DIR:TAG adds to it: the
    second rewrote index.json from scratch, and the first export's names were gone (its
    blobs left unreachable). Now the layout keeps the names the new export does not write,
    and a name it writes again points at the new image, once. What is there and is no OCI
    index is refused, before anything is written."""
    st = Store()
    a = st.image("ns/a", "amd64", tag="v1")
    b = st.image("ns/b", "amd64", tag="v2")
    a2 = st.image("ns/a2", "amd64", tag="v1")
    up = rawup.RawUpstream(t, st.handler())
    conf = _conf(os.path.join(t.tmp, "c.conf"), os.path.join(t.tmp, "cache"), up)
    lists = {}
    for ref in ("ns/a:v1", "ns/b:v2", "ns/a2:v1"):
        lists[ref] = os.path.join(t.tmp, "list-" + ref.replace("/", "_"))
        with open(lists[ref], "w") as f:
            f.write("%s/%s\n" % (NAME, ref))
        _run(t, ["mirror", "-c", conf, lists[ref]])
    oci = os.path.join(t.tmp, "oci")
    for ref in ("ns/a:v1", "ns/b:v2", "ns/b:v2"):
        _run(t, ["export", "-c", conf, lists[ref], "--oci", oci])
    for name, img in (("v1", a), ("v2", b), ("%s/ns/a:v1" % NAME, a),
                      ("%s/ns/b:v2" % NAME, b)):
        r = t.s.skopeo(["inspect", "--raw", "oci:%s:%s" % (oci, name)])
        eq(lib.sha256(r.stdout), img["digest"], "skopeo inspect oci:DIR:%s after both exports"
           % name)
    # Another image tagged v1: the bare v1 is now its, the full names stay each their own.
    _run(t, ["export", "-c", conf, lists["ns/a2:v1"], "--oci", oci])
    with open(os.path.join(oci, "index.json")) as f:
        names = [m["annotations"]["org.opencontainers.image.ref.name"]
                 for m in json.load(f)["manifests"]]
    eq(sorted(names), sorted(["%s/ns/a:v1" % NAME, "%s/ns/b:v2" % NAME, "v2",
                              "%s/ns/a2:v1" % NAME, "v1"]), "index.json's names")
    r = t.s.skopeo(["inspect", "--raw", "oci:%s:v1" % oci])
    eq(lib.sha256(r.stdout), a2["digest"], "oci:DIR:v1 after ns/a2:v1 was exported")
    bad = os.path.join(t.tmp, "bad")
    os.makedirs(bad)
    with open(os.path.join(bad, "index.json"), "w") as f:
        f.write("not json")
    rc, out, err = _run(t, ["export", "-c", conf, lists["ns/a:v1"], "--oci", bad], ok=False)
    eq(rc, 1, "export --oci over a damaged index.json (stdout %r, stderr %r)" % (out, err))
    check("index.json is there but is no OCI image index" in err, "its message: %r" % err)
    eq(sorted(os.listdir(bad)), ["index.json"], "what the refused export left in the directory")


def test_export_oci_is_durable_before_it_ends(t):
    """export --oci fsynced each file, but no directory: after a power cut the layout's
    index.json could name blobs whose renames the directory lost. Under strace -y: every
    blob's rename is followed by an fsync of its directory before index.json is renamed
    into place, and the layout's directory is fsynced after that."""
    st = Store()
    st.image("ns/app", "amd64", tag="v1")
    conf, lst = _mirrored(t, rawup.RawUpstream(t, st.handler()), "ns/app:v1")
    oci = os.path.realpath(os.path.join(t.tmp, "oci"))
    trace = os.path.join(t.tmp, "export.strace")
    p = subprocess.run(["strace", "-f", "-qq", "-y", "-o", trace, "-e",
                        "trace=rename,renameat,renameat2,fsync,fdatasync",
                        t.s.bin, "export", "-c", conf, lst, "--oci", oci],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=lib.clean_env(dict(ASAN_ENV, ASAN_OPTIONS=ASAN_ENV["ASAN_OPTIONS"]
                                              .replace("detect_leaks=1", "detect_leaks=0"))),
                       timeout=300)  # LeakSanitizer cannot run under ptrace
    eq(p.returncode, 0, "export --oci under strace: %r" % p.stderr.decode()[-2000:])
    with open(trace) as f:
        calls = [ln.split(None, 1)[1] for ln in f if " " in ln.strip()]
    blobs = os.path.join(oci, "blobs", "sha256")
    index_at = next((i for i, c in enumerate(calls)
                     if c.startswith("rename") and 'index.json"' in c), None)
    check(index_at is not None, "index.json was never renamed into place:\n%s"
          % "".join(calls)[-2000:])
    pending = 0
    for c in calls[:index_at]:
        if c.startswith("rename") and blobs in c:
            pending += 1
        elif c.startswith("fsync(") and c.split(")", 1)[0].endswith("<%s>" % blobs):
            pending = 0
    eq(pending, 0, "blob renames with no fsync of %s after them before index.json's:\n%s"
       % (blobs, "".join(calls[:index_at + 1])[-3000:]))
    check(any(c.startswith("rename") and blobs in c for c in calls[:index_at]),
          "no blob renamed into %s: %s" % (blobs, "".join(calls)[-2000:]))
    check(any(c.startswith("fsync(") and c.split(")", 1)[0].endswith("<%s>" % oci)
              for c in calls[index_at + 1:]),
          "no fsync of %s after index.json was renamed:\n%s"
          % (oci, "".join(calls[index_at:])[-2000:]))


def test_export_bad_split_size(t):
    """`export -o b.rpb --split 4.7G` (a DVD's size as it is written on the box) answered
    "--split SIZE goes with export -o", which it was given: the message says what is wrong
    with the size instead. Without -o it still says --split needs it."""
    conf = _conf(os.path.join(t.tmp, "c.conf"), os.path.join(t.tmp, "cache"), offline=True)
    out = os.path.join(t.tmp, "b.rpb")
    for size in ("4.7G", "abc", "0"):
        rc, _, err = _run(t, ["export", "-c", conf, "-o", out, "--split", size], ok=False)
        check(rc == 2 and "bad --split size '%s'" % size in err,
              "--split %s: exit %d, %r" % (size, rc, err))
    rc, _, err = _run(t, ["export", "-c", conf, "--oci", out, "--split", "4G"], ok=False)
    check(rc == 2 and "--split SIZE goes with export -o" in err, "--split with --oci: %r" % err)


def test_export_of_a_missing_cache(t):
    """export with a cache dir that is not there (a typo in the configuration, or a disk not
    mounted): opening the cache created it, directories and all, and export said "nothing
    was mirrored or imported into this cache", as if the mirror had been lost. verify already
    refused such a dir; export now does the same, and leaves no directory behind."""
    cache = os.path.join(t.tmp, "not-mounted", "cache")
    conf = _conf(os.path.join(t.tmp, "c.conf"), cache, offline=True)
    for out in (["-o", os.path.join(t.tmp, "b.rpb")], ["--oci", os.path.join(t.tmp, "oci")]):
        rc, _, err = _run(t, ["export", "-c", conf] + out, ok=False)
        eq((rc, err), (1, "regproxy export: no cache at %s: No such file or directory\n" % cache),
           "export %s of a missing cache" % out[0])
        check(not os.path.exists(os.path.dirname(cache)), "export created %s" % cache)


def test_export_does_not_write_through_planted_symlinks(t):
    """export wrote its output under NAME.tmp opened with O_TRUNC, following a symlink there:
    anyone able to write the output directory (shared media, a transfer area) could plant
    BUNDLE.tmp -> /etc/shadow, and the export, run as root, truncated and overwrote that
    file with the bundle. Same for split parts and for the OCI layout's blobs and
    index.json. The temp names are now made new, never followed; the exports succeed and the
    targets are untouched."""
    st = Store()
    man = st.image("ns/app", "amd64", tag="v1")
    conf, _ = _mirrored(t, rawup.RawUpstream(t, st.handler()), "ns/app:v1")
    victim = os.path.join(t.tmp, "victim")
    with open(victim, "w") as f:
        f.write("precious\n")
    out = os.path.join(t.tmp, "out")
    oci = os.path.join(out, "oci")
    os.makedirs(os.path.join(oci, "blobs", "sha256"))
    plants = [os.path.join(out, "b.rpb.tmp"), os.path.join(out, "s.rpb.000.tmp"),
              os.path.join(oci, "index.json.tmp"),
              os.path.join(oci, "blobs", "sha256", man["digest"][7:] + ".tmp")]
    for p in plants:
        os.symlink(victim, p)
    _run(t, ["export", "-c", conf, "-o", os.path.join(out, "b.rpb")])
    _run(t, ["export", "-c", conf, "-o", os.path.join(out, "s.rpb"), "--split", "64K"])
    _run(t, ["export", "-c", conf, "--oci", oci])
    with open(victim) as f:
        eq(f.read(), "precious\n", "the file the planted symlinks named")
    check(not any(os.path.lexists(p) for p in plants), "temp names left: %s"
          % [p for p in plants if os.path.lexists(p)])
    cache2 = os.path.join(t.tmp, "cache-off")
    conf2 = _conf(os.path.join(t.tmp, "off.conf"), cache2, offline=True)
    for b in ("b.rpb", "s.rpb.000"):
        _run(t, ["import", "-c", conf2, os.path.join(out, b)])
    r = t.s.skopeo(["inspect", "--raw", "oci:%s:v1" % oci])
    eq(lib.sha256(r.stdout), man["digest"], "skopeo inspect of the OCI layout")


def test_export_oci_refuses_symlinked_directories(t):
    """export --oci into an existing directory made blobs/ and blobs/sha256/ with mkdir,
    taking EEXIST for done, and wrote there by path: a `blobs` or `blobs/sha256` symlink
    planted in the output directory by anyone able to write it sent every blob, as root,
    into the directory it named. A blob file planted as a symlink to a file of the right
    size was taken for one already written (stat followed it) and left in the layout. Export
    now refuses a symlinked directory inside the layout, writing nothing through it, and
    replaces a symlinked blob file (or index.json, oci-layout) with the real thing, the
    file it named untouched."""
    st = Store()
    man, layers = st.big_image("ns/app", 1, 5000, "v1")
    conf, _ = _mirrored(t, rawup.RawUpstream(t, st.handler()), "ns/app:v1")
    elsewhere = os.path.join(t.tmp, "elsewhere")
    os.mkdir(elsewhere)
    for i, link in enumerate(("blobs", os.path.join("blobs", "sha256"))):
        oci = os.path.join(t.tmp, "oci%d" % i)
        os.makedirs(os.path.dirname(os.path.join(oci, link)))
        os.symlink(elsewhere, os.path.join(oci, link))
        rc, out, err = _run(t, ["export", "-c", conf, "--oci", oci], ok=False)
        eq(rc, 1, "export --oci with %s a symlink (stdout %r, stderr %r)" % (link, out, err))
        check(("%s is a symbolic link" % os.path.join(oci, link)) in err,
              "the refusal names %s: %r" % (link, err))
        eq(os.listdir(elsewhere), [], "written through the %s symlink" % link)
        check(not os.path.exists(os.path.join(oci, "index.json")),
              "index.json written after the refusal")

    # A blob file, index.json and oci-layout planted as symlinks to files of the size the
    # export wants: replaced, not followed nor kept.
    oci = os.path.join(t.tmp, "oci-files")
    sub = os.path.join(oci, "blobs", "sha256")
    os.makedirs(sub)
    victim = os.path.join(t.tmp, "victim")
    with open(victim, "wb") as f:
        f.write(b"x" * layers[0]["size"])
    plants = [os.path.join(sub, layers[0]["digest"][7:]), os.path.join(oci, "index.json"),
              os.path.join(oci, "oci-layout")]
    for p in plants:
        os.symlink(victim, p)
    _run(t, ["export", "-c", conf, "--oci", oci])
    with open(victim, "rb") as f:
        eq(f.read(), b"x" * layers[0]["size"], "the file the planted symlinks named")
    eq([p for p in plants if os.path.islink(p)], [], "symlinks left in the layout")
    with open(plants[0], "rb") as f:
        eq(sha(f.read()), layers[0]["digest"], "the layer's file in the layout")
    r = t.s.skopeo(["inspect", "--raw", "oci:%s:v1" % oci])
    eq(lib.sha256(r.stdout), man["digest"], "skopeo inspect of the OCI layout")


def test_export_oci_names_the_file_it_cannot_write(t):
    """A directory where the layout has oci-layout or index.json (a damaged or hand-made
    layout) failed the export with "writing DIR: Is a directory", naming the one directory
    that was fine. The message names the file in the way."""
    st = Store()
    st.image("ns/app", "amd64", tag="v1")
    conf, lst = _mirrored(t, rawup.RawUpstream(t, st.handler()), "ns/app:v1")
    for name in ("oci-layout", "index.json.tmp"):
        oci = os.path.join(t.tmp, "oci-" + name)
        os.makedirs(os.path.join(oci, name))
        rc, out, err = _run(t, ["export", "-c", conf, lst, "--oci", oci], ok=False)
        want = "writing %s: Is a directory" % os.path.join(oci, name.replace(".tmp", ""))
        eq((rc, want in err), (1, True), "export --oci with a directory as %s: stderr %r"
           % (name, err))


def test_import_metadata_memory_bounded(t):
    """Metadata whose JSON costs far more memory than its size (an unknown key holding a
    million empty objects: 4 MiB of text, 17 KiB as LZ4) is refused with a message saying
    so, before jansson's tree of it grows to 73 times the text (64 MiB of it, 260 KB on
    disk, took 5 GB). A real bundle's metadata passes: its tree is about 5 times its text."""
    meta = {"format": "regproxy-bundle", "version": 1, "images": [], "manifests": [],
            "blobs": [], "pad": []}
    path = os.path.join(t.tmp, "bomb.rpb")
    body = json.dumps(meta).encode().replace(b'"pad": []',
                                             b'"pad": [' + b",".join([b"{}"] * 1400000) + b"]")
    # _bundle_write dumps meta itself: the stream is written here, with the padded text.
    data = _lz4(body)
    rec = b"M" + bytes(3) + (0).to_bytes(4, "big") + len(data).to_bytes(8, "big") + data
    total = 32 + len(rec) + 16 + 32
    head = b"RPBUNDLE" + (1).to_bytes(4, "big") + bytes(4) + total.to_bytes(8, "big") + bytes(8)
    with open(path, "wb") as f:
        f.write(head + rec + b"T" + bytes(7) + (32).to_bytes(8, "big") +
                hashlib.sha256(head + rec).digest())
    check(os.path.getsize(path) < 1 << 20, "the bundle is small: %d" % os.path.getsize(path))
    conf = _conf(os.path.join(t.tmp, "off.conf"), os.path.join(t.tmp, "cache-off"), offline=True)
    rc, out, err = _run(t, ["import", "-c", conf, path], ok=False)
    eq(rc, 1, "exit status of importing it (stdout %r, stderr %r)" % (out, err))
    check(re.search(r"refused, nothing imported: metadata \([0-9.]+ MB of JSON\) needs more "
                    r"than [0-9.]+ MB of memory to read, far more than any export writes\n", err),
          "the refusal says why: %r" % err)


def _import_peak_rss_mb(t, conf, path):
    """regproxy import's exit status and peak RSS in MB, measured by a Python of its own
    (whose only child it is), ASan's quarantine of freed memory kept small."""
    env = lib.clean_env(ASAN_ENV)
    env["ASAN_OPTIONS"] += ":quarantine_size_mb=1"
    code = ("import resource, subprocess, sys\n"
            "p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
            "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    p = subprocess.run([sys.executable, "-c", code, t.s.bin, "import", "-c", conf, path],
                       stdout=subprocess.PIPE, env=env, timeout=600, check=True)
    rc, kb = p.stdout.split()
    return int(rc), int(kb) // 1024


def test_import_held_manifests_memory_bounded(t):
    """Pass 2 holds manifests until their blobs are in. 100 manifests of 4 MiB, mostly
    whitespace (16 KB each as LZ4 records), took over 400 MB held as read; held compressed,
    they take about what the bundle does. Every one is imported."""
    cfg = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    cd = sha(cfg)
    mans = []
    for i in range(100):
        head = json.dumps({"schemaVersion": 2, "mediaType": OCI_MAN,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": cd, "size": len(cfg)},
                           "layers": [], "annotations": {"n": str(i)}}).encode()
        mans.append(head[:-1] + b" " * ((4 << 20) - len(head) - 64) + b"}")
    meta = {"format": "regproxy-bundle", "version": 1, "images": [],
            "manifests": [{"digest": sha(m), "media_type": OCI_MAN, "size": len(m),
                           "repos": [[NAME, "ns/ws"]]} for m in mans],
            "blobs": [{"digest": cd, "size": len(cfg), "repos": [[NAME, "ns/ws"]]}]}
    path = os.path.join(t.tmp, "ws.rpb")
    _bundle_write(path, meta, [["m", sha(m), m] for m in mans] + [["b", cd, cfg]])
    check(os.path.getsize(path) < 8 << 20, "the bundle is small: %d" % os.path.getsize(path))
    cache = os.path.join(t.tmp, "cache-off")
    conf = _conf(os.path.join(t.tmp, "off.conf"), cache, offline=True)
    rc, mb = _import_peak_rss_mb(t, conf, path)
    eq(rc, 0, "exit status of the import")
    check(mb < 250, "import peaked at %d MB holding 400 MiB of manifests" % mb)
    for i, m in enumerate(mans):
        p = lib.cache_path(cache, "manifests", sha(m))
        check(os.path.exists(p), "manifest %d imported" % i)
        if i in (0, 99):  # decoding in Python is slow: the first and the last
            eq(lib.read_cached_manifest(p), (OCI_MAN, m), "manifest %d's type and bytes" % i)


def _one_layer_image(**extra):
    """A config, a 3000-byte layer and the OCI image manifest naming them (with extra
    top-level fields)."""
    cfg = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    layer = os.urandom(3000)
    doc = {"schemaVersion": 2, "mediaType": OCI_MAN}
    doc.update(extra)
    doc["config"] = {"mediaType": "application/vnd.oci.image.config.v1+json",
                     "digest": sha(cfg), "size": len(cfg)}
    doc["layers"] = [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                      "digest": sha(layer), "size": len(layer)}]
    return cfg, layer, json.dumps(doc).encode()


def test_import_links_image_content_to_its_repo(t):
    """A bundle (crafted, or from a cache whose links were lost) whose image ns/app:v1 has
    its manifest linked to ns/app but its blobs to no repository: import tagged and pinned
    the image, its manifest was served, and each layer answered 404 BLOB_UNKNOWN. What an
    image's manifest names is linked to the image's repository."""
    cfg, layer, m = _one_layer_image()
    meta = {"format": "regproxy-bundle", "version": 1,
            "images": [{"registry": NAME, "repo": "ns/app", "tag": "v1", "digest": sha(m)}],
            "manifests": [{"digest": sha(m), "media_type": OCI_MAN, "size": len(m),
                           "repos": [[NAME, "ns/app"]]}],
            "blobs": [{"digest": sha(b), "size": len(b), "repos": []} for b in (cfg, layer)]}
    path = os.path.join(t.tmp, "unlinked.rpb")
    _bundle_write(path, meta, [["m", sha(m), m], ["b", sha(cfg), cfg], ["b", sha(layer), layer]])
    cache = os.path.join(t.tmp, "cache-off")
    _run(t, ["import", "-c", _conf(os.path.join(t.tmp, "off.conf"), cache, offline=True), path])
    p = t.proxy(registries=[{"name": NAME}], cache={"dir": cache, "offline": "yes"})
    r = p.get("/v2/ns/app/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq((r.status, r.body), (200, m), "the imported image's manifest")
    for what, b in (("config", cfg), ("layer", layer)):
        r = p.get("/v2/ns/app/blobs/" + sha(b))
        eq((r.status, sha(r.body) if r.status == 200 else r.body), (200, sha(b)),
           "the image's %s, from its repository" % what)
    r = p.get("/v2/ns/other/blobs/" + sha(layer))
    eq(r.status, 404, "the layer from a repository the bundle does not link it to")


def test_import_refuses_a_manifest_that_is_also_an_index(t):
    """A bundle whose image manifest (mediaType an OCI image manifest, config and a layer the
    bundle does not carry) also has an empty "manifests" list: import read it as an index of
    no children, checked none of its blobs, and tagged and pinned it; the offline proxy then
    served it as the image manifest it says it is, and its layer answered 404. No index has a
    config or layers: such a manifest is refused, and nothing is imported."""
    cfg, layer, m = _one_layer_image(manifests=[])
    meta = {"format": "regproxy-bundle", "version": 1,
            "images": [{"registry": NAME, "repo": "ns/app", "tag": "v1", "digest": sha(m)}],
            "manifests": [{"digest": sha(m), "media_type": OCI_MAN, "size": len(m),
                           "repos": [[NAME, "ns/app"]]}],
            "blobs": [{"digest": sha(cfg), "size": len(cfg), "repos": [[NAME, "ns/app"]]}]}
    path = os.path.join(t.tmp, "both.rpb")
    _bundle_write(path, meta, [["m", sha(m), m], ["b", sha(cfg), cfg]])
    cache = os.path.join(t.tmp, "cache-off")
    rc, out, err = _run(t, ["import", "-c", _conf(os.path.join(t.tmp, "off.conf"), cache,
                                                  offline=True), path], ok=False)
    p = t.proxy(registries=[{"name": NAME}], cache={"dir": cache, "offline": "yes"})
    r = p.get("/v2/ns/app/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    eq((rc, r.status), (1, 404),
       "import exit status and the tag served after importing a manifest that is also an "
       "index (stdout %r, stderr %r)" % (out[-300:], err[-300:]))
    check("both an index (manifests) and an image manifest" in err,
          "import names the reason: %r" % err[-300:])


def _crafted_images(n):
    """A bundle's metadata and records for n images NAME/ns/app{i%3}:v{i}, each a manifest,
    a config and a layer of its own and the same two shared layers: (meta, records, layers
    of each image's own, shared layers)."""
    shared = [os.urandom(700) for _ in range(2)]
    meta = {"format": "regproxy-bundle", "version": 1, "images": [], "manifests": [],
            "blobs": [{"digest": sha(b), "size": len(b), "repos": []} for b in shared]}
    mrecs, brecs, own = [], [["b", sha(b), b] for b in shared], []
    for i in range(n):
        repo = "ns/app%d" % (i % 3)
        cfg = json.dumps({"architecture": "amd64", "os": "linux", "n": i,
                          "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        mine = os.urandom(600)
        own.append(mine)
        m = json.dumps({"schemaVersion": 2, "mediaType": OCI_MAN,
                        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                   "digest": sha(cfg), "size": len(cfg)},
                        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                    "digest": sha(b), "size": len(b)}
                                   for b in [mine] + shared]}).encode()
        meta["images"].append({"registry": NAME, "repo": repo, "tag": "v%d" % i,
                               "digest": sha(m)})
        meta["manifests"].append({"digest": sha(m), "media_type": OCI_MAN, "size": len(m),
                                  "repos": [[NAME, repo]]})
        mrecs.append(["m", sha(m), m])
        for b in (cfg, mine):
            meta["blobs"].append({"digest": sha(b), "size": len(b), "repos": [[NAME, repo]]})
            brecs.append(["b", sha(b), b])
    return meta, mrecs + brecs, own, shared


def test_import_syncs_in_batches(t):
    """An import fsynced every manifest, link and tag file and its directory one by one: two
    fsyncs per file, 7,830 for a bundle of 300 images, most of its time. Manifests and links
    are checked when read, so the cache leaves them to one syncfs before the first tag moves
    (a tag durable before the manifest it names would name nothing after a power loss).
    Tags are then fsynced each before its rename (a torn one is lost for good offline), and
    blob bytes, as always, before theirs."""
    meta, recs, _, shared = _crafted_images(12)
    path = os.path.join(t.tmp, "many.rpb")
    _bundle_write(path, meta, recs)
    cache = os.path.join(t.tmp, "cache-off")
    conf = _conf(os.path.join(t.tmp, "off.conf"), cache, offline=True)
    trace = os.path.join(t.tmp, "import.strace")
    p = subprocess.run(["strace", "-f", "-qq", "-o", trace, "-e",
                        "trace=fsync,fdatasync,syncfs,rename,renameat,renameat2",
                        t.s.bin, "import", "-c", conf, path], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       env=lib.clean_env(dict(ASAN_ENV, ASAN_OPTIONS=ASAN_ENV["ASAN_OPTIONS"]
                                              .replace("detect_leaks=1", "detect_leaks=0"))),
                       timeout=300)  # LeakSanitizer does not run under ptrace
    out, err = _decoded(p.stdout, p.stderr, "regproxy import")
    eq(p.returncode, 0, "exit status of the import (stdout %r, stderr %r)" % (out, err))
    m = re.search(r"(\d+) new manifests, (\d+) new blobs", out)
    check(m, "the import's summary: %r" % out)
    eq((int(m.group(1)), int(m.group(2))), (12, 26), "new manifests and blobs")
    events = []  # (syscall, rename target or None), in order
    with open(trace) as f:
        for line in f:
            c = re.match(r"\d+\s+(fsync|fdatasync|syncfs|rename|renameat|renameat2)\((.*)", line)
            if not c or line.rstrip().endswith("= -1 ENOENT (No such file or directory)"):
                continue
            # A publish renames tmp/<kind>.<n> to a name inside its directory: the temp
            # name says what it is (the target is relative to that directory's descriptor).
            names = re.findall(r'"([^"]*)"', c.group(2))
            events.append((c.group(1), names[0] if c.group(1).startswith("rename") else None))
    fsyncs = [e for e in events if e[0] in ("fsync", "fdatasync")]
    # One per blob; a tag, its directory and (new) that directory's parent each; the pins
    # file and the index snapshot, each with its directory.
    check(len(fsyncs) <= 26 + 3 * 12 + 4, "fsyncs: %d for 26 new blobs and 12 tags (events: %r)"
          % (len(fsyncs), events[:60]))
    kinds = [("tag" if e[1].startswith("tag.") else "meta" if
              e[1].startswith(("link.", "manifest.")) else "blob" if e[1].startswith("fill.")
              else "other") if e[1] else e[0] for e in events]
    check("tag" in kinds and "meta" in kinds, "renames seen: %r" % sorted(set(kinds)))
    first_tag, last_tag = kinds.index("tag"), len(kinds) - 1 - kinds[::-1].index("tag")
    last_meta = len(kinds) - 1 - kinds[::-1].index("meta")
    check(last_meta < first_tag and "syncfs" in kinds[last_meta:first_tag],
          "a syncfs between the last manifest or link and the first tag: %r" % kinds)
    for i, k in enumerate(kinds):
        if k == "tag":
            eq(kinds[i - 1], "fsync", "what came before tag rename #%d: %r" % (i, kinds))
    eq(kinds[last_tag + 1] if last_tag + 1 < len(kinds) else None, "fsync",
       "the last tag's directory synced after its rename: %r" % kinds[-20:])

    px = t.proxy(registries=[{"name": NAME}], cache={"dir": cache, "offline": "yes"})
    for i in (0, 11):
        r = px.get("/v2/ns/app%d/manifests/v%d" % (i % 3, i), headers={"Accept": lib.ACCEPT_ALL})
        eq((r.status, sha(r.body)), (200, meta["images"][i]["digest"]), "image %d's manifest" % i)
    r = px.get("/v2/ns/app2/blobs/" + sha(shared[1]))
    eq((r.status, sha(r.body)), (200, sha(shared[1])), "a shared layer")


def test_verify_names_damaged_imported_images(t):
    """verify named each damaged digest and removed it: the next pull fetches it again, but an
    offline cache cannot, and its admin had to work out from digests which images to import
    again. verify now names every mirrored or imported image that lost something, whether a
    layer or a manifest, and no other."""
    meta, recs, own, _ = _crafted_images(4)
    path = os.path.join(t.tmp, "four.rpb")
    _bundle_write(path, meta, recs)
    cache = os.path.join(t.tmp, "cache-off")
    conf = _conf(os.path.join(t.tmp, "off.conf"), cache, offline=True)
    _run(t, ["import", "-c", conf, path])
    for p in (lib.cache_path(cache, "blobs", sha(own[1])),
              lib.cache_path(cache, "manifests", meta["images"][2]["digest"])):
        _flip(p)
    rc, out, err = _run(t, ["verify", "-c", conf], ok=False)
    eq(rc, 1, "verify's exit status with damage (stdout %r, stderr %r)" % (out, err))
    named = sorted(line for line in out.splitlines() if line.startswith("image "))
    want = sorted("image %s/%s:%s@%s lost %s: mirror or import it again"
                  % (NAME, im["repo"], im["tag"], im["digest"], lost)
                  for im, lost in ((meta["images"][1], sha(own[1])),
                                   (meta["images"][2], meta["images"][2]["digest"])))
    eq(named, want, "the images verify names (stdout %r)" % out)
    check("2 damaged and removed" in out.splitlines()[-1], "verify's summary: %r" % out)

    # The same registry online: the next pull fetches what was lost.
    _flip(lib.cache_path(cache, "blobs", sha(own[3])))
    class Unreached:  # verify dials nothing
        url = "https://127.0.0.1:9"
    rc, out, err = _run(t, ["verify", "-c", _conf(os.path.join(t.tmp, "on.conf"), cache,
                                                  Unreached)], ok=False)
    eq(rc, 1, "verify's exit status with damage, online (stdout %r, stderr %r)" % (out, err))
    # Images 1 and 2 have not got back what they lost (nothing pulled them): named again.
    eq(sorted(line for line in out.splitlines() if line.startswith("image ")),
       sorted("image %s/%s:%s@%s lost %s: the next pull fetches it again"
              % (NAME, im["repo"], im["tag"], im["digest"], lost)
              for im, lost in ((meta["images"][1], sha(own[1])),
                               (meta["images"][2], meta["images"][2]["digest"]),
                               (meta["images"][3], sha(own[3])))),
       "the images verify names, online (stdout %r)" % out)


def test_verify_names_images_whose_files_are_gone(t):
    """A layer file of an imported image gone from the cache dir (fsck after a disk error moves
    damaged files to lost+found): verify found nothing to check for it, said "0 damaged",
    named no image and exited 0, while the offline cluster could not pull the image. verify
    now walks every mirrored or imported image and names the one that lost a file, however
    it went, every time it runs, and exits 1."""
    meta, recs, own, _ = _crafted_images(2)
    path = os.path.join(t.tmp, "two.rpb")
    _bundle_write(path, meta, recs)
    cache = os.path.join(t.tmp, "cache-off")
    conf = _conf(os.path.join(t.tmp, "off.conf"), cache, offline=True)
    _run(t, ["import", "-c", conf, path])
    os.unlink(lib.cache_path(cache, "blobs", sha(own[1])))
    im = meta["images"][1]
    want = ["image %s/%s:%s@%s lost %s: mirror or import it again"
            % (NAME, im["repo"], im["tag"], im["digest"], sha(own[1]))]
    for run in ("first", "second"):
        rc, out, err = _run(t, ["verify", "-c", conf], ok=False)
        eq(([line for line in out.splitlines() if line.startswith("image ")], rc), (want, 1),
           "images named and exit status of the %s verify (stdout %r, stderr %r)"
           % (run, out, err))
        check("1 mirrored or imported image incomplete" in out.splitlines()[-1],
              "verify's summary: %r" % out)
    # Imported again, the image is whole: nothing named, exit 0.
    _run(t, ["import", "-c", conf, path])
    rc, out, err = _run(t, ["verify", "-c", conf], ok=False)
    eq((rc, [line for line in out.splitlines() if line.startswith("image ")]), (0, []),
       "verify after importing again (stdout %r)" % out)

    # An index mirrored with --platform: the platforms left out are not losses; the one
    # mirrored gone, the index (which then serves no platform) is named.
    st = Store()
    amd, arm = st.image("ns/m", "amd64"), st.image("ns/m", "arm64")
    amd["platform"] = {"os": "linux", "architecture": "amd64"}
    arm["platform"] = {"os": "linux", "architecture": "arm64"}
    idx = st.manifest("ns/m", {"schemaVersion": 2, "mediaType": OCI_IDX,
                               "manifests": [amd, arm]}, OCI_IDX, tag="v1")
    up = rawup.RawUpstream(t, st.handler())
    conf2 = _conf(os.path.join(t.tmp, "m.conf"), os.path.join(t.tmp, "cache-m"), up)
    _run(t, ["mirror", "-c", conf2, _list(t, "ns/m:v1"), "--platform", "linux/arm64"])
    rc, out, err = _run(t, ["verify", "-c", conf2], ok=False)
    eq((rc, [line for line in out.splitlines() if line.startswith("image ")]), (0, []),
       "verify of an index mirrored for one platform (stdout %r)" % out)
    os.unlink(lib.cache_path(os.path.join(t.tmp, "cache-m"), "manifests", arm["digest"]))
    rc, out, err = _run(t, ["verify", "-c", conf2], ok=False)
    eq((rc, [line for line in out.splitlines() if line.startswith("image ")]),
       (1, ["image %s/ns/m:v1@%s lost %s: the next pull fetches it again"
            % (NAME, idx["digest"], idx["digest"])]),
       "verify of that index after its one platform's manifest went (stdout %r)" % out)


def test_verify_with_an_unreadable_pins_file_fails(t):
    """A pins file verify could not read (over its 64 MiB cap, a directory in its place) got
    "cannot tell which mirrored or imported images the damage touched" on stderr at every
    run, as if only damage needed it, and an exit status of 0 although no mirrored or
    imported image had been checked: a script took the cache for verified (and a FIFO there
    hung it). verify now still checks every blob and manifest, says the pins file could not
    be read and why, and exits 1."""
    meta, recs, own, _ = _crafted_images(2)
    path = os.path.join(t.tmp, "two.rpb")
    _bundle_write(path, meta, recs)
    cache = os.path.join(t.tmp, "cache-off")
    conf = _conf(os.path.join(t.tmp, "off.conf"), cache, offline=True)
    _run(t, ["import", "-c", conf, path])
    pins = os.path.join(cache, "pins")
    with open(pins, "rb") as f:
        saved = f.read()
    blobs = len(lib.cache_digests(cache, "blobs"))

    def unreadable(what, want_why):
        rc, out, err = _run(t, ["verify", "-c", conf], timeout=120, ok=False)
        eq(rc, 1, "verify's exit status with %s (stdout %r, stderr %r)" % (what, out, err))
        check(("cannot read the pins file %s" % pins) in err and want_why in err,
              "verify's message for %s: %r" % (what, err))
        check(("verified %d blobs" % blobs) in out and "0 damaged" in out,
              "the blobs and manifests are still checked with %s: %r" % (what, out))
        check("pins file unreadable" in out.splitlines()[-1],
              "verify's summary with %s: %r" % (what, out))

    # Over the cap: a sparse file (the size is what is checked; root reads any mode).
    with open(pins, "r+b") as f:
        f.truncate((64 << 20) + 1)
    unreadable("a pins file over 64 MiB", "larger than")
    # A directory where the file should be.
    os.unlink(pins)
    os.mkdir(pins)
    unreadable("a directory as the pins file", "not a regular file")
    os.rmdir(pins)
    # A FIFO: was waited on for a writer that never comes.
    os.mkfifo(pins)
    unreadable("a FIFO as the pins file", "not a regular file")
    # Readable again: whole, exit 0; an image that lost a layer is named as before.
    os.unlink(pins)
    with open(pins, "wb") as f:
        f.write(saved)
    rc, out, err = _run(t, ["verify", "-c", conf], ok=False)
    eq(rc, 0, "verify with the pins file back (stdout %r, stderr %r)" % (out, err))
    os.unlink(lib.cache_path(cache, "blobs", sha(own[0])))
    rc, out, err = _run(t, ["verify", "-c", conf], ok=False)
    eq((rc, len([line for line in out.splitlines() if line.startswith("image ")])), (1, 1),
       "verify with a layer gone (stdout %r, stderr %r)" % (out, err))


def _scrub_found(p, digest):
    """Waits for proxy p's scrub to remove one damaged blob, digest; returns p's log."""
    lib.wait_until(lambda: p.metrics().get(("regproxy_cache_scrub_damaged_total", frozenset()),
                                           0) == 1, 30, "the scrub to find %s" % digest)
    log = p.log_text()
    check(("cache scrub: blob %s is damaged" % digest) in log,
          "the scrub's line for %s:\n%s" % (digest, log[-3000:]))
    return log


def test_scrub_on_an_offline_cache_says_what_to_do(t):
    """The serving scrub removed a damaged blob and logged that the next pull fetches it
    again, which an offline cache cannot do: it now says that the images using it need
    mirroring or importing again."""
    meta, recs, own, _ = _crafted_images(2)
    path = os.path.join(t.tmp, "two.rpb")
    _bundle_write(path, meta, recs)
    cache = os.path.join(t.tmp, "cache-off")
    _run(t, ["import", "-c", _conf(os.path.join(t.tmp, "off.conf"), cache, offline=True), path])
    p = t.proxy(registries=[{"name": NAME}], cache={"dir": cache, "offline": "yes",
                                                    "scrub_interval": "1s", "scrub_rate": "100M"})
    _flip(lib.cache_path(cache, "blobs", sha(own[0])))
    log = _scrub_found(p, sha(own[0]))
    check("removed: this cache is offline, so the images that use it need mirroring or "
          "importing again" in log, "the scrub's line:\n%s" % log[-3000:])
    check("the next pull fetches it again" not in log, "the scrub's line promises a fetch")
    r = p.get("/v2/ns/app0/blobs/" + sha(own[0]))
    eq(r.status, 404, "the removed blob, offline (body %r)" % r.body[:300])
    problems = p.stop()
    check(not problems, "; ".join(problems))

    # Only the registry offline, beside one that is not: the next pull may or may not fetch.
    p = t.proxy(registries=[{"name": NAME, "offline": "yes"},
                            {"name": "online.test", "url": "https://127.0.0.1:9",
                             "test_login": "no"}],
                cache={"dir": cache, "scrub_interval": "1s", "scrub_rate": "100M"})
    _flip(lib.cache_path(cache, "blobs", sha(own[1])))
    log = _scrub_found(p, sha(own[1]))
    check("removed: the next pull fetches it again, unless through an offline registry, whose "
          "images that use it need mirroring or importing again" in log,
          "the scrub's line, one registry offline:\n%s" % log[-3000:])
