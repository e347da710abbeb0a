#!/bin/sh
# check-config-docs.sh — every key of the option table in daemon/config.c is
# documented in docs/followupd.conf.5 under its section, and nothing else is; each
# entry says "reloadable" or "needs a restart" as the table's reloadable flag does;
# and the keys that need a restart are named wherever followupd(8) and the operator
# guide say what a reload applies.
# Run by `make check` with top_srcdir (and top_builddir) set; works from a shell
# in the source tree too.  Exit 0 when they agree, 1 naming each difference.
#
# Patterns relied on (documented next to the table and in the man page too):
#   daemon/config.c      one table row per line, section and key first, the
#                        reloadable flag (true/false) the sixth argument:
#                            X("section", "key", T_..., "default", field, true, ...
#   docs/followupd.conf.5  a subsection per section, a .TP entry per key:
#                            .SS "[section]"
#                            .TP
#                            .B key
#                        whose text says "reloadable" or "needs a restart";
#                        a .SH line ends the key sections.
#   docs/followupd.8, docs/operator-guide.md
#                        name each key that needs a restart as "[section] key".
set -u
LC_ALL=C
export LC_ALL

top_srcdir=${top_srcdir:-$(dirname "$0")/..}
src=$top_srcdir/daemon/config.c
man=$top_srcdir/docs/followupd.conf.5
man8=$top_srcdir/docs/followupd.8
guide=$top_srcdir/docs/operator-guide.md

for f in "$src" "$man" "$man8" "$guide"; do
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

# "section key reloadable|restart" per table row.
sed -n 's/^[[:space:]]*X("\([A-Za-z0-9_]*\)",[[:space:]]*"\([A-Za-z0-9_]*\)",[[:space:]]*T_[A-Z]*,[[:space:]]*"[^"]*",[[:space:]]*[A-Za-z0-9_]*,[[:space:]]*\(true\|false\),.*/\1 \2 \3/p' \
    "$src" | sed 's/ true$/ reloadable/; s/ false$/ restart/' | sort > "$tmp/table-reload"
if [ "$(wc -l < "$tmp/table-reload" | tr -d ' ')" -ne "$n" ]; then
    echo "FAIL: cannot read the reloadable flag (the sixth argument, true or false) of every row in $src" >&2
    status=1
fi

# "section key reloadable|restart|?" per .TP entry: the first of the two words in
# the entry's text.
awk '
    function flush() {
        if (key != "")
            print section, key, (flag == "" ? "?" : flag)
        key = ""
    }
    /^\.SH/ { flush(); section = ""; next }
    /^\.SS/ {
        flush()
        section = ""
        if (match($0, /\[[A-Za-z0-9_]+\]/))
            section = substr($0, RSTART + 1, RLENGTH - 2)
        next
    }
    /^\.TP/ { flush(); tag = 1; next }
    tag && /^\.B[[:space:]]/ {
        if (section != "") {
            key = $2
            gsub(/"/, "", key)
            flag = ""
        }
        tag = 0
        next
    }
    { tag = 0 }
    key != "" && flag == "" && /needs a restart/ { flag = "restart" }
    key != "" && flag == "" && /reloadable/ { flag = "reloadable" }
    END { flush() }
' "$man" | sort > "$tmp/man-reload"

while read -r section key want; do
    got=$(awk -v s="$section" -v k="$key" '$1 == s && $2 == k { print $3 }' "$tmp/man-reload")
    [ -n "$got" ] || continue   # a missing key is reported above
    if [ "$got" != "$want" ]; then
        case $want in
            reloadable) words='"reloadable"' ;;
            *) words='"needs a restart"' ;;
        esac
        echo "FAIL: docs/followupd.conf.5 says [$section] $key is ${got}, the option table says $want: write $words in its entry" >&2
        status=1
    fi
    if [ "$want" = restart ]; then
        for doc in "$man8" "$guide"; do
            if ! grep -qF "[$section] $key" "$doc"; then
                echo "FAIL: ${doc#"$top_srcdir"/} does not name [$section] $key among the keys a reload does not apply" >&2
                status=1
            fi
        done
    fi
done < "$tmp/table-reload"

if [ "$status" -eq 0 ]; then
    restart=$(awk '$3 == "restart" { printf "%s[%s] %s", sep, $1, $2; sep = ", " }' "$tmp/table-reload")
    echo "ok: $n keys documented; needing a restart: $restart"
fi
exit "$status"
