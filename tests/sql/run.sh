#!/bin/sh
# pgTAP tests of sql/: a throwaway cluster, the schema installed (twice: it must be
# idempotent), then pg_prove over tests/sql/*.sql.
set -eu
: "${top_srcdir:?run through make check}"
export PYTHONDONTWRITEBYTECODE=1
exec "${PYTHON3:-/usr/bin/python3}" "$top_srcdir/tests/sql/pgtap_runner.py"
