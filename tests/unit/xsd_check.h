/* xsd_check — validates built EWS requests against Microsoft's schema in unit tests.
 *
 * The schema lives outside the repository (env FOLLOWUPD_EWS_SCHEMA, a copy of
 * ../shared/ews-schema). Without it validation is skipped, visibly, so the unit tests
 * still run from a tarball; the rest of each test still asserts. */
#ifndef FOLLOWUPD_XSD_CHECK_H
#define FOLLOWUPD_XSD_CHECK_H

#include <stdbool.h>
#include <stddef.h>

/* Copies the *.xsd files to a temporary directory, drops the three lines libxml2
 * cannot compile (see the schema README) and compiles ews-envelope.xsd once.
 * Returns 0 (also when the schema is absent: validation then always succeeds) or
 * -1 with the reason on stderr when the schema is there but unusable. */
int xsd_check_init(void);

/* True when xsd_check_init() found and compiled the schema. */
bool xsd_check_enabled(void);

/* 0 when xml[0..len) is a well-formed document that validates; otherwise -1 with the
 * first problem ("line N: ...") in err. */
int xsd_check_validate(const char *xml, size_t len, char *err, size_t errlen);

/* Frees the schema and removes the temporary directory. */
void xsd_check_fini(void);

/* cmocka group setup and teardown of the request tests: libxml2 and the schema up,
 * then down again. */
int xsd_check_group_setup(void **state);
int xsd_check_group_teardown(void **state);

#endif
