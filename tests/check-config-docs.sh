#!/bin/sh
# check-config-docs.sh — every key of the option table in daemon/config.c is
# documented in docs/followupd.conf.5 under its section, and nothing else is.
# Run by `make check` with top_srcdir (and top_builddir) set; works from a shell
# in the source tree too.  Exit 0 when the two agree, 1 naming each difference.
#
# Patterns relied on (documented next to the table and in the man page too):
#   daemon/config.c      one table row per line, section and key first:
#                            X("section", "key", T_..., ...
#   docs/followupd.conf.5  a subsection per section, a .TP entry per key:
#                            .SS "[section]"
#                            .TP
#                            .B key
#                        a .SH line ends the key sections.
set -u
LC_ALL=C
export LC_ALL

top_srcdir=${top_srcdir:-$(dirname "$0")/..}
src=$top_srcdir/daemon/config.c
man=$top_srcdir/docs/followupd.conf.5

for f in "$src" "$man"; do
    if [ ! -r "$f" ]; then
        echo "check-config-docs: cannot read $f" >&2
        exit 1
    fi
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/check-config-docs.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT HUP INT TERM

# "section key" per table row.
sed -n 's/^[[:space:]]*X("\([A-Za-z0-9_]*\)",[[:space:]]*"\([A-Za-z0-9_]*\)",.*/\1 \2/p' \
    "$src" | sort > "$tmp/table"

# "section key" per .TP entry under a .SS "[section]" header.
awk '
    /^\.SH/ { section = ""; next }
    /^\.SS/ {
        section = ""
        if (match($0, /\[[A-Za-z0-9_]+\]/))
            section = substr($0, RSTART + 1, RLENGTH - 2)
        next
    }
    /^\.TP/ { tag = 1; next }
    tag && /^\.B[[:space:]]/ {
        if (section != "") {
            key = $2
            gsub(/"/, "", key)
            print section, key
        }
        tag = 0
        next
    }
    { tag = 0 }
' "$man" | sort > "$tmp/man"

n=$(wc -l < "$tmp/table" | tr -d ' ')
if [ "$n" -eq 0 ]; then
    echo "check-config-docs: no option rows found in $src; has the X(\"section\", \"key\", ...) layout changed?" >&2
    exit 1
fi

status=0
# comm: column 1 = only in the table, column 2 = only in the man page.
comm -23 "$tmp/table" "$tmp/man" > "$tmp/missing"
comm -13 "$tmp/table" "$tmp/man" > "$tmp/stale"
while read -r section key; do
    echo "FAIL: key '$key' of [$section] is not documented in docs/followupd.conf.5 (add a .TP entry \".B $key\" under .SS \"[$section]\")" >&2
    status=1
done < "$tmp/missing"
while read -r section key; do
    echo "FAIL: docs/followupd.conf.5 documents '$key' in [$section], which is not in the option table of daemon/config.c" >&2
    status=1
done < "$tmp/stale"

if [ "$status" -eq 0 ]; then
    echo "ok: $n keys documented"
fi
exit "$status"
