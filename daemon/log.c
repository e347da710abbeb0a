/* log — see log.h. */
#include "daemon/log.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SD_JOURNAL_SUPPRESS_LOCATION
#include <systemd/sd-journal.h>

#include "daemon/text.h"

static bool debug_enabled;
static bool stderr_is_journal;

/* systemd sets JOURNAL_STREAM=dev:ino for the stream it connected to stderr. */
static bool detect_journal_stream(void)
{
    const char *value = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;

    if (!value || sscanf(value, "%llu:%llu", &dev, &ino) != 2)
        return false;
    if (fstat(STDERR_FILENO, &st) < 0)
        return false;
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void log_init(bool debug)
{
    debug_enabled = debug;
    stderr_is_journal = detect_journal_stream();
}

bool log_debug_enabled(void)
{
    return debug_enabled;
}

static void write_line(int priority, const char *text)
{
    char line[2048];

    /* Text from servers, attributes and addresses may hold line breaks: one message
     * stays one line, so nobody can forge a line with a priority prefix of its own. */
    text_copy_one_line(line, sizeof line, text);
    /* Not the journal (a terminal, a file, a pipe): each line says when, in local time
     * with its offset to UTC; the journal keeps its own timestamps. The priority prefix
     * stays first, where journald and syslog look for it. */
    char when[48] = "";
    struct timespec now;
    struct tm tm;
    if (clock_gettime(CLOCK_REALTIME, &now) == 0 && localtime_r(&now.tv_sec, &tm)) {
        char date[24], zone[8];
        strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", &tm);
        strftime(zone, sizeof zone, "%z", &tm);
        snprintf(when, sizeof when, "%s.%03ld%s ", date, now.tv_nsec / 1000000L, zone);
    }
    /* One fprintf per line so concurrent writers never interleave within a line. */
    fprintf(stderr, "<%d>%s%s\n", priority, when, line);
}

/* log_id < 0: a line about no particular contact log (no structured fields). */
static void emit(int priority, int64_t log_id, const char *mailbox, const char *response_code,
                 const char *fmt, va_list ap) __attribute__((format(printf, 5, 0)));

static void emit(int priority, int64_t log_id, const char *mailbox, const char *response_code,
                 const char *fmt, va_list ap)
{
    char text[2048];

    if (priority == LOG_DEBUG && !debug_enabled)
        return;
    vsnprintf(text, sizeof text, fmt, ap);
    if (!stderr_is_journal)
        write_line(priority, text);
    else if (log_id < 0)
        sd_journal_send("MESSAGE=%s", text, "PRIORITY=%d", priority,
                        "SYSLOG_IDENTIFIER=followupd", NULL);
    else
        sd_journal_send("MESSAGE=%s", text, "PRIORITY=%d", priority,
                        "SYSLOG_IDENTIFIER=followupd",
                        "CONTACT_LOG_ID=%" PRId64, log_id,
                        "MAILBOX=%s", mailbox ? mailbox : "",
                        "EWS_RESPONSE_CODE=%s", response_code ? response_code : "",
                        NULL);
}

void log_msg(int priority, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    emit(priority, -1, NULL, NULL, fmt, ap);
    va_end(ap);
}

void log_item(int priority, int64_t log_id, const char *mailbox, const char *response_code,
              const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    emit(priority, log_id, mailbox, response_code, fmt, ap);
    va_end(ap);
}
