/* config_check — the rules that tie keys together (config_validate), the refusal
 * of too old an Exchange version, and where a key was set (config_where), so that
 * every message names the file, the line and the key: "followupd.conf:12: [exchange]
 * url: ...".  The option table and the parser are in config.c. */
#include "daemon/config.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "daemon/config_table.h"
#include "daemon/text.h"

/* The oldest schema our requests fit: older ones lack the time-zone elements every
 * appointment and task carries (SPEC section 4), so Exchange would answer each request
 * with ErrorSchemaValidation and everything would park. */
#define OLDEST_USABLE_VERSION "Exchange2010_SP1"

/* ---- where a key was set ---------------------------------------------------- */

const char *config_file_name(const config *cfg)
{
    return cfg && cfg->origin ? cfg->origin->file : NULL;
}

int config_key_line(const config *cfg, const char *section, const char *key)
{
    const config_option *opt = config_table_find(section, key);

    if (!cfg || !cfg->origin || !opt)
        return 0;
    return cfg->origin->line[opt - config_table];
}

const char *config_where(const config *cfg, const char *section, const char *key, char *buf,
                         size_t len)
{
    const char *file = config_file_name(cfg);
    int line = config_key_line(cfg, section, key);

    if (!file)
        snprintf(buf, len, "[%s] %s", section, key);
    else if (line > 0)
        snprintf(buf, len, "%s:%d: [%s] %s", file, line, section, key);
    else
        snprintf(buf, len, "%s: [%s] %s", file, section, key);
    return buf;
}

/* err = "FILE:LINE: [section] key: reason"; returns -1. */
static int key_error(const config *cfg, const char *section, const char *key, char *err,
                     size_t errlen, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static int key_error(const config *cfg, const char *section, const char *key, char *err,
                     size_t errlen, const char *fmt, ...)
{
    char where[320], reason[768];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    text_set_error(err, errlen, "%s: %s", config_where(cfg, section, key, where, sizeof where),
                   reason);
    return -1;
}

/* ---- helpers for callers ---------------------------------------------------- */

const char *config_api_name(config_api api)
{
    return (int)api >= 0 && (int)api < config_name_count(config_api_names)
               ? config_api_names[api] : "?";
}

const char *config_auth_name(config_auth auth)
{
    return (int)auth >= 0 && (int)auth < config_name_count(config_auth_names)
               ? config_auth_names[auth] : "?";
}

/* ---- Exchange versions ------------------------------------------------------- */

const char *const *config_usable_names(const char *const *names)
{
    if (names == config_version_names)
        return config_version_names +
               config_name_index(config_version_names, OLDEST_USABLE_VERSION);
    return names;
}

int config_check_version_age(const char *version, char *err, size_t errlen)
{
    int index = version ? config_name_index(config_version_names, version) : -1;

    if (index < 0 || index >= config_name_index(config_version_names, OLDEST_USABLE_VERSION))
        return 0;
    text_set_error(err, errlen, "[exchange] version = %s is older than %s, whose schema is "
                   "the oldest with the time-zone elements followupd sends (StartTimeZone, "
                   "TimeZoneContext); Exchange would refuse every request with "
                   "ErrorSchemaValidation. Use %s or later (Exchange2013_SP1 for Exchange "
                   "2013 and newer)", config_version_names[index], OLDEST_USABLE_VERSION,
                   OLDEST_USABLE_VERSION);
    return -1;
}

/* ---- URLs ---------------------------------------------------------------------- */

static bool is_loopback_host(const char *host)
{
    struct in6_addr a6;
    struct in_addr a4;

    if (strcasecmp(host, "localhost") == 0 || strcasecmp(host, "localhost.") == 0)
        return true;
    if (inet_pton(AF_INET, host, &a4) == 1)
        return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1) {
        if (IN6_IS_ADDR_LOOPBACK(&a6))
            return true;
        return IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127;
    }
    return false;
}

/* https:// anywhere, http:// only to a loopback host: a password or token sent in
 * clear over a network is never what the admin meant.  Credentials inside the URL
 * are refused so they cannot end up in logs. */
static int check_url(const config *cfg, const char *section, const char *key, const char *url,
                     char *err, size_t errlen)
{
    char host[256];
    const char *auth, *end, *at;
    bool https;
    size_t n;

    if (strncasecmp(url, "https://", 8) == 0) {
        https = true;
        auth = url + 8;
    } else if (strncasecmp(url, "http://", 7) == 0) {
        https = false;
        auth = url + 7;
    } else {
        return key_error(cfg, section, key, err, errlen, "'%.128s' must start with https:// "
                         "(or http:// for a loopback host)", url);
    }
    end = auth + strcspn(auth, "/?#");
    at = memchr(auth, '@', (size_t)(end - auth));
    if (at)
        return key_error(cfg, section, key, err, errlen, "must not contain a user name or "
                         "password; remove it from the URL and use username and "
                         "password_file (or client_secret_file) instead");
    if (*auth == '[') {
        const char *close = memchr(auth, ']', (size_t)(end - auth));
        if (!close)
            return key_error(cfg, section, key, err, errlen, "'%.128s' has an unterminated "
                             "[IPv6] host; write it as https://[2001:db8::1]/...", url);
        auth++;
        n = (size_t)(close - auth);
    } else {
        n = strcspn(auth, ":/?#");
    }
    if (n == 0)
        return key_error(cfg, section, key, err, errlen, "'%.128s' has no host name; write "
                         "it as https://HOST/PATH", url);
    if (https)
        return 0;
    if (n >= sizeof host)
        return key_error(cfg, section, key, err, errlen, "'%.128s': host name too long", url);
    memcpy(host, auth, n);
    host[n] = '\0';
    if (!is_loopback_host(host))
        return key_error(cfg, section, key, err, errlen, "'%.128s': plain http:// is allowed "
                         "only for loopback hosts (127.0.0.0/8, ::1, localhost); use "
                         "https://", url);
    return 0;
}

static bool is_empty(const char *s)
{
    return !s || !*s;
}

/* Values set by code rather than the parser get the same checks. */
static int check_ranges(const config *cfg, char *err, size_t errlen)
{
    for (size_t i = 0; i < config_table_size; i++) {
        const config_option *opt = &config_table[i];
        const void *field = config_cfield(cfg, opt);
        int v;

        if (opt->type == T_INT) {
            memcpy(&v, field, sizeof v);
            if (v < opt->min || v > opt->max)
                return key_error(cfg, opt->section, opt->key, err, errlen,
                                 "%d is out of range; use %d to %d", v, opt->min, opt->max);
        } else if (opt->type == T_ENUM) {
            memcpy(&v, field, sizeof v);
            if (v < 0 || v >= config_name_count(opt->values))
                return key_error(cfg, opt->section, opt->key, err, errlen,
                                 "invalid value %d", v);
        }
    }
    return 0;
}

static int check_oauth2(const config *cfg, char *err, size_t errlen)
{
    const char *why = cfg->api == CONFIG_API_EWS ? "auth = oauth2" : "api = graph";
    static const char *const keys[] = { "token_url", "client_id", "client_secret_file" };
    const char *values[] = { cfg->oauth2_token_url, cfg->oauth2_client_id,
                             cfg->oauth2_client_secret_file };
    const char *first = NULL;
    char missing[128] = "";

    for (size_t i = 0; i < CONFIG_ARRAY_SIZE(keys); i++) {
        if (!is_empty(values[i]))
            continue;
        if (!first)
            first = keys[i];
        strcat(missing, " ");
        strcat(missing, keys[i]);
    }
    if (first)
        return key_error(cfg, "oauth2", first, err, errlen, "required when %s: [oauth2] needs "
                         "token_url, client_id and client_secret_file; missing:%s (the app "
                         "registration's values, see followupd.conf(5))", why, missing);
    if (check_url(cfg, "oauth2", "token_url", cfg->oauth2_token_url, err, errlen) < 0)
        return -1;
    if (is_empty(cfg->oauth2_scope))
        return key_error(cfg, "oauth2", "scope", err, errlen, "is empty; remove the line for "
                         "the default");
    return 0;
}

int config_validate(const config *cfg, char *err, size_t errlen)
{
    bool ews = cfg->api == CONFIG_API_EWS;
    char reason[512];

    if (check_ranges(cfg, err, errlen) < 0)
        return -1;

    if (ews && is_empty(cfg->exchange_url))
        return key_error(cfg, "exchange", "url", err, errlen, "required when api = ews; set "
                         "it to the EWS endpoint, e.g. url = "
                         "https://mail.example.org/EWS/Exchange.asmx under [exchange]");
    if (!is_empty(cfg->exchange_url) &&
        check_url(cfg, "exchange", "url", cfg->exchange_url, err, errlen) < 0)
        return -1;
    if (!ews && is_empty(cfg->graph_base_url))
        return key_error(cfg, "graph", "base_url", err, errlen, "required when api = graph; "
                         "remove the line for the default");
    if (!is_empty(cfg->graph_base_url) &&
        check_url(cfg, "graph", "base_url", cfg->graph_base_url, err, errlen) < 0)
        return -1;

    if (ews && (cfg->auth == CONFIG_AUTH_BASIC || cfg->auth == CONFIG_AUTH_NTLM) &&
        is_empty(cfg->username))
        return key_error(cfg, "exchange", "username", err, errlen, "required when auth = %s; "
                         "set it to the service account (svc-followupd, "
                         "EXAMPLE\\svc-followupd or its UPN)", config_auth_names[cfg->auth]);

    if ((cfg->api == CONFIG_API_GRAPH || cfg->auth == CONFIG_AUTH_OAUTH2) &&
        check_oauth2(cfg, err, errlen) < 0)
        return -1;

    if (is_empty(cfg->server_version) ||
        config_name_index(config_version_names, cfg->server_version) < 0) {
        char names[512];
        config_join_names(config_usable_names(config_version_names), names, sizeof names);
        return key_error(cfg, "exchange", "version", err, errlen, "'%.64s' is not an Exchange "
                         "version; use one of %s", cfg->server_version ? cfg->server_version
                                                                       : "", names);
    }
    if (config_check_version_age(cfg->server_version, reason, sizeof reason) < 0) {
        /* The reason names the key already: only the file and line go in front. */
        const char *file = config_file_name(cfg);
        int line = config_key_line(cfg, "exchange", "version");
        if (!file)
            text_set_error(err, errlen, "%s", reason);
        else if (line > 0)
            text_set_error(err, errlen, "%s:%d: %s", file, line, reason);
        else
            text_set_error(err, errlen, "%s: %s", file, reason);
        return -1;
    }
    if (is_empty(cfg->time_zone))
        return key_error(cfg, "exchange", "time_zone", err, errlen, "is empty; use a Windows "
                         "time-zone id such as UTC or W. Europe Standard Time");
    if (!is_empty(cfg->metrics_listen)) {
        /* HOST:PORT, an IPv6 address in brackets ([::1]:9477), the port 1 to 65535. */
        const char *addr = cfg->metrics_listen, *colon = strrchr(addr, ':');
        const char *p = colon ? colon + 1 : "";
        size_t n = colon ? (size_t)(colon - addr) : 0;
        long port = 0;
        bool host_ok = addr[0] == '['
            ? n > 2 && memchr(addr, ']', n) == addr + n - 1 && !memchr(addr + 1, '[', n - 1)
            : n > 0 && !memchr(addr, ':', n) && !memchr(addr, ']', n);
        for (; *p >= '0' && *p <= '9' && port <= 65535; p++)
            port = port * 10 + (*p - '0');
        if (!host_ok || *p || port < 1 || port > 65535 || strpbrk(addr, " \t"))
            return key_error(cfg, "metrics", "listen", err, errlen, "'%.128s' is not HOST:PORT "
                             "with a port from 1 to 65535; e.g. listen = 127.0.0.1:9477 "
                             "(IPv6 in brackets: [::1]:9477), or empty for no metrics", addr);
    }
    return 0;
}
