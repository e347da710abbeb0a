/* config_table — the option table's rows and the helpers the config module's files
 * share: config.c (the table, the parser, load), config_check.c (rules between
 * keys, secrets) and config_dump.c (dump, restart keys).  Internal to the module:
 * everyone else includes daemon/config.h. */
#ifndef FOLLOWUPD_CONFIG_TABLE_H
#define FOLLOWUPD_CONFIG_TABLE_H

#include <stdbool.h>
#include <stddef.h>

#include "daemon/config.h"

#define CONFIG_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

enum config_option_type {
    T_STRING,   /* char *, empty value -> default (strdup'd) */
    T_PATH,     /* char *, empty value -> NULL */
    T_WORD,     /* char *, must be one of opt->values */
    T_BOOL,     /* bool */
    T_INT,      /* int in [min, max] */
    T_ENUM,     /* enum stored as int: index into opt->values */
};

typedef struct config_option {
    const char *section;
    const char *key;
    enum config_option_type type;
    const char *default_value;  /* as written in the file; "" = empty */
    size_t offset;              /* into struct config */
    bool reloadable;
    int min, max;               /* T_INT only */
    const char *const *values;  /* T_ENUM / T_WORD: NULL-terminated */
} config_option;

/* The rows of CONFIG_OPTION_TABLE (config.c), in file order. */
extern const config_option config_table[];
extern const size_t config_table_size;

/* Where a config came from: the file's name and, per table row, the line that set
 * the key (0: not in the file, the default).  Made by the parser. */
struct config_origin {
    char *file;
    int line[];
};

/* Value names; index == enum value for api and auth. */
extern const char *const config_api_names[];
extern const char *const config_auth_names[];
extern const char *const config_version_names[];   /* t:ExchangeVersionType, oldest first */

const config_option *config_table_find(const char *section, const char *key);

/* Index of s in names (case-insensitive), or -1. */
int config_name_index(const char *const *names, const char *s);
int config_name_count(const char *const *names);
/* "a, b or c" for messages. */
void config_join_names(const char *const *names, char *buf, size_t len);

/* config_check.c: the values worth suggesting (for [exchange] version, those not
 * refused by config_check_version_age), and the refusal of too old a version (a
 * reason without location; 0 for anything else). */
const char *const *config_usable_names(const char *const *names);
int config_check_version_age(const char *version, char *err, size_t errlen);

static inline void *config_field(config *cfg, const config_option *opt)
{
    return (char *)cfg + opt->offset;
}

static inline const void *config_cfield(const config *cfg, const config_option *opt)
{
    return (const char *)cfg + opt->offset;
}

#endif
