"""Starts a throwaway cluster, installs the schema twice and runs pg_prove."""
import glob
import os
import subprocess
import sys

top = os.environ["top_srcdir"]
sys.path.insert(0, os.path.join(top, "tests", "integration"))
from pgcluster import PgCluster  # noqa: E402

cluster = PgCluster().start()
try:
    install = os.path.join(top, "sql", "install.sql")
    cluster.psql("-f", install)
    cluster.psql("-f", install)
    cluster.psql("-c", "CREATE EXTENSION pgtap")
    files = sorted(glob.glob(os.path.join(top, "tests", "sql", "*.sql")))
    env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(cluster.port),
               PGUSER=cluster.superuser, PGDATABASE=cluster.dbname)
    result = subprocess.run(["pg_prove", "--verbose"] + files, env=env)
    if result.returncode != 0:
        sys.stderr.write(cluster.log())
    sys.exit(result.returncode)
finally:
    cluster.stop()
