/* log — leveled logging to stderr with <N> priority prefixes (journald reads them)
 * and a timestamp ("<6>2026-11-30T14:03:07.512+0100 message"), or straight to the
 * journal with structured fields and no timestamp of ours when stderr is the
 * journal (JOURNAL_STREAM matches it). */
#ifndef FOLLOWUPD_LOG_H
#define FOLLOWUPD_LOG_H

#include <stdbool.h>
#include <stdint.h>
#include <syslog.h>

void log_init(bool debug);
bool log_debug_enabled(void);

void log_msg(int priority, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A line about one contact log: adds CONTACT_LOG_ID=, MAILBOX= and EWS_RESPONSE_CODE=
 * journal fields (mailbox/response_code may be NULL). */
void log_item(int priority, int64_t log_id, const char *mailbox, const char *response_code,
              const char *fmt, ...) __attribute__((format(printf, 5, 6)));

#define log_error(...) log_msg(LOG_ERR, __VA_ARGS__)
#define log_warning(...) log_msg(LOG_WARNING, __VA_ARGS__)
#define log_notice(...) log_msg(LOG_NOTICE, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) \
    do { if (log_debug_enabled()) log_msg(LOG_DEBUG, __VA_ARGS__); } while (0)

#endif
