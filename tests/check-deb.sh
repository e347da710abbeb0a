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
# pages; dpkg -r; dpkg --purge. Prints one line per check and ends with
# "check-deb: N passed, M failed"; exit 0 when all passed, 1 otherwise.
# Takes about a minute on 2 cores (most of it apt-get the first time).
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

cleanup() {
    status=$?
    # Leave nothing behind, whatever happened: the package and the scratch tree.
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
systemd procps man-db groff-base git"
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
# The sample is valid, and the service's user can read it (group followupd).
# --check also opens the password file the sample names: first refused while it
# is missing, then accepted once the operator has put it there (mode 0600).
if setpriv --reuid=followupd --regid=followupd --init-groups \
        /usr/bin/followupd --check -c /etc/followupd/followupd.conf >/dev/null 2>&1; then
    bad "followupd --check accepted the sample although its password file is missing"
else
    ok "followupd --check refuses the sample until its password file exists"
fi
printf 'placeholder-password\n' > /etc/followupd/ews-password
chown followupd:followupd /etc/followupd/ews-password
chmod 600 /etc/followupd/ews-password
if out=$(setpriv --reuid=followupd --regid=followupd --init-groups \
        /usr/bin/followupd --check -c /etc/followupd/followupd.conf 2>&1); then
    ok "followupd --check of the sample configuration, as user followupd"
else
    bad "followupd --check of the sample configuration, as user followupd: $out"
fi
rm -f /etc/followupd/ews-password
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
check "the package is gone" sh -c "! dpkg-query -W -f='\${Status}' $pkg 2>/dev/null | grep -q ' installed$'"
installed_by_us=

finish
