#!/bin/sh
# The read side at 1,000,000 contact logs: starts a throwaway PostgreSQL cluster,
# installs sql/install.sql, loads the logs, and prints the times of
# contactlog.list_logs / summary / open_follow_ups and the plans they ran.
#
#   bench/list_logs.sh [--logs N] [--employees N] [--runs N] [--no-explain]
#
# Needs PostgreSQL 15 server binaries and python3-psycopg2 (scripts/setup).
# Takes about a minute and ~1 GB of disk in $TMPDIR; removes everything after.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
export PYTHONDONTWRITEBYTECODE=1
exec "${PYTHON3:-/usr/bin/python3}" "$here/list_logs.py" "$@"
