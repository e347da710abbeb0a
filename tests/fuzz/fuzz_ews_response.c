/* fuzz_ews_response — libFuzzer target for ews_response_parse().
 *
 * The parser's promise (ews/ews_response.h): whatever bytes arrive, it returns 0 with
 * a complete result or -1 with a one-line reason, never crashes, never leaks, never
 * reads outside the buffer, never prints. This target checks that promise plus the
 * invariants the caller (ews/delivery_ews.c) relies on:
 *   - on failure *out is NULL and err holds a non-empty, printable, NUL-terminated line;
 *   - on success every message has a non-NULL, non-empty response_code, every found
 *     item a non-empty item_id, back-off values are -1 or within [0, MAX_BACK_OFF];
 *   - codes and texts from the server (what the daemon logs and stores in
 *     outlook_sync.last_error) are one line of valid UTF-8 without control
 *     characters, at most 63 (codes) and 512 (texts) bytes;
 *   - the input is never read past len (the buffer libFuzzer hands over is exactly
 *     len bytes and not NUL-terminated, so ASan catches any such read).
 * Build and run: tests/fuzz/run.sh (see tests/fuzz/README.md). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>

#include "ews/ews_response.h"

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "fuzz_ews_response: invariant failed: %s (%s:%d)\n",      \
                    #cond, __FILE__, __LINE__);                                      \
            abort();                                                                 \
        }                                                                            \
    } while (0)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    xmlInitParser();
    return 0;
}

static void check_string(const char *s, bool may_be_null)
{
    if (s == NULL) {
        CHECK(may_be_null);
        return;
    }
    /* Touch every byte: ASan reports a string that is not terminated in bounds. */
    volatile size_t n = strlen(s);
    (void)n;
}

/* Server text the daemon logs and stores: one line, no control characters (C0, DEL,
 * C1), at most max bytes and valid UTF-8 (so never cut inside a character). */
static void check_server_text(const char *s, size_t max)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);

    CHECK(n <= max);
    for (size_t i = 0; i < n;) {
        size_t len = p[i] < 0x80 ? 1 : (p[i] & 0xE0) == 0xC0 ? 2 : (p[i] & 0xF0) == 0xE0 ? 3
                   : (p[i] & 0xF8) == 0xF0 ? 4 : 0;
        CHECK(len != 0 && i + len <= n);
        for (size_t k = 1; k < len; k++)
            CHECK((p[i + k] & 0xC0) == 0x80);
        CHECK(p[i] >= 0x20 && p[i] != 0x7F);
        CHECK(!(p[i] == 0xC2 && p[i + 1] >= 0x80 && p[i + 1] <= 0x9F));
        i += len;
    }
}

static void check_back_off(int64_t ms)
{
    CHECK(ms == -1 || (ms >= 0 && ms <= EWS_RESPONSE_MAX_BACK_OFF_MS));
}

static void check_error_text(const char *err, size_t errlen)
{
    size_t n = strnlen(err, errlen);
    CHECK(n < errlen);          /* terminated */
    CHECK(n > 0);               /* a reason is always given */
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)err[i];
        /* One line, nothing the server chose that could forge a log line. */
        CHECK(c != '\n' && c != '\r');
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ews_response *response = (ews_response *)0x1;   /* must be overwritten */
    char err[256];

    memset(err, 'X', sizeof err);
    int rc = ews_response_parse((const char *)data, size, &response, err, sizeof err);
    if (rc != 0) {
        CHECK(rc == -1);
        CHECK(response == NULL);
        check_error_text(err, sizeof err);
        return 0;
    }
    CHECK(response != NULL);
    if (response->fault_code != NULL) {
        check_string(response->fault_code, false);
        CHECK(response->fault_code[0] != '\0');
        check_server_text(response->fault_code, 63);
        check_string(response->fault_string, true);
        if (response->fault_string != NULL)
            check_server_text(response->fault_string, 512);
        check_back_off(response->fault_back_off_ms);
        CHECK(response->n_messages == 0);
    } else {
        CHECK(response->n_messages > 0);
    }
    for (size_t i = 0; i < response->n_messages; i++) {
        const ews_response_message *m = &response->messages[i];
        CHECK(m->response_class == EWS_CLASS_SUCCESS || m->response_class == EWS_CLASS_WARNING ||
              m->response_class == EWS_CLASS_ERROR);
        check_string(m->response_code, false);
        CHECK(m->response_code[0] != '\0');
        check_server_text(m->response_code, 63);
        check_string(m->message_text, true);
        if (m->message_text != NULL)
            check_server_text(m->message_text, 512);
        check_back_off(m->back_off_ms);
        CHECK(m->n_items == 0 || m->items != NULL);
        for (size_t k = 0; k < m->n_items; k++) {
            check_string(m->items[k].item_id, false);
            CHECK(m->items[k].item_id[0] != '\0');
            check_string(m->items[k].change_key, true);
            check_string(m->items[k].tag, true);
        }
    }
    ews_response_free(response);
    return 0;
}
