#!/bin/sh
# sql/install.sql is generated from sql/*.sql and sql/migrations/ (scripts/assemble-sql)
# but kept in the tree: fail when someone edited a part and not the whole, or the whole.
top=${top_srcdir:-$(dirname "$0")/..}
exec sh "$top/scripts/assemble-sql" --check "$top"
