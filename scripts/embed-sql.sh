#!/bin/sh
# Turns sql/install.sql into a C string so followupctl migrate needs no data files.
# usage: embed-sql.sh sql/install.sql > sql_install.c
set -eu
printf '/* generated from sql/install.sql by scripts/embed-sql.sh: do not edit */\n'
printf '#include "daemon/sql_install.h"\n'
printf 'const char sql_install_script[] =\n'
sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/"/' -e 's/$/\\n"/' "$1"
printf ';\n'
