#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""regproxy's benchmark suite (`make bench`). In one run it starts, on 127.0.0.1 only:
  upstream  docker-registry over TLS (test CA), anonymous, holding bench/large:v1 (a 200 MiB
            and a 50 MiB layer) and bench/huge:v1 (one 1 GiB layer)
  regproxy  the release build in front of it, cache in a temp dir
  peer      docker-registry in proxy (pull-through) mode in front of the same upstream
  nginx     serving the same blob and manifest files statically (sendfile, keep-alive)
then runs every scenario on every server REPS times (interleaved), and prints a Markdown table
of medians and ratios, also written to build/bench/results.md (raw runs: results.json).

The herd (HERD concurrent cold GETs of the 50 MiB blob, against one cold GET alone) runs
twice. First straight on the upstream, with nginx beside the proxies serving the blob it has:
nginx's herd is what delivering HERD copies over loopback costs here, the floor for any proxy.
Then (--herd-wan-mbit, 0 skips it) regproxy and the peer run it again behind a shaper, a
second nginx that terminates TLS and passes everything on to the upstream with its responses
limited to that rate per connection, as when the registry is across the internet.

Numbers come from build/bench/loadgen (one JSON line per run), server CPU from
/proc/PID/stat (utime+stime of every process in the server's session) and RSS from
/proc/PID/stat sampled while a scenario runs. Everything stops by itself and is cleaned up.
No assertions: a benchmark reports, `make test` checks."""
import argparse
import atexit
import contextlib
import ctypes
import datetime
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
import mkimage  # noqa: E402
import testca  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SERVERS = ("regproxy", "peer", "nginx")
TLS_GETS = 5  # GETs of the big blob per TLS run
REGNAME = "registry.bench.test"


def log(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- processes

_PROCS = []
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:
    _libc = None


def _child_setup():
    # Die with the runner even if it is SIGKILLed (PR_SET_PDEATHSIG = 1).
    if _libc is not None:
        _libc.prctl(1, signal.SIGKILL, 0, 0, 0)


def clean_env(extra=None):
    """No proxy variables (libcurl, Go and skopeo honour them), no AWS_CA_BUNDLE
    (docker-registry crashes at start with it)."""
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy",
                                "aws_ca_bundle")}
    env.update(extra or {})
    return env


class Proc:
    """A long-running child, stdout+stderr appended to a log, in a session of its own (so its
    session id is its pid and every process it forks can be found and accounted)."""

    def __init__(self, name, argv, logpath, env=None):
        self.name, self.argv, self.log = name, argv, logpath
        with open(logpath, "ab") as f:
            self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f,
                                      stderr=subprocess.STDOUT, env=env or clean_env(),
                                      start_new_session=True, preexec_fn=_child_setup)
        self.pid = self.p.pid
        _PROCS.append(self)

    def alive(self):
        return self.p.poll() is None

    def stop(self, timeout=10):
        """SIGTERM, then SIGKILL of the whole group after timeout. Returns (rc, killed)."""
        killed = False
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                killed = True
        self.kill()
        return self.p.returncode, killed

    def kill(self):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.p.wait(5)
        with contextlib.suppress(ValueError):
            _PROCS.remove(self)


def kill_all():
    for p in list(_PROCS):
        p.kill()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(fn, timeout, what, proc=None):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            v = fn()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - reported if it never succeeds
            last = e
        if proc is not None and not proc.alive():
            raise RuntimeError("%s: %s exited (%s); log tail:\n%s"
                               % (what, proc.name, proc.p.returncode, tail(proc.log)))
        if time.monotonic() > deadline:
            raise RuntimeError("timed out after %ds waiting for %s (last error: %r)%s"
                               % (timeout, what, last,
                                  "; log tail:\n" + tail(proc.log) if proc else ""))
        time.sleep(0.1)


def tail(path, n=30):
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 65536))
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-n:])
    except OSError as e:
        return "(cannot read %s: %s)" % (path, e)


def http_status(url, timeout=5, ca=None):
    ctx = ssl.create_default_context(cafile=ca) if ca else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url), timeout=timeout,
                                    context=ctx) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


# ------------------------------------------------------------------ /proc accounting

def _stat_fields(pid):
    with open("/proc/%d/stat" % pid) as f:
        s = f.read()
    return s[s.rindex(")") + 2:].split()  # rest[0] is field 3 (state)


def session_pids(sid):
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if int(_stat_fields(int(name))[3]) == sid:
                out.append(int(name))
        except (OSError, IndexError, ValueError):
            pass
    return out


class Usage:
    """CPU seconds and RSS of every process in a server's session."""

    def __init__(self, sid):
        self.sid = sid
        self.pids = session_pids(sid)

    def _sum(self, fn):
        total = 0
        for pid in self.pids:
            try:
                total += fn(_stat_fields(pid))
            except (OSError, IndexError, ValueError):
                pass
        return total

    def cpu(self):
        return self._sum(lambda f: int(f[11]) + int(f[12])) / CLK_TCK

    def rss(self):
        return self._sum(lambda f: int(f[21]) * PAGE)


class RssSampler:
    """Samples a server's RSS every 0.1 s in a thread; peak() after stop()."""

    def __init__(self, usage):
        self.usage, self.max, self.stopped = usage, usage.rss(), threading.Event()
        self.base = self.max
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()

    def _run(self):
        while not self.stopped.wait(0.1):
            self.max = max(self.max, self.usage.rss())

    def stop(self):
        self.stopped.set()
        self.th.join(5)
        self.max = max(self.max, self.usage.rss())
        return self.max - self.base


# --------------------------------------------------------------------------- the bench

class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="regproxy-bench-")
        self.loadgen = args.loadgen
        self.results = {}  # scenario -> server -> [run dict]
        self.notes = []
        self.gen = 0  # cache generation (fresh dirs on every restart)
        self.rp_starts = 0
        self.rp = self.peer = self.nginx = self.up = self.shaper = None

    # -- setup

    def setup(self):
        t0 = time.monotonic()
        self.ca = testca.make(os.path.join(self.tmp, "ca"))
        self.client_env()
        self.build_images()
        log("images built in %.1fs" % (time.monotonic() - t0))
        self.start_upstream()
        self.push_images()
        log("upstream populated in %.1fs" % (time.monotonic() - t0))
        self.rp_port, self.peer_port, self.nginx_port = free_port(), free_port(), free_port()
        self.rp_admin_port = free_port()
        self.rp_tls_port, self.nginx_tls_port = free_port(), free_port()
        self.start_regproxy()
        self.start_peer()
        self.start_nginx()
        self.warm()
        log("setup done in %.1fs" % (time.monotonic() - t0))

    def client_env(self):
        d = os.path.join(self.tmp, "client")
        os.makedirs(d)
        rc = os.path.join(d, "registries.conf")
        with open(rc, "w") as f:
            f.write("unqualified-search-registries = []\n")
        af = os.path.join(d, "auth.json")
        with open(af, "w") as f:
            f.write('{"auths": {}}\n')
        self.cenv = clean_env({"CONTAINERS_REGISTRIES_CONF": rc, "REGISTRY_AUTH_FILE": af,
                               "HOME": d, "XDG_RUNTIME_DIR": d})

    def build_images(self):
        """Two OCI layouts built with the test fixture's writer: the large image (200 MiB +
        50 MiB uncompressed tar layers) and the huge one (one 1 GiB layer)."""
        a = self.args
        self.images = {}
        for name, sizes in (("large", (a.big_mb, a.mid_mb)), ("huge", (a.huge_mb,))):
            d = os.path.join(self.tmp, "images", name)
            lay = mkimage.Layout(d)
            layers = [lay.put_stream_tar([("bench/%d.bin" % i, n * MiB)], mkimage.MT_TAR)
                      for i, n in enumerate(sizes)]
            desc = lay.image(layers)
            lay.tag(desc, "v1")
            lay.close()
            with open(os.path.join(lay.blobdir, desc["digest"][7:]), "rb") as f:
                man = f.read()
            self.images[name] = {"dir": d, "manifest": man, "manifest_digest": desc["digest"],
                                 "layers": [l for l, _ in layers]}
        L = self.images["large"]["layers"]
        self.blob_big, self.blob_mid = L[0], L[1]
        self.blob_huge = self.images["huge"]["layers"][0]

    def start_upstream(self):
        d = os.path.join(self.tmp, "upstream")
        os.makedirs(d)
        self.up_log = os.path.join(d, "registry.log")
        for _ in range(3):
            self.up_port = free_port()
            cfg = os.path.join(d, "config.yml")
            with open(cfg, "w") as f:
                f.write("version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n"
                        "storage:\n  filesystem:\n    rootdirectory: %s/storage\n"
                        "http:\n  addr: 127.0.0.1:%d\n  secret: regproxy-bench\n"
                        "  tls:\n    certificate: %s\n    key: %s\n"
                        "health:\n  storagedriver:\n    enabled: false\n"
                        % (d, self.up_port, self.ca["server.crt"], self.ca["server.key"]))
            self.up = Proc("upstream", ["docker-registry", "serve", cfg], self.up_log)
            self.up_url = "https://127.0.0.1:%d" % self.up_port
            try:
                wait_until(lambda: http_status(self.up_url + "/v2/", ca=self.ca["ca.crt"]) == 200,
                           30, "upstream docker-registry", self.up)
                return
            except RuntimeError:
                self.up.kill()
                if "address already in use" not in tail(self.up_log):
                    raise
        raise RuntimeError("upstream: no free port after 3 tries")

    def skopeo(self, args, timeout=600, cpus=None):
        argv = ["skopeo", "--insecure-policy"] + args
        t0 = time.monotonic()

        def setup():
            _child_setup()
            if cpus:
                os.sched_setaffinity(0, cpus)
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, env=self.cenv, timeout=timeout,
                           preexec_fn=setup)
        p.elapsed = time.monotonic() - t0
        if p.returncode != 0:
            raise RuntimeError("skopeo exited %d: %s\n%s" % (p.returncode, " ".join(argv),
                                                           p.stderr.decode()[-3000:]))
        return p

    def push_images(self):
        for name in ("large", "huge"):
            self.skopeo(["copy", "-q", "--all", "--preserve-digests", "--dest-cert-dir",
                         self.ca["certdir"], "--dest-no-creds",
                         "oci:%s:v1" % self.images[name]["dir"],
                         "docker://127.0.0.1:%d/bench/%s:v1" % (self.up_port, name)])

    def start_regproxy(self, upstream_url=None):
        """(Re)starts regproxy on its port with a fresh, empty cache dir, in front of
        upstream_url (an https URL the test CA vouches for; default: the upstream)."""
        if self.rp is not None:
            self.stop_regproxy()
        self.gen += 1
        d = os.path.join(self.tmp, "regproxy")
        os.makedirs(d, exist_ok=True)
        for old in os.listdir(d):
            if old.startswith("cache-"):
                shutil.rmtree(os.path.join(d, old), ignore_errors=True)
        self.rp_cache = os.path.join(d, "cache-%d" % self.gen)
        self.rp_conf = os.path.join(d, "regproxy.conf")
        self.rp_log = os.path.join(d, "regproxy.log")
        with open(self.rp_conf, "w") as f:
            f.write('# written by bench/run.py\n[listen "127.0.0.1:%d"]\ndefault = %s\n\n'
                    '[listen "127.0.0.1:%d"]\ndefault = %s\ntls_cert = %s\ntls_key = %s\n\n'
                    "[admin]\nlisten = 127.0.0.1:%d\n\n"
                    "[cache]\ndir = %s\ntag_ttl = 10m\n\n"
                    '[registry "%s"]\nurl = %s\nca_file = %s\ntest_login = no\n'
                    % (self.rp_port, REGNAME, self.rp_tls_port, REGNAME, self.ca["server.crt"],
                       self.ca["server.key"], self.rp_admin_port, self.rp_cache, REGNAME,
                       upstream_url or self.up_url, self.ca["ca.crt"]))
        self.rp = Proc("regproxy", [self.args.bin, "serve", "-c", self.rp_conf], self.rp_log)
        self.rp_starts += 1
        wait_until(lambda: http_status("http://127.0.0.1:%d/v2/" % self.rp_port) == 200, 30,
                   "regproxy", self.rp)

    def stop_regproxy(self):
        rc, killed = self.rp.stop(10)
        if killed:
            self.note("regproxy did not exit within 10 s of SIGTERM (killed)")
        elif rc != 0:
            self.note("regproxy exited with status %s after SIGTERM; log tail:\n%s"
                      % (rc, tail(self.rp_log, 10)))
        self.rp = None

    def start_peer(self, upstream_url=None):
        """(Re)starts docker-registry in proxy mode with a fresh, empty storage dir, in front
        of upstream_url (default: the upstream). It trusts the test CA through SSL_CERT_FILE
        (Go's crypto/x509 reads it)."""
        if self.peer is not None:
            self.peer.stop(10)
        self.gen += 1
        d = os.path.join(self.tmp, "peer")
        os.makedirs(d, exist_ok=True)
        for old in os.listdir(d):
            if old.startswith("storage-"):
                shutil.rmtree(os.path.join(d, old), ignore_errors=True)
        self.peer_storage = os.path.join(d, "storage-%d" % self.gen)
        cfg = os.path.join(d, "config.yml")
        with open(cfg, "w") as f:
            f.write("version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n"
                    "storage:\n  filesystem:\n    rootdirectory: %s\n"
                    "http:\n  addr: 127.0.0.1:%d\n  secret: regproxy-bench-peer\n"
                    "health:\n  storagedriver:\n    enabled: false\n"
                    "proxy:\n  remoteurl: %s\n" % (self.peer_storage, self.peer_port,
                                                   upstream_url or self.up_url))
        self.peer_log = os.path.join(d, "registry.log")
        self.peer = Proc("peer", ["docker-registry", "serve", cfg], self.peer_log,
                         env=clean_env({"SSL_CERT_FILE": self.ca["ca.crt"]}))
        wait_until(lambda: http_status("http://127.0.0.1:%d/v2/" % self.peer_port) == 200, 30,
                   "peer docker-registry (proxy mode)", self.peer)

    def start_nginx(self):
        """nginx serving the same files: /v2/bench/NAME/blobs/sha256:HEX and
        /v2/bench/NAME/manifests/v1 are symlinks into the OCI layouts."""
        d = os.path.join(self.tmp, "nginx")
        www = os.path.join(d, "www")
        for name, im in self.images.items():
            bd = os.path.join(www, "v2", "bench", name, "blobs")
            md = os.path.join(www, "v2", "bench", name, "manifests")
            os.makedirs(bd)
            os.makedirs(md)
            blobs = os.path.join(im["dir"], "blobs", "sha256")
            for hexd in os.listdir(blobs):
                os.symlink(os.path.join(blobs, hexd), os.path.join(bd, "sha256:" + hexd))
            os.symlink(os.path.join(blobs, im["manifest_digest"][7:]), os.path.join(md, "v1"))
        for sub in ("tmp", "logs"):
            os.makedirs(os.path.join(d, sub))
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        nofile = 65536 if hard == resource.RLIM_INFINITY else hard
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write("# written by bench/run.py: one worker, like regproxy's one event loop\n"
                    "%s"
                    "worker_processes 1;\nworker_rlimit_nofile %d;\npid %s/nginx.pid;\n"
                    "error_log %s/logs/error.log warn;\n"
                    "events { worker_connections %d; }\n"
                    "http {\n"
                    "  access_log %s/logs/access.log;\n"
                    "  sendfile on;\n  tcp_nopush on;\n  tcp_nodelay on;\n"
                    "  keepalive_timeout 120s;\n  keepalive_requests 10000000;\n"
                    "  client_body_temp_path %s/tmp;\n  proxy_temp_path %s/tmp;\n"
                    "  fastcgi_temp_path %s/tmp;\n  uwsgi_temp_path %s/tmp;\n"
                    "  scgi_temp_path %s/tmp;\n"
                    "  types { }\n"
                    "  server {\n    listen 127.0.0.1:%d;\n    listen 127.0.0.1:%d ssl;\n"
                    "    ssl_certificate %s;\n    ssl_certificate_key %s;\n    root %s;\n"
                    "    location = /v2/ { default_type application/json; return 200 '{}'; }\n"
                    "    location ~ ^/v2/.+/manifests/ { default_type %s; }\n"
                    "    location /v2/ { default_type application/octet-stream; }\n"
                    "  }\n}\n"
                    % ("user root;\n" if os.geteuid() == 0 else "", nofile, d, d,
                       max(1024, nofile - 100), d, d, d, d, d, d, self.nginx_port,
                       self.nginx_tls_port, self.ca["server.crt"], self.ca["server.key"], www,
                       MT_MANIFEST))
        self.nginx_log = os.path.join(d, "logs", "stderr.log")
        self.nginx_argv = ["nginx", "-c", conf, "-p", d, "-e", d + "/logs/error.log",
                           "-g", "daemon off;"]
        self.restart_nginx()

    def restart_nginx(self):
        if self.nginx is not None:
            self.nginx.stop(10)
        self.nginx = Proc("nginx", self.nginx_argv, self.nginx_log)
        wait_until(lambda: http_status("http://127.0.0.1:%d/v2/" % self.nginx_port) == 200, 30,
                   "nginx", self.nginx)

    def start_shaper(self, rate):
        """A second nginx between the proxies and the upstream that stands for a WAN link:
        TLS (the test CA's server certificate) on a port of its own, every request passed
        on unchanged to the upstream (which still logs every GET, so upstream_gets() stays
        right) and every response sent at most `rate` bytes/s. nginx's limit_rate is per
        connection, not per link: a proxy that opens many upstream connections for one blob
        (the peer) gets `rate` on each, where on a real WAN they would share it, so this
        understates what duplicate upstream GETs cost. Returns the shaper's URL."""
        d = os.path.join(self.tmp, "shaper")
        shutil.rmtree(d, ignore_errors=True)
        for sub in ("tmp", "logs"):
            os.makedirs(os.path.join(d, sub))
        log_path = os.path.join(d, "logs", "stderr.log")
        conf = os.path.join(d, "nginx.conf")
        for _ in range(3):
            port = free_port()
            with open(conf, "w") as f:
                # limit_rate paces what nginx sends; it does nothing with proxy_buffering off
                # (nginx 1.22), so buffering stays on but in memory only (no temp file): nginx
                # reads from the upstream only as fast as it sends, a few proxy_buffers
                # ahead, and the proxies see a slow upstream, not a fast one behind a buffer.
                # The pacing is a pause of (bytes sent) / rate after each send, in whole ms,
                # and none under 1 ms: with the default 4k buffers every send is too small
                # to pause after, and only the per-second budget (rate × (whole seconds +
                # 1)) limits, so a blob of under a second's worth goes out nearly unlimited.
                # Buffers of 64k, up to 1 MiB in flight, make each send pause.
                f.write("# written by bench/run.py: a rate-limited stand-in for a WAN link\n"
                        "%sworker_processes 1;\npid %s/nginx.pid;\n"
                        "error_log %s/logs/error.log warn;\n"
                        "events { worker_connections 4096; }\n"
                        "http {\n"
                        "  access_log %s/logs/access.log;\n  tcp_nodelay on;\n"
                        "  keepalive_timeout 120s;\n  keepalive_requests 10000000;\n"
                        "  client_body_temp_path %s/tmp;\n  proxy_temp_path %s/tmp;\n"
                        "  fastcgi_temp_path %s/tmp;\n  uwsgi_temp_path %s/tmp;\n"
                        "  scgi_temp_path %s/tmp;\n"
                        "  server {\n    listen 127.0.0.1:%d ssl;\n"
                        "    ssl_certificate %s;\n    ssl_certificate_key %s;\n"
                        "    location / {\n"
                        "      proxy_pass %s;\n"
                        "      proxy_ssl_verify on;\n      proxy_ssl_trusted_certificate %s;\n"
                        "      proxy_ssl_name localhost;\n"
                        "      proxy_http_version 1.1;\n"
                        "      proxy_set_header Host $http_host;\n"
                        "      proxy_buffering on;\n      proxy_max_temp_file_size 0;\n"
                        "      proxy_buffer_size 64k;\n      proxy_buffers 32 64k;\n"
                        "      proxy_busy_buffers_size 1m;\n"
                        "      proxy_request_buffering off;\n"
                        "      proxy_read_timeout 600s;\n      proxy_send_timeout 600s;\n"
                        "      limit_rate %d;\n"
                        "    }\n  }\n}\n"
                        % ("user root;\n" if os.geteuid() == 0 else "", d, d, d, d, d, d, d,
                           d, port, self.ca["server.crt"], self.ca["server.key"], self.up_url,
                           self.ca["ca.crt"], rate))
            self.shaper = Proc("shaper", ["nginx", "-c", conf, "-p", d, "-e",
                                          d + "/logs/error.log", "-g", "daemon off;"], log_path)
            url = "https://127.0.0.1:%d" % port
            try:
                wait_until(lambda: http_status(url + "/v2/", ca=self.ca["ca.crt"]) == 200, 30,
                           "shaper nginx", self.shaper)
                return url
            except RuntimeError:
                self.shaper.kill()
                self.shaper = None
                if "Address already in use" not in (tail(os.path.join(d, "logs", "error.log"))
                                                     + tail(log_path)):
                    raise
        raise RuntimeError("shaper: no free port after 3 tries")

    # -- helpers

    def note(self, msg):
        log("NOTE: " + msg)
        self.notes.append(msg)

    def port(self, server):
        return {"regproxy": self.rp_port, "peer": self.peer_port,
                "nginx": self.nginx_port}[server]

    def proc(self, server):
        return {"regproxy": self.rp, "peer": self.peer, "nginx": self.nginx}[server]

    def url(self, server, what):
        base = "http://127.0.0.1:%d" % self.port(server)
        if what == "ping":
            return base + "/v2/"
        if what == "manifest":
            return base + "/v2/bench/large/manifests/v1"
        repo = "huge" if what == "huge" else "large"
        blob = {"big": self.blob_big, "mid": self.blob_mid, "huge": self.blob_huge}[what]
        return base + "/v2/bench/%s/blobs/%s" % (repo, blob["digest"])

    def size(self, what):
        """The body size every 2xx response to url(SERVER, what) must have (loadgen -s; all
        three serve the same bytes): a server answering short bodies framed as complete must
        not look fast."""
        if what == "manifest":
            return len(self.images["large"]["manifest"])
        return {"big": self.blob_big, "mid": self.blob_mid, "huge": self.blob_huge}[what]["size"]

    def run_loadgen(self, args, timeout=300):
        argv = [self.loadgen] + [str(a) for a in args]
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=timeout, preexec_fn=_child_setup)
        out = p.stdout.decode().strip().splitlines()
        if p.returncode != 0 or not out:
            raise RuntimeError("loadgen failed (%d): %s\n%s" % (p.returncode, " ".join(argv),
                                                             p.stderr.decode()[-2000:]))
        return json.loads(out[-1])

    def measured(self, server, args, timeout=300):
        """Runs loadgen against a server; adds the server's CPU seconds and RSS growth."""
        proc = self.proc(server)
        u = Usage(proc.pid)
        up0 = self.upstream_requests()
        cpu0 = u.cpu()
        sampler = RssSampler(u)
        try:
            r = self.run_loadgen(args, timeout)
        finally:
            growth = sampler.stop()
        r["cpu_s"] = u.cpu() - cpu0
        time.sleep(0.2)  # access lines may follow the responses
        r["upstream_requests"] = self.upstream_requests() - up0
        r["rss_growth"] = growth
        r["rss_base"] = sampler.base
        if not proc.alive():
            self.note("%s DIED during `%s` (exit %s); log tail:\n%s"
                      % (server, " ".join(str(a) for a in args), proc.p.returncode,
                         tail(proc.log, 20)))
        return r

    def upstream_requests(self):
        """Requests in the upstream's access log so far (any method, any path)."""
        with open(self.up_log, "rb") as f:
            return sum(1 for line in f if b'] "' in line and b' HTTP/' in line)

    def upstream_gets(self, digest):
        """GETs of a blob in the upstream's access log so far."""
        pat = re.compile(r'"GET /v2/[^ ]*/blobs/%s HTTP/[\d.]+" (\d+) ' % re.escape(digest))
        with open(self.up_log, errors="replace") as f:
            return sum(1 for line in f if pat.search(line))

    def cached_in(self, server, blob):
        hexd = blob["digest"][7:]
        if server == "regproxy":
            p = os.path.join(self.rp_cache, "blobs", "sha256", hexd[:2], hexd)
        else:
            p = os.path.join(self.peer_storage, "docker", "registry", "v2", "blobs", "sha256",
                             hexd[:2], hexd, "data")
        return os.path.exists(p) and os.path.getsize(p) == blob["size"]

    def check_blob(self, server, blob, repo="large"):
        """Streams a blob from a server and checks its digest (once, before measuring)."""
        h = hashlib.sha256()
        n = 0
        req = urllib.request.Request("http://127.0.0.1:%d/v2/bench/%s/blobs/%s"
                                     % (self.port(server), repo, blob["digest"]))
        with urllib.request.urlopen(req, timeout=120) as r:
            while True:
                b = r.read(1 << 20)
                if not b:
                    break
                h.update(b)
                n += len(b)
        got = "sha256:" + h.hexdigest()
        if got != blob["digest"]:
            self.note("%s served %d bytes hashing to %s for blob %s"
                      % (server, n, got, blob["digest"]))

    def warm(self):
        """Fetches everything the warm scenarios use through both caches, checks the bytes,
        and waits until the blobs are stored (the peer stores them in the background)."""
        for server in SERVERS:
            for blob in (self.blob_big, self.blob_mid):
                self.check_blob(server, blob)
            r = self.run_loadgen(["-n", 2, "-H", "Accept: " + MT_MANIFEST,
                                  "-s", self.size("manifest"),
                                  self.url(server, "manifest")])
            if r["errors"]:
                self.note("warm-up manifest GET on %s: %s" % (server, r))
        for server in ("regproxy", "peer"):
            for blob in (self.blob_big, self.blob_mid):
                wait_until(lambda s=server, b=blob: self.cached_in(s, b), 120,
                           "%s to store %s" % (server, blob["digest"]))

    # -- scenarios

    def record(self, scenario, server, r):
        self.results.setdefault(scenario, {}).setdefault(server, []).append(r)

    def warm_blob(self, conns):
        key = "blob%d" % conns
        a = self.args
        for rep in range(a.reps):
            for server in SERVERS:
                r = self.measured(server, ["-c", conns, "-d", a.seconds, "-t", 30,
                                           "-s", self.size("big"),
                                           self.url(server, "big")])
                r["cpu_s_per_gib"] = r["cpu_s"] / (r["bytes"] / GiB) if r["bytes"] else None
                self.record(key, server, r)
                log("warm %d MiB blob, %d conns, %s #%d: %.0f MB/s, %.2f CPU s/GiB, "
                    "%d errors" % (a.big_mb, conns, server, rep + 1, r["mb_per_s"],
                                   r["cpu_s_per_gib"] or 0, r["errors"]))

    def tls_blob(self):
        """The warm big blob over TLS to one client: curl makes TLS_GETS GETs in a row on one
        connection, from regproxy's TLS listener and from nginx's (ssl, same files). Both
        encrypt in user space, so CPU per GiB is what tells them apart. The peer is not run:
        docker-registry serves TLS or plain HTTP on its one address, and it serves plain here."""
        a = self.args
        url = {s: "https://127.0.0.1:%d/v2/bench/large/blobs/%s"
               % ({"regproxy": self.rp_tls_port, "nginx": self.nginx_tls_port}[s],
                  self.blob_big["digest"]) for s in ("regproxy", "nginx")}
        for server in ("regproxy", "nginx"):
            # A fresh regproxy (a scenario before restarted it) fills its cache here.
            got = self.curl_tls([url[server]], digest=True)
            if got != [(200, self.blob_big["size"], self.blob_big["digest"])]:
                self.note("TLS GET of the big blob from %s: %s" % (server, got))
        wait_until(lambda: self.cached_in("regproxy", self.blob_big), 120,
                   "regproxy to store the big blob")
        for rep in range(a.reps):
            for server in ("regproxy", "nginx"):
                u = Usage(self.proc(server).pid)
                cpu0 = u.cpu()
                sampler = RssSampler(u)
                t0 = time.monotonic()
                try:
                    got = self.curl_tls([url[server]] * TLS_GETS)
                finally:
                    growth = sampler.stop()
                wall = time.monotonic() - t0
                cpu = u.cpu() - cpu0
                good = [g for g in got if g[:2] == (200, self.blob_big["size"])]
                n = len(good) * self.blob_big["size"]
                r = {"mb_per_s": n / wall / 1e6, "cpu_s_per_gib": cpu / (n / GiB) if n else None,
                     "rss_growth_mib": growth / MiB, "errors": TLS_GETS - len(good)}
                self.record("tls1", server, r)
                log("warm %d MiB blob over TLS, 1 client, %s #%d: %.0f MB/s, %.2f CPU s/GiB, "
                    "RSS +%.1f MiB, %d errors" % (a.big_mb, server, rep + 1, r["mb_per_s"],
                                                  r["cpu_s_per_gib"] or 0, r["rss_growth_mib"],
                                                  r["errors"]))

    def curl_tls(self, urls, digest=False):
        """[(status, bytes, sha256 digest or None)] of GETs by one curl (one connection)."""
        argv = ["curl", "-sS", "--cacert", self.ca["ca.crt"], "-w", "%{http_code} %{size_download}\n"]
        out = os.path.join(self.tmp, "tls-body") if digest else "/dev/null"
        for u in urls:
            argv += ["-o", out, u]
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=300, env=clean_env({}))
        res = []
        for line in p.stdout.decode().split("\n"):
            if line.strip():
                st, n = line.split()
                res.append((int(st), int(n)))
        if p.returncode != 0:
            self.note("curl exited %d: %s" % (p.returncode, p.stderr.decode()[-500:]))
        if not digest:
            return res
        h = hashlib.sha256()
        with open(out, "rb") as f:
            for b in iter(lambda: f.read(1 << 20), b""):
                h.update(b)
        os.unlink(out)
        return [r + ("sha256:" + h.hexdigest(),) for r in res]

    def manifest(self):
        a = self.args
        for rep in range(a.reps):
            for server in SERVERS:
                r = self.measured(server, ["-c", 64, "-d", a.seconds, "-t", 30,
                                           "-H", "Accept: " + MT_MANIFEST,
                                           "-s", self.size("manifest"),
                                           self.url(server, "manifest")])
                r["cpu_ms_per_kreq"] = (r["cpu_s"] * 1e6 / r["requests"]
                                        if r["requests"] else None)
                self.record("manifest", server, r)
                log("warm manifest by tag, 64 conns, %s #%d: %.0f req/s, p99 %.2f ms, "
                    "%d errors" % (server, rep + 1, r["req_per_s"], r["p99_ms"], r["errors"]))

    def idle(self):
        a = self.args
        for rep in range(a.reps):
            for server in SERVERS:
                # A fresh process each time: what an allocator kept from the run before would
                # hide the growth.
                self.restart(server)
                r = self.measured(server, ["-k", "-c", a.idle_conns, "-d", a.hold, "-t", 30,
                                           self.url(server, "ping")], timeout=400)
                r["rss_growth_mib"] = r["rss_growth"] / MiB
                r["rss_peak_mib"] = (r["rss_base"] + r["rss_growth"]) / MiB
                r["kib_per_conn"] = r["rss_growth"] / 1024 / a.idle_conns
                r["not_held"] = a.idle_conns - r.get("held", 0)
                self.record("idle", server, r)
                log("%d idle conns, %s #%d: held %d, %d errors, RSS +%.1f MiB"
                    % (a.idle_conns, server, rep + 1, r.get("held", 0), r["errors"],
                       r["rss_growth_mib"]))
                if r["errors"] or r["not_held"]:
                    self.note("%d idle connections on %s (run %d): %s"
                              % (a.idle_conns, server, rep + 1, json.dumps(r)))

    def revive(self):
        """Restarts whichever server is no longer running (after a failed scenario)."""
        for server in SERVERS:
            p = self.proc(server)
            if p is None or not p.alive():
                with contextlib.suppress(RuntimeError, OSError):
                    self.restart(server)

    def restart(self, server, upstream_url=None):
        """Restarts a server; regproxy and the peer with empty caches, in front of
        upstream_url (default: the upstream)."""
        if server == "nginx":
            self.restart_nginx()
        else:
            {"regproxy": self.start_regproxy,
             "peer": self.start_peer}[server](upstream_url=upstream_url)

    def herd(self):
        """HERD concurrent cold GETs of the mid blob on a fresh cache against one cold GET
        alone, and the same on nginx, which has the file (nothing to fetch): its herd is what
        delivering HERD copies over loopback costs on this machine, the floor for any proxy."""
        self.herd_runs("herd", SERVERS)

    def herd_wan(self):
        """The herd again with the proxies behind a shaper (start_shaper) that limits the
        upstream's responses to --herd-wan-mbit, as when the registry is across the internet:
        there the upstream transfer, not loopback delivery, is what the herd waits for."""
        a = self.args
        if a.herd_wan_mbit <= 0:
            return
        rate = a.herd_wan_mbit * 125000  # bytes/s
        url = self.start_shaper(rate)
        try:
            self.herd_runs("herd_wan", ("regproxy", "peer"), upstream_url=url, rate=rate)
        finally:
            # Later scenarios get the proxies in front of the upstream itself again.
            self.restart("regproxy")
            self.restart("peer")
            self.shaper.stop(10)
            self.shaper = None

    def herd_runs(self, scenario, servers, upstream_url=None, rate=None):
        a = self.args
        blob = self.blob_mid
        what = "herd" if rate is None else "herd over %d Mbit/s" % a.herd_wan_mbit
        # A single GET at the link's rate takes blob / rate: give it room to.
        tmo = 60 if rate is None else max(60, int(4 * blob["size"] / rate))
        for rep in range(a.reps):
            for server in servers:
                cold = server != "nginx"
                if cold:
                    self.restart(server, upstream_url)
                m0 = self.upstream_gets(blob["digest"])
                single = self.measured(server, ["-c", 1, "-n", 1, "-t", tmo,
                                                "-s", blob["size"], self.url(server, "mid")],
                                       timeout=tmo + 60)
                if cold:
                    time.sleep(0.5)
                    single_up = self.upstream_gets(blob["digest"]) - m0
                    self.restart(server, upstream_url)
                    m0 = self.upstream_gets(blob["digest"])
                r = self.measured(server, ["-c", a.herd, "-n", a.herd, "-t", tmo,
                                           "-s", blob["size"], self.url(server, "mid")],
                                  timeout=max(600, tmo + 60))
                if cold:
                    time.sleep(0.5)  # access lines may follow the responses
                    r["upstream_gets"] = self.upstream_gets(blob["digest"]) - m0
                    r["single_upstream_gets"] = single_up
                r["single_s"] = single["seconds"]
                r["herd_over_single"] = r["seconds"] / single["seconds"]
                r["errors"] += single["errors"]
                if rate is not None:
                    r["wan_bytes_per_s"] = rate
                self.record(scenario, server, r)
                log("%s: %d %s GETs (%d MiB), %s #%d: %.2f s (single %s GET %.2f s), "
                    "%s upstream GETs, %d errors"
                    % (what, a.herd, "cold" if cold else "warm", a.mid_mb, server, rep + 1,
                       r["seconds"], "cold" if cold else "warm", single["seconds"],
                       r.get("upstream_gets", "no"), r["errors"]))
                if r["errors"] or r["requests"] != a.herd:
                    self.note("%s on %s (run %d): %d of %d complete, errors %s"
                              % (what, server, rep + 1, r["requests"], a.herd,
                                 json.dumps(r["error_kinds"])))
                if rate is not None and single["seconds"] < 0.8 * blob["size"] / rate:
                    self.note("%s on %s (run %d): one cold GET took %.2f s, less than the "
                              "%.2f s the shaper should allow: it is not shaping"
                              % (what, server, rep + 1, single["seconds"],
                                 blob["size"] / rate))

    def slow(self):
        a = self.args
        for rep in range(a.reps):
            for server in SERVERS:
                # Every server fresh, nginx too: regproxy and the peer need empty caches, and
                # a process that served the herd before keeps what it allocated for it, which
                # hides the growth (nginx's read +0.0 MiB after the herd, +0.4-0.7 MiB fresh).
                self.restart(server)
                m0 = self.upstream_gets(self.blob_huge["digest"])
                r = self.measured(server, ["-c", a.slow_conns, "-d", a.slow_seconds,
                                           "-r", a.slow_rate, "-t", 60,
                                           "-s", self.blob_huge["size"],
                                           self.url(server, "huge")], timeout=300)
                r["peak_rss_growth_mib"] = r["rss_growth"] / MiB
                r["upstream_gets"] = self.upstream_gets(self.blob_huge["digest"]) - m0
                self.record("slow", server, r)
                log("%d slow clients (%d B/s) on the %d MiB blob, %s #%d: %.1f MB/s total, "
                    "peak RSS +%.1f MiB, %d errors"
                    % (a.slow_conns, a.slow_rate, a.huge_mb, server, rep + 1, r["mb_per_s"],
                       r["peak_rss_growth_mib"], r["errors"]))
        # Stop the fills the cut-short clients left running.
        self.restart("regproxy")
        self.restart("peer")

    def cold_pull(self):
        """skopeo copies the large image to an OCI layout, through each proxy on a fresh cache
        and straight from the upstream. Twice: with skopeo's copy in memory (tmpfs), as when
        the node pulling is another machine than the proxy; and with it on the disk the proxy
        caches to, where skopeo's fsync of every layer waits behind the proxy's own writes
        (on this machine that costs more than the proxy's extra hop)."""
        a = self.args
        shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        if not shm:
            self.note("no writable /dev/shm: the cold pull runs on disk only")
        ncpu = len(os.sched_getaffinity(0))
        for rep in range(a.reps):
            for where, scen in (("tmpfs", "pull"), ("disk", "pull_disk"),
                                ("pinned", "pull_pinned")):
                if (where != "disk" and not shm) or (where == "pinned" and ncpu < 2):
                    continue
                # Whoever pulls right after another pays for its leftovers (dirty pages being
                # written back, a busy upstream): the order turns with every run.
                order = ("regproxy", "peer", "direct")
                for who in order[rep % 3:] + order[:rep % 3]:
                    self.pull_once(rep, where, scen, who, shm)

    def cold_pull_wan(self):
        """The cold pull again with the upstream behind the shaper (start_shaper) at
        --pull-wan-mbit, as when the registry is across the internet: skopeo straight from
        the shaper, or through a proxy in front of it. There the link sets the pace, and
        what the hop costs is latency, not CPU shared with the client."""
        a = self.args
        if a.pull_wan_mbit <= 0:
            return
        shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) \
            else None
        url = self.start_shaper(a.pull_wan_mbit * 125000)
        try:
            order = ("regproxy", "peer", "direct")
            for rep in range(a.reps):
                for who in order[rep % 3:] + order[:rep % 3]:
                    self.pull_once(rep, "tmpfs" if shm else "disk", "pull_wan", who, shm,
                                   upstream_url=url)
        finally:
            self.restart("regproxy")
            self.restart("peer")
            self.shaper.stop(10)
            self.shaper = None

    @staticmethod
    def pin(pid, cpus):
        """Every thread of every process in pid's session onto cpus."""
        for p in session_pids(pid):
            for tid in os.listdir("/proc/%d/task" % p):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(tid), cpus)

    def pull_once(self, rep, where, scen, who, shm, upstream_url=None):
        """One cold pull of bench/large:v1 by skopeo into `where`: tmpfs, disk, or "pinned"
        (tmpfs, with skopeo and the upstream sharing CPU 0 and the proxy alone on the other
        CPUs, as when the proxy is a machine of its own: what is left of the gap then is the
        hop's latency, not its CPU). upstream_url: the proxies' upstream, and the direct
        pull's (the shaper's), instead of the upstream itself."""
        if who != "direct":
            self.restart(who, upstream_url)
        pinned = where == "pinned"
        everywhere = os.sched_getaffinity(0)
        if pinned:
            self.pin(self.up.pid, {0})
            if who != "direct":
                self.pin(self.proc(who).pid, everywhere - {0})
        base = tempfile.mkdtemp(prefix="regproxy-bench-pull-", dir=shm) \
            if where != "disk" else self.tmp
        dest = os.path.join(base, "pull")
        shutil.rmtree(dest, ignore_errors=True)
        if who == "direct":
            port = int(upstream_url.rsplit(":", 1)[1]) if upstream_url else self.up_port
            src = ["--src-cert-dir", self.ca["certdir"],
                   "docker://127.0.0.1:%d/bench/large:v1" % port]
        else:
            src = ["--src-tls-verify=false",
                   "docker://127.0.0.1:%d/bench/large:v1" % self.port(who)]
        # CPU of everyone involved: on a small machine a pull is CPU-bound, so what
        # the extra hop costs shows up here first.
        up_u = Usage(self.up.pid)
        srv_u = Usage(self.proc(who).pid) if who != "direct" else None
        up0, srv0 = up_u.cpu(), srv_u.cpu() if srv_u else 0.0
        ch = resource.getrusage(resource.RUSAGE_CHILDREN)
        cl0 = ch.ru_utime + ch.ru_stime
        try:
            p = self.skopeo(["copy", "-q", "--src-no-creds"] + src + ["oci:%s:v1" % dest],
                            timeout=300, cpus={0} if pinned else None)
            r = {"seconds": p.elapsed, "errors": 0}
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            self.note("skopeo cold pull via %s failed: %s" % (who, e))
            r = {"seconds": None, "errors": 1}
        if pinned:
            self.pin(self.up.pid, everywhere)
            if who != "direct":
                self.pin(self.proc(who).pid, everywhere)
        ch = resource.getrusage(resource.RUSAGE_CHILDREN)
        r["client_cpu_s"] = ch.ru_utime + ch.ru_stime - cl0
        r["upstream_cpu_s"] = up_u.cpu() - up0
        r["proxy_cpu_s"] = srv_u.cpu() - srv0 if srv_u else 0.0
        r["cpu_s"] = r["client_cpu_s"] + r["upstream_cpu_s"] + r["proxy_cpu_s"]
        shutil.rmtree(dest, ignore_errors=True)
        if base != self.tmp:
            shutil.rmtree(base, ignore_errors=True)
        self.record(scen, "nginx" if who == "direct" else who, r)
        log("skopeo cold pull (to %s) via %s #%d: %s s; CPU s: skopeo %.2f, upstream "
            "%.2f, proxy %.2f" % (where, who, rep + 1, "%.2f" % r["seconds"]
                                  if r["seconds"] else "failed", r["client_cpu_s"],
                                  r["upstream_cpu_s"], r["proxy_cpu_s"]))

    def profile(self):
        """What a cache hit costs in system calls and heap allocations, regproxy beside nginx:
        `strace -c` and `perf stat` on libc's malloc/calloc/realloc (uprobes) attached to the
        server while loadgen makes a fixed number of keep-alive requests. Counts, not times:
        tracing slows the servers, so only the per-request figures mean anything."""
        a = self.args
        probes = ["probe_libc:" + f for f in ("malloc", "calloc", "realloc")]
        libc = next((p for p in ("/lib/x86_64-linux-gnu/libc.so.6", "/lib/aarch64-linux-gnu/"
                                 "libc.so.6", "/lib64/libc.so.6") if os.path.exists(p)), None)
        have_perf = bool(shutil.which("perf") and libc)
        if have_perf:
            for f in ("malloc", "calloc", "realloc"):
                subprocess.run(["perf", "probe", "-q", "-x", libc, "--add", f],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not shutil.which("strace"):
            self.note("profile: strace is not installed; no system call counts")
        # Cache hits are what is profiled: earlier scenarios may have left regproxy with a
        # fresh, empty cache, so both are fetched (and the blob stored) first.
        for what in ("manifest", "big"):
            self.run_loadgen(["-n", 1, "-t", 60, "-H", "Accept: " + MT_MANIFEST,
                              self.url("regproxy", what)])
        wait_until(lambda: self.cached_in("regproxy", self.blob_big), 120,
                   "regproxy to store the profiled blob")
        runs = (("manifest", ["-c", 8, "-n", a.profile_requests, "-t", 30,
                              "-H", "Accept: " + MT_MANIFEST,
                              "-s", len(self.images["large"]["manifest"])], "manifest",
                 a.profile_requests),
                ("blob", ["-c", 1, "-n", 4, "-t", 60, "-s", self.blob_big["size"]], "big", 4))
        for what, args, target, n in runs:
            for server in ("regproxy", "nginx"):
                pids = [str(p) for p in session_pids(self.proc(server).pid)]
                out = os.path.join(self.tmp, "profile-%s-%s" % (server, what))
                tracers = []
                if shutil.which("strace"):
                    argv = ["strace", "-c", "-f", "-o", out + ".strace"]
                    for pid in pids:
                        argv += ["-p", pid]
                    tracers.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.DEVNULL))
                if have_perf:
                    argv = ["perf", "stat", "-x", ",", "-o", out + ".perf",
                            "-e", ",".join(probes), "-p", ",".join(pids)]
                    tracers.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.DEVNULL))
                time.sleep(1.0)  # both attached
                try:
                    r = self.run_loadgen(args + [self.url(server, target)], timeout=600)
                finally:
                    time.sleep(0.3)
                    for t in tracers:
                        t.send_signal(signal.SIGINT)
                    for t in tracers:
                        t.wait(30)
                done = r["requests"]
                if r["errors"] or done != n:
                    self.note("profile %s on %s: %d of %d requests, %d errors"
                              % (what, server, done, n, r["errors"]))
                calls = {}
                with contextlib.suppress(OSError):
                    with open(out + ".strace") as f:
                        for line in f:
                            m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?"
                                         r"([a-z_0-9]+)\s*$", line)
                            if m and m.group(2) != "total":
                                calls[m.group(2)] = int(m.group(1))
                allocs = None
                with contextlib.suppress(OSError, ValueError):
                    with open(out + ".perf") as f:
                        allocs = sum(int(line.split(",")[0]) for line in f
                                     if "probe_libc:" in line and line[0].isdigit())
                rec = {"requests": done, "syscalls": calls,
                       "syscalls_per_req": sum(calls.values()) / done if done else None,
                       "allocs_per_req": allocs / done if done and allocs is not None else None}
                self.record("profile_" + what, server, rec)
                per = ", ".join("%s %.2f" % (k, v / done) for k, v in
                                sorted(calls.items(), key=lambda kv: -kv[1]) if done) or "n/a"
                log("profile %s, %s: %d requests; per request: %s allocations; system calls %s"
                    % (what, server, done, "%.2f" % rec["allocs_per_req"]
                       if rec["allocs_per_req"] is not None else "n/a", per))
        if have_perf:
            subprocess.run(["perf", "probe", "-q", "--del", "probe_libc:*"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    # -- report

    def med(self, scenario, server, key):
        runs = self.results.get(scenario, {}).get(server)
        if not runs:
            return None
        vals = [r.get(key) for r in runs]
        vals = [v for v in vals if v is not None]
        return statistics.median(vals) if vals else None

    def total(self, scenario, server, key):
        runs = self.results.get(scenario, {}).get(server)
        if not runs:
            return None
        return sum(r.get(key) or 0 for r in runs)

    def table(self):
        a = self.args
        rows = []  # (scenario, metric, {server: value}, fmt)

        def add(label, metric, scen, key, fmt, how="med", servers=SERVERS):
            if scen not in self.results:  # not run (--only)
                return
            f = self.med if how == "med" else self.total
            rows.append((label, metric, {s: f(scen, s, key) for s in servers}, fmt))

        for conns in (1, 32):
            lab = "warm %d MiB blob, %d client%s" % (a.big_mb, conns, "s" if conns > 1 else "")
            add(lab, "MB/s", "blob%d" % conns, "mb_per_s", "%.0f")
            add("", "server CPU s per GiB", "blob%d" % conns, "cpu_s_per_gib", "%.3f")
            if conns == 1:  # with 32 clients, few 200 MiB GETs end within a run
                add("", "p99 ms per blob", "blob%d" % conns, "p99_ms", "%.0f")
            add("", "upstream requests per run", "blob%d" % conns, "upstream_requests", "%d",
                servers=("regproxy", "peer"))
            add("", "errors (all runs)", "blob%d" % conns, "errors", "%d", "sum")
        lab = ("warm %d MiB blob over TLS, 1 client (curl, %d GETs a run; peer not run: it "
               "serves plain here)" % (a.big_mb, TLS_GETS))
        add(lab, "MB/s", "tls1", "mb_per_s", "%.0f")
        add("", "server CPU s per GiB", "tls1", "cpu_s_per_gib", "%.3f")
        add("", "server RSS growth MiB", "tls1", "rss_growth_mib", "%.1f")
        add("", "errors (all runs)", "tls1", "errors", "%d", "sum")
        add("warm manifest by tag (in TTL), 64 conns", "req/s", "manifest", "req_per_s", "%.0f")
        add("", "p99 ms", "manifest", "p99_ms", "%.2f")
        add("", "server CPU ms per 1k req", "manifest", "cpu_ms_per_kreq", "%.1f")
        add("", "upstream requests per run", "manifest", "upstream_requests", "%d",
            servers=("regproxy", "peer"))
        add("", "errors (all runs)", "manifest", "errors", "%d", "sum")
        hs = ("regproxy", "peer")
        lab = ("herd: %d concurrent cold GETs of the %d MiB blob (nginx: warm, the cost of "
               "delivering them)" % (a.herd, a.mid_mb))
        add(lab, "upstream GETs of the blob", "herd", "upstream_gets", "%d", servers=hs)
        add("", "wall s, herd", "herd", "seconds", "%.2f")
        add("", "wall s, one cold GET alone (nginx: warm)", "herd", "single_s", "%.2f")
        add("", "herd / single", "herd", "herd_over_single", "%.1f")
        add("", "errors (all runs)", "herd", "errors", "%d", "sum")
        lab = ("herd over a %d Mbit/s upstream: %d concurrent cold GETs of the %d MiB blob "
               "(%.2f s at that rate)" % (a.herd_wan_mbit, a.herd, a.mid_mb,
                                          a.mid_mb * MiB * 8 / (a.herd_wan_mbit * 1e6 or 1)))
        add(lab, "upstream GETs of the blob", "herd_wan", "upstream_gets", "%d", servers=hs)
        add("", "wall s, herd", "herd_wan", "seconds", "%.2f", servers=hs)
        add("", "wall s, one cold GET alone", "herd_wan", "single_s", "%.2f", servers=hs)
        add("", "herd / single", "herd_wan", "herd_over_single", "%.1f", servers=hs)
        add("", "errors (all runs)", "herd_wan", "errors", "%d", "sum", servers=hs)
        lab = "%d idle keep-alive conns held %d s" % (a.idle_conns, a.hold)
        add(lab, "server RSS growth MiB", "idle", "rss_growth_mib", "%.1f")
        add("", "server peak RSS MiB", "idle", "rss_peak_mib", "%.1f")
        add("", "KiB per connection", "idle", "kib_per_conn", "%.1f")
        add("", "not answering after the hold (all runs)", "idle", "not_held", "%d", "sum")
        add("", "errors (all runs)", "idle", "errors", "%d", "sum")
        lab = ("%d slow clients (%.0f MB/s each) on the %d MiB blob, cut at %d s "
               "(proxies cold)" % (a.slow_conns, a.slow_rate / 1e6, a.huge_mb, a.slow_seconds))
        add(lab, "server peak RSS growth MiB", "slow", "peak_rss_growth_mib", "%.1f")
        add("", "MB/s, all clients", "slow", "mb_per_s", "%.1f")
        add("", "upstream GETs of the blob", "slow", "upstream_gets", "%d",
            servers=("regproxy", "peer"))
        add("", "errors (all runs)", "slow", "errors", "%d", "sum")
        for scen, where in (("pull", "into tmpfs (the node is not the proxy's machine)"),
                            ("pull_disk", "onto the disk the proxies cache to"),
                            ("pull_pinned", "into tmpfs, skopeo and upstream on CPU 0, the "
                             "proxy on the others")):
            add("skopeo cold pull of the %d MiB image %s; baseline column: direct from "
                "upstream" % (a.big_mb + a.mid_mb, where), "seconds", scen, "seconds", "%.2f")
            add("", "CPU s, all processes (skopeo, upstream, proxy)", scen, "cpu_s", "%.2f")
            add("", "CPU s, the proxy alone", scen, "proxy_cpu_s", "%.2f",
                servers=("regproxy", "peer"))
            add("", "errors (all runs)", scen, "errors", "%d", "sum")
        add("skopeo cold pull of the %d MiB image into tmpfs, the upstream behind a %d Mbit/s "
            "link per connection; baseline column: direct over the same link"
            % (a.big_mb + a.mid_mb, a.pull_wan_mbit), "seconds", "pull_wan", "seconds", "%.2f")
        add("", "CPU s, the proxy alone", "pull_wan", "proxy_cpu_s", "%.2f",
            servers=("regproxy", "peer"))
        add("", "errors (all runs)", "pull_wan", "errors", "%d", "sum")

        ps = ("regproxy", "nginx")
        add("profile: warm manifest by tag under strace/perf, 8 conns", "system calls per request",
            "profile_manifest", "syscalls_per_req", "%.2f", servers=ps)
        add("", "heap allocations per request", "profile_manifest", "allocs_per_req", "%.2f",
            servers=ps)
        add("profile: warm %d MiB blob under strace/perf, 1 conn" % a.big_mb,
            "system calls per GET", "profile_blob", "syscalls_per_req", "%.0f", servers=ps)
        add("", "heap allocations per GET", "profile_blob", "allocs_per_req", "%.1f",
            servers=ps)

        def fmt(v, f):
            return "n/a" if v is None else f % v

        def ratio(x, y, f):
            if x is None or y is None:
                return ""
            if y == 0:
                return "—"
            q = x / y
            return "%.0f" % q if q >= 100 else "%.2f" % q if q >= 0.1 or q == 0 else "%.2g" % q

        out = ["| scenario | metric | regproxy | peer: docker-registry proxy | "
               "nginx (static) | regproxy / nginx | regproxy / peer |",
               "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for label, metric, vals, f in rows:
            is_err = "errors" in metric or "not answering" in metric
            r_n = "" if is_err else ratio(vals["regproxy"], vals.get("nginx"), f)
            r_p = "" if is_err else ratio(vals["regproxy"], vals.get("peer"), f)
            out.append("| %s | %s | %s | %s | %s | %s | %s |"
                       % (label, metric, fmt(vals["regproxy"], f), fmt(vals.get("peer"), f),
                          fmt(vals.get("nginx"), f), r_n, r_p))
        return "\n".join(out)

    def regproxy_log_summary(self):
        """Warnings and errors regproxy logged during the whole run (every restart appends
        to the same log)."""
        lines = []
        with contextlib.suppress(OSError):
            with open(self.rp_log, errors="replace") as f:
                for line in f:
                    parts = line.split(" ", 2)
                    if len(parts) > 1 and parts[1] in ("warn", "error"):
                        lines.append(line.rstrip())
        return lines


def tcp_settings():
    """Congestion control and default qdisc: with BBR and no fq qdisc, TCP paces itself with
    timers, which on loopback moves the herd's time and CPU from run to run."""
    out = []
    for key, path in (("congestion control", "/proc/sys/net/ipv4/tcp_congestion_control"),
                      ("default qdisc", "/proc/sys/net/core/default_qdisc")):
        with contextlib.suppress(OSError):
            with open(path) as f:
                out.append("%s %s" % (key, f.read().strip()))
    return ", ".join(out) or "settings unknown"


def pacing_note():
    """A line for the results when TCP paces itself with timers (BBR without fq): on loopback
    that work is charged to the sending server, and it bounds the single-client blob and the
    herd (measured 2026-12-01: with cubic, regproxy's single-client blob went from 0.86x to
    1.32x nginx's MB/s, at a tenth of the CPU per GiB, and nginx's own doubled)."""
    def read(path):
        with contextlib.suppress(OSError):
            with open(path) as f:
                return f.read().strip()
        return ""
    cc = read("/proc/sys/net/ipv4/tcp_congestion_control")
    qdisc = read("/proc/sys/net/core/default_qdisc")
    if cc != "bbr" or qdisc.startswith("fq"):
        return None
    return ("- TCP pacing: BBR without an fq qdisc paces with timers, and on loopback that work "
            "is charged to the sending server: the warm single-client blob is bound by it, "
            "and the herd's time moves with it (README, \"Where it falls short\"); cubic, "
            "or BBR with fq, does not have it.")


def versions(binpath):
    out = {}
    for name, argv in (("regproxy", [binpath, "--version"]),
                       ("docker-registry", ["docker-registry", "--version"]),
                       ("nginx", ["nginx", "-v"]), ("skopeo", ["skopeo", "--version"])):
        try:
            p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               timeout=10)
            out[name] = p.stdout.decode().strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired, IndexError) as e:
            out[name] = "? (%s)" % e
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(ROOT, "regproxy"))
    ap.add_argument("--loadgen", default=os.path.join(ROOT, "build", "bench", "loadgen"))
    ap.add_argument("--out", default=os.path.join(ROOT, "build", "bench"))
    ap.add_argument("--reps", type=int, default=int(os.environ.get("BENCH_REPS", 3)))
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_SECONDS", 4)),
                    help="length of each throughput run")
    ap.add_argument("--big-mb", type=int, default=200, help="MiB, the warm blob")
    ap.add_argument("--mid-mb", type=int, default=50, help="MiB, the herd's blob")
    ap.add_argument("--huge-mb", type=int, default=1024, help="MiB, the slow clients' blob")
    ap.add_argument("--herd", type=int, default=100, help="concurrent cold GETs")
    ap.add_argument("--herd-wan-mbit", type=int, default=100,
                    help="Mbit/s of the shaped upstream the herd runs a second time behind "
                    "(0: no second run)")
    ap.add_argument("--pull-wan-mbit", type=int, default=100,
                    help="Mbit/s per connection of the shaped upstream the cold pull runs a "
                    "second time behind (0: no second run)")
    ap.add_argument("--idle-conns", type=int, default=10000)
    ap.add_argument("--hold", type=int, default=5, help="seconds the idle connections are held")
    ap.add_argument("--slow-conns", type=int, default=32)
    ap.add_argument("--slow-rate", type=int, default=1000000, help="bytes/s per slow client")
    ap.add_argument("--slow-seconds", type=int, default=20)
    ap.add_argument("--profile-requests", type=int, default=20000,
                    help="requests made under strace/perf in the profile scenario")
    ap.add_argument("--only", default="", help="comma-separated subset of: blob,tls,manifest,idle,"
                    "herd,slow,pull,profile; herd includes herd_wan (the herd behind the "
                    "shaped upstream), which can also be named alone")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs, caches)")
    ap.add_argument("--max-minutes", type=float, default=40,
                    help="hard bound on the whole run")
    args = ap.parse_args()
    for path in (args.bin, args.loadgen):
        if not os.access(path, os.X_OK):
            sys.exit("bench: %s not found: run `make bench`" % path)
    os.environ["PATH"] = os.environ.get("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin"
    for tool in ("docker-registry", "nginx", "skopeo"):
        if not shutil.which(tool):
            sys.exit("bench: %s not installed: run `make deps`" % tool)

    # Children inherit this: 10k connections need more than the usual 1024 descriptors.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else hard
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile < args.idle_conns + 100:
        log("RLIMIT_NOFILE is %d: the idle scenario is cut to %d connections"
            % (nofile, nofile - 200))
        args.idle_conns = max(100, nofile - 200)

    started = time.time()
    load0 = os.getloadavg()
    b = Bench(args)

    def cleanup():
        kill_all()
        if args.keep:
            log("kept %s" % b.tmp)
        else:
            shutil.rmtree(b.tmp, ignore_errors=True)
    atexit.register(cleanup)

    def on_signal(sig, frame):
        raise SystemExit("bench: %s" % ("out of time (--max-minutes)" if sig == signal.SIGALRM
                                        else "interrupted"))
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGALRM, on_signal)
    signal.alarm(int(args.max_minutes * 60))

    only = set(x for x in args.only.split(",") if x)
    b.setup()
    for name, fn in (("blob", lambda: (b.warm_blob(1), b.warm_blob(32))), ("tls", b.tls_blob),
                     ("manifest", b.manifest), ("idle", b.idle), ("herd", b.herd),
                     ("herd_wan", b.herd_wan), ("slow", b.slow), ("pull", b.cold_pull),
                     ("pull_wan", b.cold_pull_wan),
                     ("profile", b.profile)):
        if only and name not in only and name.split("_")[0] not in only:
            continue
        try:
            fn()
        except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as e:
            # One broken scenario still leaves the others worth reporting.
            b.note("scenario %s stopped: %s" % (name, e))
            b.revive()
    # A clean stop is part of the result.
    if b.rp is not None:
        b.stop_regproxy()
    signal.alarm(0)

    table = b.table()
    elapsed = time.time() - started
    vers = versions(args.bin)
    rp_lines = b.regproxy_log_summary()
    if os.environ.get("MAKELEVEL"):
        cmd = "make bench" + (' BENCH_ARGS="%s"' % " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    else:
        cmd = " ".join(["bench/run.py"] + sys.argv[1:])
    head = ["# regproxy benchmarks", "",
            "- date: %s" % datetime.datetime.now(datetime.timezone.utc)
            .strftime("%Y-%m-%d %H:%M UTC"),
            "- machine: `nproc` = %d, %s, kernel %s; TCP %s" % (
                os.cpu_count() or 0, "%.0f GiB RAM" % (os.sysconf("SC_PHYS_PAGES") * PAGE / GiB),
                os.uname().release, tcp_settings()),
            "- command: `%s` (%d run%s per scenario and server, medians; %.0f s in all)"
            % (cmd, args.reps, "" if args.reps == 1 else "s", elapsed),
            "- versions: " + "; ".join("%s" % v for v in vers.values()),
            "- load generator and servers share the machine's cores (load average %.1f before "
            "the run, %.1f after, counting the bench's own processes): prefer the CPU-per-GiB "
            "figures and the ratios to absolute numbers." % (load0[1], os.getloadavg()[1])]
    if pacing_note():
        head.append(pacing_note())
    head.append("")
    legend = ["",
              "Ratios are regproxy ÷ other: above 1 is better for MB/s and req/s, below 1 is "
              "better for CPU, latency, RSS, seconds and upstream GETs. The peer is Debian's "
              "docker-registry (CNCF distribution) in pull-through proxy mode; nginx serves the "
              "same files statically with sendfile (one worker, like regproxy's one event "
              "loop), so it is the ceiling for warm serving, not a cache. Access logging is on "
              "in all three. Server CPU is utime+stime of all the server's processes from "
              "/proc; RSS is sampled every 0.1 s. The idle and slow-client scenarios restart "
              "every server before each run (regproxy and the peer with empty caches); the herd "
              "and cold-pull scenarios restart regproxy and the peer with empty caches before "
              "each run, and the herd's single cold GET runs on a fresh cache of its own."]
    if "herd" in b.results:
        legend[-1] += (" In the herd, nginx serves the blob it already has: its herd wall time "
                       "is what delivering %d copies over loopback costs on this machine, the "
                       "floor for any proxy, and regproxy / nginx there is how far above that "
                       "floor regproxy's herd is." % args.herd)
    if "herd_wan" in b.results:
        legend[-1] += (" The herd over a %d Mbit/s upstream runs with a second nginx between "
                       "the proxies and the upstream (TLS, limit_rate %d bytes/s, buffering "
                       "in memory only), as when the registry is across the internet; its "
                       "wall time is bounded below both by the blob's time at that rate and "
                       "by the loopback floor above. limit_rate is per connection: a proxy "
                       "that makes many upstream GETs (the peer) gets the full rate on each "
                       "instead of sharing one link as on a real WAN, so this understates the "
                       "peer's penalty." % (args.herd_wan_mbit, args.herd_wan_mbit * 125000))
    if "pull_wan" in b.results:
        legend[-1] += (" The cold pull over a %d Mbit/s link goes through the same kind of "
                       "second nginx (limit_rate %d bytes/s per connection), for the direct "
                       "pull as for the proxies." % (args.pull_wan_mbit,
                                                     args.pull_wan_mbit * 125000))
    legend.append("")
    notes = ["## Notes", ""]
    notes += (["- " + n.replace("\n", "\n  ") for n in b.notes] or
              ["- the runner saw no errors, deaths or failed pulls."])
    for what in ("manifest", "blob"):
        for server, runs in b.results.get("profile_" + what, {}).items():
            for r in runs:
                n = r["requests"]
                if n and r["syscalls"]:
                    notes.append("- profile, %s, %s: system calls per request: %s"
                                 % (what, server, ", ".join(
                                     "%s %.2f" % (k, v / n) for k, v in
                                     sorted(r["syscalls"].items(), key=lambda kv: -kv[1]))))
    if rp_lines:
        # Grouped by message (the time stamp dropped), in order of first appearance.
        groups = {}
        for line in rp_lines:
            msg = line.split(" ", 1)[1] if " " in line else line
            groups[msg] = groups.get(msg, 0) + 1
        notes.append("- regproxy logged %d warn/error lines over %d starts:"
                     % (len(rp_lines), b.rp_starts))
        notes += ["  - %d× `%s`" % (n, msg[:300]) for msg, n in list(groups.items())[:15]]
    else:
        notes.append("- regproxy logged no warn/error lines.")
    text = "\n".join(head + [table] + legend + notes) + "\n"
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"args": vars(args), "versions": vers, "results": b.results,
                   "notes": b.notes, "regproxy_log": rp_lines[:200]}, f, indent=1)
    print(text)
    log("written to %s/results.md (raw runs in results.json)" % args.out)


if __name__ == "__main__":
    main()
