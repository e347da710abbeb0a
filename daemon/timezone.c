/* timezone — see timezone.h. Two sorted static tables, binary search, no allocation. */
#include "timezone.h"

#include <stddef.h>
#include <stdlib.h>
#include <strings.h>

struct timezone_entry {
    const char *iana;
    const char *windows;
};

#include "timezone_table.h"

static int compare_entry(const void *key, const void *member)
{
    return strcasecmp(key, ((const struct timezone_entry *)member)->iana);
}

static int compare_name(const void *key, const void *member)
{
    return strcasecmp(key, *(const char *const *)member);
}

const char *timezone_windows_id(const char *name)
{
    if (!name || !*name)
        return NULL;
    const struct timezone_entry *entry =
        bsearch(name, timezone_iana, sizeof timezone_iana / sizeof timezone_iana[0],
                sizeof timezone_iana[0], compare_entry);
    if (entry)
        return entry->windows;
    const char *const *windows =
        bsearch(name, timezone_windows, sizeof timezone_windows / sizeof timezone_windows[0],
                sizeof timezone_windows[0], compare_name);
    return windows ? *windows : NULL;
}
