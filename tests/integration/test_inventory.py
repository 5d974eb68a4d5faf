# SPDX-License-Identifier: Apache-2.0
"""`regproxy import-inventory`: an openshift-ansible inventory (INI and YAML) pointing at
the test upstreams becomes a configuration that `regproxy check` accepts: the oreg_url
registry with oreg_auth_user/password, the additional registry credentials as sections,
passwords in 0600 files and never in the output."""
import os
import re
import stat
import subprocess

import lib
from lib import check, eq


def _import(t, inventory, outdir):
    r = subprocess.run([t.s.bin, "import-inventory", inventory, "-o", outdir, "--proxy",
                        "proxy.example.com:5000"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=lib.clean_env(), timeout=60)
    check(r.returncode == 0, "import-inventory failed: %s" % r.stderr.decode())
    return r.stdout.decode()


def _check_config(t, text, name):
    """Adds what a real cluster's CA bundle would give (our test CA) and a cache dir, then
    runs `regproxy check`."""
    s = t.s
    text = re.sub(r'^(\[registry "[^"]+"\])$', r'\1' + "\nca_file = %s" % s.ca["ca.crt"], text,
                  flags=re.M)
    text = text.replace('[listen "0.0.0.0:5000"]', '[listen "127.0.0.1:%d"]' % lib.free_port())
    path = os.path.join(t.tmp, name)
    with open(path, "w") as f:
        f.write(text + "\n[cache]\ndir = %s\n" % os.path.join(t.tmp, "cache"))
    r = subprocess.run([s.bin, "check", "-c", path], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=lib.clean_env(), timeout=120)
    out = (r.stdout + r.stderr).decode()
    eq(r.returncode, 0, "regproxy check of the imported config:\n%s\n---\n%s" % (out, text))
    return out


def _inventories(t):
    s = t.s
    tok, basic = s.token_registry, s.basic_registry
    ini = ("[OSEv3:vars]\n"
           "oreg_url=%s/openshift3/ose-${component}:${version}\n"
           "oreg_auth_user='%s'\noreg_auth_password=%s\n"
           "openshift_additional_registry_credentials=[{'host':'%s','user':'alice',"
           "'password':'%s','test_image':'ns/multi:v1'}]\n"
           % (tok.hostport, lib.SA_USER, s.sa_password, basic.hostport, s.alice_password))
    yml = ("oreg_url: '%s/openshift3/ose-${component}:${version}'\n"
           "oreg_auth_user: '%s'\noreg_auth_password: '%s'\n"
           "openshift_additional_registry_credentials:\n"
           "  - host: '%s'\n    user: alice\n    password: '%s'\n    test_image: ns/multi:v1\n"
           % (tok.hostport, lib.SA_USER, s.sa_password, basic.hostport, s.alice_password))
    return {"hosts.ini": ini, "OSEv3.yml": yml}


def test_failed_import_leaves_no_password_files(t):
    """The password files were written before the configuration: when printing it failed
    (stdout on a full disk), they stayed behind. Now the import fails with nothing new left:
    no password file, no temporary, no directory made for them."""
    inv = os.path.join(t.tmp, "hosts.ini")
    with open(inv, "w") as f:
        f.write(_inventories(t)["hosts.ini"])
    outdir = os.path.join(t.tmp, "creds-full")
    with open("/dev/full", "w") as full:
        r = subprocess.run([t.s.bin, "import-inventory", inv, "-o", outdir], stdout=full,
                           stderr=subprocess.PIPE, env=lib.clean_env(), timeout=60)
    err = r.stderr.decode()
    eq(r.returncode, 1, "exit status of an import whose output cannot be written (%s)" % err)
    check("cannot write the configuration" in err, "the error: %r" % err)
    check(not os.path.exists(outdir), "left behind: %s" % (
        os.listdir(outdir) if os.path.isdir(outdir) else outdir))
    # Into an existing directory: it stays, empty.
    os.mkdir(outdir, 0o700)
    with open("/dev/full", "w") as full:
        r = subprocess.run([t.s.bin, "import-inventory", inv, "-o", outdir], stdout=full,
                           stderr=subprocess.PIPE, env=lib.clean_env(), timeout=60)
    eq(r.returncode, 1, "exit status, existing directory")
    eq(os.listdir(outdir), [], "files left in the existing directory")


def test_import_both_forms_then_check(t):
    s = t.s
    for name, text in _inventories(t).items():
        inv = os.path.join(t.tmp, name)
        with open(inv, "w") as f:
            f.write(text)
        outdir = os.path.join(t.tmp, "creds-" + name)
        conf = _import(t, inv, outdir)
        for secret in (s.sa_password, s.alice_password):
            check(secret not in conf, "a password is printed in the imported config (%s)" % name)
        check("oreg_url=proxy.example.com:5000/openshift3/ose-${component}:${version}" in conf,
              "no new oreg_url in the output:\n" + conf)
        files = os.listdir(outdir)
        eq(len(files), 2, "password files written for %s" % name)
        for fn in files:
            mode = stat.S_IMODE(os.stat(os.path.join(outdir, fn)).st_mode)
            eq(mode, 0o600, "mode of %s" % fn)
        # The oreg_url registry has no test image of ours: check its login with one.
        conf = conf.replace("user = %s\n" % lib.SA_USER,
                            "user = %s\ntest_image = ns/multi:v1\ntest_login = yes\n" % lib.SA_USER)
        out = _check_config(t, conf, name + ".conf")
        check(out.count(": ok (") >= 2, "both registries should check ok:\n" + out)
