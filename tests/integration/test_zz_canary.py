# SPDX-License-Identifier: Apache-2.0
"""The canary check, run last: every credential of this run is a unique random value (the
service account's password and refresh token, the htpasswd and fakereg users' passwords)
and every token the issuer signed is unique. After the whole suite, none of them may
appear in any proxy log, any cache directory, any answer a client received from a proxy,
or anything a host other than its own registry or realm received (the CDN's request log,
the canary listeners)."""
import base64
import json
import os
import re
import tempfile
import urllib.parse

import lib
from lib import check

# Files where a secret legitimately lives: what tests wrote for the proxy to read
# (password files, docker config.json / pull secrets, inventories and their password
# output), the issuer's own account file and logs (the realm the credentials belong to),
# the registries' own logs, htpasswd files (bcrypt hashes; checked anyway: a hash is not
# the password), and skopeo's temporary auth files.
ALLOWED = re.compile(r"(\.pw$|\.password$|/accounts\.json$|/issuer-[^/]+/|/config\.json$|"
                     r"pull-secret\.yaml$|/hosts\.ini$|/OSEv3\.yml$|\.htpasswd$|/htpasswd$|"
                     r"/reg-[^/]+/registry\.log$|/fakereg/registry\.jsonl$|/fakereg/stderr\.log$|"
                     r"/creds-[^/]+/|/client/|/inventory[^/]*/|/responses\.log\.allowed$)")


def _root(t):
    d = t.tmp
    while os.path.basename(d) and not os.path.basename(d).startswith("regproxy-test-"):
        d = os.path.dirname(d)
    check(os.path.basename(d).startswith("regproxy-test-"), "cannot find the run's temp dir")
    return d


def test_no_canary_anywhere(t):
    s = t.s
    secrets = {"service-account password": s.sa_password,
               "service-account refresh token": s.sa_refresh_token,
               "htpasswd user password": s.alice_password,
               "pusher password": s.pusher_password}
    if "fakereg" in s._cache:
        secrets["fakereg password"] = s.fakereg.password
    tokens = []
    root = _root(t)
    for dirpath, _, files in os.walk(root):
        for fn in files:
            if fn == "tokens.jsonl":
                with open(os.path.join(dirpath, fn)) as f:
                    tokens += [json.loads(x)["token"] for x in f if x.strip()]
    # The forms they travel in too: Basic credentials (base64 of user:password, also a
    # docker config.json's auth field) and percent-encoded in an OAuth2 form body.
    users = {"service-account password": lib.SA_USER, "htpasswd user password": "alice",
             "pusher password": "pusher"}
    if "fakereg" in s._cache:
        users["fakereg password"] = s.fakereg.user
    forms = {}
    for k, v in secrets.items():
        if not v:
            continue
        if k in users:
            forms[k + " (Basic)"] = base64.b64encode(("%s:%s" % (users[k], v)).encode()).decode()
        q = urllib.parse.quote(v, safe="")
        if q != v:
            forms[k + " (percent-encoded)"] = q
    secrets.update(forms)
    needles = [(k, v.encode()) for k, v in secrets.items() if v]
    needles += [("token #%d" % i, tok.encode()) for i, tok in enumerate(tokens)]
    check(tokens, "no token was ever issued: the canary check would prove nothing")
    check(os.path.exists(lib.RESPONSES_LOG), "no client responses were recorded")
    found = []
    scanned = 0
    for dirpath, _, files in os.walk(root):
        for fn in files:
            path = os.path.join(dirpath, fn)
            if ALLOWED.search(path) or os.path.islink(path):
                continue
            try:
                if os.path.getsize(path) > 64 * 1024 * 1024:
                    continue  # image layers: random bytes, not ours to grep
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            scanned += 1
            for what, needle in needles:
                if needle in data:
                    found.append("%s in %s" % (what, os.path.relpath(path, root)))
    check(scanned > 50, "too few files scanned (%d): the check would prove nothing" % scanned)
    check(not found, lambda: "secrets found where they must never be:\n  " +
          "\n  ".join(found[:30]))
    print("    (canary: %d secrets and %d tokens absent from %d files, including every proxy "
          "log, cache and client response)" % (len(secrets), len(tokens), scanned))
