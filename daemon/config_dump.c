/* config_dump — the configuration written back in followupd.conf syntax
 * (config_dump), and what a reload cannot apply (config_restart_keys).  Both walk
 * the option table of config.c. */
#include "daemon/config.h"

#include <stdio.h>
#include <string.h>

#include "daemon/config_table.h"

static bool option_equal(const config *a, const config *b, const config_option *opt)
{
    const void *fa = config_cfield(a, opt), *fb = config_cfield(b, opt);

    switch (opt->type) {
    case T_STRING:
    case T_PATH:
    case T_WORD: {
        const char *sa = *(char *const *)fa, *sb = *(char *const *)fb;
        return (!sa && !sb) || (sa && sb && strcmp(sa, sb) == 0);
    }
    case T_BOOL:
        return *(const bool *)fa == *(const bool *)fb;
    case T_INT:
    case T_ENUM:
        return memcmp(fa, fb, sizeof(int)) == 0;
    }
    return false;
}

int config_restart_keys(const config *old, const config *new_cfg, char *keys, size_t len)
{
    size_t used = 0;
    int count = 0;

    if (keys && len)
        keys[0] = '\0';
    for (size_t i = 0; i < config_table_size; i++) {
        const config_option *opt = &config_table[i];

        if (opt->reloadable || option_equal(old, new_cfg, opt))
            continue;
        count++;
        if (keys && used < len) {
            int n = snprintf(keys + used, len - used, "%s[%s] %s", count > 1 ? ", " : "",
                             opt->section, opt->key);
            if (n > 0)
                used += (size_t)n;
        }
    }
    return count;
}

void config_dump(const config *cfg, FILE *out)
{
    const char *section = NULL;

    for (size_t i = 0; i < config_table_size; i++) {
        const config_option *opt = &config_table[i];
        const void *field = config_cfield(cfg, opt);
        int v;

        if (!section || strcmp(section, opt->section) != 0) {
            fprintf(out, "%s[%s]\n", section ? "\n" : "", opt->section);
            section = opt->section;
        }
        fprintf(out, "%s = ", opt->key);
        switch (opt->type) {
        case T_STRING:
        case T_PATH:
        case T_WORD: {
            const char *s = *(char *const *)field;
            fputs(s ? s : "", out);
            break;
        }
        case T_BOOL:
            fputs(*(const bool *)field ? "yes" : "no", out);
            break;
        case T_INT:
            memcpy(&v, field, sizeof v);
            fprintf(out, "%d", v);
            break;
        case T_ENUM:
            memcpy(&v, field, sizeof v);
            fputs(v >= 0 && v < config_name_count(opt->values) ? opt->values[v] : "?", out);
            break;
        }
        fputc('\n', out);
    }
}
