#!/bin/sh
# Installs into a scratch root and checks the unit as systemd sees it:
# systemd-analyze verify must be clean (man pages included) and the exposure
# score of systemd-analyze security must stay at or below 1.5; the only port the
# daemon may bind() is the metrics port followupd.conf(5) documents.
# usage: check-systemd-unit.sh BUILD_DIR
set -eu
build=$1
dest=$(mktemp -d)
trap 'rm -rf "$dest"' EXIT
make -C "$build" install DESTDIR="$dest" prefix=/usr sysconfdir=/etc >/dev/null
unit="$dest/usr/lib/systemd/system/followupd.service"
# verify resolves ExecStart= (and ExecReload=) on this machine: point them at the
# scratch root.
sed -i -E "s#=(-?)[^ =]*/(followupd|followupctl)( |\$)#=\1$dest/usr/bin/\2\3#g" "$unit"
out=$(MANPATH="$dest/usr/share/man" systemd-analyze verify "$unit" 2>&1) || true
if [ -n "$out" ]; then
    echo "systemd-analyze verify is not clean:" >&2
    echo "$out" >&2
    exit 1
fi
echo "systemd-analyze verify: clean"
# [metrics] listen: the unit lets the daemon bind() the documented port only.
port=$(sed -n 's/^SocketBindAllow=tcp:\([0-9][0-9]*\)$/\1/p' "$unit")
if ! grep -qx 'SocketBindDeny=any' "$unit" || [ -z "$port" ] ||
   ! grep -q "127\.0\.0\.1:$port" "$dest/usr/share/man/man5/followupd.conf.5"; then
    echo "the unit must have SocketBindDeny=any and SocketBindAllow=tcp:PORT with the" \
         "port followupd.conf(5) gives for [metrics] listen" >&2
    exit 1
fi
echo "metrics port: only tcp:$port may be bound"
score=$(systemd-analyze security --offline=true "$unit" 2>/dev/null |
        sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
echo "systemd-analyze security: exposure $score"
awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 1.5) }' || {
    echo "exposure $score is above 1.5" >&2
    exit 1
}
