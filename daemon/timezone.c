/* timezone — see timezone.h. Two sorted static tables, binary search, no allocation;
 * the rules themselves come from the system's tz database. */
#include "daemon/timezone.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "daemon/text.h"

struct timezone_entry {
    const char *iana;
    const char *windows;
};

#include "daemon/timezone_table.h"

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

/* ---- the calendar day of an instant ---------------------------------------------- */

static bool zone_installed(const char *iana)
{
    const char *dir = getenv("TZDIR");
    char path[PATH_MAX];

    if (!dir || !*dir)
        dir = "/usr/share/zoneinfo";
    int n = snprintf(path, sizeof path, "%s/%s", dir, iana);
    return n > 0 && (size_t)n < sizeof path && access(path, R_OK) == 0;
}

/* An installed IANA zone with the rules of zone. An IANA name stands for itself. A
 * Windows id stands for the IANA zones CLDR maps to it, which follow its rules (that
 * is what the mapping means); the first installed one serves. NULL if none. Table
 * strings only, so nothing from outside reaches a path. */
static const char *iana_for(const char *zone)
{
    const struct timezone_entry *entry =
        bsearch(zone, timezone_iana, sizeof timezone_iana / sizeof timezone_iana[0],
                sizeof timezone_iana[0], compare_entry);
    if (entry)
        return zone_installed(entry->iana) ? entry->iana : NULL;
    const char *const *windows =
        bsearch(zone, timezone_windows, sizeof timezone_windows / sizeof timezone_windows[0],
                sizeof timezone_windows[0], compare_name);
    if (!windows)
        return NULL;
    for (size_t i = 0; i < sizeof timezone_iana / sizeof timezone_iana[0]; i++)
        if (strcmp(timezone_iana[i].windows, *windows) == 0 &&
            zone_installed(timezone_iana[i].iana))
            return timezone_iana[i].iana;
    return NULL;
}

static int compare_date(const struct tm *a, const struct tm *b)
{
    if (a->tm_year != b->tm_year)
        return a->tm_year < b->tm_year ? -1 : 1;
    if (a->tm_mon != b->tm_mon)
        return a->tm_mon < b->tm_mon ? -1 : 1;
    if (a->tm_mday != b->tm_mday)
        return a->tm_mday < b->tm_mday ? -1 : 1;
    return 0;
}

/* With TZ already set: the start of the local day that holds when. */
static int local_day_start(time_t when, int64_t *day_start, int *utc_offset)
{
    struct tm local, midnight, check;

    if (!localtime_r(&when, &local))
        return -ERANGE;
    midnight = (struct tm){ .tm_year = local.tm_year, .tm_mon = local.tm_mon,
                            .tm_mday = local.tm_mday, .tm_isdst = -1 };
    time_t start = mktime(&midnight);
    if (start == (time_t)-1 || !localtime_r(&start, &check))
        return -ERANGE;
    /* Where a clock change skips midnight, mktime may land before the day: the day
     * then begins at the first quarter hour that belongs to it. */
    for (int steps = 0; compare_date(&check, &local) < 0; steps++) {
        start += 15 * 60;
        if (steps > 4 * 26 || !localtime_r(&start, &check))
            return -ERANGE;
    }
    if (compare_date(&check, &local) != 0)
        return -ERANGE;
    *day_start = (int64_t)start;
    *utc_offset = (int)check.tm_gmtoff;
    return 0;
}

int timezone_day_start(const char *zone, int64_t t, int64_t *day_start, int *utc_offset)
{
    char tz[128];
    const char *iana = zone && *zone ? iana_for(zone) : NULL;
    time_t when = (time_t)t;

    if (!iana)
        return -ENOENT;
    if ((int64_t)when != t)
        return -ERANGE;
    if (snprintf(tz, sizeof tz, ":%s", iana) >= (int)sizeof tz)
        return -ENOENT;

    /* glibc reads a zone's rules only through TZ; set it for this call, put it back. */
    const char *old = getenv("TZ");
    char *saved = text_dup(old);
    if (old && !saved)
        return -ENOMEM;
    if (setenv("TZ", tz, 1) != 0) {
        free(saved);
        return -ENOMEM;
    }
    tzset();
    int rc = local_day_start(when, day_start, utc_offset);
    if (!saved)
        unsetenv("TZ");
    else if (setenv("TZ", saved, 1) != 0 && rc == 0)
        rc = -ENOMEM;
    tzset();
    free(saved);
    return rc;
}
