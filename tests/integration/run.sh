#!/bin/sh
# Runs the integration tests (pytest) and the simulator's own tests under make check.
# Needs top_srcdir/top_builddir (set by make check) and Debian's python3-pytest.
set -eu
: "${top_srcdir:?run through make check}"
: "${top_builddir:?run through make check}"
export PYTHONDONTWRITEBYTECODE=1
exec "${PYTHON3:-/usr/bin/python3}" -m pytest -p no:cacheprovider -q -ra \
    "$top_srcdir/tests/sim" "$top_srcdir/tests/integration"
