#!/bin/sh
# Runs the integration tests (pytest) and the simulators' own tests under make check.
# Needs top_srcdir/top_builddir (set by make check) and Debian's python3-pytest.
# FOLLOWUPD_INTEGRATION_TESTS (paths relative to the source tree) narrows the run;
# scripts/test does so for the second full run inside make distcheck.
set -eu
: "${top_srcdir:?run through make check}"
: "${top_builddir:?run through make check}"
export PYTHONDONTWRITEBYTECODE=1
set -- "$top_srcdir/tests/sim" "$top_srcdir/tests/integration"
if [ -n "${FOLLOWUPD_INTEGRATION_TESTS:-}" ]; then
    set --
    for path in $FOLLOWUPD_INTEGRATION_TESTS; do
        set -- "$@" "$top_srcdir/$path"
    done
fi
exec "${PYTHON3:-/usr/bin/python3}" -m pytest -p no:cacheprovider -q -ra "$@"
