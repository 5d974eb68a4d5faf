# SPDX-License-Identifier: Apache-2.0
"""The CRI-O / podman mirror shape: registries.conf sends pulls of registry.token.test/...
to the mirror location PROXY/registry.token.test. The real host does not resolve, so a
successful pull proves it came through the proxy."""
import os

import lib
from lib import eq


def test_registries_conf_mirror(t):
    s = t.s
    reg = s.token_registry
    p = t.proxy()
    conf = os.path.join(t.tmp, "registries.conf")
    with open(conf, "w") as f:
        f.write('unqualified-search-registries = []\n\n'
                '[[registry]]\nprefix = "registry.token.test"\nlocation = "registry.token.test"\n'
                '\n[[registry.mirror]]\nlocation = "%s/registry.token.test"\ninsecure = true\n'
                % p.hostport)
    for ref in ("ns/multi:v1", "ns/multiarch:v1"):
        out = os.path.join(t.tmp, "mirror-" + ref.replace("/", "_").replace(":", "_"))
        s.skopeo(["--registries-conf", conf, "copy", "-q", "--all", "--preserve-digests",
                  "--dest-oci-accept-uncompressed-layers", "--src-no-creds",
                  "docker://registry.token.test/" + ref, "oci:%s:v1" % out])
        tags = lib.verify_oci_layout(out)
        eq(tags["v1"], reg.pushed[ref]["digest"], "%s pulled through the mirror" % ref)
