/* text — small string helpers every folder shares (daemon/, ews/, graph/, http/):
 * one home each, so that a fix to one reaches every caller. */
#ifndef FOLLOWUPD_TEXT_H
#define FOLLOWUPD_TEXT_H

#include <stddef.h>

/* strdup() that passes NULL through: NULL for NULL (and on out of memory). */
char *text_dup(const char *s) __attribute__((warn_unused_result));

/* malloc'd copy of s without leading/trailing white space; NULL: out of memory. */
char *text_dup_trimmed(const char *s) __attribute__((warn_unused_result));

/* Makes text from outside (a server, a database, a file) safe to show, in place:
 * C0 controls, DEL and C1 controls become blanks, so a text holding
 * "\n<0>followupd: ..." cannot forge a log line or steer a terminal; and it is cut
 * to at most max bytes without splitting a UTF-8 character, so a caller's fixed
 * buffer is never the place where a character breaks and PostgreSQL (which refuses
 * broken UTF-8) can always store it. NULL is left alone. */
void text_one_line(char *s, size_t max);

/* Copies src (NULL: empty) into dst[size] as text_one_line leaves it, cut to fit. */
void text_copy_one_line(char *dst, size_t size, const char *src);

/* vsnprintf into err: the one-line reason a function leaves for its caller
 * (nothing when err is NULL or errlen 0). */
void text_set_error(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
