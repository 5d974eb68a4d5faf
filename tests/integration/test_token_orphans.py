# SPDX-License-Identifier: Apache-2.0
"""Token fetches whose clients left are bounded. Each repository name is a token scope, and a
token fetch went on after its last client hung up (its token would serve the next request
for the scope), for as long as the realm took, up to 30 s. A client on the anonymous port
that asks for name after name and hangs up once the proxy asked the realm, against a slow
realm, so held one realm connection and its memory per name: 100 names left 100 realm
connections open with no client connected. Now at most 32 fetches nobody waits for go on
(TOKEN_ORPHANS_MAX in proxy/tokens.c); the oldest beyond that are cancelled. One still
waited for is never cancelled: it answers its client once the realm does."""
import json
import os
import socket
import threading

import lib
import rawup
from lib import check, eq

NAMES = 100
ORPHANS_MAX = 32


def _sockets(p):
    n = 0
    for fd in os.listdir("/proc/%d/fd" % p.pid):
        try:
            n += os.readlink("/proc/%d/fd/%s" % (p.pid, fd)).startswith("socket:")
        except OSError:
            pass
    return n


def test_abandoned_token_fetches_are_bounded(t):
    realm_open = threading.Event()
    t.defer(realm_open.set)

    def h(r):
        path = r.path.split("?")[0]
        if path.startswith("/token"):
            realm_open.wait(120)
            try:
                r.send(200, json.dumps({"token": "tok%d" % r.n, "expires_in": 600}).encode(),
                       [("Content-Type", "application/json")])
            except OSError:
                pass
            return False
        if not (r.h("authorization") or "").startswith("Bearer "):
            r.send(401, b'{"errors":[]}', [("Content-Type", "application/json"),
                   ("WWW-Authenticate", 'Bearer realm="%s/token",service="svc"' % up.url)])
            return False
        r.send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"no","detail":null}]}',
               [("Content-Type", "application/json")])
        return False
    up = rawup.RawUpstream(t, h)
    p = t.proxy(registries=[up.conf(token_realms="%s/token" % up.url)])
    base = _sockets(p)

    def orphan(i):
        """A client asks for ns/n<i> and leaves once the proxy has asked the realm."""
        asked = len(up.seen("/token"))
        c = socket.create_connection(("127.0.0.1", p.port))
        c.sendall(b"GET /v2/ns/n%d/manifests/v1 HTTP/1.1\r\nHost: x\r\n\r\n" % i)
        lib.wait_until(lambda: len(up.seen("/token")) > asked, 10,
                       "the proxy asking the realm for ns/n%d" % i)
        c.close()

    for i in range(NAMES):
        orphan(i)
    lib.wait_until(lambda: p.metrics()[("regproxy_open_connections", frozenset())] == 0, 10,
                   "the clients' connections to close")
    # The cancelled fetches' realm connections are closed as they are cancelled.
    lib.settle(lambda: [], quiet=0.5)
    grown = _sockets(p) - base
    check(grown <= ORPHANS_MAX + 4,
          "%d more sockets with no client connected, after %d clients asked for distinct "
          "names and left while the realm was slow (at most %d token fetches may go on)"
          % (grown, NAMES, ORPHANS_MAX))

    # A client that waits still gets its answer once the realm does.
    got = []
    th = threading.Thread(target=lambda: got.append(
        lib.stream_get(p.port, "/v2/ns/waiting/manifests/v1")))
    asked = len(up.seen("/token"))
    th.start()
    lib.wait_until(lambda: len(up.seen("/token")) > asked, 10,
                   "the proxy asking the realm for the waiting client")
    for i in range(NAMES, NAMES + 2 * ORPHANS_MAX):  # more orphans, pushing out the oldest
        orphan(i)
    realm_open.set()
    th.join(60)
    check(got, "the waiting client got no answer")
    eq(got[0].status, 404, "the waiting client's answer (upstream's 404, with a token)")
