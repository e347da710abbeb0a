/* outlook_item — the naming tag that ties an Outlook item to its contact log.
 *
 * The tag is stored in a string MAPI property (OUTLOOK_TAG_PROPERTY_SET_ID/OUTLOOK_TAG_PROPERTY_NAME)
 * and is how FindItem finds the item again after a lost response or a crash, so its
 * format is part of the data in the field: never change it. */
#include "daemon/outlook_item.h"

#include <inttypes.h>
#include <stdio.h>

const char *outlook_item_kind_name(outlook_item_kind kind)
{
    switch (kind) {
    case OUTLOOK_APPOINTMENT: return "appointment";
    case OUTLOOK_TASK: return "task";
    }
    return "unknown";
}

int outlook_item_tag(char *buf, size_t size, int64_t log_id, outlook_item_kind kind)
{
    if (kind != OUTLOOK_APPOINTMENT && kind != OUTLOOK_TASK) {
        /* A tag for a kind we never create would find nothing; refuse like snprintf
         * refuses an encoding error, leaving an empty string behind. */
        if (buf != NULL && size > 0)
            buf[0] = '\0';
        return -1;
    }
    return snprintf(buf, size, "contactlog:%" PRId64 ":%s", log_id, outlook_item_kind_name(kind));
}
