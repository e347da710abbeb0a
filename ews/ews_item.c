/* ews_item — the naming tag that ties an Outlook item to its contact log.
 *
 * The tag is stored in a string MAPI property (EWS_PROPERTY_SET_ID/EWS_PROPERTY_NAME)
 * and is how FindItem finds the item again after a lost response or a crash, so its
 * format is part of the data in the field: never change it. */
#include "ews_item.h"

#include <inttypes.h>
#include <stdio.h>

const char *ews_item_kind_name(ews_item_kind kind)
{
    switch (kind) {
    case EWS_ITEM_APPOINTMENT: return "appointment";
    case EWS_ITEM_TASK: return "task";
    }
    return "unknown";
}

int ews_item_tag(char *buf, size_t size, int64_t log_id, ews_item_kind kind)
{
    if (kind != EWS_ITEM_APPOINTMENT && kind != EWS_ITEM_TASK) {
        /* A tag for a kind we never create would find nothing; refuse like snprintf
         * refuses an encoding error, leaving an empty string behind. */
        if (buf != NULL && size > 0)
            buf[0] = '\0';
        return -1;
    }
    return snprintf(buf, size, "contactlog:%" PRId64 ":%s", log_id, ews_item_kind_name(kind));
}
