# SPDX-License-Identifier: Apache-2.0
"""Credentials as admins hold them: a docker config.json (auth, username/password,
identitytoken) and the OpenShift pull secret from Red Hat's service-account page (YAML),
used unchanged through auth_file; files readable by others are refused."""
import base64
import json
import os
import subprocess
import time

import lib
from lib import check, eq


def _write(path, text, mode=0o600):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def _pull_ok(t, p, reg):
    _, tags = t.pull(p, "ns/multi:v1")
    eq(tags["v1"], reg.pushed["ns/multi:v1"]["digest"], "pull with auth_file credentials")


def test_docker_config_json_auth(t):
    s = t.s
    reg = s.token_registry
    auth = base64.b64encode(("%s:%s" % (lib.SA_USER, s.sa_password)).encode()).decode()
    path = _write(os.path.join(t.tmp, "config.json"), json.dumps(
        {"auths": {"https://%s" % reg.hostport: {"auth": auth}}}))
    p = t.proxy(registries=[{"name": "registry.token.test", "url": reg.url,
                             "ca_file": s.ca["ca.crt"], "auth_file": path}])
    _pull_ok(t, p, reg)
    check(s.sa_password not in p.log_text(), "password in the log")


def test_openshift_pull_secret_yaml(t):
    s = t.s
    reg = s.token_registry
    auth = base64.b64encode(("%s:%s" % (lib.SA_USER, s.sa_password)).encode()).decode()
    cfg = json.dumps({"auths": {reg.hostport: {"auth": auth, "email": ""}}})
    secret = ("apiVersion: v1\nkind: Secret\nmetadata:\n  name: 12345678-regproxy-test-pull-secret\n"
              "data:\n  .dockerconfigjson: %s\ntype: kubernetes.io/dockerconfigjson\n"
              % base64.b64encode(cfg.encode()).decode())
    path = _write(os.path.join(t.tmp, "pull-secret.yaml"), secret)
    p = t.proxy(registries=[{"name": "registry.token.test", "url": reg.url,
                             "ca_file": s.ca["ca.crt"], "auth_file": path}])
    _pull_ok(t, p, reg)


def test_identity_token_oauth2(t):
    """docker login's identitytoken is exchanged with the token spec's OAuth2 POST; no
    Basic credentials are sent anywhere."""
    s = t.s
    reg = s.token_registry
    path = _write(os.path.join(t.tmp, "config.json"), json.dumps(
        {"auths": {reg.hostport: {"auth": base64.b64encode(b"<token>:").decode(),
                                  "identitytoken": s.sa_refresh_token}}}))
    mark = time.time()
    p = t.proxy(registries=[{"name": "registry.token.test", "url": reg.url,
                             "ca_file": s.ca["ca.crt"], "auth_file": path}])
    _pull_ok(t, p, reg)
    reqs = [r for r in s.issuer.requests() if r.get("time", 0) >= mark]
    posts = [r for r in reqs if r.get("method") == "POST"]
    check(posts and all(r.get("grant_type") == "refresh_token" and not r.get("auth")
                        for r in posts),
          "expected OAuth2 refresh_token POSTs without Authorization, issuer saw: %r"
          % [(r.get("method"), r.get("grant_type"), r.get("auth")) for r in reqs][-5:])
    check(s.sa_refresh_token not in p.log_text(), "the identity token appears in the log")


def test_readable_credential_file_refused(t):
    s = t.s
    reg = s.token_registry
    path = _write(os.path.join(t.tmp, "token.pw"), s.sa_password + "\n", mode=0o644)
    conf = os.path.join(t.tmp, "c.conf")
    with open(conf, "w") as f:
        f.write('[listen "127.0.0.1:%d"]\ndefault = r\n\n[cache]\ndir = %s\n\n'
                '[registry "r"]\nurl = %s\nuser = %s\npassword_file = %s\n'
                % (lib.free_port(), os.path.join(t.tmp, "cache"), reg.url, lib.SA_USER, path))
    r = subprocess.run([s.bin, "check", "-c", conf], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=lib.clean_env(), timeout=60)
    out = (r.stdout + r.stderr).decode()
    check(r.returncode != 0 and "readable by others" in out and "chmod 600" in out,
          "a 0644 password file was not refused clearly: rc=%d\n%s" % (r.returncode, out))
    check(s.sa_password not in out, "the password appears in the error")
    with open(conf, "a") as f:
        f.write("allow_readable_credentials = yes\ntest_login = no\n")
    r = subprocess.run([s.bin, "check", "-c", conf], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=lib.clean_env(), timeout=60)
    out = (r.stdout + r.stderr).decode()
    eq(r.returncode, 0, "check with allow_readable_credentials (%s)" % out)
    check("readable" in out, "no warning about the readable file:\n" + out)
