# SPDX-License-Identifier: Apache-2.0
"""Pulls through the proxy from a docker-registry with htpasswd (Basic) auth."""
import lib
from lib import check, eq


def test_pull_basic_default_and_prefix(t):
    s = t.s
    reg = s.basic_registry
    p = t.proxy(registries=[s.token_registry.conf(), reg.conf(), s.anon_registry.conf()],
                listeners=[{"default": "registry.token.test"},
                           {"default": "registry.basic.test"}])
    mark = reg.mark()
    for ref in ("ns/multi:v1", "ns/multi-v2s2:v1", "ns/multiarch:v1"):
        # prefix route on the first listener
        _, tags = t.pull(p, "registry.basic.test/" + ref)
        eq(tags["v1"], reg.pushed[ref]["digest"], "pulled %s by prefix" % ref)
        # default route on the second listener
        _, tags = t.pull(p, ref, listener=1)
        eq(tags["v1"], reg.pushed[ref]["digest"], "pulled %s by default route" % ref)
        via = t.inspect_raw(ref, proxy=p, listener=1)
        eq(lib.sha256(via), reg.pushed[ref]["digest"], "inspect --raw %s via the proxy" % ref)
    got = reg.count("GET", "/v2/ns/multi/blobs/sha256:", since=mark)
    check(got >= 1, "the basic registry saw no blob GET for ns/multi (so who served it?)")


def test_pull_basic_large(t):
    s = t.s
    reg = s.basic_registry
    p = t.proxy(registries=[reg.conf()])
    _, tags = t.pull(p, "ns/large:v1")
    eq(tags["v1"], reg.pushed["ns/large:v1"]["digest"], "ns/large via basic")
