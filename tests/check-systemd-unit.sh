#!/bin/sh
# Installs into a scratch root and checks the unit as systemd sees it:
# systemd-analyze verify must be clean (man pages included) and the exposure
# score of systemd-analyze security must stay at or below 1.5.
# usage: check-systemd-unit.sh BUILD_DIR
set -eu
build=$1
dest=$(mktemp -d)
trap 'rm -rf "$dest"' EXIT
make -C "$build" install DESTDIR="$dest" prefix=/usr sysconfdir=/etc >/dev/null
unit="$dest/usr/lib/systemd/system/followupd.service"
# verify resolves ExecStart= on this machine: point it at the scratch root.
sed -i -E "s#=(-?)[^ =]*/followupd( |\$)#=\1$dest/usr/bin/followupd\2#g" "$unit"
out=$(MANPATH="$dest/usr/share/man" systemd-analyze verify "$unit" 2>&1) || true
if [ -n "$out" ]; then
    echo "systemd-analyze verify is not clean:" >&2
    echo "$out" >&2
    exit 1
fi
echo "systemd-analyze verify: clean"
score=$(systemd-analyze security --offline=true "$unit" 2>/dev/null |
        sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
echo "systemd-analyze security: exposure $score"
awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 1.5) }' || {
    echo "exposure $score is above 1.5" >&2
    exit 1
}
