# SPDX-License-Identifier: Apache-2.0
"""Crash safety of the store: over and over on the same cache dir, start the proxy, fire
concurrent GETs of blobs and manifests (most uncached: the 100 MiB and 10 MiB layers never
finish in time, small cached blobs are deleted between rounds so they fill again), and
kill -9 it 0-300 ms later. After every kill each file under blobs/ hashes to its name and
every manifest file parses and hashes to its name; after every start tmp/ is empty; a
client that got a complete 200 got the right bytes. At the end full pulls succeed with
every digest checked, and the proxy stops cleanly."""
import json
import os
import random
import threading
import time

import lib
from lib import check, eq

ROUNDS = 20
IMAGES = ("ns/large:v1", "ns/multi:v1", "ns/multiarch:v1")


def _targets(reg):
    """[(path, expected digest, size or None, is_blob)] of everything the rounds ask for."""
    out = []
    for ref in IMAGES:
        repo, tag = ref.split(":")
        out.append(("/v2/%s/manifests/%s" % (repo, tag), reg.pushed[ref]["digest"], None,
                    False))
        top = json.loads(reg.pushed[ref]["body"])
        for d in top.get("manifests", []):
            out.append(("/v2/%s/manifests/%s" % (repo, d["digest"]), d["digest"], d["size"],
                        False))
        for m in lib.image_manifests(reg, ref):
            for b in [m["config"]] + m["layers"]:
                out.append(("/v2/%s/blobs/%s" % (repo, b["digest"]), b["digest"], b["size"],
                            True))
    return out


def _client(p, path, results, i):
    results[i] = lib.stream_get(p.port, path, headers={"Accept": lib.ACCEPT_ALL}, timeout=30)


def test_kill9_rounds(t):
    reg = t.s.token_registry
    targets = _targets(reg)
    big = max((x for x in targets if x[3]), key=lambda x: x[2])
    rnd = random.Random()
    seed = rnd.randrange(1 << 30)
    rnd.seed(seed)
    print("    kill9 seed %d" % seed, flush=True)
    p = t.proxy(start=False)
    served = {"complete": 0, "cut": 0}
    for rnd_no in range(1, ROUNDS + 1):
        what = "round %d (seed %d)" % (rnd_no, seed)
        p.start()
        left = lib.cache_files(p.cache_dir, "tmp")
        check(not left, "%s: tmp/ not emptied at start: %s" % (what, left[:5]))
        check(not os.path.exists(os.path.join(p.cache_dir, "index")),
              "%s: an index snapshot exists after a start following kill -9" % what)
        # Every target once, the two big layers twice (shared fills), in random order.
        jobs = [x for x in targets] + [big, big]
        rnd.shuffle(jobs)
        results = [None] * len(jobs)
        ths = [threading.Thread(target=_client, args=(p, j[0], results, i), daemon=True)
               for i, j in enumerate(jobs)]
        for th in ths:
            th.start()
        time.sleep(rnd.uniform(0, 0.3))
        p.kill9()
        for th in ths:
            th.join(40)
        check(not any(th.is_alive() for th in ths),
              "%s: clients still hanging 40 s after the proxy was killed" % what)
        for (path, digest, size, is_blob), r in zip(jobs, results):
            if r is not None and r.status == 200 and r.complete:
                served["complete"] += 1
                eq(r.digest, digest, "%s: body of a complete 200 for %s" % (what, path))
            else:
                served["cut"] += 1
        lib.check_cache_store(p.cache_dir, "%s, after kill -9: " % what)
        # Let small blobs fill again next round (the proxy is dead: no index snapshot to
        # disagree with, the next start rebuilds from the files).
        for path, digest, size, is_blob in targets:
            f = lib.cache_path(p.cache_dir, "blobs", digest)
            if is_blob and size < 50 << 20 and os.path.exists(f) and rnd.random() < 0.6:
                os.unlink(f)
    print("    kill9: %d rounds, %d complete answers, %d cut or refused"
          % (ROUNDS, served["complete"], served["cut"]), flush=True)

    p.start()
    left = lib.cache_files(p.cache_dir, "tmp")
    check(not left, "after the final start: tmp/ not empty: %s" % left[:5])
    for ref in IMAGES:
        _, tags = t.pull(p, ref)
        eq(tags.get("v1"), reg.pushed[ref]["digest"], "final pull of %s" % ref)
    nb, nm = lib.check_cache_store(p.cache_dir, "after the final pulls: ")
    check(nb >= 10, "only %d blobs in the cache after pulling %s" % (nb, IMAGES))
