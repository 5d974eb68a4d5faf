#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""regproxy's one test runner: unit binaries, fuzz corpus replay, integration tests.

  tests/run.py [--bin build/san/regproxy] [--unit build/san/tests/unit] [--fuzz build/fuzz]
               [--timeout 300] [--keep] [FILTER ...]

Prints `PASS name` / `FAIL name` (failure details indented below), per-phase timings, and
as its last line exactly `N passed, N failed`. Exits 1 when anything failed or nothing ran.
FILTERs select tests whose name contains one of them; names look like
`unit/conf/test_conf/parse_listen`, `fuzz/fuzz_route/corpus`, `test_api.test_ping`.
"""
import argparse
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SANITIZER_MARKERS = ("AddressSanitizer", "LeakSanitizer", "runtime error:",
                     "UndefinedBehaviorSanitizer")


class Results:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.failed_names = []

    def report(self, name, ok, details=""):
        if ok:
            self.passed += 1
            print("PASS %s" % name, flush=True)
        else:
            self.failed += 1
            self.failed_names.append(name)
            print("FAIL %s" % name)
            if details:
                for line in details.rstrip().splitlines():
                    print("    " + line)
            sys.stdout.flush()


def selected(name, filters):
    return not filters or any(f in name for f in filters)


def is_exe(p):
    return os.path.isfile(p) and os.access(p, os.X_OK)


def tail_text(text, n=40):
    return "\n".join(text.rstrip().splitlines()[-n:])


def run_child(argv, timeout, cwd=None, env=None):
    """Runs argv in its own process group; returns (rc, stdout, stderr, timed_out)."""
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd=cwd, env=env, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), \
            False
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        return -9, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), True
    except BaseException:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        raise


# ------------------------------------------------------------------------------- unit

def unit_phase(unit_dir, filters, res):
    bins = []
    for dp, dns, fns in os.walk(unit_dir):
        dns.sort()
        for fn in sorted(fns):
            p = os.path.join(dp, fn)
            if is_exe(p) and not fn.endswith((".o", ".d", ".a", ".so")):
                bins.append(p)
    if not bins:
        print("(no unit test binaries under %s)" % unit_dir)
    for b in bins:
        rel = os.path.relpath(b, unit_dir)
        bname = "unit/" + rel
        if filters and not any(f in bname or f.startswith(bname + "/") for f in filters):
            continue
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:halt_on_error=1")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        rc, out, err, timed_out = run_child([b], 300, cwd=ROOT, env=env)
        had_fail = False
        for line in out.splitlines():
            m = re.match(r"^(PASS|FAIL) (\S.*)$", line.strip())
            if not m:
                continue
            name = "%s/%s" % (bname, m.group(2))
            if m.group(1) == "FAIL":
                had_fail = True  # the binary's non-zero exit is explained by this line
            if not selected(name, filters) and not any(f in bname for f in filters):
                continue
            if m.group(1) == "PASS":
                res.report(name, True)
            else:
                mine = [x for x in err.splitlines() if m.group(2) in x]
                res.report(name, False, "\n".join(mine[-20:]) or tail_text(err, 20))
        sanitized = any(s in err or s in out for s in SANITIZER_MARKERS)
        if (rc != 0 or sanitized or timed_out) and not had_fail:
            why = ("timed out after 300 s" if timed_out else
                   "exited with status %d" % rc if rc != 0 else "sanitizer report")
            res.report(bname, False, "%s without a FAIL line\n%s" % (why,
                                                                    tail_text(err + out, 40)))


# ------------------------------------------------------------------------------- fuzz

def fuzz_phase(fuzz_dir, filters, res):
    targets = sorted(f for f in os.listdir(fuzz_dir)
                     if f.startswith("fuzz_") and is_exe(os.path.join(fuzz_dir, f)))
    if not targets:
        print("(no fuzz targets in %s)" % fuzz_dir)
    for t in targets:
        exe = os.path.abspath(os.path.join(fuzz_dir, t))
        jobs = []
        corpus = os.path.join(ROOT, "tests", "fuzz", "corpus", t)
        jobs.append(("fuzz/%s/corpus" % t, corpus, True))
        for sub in ("regressions", "crashes"):
            d = os.path.join(ROOT, "tests", "fuzz", sub, t)
            if os.path.isdir(d):
                for f in sorted(os.listdir(d)):
                    if os.path.isfile(os.path.join(d, f)):
                        jobs.append(("fuzz/%s/%s/%s" % (t, sub, f), os.path.join(d, f), False))
        for name, path, is_dir in jobs:
            if not selected(name, filters):
                continue
            if is_dir and not os.path.isdir(path):
                res.report(name, False, "no seed corpus at %s (every fuzz target needs one)"
                           % os.path.relpath(path, ROOT))
                continue
            with tempfile.TemporaryDirectory(prefix="regproxy-fuzz-") as wd:
                argv = [exe, "-rss_limit_mb=4096", "-timeout=30"]
                argv += ["-runs=0", path] if is_dir else [path]
                rc, out, err, timed_out = run_child(argv, 600, cwd=wd)
            if rc == 0 and not timed_out:
                res.report(name, True)
            else:
                res.report(name, False, "%s: exit %d%s\n%s" % (
                    " ".join(argv), rc, " (timed out)" if timed_out else "",
                    tail_text(err + out, 40)))


# ------------------------------------------------------------------------ integration

def collect_integration(filters):
    idir = os.path.join(HERE, "integration")
    sys.path.insert(0, idir)
    tests = []
    # test_fixtures.py first: when the fixtures are broken, nothing after says anything.
    for fn in sorted(os.listdir(idir), key=lambda f: (f != "test_fixtures.py", f)):
        if not (fn.startswith("test_") and fn.endswith(".py")):
            continue
        modname = fn[:-3]
        names = []
        try:
            with open(os.path.join(idir, fn)) as f:
                src = f.read()
            names = re.findall(r"^def (test_\w+)\s*\(", src, re.M)
        except OSError:
            pass
        wanted = [n for n in names if selected("%s.%s" % (modname, n), filters)]
        if not wanted:
            continue
        try:
            spec = importlib.util.spec_from_file_location(modname, os.path.join(idir, fn))
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        except Exception:
            tests.append(("%s.<import>" % modname, None, traceback.format_exc()))
            continue
        for n in wanted:
            fnobj = getattr(mod, n, None)
            if callable(fnobj):
                tests.append(("%s.%s" % (modname, n), fnobj, None))
    return tests


def integration_phase(args, filters, res, tmp):
    tests = collect_integration(filters)
    if not tests:
        return
    import lib  # tests/integration/lib.py, importable once collect_integration ran
    timer = lib.Timer()
    session = lib.Session(os.path.join(tmp, "session"), args.bin, timer)
    os.makedirs(session.tmp, exist_ok=True)
    shown = 0
    try:
        for i, (name, fn, import_error) in enumerate(tests):
            if fn is None:
                res.report(name, False, import_error)
                continue
            t0 = time.monotonic()
            ctx = lib.TestCtx(session, name, os.path.join(tmp, "t%03d-%s" % (i, name)))
            err = None
            # A test may ask for longer (test_soak, with SOAK_SECONDS): fn.timeout seconds.
            limit = max(args.timeout, getattr(fn, "timeout", 0))
            try:
                timer.start(limit)
                try:
                    fn(ctx)
                finally:
                    timer.cancel()
            except lib.Timer.TestTimeout:
                err = "timed out after %d s\n%s" % (limit, traceback.format_exc(limit=-3))
            except AssertionError as e:
                tb = traceback.extract_tb(e.__traceback__)
                where = next((f for f in reversed(tb) if "/integration/test_" in f.filename),
                             tb[-1] if tb else None)
                loc = "%s:%d" % (os.path.basename(where.filename), where.lineno) if where \
                    else "?"
                err = "%s: %s" % (loc, e)
            except KeyboardInterrupt:
                raise
            except BaseException:
                err = traceback.format_exc()
            try:
                problems = ctx.close()
            except BaseException:
                problems = ["test cleanup failed:\n" + traceback.format_exc()]
            took = time.monotonic() - t0
            if err or problems:
                details = "\n".join(x for x in [err] + problems if x)
                context = ctx.failure_context()
                if context:
                    details += "\n" + context
                res.report(name, False, details)
            else:
                res.report(name, True)
            if took > 20:
                print("    (%s took %.1fs)" % (name, took), flush=True)
            for fname, secs in session.timings[shown:]:
                print("    (session fixture %s set up in %.1fs)" % (fname, secs), flush=True)
            shown = len(session.timings)
    finally:
        timer.cancel()
        session.close()


# -------------------------------------------------------------------------------- main

def remove_stale_tmpdirs():
    """Temp dirs of runs that were SIGKILLed (their children died with them: PDEATHSIG)."""
    base = tempfile.gettempdir()
    for d in os.listdir(base):
        if not d.startswith("regproxy-test-"):
            continue
        try:
            with open(os.path.join(base, d, "runner.pid")) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            continue
        try:
            os.kill(pid, 0)
            continue  # that run is alive
        except ProcessLookupError:
            shutil.rmtree(os.path.join(base, d), ignore_errors=True)
        except PermissionError:
            continue



def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", help="regproxy binary for the integration tests")
    ap.add_argument("--unit", help="directory of unit test binaries (searched recursively)")
    ap.add_argument("--fuzz", help="directory of fuzz_* binaries")
    ap.add_argument("--timeout", type=int, default=300, help="per integration test, seconds")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs) at the end")
    ap.add_argument("--no-integration", action="store_true")
    ap.add_argument("filters", nargs="*")
    args = ap.parse_args()
    os.chdir(ROOT)

    # SIGTERM/SIGHUP end the run like Ctrl-C, so the cleanup below still runs.
    def on_term(signum, frame):
        raise KeyboardInterrupt("signal %d" % signum)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    signal.signal(signal.SIGINT, on_term)  # also when started with SIGINT ignored (`cmd &`)

    res = Results()
    remove_stale_tmpdirs()
    tmp = tempfile.mkdtemp(prefix="regproxy-test-")
    with open(os.path.join(tmp, "runner.pid"), "w") as f:
        f.write("%d\n" % os.getpid())
    phases = []
    interrupted = False
    t_all = time.monotonic()
    try:
        if args.unit:
            if os.path.isdir(args.unit):
                t0 = time.monotonic()
                print("== unit tests (%s)" % args.unit, flush=True)
                unit_phase(args.unit, args.filters, res)
                phases.append(("unit", time.monotonic() - t0))
            else:
                res.report("unit", False, "no unit test directory %s" % args.unit)
        if args.fuzz:
            if os.path.isdir(args.fuzz):
                t0 = time.monotonic()
                print("== fuzz corpus replay (%s)" % args.fuzz, flush=True)
                fuzz_phase(args.fuzz, args.filters, res)
                phases.append(("fuzz", time.monotonic() - t0))
            else:
                res.report("fuzz", False, "no fuzz directory %s" % args.fuzz)
        if not args.no_integration:
            t0 = time.monotonic()
            print("== integration tests (temp dir %s)" % tmp, flush=True)
            integration_phase(args, args.filters, res, tmp)
            phases.append(("integration", time.monotonic() - t0))
    except KeyboardInterrupt as e:
        interrupted = True
        res.report("interrupted", False, "run interrupted (%s)" % (e or "Ctrl-C"))
    finally:
        try:
            sys.path.insert(0, os.path.join(HERE, "integration"))
            import lib
            lib.kill_all()
        except Exception:  # noqa: BLE001
            pass
        if args.keep:
            print("kept %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    for name, secs in phases:
        print("time %-12s %7.1fs" % (name, secs))
    print("time %-12s %7.1fs" % ("total", time.monotonic() - t_all))
    if res.failed_names:
        print("failed: " + " ".join(res.failed_names))
    if res.passed + res.failed == 0:
        print("nothing ran (filters: %s)" % (" ".join(args.filters) or "none"))
    print("%d passed, %d failed" % (res.passed, res.failed), flush=True)
    sys.exit(1 if res.failed or res.passed == 0 or interrupted else 0)


if __name__ == "__main__":
    main()
