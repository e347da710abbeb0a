/* sql_install — sql/install.sql, compiled in (see scripts/embed-sql.sh). */
#ifndef FOLLOWUPD_SQL_INSTALL_H
#define FOLLOWUPD_SQL_INSTALL_H
extern const char sql_install_script[];
#endif
