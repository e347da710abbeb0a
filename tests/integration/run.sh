#!/bin/sh
# Runs the integration tests (pytest) and the simulators' own tests under make check.
# Needs top_srcdir/top_builddir (set by make check) and Debian's python3-pytest.
# FOLLOWUPD_INTEGRATION_TESTS (paths relative to the source tree) narrows the run;
# scripts/test does so for the second full run inside make distcheck.
# FOLLOWUPD_TEST_WORKERS (default 4) tests run side by side (pytest-xdist), each worker
# with its own PostgreSQL cluster and simulators: the tests mostly wait on timers, so
# four share two cores well. 1 runs them one after another.
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
python=${PYTHON3:-/usr/bin/python3}
workers=${FOLLOWUPD_TEST_WORKERS:-4}
if [ "$workers" -gt 1 ] && "$python" -c 'import xdist' 2>/dev/null; then
    set -- -n "$workers" "$@"
fi
exec "$python" -m pytest -p no:cacheprovider -q -ra "$@"
