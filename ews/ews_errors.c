/* ews_errors — the one table that says what an EWS ResponseCode means to followupd.
 *
 * Exchange has several hundred ResponseCodes (messages.xsd, m:ResponseCodeType). The
 * daemon only needs to know two things about each: is it worth retrying, and is it one
 * of the few it treats specially (ErrorItemNotFound: re-create; ErrorServerBusy:
 * honour BackOffMilliseconds). So every code we have an opinion on maps to a small
 * enum, and each enum value has exactly one disposition. Codes not listed are
 * EWS_ERROR_UNKNOWN and retried: max_attempts bounds the cost of being optimistic,
 * whereas wrongly parking a follow-up loses it until an operator notices.
 *
 * Exchange answers a code the request's RequestServerVersion does not know as
 * ErrorInternalServerError and names the real one in MessageXml
 * (InnerErrorResponseCode); ews_response looks that one up here first. */
#include "ews/ews_errors.h"

#include <stddef.h>
#include <string.h>

typedef struct ews_code_entry {
    const char *response_code;
    ews_code code;
    ews_disposition disposition;
} ews_code_entry;

#define OK EWS_DISPOSITION_OK
#define TRANSIENT EWS_DISPOSITION_TRANSIENT
#define PERMANENT EWS_DISPOSITION_PERMANENT

static const ews_code_entry ews_code_table[] = {
    { "NoError", EWS_NO_ERROR, OK },

    /* Throttling and overload: wait (BackOffMilliseconds when given) and retry. */
    { "ErrorServerBusy", EWS_ERROR_SERVER_BUSY, TRANSIENT },
    { "ErrorTooManyObjectsOpened", EWS_ERROR_SERVER_BUSY, TRANSIENT },
    { "ErrorExceededConnectionCount", EWS_ERROR_SERVER_BUSY, TRANSIENT },

    /* The mailbox database is briefly unreachable (fail-over, move, restart). */
    { "ErrorMailboxStoreUnavailable", EWS_ERROR_MAILBOX_STORE_UNAVAILABLE, TRANSIENT },
    { "ErrorMailboxMoveInProgress", EWS_ERROR_MAILBOX_STORE_UNAVAILABLE, TRANSIENT },
    { "ErrorMailboxLogonFailed", EWS_ERROR_MAILBOX_STORE_UNAVAILABLE, TRANSIENT },
    { "ErrorConnectionFailed", EWS_ERROR_MAILBOX_STORE_UNAVAILABLE, TRANSIENT },

    { "ErrorTimeoutExpired", EWS_ERROR_TIMEOUT_EXPIRED, TRANSIENT },

    { "ErrorInternalServerTransientError", EWS_ERROR_INTERNAL_SERVER_TRANSIENT, TRANSIENT },
    /* Exchange reports passing store faults this way too; max_attempts caps the retries. */
    { "ErrorInternalServerError", EWS_ERROR_INTERNAL_SERVER_TRANSIENT, TRANSIENT },
    { "ErrorNotEnoughMemory", EWS_ERROR_INTERNAL_SERVER_TRANSIENT, TRANSIENT },
    /* An earlier item of the same batch failed; this one was never tried. */
    { "ErrorBatchProcessingStopped", EWS_ERROR_INTERNAL_SERVER_TRANSIENT, TRANSIENT },

    /* Our UpdateItem says ConflictResolution="AlwaysOverwrite", so a change made in
     * Outlook since our last write (a stale ChangeKey) is overwritten, never refused.
     * What Exchange still cannot resolve is a save that raced ours in the store (the
     * user's Outlook writing the same item at that moment): the item is fine, the next
     * attempt overwrites it. Retried; max_attempts bounds a conflict that persists. */
    { "ErrorIrresolvableConflict", EWS_ERROR_CONFLICT, TRANSIENT },

    /* Permanent in the table; the daemon re-creates the item instead of parking it. */
    { "ErrorItemNotFound", EWS_ERROR_ITEM_NOT_FOUND, PERMANENT },

    /* The creator's mailbox cannot be addressed: fix employee.email. */
    { "ErrorNonExistentMailbox", EWS_ERROR_NON_EXISTENT_MAILBOX, PERMANENT },
    { "ErrorInvalidSmtpAddress", EWS_ERROR_NON_EXISTENT_MAILBOX, PERMANENT },
    { "ErrorMissingEmailAddress", EWS_ERROR_NON_EXISTENT_MAILBOX, PERMANENT },
    { "ErrorInvalidExchangeImpersonationHeaderData", EWS_ERROR_NON_EXISTENT_MAILBOX, PERMANENT },

    /* The service account lacks the ApplicationImpersonation role (or delegate rights). */
    { "ErrorImpersonateUserDenied", EWS_ERROR_IMPERSONATE_USER_DENIED, PERMANENT },
    { "ErrorImpersonationDenied", EWS_ERROR_IMPERSONATE_USER_DENIED, PERMANENT },

    { "ErrorAccessDenied", EWS_ERROR_ACCESS_DENIED, PERMANENT },
    { "ErrorAccountDisabled", EWS_ERROR_ACCESS_DENIED, PERMANENT },

    /* The request itself is wrong: our bug, bad data or a bad [exchange] version. */
    { "ErrorInvalidRequest", EWS_ERROR_INVALID_REQUEST, PERMANENT },
    { "ErrorSchemaValidation", EWS_ERROR_INVALID_REQUEST, PERMANENT },
    { "ErrorInvalidPropertySet", EWS_ERROR_INVALID_REQUEST, PERMANENT },
    { "ErrorInvalidPropertyRequest", EWS_ERROR_INVALID_REQUEST, PERMANENT },
    { "ErrorInvalidExtendedProperty", EWS_ERROR_INVALID_REQUEST, PERMANENT },
    { "ErrorInvalidExtendedPropertyValue", EWS_ERROR_INVALID_REQUEST, PERMANENT },
    { "ErrorInvalidValueForProperty", EWS_ERROR_INVALID_REQUEST, PERMANENT },
    { "ErrorPropertyValidationFailure", EWS_ERROR_INVALID_REQUEST, PERMANENT },
    { "ErrorUnsupportedPropertyDefinition", EWS_ERROR_INVALID_REQUEST, PERMANENT },
    { "ErrorInvalidIdMalformed", EWS_ERROR_INVALID_REQUEST, PERMANENT },
    { "ErrorInvalidIdEmpty", EWS_ERROR_INVALID_REQUEST, PERMANENT },
    { "ErrorInvalidId", EWS_ERROR_INVALID_REQUEST, PERMANENT },
    /* Not a stale ChangeKey (AlwaysOverwrite ignores staleness) but one Exchange cannot
     * parse: the same bytes fail every time, like ErrorInvalidIdMalformed. */
    { "ErrorInvalidChangeKey", EWS_ERROR_INVALID_REQUEST, PERMANENT },
    { "ErrorInvalidServerVersion", EWS_ERROR_INVALID_REQUEST, PERMANENT },
    { "ErrorIncorrectSchemaVersion", EWS_ERROR_INVALID_REQUEST, PERMANENT },
    { "ErrorSendMeetingInvitationsRequired", EWS_ERROR_INVALID_REQUEST, PERMANENT },
    { "ErrorCalendarEndDateIsEarlierThanStartDate", EWS_ERROR_INVALID_REQUEST, PERMANENT },
    { "ErrorCalendarDurationIsTooLong", EWS_ERROR_INVALID_REQUEST, PERMANENT },
    { "ErrorCalendarInvalidTimeZone", EWS_ERROR_INVALID_REQUEST, PERMANENT },
    { "ErrorCalendarInvalidDayForTimeChangePattern", EWS_ERROR_INVALID_REQUEST, PERMANENT },
    { "ErrorTimeZone", EWS_ERROR_INVALID_REQUEST, PERMANENT },

    /* Known and final, without an enum value of their own. */
    { "ErrorCorruptData", EWS_ERROR_OTHER_PERMANENT, PERMANENT },
    { "ErrorQuotaExceeded", EWS_ERROR_OTHER_PERMANENT, PERMANENT },
    /* The mailbox's Recoverable Items quota is full (often a mailbox on hold): deletes
     * fail until an Exchange admin makes room. Newer than our schema version, so it
     * usually arrives as the InnerErrorResponseCode of an ErrorInternalServerError. */
    { "ErrorQuotaExceededOnDelete", EWS_ERROR_OTHER_PERMANENT, PERMANENT },
    { "ErrorMessageSizeExceeded", EWS_ERROR_OTHER_PERMANENT, PERMANENT },
    { "ErrorFolderNotFound", EWS_ERROR_OTHER_PERMANENT, PERMANENT },
    { "ErrorMailboxConfiguration", EWS_ERROR_OTHER_PERMANENT, PERMANENT },
    { "ErrorCannotDeleteObject", EWS_ERROR_OTHER_PERMANENT, PERMANENT },
    { "ErrorCannotDeleteTaskOccurrence", EWS_ERROR_OTHER_PERMANENT, PERMANENT },
};

#undef OK
#undef TRANSIENT
#undef PERMANENT

#define TABLE_LENGTH (sizeof ews_code_table / sizeof ews_code_table[0])

ews_code ews_code_from_string(const char *response_code)
{
    if (response_code == NULL)
        return EWS_ERROR_UNKNOWN;
    for (size_t i = 0; i < TABLE_LENGTH; i++)
        if (strcmp(ews_code_table[i].response_code, response_code) == 0)
            return ews_code_table[i].code;
    return EWS_ERROR_UNKNOWN;
}

ews_disposition ews_code_disposition(ews_code code)
{
    /* The first row of a code carries its disposition; all rows of a code agree
     * (test_ews_response checks that). */
    for (size_t i = 0; i < TABLE_LENGTH; i++)
        if (ews_code_table[i].code == code)
            return ews_code_table[i].disposition;
    /* EWS_ERROR_UNKNOWN and anything out of range: worth another try. */
    return EWS_DISPOSITION_TRANSIENT;
}

const char *ews_code_table_row(size_t index, ews_code *code, ews_disposition *disposition)
{
    if (index >= TABLE_LENGTH)
        return NULL;
    if (code != NULL)
        *code = ews_code_table[index].code;
    if (disposition != NULL)
        *disposition = ews_code_table[index].disposition;
    return ews_code_table[index].response_code;
}
