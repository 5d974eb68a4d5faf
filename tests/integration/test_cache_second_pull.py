# SPDX-License-Identifier: Apache-2.0
"""A second pull of the same images is answered from the cache: no blob and no manifest
request reaches upstream (tags are within tag_ttl), every digest checks, and the access log
says cache=HIT. A new proxy process on the same cache dir (a restart) still serves hits
without fetching a blob again."""
import time

import lib
from lib import check, eq

REFS = ("ns/large:v1", "ns/multi:v1")


def _blobs(reg, ref):
    out = []
    for m in lib.image_manifests(reg, ref):
        out += [m["config"]["digest"]] + [x["digest"] for x in m["layers"]]
    return out


def _upstream(reg, mark):
    """Upstream requests for the pulled repositories since mark: [(method, path, status)]."""
    time.sleep(0.3)  # docker-registry logs a request when it has ended
    prefixes = tuple("/v2/%s/" % ref.split(":")[0] for ref in REFS)
    return [x for x in reg.since(mark) if x[1].startswith(prefixes)]


def _pull_all(t, p, reg, what):
    for ref in REFS:
        _, tags = t.pull(p, ref)
        eq(tags.get("v1"), reg.pushed[ref]["digest"], "%s: digest of %s" % (what, ref))


def _only_hits(p, since, what):
    lines = [a for a in p.access(since) if "/blobs/" in a.get("path", "") or
             "/manifests/" in a.get("path", "")]
    check(lines, "%s: no blob or manifest requests in the proxy's access log" % what)
    bad = [(a["method"], a["path"], a.get("status"), a.get("cache")) for a in lines
           if a.get("cache") != "HIT" or a.get("status") != "200"]
    check(not bad, "%s: every blob and manifest request should be a cache HIT with 200; "
          "these were not: %s" % (what, bad[:10]))


def test_second_pull_from_cache(t):
    reg = t.s.token_registry
    p = t.proxy()
    m0 = reg.mark()
    _pull_all(t, p, reg, "first pull")
    first = _upstream(reg, m0)
    for ref in REFS:
        for d in _blobs(reg, ref):
            n = sum(1 for m, path, _ in first if m == "GET" and path.endswith("/blobs/" + d))
            eq(n, 1, "upstream GETs of blob %s of %s during the first (cold) pull" % (d, ref))

    m1, a1 = reg.mark(), len(p.access())
    _pull_all(t, p, reg, "second pull")
    ups = _upstream(reg, m1)
    blob_gets = [x for x in ups if x[0] == "GET" and "/blobs/" in x[1]]
    man_reqs = [x for x in ups if "/manifests/" in x[1]]
    check(not blob_gets, "second pull: %d upstream blob GETs, expected none: %s"
          % (len(blob_gets), blob_gets[:5]))
    check(not man_reqs, "second pull within tag_ttl: upstream manifest requests, expected "
          "none: %s" % man_reqs[:5])
    check(not ups, "second pull: unexpected upstream requests %s" % ups[:5])
    _only_hits(p, a1, "second pull")

    # Same cache dir, new process: the index, tags and links come back from disk.
    a2 = len(p.access())  # the log is appended to across restarts
    p.restart()
    m2 = reg.mark()
    _pull_all(t, p, reg, "pull after a restart")
    ups = _upstream(reg, m2)
    blob_gets = [x for x in ups if x[0] == "GET" and "/blobs/" in x[1]]
    check(not blob_gets, "pull after a restart on the same cache dir: %d upstream blob GETs, "
          "expected none: %s" % (len(blob_gets), blob_gets[:5]))
    man_reqs = [x for x in ups if "/manifests/" in x[1]]
    check(not man_reqs, "pull after a restart, tags within tag_ttl (10m): upstream manifest "
          "requests, expected none: %s" % man_reqs[:5])
    _only_hits(p, a2, "pull after a restart")
