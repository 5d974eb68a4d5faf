# SPDX-License-Identifier: Apache-2.0
"""max_size and pins. With max_size 30M and `pin = registry.anon.test/ns/multi`, a series of
pulls (multi, multiarch, multi-v2s2, large with its 100 MiB layer, tags, again multiarch and
multi) all succeed with every digest checked; after each, the bytes under blobs/ +
manifests/ are at most max_size; the 100 MiB layer is served but not kept, and evicts
nothing else (unpinned content cached before it stays); the pinned image
stays complete throughout and its re-pull needs no upstream blob request. Pins must also
hold for an image bigger than max_size, and after a crash (kill -9) and restart; a pattern
removed (by a restart or a reload) lets its image go, and one added by a reload pins what is
cached already."""
import json
import os
import shutil
import signal
import time

import lib
from lib import check, eq

MAX = 30 * 1024 * 1024
PIN = "registry.anon.test/ns/multi"


def _content(reg, ref):
    """(manifest digests, blob digests) of an image as pushed."""
    top = json.loads(reg.pushed[ref]["body"])
    mans = [reg.pushed[ref]["digest"]] + [d["digest"] for d in top.get("manifests", [])]
    blobs = []
    for m in lib.image_manifests(reg, ref):
        blobs += [m["config"]["digest"]] + [x["digest"] for x in m["layers"]]
    return mans, blobs


def _missing(p, reg, ref):
    mans, blobs = _content(reg, ref)
    out = [("manifest", d) for d in mans
           if not os.path.isfile(lib.cache_path(p.cache_dir, "manifests", d))]
    out += [("blob", d) for d in blobs
            if not os.path.isfile(lib.cache_path(p.cache_dir, "blobs", d))]
    return out


def _cached_soon(p, reg, ref):
    """A blob is published (renamed into place) on the sync thread, just after its last byte
    went to the client: a check right after the pull can come first."""
    lib.wait_until(lambda: not _missing(p, reg, ref), 10, "%s fully cached after its pull" % ref)


def _bounded(p, what, limit=MAX):
    def ok():
        return lib.cache_bytes(p.cache_dir) <= limit
    try:
        lib.wait_until(ok, 3, "the store to shrink to max_size")
    except lib.Failure:
        files = sorted(lib.cache_files(p.cache_dir, "blobs") +
                       lib.cache_files(p.cache_dir, "manifests"), key=lambda x: -x[1])
        lib.fail("%s: %d bytes under blobs/ + manifests/, max_size is %d; largest files: %s"
                 % (what, lib.cache_bytes(p.cache_dir), limit,
                    [(f[len(p.cache_dir) + 1:], n) for f, n in files[:6]]))


def _blob_gets(reg, mark, repo):
    time.sleep(0.3)
    return [x for x in reg.since(mark)
            if x[0] == "GET" and x[1].startswith("/v2/%s/blobs/" % repo)]


def test_max_size_with_pin(t):
    s = t.s
    reg = s.anon_registry
    p = t.proxy(registries=[reg.conf(), s.token_registry.conf()],
                cache={"max_size": "30M", "pin": PIN})
    big = max(lib.image_manifests(reg, "ns/large:v1")[0]["layers"], key=lambda x: x["size"])
    for ref in ("ns/multi:v1", "ns/multiarch:v1", "ns/multi-v2s2:v1", "ns/large:v1",
                "ns/tags:t00", "ns/multiarch:v1"):
        _, tags = t.pull(p, ref)
        tag = ref.split(":")[1]
        if ref in reg.pushed:
            eq(tags.get(tag), reg.pushed[ref]["digest"], "digest pulled for %s" % ref)
        _bounded(p, "after pulling %s" % ref)
        lib.check_cache_store(p.cache_dir, "after pulling %s: " % ref)
        miss = _missing(p, reg, "ns/multi:v1")
        check(not miss, "after pulling %s: content of the pinned image ns/multi:v1 was "
              "evicted: %s" % (ref, miss))
        if ref == "ns/large:v1":
            check(not os.path.exists(lib.cache_path(p.cache_dir, "blobs", big["digest"])),
                  "the %d byte layer %s is still cached with max_size %d"
                  % (big["size"], big["digest"], MAX))
    mk = reg.mark()
    _, tags = t.pull(p, "ns/multi:v1")
    gets = _blob_gets(reg, mk, "ns/multi")
    check(not gets, "re-pull of the pinned ns/multi:v1: upstream blob GETs %s" % gets)


def test_blob_bigger_than_max_size_spares_the_rest(t):
    """A layer larger than max_size is served from its download's temp file and not kept:
    keeping it would evict every other unpinned entry, then itself. What was cached stays."""
    s = t.s
    reg = s.anon_registry
    p = t.proxy(registries=[reg.conf()], cache={"max_size": "30M"})
    _, tags = t.pull(p, "ns/multi:v1")
    eq(tags.get("v1"), reg.pushed["ns/multi:v1"]["digest"], "pull of ns/multi:v1")
    _cached_soon(p, reg, "ns/multi:v1")
    big = max(lib.image_manifests(reg, "ns/large:v1")[0]["layers"], key=lambda x: x["size"])
    check(big["size"] > MAX, "ns/large's biggest layer is only %d bytes" % big["size"])
    _, tags = t.pull(p, "ns/large:v1")
    eq(tags.get("v1"), reg.pushed["ns/large:v1"]["digest"], "pull of ns/large:v1")
    check(not os.path.exists(lib.cache_path(p.cache_dir, "blobs", big["digest"])),
          "the %d byte layer is cached with max_size %d" % (big["size"], MAX))
    eq(lib.cache_files(p.cache_dir, "tmp"), [], "temp files after the pull")
    miss = _missing(p, reg, "ns/multi:v1")
    check(not miss, "pulling an image with a layer over max_size evicted ns/multi:v1's %s"
          % miss)
    check("served but not cached, larger than the cache's max_size" in p.log_text(),
          "the log does not say why the layer was not kept:\n%s" % lib.tail(p.log, 10))
    eq(p.metrics()[("regproxy_fill_not_kept_total", frozenset({("registry", reg.name)}))], 1,
       "regproxy_fill_not_kept_total")
    mk = reg.mark()
    t.pull(p, "ns/multi:v1")
    gets = _blob_gets(reg, mk, "ns/multi")
    check(not gets, "re-pull of ns/multi:v1: upstream blob GETs %s" % gets)


def test_pin_bigger_than_max_size(t):
    """A pinned image larger than max_size is kept whole: pins are never evicted (the store
    then exceeds max_size by the pinned bytes)."""
    s = t.s
    reg = s.anon_registry
    p = t.proxy(registries=[reg.conf()],
                cache={"max_size": "5M", "pin": "registry.anon.test/ns/large"})
    _, tags = t.pull(p, "ns/large:v1")
    eq(tags.get("v1"), reg.pushed["ns/large:v1"]["digest"], "pull of the pinned ns/large:v1")
    miss = _missing(p, reg, "ns/large:v1")
    check(not miss, "pinned ns/large:v1 (bigger than max_size 5M) lost content right after "
          "its pull: %s" % miss)
    mk = reg.mark()
    t.pull(p, "ns/large:v1")
    gets = _blob_gets(reg, mk, "ns/large")
    check(not gets, "re-pull of the pinned ns/large:v1: upstream blob GETs %s" % gets)


def _tight(reg):
    """(max_size, layer): a store that takes ns/large's 10 MiB layer when nothing is pinned
    (evicting ns/multi to make room), but not beside a pinned ns/multi (not kept then)."""
    multi = sum(b["size"] for m in lib.image_manifests(reg, "ns/multi:v1")
                for b in [m["config"]] + m["layers"])
    layer = min(lib.image_manifests(reg, "ns/large:v1")[0]["layers"], key=lambda x: x["size"])
    return layer["size"] + multi // 2, layer


def _reload(p, n):
    """SIGHUP, then waits for the proxy's n-th applied reload."""
    os.kill(p.pid, signal.SIGHUP)
    lib.wait_until(lambda: p.log_text().count("reload (SIGHUP): configuration applied") >= n,
                   10, "reload %d to be applied" % n)


def _pins_logged(p, n):
    lib.wait_until(lambda: p.log_text().count("pinned by the pin patterns") >= n, 10,
                   "the pin patterns to be applied (%d times)" % n)


def _start_tight(t, pin):
    """A proxy with the _tight store (and the pin pattern, if pin) that has pulled ns/multi.
    Returns (proxy, registry, max_size, ns/large's 10 MiB layer)."""
    reg = t.s.anon_registry
    max_size, layer = _tight(reg)
    cache = {"max_size": str(max_size)}
    if pin:
        cache["pin"] = PIN
    p = t.proxy(registries=[reg.conf()], cache=cache)
    t.pull(p, "ns/multi:v1")
    _cached_soon(p, reg, "ns/multi:v1")
    return p, reg, max_size, layer


def _large_pulled(p, reg, max_size, layer, pinned, what):
    """Pulls ns/large and checks the outcome: ns/multi pinned, it stays whole and the 10 MiB
    layer is not kept; not pinned, the layer is kept and ns/multi gave up room for it."""
    t = p.t
    _, tags = t.pull(p, "ns/large:v1")
    eq(tags.get("v1"), reg.pushed["ns/large:v1"]["digest"], "%s: pull of ns/large:v1" % what)
    _bounded(p, "%s, after pulling ns/large:v1" % what, max_size)
    kept = os.path.exists(lib.cache_path(p.cache_dir, "blobs", layer["digest"]))
    miss = _missing(p, reg, "ns/multi:v1")
    if pinned:
        check(not miss, "%s: pulling ns/large:v1 evicted content of the pinned ns/multi:v1: %s"
              % (what, miss))
        check(not kept, "%s: the 10 MiB layer was kept beside the pinned ns/multi:v1" % what)
    else:
        check(kept, "%s: the 10 MiB layer was not kept though nothing is pinned" % what)
        check(miss, "%s: ns/multi:v1, not pinned, is still whole in a store with no room for it"
              % what)


def test_pin_survives_restart_and_crash(t):
    """Pins are derived at every start (the pins file, and the cache's repository links for
    the `pin` patterns), never kept in the index snapshot: pinned content stays pinned after
    a clean restart and after kill -9, without being pulled again first. The store is sized so
    that ns/large's 10 MiB layer fits only by evicting ns/multi: pinned, it is not kept."""
    p, reg, max_size, layer = _start_tight(t, pin=True)
    for i, how in enumerate(("clean restart", "kill -9 and restart")):
        if how == "clean restart":
            p.restart()
        else:
            p.kill9()
            p.start()
        _pins_logged(p, i + 2)
        _large_pulled(p, reg, max_size, layer, True, "after a " + how)


def test_pin_removed_lets_go(t):
    """A `pin` pattern removed from the configuration no longer holds its image after a clean
    restart (the index snapshot used to keep every pin it had ever seen)."""
    p, reg, max_size, layer = _start_tight(t, pin=True)
    p.cache = {"max_size": str(max_size)}
    p.write_conf()
    p.restart()
    _large_pulled(p, reg, max_size, layer, False, "pattern removed, restarted")


def test_pin_patterns_on_reload(t):
    """A reload that adds a `pin` pattern pins what is cached already (no new pull needed);
    one that removes it lets the content go."""
    p, reg, max_size, layer = _start_tight(t, pin=False)
    p.cache["pin"] = PIN
    p.write_conf()
    _reload(p, 1)
    _pins_logged(p, 1)
    _large_pulled(p, reg, max_size, layer, True, "pattern added by a reload")
    del p.cache["pin"]
    p.write_conf()
    _reload(p, 2)
    _large_pulled(p, reg, max_size, layer, False, "pattern removed by a reload")


def test_pins_file_edited_on_reload(t):
    """The pins file (written by mirror and import) is read again by a reload when it changed:
    a line added pins its cached image, a line removed lets it go."""
    p, reg, max_size, layer = _start_tight(t, pin=False)
    pins = os.path.join(p.cache_dir, "pins")
    with open(pins, "w") as f:
        f.write("%s/ns/multi:v1@%s\n" % (reg.name, reg.pushed["ns/multi:v1"]["digest"]))
    _reload(p, 1)
    check("pins: 1 mirrored or imported images pinned" in p.log_text(),
          "the reload did not pin the image the pins file names")
    _large_pulled(p, reg, max_size, layer, True, "line added to the pins file")
    with open(pins, "w") as f:
        f.write("# emptied\n")
    _reload(p, 2)
    _large_pulled(p, reg, max_size, layer, False, "line removed from the pins file")


def test_pins_file_unreadable_on_reload_keeps_pins(t):
    """A reload that finds the pins file changed but cannot read it (here a symbolic link put
    in its place, which is refused) keeps the pins in force and says so: mirrored images are
    never evicted. It used to unpin everything first, then pin nothing from the file, and
    evict at once: an offline cache lost images it cannot fetch again."""
    p, reg, max_size, layer = _start_tight(t, pin=False)
    pins = os.path.join(p.cache_dir, "pins")
    with open(pins, "w") as f:
        f.write("%s/ns/multi:v1@%s\n" % (reg.name, reg.pushed["ns/multi:v1"]["digest"]))
    _reload(p, 1)
    check("pins: 1 mirrored or imported images pinned" in p.log_text(),
          "the reload did not pin the image the pins file names")
    shutil.copy(pins, pins + ".real")
    os.unlink(pins)
    os.symlink(pins + ".real", pins)
    _reload(p, 2)
    check("the pins in force are kept" in p.log_text(),
          "the unreadable pins file was not reported:\n" + p.log_text()[-1500:])
    _large_pulled(p, reg, max_size, layer, True, "pins file unreadable at a reload")
    # Readable again (and changed): read again at the next reload, the line removed lets go.
    os.unlink(pins)
    with open(pins, "w") as f:
        f.write("# emptied\n")
    _reload(p, 3)
    _large_pulled(p, reg, max_size, layer, False, "pins file readable again, line removed")


def test_blob_being_sent_is_not_evicted(t):
    """A cached blob stays in use while it is sent, not only until its answer is queued:
    eviction neither deletes it under a slow client (its blocks then stayed allocated while
    max_size counted them freed) nor counts it; once sent, the store shrinks to max_size."""
    reg = t.s.anon_registry
    max_size, layer = _tight(reg)
    p = t.proxy(registries=[reg.conf()], cache={"max_size": str(max_size)})
    path = "/v2/ns/large/blobs/" + layer["digest"]
    got = lib.stream_get(p.port, path)
    eq((got.status, got.digest), (200, layer["digest"]), "the 10 MiB layer, cached")
    blob = lib.cache_path(p.cache_dir, "blobs", layer["digest"])
    lib.wait_until(lambda: os.path.exists(blob), 10, "the 10 MiB layer to be published")
    c, body, length = lib.slow_get_start(p.port, path)
    # ns/multi needs room that only the layer being sent could give.
    _, tags = t.pull(p, "ns/multi:v1")
    eq(tags.get("v1"), reg.pushed["ns/multi:v1"]["digest"], "pull of ns/multi:v1")
    check(os.path.exists(blob), "the layer was evicted while it was being sent")
    eq(lib.slow_get_finish(c, body, length), (layer["size"], layer["digest"]), "the slow GET")
    _bounded(p, "once the layer was sent", max_size)
