# SPDX-License-Identifier: Apache-2.0
"""Packaging: `make install`/`uninstall` (PREFIX, DESTDIR, the example configuration kept),
the systemd unit (systemd-analyze verify and security, sysusers.d), the man page (renders
without warnings, documents every command, option and configuration key), the Containerfile
(parsed: instructions, stages, COPY sources, runtime packages in Debian and covering every
library the binary links), and the Kubernetes/OpenShift manifests (parsed; probes on the
admin port; the ConfigMap's configuration with the Secret's credentials passes
`regproxy check`). Nothing here needs the upstream registries.

Tools that are missing are reported as "skipped: ..." lines and the check is left out; the
rest of the test still runs."""
import base64
import json
import os
import re
import shlex
import shutil
import stat
import subprocess

import lib
from lib import check, eq, fail

ROOT = lib.ROOT
DIST = os.path.join(ROOT, "dist")


def skipped(what, why):
    print("    skipped: %s: %s" % (what, why), flush=True)


def run(argv, env=None, cwd=None, timeout=120, input_=None):
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
                       timeout=timeout, input=input_, preexec_fn=lib._child_setup)
    p.out = p.stdout.decode("utf-8", "replace")
    p.err = p.stderr.decode("utf-8", "replace")
    return p


def make_env():
    # A run under `make test` passes its MAKEFLAGS (and SANITIZE=1 etc.) down: not wanted.
    env = lib.clean_env()
    for k in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES", "PREFIX", "DESTDIR"):
        env.pop(k, None)
    return env


def make(t, *args):
    p = run(["make", "-s", "-C", ROOT, "INSTALL_BIN=" + t.s.bin] + list(args), env=make_env())
    check(p.returncode == 0, "make %s failed (exit %d):\n%s%s"
          % (" ".join(args), p.returncode, p.out[-2000:], p.err[-2000:]))
    return p


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


# ----------------------------------------------------------------------------- install

def test_install_layout(t):
    d = os.path.join(t.tmp, "destdir")
    make(t, "install", "DESTDIR=" + d)
    want = {"usr/local/bin/regproxy": 0o755,
            "usr/local/share/man/man1/regproxy.1": 0o644,
            "usr/local/lib/systemd/system/regproxy.service": 0o644,
            "usr/local/lib/sysusers.d/regproxy.conf": 0o644,
            "etc/regproxy/regproxy.conf": 0o640}
    for rel, m in want.items():
        p = os.path.join(d, rel)
        check(os.path.isfile(p), "make install DESTDIR=%s did not install %s (found: %s)"
              % (d, rel, sorted(os.path.relpath(os.path.join(dp, f), d)
                                for dp, _, fs in os.walk(d) for f in fs)))
        eq(oct(mode(p)), oct(m), "mode of installed %s" % rel)
    eq(lib.sha256_file(os.path.join(d, "usr/local/bin/regproxy")), lib.sha256_file(t.s.bin),
       "installed binary")
    p = run([os.path.join(d, "usr/local/bin/regproxy"), "--version"])
    check(p.returncode == 0 and p.out.startswith("regproxy "),
          "installed regproxy --version: exit %d, %r" % (p.returncode, p.out + p.err))
    with open(os.path.join(ROOT, "conf", "regproxy.conf")) as f:
        eq(open(os.path.join(d, "etc/regproxy/regproxy.conf")).read(), f.read(),
           "installed example configuration (conf/regproxy.conf)")
    unit = open(os.path.join(d, "usr/local/lib/systemd/system/regproxy.service")).read()
    check("\nExecStart=/usr/local/bin/regproxy serve -c /etc/regproxy/regproxy.conf\n" in unit,
          "installed unit's ExecStart should run /usr/local/bin/regproxy with "
          "/etc/regproxy/regproxy.conf:\n%s" % unit)

    # A second install keeps an edited configuration.
    conf = os.path.join(d, "etc/regproxy/regproxy.conf")
    with open(conf, "a") as f:
        f.write("# edited by the admin\n")
    os.chmod(conf, 0o600)
    make(t, "install", "DESTDIR=" + d)
    check(open(conf).read().endswith("# edited by the admin\n"),
          "make install overwrote an existing %s" % conf)
    eq(oct(mode(conf)), oct(0o600), "mode of the kept configuration")

    # PREFIX=/usr: the binary in /usr/bin, the unit in /lib/systemd/system.
    d2 = os.path.join(t.tmp, "destdir-usr")
    make(t, "install", "DESTDIR=" + d2, "PREFIX=/usr")
    for rel in ("usr/bin/regproxy", "usr/share/man/man1/regproxy.1",
                "lib/systemd/system/regproxy.service", "usr/lib/sysusers.d/regproxy.conf",
                "etc/regproxy/regproxy.conf"):
        check(os.path.isfile(os.path.join(d2, rel)),
              "make install PREFIX=/usr DESTDIR=%s did not install %s" % (d2, rel))
    check(not os.path.exists(os.path.join(d2, "usr/lib/systemd/system/regproxy.service")),
          "with PREFIX=/usr the unit belongs in /lib/systemd/system only")
    unit = open(os.path.join(d2, "lib/systemd/system/regproxy.service")).read()
    check("\nExecStart=/usr/bin/regproxy serve -c /etc/regproxy/regproxy.conf\n" in unit,
          "PREFIX=/usr unit's ExecStart should be /usr/bin/regproxy")

    # uninstall removes what install put there, but not the configuration.
    make(t, "uninstall", "DESTDIR=" + d)
    left = sorted(os.path.relpath(os.path.join(dp, f), d)
                  for dp, _, fs in os.walk(d) for f in fs)
    eq(left, ["etc/regproxy/regproxy.conf"], "files left after make uninstall")
    make(t, "uninstall", "DESTDIR=" + d2, "PREFIX=/usr")
    left = sorted(os.path.relpath(os.path.join(dp, f), d2)
                  for dp, _, fs in os.walk(d2) for f in fs)
    eq(left, ["etc/regproxy/regproxy.conf"], "files left after make uninstall PREFIX=/usr")


# ------------------------------------------------------------------------------ systemd

def unit_settings(text):
    """[(section, key, value)] of a unit file (continuation lines joined)."""
    out, sec = [], None
    for line in re.sub(r"\\\n", " ", text).splitlines():
        s = line.strip()
        if not s or s[0] in "#;":
            continue
        m = re.match(r"^\[(\w+)\]$", s)
        if m:
            sec = m.group(1)
            continue
        k, sep, v = s.partition("=")
        check(sep and sec, "regproxy.service: not a setting: %r" % line)
        out.append((sec, k.strip(), v.strip()))
    return out


def test_systemd_unit(t):
    path = os.path.join(DIST, "regproxy.service")
    settings = unit_settings(open(path).read())
    svc = {}
    for sec, k, v in settings:
        if sec == "Service":
            svc.setdefault(k, []).append(v)

    def one(k):
        check(k in svc, "regproxy.service sets no %s=" % k)
        return svc[k][-1]
    eq(one("User"), "regproxy", "User=")
    # The proxy sends READY=1 (test_ops.test_systemd_notify); AF_UNIX below carries it.
    eq(one("Type"), "notify", "Type=")
    eq(one("NotifyAccess"), "main", "NotifyAccess=")
    # Waiting for READY=1 must not put a bound on opening a large cache (a rebuild of its
    # index stats every file): killed at the start timeout, it would restart and rescan.
    eq(one("TimeoutStartSec"), "infinity", "TimeoutStartSec=")
    if "DynamicUser" in svc:
        eq(one("DynamicUser"), "no", "DynamicUser= (a static user owns the credential files)")
    eq(one("ProtectSystem"), "strict", "ProtectSystem=")
    eq(svc.get("ReadWritePaths"), ["/var/cache/regproxy"],
       "ReadWritePaths= (write access only to the cache)")
    for k in ("ProtectHome", "PrivateTmp", "NoNewPrivileges"):
        eq(one(k), "yes", "%s=" % k)
    eq(one("CapabilityBoundingSet"), "", "CapabilityBoundingSet= (ports above 1024)")
    eq(sorted(one("RestrictAddressFamilies").split()), ["AF_INET", "AF_INET6", "AF_UNIX"],
       "RestrictAddressFamilies=")
    eq(svc.get("SystemCallFilter", [""])[0], "@system-service", "first SystemCallFilter=")
    eq(one("LimitNOFILE"), "65536", "LimitNOFILE=")
    eq(one("ExecReload"), "/bin/kill -HUP $MAINPID", "ExecReload=")
    eq(one("Restart"), "on-failure", "Restart=")
    argv = shlex.split(one("ExecStart"))
    eq(argv[1:], ["serve", "-c", "/etc/regproxy/regproxy.conf"], "ExecStart= arguments")

    # sysusers.d creates the user the unit runs as.
    su = shutil.which("systemd-sysusers")
    if su:
        root = os.path.join(t.tmp, "sysroot")
        os.makedirs(os.path.join(root, "etc"))
        p = run([su, "--root=" + root, os.path.join(DIST, "regproxy.sysusers")])
        check(p.returncode == 0, "systemd-sysusers --root: %s" % p.err)
        users = [x.split(":") for x in open(os.path.join(root, "etc/passwd"))]
        check(any(u[0] == "regproxy" and u[5] == "/var/cache/regproxy" for u in users),
              "dist/regproxy.sysusers did not create regproxy: %r" % users)
    else:
        skipped("systemd-sysusers check", "systemd-sysusers is not installed")

    sa = shutil.which("systemd-analyze")
    if not sa:
        skipped("systemd-analyze verify", "systemd-analyze is not installed (package systemd)")
        return
    # Verify the unit as `make install` writes it; systemd-analyze wants ExecStart's binary
    # and Documentation='s man page to exist, so point them at the staged install.
    d = os.path.join(t.tmp, "destdir")
    make(t, "install", "DESTDIR=" + d)
    udir = os.path.join(t.tmp, "unit")
    os.makedirs(udir)
    unit = open(os.path.join(d, "usr/local/lib/systemd/system/regproxy.service")).read()
    unit = unit.replace("ExecStart=/usr/local/bin/regproxy ",
                        "ExecStart=%s/usr/local/bin/regproxy " % d)
    upath = os.path.join(udir, "regproxy.service")
    with open(upath, "w") as f:
        f.write(unit)
    env = lib.clean_env({"MANPATH": os.path.join(d, "usr/local/share/man"),
                         "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""})
    p = run([sa, "verify", upath], env=env)
    check(p.returncode == 0 and not p.err.strip() and not p.out.strip(),
          "systemd-analyze verify regproxy.service: exit %d\n%s%s"
          % (p.returncode, p.out, p.err))
    p = run([sa, "security", "--offline=true", "--no-pager", upath], env=env)
    m = re.search(r"Overall exposure level for regproxy\.service: ([\d.]+)", p.out)
    if p.returncode != 0 and not m:
        skipped("systemd-analyze security", "this systemd cannot analyse offline (%s)"
                % (p.err.strip().splitlines() or ["?"])[-1])
        return
    check(m, "no exposure level in systemd-analyze security output:\n%s" % p.out[-2000:])
    check(float(m.group(1)) <= 2.0, "systemd-analyze security: exposure %s (want <= 2.0):\n%s"
          % (m.group(1), "\n".join(x for x in p.out.splitlines() if "\u2717" in x)))


# ------------------------------------------------------------------------------ man page

def test_man_page(t):
    src_path = os.path.join(ROOT, "docs", "regproxy.1")
    src = open(src_path).read()
    groff = shutil.which("groff")
    if groff:
        p = run([groff, "-man", "-Tutf8", "-ww", "-z", src_path])
        check(p.returncode == 0 and not p.err.strip(),
              "groff -man -ww reports problems in docs/regproxy.1:\n%s" % p.err)
        p = run([groff, "-man", "-Tutf8", src_path],
                env=lib.clean_env({"LC_ALL": "C.UTF-8"}))
        check("REGPROXY(1)" in p.out, "docs/regproxy.1 renders without its title")
    else:
        skipped("man page rendering", "groff is not installed (package groff-base)")
    # What it documents, compared on the source with escapes removed.
    text = re.sub(r"\\f[BIRP]|\\\(dq", "", src).replace("\\-", "-").replace("\\e", "\\")
    words = set(re.findall(r"[\w./-]+", text))

    p = run([t.s.bin, "--help"])
    eq(p.returncode, 0, "regproxy --help exit status")
    help_text = p.out
    cmds = re.findall(r"^  (\w+)(?: \[|\s{2,})", help_text.split("options:")[0], re.M)
    opts = re.findall(r"(--?[\w-]+)", help_text.split("options:")[1])
    check(cmds and opts, "could not read commands/options from regproxy --help:\n" + help_text)
    for c in cmds:
        check(re.search(r"^\.B %s$" % c, src, re.M) or re.search(r"regproxy %s\b" % c, text),
              "docs/regproxy.1 does not document the command %r" % c)
    for o in opts:
        check(o in words, "docs/regproxy.1 does not document the option %s" % o)

    # Every configuration key of conf/conf.c's option table, under its section.
    conf_c = open(os.path.join(ROOT, "conf", "conf.c")).read()
    table = conf_c[conf_c.index("options[] = {"):]
    table = table[:table.index("\n};")]
    keys = re.findall(r"\.section = RP_CONF_SECTION_(\w+),\s*\.key = \"(\w+)\"", table)
    check(len(keys) > 10, "could not read the option table of conf/conf.c")
    sections = {}
    for m in re.finditer(r'^\.SS \[(\w+)', text, re.M):
        sections[m.group(1)] = m.start()
    for sec, key in keys:
        sec = sec.lower()
        check(sec in sections, "docs/regproxy.1 has no .SS [%s] section" % sec)
        start = sections[sec]
        end = min([v for v in sections.values() if v > start] + [text.index(".SH", start)])
        check(re.search(r"^\.B %s$" % key, text[start:end], re.M),
              "docs/regproxy.1 does not document %s in [%s]" % (key, sec))
    # Where the logs go and what an access line holds: an operator setting up rotation or
    # a log pipeline had only the source to read.
    for needed in ("/metrics", "/healthz", "/readyz", "SIGHUP", "/var/cache/regproxy",
                   "127.0.0.1:5001", ".SH LOGGING", "standard error", "X-Request-Id"):
        check(needed in text, "docs/regproxy.1 does not mention %s" % needed)


# --------------------------------------------------------------------------- Containerfile

INSTRUCTIONS = {"FROM", "RUN", "COPY", "ADD", "WORKDIR", "USER", "EXPOSE", "VOLUME", "ENV",
                "ARG", "LABEL", "ENTRYPOINT", "CMD", "HEALTHCHECK", "STOPSIGNAL", "SHELL",
                "ONBUILD"}


def parse_containerfile(path):
    """[(lineno, INSTRUCTION, args)] with continuation lines joined and comments dropped."""
    out, buf, start = [], "", 0
    for i, line in enumerate(open(path).read().splitlines(), 1):
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and s.startswith("#"):
            continue  # comment lines inside a continuation are dropped, as docker does
        if not buf:
            start = i
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        word, _, rest = buf.partition(" ")
        out.append((start, word.upper(), rest.strip()))
        check(word.isupper(), "%s:%d: instruction %r not in upper case" % (path, start, word))
        buf = ""
    check(not buf, "%s: ends inside a continuation line" % path)
    return out


# Shared-library packages in every debian:bookworm-slim image (dependencies of its essential
# packages).
SLIM_BASE = {"libc6", "libgcc-s1", "zlib1g", "libcrypt1", "libzstd1", "liblzma5", "libbz2-1.0"}


def apt_lists_present():
    d = "/var/lib/apt/lists"
    return os.path.isdir(d) and any(f.endswith(("Packages", "Packages.lz4", "Packages.gz",
                                                "Packages.xz")) for f in os.listdir(d))


def apt_installs(run_args):
    """Package names of every `apt-get install` in a RUN line."""
    pkgs = []
    for cmd in re.split(r"&&|;", run_args):
        words = cmd.split()
        if "apt-get" in words and "install" in words:
            pkgs += [w for w in words[words.index("install") + 1:] if not w.startswith("-")]
    return pkgs


def test_containerfile(t):
    path = os.path.join(DIST, "Containerfile")
    ins = parse_containerfile(path)
    stages, cur = [], None
    for ln, word, args in ins:
        check(word in INSTRUCTIONS, "dist/Containerfile:%d: unknown instruction %s" % (ln, word))
        check(args, "dist/Containerfile:%d: %s without arguments" % (ln, word))
        if word == "FROM":
            m = re.match(r"^(\S+)(?:\s+AS\s+(\w[\w.-]*))?$", args, re.I)
            check(m, "dist/Containerfile:%d: malformed FROM %r" % (ln, args))
            check(re.match(r"^[\w.-]+(:\d+)?(/[\w.-]+)+:[\w.-]+$", m.group(1)),
                  "dist/Containerfile:%d: base image %r is not a pinned name:tag"
                  % (ln, m.group(1)))
            cur = {"name": m.group(2), "image": m.group(1), "lines": []}
            stages.append(cur)
            continue
        check(cur is not None, "dist/Containerfile:%d: %s before the first FROM" % (ln, word))
        cur["lines"].append((ln, word, args))
    eq(len(stages), 2, "stages in dist/Containerfile (build + runtime)")
    build, runtime = stages
    check(build["image"].endswith("debian:bookworm") and build["name"],
          "build stage should be a named debian:bookworm stage: %r" % build)
    check(runtime["image"].endswith("debian:bookworm-slim"),
          "runtime stage should be debian:bookworm-slim: %r" % runtime["image"])

    def lines(stage, word):
        return [(ln, a) for ln, w, a in stage["lines"] if w == word]

    # Exec-form (JSON) ENTRYPOINT/CMD, so signals reach regproxy directly.
    for word in ("ENTRYPOINT", "CMD"):
        (ln, a), = lines(runtime, word)
        try:
            v = json.loads(a)
        except ValueError:
            fail("dist/Containerfile:%d: %s is not exec form (a JSON array): %r" % (ln, word, a))
        check(isinstance(v, list) and all(isinstance(x, str) for x in v),
              "dist/Containerfile:%d: %s must be a JSON array of strings" % (ln, word))
    entry = json.loads(lines(runtime, "ENTRYPOINT")[0][1])
    cmd = json.loads(lines(runtime, "CMD")[0][1])
    eq(cmd[:2], ["serve", "-c"], "CMD")
    (ln, user), = lines(runtime, "USER")
    check(user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0,
          "dist/Containerfile:%d: USER must be a numeric non-root uid (runAsNonRoot): %r"
          % (ln, user))
    eq(sorted(" ".join(a for _, a in lines(runtime, "EXPOSE")).split()), ["5000", "5001"],
       "EXPOSE")
    eq([a for _, a in lines(runtime, "VOLUME")], ["/var/cache/regproxy"], "VOLUME")
    eq(lines(runtime, "HEALTHCHECK"), [], "HEALTHCHECK (the runtime image has no HTTP client)")

    # COPY: sources exist in the build context (the source tree), --from names a stage, and
    # the files ENTRYPOINT/CMD use are put there.
    names = {s["name"] for s in stages if s["name"]}
    dests = []
    for stage in stages:
        for ln, a in lines(stage, "COPY") + lines(stage, "ADD"):
            words = a.split()
            flags = [w for w in words if w.startswith("--")]
            paths = [w for w in words if not w.startswith("--")]
            check(len(paths) >= 2, "dist/Containerfile:%d: COPY needs SRC... DEST" % ln)
            frm = [f.split("=", 1)[1] for f in flags if f.startswith("--from=")]
            if frm:
                check(frm[0] in names, "dist/Containerfile:%d: COPY --from=%s: no such stage"
                      % (ln, frm[0]))
            else:
                for src in paths[:-1]:
                    check(os.path.exists(os.path.join(ROOT, src)),
                          "dist/Containerfile:%d: COPY source %s is not in the source tree"
                          % (ln, src))
            if stage is runtime:
                dests.append(paths[-1])
    check(entry[0] in dests, "ENTRYPOINT %s is not COPY'd into the runtime stage" % entry[0])
    check(cmd[2] in dests, "CMD's configuration %s is not COPY'd into the runtime stage" % cmd[2])

    # The build stage's COPY lines carry everything `make regproxy` needs: replay them into
    # an empty directory and ask make for its plan (-n fails on a missing prerequisite).
    ctx = os.path.join(t.tmp, "build-context")
    os.makedirs(ctx)
    workdir = ctx
    for ln, w, a in build["lines"]:
        if w == "WORKDIR":
            workdir = ctx
        if w != "COPY":
            continue
        paths = [x for x in a.split() if not x.startswith("--")]
        dest = paths[-1]
        for src in paths[:-1]:
            target = os.path.join(workdir, dest)
            s = os.path.join(ROOT, src)
            if os.path.isdir(s):
                shutil.copytree(s, target, dirs_exist_ok=True)
            else:
                if dest.endswith("/"):
                    target = os.path.join(target, os.path.basename(src))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copy2(s, target)
    make_cmds = [c.split() for _, a in lines(build, "RUN") for c in re.split(r"&&|;", a)
                 if c.split()[:1] == ["make"]]
    check(make_cmds, "the build stage never runs make")
    targets = [w for w in make_cmds[0][1:] if not w.startswith("-") and "=" not in w]
    p = run(["make", "-n", "-C", ctx] + targets, env=make_env())
    check(p.returncode == 0, "`make -n` in a context holding only the build stage's COPY "
          "sources fails (a source missing from COPY?):\n%s" % p.err[-2000:])
    # An out-of-date host build/ must not leak into the image.
    check(not os.path.exists(os.path.join(ctx, "build")), "the build stage copies build/")

    build_pkgs = [x for _, a in lines(build, "RUN") for x in apt_installs(a)]
    runtime_pkgs = [x for _, a in lines(runtime, "RUN") for x in apt_installs(a)]
    for want in ("libevent-2.1-7", "libevent-openssl-2.1-7", "libcurl4", "libjansson4",
                 "liblz4-1", "libssl3", "libyaml-0-2", "ca-certificates"):
        check(want in runtime_pkgs, "runtime stage does not install %s" % want)
    check(not [x for x in runtime_pkgs if x.endswith("-dev") or x in ("gcc", "make")],
          "runtime stage installs build tools: %r" % runtime_pkgs)
    if not (shutil.which("apt-cache") and apt_lists_present()):
        skipped("Debian package names in dist/Containerfile",
                "no apt lists here (apt-get update has not run)")
        return
    p = run(["apt-cache", "show", "--no-all-versions"] + build_pkgs + runtime_pkgs)
    known = set(re.findall(r"^Package: (\S+)$", p.out, re.M))
    missing = [x for x in build_pkgs + runtime_pkgs if x not in known]
    check(not missing, "dist/Containerfile installs %s, which Debian does not have:\n%s"
          % (", ".join(missing), p.err[-1000:]))
    # Every shared library the binary needs comes from a runtime-stage package or from the
    # few library packages every debian:bookworm-slim image has.
    if not (shutil.which("readelf") and shutil.which("dpkg")):
        skipped("runtime library coverage", "readelf or dpkg missing")
        return
    p = run(["readelf", "-d", t.s.bin])
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", p.out)
    check(needed, "readelf -d %s shows no NEEDED libraries" % t.s.bin)
    cache = run(["ldconfig", "-p"]).out
    for so in needed:
        if re.match(r"lib(asan|ubsan|tsan|lsan|msan|stdc\+\+|gcc_s|m|pthread|dl|rt)\.so",
                    so):
            continue  # sanitizer runtime of a test build, or part of the toolchain/libc
        m = re.search(r"^\s*%s \(libc6,x86-64[^)]*\) => (\S+)$" % re.escape(so), cache, re.M) \
            or re.search(r"^\s*%s \([^)]*\) => (\S+)$" % re.escape(so), cache, re.M)
        check(m, "ldconfig -p does not know %s" % so)
        owner = run(["dpkg", "-S", os.path.realpath(m.group(1))])
        if owner.returncode != 0:
            owner = run(["dpkg", "-S", m.group(1)])
        check(owner.returncode == 0, "dpkg -S %s: %s" % (m.group(1), owner.err))
        pkg = owner.out.split(":")[0].strip()
        if pkg in runtime_pkgs:
            continue
        check(pkg in SLIM_BASE, "regproxy needs %s from %s, which the runtime stage does not "
              "install (debian:bookworm-slim itself has only %s)"
              % (so, pkg, ", ".join(sorted(SLIM_BASE))))


def _package_of_command(cmd):
    """The Debian package shipping command `cmd` on this (bookworm) machine, or None."""
    for d in ("/bin", "/usr/bin", "/sbin", "/usr/sbin"):
        p = run(["dpkg", "-S", os.path.join(d, cmd)])
        m = re.search(r"^([\w.+-]+)(:\w+)?: ", p.out, re.M) if p.returncode == 0 else None
        if m:
            return m.group(1)
    return None


def test_exec_commands_exist_in_image(t):
    """A `kubectl exec ... -- CMD` or `oc exec ... -- CMD` the dist files tell the operator
    to run must find CMD in the image: debian:bookworm-slim holds the Essential and
    required-priority packages, plus what the runtime stage installs."""
    if not shutil.which("dpkg"):
        skipped("exec commands in the image", "dpkg missing")
        return
    ins = parse_containerfile(os.path.join(DIST, "Containerfile"))
    runtime, stage = [], 0
    for _, word, args in ins:
        if word == "FROM":
            stage += 1
        elif word == "RUN" and stage == 2:
            runtime += apt_installs(args)
    found = []
    for sub in ("kubernetes", "openshift"):
        d = os.path.join(DIST, sub)
        for fn in sorted(os.listdir(d)):
            with open(os.path.join(d, fn)) as f:
                for ln, line in enumerate(f, 1):
                    m = re.search(r"\b(?:kubectl|oc) exec\b.*?\s--\s+(\S+)", line)
                    if m:
                        found.append(("dist/%s/%s:%d" % (sub, fn, ln), m.group(1)))
    check(found, "no `kubectl exec ... -- CMD` in dist/kubernetes or dist/openshift")
    for where, cmd in found:
        pkg = _package_of_command(cmd)
        check(pkg, "%s: %s is not a command any Debian package here ships" % (where, cmd))
        if pkg in runtime:
            continue
        q = run(["dpkg-query", "-W", "-f=${Priority} ${Essential}", pkg]).out.split()
        check(q[:1] == ["required"] or q[1:2] == ["yes"],
              "%s: `%s` comes from %s (priority %s), which debian:bookworm-slim does not "
              "have and the runtime stage does not install" % (where, cmd, pkg, q[:1]))


# --------------------------------------------------------------------- Kubernetes/OpenShift

def load_yaml_dir(d):
    import yaml
    docs = {}
    for fn in sorted(os.listdir(d)):
        if not fn.endswith((".yaml", ".yml")):
            continue
        with open(os.path.join(d, fn)) as f:
            try:
                items = [x for x in yaml.safe_load_all(f) if x is not None]
            except yaml.YAMLError as e:
                fail("%s/%s does not parse as YAML: %s" % (os.path.relpath(d, ROOT), fn, e))
        docs[fn] = items
    return docs


def json_patch_remove(obj, ops, what):
    """Applies the `remove` operations of an RFC 6902 patch (all the overlay uses)."""
    for op in ops:
        eq(op.get("op"), "remove", "%s: patch operation" % what)
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        cur = obj
        for p in parts[:-1]:
            cur = cur[int(p)] if isinstance(cur, list) else cur.get(p)
            check(cur is not None, "%s: path %s does not exist" % (what, op["path"]))
        check(parts[-1] in cur, "%s: path %s does not exist" % (what, op["path"]))
        del cur[parts[-1]]


def probe_port(container, probe):
    port = probe["httpGet"]["port"]
    if isinstance(port, str):
        named = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        check(port in named, "probe port %r names no container port" % port)
        port = named[port]
    return port


def check_config(t, conf_text, auth_json, cache_dir_from):
    """Runs `regproxy check` on the ConfigMap's configuration as the pod would see it: the
    Secret's file as the kubelet writes it for an fsGroup (0440), a writable cache dir, and
    test_login = no everywhere (no network). Returns (rc, output)."""
    d = os.path.join(t.tmp, "configcheck")
    os.makedirs(d, exist_ok=True)
    auth = os.path.join(d, "auth.json")
    with open(auth, "w") as f:
        f.write(auth_json)
    os.chmod(auth, 0o440)
    text = conf_text.replace("/run/secrets/regproxy/auth.json", auth)
    text = text.replace(cache_dir_from, os.path.join(d, "cache"))
    text = re.sub(r"^test_login\s*=.*\n", "", text, flags=re.M)
    text = re.sub(r'^(\[registry "[^"]+"\]\n)', r"\1test_login = no\n", text, flags=re.M)
    path = os.path.join(d, "regproxy.conf")
    with open(path, "w") as f:
        f.write(text)
    p = run([t.s.bin, "check", "-c", path], env=lib.clean_env())
    return p.returncode, p.out + p.err, path, text


def test_kubernetes_manifests(t):
    try:
        import yaml  # noqa: F401
    except ImportError:
        fail("python3-yaml is missing (tests/tools/deps.sh installs it)")
    kdir = os.path.join(DIST, "kubernetes")
    docs = load_yaml_dir(kdir)
    by_kind = {}
    for fn, items in docs.items():
        for x in items:
            check(isinstance(x, dict) and x.get("kind") and x.get("apiVersion"),
                  "dist/kubernetes/%s: a document without kind/apiVersion" % fn)
            by_kind.setdefault(x["kind"], []).append(x)
    for kind in ("ConfigMap", "Secret", "PersistentVolumeClaim", "Deployment", "Service",
                 "Kustomization"):
        eq(len(by_kind.get(kind, [])), 1, "number of %s objects in dist/kubernetes" % kind)
    kust = by_kind["Kustomization"][0]
    eq(sorted(kust["resources"]), sorted(f for f in docs if f != "kustomization.yaml"),
       "dist/kubernetes/kustomization.yaml resources")

    dep = by_kind["Deployment"][0]
    cm, secret = by_kind["ConfigMap"][0], by_kind["Secret"][0]
    pvc, svc = by_kind["PersistentVolumeClaim"][0], by_kind["Service"][0]
    pod = dep["spec"]["template"]
    eq(dep["spec"]["selector"]["matchLabels"],
       {k: pod["metadata"]["labels"][k] for k in dep["spec"]["selector"]["matchLabels"]},
       "Deployment selector vs pod labels")
    eq(dep["spec"]["strategy"]["type"], "Recreate",
       "Deployment strategy (a ReadWriteOnce cache has one owner)")
    spec = pod["spec"]
    c, = spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    eq(ports, {"registry": 5000, "admin": 5001}, "container ports")
    eq(c["livenessProbe"]["httpGet"]["path"], "/healthz", "liveness probe path")
    eq(c["readinessProbe"]["httpGet"]["path"], "/readyz", "readiness probe path")
    for name in ("livenessProbe", "readinessProbe"):
        eq(probe_port(c, c[name]), 5001, "%s port (the admin listener)" % name)
    check(spec["securityContext"].get("runAsNonRoot") is True, "pod runAsNonRoot")
    eq(spec["securityContext"].get("fsGroupChangePolicy"), "OnRootMismatch",
       "fsGroupChangePolicy (a cache of many files is not re-chowned at every start)")
    sc = c["securityContext"]
    check(sc.get("allowPrivilegeEscalation") is False and sc.get("readOnlyRootFilesystem")
          is True and sc.get("capabilities", {}).get("drop") == ["ALL"],
          "container securityContext should forbid escalation, mount / read-only and drop "
          "all capabilities: %r" % sc)

    # Service -> the registry port only.
    eq(svc["spec"]["selector"], {k: pod["metadata"]["labels"][k] for k in svc["spec"]["selector"]},
       "Service selector vs pod labels")
    sp, = svc["spec"]["ports"]
    eq(sp["port"], 5000, "Service port")
    tp = sp["targetPort"]
    eq(ports.get(tp, tp), 5000, "Service targetPort")

    # Volumes: each refers to an object here and is mounted where the config expects it.
    vols = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    eq(sorted(vols), sorted(mounts), "volumes vs volumeMounts")
    cfg_vol = next(v for v in vols.values() if "configMap" in v)
    sec_vol = next(v for v in vols.values() if "secret" in v)
    pvc_vol = next(v for v in vols.values() if "persistentVolumeClaim" in v)
    eq(cfg_vol["configMap"]["name"], cm["metadata"]["name"], "ConfigMap volume's name")
    eq(sec_vol["secret"]["secretName"], secret["metadata"]["name"], "Secret volume's name")
    eq(pvc_vol["persistentVolumeClaim"]["claimName"], pvc["metadata"]["name"], "claimName")
    eq(oct(sec_vol["secret"].get("defaultMode", 0o644)), oct(0o400), "Secret defaultMode")
    check(mounts[sec_vol["name"]].get("readOnly") is True, "the Secret is mounted read-only")
    check(mounts[cfg_vol["name"]].get("readOnly") is True, "the ConfigMap is mounted read-only")
    eq(pvc["spec"]["accessModes"], ["ReadWriteOnce"], "PVC accessModes")

    args = c.get("args") or c.get("command")
    conf_path = args[args.index("-c") + 1]
    item, = cfg_vol["configMap"]["items"]
    eq(os.path.join(mounts[cfg_vol["name"]]["mountPath"], item["path"]), conf_path,
       "configuration path in args vs the ConfigMap mount")
    conf_text = cm["data"][item["key"]]
    sitem, = sec_vol["secret"]["items"]
    eq(secret["type"], "kubernetes.io/dockerconfigjson", "Secret type")
    eq(sitem["key"], ".dockerconfigjson", "Secret item key")
    auth_path = os.path.join(mounts[sec_vol["name"]]["mountPath"], sitem["path"])
    check(re.search(r"^auth_file = %s$" % re.escape(auth_path), conf_text, re.M),
          "the ConfigMap's configuration does not read auth_file = %s" % auth_path)
    cache_dir = re.search(r"^dir = (\S+)$", conf_text, re.M).group(1)
    eq(cache_dir, mounts[pvc_vol["name"]]["mountPath"], "[cache] dir vs the PVC mount")
    check(re.search(r"^\[admin\]\nlisten = 0\.0\.0\.0:5001$", conf_text, re.M),
          "the ConfigMap must move the admin listener to 0.0.0.0:5001 for the probes")
    auth_json = secret.get("stringData", {}).get(".dockerconfigjson") or \
        base64.b64decode(secret["data"][".dockerconfigjson"]).decode()
    auths = json.loads(auth_json)["auths"]
    check("registry.redhat.io" in auths, "the Secret has no registry.redhat.io entry")

    rc, out, path, text = check_config(t, conf_text, auth_json, cache_dir)
    if rc != 0 and "unknown section [admin]" in out:
        # The [admin] section is being added to the parser; until then check the rest.
        skipped("[admin] listen in the ConfigMap", "this regproxy does not know [admin] yet "
                "(%s); checking the configuration without it" % out.strip().splitlines()[-1])
        conf_text = re.sub(r"^\[admin\]\nlisten = .*\n", "", conf_text, flags=re.M)
        rc, out, path, text = check_config(t, conf_text, auth_json, cache_dir)
    check(rc == 0 and "configuration ok" in out,
          "regproxy check -c %s (the ConfigMap's configuration with the Secret's file at mode "
          "0440) exit %d:\n%s\n--- configuration:\n%s" % (path, rc, out, text))
    # allow_readable_credentials is what makes the kubelet's 0440 acceptable.
    rc2, out2, _, _ = check_config(
        t, re.sub(r"^allow_readable_credentials = yes\n", "", conf_text, flags=re.M),
        auth_json, cache_dir)
    check(rc2 != 0, "regproxy check accepted a 0440 auth_file without "
          "allow_readable_credentials; the ConfigMap's comment is wrong then:\n%s" % out2)

    # max_size stays below the claim.
    size = re.search(r"^max_size = (\d+)G$", conf_text, re.M)
    claim = re.match(r"^(\d+)Gi$", pvc["spec"]["resources"]["requests"]["storage"])
    check(size and claim and int(size.group(1)) < int(claim.group(1)),
          "[cache] max_size should stay below the PVC's size")

    # OpenShift overlay: the restricted SCC assigns runAsUser/fsGroup.
    odir = os.path.join(DIST, "openshift")
    odocs = load_yaml_dir(odir)
    okust, = odocs["kustomization.yaml"]
    for r in okust["resources"]:
        check(os.path.exists(os.path.join(odir, r)), "dist/openshift resource %s missing" % r)
    patched = json.loads(json.dumps(dep))
    import yaml
    for pt in okust["patches"]:
        eq(pt["target"]["kind"], "Deployment", "overlay patch target")
        json_patch_remove(patched, yaml.safe_load(pt["patch"]), "dist/openshift patch")
    psc = patched["spec"]["template"]["spec"]["securityContext"]
    for k in ("runAsUser", "fsGroup"):
        check(k not in psc, "the OpenShift overlay leaves %s set" % k)
    check(psc.get("runAsNonRoot") is True, "the OpenShift overlay keeps runAsNonRoot")
    route, = [x for items in odocs.values() for x in items if x.get("kind") == "Route"]
    eq(route["spec"]["to"]["name"], svc["metadata"]["name"], "Route target Service")
    eq(route["spec"]["port"]["targetPort"], sp["name"], "Route target port")


def test_kubernetes_liveness_waits_for_the_cache_to_open(t):
    """The admin listener (/healthz) opens only once the cache is open, and opening a cache
    without its index snapshot (after a kill -9, or a SIGKILL at the end of a grace period)
    empties tmp/ and stats every entry: minutes for a large cache on a slow disk, as
    regproxy.service's TimeoutStartSec=infinity says. The Deployment's liveness probe alone
    (initialDelaySeconds 5, 3 failures 10 s apart) killed the pod some 35 s into such an
    open; the next start had no snapshot either, and began again: a crash loop. A
    startupProbe on /healthz holds liveness off until the proxy answers."""
    kdir = os.path.join(DIST, "kubernetes")
    dep = next(x for items in load_yaml_dir(kdir).values() for x in items
               if x.get("kind") == "Deployment")
    c, = dep["spec"]["template"]["spec"]["containers"]
    sp = c.get("startupProbe")
    check(sp, "the regproxy container has no startupProbe: its livenessProbe (%r) kills it "
          "while a large cache opens" % c.get("livenessProbe"))
    eq(sp["httpGet"]["path"], "/healthz", "startupProbe path")
    eq(probe_port(c, sp), 5001, "startupProbe port (the admin listener)")
    window = sp.get("periodSeconds", 10) * sp.get("failureThreshold", 3)
    check(window >= 6 * 3600, "the startupProbe gives the cache %d s to open; a rebuild of a "
          "large cache's index takes minutes, and at the end of the window the pod is killed "
          "and starts over" % window)
