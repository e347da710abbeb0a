#!/bin/sh
# Builds the Debian package from the working tree, installs it, checks what it
# installed, then removes and purges it again.
#
#   sh tests/check-deb.sh          (as root, on a machine that may be changed:
#                                   it installs build dependencies and the package)
#
# Steps: install missing build dependencies (apt-get); copy the tree (git's
# tracked and untracked-but-not-ignored files, so uncommitted work is included)
# to a temporary directory; dpkg-buildpackage -us -uc -b; dpkg -i; check files,
# modes, the followupd user, the sample configuration, the binaries and the man
# pages; then walk docs/operator-guide.md in its order with its commands (the
# secret, the configuration, migrate, --check, running the unit's commands,
# status, test-connection, a follow-up delivered, reload, flush) against a
# throwaway PostgreSQL and the EWS simulator; dpkg -r; dpkg --purge (which must
# take the password with it). Prints one line per check and ends with
# "check-deb: N passed, M failed"; exit 0 when all passed, 1 otherwise.
# Takes a few minutes on 2 cores (most of it apt-get the first time).
set -eu

top=$(cd "$(dirname "$0")/.." && pwd)
pkg=followupd
passed=0
failed=0
work=

say() { printf 'check-deb: %s\n' "$*"; }
ok() { passed=$((passed + 1)); printf 'ok      %s\n' "$*"; }
bad() { failed=$((failed + 1)); printf 'FAILED  %s\n' "$*"; }
# check DESCRIPTION COMMAND...: runs COMMAND quietly, one line of outcome.
check() {
    what=$1
    shift
    if "$@" >/dev/null 2>&1; then ok "$what"; else bad "$what"; fi
}
finish() {
    echo "check-deb: $passed passed, $failed failed"
    [ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
}
die() {
    bad "$*"
    finish || true
    exit 1
}

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

daemon_pid=
sim_pid=
pg_stop=
cleanup() {
    status=$?
    # Leave nothing behind, whatever happened: the daemon, the simulator, the
    # database, the package and the scratch tree.
    if [ -n "$daemon_pid" ]; then kill "$daemon_pid" 2>/dev/null || true; fi
    if [ -n "$sim_pid" ]; then kill "$sim_pid" 2>/dev/null || true; fi
    if [ -n "$pg_stop" ]; then sh -c "$pg_stop" >/dev/null 2>&1 || true; fi
    rm -f /root/followupd-admin.conf
    rm -rf /run/followupd "${creds:-/nonexistent}"
    if [ -n "${installed_by_us:-}" ] && dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null |
            grep -qv 'not-installed'; then
        dpkg --purge "$pkg" >/dev/null 2>&1 || true
    fi
    [ -n "$work" ] && rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP PIPE

if [ "$(id -u)" -ne 0 ]; then
    say "must run as root (it installs build dependencies and the package)" >&2
    exit 1
fi
if installed "$pkg" && [ -z "${FOLLOWUPD_CHECK_DEB_FORCE:-}" ]; then
    say "the $pkg package is installed on this machine; this test would replace and" >&2
    say "purge it. Remove it first, or set FOLLOWUPD_CHECK_DEB_FORCE=1." >&2
    exit 1
fi

# ---- build dependencies -------------------------------------------------------
# Tools for building and checking the package, then debian/control's
# Build-Depends (dpkg-buildpackage checks those again), then what the checks use.
needs="build-essential dpkg-dev debhelper fakeroot gcc make libc6-dev
autoconf automake pkg-config libpq-dev libcurl4-openssl-dev libxml2-dev
libsystemd-dev libssl-dev libcmocka-dev libjson-c-dev
systemd procps man-db groff-base git
postgresql python3 python3-lxml"
missing=
for p in $needs; do
    installed "$p" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    say "installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing >/dev/null ||
        die "apt-get install$missing"
fi

# ---- a copy of the tree -------------------------------------------------------
work=$(mktemp -d /tmp/check-deb.XXXXXX)
src="$work/$pkg"
mkdir "$src"
if git -C "$top" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # Tracked files that still exist, and untracked ones that are not ignored:
    # exactly the working tree, without build directories and generated files.
    (cd "$top" && git ls-files -co --exclude-standard | sort -u |
        while IFS= read -r f; do [ -e "$f" ] && printf '%s\n' "$f"; done |
        tar -cf - -T -) | tar -xf - -C "$src"
else
    (cd "$top" && tar -cf - --exclude='./build*' --exclude=./autom4te.cache .) |
        tar -xf - -C "$src"
fi
[ -f "$src/debian/control" ] || die "copy the source tree (no debian/control in $src)"

# ---- build --------------------------------------------------------------------
say "dpkg-buildpackage -us -uc -b (log: $work/build.log)"
start=$(date +%s)
if ! (cd "$src" && dpkg-buildpackage -us -uc -b -j"$(nproc)") >"$work/build.log" 2>&1; then
    tail -n 40 "$work/build.log" >&2
    die "dpkg-buildpackage -us -uc -b"
fi
ok "dpkg-buildpackage -us -uc -b ($(( $(date +%s) - start )) s)"

version=$(cd "$src" && dpkg-parsechangelog -S Version)
deb="$work/${pkg}_${version}_$(dpkg --print-architecture).deb"
[ -f "$deb" ] || die "the package $deb was built"
upstream=$(sed -n 's/^AC_INIT(\[[^]]*\], *\[\([^]]*\)\].*/\1/p' "$src/configure.ac")
if [ "$version" = "$upstream" ]; then
    ok "debian/changelog version $version = configure.ac version"
else
    bad "debian/changelog version $version = configure.ac version ($upstream)"
fi

# ---- install ------------------------------------------------------------------
installed_by_us=1
if ! dpkg -i "$deb" >"$work/install.log" 2>&1; then
    cat "$work/install.log" >&2
    die "dpkg -i $(basename "$deb")"
fi
ok "dpkg -i $(basename "$deb")"

# mode FILE WANT [OWNER:GROUP]
mode() {
    if [ ! -e "$1" ]; then
        bad "$1 exists"
        return
    fi
    got=$(stat -c %a "$1")
    owner=$(stat -c %U:%G "$1")
    if [ "$got" = "$2" ] && { [ -z "${3:-}" ] || [ "$owner" = "$3" ]; }; then
        ok "$1 mode $got${3:+ $owner}"
    else
        bad "$1 mode $got $owner, want $2${3:+ $3}"
    fi
}

unitdir=/lib/systemd/system
[ -f "$unitdir/$pkg.service" ] || unitdir=/usr/lib/systemd/system
mode /usr/bin/followupd 755 root:root
mode /usr/bin/followupctl 755 root:root
mode "$unitdir/$pkg.service" 644
mode /usr/share/man/man8/followupd.8.gz 644
mode /usr/share/man/man8/followupctl.8.gz 644
mode /usr/share/man/man5/followupd.conf.5.gz 644
mode /usr/share/followupd/sql/install.sql 644
mode /usr/lib/sysusers.d/followupd.conf 644
mode /usr/lib/tmpfiles.d/followupd.conf 644
check "followupd system user and group exist (systemd-sysusers ran)" \
    sh -c 'getent passwd followupd && getent group followupd'
mode /etc/followupd 750 root:followupd
mode /etc/followupd/followupd.conf 640 root:followupd
check "/etc/followupd/followupd.conf is a conffile" \
    sh -c "dpkg-query -W -f='\${Conffiles}' $pkg | grep -q '^ */etc/followupd/followupd.conf '"
check "the unit runs $(sed -n 's/^ExecStart=//p' "$unitdir/$pkg.service")" \
    grep -qx 'ExecStart=/usr/bin/followupd -c /etc/followupd/followupd.conf' "$unitdir/$pkg.service"
check "the service is not enabled after installation" \
    test ! -e "/etc/systemd/system/multi-user.target.wants/$pkg.service"
if out=$(/usr/bin/followupd --version 2>&1) && printf '%s\n' "$out" | grep -q "$upstream"; then
    ok "followupd --version: $out"
else
    bad "followupd --version prints $upstream (got: $out)"
fi
check "followupctl --help" /usr/bin/followupctl --help
check "the installed install.sql is the source tree's sql/install.sql" \
    cmp -s /usr/share/followupd/sql/install.sql "$src/sql/install.sql"
for page in /usr/share/man/man8/followupd.8.gz /usr/share/man/man8/followupctl.8.gz \
        /usr/share/man/man5/followupd.conf.5.gz; do
    # man -l renders the installed file; groff's warnings count as a failure.
    text=$(MANWIDTH=80 man --warnings -l "$page" 2>"$work/man.err") || true
    if printf '%s\n' "$text" | grep -q '^NAME' && [ ! -s "$work/man.err" ]; then
        ok "man -l $page renders ($(printf '%s\n' "$text" | wc -l) lines)"
    else
        bad "man -l $page renders without warnings: $(head -n 3 "$work/man.err")"
    fi
done
check "man -w followupd.conf finds the page in section 5" \
    sh -c 'man -w 5 followupd.conf | grep -q /usr/share/man/man5/followupd.conf.5'
if command -v systemd-analyze >/dev/null 2>&1; then
    out=$(systemd-analyze verify "$unitdir/$pkg.service" 2>&1) || true
    if [ -z "$out" ]; then
        ok "systemd-analyze verify $unitdir/$pkg.service"
    else
        bad "systemd-analyze verify $unitdir/$pkg.service: $out"
    fi
fi

# ---- the operator guide, step by step -----------------------------------------
# docs/operator-guide.md on this fresh install, its commands in its order. The
# database is a throwaway PostgreSQL cluster (tests/integration/pgcluster.py) on
# 127.0.0.1 and Exchange the EWS simulator (tests/sim/ews_sim.py). Without systemd
# as PID 1 the unit's commands run as systemd would run them: as user followupd,
# with a private copy of the credential and the runtime directory /run/followupd.
conf=/etc/followupd/followupd.conf
admin_conf=/root/followupd-admin.conf
password='THE-PASSWORD'
service_user="setpriv --reuid=followupd --regid=followupd --init-groups"
as_service() { $service_user "$@"; }

# Section 4, before the secret exists: --check (as root) says what to create.
out=$(/usr/bin/followupd --check 2>&1) && rc=0 || rc=$?
if [ "$rc" -eq 1 ] && printf '%s\n' "$out" | grep -qF "[exchange] password_file: empty, so the service gets the password" &&
        printf '%s\n' "$out" | grep -qF 'install -m 0600 -o root -g root /dev/null /etc/followupd/ews-password'; then
    ok "followupd --check before the secret exists names the file and the command that makes it"
else
    bad "followupd --check before the secret exists (exit $rc): $out"
fi
# Section 4, way 1 (the sample's): the credential, root's file.
install -m 0600 -o root -g root /dev/null /etc/followupd/ews-password
printf '%s\n' "$password" > /etc/followupd/ews-password
check "guide 4: followupd --check accepts the credential file root:root 0600" /usr/bin/followupd --check
check "guide 4: followupd --check as user followupd (ExecStartPre without a credential) passes" \
    as_service /usr/bin/followupd --check -c "$conf"
# Way 2 with the file left root's: --check as root opens it as followupd and says
# what to do; back to the sample's way afterwards.
sed -i 's|^password_file =.*|password_file = /etc/followupd/ews-password|' "$conf"
out=$(/usr/bin/followupd --check 2>&1) && rc=0 || rc=$?
if [ "$rc" -eq 1 ] && printf '%s\n' "$out" |
        grep -qF "the service user followupd cannot read it (owner root:root, mode 0600): make it the service's: chown followupd:followupd /etc/followupd/ews-password"; then
    ok "followupd --check (root) of a root-owned password_file names chown and LoadCredential"
else
    bad "followupd --check (root) of a root-owned password_file (exit $rc): $out"
fi
sed -i 's|^password_file =.*|password_file =|' "$conf"

# Sections 2 and 3: the database, the configuration, migrate, the daemon's role.
pg_env=$(/usr/bin/python3 - "$src/tests/integration" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
from pgcluster import PgCluster
pg = PgCluster().start()
print(f"pg_port={pg.port} pg_dir={pg.dir} pg_data={pg.datadir} pg_bin={pg.bindir}")
PY
) || die "start a throwaway PostgreSQL cluster"
eval "$pg_env"
pg_stop="runuser -u postgres -- $pg_bin/pg_ctl -D $pg_data -m fast -w stop; rm -rf $pg_dir"
ok "a throwaway PostgreSQL on 127.0.0.1:$pg_port"
schema=${FOLLOWUPD_EWS_SCHEMA:-$top/../shared/ews-schema}
[ -f "$schema/ews-envelope.xsd" ] && schema_args="--schema-dir $schema" || schema_args="--no-schema"
# shellcheck disable=SC2086
/usr/bin/python3 "$src/tests/sim/ews_sim.py" --port 0 --port-file "$work/sim.port" \
    --users "svc-followupd:$password" $schema_args 2>"$work/sim.log" &
sim_pid=$!
for _ in $(seq 100); do [ -s "$work/sim.port" ] && break; sleep 0.1; done
[ -s "$work/sim.port" ] || die "start the EWS simulator: $(cat "$work/sim.log")"
sim_port=$(cat "$work/sim.port")
ok "the EWS simulator on 127.0.0.1:$sim_port"

# Section 3: edit the file (conninfo, url; the simulator speaks basic).
sed -i -e "s|^conninfo = .*|conninfo = host=127.0.0.1 port=$pg_port dbname=crm user=followupd|" \
    -e "s|^url = .*|url = http://127.0.0.1:$sim_port/EWS/Exchange.asmx|" \
    -e 's|^auth = .*|auth = basic|' "$conf"
# Section 3, "A configuration for administration"; section 2: migrate, then the role.
install -m 0600 /etc/followupd/followupd.conf "$admin_conf"
sed -i "s|^conninfo = .*|conninfo = host=127.0.0.1 port=$pg_port dbname=crm user=postgres|" "$admin_conf"
if out=$(/usr/bin/followupctl -c "$admin_conf" migrate 2>&1) &&
        printf '%s\n' "$out" | grep -q '^schema contactlog is at version'; then
    ok "guide 2: followupctl -c $admin_conf migrate: $out"
else
    bad "guide 2: followupctl -c $admin_conf migrate: $out"
fi
check "guide 2: CREATE ROLE followupd LOGIN; GRANT contactlog_daemon TO followupd" \
    "$pg_bin/psql" -X -q -v ON_ERROR_STOP=1 "host=127.0.0.1 port=$pg_port dbname=crm user=postgres" \
    -c 'CREATE ROLE followupd LOGIN' -c 'GRANT contactlog_daemon TO followupd'

# Section 7, in its order.
check "guide 7: followupd --check" /usr/bin/followupd --check
if out=$(/usr/bin/followupctl status 2>&1) && printf '%s\n' "$out" | grep -q '^pending: *0$'; then
    ok "guide 7: followupctl status"
else
    bad "guide 7: followupctl status: $out"
fi
if out=$(/usr/bin/followupctl test-connection alice@example.org 2>&1) &&
        printf '%s\n' "$out" | grep -q '^OK:'; then
    ok "guide 7: followupctl test-connection alice@example.org (the credential file, as root)"
else
    bad "guide 7: followupctl test-connection alice@example.org: $out"
fi
if [ -d /run/systemd/system ]; then
    check "guide 7: systemctl enable --now followupd" systemctl enable --now followupd
    daemon_pid=$(systemctl show -P MainPID followupd)
    [ "${daemon_pid:-0}" -gt 0 ] || bad "followupd runs after systemctl enable --now"
    daemon_pid=
    reload() { systemctl reload followupd; }
else
    # The unit's ExecStartPre= and ExecStart=, as systemd runs them.
    creds=$(mktemp -d /run/followupd-credentials.XXXXXX)
    install -m 0400 -o followupd -g followupd /etc/followupd/ews-password "$creds/ews-password"
    chown followupd:followupd "$creds"
    install -d -m 0755 -o followupd -g followupd /run/followupd
    check "guide 7 (the unit's ExecStartPre=): followupd --check as followupd with the credential" \
        env CREDENTIALS_DIRECTORY="$creds" $service_user /usr/bin/followupd --check -c "$conf"
    env CREDENTIALS_DIRECTORY="$creds" RUNTIME_DIRECTORY=/run/followupd $service_user \
        /usr/bin/followupd -c "$conf" >"$work/daemon.log" 2>&1 &
    daemon_pid=$!
    for _ in $(seq 100); do [ -s /run/followupd/pid ] && break; sleep 0.1; done
    if [ "$(cat /run/followupd/pid 2>/dev/null)" = "$daemon_pid" ]; then
        ok "guide 7 (the unit's ExecStart=): followupd runs as followupd, pid in /run/followupd"
    else
        bad "guide 7: followupd started: $(tail -n 5 "$work/daemon.log")"
    fi
    # The unit's ExecReload=.
    reload() {
        env RUNTIME_DIRECTORY=/run/followupd $service_user /usr/bin/followupctl reload "$daemon_pid"
    }
fi
"$pg_bin/psql" -X -q -v ON_ERROR_STOP=1 "host=127.0.0.1 port=$pg_port dbname=crm user=postgres" \
    -c "INSERT INTO contactlog.employee (login, display_name, email) VALUES ('alice', 'Alice Archer', 'alice@example.org')" \
    -c "INSERT INTO contactlog.contact_log (created_by, contact_name, reason, next_contact_at) SELECT id, 'Ada Lovelace', 'Call back', now() + interval '2 days' FROM contactlog.employee WHERE login = 'alice'" \
    >/dev/null 2>&1 || bad "save a contact log"
delivered=
for _ in $(seq 100); do
    if /usr/bin/followupctl status 2>/dev/null | grep -q '^items in Outlook: *[1-9]'; then
        delivered=1
        break
    fi
    sleep 0.1
done
if [ -n "$delivered" ]; then
    ok "guide 7: a saved follow-up reaches Outlook (followupctl status: items in Outlook)"
else
    bad "guide 7: a saved follow-up reaches Outlook: $(/usr/bin/followupctl status 2>&1; tail -n 5 "$work/daemon.log")"
fi
if out=$(reload 2>&1); then
    ok "guide 3: systemctl reload (followupctl reload): $out"
else
    bad "guide 3: reload of an unchanged file: $out"
fi
cp "$conf" "$work/good.conf"
sed -i 's|^url = .*|url = http://mail.example.org/EWS/Exchange.asmx|' "$conf"
url_line=$(grep -n '^url = ' "$conf" | cut -d: -f1)
out=$(reload 2>&1) && rc=0 || rc=$?
if [ "$rc" -eq 1 ] && printf '%s\n' "$out" | grep -qF "$conf:$url_line: [exchange] url: "; then
    ok "guide 3: a refused reload fails with the file, line and key"
else
    bad "guide 3: a refused reload (exit $rc): $out"
fi
cat "$work/good.conf" > "$conf"
if out=$(/usr/bin/followupctl flush 2>&1) && [ "$out" = "0 logs flushed" ]; then
    ok "guide 9: followupctl flush"
else
    bad "guide 9: followupctl flush: $out"
fi
if [ -n "$daemon_pid" ]; then
    kill -TERM "$daemon_pid"
    wait "$daemon_pid" && rc=0 || rc=$?
    daemon_pid=
    if [ "$rc" -eq 0 ]; then ok "followupd stops with status 0"; else bad "followupd stopped with status $rc"; fi
elif [ -d /run/systemd/system ]; then
    check "guide 7: systemctl stop followupd" systemctl stop followupd
fi
sh -c "$pg_stop" >/dev/null 2>&1 || true
pg_stop=
kill "$sim_pid" 2>/dev/null || true
wait "$sim_pid" 2>/dev/null || true
sim_pid=

# ---- remove, purge ------------------------------------------------------------
if dpkg -r "$pkg" >"$work/remove.log" 2>&1; then
    ok "dpkg -r $pkg"
else
    cat "$work/remove.log" >&2
    bad "dpkg -r $pkg"
fi
check "dpkg -r removed the binaries" test ! -e /usr/bin/followupd -a ! -e /usr/bin/followupctl
check "dpkg -r removed the unit" test ! -e "$unitdir/$pkg.service"
check "dpkg -r kept the configuration" test -f /etc/followupd/followupd.conf
if dpkg --purge "$pkg" >"$work/purge.log" 2>&1; then
    ok "dpkg --purge $pkg"
else
    cat "$work/purge.log" >&2
    bad "dpkg --purge $pkg"
fi
check "dpkg --purge removed /etc/followupd/followupd.conf" test ! -e /etc/followupd/followupd.conf
check "dpkg --purge removed the password /etc/followupd/ews-password" \
    test ! -e /etc/followupd/ews-password
check "dpkg --purge removed /etc/followupd (nothing else was left in it)" test ! -e /etc/followupd
check "the package is gone" sh -c "! dpkg-query -W -f='\${Status}' $pkg 2>/dev/null | grep -q ' installed$'"
installed_by_us=

finish
