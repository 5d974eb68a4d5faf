# SPDX-License-Identifier: Apache-2.0
"""The registry refusing the proxy's credentials reaches the client as a 502 (code
UNAUTHORIZED), never a 401 (which must carry a challenge and sends an
anonymous client to log in). With a Bearer registry whose realm issues tokens that the
registry then refuses (an account without pull access: distribution answers 401
insufficient_scope), the proxy's third 401 is final (AUTH_RETRIES): manifests and blobs alike, it must not
reach the client as a 401."""
import http.server
import json
import threading

import lib
from lib import check, eq


def test_bearer_token_refused_is_not_401(t):
    seen = []

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            if not self.path.startswith("/v2/"):
                return self._send(200, json.dumps({"token": "tok", "expires_in": 600}).encode())
            realm = "http://127.0.0.1:%d/token" % srv.server_port
            return self._send(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}', {
                "WWW-Authenticate": 'Bearer realm="%s",service="svc",scope="repository:ns/x:pull",'
                                    'error="insufficient_scope"' % realm})

        def _send(self, status, body, extra=None):
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    t.defer(srv.server_close)
    t.defer(srv.shutdown)
    url = "http://127.0.0.1:%d" % srv.server_port
    p = t.proxy(registries=[{"name": "local.test", "url": url, "user": "alice",
                             "password": "alice-secret", "token_realms": url + "/token"}])
    r = p.get("/v2/ns/x/manifests/v1", headers={"Accept": lib.ACCEPT_ALL})
    check(any(a and a.startswith("Bearer ") for _, a in seen),
          "the proxy never sent a token: %r" % seen)
    eq(r.status, 502, "status for a registry that refuses the proxy's tokens (upstream: %r)"
       % [(pth, (a or "")[:10]) for pth, a in seen])
    eq([e["code"] for e in r.json()["errors"]], ["UNAUTHORIZED"], "error code")
    eq(r.header("WWW-Authenticate"), None, "a challenge to the anonymous client")
    r = p.get("/v2/ns/x/blobs/sha256:" + "a" * 64)
    eq(r.status, 502, "blob status for a registry that refuses the proxy's tokens")
