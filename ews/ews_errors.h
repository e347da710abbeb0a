/* ews_errors — EWS ResponseCode strings mapped to a small enum, and which are worth retrying.
 * One table in ews_errors.c is the only place this knowledge lives. */
#ifndef FOLLOWUPD_EWS_ERRORS_H
#define FOLLOWUPD_EWS_ERRORS_H

#include <stdbool.h>
#include <stddef.h>

typedef enum ews_code {
    EWS_NO_ERROR = 0,
    EWS_ERROR_SERVER_BUSY,
    EWS_ERROR_ITEM_NOT_FOUND,
    EWS_ERROR_NON_EXISTENT_MAILBOX,
    EWS_ERROR_IMPERSONATE_USER_DENIED,
    EWS_ERROR_ACCESS_DENIED,
    EWS_ERROR_INVALID_REQUEST,      /* schema or argument errors: our bug or data, not transient */
    EWS_ERROR_MAILBOX_STORE_UNAVAILABLE,
    EWS_ERROR_TIMEOUT_EXPIRED,
    EWS_ERROR_INTERNAL_SERVER_TRANSIENT,
    EWS_ERROR_CONFLICT,             /* a concurrent save raced our UpdateItem: retried */
    EWS_ERROR_OTHER_PERMANENT,      /* a known code we treat as final */
    EWS_ERROR_UNKNOWN,              /* a code not in the table: treated as transient */
} ews_code;

typedef enum ews_disposition {
    EWS_DISPOSITION_OK,
    EWS_DISPOSITION_TRANSIENT,      /* retry later with back-off */
    EWS_DISPOSITION_PERMANENT,      /* park: retrying will not help */
} ews_disposition;

ews_code ews_code_from_string(const char *response_code);
ews_disposition ews_code_disposition(ews_code code);

/* Row index of the table (0, 1, ...): its ResponseCode string, with its enum and
 * disposition stored through the non-NULL pointers; NULL past the last row.
 * For tests and listings. */
const char *ews_code_table_row(size_t index, ews_code *code, ews_disposition *disposition);

#endif
