#!/bin/sh
# tests/fuzz/run.sh [SECONDS] — build followupd's libFuzzer targets with clang
# (ASan + UBSan + libFuzzer) straight from the sources and run each for SECONDS
# (default 60) on a scratch copy of its seed corpus.
#
# Exit status: 0 when every target ran its time without a finding; 1 when a target
# crashed, leaked, hit undefined behaviour, ran out of memory or timed out (the
# reproducer's path and the command to replay it are printed, and the scratch
# directory is kept); 2 on a usage or build error.
#
# Environment:
#   CLANG          compiler (default: clang, else clang-14)
#   FUZZ_TARGETS   space-separated subset of: ews_response config item_content
#   FUZZ_WORKDIR   scratch directory to use instead of a fresh mktemp one (kept)
# Longer runs, corpus upkeep and replaying a crash: tests/fuzz/README.md.
set -u

usage() {
    echo "usage: tests/fuzz/run.sh [SECONDS]" >&2
    exit 2
}

seconds=${1:-60}
[ $# -le 1 ] || usage
case $seconds in
    ''|*[!0-9]*) usage ;;
esac
[ "$seconds" -ge 1 ] || usage

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
targets=${FUZZ_TARGETS:-"ews_response config item_content"}

cc=${CLANG:-}
if [ -z "$cc" ]; then
    for c in clang clang-14; do
        if command -v "$c" >/dev/null 2>&1; then
            cc=$c
            break
        fi
    done
fi
if [ -z "$cc" ]; then
    echo "fuzz: clang not found; install clang and libclang-rt-14-dev (scripts/setup)" >&2
    exit 2
fi
if ! xml_cflags=$(pkg-config --cflags libxml-2.0) || ! xml_libs=$(pkg-config --libs libxml-2.0); then
    echo "fuzz: pkg-config cannot find libxml-2.0; install libxml2-dev" >&2
    exit 2
fi
crypto_libs=$(pkg-config --libs libcrypto 2>/dev/null || echo -lcrypto)

if [ -n "${FUZZ_WORKDIR:-}" ]; then
    work=$FUZZ_WORKDIR
    mkdir -p "$work" || exit 2
    keep=yes
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/followupd-fuzz.XXXXXX") || exit 2
    keep=no
fi
# shellcheck disable=SC2317  # called by the trap
cleanup() {
    [ "$keep" = yes ] || rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# -fno-sanitize-recover: undefined behaviour is a finding, not a warning in a log.
cflags="-g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
        -fno-omit-frame-pointer -std=c11 -D_GNU_SOURCE -Wall -Wextra -I$top"

# Sources per target: only what each entry point needs, never main().
sources_for() {
    case $1 in
        ews_response) echo "ews/ews_response.c ews/ews_xml.c ews/ews_errors.c daemon/outlook_item.c daemon/text.c" ;;
        config) echo "daemon/config.c daemon/config_check.c daemon/config_secret.c daemon/config_dump.c daemon/text.c" ;;
        item_content) echo "daemon/item_content.c daemon/timezone.c ews/ews_request.c ews/ews_soap.c daemon/outlook_item.c daemon/text.c" ;;
        *) return 1 ;;
    esac
}
libs_for() {
    case $1 in
        ews_response) echo "$xml_libs" ;;
        config) echo "" ;;
        item_content) echo "$xml_libs $crypto_libs" ;;
    esac
}

# quarantine_size_mb: ASan keeps freed memory poisoned in a quarantine (256 MB by
# default) that counts against -rss_limit_mb; after a few minutes that alone looks
# like an out-of-memory finding. 64 MB still catches use-after-free, and the limit
# then measures the code under test (which stays near 30 MB without ASan).
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:allocator_may_return_null=1:strict_string_checks=1:detect_stack_use_after_return=1:quarantine_size_mb=64}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

status=0
for t in $targets; do
    if ! srcs=$(sources_for "$t"); then
        echo "fuzz: unknown target '$t' (known: ews_response config item_content)" >&2
        exit 2
    fi
    bin=$work/fuzz_$t
    echo "fuzz: building fuzz_$t with $cc" >&2
    paths=""
    for s in $srcs; do
        paths="$paths $top/$s"
    done
    # shellcheck disable=SC2086,SC2046  # flag lists are meant to split
    if ! "$cc" $cflags $xml_cflags -o "$bin" "$here/fuzz_$t.c" $paths $(libs_for "$t"); then
        echo "fuzz: building fuzz_$t failed" >&2
        keep=yes
        exit 2
    fi

    corpus=$work/corpus_$t
    artifacts=$work/artifacts_$t/
    rm -rf "$corpus" "$artifacts"
    mkdir -p "$corpus" "$artifacts"
    seeds=$here/corpus/$t
    [ -d "$seeds" ] && cp -p "$seeds"/* "$corpus"/ 2>/dev/null
    dict=""
    [ -f "$here/$t.dict" ] && dict="-dict=$here/$t.dict"

    echo "fuzz: running fuzz_$t for ${seconds}s (log: $work/fuzz_$t.log)" >&2
    # shellcheck disable=SC2086
    "$bin" -max_total_time="$seconds" -rss_limit_mb=512 -timeout=5 -max_len=65536 \
        -print_final_stats=1 -artifact_prefix="$artifacts" $dict \
        "$corpus" >"$work/fuzz_$t.log" 2>&1
    rc=$?
    findings=$(find "$artifacts" -type f 2>/dev/null | sort)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/fuzz_$t.log" | tail -n 1)
    if [ "$rc" -ne 0 ] || [ -n "$findings" ]; then
        status=1
        keep=yes
        echo "fuzz: fuzz_$t FAILED (exit $rc) after ${execs:-?} runs; last lines of its log:" >&2
        tail -n 60 "$work/fuzz_$t.log" >&2
        for f in $findings; do
            echo "fuzz: reproducer: $f" >&2
            echo "fuzz:   replay with: $bin $f" >&2
        done
        [ -n "$findings" ] || echo "fuzz: no reproducer written; see $work/fuzz_$t.log" >&2
    else
        n=$(find "$corpus" -type f | wc -l)
        echo "fuzz: fuzz_$t OK: ${execs:-?} runs in ${seconds}s, corpus $n files" >&2
    fi
done

if [ "$status" -ne 0 ]; then
    echo "fuzz: findings kept in $work" >&2
fi
exit "$status"
