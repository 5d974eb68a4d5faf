# SPDX-License-Identifier: Apache-2.0
"""Fixtures for regproxy's integration tests (tests/run.py drives them).

A test is a function `test_x(t)` in tests/integration/test_*.py. `t` is a TestCtx: a temp
dir of its own, the session `t.s` (lazily started, shared upstreams: a test CA, three
docker-registry instances holding the test images, a token issuer, a fake CDN-redirecting
registry), `t.proxy(...)` to start a regproxy (stopped and checked for a clean exit and
sanitizer reports when the test ends), and helpers for skopeo and plain HTTP.

Everything binds 127.0.0.1 on free ports, lives under one temp dir, and every child
process is killed when the run ends."""
import base64
import contextlib
import ctypes
import hashlib
import http.client
import http.server
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
sys.path.insert(0, FIXTURES)
import mkimage  # noqa: E402
import testca  # noqa: E402

PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
SA_USER = "12345678|regproxy-test"  # a Red Hat style registry service account
ACCEPT_ALL = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json"])
SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:",
                     "ThreadSanitizer", "MemorySanitizer", "UndefinedBehaviorSanitizer")
# What the test images are called on every upstream (pushed once per session).
REPOS = {"ns/multi:v1": "multi", "ns/multi-v2s2:v1": "multi", "ns/large:v1": "large",
         "ns/multiarch:v1": "multiarch"}
NTAGS = 25


# ----------------------------------------------------------------------------- failures

class Failure(AssertionError):
    pass


def fail(msg):
    raise Failure(msg)


def check(cond, msg):
    if not cond:
        raise Failure(msg() if callable(msg) else msg)


def eq(got, want, what):
    if got != want:
        raise Failure("%s: expected %r, got %r" % (what, want, got))


def sha256(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"


def schema1_payload_digest(body):
    """A signed schema 1 manifest's digest as registries and clients (containers/image,
    docker's libtrust) compute it: of its payload, the first signature's protected header's
    formatLength bytes of the body followed by its formatTail; the payload must be the body
    less its signatures. None when the body does not say so."""
    def b64url(s):
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    try:
        j = json.loads(body)
        prot = json.loads(b64url(j["signatures"][0]["protected"]))
        payload = body[:int(prot["formatLength"])] + b64url(prot["formatTail"])
        del j["signatures"]
        if json.loads(payload) != j:
            return None
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return sha256(payload)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return "sha256:" + h.hexdigest()


def tail(path, n=40):
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            lines = f.read().decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-n:])
    except OSError as e:
        return "(cannot read %s: %s)" % (path, e)


def held_herd(p, up, path, order, release, first=True, headers=None, first_seen=None,
              all_in=None):
    """Requests of path through proxy p, one per method in order, all inside the proxy before
    the upstream up (a rawup.RawUpstream holding them until release is set) answers any.
    With first, the first is sent, and seen upstream (first_seen(), by default a request for
    path), before the rest. Waits until each either went upstream or waits on another
    (all_in(waiting), given how many the proxy's debug line says wait: p logs at debug), then
    releases upstream. Returns the responses in order (None for one that got none) and
    the methods upstream saw for path."""
    got = [None] * len(order)
    first_seen = first_seen or (lambda: up.seen(path))
    all_in = all_in or (lambda waiting: len(up.seen(path)) + waiting >= len(order))

    def one(i):
        got[i] = p.get(path, method=order[i], headers=headers)
    ths = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(order))]
    if first:
        ths[0].start()
        wait_until(first_seen, 60, "the first request upstream")
    for th in ths[1 if first else 0:]:
        th.start()
    wait_until(lambda: all_in(p.log_text().count(" waits for request ")), 60,
               "each of %d requests upstream or waiting on another" % len(order))
    release.set()
    for th in ths:
        th.join(120)
    return got, [x[1] for x in up.seen(path)]


def wait_until(fn, timeout, what, interval=0.05, proc=None):
    """Polls fn() until it returns a truthy value; fails naming `what` after timeout, or
    at once when `proc` (a Proc) dies meanwhile."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            v = fn()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - report the last one
            last = e
        if proc is not None and not proc.alive():
            fail("%s: %s exited with %s before being ready; log tail:\n%s"
                 % (what, proc.name, proc.p.returncode, tail(proc.log)))
        if time.monotonic() > deadline:
            fail("timed out after %.0fs waiting for %s (last error: %r)%s"
                 % (timeout, what, last,
                    "; log tail:\n" + tail(proc.log) if proc is not None else ""))
        time.sleep(interval)
        interval = min(interval * 1.5, 0.5)


# ---------------------------------------------------------------------------- processes

_PROCS = []
_PROCS_LOCK = threading.Lock()
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:
    _libc = None


def _child_setup():
    # Die with the runner even if it is SIGKILLed (PR_SET_PDEATHSIG = 1). The signal comes
    # when the *thread* that started the child ends: a long-lived child (a proxy restarted
    # mid-test) must be started from the test's own thread, not from a parallel() client.
    if _libc is not None:
        _libc.prctl(1, signal.SIGKILL, 0, 0, 0)


def clean_env(extra=None):
    """The environment for children: no proxy variables (libcurl and skopeo honour them), no
    AWS_CA_BUNDLE (docker-registry crashes at start with it)."""
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy",
                                "aws_ca_bundle")}
    env.update(extra or {})
    return env


class Proc:
    """A long-running child with stdout+stderr to a log file, in its own process group."""

    def __init__(self, name, argv, log, env=None, cwd=None):
        self.name, self.argv, self.log = name, argv, log
        with open(log, "ab") as f:
            self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f,
                                      stderr=subprocess.STDOUT, env=env or clean_env(),
                                      cwd=cwd, start_new_session=True,
                                      preexec_fn=_child_setup)
        self.pid = self.p.pid
        with _PROCS_LOCK:
            _PROCS.append(self)

    def alive(self):
        return self.p.poll() is None

    def stop(self, timeout=10, sig=signal.SIGTERM):
        """Sends sig, waits up to timeout, then SIGKILLs the group. Returns (rc, killed)."""
        killed = False
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.p.pid, sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                killed = True
        self.kill()
        return self.p.returncode, killed

    def kill(self):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.p.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.p.wait(5)


def kill_all():
    with _PROCS_LOCK:
        procs = list(_PROCS)
        _PROCS.clear()
    for p in procs:
        p.kill()


def read_to_eof(sock):
    """All a socket receives until the peer closes (socket.timeout propagates)."""
    chunks = []
    while True:
        b = sock.recv(65536)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def ping_from(port, creds=None, source="127.0.0.1"):
    """Status of GET /v2/ on a fresh connection from a given loopback source address, with
    Basic credentials (user:password bytes) or none; None when no HTTP answer came."""
    with socket.socket() as c:
        c.settimeout(20)
        c.bind((source, 0))
        c.connect(("127.0.0.1", port))
        c.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                  + (b"Authorization: Basic %s\r\n" % base64.b64encode(creds) if creds else b"")
                  + b"\r\n")
        got = read_to_eof(c)
    return int(got.split(b" ", 2)[1]) if got.startswith(b"HTTP/1.1 ") else None


def read_head(c, buf=b""):
    """Reads one response head from socket c, after the bytes already in buf: (status line,
    {lower-case name: value}, the bytes after the head). A header sent twice fails."""
    while b"\r\n\r\n" not in buf:
        b = c.recv(65536)
        check(b, "connection closed before the response head (%r)" % buf[:200])
        buf += b
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    hdrs = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        check(k.strip().lower() not in hdrs, "header %s twice in %r" % (k, head))
        hdrs[k.strip().lower()] = v.strip()
    return lines[0], hdrs, rest


def raw_exchange(port, data, timeout=10):
    """Sends data on a fresh connection to 127.0.0.1:port and returns all that comes back
    until the server closes; fails if it keeps the connection open past timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as c:
        c.sendall(data)
        try:
            return read_to_eof(c)
        except socket.timeout:
            fail("the connection was kept open after %r" % data[:60])


_ports_given = set()


def free_port():
    """A port free now on 127.0.0.1, and not one this process handed out before: the kernel
    may give a just-closed ephemeral port again, and a test asking for two (a listener and
    its admin) would get the same one twice."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port
    raise RuntimeError("no free port not handed out before")


def read_port_file(path, proc, n=1, timeout=20):
    def ready():
        if os.path.exists(path):
            with open(path) as f:
                parts = f.read().split()
            if len(parts) >= n:
                return [int(x) for x in parts[:n]]
        return None
    return wait_until(ready, timeout, "%s to bind" % proc.name, proc=proc)


# ---------------------------------------------------------------------------------- HTTP

class Resp:
    def __init__(self, status, reason, headers, body):
        self.status, self.reason, self.headers_list, self.body = status, reason, headers, body
        self.headers = {}
        for k, v in headers:
            self.headers.setdefault(k.lower(), v)

    def header(self, name, default=None):
        return self.headers.get(name.lower(), default)

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            fail("expected a JSON body, got %r" % self.body[:300])

    def error_codes(self):
        try:
            return [e.get("code") for e in json.loads(self.body).get("errors", [])]
        except (ValueError, AttributeError):
            return None

    def __repr__(self):
        return "<%d %s headers=%s body=%r>" % (self.status, self.reason,
                                               dict(self.headers_list), self.body[:400])


# Every answer a test client receives over plain HTTP (the proxy's listeners) is appended
# here, so the canary check at the end can prove no secret ever reached a client.
RESPONSES_LOG = None


def record_response(url, status, headers, body):
    if not RESPONSES_LOG or not url.startswith("http://"):
        return
    with contextlib.suppress(OSError):
        with open(RESPONSES_LOG, "ab") as f:
            f.write(("%s %s\n" % (status, url)).encode())
            for k, v in headers:
                f.write(("%s: %s\n" % (k, v)).encode("latin-1", "replace"))
            f.write(body[:65536] + b"\n")


def request(url, method="GET", headers=None, body=None, ca=None, timeout=60):
    """One HTTP(S) request, the path sent exactly as given (no normalisation, no redirects).
    Returns a Resp."""
    u = urllib.parse.urlsplit(url)
    path = url[url.index(u.netloc) + len(u.netloc):] or "/"
    if u.scheme == "https":
        ctx = ssl.create_default_context(cafile=ca) if ca else ssl._create_unverified_context()
        c = http.client.HTTPSConnection(u.hostname, u.port or 443, timeout=timeout,
                                        context=ctx)
    else:
        c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
    try:
        c.putrequest(method, path, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            c.putheader(k, v)
        if body is not None:
            c.putheader("Content-Length", str(len(body)))
        c.endheaders(body)
        r = c.getresponse()
        data = r.read()
        record_response(url, r.status, r.getheaders(), data)
        return Resp(r.status, r.reason, r.getheaders(), data)
    finally:
        c.close()


def _unverified_tls():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def raw_request(host, port, data, timeout=30, tls=False):
    """Sends raw bytes on a plain TCP connection (or TLS without verification), returns the
    whole answer (until close or a complete response with Content-Length)."""
    with socket.create_connection((host, port), timeout=timeout) as raw:
        s = raw
        if tls:
            s = _unverified_tls().wrap_socket(raw)
        s.sendall(data)
        buf = b""
        while True:
            try:
                b = s.recv(65536)
            except socket.timeout:
                break
            if not b:
                break
            buf += b
            if b"\r\n\r\n" in buf:
                head, _, rest = buf.partition(b"\r\n\r\n")
                m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if m and len(rest) >= int(m.group(1)):
                    break
        return buf


def dechunk(b):
    out, i = b"", 0
    while True:
        j = b.index(b"\r\n", i)
        n = int(b[i:j].split(b";")[0], 16)
        if n == 0:
            return out
        out += b[j + 2:j + 2 + n]
        i = j + 2 + n + 2


def parse_www_authenticate(h):
    scheme, _, rest = h.partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return scheme.lower(), params


class UpstreamClient:
    """Talks to an upstream directly, with its credentials (Basic, or the token flow), to
    learn what the proxy should answer."""

    def __init__(self, base_url, ca, creds=None):
        self.base, self.ca, self.creds = base_url.rstrip("/"), ca, creds
        self.tokens = {}

    def _basic(self):
        u, p = self.creds
        return "Basic " + base64.b64encode(("%s:%s" % (u, p)).encode()).decode()

    def get(self, path, method="GET", headers=None):
        h = dict(headers or {})
        scope_key = path
        r = request(self.base + path, method, h, ca=self.ca)
        if r.status != 401:
            return r
        scheme, params = parse_www_authenticate(r.header("WWW-Authenticate", ""))
        if scheme == "basic":
            check(self.creds, "upstream %s wants Basic credentials, none given" % self.base)
            h["Authorization"] = self._basic()
        elif scheme == "bearer":
            q = {"service": params.get("service", "")}
            if params.get("scope"):
                q["scope"] = params["scope"]
            th = {"Authorization": self._basic()} if self.creds else {}
            tr = request(params["realm"] + "?" + urllib.parse.urlencode(q), "GET", th,
                         ca=self.ca)
            check(tr.status == 200, "token request for %s failed: %r" % (scope_key, tr))
            tok = tr.json().get("token") or tr.json().get("access_token")
            h["Authorization"] = "Bearer " + tok
        else:
            return r
        return request(self.base + path, method, h, ca=self.ca)

    def manifest(self, repo, ref, accept=ACCEPT_ALL, method="GET"):
        return self.get("/v2/%s/manifests/%s" % (repo, ref), method, {"Accept": accept})


# -------------------------------------------------------------------------------- skopeo

def skopeo(args, env, timeout=600, check_rc=True):
    argv = ["skopeo", "--insecure-policy"] + list(args)
    t0 = time.monotonic()
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=env, timeout=timeout,
                           preexec_fn=_child_setup)
    except subprocess.TimeoutExpired as e:
        fail("skopeo timed out after %ds: %s\nstderr: %s" % (timeout, " ".join(argv),
                                                              (e.stderr or b"")[-3000:]))
    p.elapsed = time.monotonic() - t0
    p.out = p.stdout.decode("utf-8", "replace")
    p.err = p.stderr.decode("utf-8", "replace")
    if check_rc and p.returncode != 0:
        fail("skopeo exited %d: %s\nstderr:\n%s" % (p.returncode, " ".join(argv),
                                                   p.err[-4000:]))
    return p


def htpasswd_file(t, user, password, cost=None):
    """A client-accounts file (htpasswd -B, bcrypt cost as given or htpasswd's default 5)
    with one account, in the test's directory."""
    path = os.path.join(t.tmp, "clients-%s.htpasswd" % user)
    cost_args = ["-C", str(cost)] if cost else []
    out = subprocess.run(["htpasswd", "-B"] + cost_args + ["-bn", user, password],
                         stdout=subprocess.PIPE, check=True).stdout
    with open(path, "wb") as f:
        f.write(out)
    return path


def serving_cert(t, name):
    """A server certificate for 127.0.0.1 from a CA of this test's own."""
    d = os.path.join(t.tmp, name)
    os.makedirs(d, exist_ok=True)
    key, crt = os.path.join(d, "tls.key"), os.path.join(d, "tls.crt")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", crt, "-days", "1", "-subj", "/CN=%s" % name, "-addext",
                    "subjectAltName=IP:127.0.0.1"], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    # skopeo's --cert-dir reads *.key as client keys: the CA goes in a directory of its own.
    cadir = os.path.join(d, "ca")
    os.makedirs(cadir, exist_ok=True)
    with open(os.path.join(cadir, "ca.crt"), "wb") as f, open(crt, "rb") as c:
        f.write(c.read())
    return cadir, key, crt


def fakereg_blob_in_mode(t, mode):
    """A proxy in front of the fake registry, switched to mode (back to ok at the end of the
    test), and ns/large's 10 MiB layer, long enough for concurrent clients to share one
    fill. Returns (fakereg, proxy, layer descriptor, the layer's path on the proxy)."""
    fr = t.s.fakereg
    r = fr.client().manifest("ns/large", "v1")
    eq(r.status, 200, "ns/large manifest straight from the fake registry")
    layer = min(json.loads(r.body)["layers"], key=lambda x: x["size"])
    p = t.proxy(registries=[fr.conf()])
    fr.set_mode(mode)
    t.defer(lambda: fr.set_mode("ok"))
    return fr, p, layer, "/v2/ns/large/blobs/" + layer["digest"]


def image_manifests(reg, ref):
    """[(descriptor-ish dict, parsed manifest)] of the image manifests behind ref as pushed to
    reg (one for an image, one per platform for an index)."""
    m = json.loads(reg.pushed[ref]["body"])
    if "manifests" not in m:
        return [m]
    c = reg.client("pull")
    out = []
    for d in m["manifests"]:
        r = c.manifest(ref.split(":")[0], d["digest"])
        eq(r.status, 200, "child manifest %s of %s" % (d["digest"], ref))
        out.append(json.loads(r.body))
    return out


def verify_oci_layout(d):
    """Checks an OCI layout written by `skopeo copy ... oci:D`: every blob file hashes to
    its name; every manifest/index reachable from index.json is present with the right
    size; every config and layer they reference is present. Returns {tag: digest}."""
    blobs = os.path.join(d, "blobs", "sha256")
    check(os.path.isdir(blobs), "no blobs directory in %s" % d)
    for name in os.listdir(blobs):
        got = sha256_file(os.path.join(blobs, name))
        eq(got, "sha256:" + name, "digest of blob file %s in %s" % (name, d))
    with open(os.path.join(d, "index.json")) as f:
        idx = json.load(f)
    tags = {}
    todo = []
    for desc in idx["manifests"]:
        t = desc.get("annotations", {}).get("org.opencontainers.image.ref.name")
        if t:
            tags[t] = desc["digest"]
        todo.append(desc)

    def need(desc, what):
        p = os.path.join(blobs, desc["digest"].split(":", 1)[1])
        check(os.path.isfile(p), "%s %s missing from %s" % (what, desc["digest"], d))
        eq(os.path.getsize(p), desc["size"], "size of %s %s" % (what, desc["digest"]))
        return p

    while todo:
        desc = todo.pop()
        with open(need(desc, "manifest"), "rb") as f:
            m = json.load(f)
        if "manifests" in m:
            todo.extend(m["manifests"])
        else:
            need(m["config"], "config")
            for layer in m["layers"]:
                need(layer, "layer")
    return tags


# ------------------------------------------------------------------------- access logs

_ACCESS_RE = re.compile(r"^(\S+) (\w+) access (.*)$")
_KV_RE = re.compile(r'(\w[\w.-]*)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_access_log(text):
    """Parses the proxy's access lines:
    `2026-11-28T15:00:00.000Z info access method=GET path=/v2/... status=200 bytes=1234 ms=5
     registry=registry.token.test cache=PASS upstream=200` into dicts (values as strings,
    quotes removed; "time" and "level" added)."""
    out = []
    for line in text.splitlines():
        m = _ACCESS_RE.match(line.strip())
        if not m:
            continue
        d = {"time": m.group(1), "level": m.group(2)}
        for k, v in _KV_RE.findall(m.group(3)):
            if len(v) >= 2 and v[0] == '"' and v[-1] == '"':
                v = v[1:-1].encode().decode("unicode_escape")
            d[k] = v
        out.append(d)
    return out


def settle(fn, at_least=0, timeout=5, quiet=0.3):
    """For counting requests in logs that are written after the answer went out
    (docker-registry, fakereg): waits up to timeout until len(fn()) >= at_least, then quiet
    seconds more for late lines, and returns fn(). Never fails by itself: the caller's
    assertion on the result says what was expected."""
    deadline = time.monotonic() + timeout
    while len(fn()) < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(quiet)
    return fn()


# ------------------------------------------------------------------- streaming client

def slow_get_start(port, path):
    """A GET whose body is read later (slow_get_finish), with a small receive buffer: the
    answer stays in flight for as long as the test wishes. Returns (socket, the body bytes
    that came with the head, the announced length)."""
    c = socket.create_connection(("127.0.0.1", port), timeout=120)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    c.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path).encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        b = c.recv(65536)
        check(b, "connection closed before the response head")
        buf += b
    head, _, body = buf.partition(b"\r\n\r\n")
    check(head.startswith(b"HTTP/1.1 200"), "GET %s: %r" % (path, head[:200]))
    length = int([ln.split(b":")[1] for ln in head.split(b"\r\n")
                  if ln.lower().startswith(b"content-length:")][0])
    return c, body, length


def slow_get_finish(c, body, length):
    """Reads the rest of a slow_get_start answer; (bytes received, "sha256:" + their hash)."""
    h = hashlib.sha256(body)
    got = len(body)
    while got < length:
        b = c.recv(1 << 20)
        if not b:
            break
        h.update(b)
        got += len(b)
    c.close()
    return got, "sha256:" + h.hexdigest()


class Stream:
    """What stream_get saw. status 0 = no response head. length: the announced
    Content-Length (None if absent). got: body bytes received; digest: their sha256;
    complete: the announced length arrived exactly and the connection was not reset.
    error: how the connection broke, if it did. body: the first 64 KiB."""

    def __init__(self):
        self.status, self.headers, self.length, self.got = 0, {}, None, 0
        self.digest, self.complete, self.error, self.body = None, False, None, b""
        self.elapsed = 0.0

    def header(self, name, default=None):
        return self.headers.get(name.lower(), default)

    def __repr__(self):
        return ("<status=%s length=%s got=%d complete=%s error=%s digest=%s cache=%s body=%r>"
                % (self.status, self.length, self.got, self.complete, self.error,
                   self.digest, self.header("x-regproxy-cache"), self.body[:200]))


def stream_get(port, path, headers=None, method="GET", timeout=120, host="127.0.0.1",
               limit=None, tls=False):
    """One request on a fresh connection (Connection: close), the body hashed as it arrives
    and not kept (50 clients x 100 MB stay cheap). Never raises for a broken connection:
    that is reported in the Stream (error, complete=False). limit: read that many body bytes
    (hashed), then close, as containerd does with each chunk of a parallel layer fetch;
    complete then means they all arrived. tls: speak TLS (the certificate is not checked)."""
    out = Stream()
    t0 = time.monotonic()
    h = hashlib.sha256()
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: %s:%d" % (host, port),
             "Connection: close"] + ["%s: %s" % kv for kv in (headers or {}).items()]
    try:
        c = socket.create_connection((host, port), timeout=timeout)
        if tls:
            c = _unverified_tls().wrap_socket(c)
        with c:
            c.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            buf = b""
            while b"\r\n\r\n" not in buf:
                b = c.recv(65536)
                if not b:
                    out.error = "closed before a complete response head (%d bytes)" % len(buf)
                    return out
                buf += b
                if len(buf) > 1 << 20:
                    out.error = "response head over 1 MiB"
                    return out
            head, _, rest = buf.partition(b"\r\n\r\n")
            hl = head.decode("latin-1").split("\r\n")
            out.status = int(hl[0].split()[1])
            for line in hl[1:]:
                k, _, v = line.partition(":")
                out.headers.setdefault(k.strip().lower(), v.strip())
            if "content-length" in out.headers:
                out.length = int(out.headers["content-length"])
            if method == "HEAD":
                out.got, out.body = len(rest), rest
                out.complete = not rest
                return out
            chunked = out.headers.get("transfer-encoding", "").lower() == "chunked"
            raw = b""

            def take(b):
                nonlocal raw
                if chunked:
                    raw += b
                    return
                if limit is not None:
                    b = b[:limit - out.got]
                out.got += len(b)
                h.update(b)
                if len(out.body) < 65536:
                    out.body += b[:65536 - len(out.body)]
            take(rest)
            while limit is None or out.got < limit:
                try:
                    b = c.recv(1 << 20)
                except (ConnectionError, socket.timeout, OSError) as e:
                    out.error = "%s after %d body bytes" % (type(e).__name__, out.got)
                    break
                if not b:
                    break
                take(b)
            if chunked:
                try:
                    body = dechunk(raw)
                    out.got, out.body = len(body), body[:65536]
                    h.update(body)
                    out.complete = out.error is None
                except (ValueError, IndexError):
                    out.got, out.body = len(raw), raw[:65536]
                    out.error = out.error or "bad chunked encoding"
            elif limit is not None:
                out.complete = out.error is None and out.got == limit
            else:
                out.complete = (out.error is None and out.length is not None and
                                out.got == out.length)
    except (ConnectionError, socket.timeout, OSError) as e:
        out.error = out.error or "%s: %s" % (type(e).__name__, e)
    finally:
        out.digest = "sha256:" + h.hexdigest()
        out.elapsed = time.monotonic() - t0
    return out


def parallel(fns, timeout=300):
    """Runs the callables at once in threads (started together); returns their results in
    order. An exception in one is re-raised after all finished."""
    results = [None] * len(fns)
    errors = []
    gate = threading.Barrier(len(fns)) if fns else None

    def run(i, fn):
        try:
            gate.wait(30)
            results[i] = fn()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
    ths = [threading.Thread(target=run, args=(i, fn), daemon=True) for i, fn in enumerate(fns)]
    for th in ths:
        th.start()
    deadline = time.monotonic() + timeout
    for th in ths:
        th.join(max(0.1, deadline - time.monotonic()))
    if any(th.is_alive() for th in ths):
        fail("%d of %d parallel clients still running after %d s"
             % (sum(th.is_alive() for th in ths), len(ths), timeout))
    if errors:
        raise errors[0]
    return results


# ---------------------------------------------------------------------- the cache on disk

def cache_path(cache_dir, kind, digest):
    """Where a published blob (kind "blobs") or manifest ("manifests") lives:
    DIR/KIND/ALGO/HH/HEX."""
    algo, _, hexd = digest.partition(":")
    return os.path.join(cache_dir, kind, algo, hexd[:2], hexd)


def cache_files(cache_dir, sub):
    """[(path, size)] of the regular files under DIR/sub (blobs, manifests, tmp, ...)."""
    out = []
    for dp, _, fns in os.walk(os.path.join(cache_dir, sub)):
        for fn in fns:
            p = os.path.join(dp, fn)
            with contextlib.suppress(OSError):
                out.append((p, os.stat(p).st_size))
    return out


def start_during_cache_open(p, during, leftovers=60000):
    """Starts the Proxy p (made with start=False) slowly: its cache's tmp/ holds `leftovers`
    files, which opening the cache empties. Once regproxy holds the cache lock, with start-up
    still under way, during(pid) runs on another thread (pid: regproxy's, also when a
    wrapper such as `unshare --fork` runs it as a child). p.start() runs on this thread: the
    harness's children die with the thread that started them. Returns (how many leftovers
    were still there then, the Failure that p.start() raised or None)."""
    tmp = os.path.join(p.cache_dir, "tmp")
    os.makedirs(tmp, exist_ok=True)
    for i in range(leftovers):
        os.close(os.open(os.path.join(tmp, "f%d" % i), os.O_CREAT | os.O_WRONLY, 0o600))
    seen = {}

    def regproxy_pid():
        proc = p.proc
        if not proc or not proc.alive():
            return None
        pid = proc.pid
        if not os.readlink("/proc/%d/exe" % pid).endswith("regproxy"):
            with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
                kids = f.read().split()
            if not kids:
                return None
            pid = int(kids[0])
        fds = os.listdir("/proc/%d/fd" % pid)
        if any(os.readlink("/proc/%d/fd/%s" % (pid, fd)).endswith("/cache/lock") for fd in fds):
            return pid
        return None

    def watch():
        pid = wait_until(regproxy_pid, 30, "regproxy to open its cache", interval=0.001)
        seen["left"] = len(os.listdir(tmp))
        during(pid)
    th = threading.Thread(target=watch, daemon=True)
    th.start()
    failed = None
    try:
        p.start()
    except Failure as e:
        failed = e
    th.join(30)
    return seen.get("left", 0), failed


def cache_bytes(cache_dir):
    """Bytes of the published content files (blobs/ + manifests/), what max_size bounds."""
    return sum(n for sub in ("blobs", "manifests") for _, n in cache_files(cache_dir, sub))


def cache_digests(cache_dir, sub):
    """{digest: size} of the files under blobs/ or manifests/, named by their paths."""
    out = {}
    for p, n in cache_files(cache_dir, sub):
        rel = os.path.relpath(p, os.path.join(cache_dir, sub)).split(os.sep)
        if len(rel) == 3:
            out["%s:%s" % (rel[0], rel[2])] = n
        else:
            out["?" + "/".join(rel)] = n
    return out


def lz4_block_decode(src, size):
    """Decodes one LZ4 block (the format liblz4's LZ4_compress_HC writes) into size bytes.
    Raises ValueError on anything malformed."""
    out = bytearray()
    i, n = 0, len(src)
    while i < n:
        token = src[i]
        i += 1
        lit = token >> 4
        if lit == 15:
            while True:
                if i >= n:
                    raise ValueError("truncated literal length")
                b = src[i]
                i += 1
                lit += b
                if b != 255:
                    break
        if i + lit > n:
            raise ValueError("literals run past the block")
        out += src[i:i + lit]
        i += lit
        if i >= n:
            break  # the last sequence has literals only
        if i + 2 > n:
            raise ValueError("truncated match offset")
        off = src[i] | (src[i + 1] << 8)
        i += 2
        if off == 0 or off > len(out):
            raise ValueError("bad match offset %d at output %d" % (off, len(out)))
        ml = token & 15
        if ml == 15:
            while True:
                if i >= n:
                    raise ValueError("truncated match length")
                b = src[i]
                i += 1
                ml += b
                if b != 255:
                    break
        ml += 4
        start = len(out) - off
        for k in range(ml):  # may overlap its own output
            out.append(out[start + k])
        if len(out) > size:
            raise ValueError("decodes to more than %d bytes" % size)
    if len(out) != size:
        raise ValueError("decodes to %d bytes, header says %d" % (len(out), size))
    return bytes(out)


def read_cached_manifest(path):
    """Parses a manifest file of the store ("RPMF 1 <raw|lz4> <length> <media type>\\n" then
    the payload). Returns (media_type, manifest bytes); fails naming what is wrong."""
    with open(path, "rb") as f:
        data = f.read()
    nl = data.find(b"\n")
    check(nl > 0, "cached manifest %s has no header line: %r" % (path, data[:100]))
    parts = data[:nl].decode("latin-1").split(" ", 4)
    check(len(parts) == 5 and parts[0] == "RPMF" and parts[1] == "1" and
          parts[2] in ("raw", "lz4") and parts[3].isdigit(),
          "cached manifest %s: bad header %r" % (path, data[:nl]))
    length, payload = int(parts[3]), data[nl + 1:]
    if parts[2] == "raw":
        eq(len(payload), length, "payload length of cached manifest %s" % path)
        return parts[4], payload
    try:
        return parts[4], lz4_block_decode(payload, length)
    except ValueError as e:
        fail("cached manifest %s: bad lz4 payload: %s" % (path, e))


def check_cache_store(cache_dir, what=""):
    """Every blob file under blobs/ hashes to its name; every manifest file under manifests/
    parses and its manifest bytes hash to its name. Returns (n_blobs, n_manifests)."""
    blobs = cache_digests(cache_dir, "blobs")
    for d in blobs:
        check(not d.startswith("?"), "%sunexpected file blobs/%s in %s" % (what, d[1:], cache_dir))
        p = cache_path(cache_dir, "blobs", d)
        got = sha256_file(p)
        check(got == d, "%sblob file %s holds content %s (%d bytes): a file under blobs/ "
              "must hash to its name" % (what, p, got, os.path.getsize(p)))
    mans = cache_digests(cache_dir, "manifests")
    for d in mans:
        check(not d.startswith("?"), "%sunexpected file manifests/%s" % (what, d[1:]))
        p = cache_path(cache_dir, "manifests", d)
        _, body = read_cached_manifest(p)
        eq(sha256(body), d, "%sdigest of the manifest stored as %s" % (what, p))
    return len(blobs), len(mans)


# ------------------------------------------------------------------------------ servers

class Registry:
    """A docker-registry instance. kind: token | basic | anon (| token-lie, token-anon)."""

    def __init__(self, s, kind, name, storage=None, realm=None, readonly=False, dir=None):
        """dir: where its config, log and (default) storage live; default the session's
        reg-KIND (a test's private registry passes one under its own temp dir)."""
        self.s, self.kind, self.name = s, kind, name
        d = dir or os.path.join(s.tmp, "reg-" + kind)
        os.makedirs(d, exist_ok=True)
        self.dir = d
        self.storage = storage or os.path.join(d, "storage")
        self.log = os.path.join(d, "registry.log")
        self.pull_creds = self.push_creds = None
        auth = ""
        if kind.startswith("token"):
            auth = ("auth:\n  token:\n    realm: %s\n    service: test-registry\n"
                    "    issuer: regproxy-test-issuer\n    rootcertbundle: %s\n"
                    % (realm, s.ca["signing.crt"]))
            self.pull_creds = (SA_USER, s.sa_password)
            self.push_creds = ("pusher", s.pusher_password)
        elif kind == "basic":
            htp = os.path.join(d, "htpasswd")
            lines = []
            for u, p in (("alice", s.alice_password), ("pusher", s.pusher_password)):
                r = subprocess.run(["htpasswd", "-Bbn", u, p], stdout=subprocess.PIPE,
                                   check=True)
                lines.append(r.stdout.decode().strip())
            with open(htp, "w") as f:
                f.write("\n".join(lines) + "\n")
            auth = "auth:\n  htpasswd:\n    realm: test-basic\n    path: %s\n" % htp
            self.pull_creds = ("alice", s.alice_password)
            self.push_creds = ("pusher", s.pusher_password)
        ro = "  maintenance:\n    readonly:\n      enabled: true\n" if readonly else ""
        last = None
        for _ in range(3):
            self.port = free_port()
            cfg = os.path.join(d, "config.yml")
            with open(cfg, "w") as f:
                f.write("version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n"
                        "storage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n"
                        "    enabled: true\n%s"
                        "http:\n  addr: 127.0.0.1:%d\n  secret: regproxy-test-secret\n"
                        "  tls:\n    certificate: %s\n    key: %s\n"
                        "health:\n  storagedriver:\n    enabled: false\n%s"
                        % (self.storage, ro, self.port, s.ca["server.crt"],
                           s.ca["server.key"], auth))
            self.proc = Proc("docker-registry(%s)" % kind,
                             ["docker-registry", "serve", cfg], self.log)
            self.hostport = "127.0.0.1:%d" % self.port
            self.url = "https://" + self.hostport
            try:
                wait_until(lambda: request(self.url + "/v2/", ca=s.ca["ca.crt"],
                                           timeout=5).status in (200, 401),
                           30, "docker-registry (%s) at %s" % (kind, self.url),
                           proc=self.proc)
                return
            except Failure as e:
                last = e
                self.proc.kill()
                if "address already in use" not in tail(self.log):
                    raise
        raise last

    def client(self, creds="pull"):
        c = {"pull": self.pull_creds, "push": self.push_creds, None: None}[creds]
        return UpstreamClient(self.url, self.s.ca["ca.crt"], c)

    def stop(self):
        """Stops the registry process (an upstream outage: connections are refused)."""
        self.proc.stop(10)

    def restart(self):
        """Starts it again with the same config and port (after stop())."""
        self.proc.kill()
        self.proc = Proc("docker-registry(%s)" % self.kind,
                         ["docker-registry", "serve", os.path.join(self.dir, "config.yml")],
                         self.log)
        wait_until(lambda: request(self.url + "/v2/", ca=self.s.ca["ca.crt"],
                                   timeout=5).status in (200, 401),
                   30, "docker-registry (%s) at %s to come back" % (self.kind, self.url),
                   proc=self.proc)

    def conf(self, name=None, **extra):
        """The [registry] entry a proxy config needs for this upstream."""
        e = {"name": name or self.name, "url": self.url, "ca_file": self.s.ca["ca.crt"]}
        if self.pull_creds:
            e["user"], e["password"] = self.pull_creds
        e.update(extra)
        return e

    def access_lines(self):
        """The access-log request lines: [(method, path, status)]."""
        out = []
        try:
            with open(self.log, errors="replace") as f:
                for line in f:
                    m = re.search(r'\] "(\w+) (\S+) HTTP/[\d.]+" (\d+) ', line)
                    if m:
                        out.append((m.group(1), m.group(2), int(m.group(3))))
        except OSError:
            pass
        return out

    def count(self, method="GET", path_prefix="/v2/", status=None, since=0):
        """How many access-log lines match, e.g. count("GET", "/v2/ns/large/blobs/sha256:")
        (the log lines look like `"GET /v2/<name>/blobs/sha256:<hex> HTTP/1.1" 200 ...`);
        since: a mark() taken earlier (the registries are shared by all tests)."""
        return sum(1 for m, p, st in self.access_lines()[since:]
                   if (method is None or m == method) and p.startswith(path_prefix)
                   and (status is None or st == status))

    def mark(self):
        return len(self.access_lines())

    def since(self, mark):
        return self.access_lines()[mark:]


class Issuer:
    """tests/fixtures/token_issuer.py as a child process."""

    def __init__(self, s, tag, flags=()):
        self.s = s
        d = os.path.join(s.tmp, "issuer-" + tag)
        os.makedirs(d, exist_ok=True)
        self.dir = d
        self.log = os.path.join(d, "requests.jsonl")
        self.tokens_log = os.path.join(d, "tokens.jsonl")
        self.accounts = s.accounts_file
        pf = os.path.join(d, "port")
        self.proc = Proc("token_issuer(%s)" % tag,
                         [PY, os.path.join(FIXTURES, "token_issuer.py"), "--port-file", pf,
                          "--cert", s.ca["server.crt"], "--key", s.ca["server.key"],
                          "--signing-key", s.ca["signing.key"],
                          "--signing-cert", s.ca["signing.crt"],
                          "--accounts", self.accounts, "--service", "test-registry",
                          "--log", self.log, "--tokens-log", self.tokens_log] + list(flags),
                         os.path.join(d, "stderr.log"))
        self.port = read_port_file(pf, self.proc)[0]
        self.realm = "https://127.0.0.1:%d/token" % self.port

    def requests(self):
        out = []
        with contextlib.suppress(OSError):
            with open(self.log) as f:
                out = [json.loads(x) for x in f if x.strip()]
        return out

    def fetches(self, user=None, status=200, since=0.0):
        """Token requests answered with `status` (by `user` when given, after `since`)."""
        return [r for r in self.requests() if r.get("status") == status and
                (user is None or r.get("user") == user) and r.get("time", 0) >= since]

    def tokens(self):
        with contextlib.suppress(OSError):
            with open(self.tokens_log) as f:
                return [json.loads(x)["token"] for x in f if x.strip()]
        return []


class FakeReg:
    """tests/fixtures/fakereg.py (registry + CDN) serving the session's image layouts."""

    def __init__(self, s):
        self.s = s
        d = os.path.join(s.tmp, "fakereg")
        os.makedirs(d, exist_ok=True)
        self.user, self.password = "bob", "fake-" + secrets.token_hex(12)
        self.log = os.path.join(d, "registry.jsonl")
        self.cdn_log = os.path.join(d, "cdn.jsonl")
        pf = os.path.join(d, "port")
        argv = [PY, os.path.join(FIXTURES, "fakereg.py"), "--port-file", pf,
                "--cert", s.ca["server.crt"], "--key", s.ca["server.key"],
                "--user", self.user, "--password", self.password,
                "--log", self.log, "--cdn-log", self.cdn_log]
        imgs = s.images
        for repo, kind in (("ns/multi", "multi"), ("ns/large", "large"),
                           ("ns/multiarch", "multiarch"), ("ns/tags", "tags")):
            argv += ["--repo", "%s=%s" % (repo, imgs[kind]["dir"])]
        self.proc = Proc("fakereg", argv, os.path.join(d, "stderr.log"))
        self.port, self.cdn_port = read_port_file(pf, self.proc, 2)
        self.hostport = "127.0.0.1:%d" % self.port
        self.url = "https://" + self.hostport
        self.name = "registry.fake.test"

    def conf(self, name=None, **extra):
        e = {"name": name or self.name, "url": self.url, "ca_file": self.s.ca["ca.crt"],
             "user": self.user, "password": self.password}
        e.update(extra)
        return e

    def client(self):
        return UpstreamClient(self.url, self.s.ca["ca.crt"], (self.user, self.password))

    def set_mode(self, mode):
        r = request(self.url + "/_ctl/mode?set=" + mode, ca=self.s.ca["ca.crt"])
        eq(r.status, 200, "fakereg mode switch to %s" % mode)

    def _read(self, path):
        with contextlib.suppress(OSError):
            with open(path) as f:
                return [json.loads(x) for x in f if x.strip()]
        return []

    def requests(self, since=0):
        return self._read(self.log)[since:]

    def cdn_requests(self, since=0):
        return self._read(self.cdn_log)[since:]

    def mark(self):
        return len(self.requests()), len(self.cdn_requests())


class Canary:
    """A TCP listener that only counts connections: point a registry's url at it to prove
    no upstream connection was opened."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = "https://127.0.0.1:%d" % self.port
        self.count = 0
        self.closed = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.count += 1
            c.close()

    def close(self):
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class SelfIssuingRegistry:
    """A plain-http registry on 127.0.0.1 that is also its own token server and records
    every request with its Authorization, so a test sees exactly where credentials went.
    The token it issues names the Basic user ("tok-USER"); /v2/ answers 200 to any Bearer
    and 401 with a challenge naming realm_path otherwise. token_delay holds the next token
    answer that many seconds. Started by the test (t.defer stops it)."""

    def __init__(self, t):
        self.reqs = []  # (time, path, authorization)
        self.realm_path = "/token"
        self.token_delay = 0.0
        self.lock = threading.Lock()
        up = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                auth = self.headers.get("Authorization")
                with up.lock:
                    up.reqs.append((time.time(), self.path, auth))
                path = urllib.parse.urlsplit(self.path).path
                if not path.startswith("/v2/"):
                    user = None
                    if auth and auth.startswith("Basic "):
                        user = base64.b64decode(auth[6:]).decode().split(":")[0]
                    with up.lock:
                        d, up.token_delay = up.token_delay, 0.0
                    if d:
                        time.sleep(d)
                    body = json.dumps({"token": "tok-%s" % user, "expires_in": 600}).encode()
                    return self._send(200, body)
                if auth and auth.startswith("Bearer "):
                    return self._send(200, json.dumps({"name": "ns/x", "tags": ["v1"]}).encode())
                realm = "http://127.0.0.1:%d%s" % (up.port, up.realm_path)
                return self._send(401, b'{"errors":[]}', {
                    "WWW-Authenticate": 'Bearer realm="%s",service="svc"' % realm})

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

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.srv.server_port
        self.url = "http://127.0.0.1:%d" % self.port
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        t.defer(self.srv.server_close)
        t.defer(self.srv.shutdown)

    def seen(self, since=0.0):
        """[(time, path, authorization)] of the requests since the given time.time()."""
        with self.lock:
            return [r for r in self.reqs if r[0] >= since]


# ------------------------------------------------------------------------------- proxy

class Proxy:
    """A regproxy process with a generated config.

    registries: list of dicts {name, url, user?, password?, ca_file?, <any key>: value};
    `password` is written to a 0600 password_file. listeners: list of dicts
    {default: NAME or None, <any key>: value}; each gets a free port. cache: extra
    [cache] keys. admin: extra [admin] keys (drain_timeout is 2s unless given). extra: raw
    text appended to the config (with an [admin] section of its own, admin is unused)."""

    def __init__(self, t, registries, listeners=None, cache=None, extra="", env=None,
                 start=True, wrapper=None, admin=None):
        s = t.s
        check(s.bin and os.path.exists(s.bin),
              "proxy binary %r not found (pass --bin build/san/regproxy)" % s.bin)
        self.t = t
        self.idx = len(t.proxies)
        d = os.path.join(t.tmp, "proxy%d" % self.idx)
        os.makedirs(d, exist_ok=True)
        self.dir = d
        self.cache_dir = os.path.join(d, "cache")
        self.log = os.path.join(d, "regproxy.log")
        self.conf_path = os.path.join(d, "regproxy.conf")
        self.registries = registries
        self.listeners = listeners or [{"default": registries[0]["name"] if registries
                                        else None}]
        self.cache = dict(cache or {})
        # A proxy that drains for the default 25 s on SIGTERM would outlast stop()'s 10 s
        # whenever a test leaves a response unread: 2 s, unless a test says otherwise.
        self.admin_keys = {"drain_timeout": "2s"}
        self.admin_keys.update(admin or {})
        self.extra = extra
        self.env = env
        self.wrapper = list(wrapper or ())  # argv prefix, e.g. setpriv to drop privileges
        self.proc = None
        self.stopped = False
        t.proxies.append(self)
        if start:
            self.start()

    def write_conf(self):
        out = ["# written by tests/integration/lib.py"]
        for i, ls in enumerate(self.listeners):
            out.append('[listen "127.0.0.1:%d"]' % self.ports[i])
            for k, v in ls.items():
                if v is not None:
                    out.append("%s = %s" % (k, v))
            out.append("")
        out.append("[cache]")
        cache = {"dir": self.cache_dir}
        cache.update(self.cache)
        for k, v in cache.items():
            out.append("%s = %s" % (k, v))
        out.append("")
        for r in self.registries:
            out.append('[registry "%s"]' % r["name"])
            if "test_login" not in r:
                # serve logs in to each registry at start-up (like `regproxy check`); tests
                # count upstream requests, so they ask for that check explicitly.
                out.append("test_login = no")
            for k, v in r.items():
                if k == "name" or v is None:
                    continue
                if k == "password":
                    pw = os.path.join(self.dir, "%s.pw" % r["name"])
                    fd = os.open(pw, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    with os.fdopen(fd, "w") as f:
                        f.write(v + "\n")
                    os.chmod(pw, 0o600)
                    k, v = "password_file", pw
                out.append("%s = %s" % (k, v))
            out.append("")
        if "[admin]" not in self.extra:
            # Every proxy gets an admin listener of its own (the default 127.0.0.1:5001
            # would be shared by all of them).
            if not getattr(self, "admin_port", None):
                self.admin_port = free_port()
            out.append("[admin]\nlisten = 127.0.0.1:%d" % self.admin_port)
            out += ["%s = %s" % kv for kv in self.admin_keys.items()]
            out.append("")
        out.append(self.extra)
        with open(self.conf_path, "w") as f:
            f.write("\n".join(out) + "\n")

    def start(self):
        env = clean_env({
            "ASAN_OPTIONS": os.environ.get(
                "ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:halt_on_error=1:"
                "print_summary=1:detect_stack_use_after_return=0"),
            "UBSAN_OPTIONS": os.environ.get("UBSAN_OPTIONS",
                                            "print_stacktrace=1:halt_on_error=1"),
            "LSAN_OPTIONS": os.environ.get("LSAN_OPTIONS", "print_suppressions=0"),
        })
        env.update(self.env or {})
        for attempt in range(3):
            self.ports = [free_port() for _ in self.listeners]
            self.write_conf()
            self.proc = Proc("regproxy", self.wrapper + [self.t.s.bin, "serve", "-c",
                                                         self.conf_path], self.log, env=env)
            self.stopped = False
            try:
                wait_until(self._answers, 30, "regproxy to answer GET /v2/ on port %d"
                           % self.ports[0], proc=self.proc)
                break
            except Failure:
                if attempt < 2 and "in use" in tail(self.log, 10).lower():
                    self.proc.kill()
                    continue
                raise
        self.port = self.ports[0]
        self.hostport = "127.0.0.1:%d" % self.port
        self.url = "http://" + self.hostport
        self.pid = self.proc.pid
        return self

    def _answers(self):
        data = raw_request("127.0.0.1", self.ports[0],
                           b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                           timeout=5, tls=bool(self.listeners[0].get("tls_cert")))
        return data.startswith(b"HTTP/1.")

    def raw(self, method, path, headers=None, listener=0, timeout=60):
        """A request on a fresh connection with `Connection: close`, everything read until the
        server closes: (status, {lower-case header: value}, body bytes). For HEAD, body must
        come back empty; a proxy that sends one is caught here (http.client would hide it)."""
        lines = ["%s %s HTTP/1.1" % (method, path), "Host: 127.0.0.1:%d" % self.ports[listener],
                 "Connection: close"]
        lines += ["%s: %s" % kv for kv in (headers or {}).items()]
        req = ("\r\n".join(lines) + "\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", self.ports[listener]),
                                      timeout=timeout) as c:
            c.sendall(req)
            buf = b""
            while True:
                b = c.recv(1 << 16)
                if not b:
                    break
                buf += b
        head, sep, body = buf.partition(b"\r\n\r\n")
        check(sep, "no complete response header for %s %s: %r" % (method, path, buf[:300]))
        hl = head.decode("latin-1").split("\r\n")
        status = int(hl[0].split()[1])
        hdrs = {}
        for line in hl[1:]:
            k, _, v = line.partition(":")
            hdrs.setdefault(k.strip().lower(), v.strip())
        if hdrs.get("transfer-encoding", "").lower() == "chunked":
            body = dechunk(body)
        return status, hdrs, body

    def url_for(self, i):
        return "http://127.0.0.1:%d" % self.ports[i]

    def get(self, path, method="GET", headers=None, listener=0, timeout=120):
        """A plain-HTTP request to the proxy (path sent verbatim)."""
        return request(self.url_for(listener) + path, method, headers, timeout=timeout)

    def admin(self, path):
        """GET on the admin listener (/metrics, /healthz, /readyz)."""
        return request("http://127.0.0.1:%d%s" % (self.admin_port, path), timeout=30)

    def metrics(self):
        """/metrics parsed: {(name, frozenset(labels.items())): value}."""
        r = self.admin("/metrics")
        check(r.status == 200, "GET /metrics: %d" % r.status)
        out = {}
        for line in r.body.decode().splitlines():
            if not line or line.startswith("#"):
                continue
            m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$', line)
            check(m, "malformed metrics line %r" % line)
            labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"',
                                     m.group(3) or ""))
            out[(m.group(1), frozenset(labels.items()))] = float(m.group(4))
        return out

    def rss_kb(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def log_text(self):
        with contextlib.suppress(OSError):
            with open(self.log, errors="replace") as f:
                return f.read()
        return ""

    def access(self, since=0):
        """The proxy's access-log lines, parsed (see parse_access_log)."""
        return parse_access_log(self.log_text())[since:]

    def wait_access(self, n, timeout=10):
        """Waits until at least n access lines were written (they may follow the response)."""
        return wait_until(lambda: len(self.access()) >= n and self.access(), timeout,
                          "%d access-log lines" % n)

    def stop(self):
        """SIGTERM, wait 10 s. Returns a list of problems (empty = clean)."""
        if self.proc is None or self.stopped:
            return []
        self.stopped = True
        rc, killed = self.proc.stop(10)
        problems = []
        if killed:
            problems.append("regproxy did not exit within 10 s of SIGTERM (killed)")
        elif rc != 0:
            problems.append("regproxy exited with status %s after SIGTERM" % rc)
        text = self.log_text()
        for m in SANITIZER_MARKERS:
            if m in text:
                i = text.index(m)
                problems.append("sanitizer report (%s) in regproxy log:\n%s"
                                % (m, text[max(0, i - 2000):i + 6000]))
                break
        return problems

    def restart(self):
        problems = self.stop()
        if problems:
            fail("; ".join(problems))
        return self.start()

    def kill9(self):
        """SIGKILL, no clean shutdown (no index snapshot, fills cut mid-write): for crash
        tests. Not a test failure by itself; start() again reuses the same cache dir, and the
        log (appended to by every start) is still checked for sanitizer reports at the end."""
        if self.proc is not None and not self.stopped:
            self.proc.kill()
        self.stopped = True


# ------------------------------------------------------------------------------ session

class Session:
    """Shared, lazily started fixtures. Each property builds its fixture on first use and
    records how long that took (printed by run.py)."""

    def __init__(self, tmp, bin_path=None, timer=None):
        self.tmp = tmp
        self.bin = os.path.abspath(bin_path) if bin_path else None
        self.timer = timer
        self.timings = []
        self._cache = {}
        self._broken = {}
        global RESPONSES_LOG
        RESPONSES_LOG = os.path.join(tmp, "responses.log")
        self.sa_password = "sa-" + secrets.token_hex(16)
        self.sa_refresh_token = "rt-" + secrets.token_hex(16)
        self.alice_password = "alice-" + secrets.token_hex(12)
        self.pusher_password = "push-" + secrets.token_hex(12)
        self.narrow_password = "narrow-" + secrets.token_hex(12)
        self.env = None

    def _lazy(self, name, build):
        if name in self._cache:
            return self._cache[name]
        if name in self._broken:
            fail("session fixture %r failed earlier: %s" % (name, self._broken[name]))
        t0 = time.monotonic()
        ctx = self.timer.paused() if self.timer else contextlib.nullcontext()
        try:
            with ctx:
                v = build()
        except BaseException as e:
            self._broken[name] = "%s: %s" % (type(e).__name__, str(e)[:2000])
            raise
        self._cache[name] = v
        self.timings.append((name, time.monotonic() - t0))
        return v

    # -- basics

    @property
    def ca(self):
        return self._lazy("ca", lambda: testca.make(os.path.join(self.tmp, "ca")))

    @property
    def child_env(self):
        """Environment for clients (skopeo): no proxies, an empty registries.conf and auth
        file of our own so nothing from the machine leaks in."""
        def build():
            d = os.path.join(self.tmp, "client")
            os.makedirs(d, exist_ok=True)
            rc = os.path.join(d, "registries.conf")
            with open(rc, "w") as f:
                f.write("unqualified-search-registries = []\n")
            af = os.path.join(d, "auth.json")
            with open(af, "w") as f:
                f.write('{"auths": {}}\n')
            return clean_env({"CONTAINERS_REGISTRIES_CONF": rc, "REGISTRY_AUTH_FILE": af,
                              "HOME": d, "XDG_RUNTIME_DIR": d})
        return self._lazy("client-env", build)

    def skopeo(self, args, **kw):
        return skopeo(args, self.child_env, **kw)

    @property
    def images(self):
        def build():
            out = {}
            for kind in ("multi", "large", "multiarch", "tags"):
                out[kind] = mkimage.build(kind, os.path.join(self.tmp, "images", kind), NTAGS)
            return out
        return self._lazy("images", build)

    @property
    def accounts_file(self):
        def build():
            p = os.path.join(self.tmp, "accounts.json")
            self.write_accounts({})
            return p
        return self._lazy("accounts", build)

    def write_accounts(self, knobs, sa_password=None):
        """(Re)writes the issuer accounts file; the issuers re-read it on every request."""
        if sa_password is not None:
            self.sa_password = sa_password
        d = {"accounts": {
            SA_USER: {"password": self.sa_password, "actions": ["pull"], "repos": ["*"],
                      "refresh_token": self.sa_refresh_token},
            "pusher": {"password": self.pusher_password, "actions": ["pull", "push"]},
            # May pull ns/multi only: its tokens for any other repository grant nothing.
            "narrow": {"password": self.narrow_password, "actions": ["pull"],
                       "repos": ["ns/multi"]}},
             "knobs": knobs}
        p = os.path.join(self.tmp, "accounts.json")
        with open(p + ".tmp", "w") as f:
            json.dump(d, f)
        os.rename(p + ".tmp", p)

    # -- upstreams

    @property
    def issuer(self):
        return self._lazy("issuer", lambda: Issuer(self, "main"))

    @property
    def upstreams(self):
        """Starts the token issuer and the three docker-registry flavours and pushes the
        test images to each. Returns {"token": Registry, "basic": ..., "anon": ...}."""
        def build():
            self.ca, self.images, self.child_env  # noqa: B018 - build in order
            regs = {"token": Registry(self, "token", "registry.token.test",
                                      realm=self.issuer.realm),
                    "basic": Registry(self, "basic", "registry.basic.test"),
                    "anon": Registry(self, "anon", "registry.anon.test")}
            errors = []

            def push(reg):
                try:
                    self._populate(reg)
                except BaseException as e:  # noqa: BLE001
                    errors.append("%s: %s" % (reg.kind, e))
            threads = [threading.Thread(target=push, args=(r,)) for r in regs.values()]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            if errors:
                fail("populating registries failed:\n" + "\n".join(errors))
            return regs
        return self._lazy("upstreams", build)

    def _populate(self, reg):
        cert = ["--dest-cert-dir", self.ca["certdir"]]
        creds = (["--dest-creds", "%s:%s" % reg.push_creds] if reg.push_creds
                 else ["--dest-no-creds"])
        dst = "docker://%s/" % reg.hostport

        def copy(src, repo, extra=()):
            self.skopeo(["copy", "-q", "--all", "--preserve-digests"] + list(extra) + cert +
                        creds + [src, dst + repo], timeout=300)
        im = self.images
        copy("oci:%s:v1" % im["multi"]["dir"], "ns/multi:v1")
        copy("oci:%s:v1" % im["multiarch"]["dir"], "ns/multiarch:v1")
        self.skopeo(["copy", "-q", "--format", "v2s2"] + cert + creds +
                    ["oci:%s:v1" % im["multi"]["dir"], dst + "ns/multi-v2s2:v1"])
        copy("oci:%s:v1" % im["large"]["dir"], "ns/large:v1")
        for tag in sorted(im["tags"]["tags"]):
            copy("oci:%s:%s" % (im["tags"]["dir"], tag), "ns/tags:" + tag)
        # What each tag now is upstream (the bytes the proxy must reproduce).
        reg.pushed = {}
        c = reg.client("pull")
        for ref in list(REPOS) + ["ns/tags:t00"]:
            repo, tag = ref.split(":")
            r = c.manifest(repo, tag)
            eq(r.status, 200, "GET %s manifest %s directly from %s" % (reg.kind, ref, reg.url))
            reg.pushed[ref] = {"digest": sha256(r.body), "media_type": r.header("Content-Type"),
                               "body": r.body}
            eq(r.header("Docker-Content-Digest"), sha256(r.body),
               "upstream Docker-Content-Digest of %s" % ref)

    def push(self, reg, src, ref, fmt=None):
        """skopeo copy --all --preserve-digests of src (e.g. "oci:DIR:v1") to reg as ref
        ("ns/x:v1") with reg's push credentials (fmt "v2s2" converts, without
        --preserve-digests); records what ref now is upstream in reg.pushed[ref]."""
        args = ["copy", "-q", "--dest-cert-dir", self.ca["certdir"]]
        args += (["--format", fmt] if fmt else ["--all", "--preserve-digests"])
        args += (["--dest-creds", "%s:%s" % reg.push_creds] if reg.push_creds
                 else ["--dest-no-creds"])
        self.skopeo(args + [src, "docker://%s/%s" % (reg.hostport, ref)], timeout=300)
        if not hasattr(reg, "pushed"):
            reg.pushed = {}
        repo, tag = ref.rsplit(":", 1)
        r = reg.client("pull").manifest(repo, tag)
        eq(r.status, 200, "GET %s manifest %s directly from %s after pushing it"
           % (reg.kind, ref, reg.url))
        reg.pushed[ref] = {"digest": sha256(r.body), "media_type": r.header("Content-Type"),
                           "body": r.body}
        return reg.pushed[ref]

    @property
    def token_registry(self):
        return self.upstreams["token"]

    @property
    def basic_registry(self):
        return self.upstreams["basic"]

    @property
    def anon_registry(self):
        return self.upstreams["anon"]

    @property
    def lie_issuer(self):
        return self._lazy("lie-issuer", lambda: Issuer(self, "lie", ["--lie"]))

    @property
    def lie_registry(self):
        """A second docker-registry over the token registry's storage (read-only) whose realm
        is an issuer started with --lie: tokens say expires_in=300 but die after ~2 s."""
        def build():
            tok = self.token_registry
            r = Registry(self, "token-lie", "registry.lie.test", storage=tok.storage,
                         realm=self.lie_issuer.realm, readonly=True)
            r.pushed = tok.pushed
            return r
        return self._lazy("lie-registry", build)

    @property
    def anon_issuer(self):
        return self._lazy("anon-issuer",
                          lambda: Issuer(self, "anon", ["--anonymous-pull"]))

    @property
    def anon_token_registry(self):
        """Docker Hub style: token auth, anonymous pull tokens (no credentials needed)."""
        def build():
            tok = self.token_registry
            r = Registry(self, "token-anon", "registry.anontoken.test", storage=tok.storage,
                         realm=self.anon_issuer.realm, readonly=True)
            r.pull_creds = None
            r.pushed = tok.pushed
            return r
        return self._lazy("anon-token-registry", build)

    @property
    def foreign_issuer(self):
        return self._lazy("foreign-issuer", lambda: Issuer(self, "foreign"))

    @property
    def foreign_realm_registry(self):
        """Token auth whose realm is on another host (https://localhost:PORT/token, the
        registry being 127.0.0.1): by default the proxy must not send the service account's
        password there; with token_realms naming it, it may."""
        def build():
            tok = self.token_registry
            iss = self.foreign_issuer
            r = Registry(self, "token-foreign", "registry.foreign.test", storage=tok.storage,
                         realm="https://localhost:%d/token" % iss.port, readonly=True)
            r.pushed = tok.pushed
            r.realm = "https://localhost:%d/token" % iss.port
            return r
        return self._lazy("foreign-realm-registry", build)

    @property
    def fakereg(self):
        return self._lazy("fakereg", lambda: FakeReg(self))

    def close(self):
        kill_all()


# --------------------------------------------------------------------------- test context

class TestCtx:
    def __init__(self, session, name, tmp):
        self.s, self.name, self.tmp = session, name, tmp
        os.makedirs(tmp, exist_ok=True)
        self.proxies = []
        self.canaries = []
        self.cleanups = []

    # -- starting things

    def proxy(self, registries=None, **kw):
        """Starts a regproxy. Default registries: the token (default route), basic and anon
        docker-registry upstreams, as registry.token.test, registry.basic.test and
        registry.anon.test."""
        if registries is None:
            s = self.s
            registries = [s.token_registry.conf(), s.basic_registry.conf(),
                          s.anon_registry.conf()]
        return Proxy(self, registries, **kw)

    def private_registry(self, kind="anon", name=None, images=None):
        """A docker-registry of this test's own (under its temp dir; stopped at the end of
        the test), so the test may stop it or push to it without touching the shared ones.
        kind: anon | basic (htpasswd, the session's users). images: {ref: src} pushed with
        Session.push, e.g. {"ns/multi:v1": "oci:%s:v1" % t.s.images["multi"]["dir"]}."""
        s = self.s
        s.ca, s.child_env  # noqa: B018 - built first
        n = len([c for c in self.cleanups if getattr(c, "private_registry", False)])
        reg = Registry(s, kind, name or "registry.private%d.test" % n,
                       dir=os.path.join(self.tmp, "reg-%s-%d" % (kind, n)))
        reg.pushed = {}

        def stop():
            reg.proc.stop(10)
        stop.private_registry = True
        self.defer(stop)
        for ref, src in (images or {}).items():
            s.push(reg, src, ref)
        return reg

    def canary(self):
        c = Canary()
        self.canaries.append(c)
        return c

    def defer(self, fn):
        self.cleanups.append(fn)

    # -- clients

    def pull(self, proxy, ref, out=None, listener=0, extra=(), all_=True):
        """skopeo copy docker://PROXY/ref oci:OUT:TAG through the proxy, anonymously.
        Returns (out_dir, {tag: digest}) after verifying every blob in OUT."""
        tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else "latest"
        if out is None:
            out = os.path.join(self.tmp, "pull-%s" % re.sub(r"[^A-Za-z0-9]+", "_", ref))
        shutil.rmtree(out, ignore_errors=True)
        src = "docker://127.0.0.1:%d/%s" % (proxy.ports[listener], ref)
        p = self.s.skopeo(["copy", "-q"] + (["--all"] if all_ else []) +
                          ["--preserve-digests", "--dest-oci-accept-uncompressed-layers",
                           "--src-tls-verify=false", "--src-no-creds"] + list(extra) +
                          [src, "oci:%s:%s" % (out, tag)], check_rc=False, timeout=600)
        if p.returncode != 0:
            fail("pull of %s through the proxy failed (skopeo exit %d)\nskopeo stderr:\n%s"
                 % (src, p.returncode, p.err[-3000:]))
        return out, verify_oci_layout(out)

    def inspect_raw(self, ref, proxy=None, registry=None, listener=0):
        """Raw manifest bytes of docker://ref, via the proxy (anonymous, plain HTTP) or
        directly from an upstream Registry (with its pull credentials)."""
        if proxy is not None:
            args = ["inspect", "--raw", "--tls-verify=false", "--no-creds",
                    "docker://127.0.0.1:%d/%s" % (proxy.ports[listener], ref)]
        else:
            args = ["inspect", "--raw", "--cert-dir", self.s.ca["certdir"]]
            args += (["--creds", "%s:%s" % registry.pull_creds] if registry.pull_creds
                     else ["--no-creds"])
            args.append("docker://%s/%s" % (registry.hostport, ref))
        return self.s.skopeo(args, timeout=120).stdout

    # -- end of test

    def close(self):
        """Stops everything this test started. Returns a list of problems."""
        problems = []
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as e:  # noqa: BLE001
                problems.append("cleanup failed: %r" % e)
        for p in self.proxies:
            problems += p.stop()
        for c in self.canaries:
            c.close()
        return problems

    def failure_context(self):
        """Log tails worth showing when the test failed."""
        out = []
        for p in self.proxies:
            out.append("--- tail of %s" % p.log)
            out.append(tail(p.log, 40))
        return "\n".join(out)


class Timer:
    """Per-test timeout via SIGALRM (raises TestTimeout in the main thread, which interrupts
    blocking calls); paused while a session fixture is being built."""

    class TestTimeout(Exception):
        pass

    def __init__(self):
        self.deadline = None
        self.remaining = None
        signal.signal(signal.SIGALRM, self._fire)

    def _fire(self, signum, frame):
        raise Timer.TestTimeout("test timed out")

    def start(self, seconds):
        self.deadline = time.monotonic() + seconds
        signal.setitimer(signal.ITIMER_REAL, seconds)

    def cancel(self):
        signal.setitimer(signal.ITIMER_REAL, 0)
        self.deadline = None

    @contextlib.contextmanager
    def paused(self):
        self.depth = getattr(self, "depth", 0) + 1
        if self.deadline is None or self.depth > 1:
            try:
                yield
            finally:
                self.depth -= 1
            return
        left = max(1.0, self.deadline - time.monotonic())
        signal.setitimer(signal.ITIMER_REAL, 0)
        try:
            yield
        finally:
            self.depth -= 1
            if self.deadline is not None:
                self.deadline = time.monotonic() + left
                signal.setitimer(signal.ITIMER_REAL, left)
