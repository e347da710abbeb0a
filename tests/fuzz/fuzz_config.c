/* fuzz_config — libFuzzer target for the followupd.conf parser:
 * config_parse_string() and, when that accepts the text, config_validate(),
 * config_dump() and config_restart_keys().
 *
 * Invariants checked besides "no crash, no leak, no UB":
 *   - failure leaves *out NULL and a non-empty, terminated, single-line reason that
 *     starts with the file name (operators grep for it);
 *   - an accepted file dumps (config_dump) to text that parses again to a config
 *     that validates the same way and differs in no key (round trip).
 * The input is NUL-terminated here because the parser takes a C string;
 * config_load() refuses files containing NUL, so nothing is lost.
 * Build and run: tests/fuzz/run.sh (see tests/fuzz/README.md). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/config.h"

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "fuzz_config: invariant failed: %s (%s:%d)\n", #cond,     \
                    __FILE__, __LINE__);                                             \
            abort();                                                                 \
        }                                                                            \
    } while (0)

#define NAME "fuzz.conf"

/* Files bigger than config_load's cap never reach the parser. */
#define MAX_INPUT (1024 * 1024)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_error_text(const char *err, size_t errlen)
{
    size_t n = strnlen(err, errlen);
    CHECK(n < errlen);
    CHECK(n > 0);
    CHECK(strchr(err, '\n') == NULL);
}

/* config_dump into a malloc'd string. */
static char *dump(const config *cfg)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);

    if (f == NULL)
        return NULL;
    config_dump(cfg, f);
    if (fclose(f) != 0) {
        free(text);
        return NULL;
    }
    return text;
}

static void round_trip(const config *cfg, int validate_rc)
{
    char err[512], keys[512];
    config *again = NULL;
    char *text = dump(cfg);

    if (text == NULL)
        return;     /* out of memory in the harness: not the parser's fault */
    /* A value that holds " ;" or starts with ';' is cut at the comment when read
     * back, and a value with a line break cannot occur (lines are split first);
     * so only texts without ';' must round-trip exactly. */
    bool exact = strchr(text, ';') == NULL;
    memset(err, 0, sizeof err);
    int rc = config_parse_string(NAME, text, &again, err, sizeof err);
    if (exact) {
        if (rc != 0)
            fprintf(stderr, "fuzz_config: dump does not parse again: %s\n--- dump ---\n%s",
                    err, text);
        CHECK(rc == 0);
        CHECK(config_restart_keys(cfg, again, keys, sizeof keys) == 0);
        CHECK((config_validate(again, err, sizeof err) == 0) == (validate_rc == 0));
    }
    config_free(again);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512], keys[256];
    config *cfg = (config *)0x1, *defaults = NULL;

    if (size > MAX_INPUT)
        return 0;
    char *text = malloc(size + 1);
    if (text == NULL)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';

    memset(err, 'X', sizeof err);
    int rc = config_parse_string(NAME, text, &cfg, err, sizeof err);
    free(text);
    if (rc != 0) {
        CHECK(rc == -1);
        CHECK(cfg == NULL);
        check_error_text(err, sizeof err);
        CHECK(strncmp(err, NAME ":", strlen(NAME ":")) == 0);
        return 0;
    }
    CHECK(cfg != NULL);

    memset(err, 'X', sizeof err);
    int validate_rc = config_validate(cfg, err, sizeof err);
    CHECK(validate_rc == 0 || validate_rc == -1);
    if (validate_rc != 0)
        check_error_text(err, sizeof err);

    /* Keys that need a restart, against the defaults (an empty file). */
    if (config_parse_string(NAME, "", &defaults, err, sizeof err) == 0) {
        int n = config_restart_keys(defaults, cfg, keys, sizeof keys);
        CHECK(n >= 0);
        CHECK(strnlen(keys, sizeof keys) < sizeof keys);
        config_free(defaults);
    }

    char *path = config_password_path(cfg, err, sizeof err);
    free(path);
    (void)config_api_name(cfg->api);
    (void)config_auth_name(cfg->auth);

    round_trip(cfg, validate_rc);
    config_free(cfg);
    return 0;
}
