# SPDX-License-Identifier: Apache-2.0
"""A scriptable plain-HTTP upstream for tests of upstream quirks: every request is handed to a Python
function with the raw socket, which writes whatever bytes it likes (lies, stalls, resets).
Binds 127.0.0.1 only."""
import hashlib
import json
import os
import socket
import threading
import time


class Req:
    def __init__(self, method, path, headers, sock, n):
        self.method, self.path, self.headers, self.sock, self.n = method, path, headers, sock, n

    def h(self, name, default=None):
        return self.headers.get(name.lower(), default)

    def send(self, status, body=b"", headers=(), reason="X", close=True):
        lines = ["HTTP/1.1 %d %s" % (status, reason)]
        have_len = any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers)
        for k, v in headers:
            lines.append("%s: %s" % (k, v))
        if not have_len:
            lines.append("Content-Length: %d" % len(body))
        if close:
            lines.append("Connection: close")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def answer(self, body, content_type, digest=None):
        """200 with body (none for a HEAD, its Content-Length still the body's), its
        Content-Type and, when given, Docker-Content-Digest."""
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        if digest:
            headers.append(("Docker-Content-Digest", digest))
        self.send(200, b"" if self.method == "HEAD" else body, headers)

    def raw(self, b):
        self.sock.sendall(b)


class RawUpstream:
    def __init__(self, t, handler):
        self.handler = handler
        self.reqs = []
        self.lock = threading.Lock()
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(64)
        self.port = self.ls.getsockname()[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.stop = False
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()
        t.defer(self.close)

    def conf(self, name="raw.test", **keys):
        """Its [registry] entry for t.proxy(registries=[...]), with extra keys."""
        e = {"name": name, "url": self.url}
        e.update(keys)
        return e

    def close(self):
        self.stop = True
        try:
            self.ls.close()
        except OSError:
            pass
        for c in list(self.conns):
            try:
                c.close()
            except OSError:
                pass

    def _accept(self):
        while not self.stop:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    b = c.recv(65536)
                    if not b:
                        return
                    buf += b
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                hd = {}
                for ln in lines[1:]:
                    k, _, v = ln.partition(":")
                    hd.setdefault(k.strip().lower(), v.strip())
                with self.lock:
                    n = len(self.reqs)
                    self.reqs.append((time.time(), method, path, hd))
                r = Req(method, path, hd, c, n)
                keep = self.handler(r)
                if not keep:
                    c.close()
                    return
        except OSError:
            return

    def seen(self, prefix=""):
        with self.lock:
            return [x for x in self.reqs if x[2].startswith(prefix)]


def sha256(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def image():
    """(manifest bytes, manifest digest, layer bytes, layer digest, config bytes, digest)."""
    layer = os.urandom(3 * 1024 * 1024 + 7)
    cfg = json.dumps({"architecture": "amd64", "os": "linux",
                      "rootfs": {"type": "layers", "diff_ids": [sha256(layer)]}}).encode()
    m = json.dumps({"schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                               "digest": sha256(cfg), "size": len(cfg)},
                    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                "digest": sha256(layer), "size": len(layer)}]}).encode()
    return m, sha256(m), layer, sha256(layer), cfg, sha256(cfg)
