#!/bin/sh
# Installs the Debian packages regproxy's build and tests need, when any is missing.
set -eu
pkgs="make gcc clang clang-format pkg-config strace libevent-dev libcurl4-openssl-dev libssl-dev libjansson-dev
liblz4-dev lz4 libyaml-dev libcrypt-dev libclang-rt-14-dev docker-registry skopeo apache2-utils jq nginx-light
python3 python3-cryptography openssl ca-certificates curl
python3-yaml groff-base systemd podman containerd"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
echo "deps: installing$missing"
if [ "$(id -u)" != 0 ]; then
    SUDO=sudo
else
    SUDO=
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
