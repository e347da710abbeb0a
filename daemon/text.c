/* text — see text.h. */
#include "daemon/text.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

char *text_dup(const char *s)
{
    return s ? strdup(s) : NULL;
}

char *text_dup_trimmed(const char *s)
{
    while (*s != '\0' && isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        n--;
    char *out = malloc(n + 1);
    if (out != NULL) {
        memcpy(out, s, n);
        out[n] = '\0';
    }
    return out;
}

void text_one_line(char *s, size_t max)
{
    size_t n;

    if (s == NULL)
        return;
    n = strlen(s);
    if (n > max) {
        n = max;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--;                        /* back to the lead byte of the cut character */
        s[n] = '\0';
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7F) {
            s[i] = ' ';
        } else if (c == 0xC2 && i + 1 < n && (unsigned char)s[i + 1] >= 0x80 &&
                   (unsigned char)s[i + 1] <= 0x9F) {
            s[i] = ' ';                 /* U+0080..U+009F, e.g. U+009B CSI */
            s[i + 1] = ' ';
            i++;
        }
    }
}

/* Cut while copying: the source's next byte tells whether the cut splits a character. */
void text_copy_one_line(char *dst, size_t size, const char *src)
{
    size_t n;

    if (size == 0)
        return;
    if (src == NULL)
        src = "";
    n = strnlen(src, size);
    if (n > size - 1) {
        n = size - 1;
        while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80)
            n--;
    }
    memcpy(dst, src, n);
    dst[n] = '\0';
    text_one_line(dst, n);
}

void text_set_error(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}
