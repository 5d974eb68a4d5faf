# SPDX-License-Identifier: Apache-2.0
"""The command line: help for a command whichever side of it -h is, and an option the command
does not take refused with a message and exit status 2 (it used to be ignored: `serve --proxy
X` served, `import -o F` imported, without a word)."""
import subprocess

from lib import check, eq


def _run(t, args):
    r = subprocess.run([t.s.bin] + args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=30)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def test_help_for_a_command(t):
    for args in (["-h", "serve"], ["serve", "-h"], ["help", "serve"], ["--help", "serve"]):
        rc, out, err = _run(t, args)
        eq(rc, 0, "regproxy %s: %s" % (" ".join(args), err))
        check(out.startswith("usage: regproxy serve [-c FILE]"),
              "regproxy %s printed: %r" % (" ".join(args), out[:200]))
    rc, out, _ = _run(t, ["-h"])
    eq(rc, 0, "regproxy -h")
    check(out.startswith("usage: regproxy COMMAND"), "regproxy -h printed: %r" % out[:200])
    rc, _, err = _run(t, ["help", "nonsense"])
    eq(rc, 2, "help for a command that does not exist")
    check("no command 'nonsense'" in err, "its message: %r" % err)


def test_option_of_another_command_refused(t):
    cases = [
        (["serve", "--proxy", "x:5000"], "regproxy serve: --proxy does not apply"),
        (["import", "-c", "c.conf", "-o", "out", "b.rpb"], "regproxy import: -o/--output"),
        (["mirror", "-c", "c.conf", "--oci", "d", "list"], "regproxy mirror: --oci"),
        (["check", "-j", "3"], "regproxy check: -j/--jobs"),
        (["import-inventory", "-c", "c.conf", "inv"], "regproxy import-inventory: -c/--config"),
        (["export", "-c", "c.conf", "--platform", "linux/amd64", "-o", "b"],
         "regproxy export: --platform"),
        (["verify", "-c", "c.conf", "-o", "x"], "regproxy verify: -o/--output"),
    ]
    for args, msg in cases:
        rc, out, err = _run(t, args)
        eq(rc, 2, "regproxy %s" % " ".join(args))
        check(err.startswith(msg) and "usage: regproxy " in err,
              "regproxy %s said: %r" % (" ".join(args), err))
    # An empty name: --oci "" made mkdirs read (and write) before its buffer.
    for args, msg in ((["export", "-c", "c.conf", "--oci", ""], "--oci names no file"),
                      (["export", "-c", "c.conf", "-o", ""], "-o names no file")):
        rc, out, err = _run(t, args)
        eq(rc, 2, "regproxy %r" % args)
        eq(err, "regproxy export: %s\n" % msg, "regproxy %r said" % args)
    rc, _, err = _run(t, ["frobnicate"])
    eq(rc, 2, "an unknown command")
    check("unknown command 'frobnicate'" in err, "its message: %r" % err)
