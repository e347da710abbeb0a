/* Unit tests for the config module (daemon/config*.c): the parser, defaults, every
 * kind of bad line, config_validate and where its messages point (file:line, key),
 * the lenient load of followupctl, config_read_secret, config_check_secrets and the
 * option table.
 * Env: top_srcdir (set by `make check`) enables the examples/followupd.conf test. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* By path: an in-tree build puts autoconf's config.h on the include path too. */
#include "daemon/config.h"

/* The sample from SPEC §5, verbatim. */
static const char spec_sample[] =
    "[database]\n"
    "conninfo = dbname=crm            ; any libpq connection string or URI\n"
    "\n"
    "[exchange]\n"
    "api = ews                        ; ews (Exchange Server) | graph (Exchange Online)\n"
    "url = https://mail.example.org/EWS/Exchange.asmx\n"
    "auth = ntlm                      ; basic | ntlm | negotiate | oauth2\n"
    "username = svc-followupd\n"
    "password_file = /etc/followupd/ews-password   ; default: $CREDENTIALS_DIRECTORY/ews-password\n"
    "impersonation = yes\n"
    "version = Exchange2013_SP1\n"
    "tls_verify = yes\n"
    "ca_file =                        ; extra CA bundle\n"
    "timeout = 30                     ; seconds per request\n"
    "time_zone = UTC                  ; Windows time-zone id for new appointments\n"
    "\n"
    "[graph]\n"
    "base_url = https://graph.microsoft.com/v1.0\n"
    "\n"
    "[oauth2]\n"
    "token_url = https://login.microsoftonline.com/TENANT/oauth2/v2.0/token\n"
    "client_id =\n"
    "client_secret_file =\n"
    "scope = https://outlook.office365.com/.default\n"
    "\n"
    "[delivery]\n"
    "concurrency = 8                  ; requests in flight at once\n"
    "max_attempts = 12                ; then the item is parked as failed\n";

/* A minimal config that passes config_validate; tests append to it. */
#define VALID_EWS \
    "[exchange]\nurl = https://mail.example.org/EWS/Exchange.asmx\nusername = svc\n"

static char err[1024];

static config *parse_ok(const char *text)
{
    config *cfg = NULL;

    err[0] = '\0';
    if (config_parse_string("t.conf", text, &cfg, err, sizeof err) != 0)
        fail_msg("parse failed: %s", err);
    assert_non_null(cfg);
    return cfg;
}

/* Parsing fails with "t.conf:LINE: ..." containing want. */
static void parse_fails(const char *text, int line, const char *want)
{
    config *cfg = (config *)1;
    char prefix[64];

    err[0] = '\0';
    assert_int_equal(config_parse_string("t.conf", text, &cfg, err, sizeof err), -1);
    assert_null(cfg);
    snprintf(prefix, sizeof prefix, "t.conf:%d: ", line);
    if (strncmp(err, prefix, strlen(prefix)) != 0 || !strstr(err, want))
        fail_msg("want '%s...%s', got '%s'", prefix, want, err);
}

static void validate_fails(const char *text, const char *want)
{
    config *cfg = parse_ok(text);

    err[0] = '\0';
    assert_int_equal(config_validate(cfg, err, sizeof err), -1);
    if (!strstr(err, want))
        fail_msg("want '%s', got '%s'", want, err);
    config_free(cfg);
}

static void validate_ok(const char *text)
{
    config *cfg = parse_ok(text);

    err[0] = '\0';
    if (config_validate(cfg, err, sizeof err) != 0)
        fail_msg("validate failed: %s", err);
    config_free(cfg);
}

/* ---- parsing ---------------------------------------------------------------- */

static void test_spec_sample(void **state)
{
    config *cfg = parse_ok(spec_sample);

    (void)state;
    assert_string_equal(cfg->db_conninfo, "dbname=crm");
    assert_int_equal(cfg->api, CONFIG_API_EWS);
    assert_string_equal(cfg->exchange_url, "https://mail.example.org/EWS/Exchange.asmx");
    assert_int_equal(cfg->auth, CONFIG_AUTH_NTLM);
    assert_string_equal(cfg->username, "svc-followupd");
    assert_string_equal(cfg->password_file, "/etc/followupd/ews-password");
    assert_true(cfg->impersonation);
    assert_string_equal(cfg->server_version, "Exchange2013_SP1");
    assert_true(cfg->tls_verify);
    assert_null(cfg->ca_file);
    assert_int_equal(cfg->timeout_seconds, 30);
    assert_string_equal(cfg->time_zone, "UTC");
    assert_string_equal(cfg->graph_base_url, "https://graph.microsoft.com/v1.0");
    assert_string_equal(cfg->oauth2_token_url,
                        "https://login.microsoftonline.com/TENANT/oauth2/v2.0/token");
    assert_string_equal(cfg->oauth2_client_id, "");
    assert_string_equal(cfg->oauth2_client_secret_file, "");
    assert_string_equal(cfg->oauth2_scope, "https://outlook.office365.com/.default");
    assert_int_equal(cfg->concurrency, 8);
    assert_int_equal(cfg->max_attempts, 12);
    assert_int_equal(config_validate(cfg, err, sizeof err), 0);
    config_free(cfg);
}

static void check_defaults(const config *cfg)
{
    assert_string_equal(cfg->db_conninfo, "dbname=crm");
    assert_int_equal(cfg->api, CONFIG_API_EWS);
    assert_string_equal(cfg->exchange_url, "");
    assert_int_equal(cfg->auth, CONFIG_AUTH_NTLM);
    assert_string_equal(cfg->username, "");
    assert_null(cfg->password_file);
    assert_true(cfg->impersonation);
    assert_string_equal(cfg->server_version, "Exchange2013_SP1");
    assert_true(cfg->tls_verify);
    assert_null(cfg->ca_file);
    assert_int_equal(cfg->timeout_seconds, 30);
    assert_string_equal(cfg->time_zone, "UTC");
    assert_string_equal(cfg->graph_base_url, "https://graph.microsoft.com/v1.0");
    assert_string_equal(cfg->oauth2_token_url, "");
    assert_string_equal(cfg->oauth2_client_id, "");
    assert_string_equal(cfg->oauth2_client_secret_file, "");
    assert_string_equal(cfg->oauth2_scope, "https://outlook.office365.com/.default");
    assert_int_equal(cfg->concurrency, 8);
    assert_int_equal(cfg->max_attempts, 12);
}

static void test_defaults_empty_file(void **state)
{
    config *cfg = parse_ok("");

    (void)state;
    check_defaults(cfg);
    config_free(cfg);

    cfg = parse_ok("; only comments\n# and blank lines\n\n   \n");
    check_defaults(cfg);
    config_free(cfg);
}

/* Every key with an empty value gives back the defaults. */
static void test_empty_values_mean_default(void **state)
{
    config *cfg = parse_ok(
        "[database]\nconninfo =\n"
        "[exchange]\napi =\nurl =\nauth =\nusername =\npassword_file =\nimpersonation =\n"
        "version =\ntls_verify =\nca_file =\ntimeout =\ntime_zone =\n"
        "[graph]\nbase_url =\n"
        "[oauth2]\ntoken_url =\nclient_id =\nclient_secret_file =\nscope =\n"
        "[delivery]\nconcurrency =\nmax_attempts =\n");

    (void)state;
    check_defaults(cfg);
    config_free(cfg);
}

static void test_comments_and_whitespace(void **state)
{
    config *cfg = parse_ok(
        "  ; indented comment\n"
        "\t# hash comment\n"
        "  [ exchange ]   ; comment after a header\n"
        "url=https://mail.example.org/EWS/Exchange.asmx#frag ; '#' in a value is kept\n"
        "\tusername\t=\t svc user \t\n"
        "ca_file = ; nothing but a comment\n"
        "time_zone = W. Europe Standard Time ;zone\n"
        "[database]\n"
        "conninfo = host=db;x dbname=crm   ; ';' without a blank before it is kept\n");

    (void)state;
    assert_string_equal(cfg->exchange_url, "https://mail.example.org/EWS/Exchange.asmx#frag");
    assert_string_equal(cfg->username, "svc user");
    assert_null(cfg->ca_file);
    assert_string_equal(cfg->time_zone, "W. Europe Standard Time");
    assert_string_equal(cfg->db_conninfo, "host=db;x dbname=crm");
    config_free(cfg);
}

static void test_crlf_and_bom(void **state)
{
    config *cfg = parse_ok("\xef\xbb\xbf[delivery]\r\nconcurrency = 3\r\n; c\r\n"
                           "max_attempts = 4\r\n");

    (void)state;
    assert_int_equal(cfg->concurrency, 3);
    assert_int_equal(cfg->max_attempts, 4);
    config_free(cfg);
}

static void test_bools(void **state)
{
    static const char *const yes[] = { "yes", "true", "on", "1", "YES", "True", "On" };
    static const char *const no[] = { "no", "false", "off", "0", "NO", "False", "OFF" };
    char text[128];
    config *cfg;

    (void)state;
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        snprintf(text, sizeof text, "[exchange]\ntls_verify = %s\nimpersonation = %s\n",
                 no[i], yes[i]);
        cfg = parse_ok(text);
        assert_false(cfg->tls_verify);
        assert_true(cfg->impersonation);
        config_free(cfg);
        snprintf(text, sizeof text, "[exchange]\ntls_verify = %s\nimpersonation = %s\n",
                 yes[i], no[i]);
        cfg = parse_ok(text);
        assert_true(cfg->tls_verify);
        assert_false(cfg->impersonation);
        config_free(cfg);
    }
}

static void test_enums(void **state)
{
    config *cfg = parse_ok("[exchange]\napi = graph\nauth = oauth2\nversion = exchange2016\n");

    (void)state;
    assert_int_equal(cfg->api, CONFIG_API_GRAPH);
    assert_int_equal(cfg->auth, CONFIG_AUTH_OAUTH2);
    assert_string_equal(cfg->server_version, "Exchange2016");  /* canonical spelling */
    config_free(cfg);

    cfg = parse_ok("[exchange]\nauth = basic\n");
    assert_int_equal(cfg->auth, CONFIG_AUTH_BASIC);
    config_free(cfg);
    cfg = parse_ok("[exchange]\nauth = negotiate\n");
    assert_int_equal(cfg->auth, CONFIG_AUTH_NEGOTIATE);
    assert_string_equal(config_auth_name(cfg->auth), "negotiate");
    assert_string_equal(config_api_name(cfg->api), "ews");
    config_free(cfg);
}

static void test_ranges(void **state)
{
    static const struct {
        const char *section, *key;
        int lo, hi;
        size_t offset;
    } ints[] = {
        { "delivery", "concurrency", 1, 256, offsetof(config, concurrency) },
        { "delivery", "max_attempts", 1, 1000, offsetof(config, max_attempts) },
        { "exchange", "timeout", 1, 3600, offsetof(config, timeout_seconds) },
    };
    char text[128];
    config *cfg;

    (void)state;
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        int ok[2] = { ints[i].lo, ints[i].hi };
        int bad[3] = { ints[i].lo - 1, ints[i].hi + 1, -5 };

        for (int j = 0; j < 2; j++) {
            snprintf(text, sizeof text, "[%s]\n%s = %d\n", ints[i].section, ints[i].key, ok[j]);
            cfg = parse_ok(text);
            assert_int_equal(*(int *)((char *)cfg + ints[i].offset), ok[j]);
            config_free(cfg);
        }
        for (int j = 0; j < 3; j++) {
            snprintf(text, sizeof text, "[%s]\n%s = %d\n", ints[i].section, ints[i].key,
                     bad[j]);
            parse_fails(text, 2, "out of range");
            assert_non_null(strstr(err, ints[i].key));
        }
    }
    parse_fails("[delivery]\nconcurrency = 99999999999999999999\n", 2, "out of range");
}

static void test_graph_scope_default(void **state)
{
    config *cfg = parse_ok("[exchange]\napi = graph\n");

    (void)state;
    assert_string_equal(cfg->oauth2_scope, "https://graph.microsoft.com/.default");
    config_free(cfg);
    cfg = parse_ok("[exchange]\napi = graph\n[oauth2]\nscope =\n");
    assert_string_equal(cfg->oauth2_scope, "https://graph.microsoft.com/.default");
    config_free(cfg);
    cfg = parse_ok("[exchange]\napi = graph\n[oauth2]\nscope = api://custom/.default\n");
    assert_string_equal(cfg->oauth2_scope, "api://custom/.default");
    config_free(cfg);
}

/* ---- each kind of bad line ---------------------------------------------------- */

static void test_err_unknown_section(void **state)
{
    (void)state;
    parse_fails("[exchange]\nurl = https://x\n\n[smtp]\n", 4, "unknown section [smtp]");
}

static void test_err_unknown_key(void **state)
{
    (void)state;
    parse_fails("[exchange]\nauth = ntlm\npassword = hunter2\n", 3,
                "unknown key 'password' in section [exchange]");
    assert_null(strstr(err, "hunter2"));  /* the value may be a secret */
    /* a known key in the wrong section says where it belongs */
    parse_fails("[delivery]\nurl = https://x\n", 2, "it belongs in [exchange]");
}

static void test_err_key_outside_section(void **state)
{
    (void)state;
    parse_fails("; top\nurl = https://x\n[exchange]\n", 2, "outside any section");
    assert_non_null(strstr(err, "[exchange]"));
}

static void test_err_no_equals(void **state)
{
    (void)state;
    parse_fails("[exchange]\nurl https://x\n", 2, "expected 'key = value'");
}

static void test_err_missing_key_name(void **state)
{
    (void)state;
    parse_fails("[exchange]\n = value\n", 2, "missing key name");
}

static void test_err_bad_bool(void **state)
{
    (void)state;
    parse_fails("[exchange]\n\ntls_verify = maybe\n", 3, "invalid boolean 'maybe'");
}

static void test_err_bad_int(void **state)
{
    (void)state;
    parse_fails("[exchange]\ntimeout = 30s\n", 2, "invalid integer '30s'");
    parse_fails("[delivery]\nmax_attempts = many\n", 2, "invalid integer 'many'");
}

static void test_err_out_of_range(void **state)
{
    (void)state;
    parse_fails("[delivery]\nconcurrency = 0\n", 2, "concurrency = 0 in [delivery] is out of range");
}

static void test_err_bad_enum(void **state)
{
    (void)state;
    parse_fails("[exchange]\napi = soap\n", 2, "invalid api 'soap'");
    assert_non_null(strstr(err, "ews or graph"));
    parse_fails("[exchange]\nauth = kerberos\n", 2, "invalid auth 'kerberos'");
    assert_non_null(strstr(err, "basic, ntlm, negotiate or oauth2"));
}

static void test_err_bad_version(void **state)
{
    (void)state;
    parse_fails("[exchange]\nversion = Exchange2019\n", 2, "invalid version 'Exchange2019'");
    /* The suggestions are the versions that would be accepted. */
    assert_non_null(strstr(err, "use one of Exchange2010_SP1, Exchange2010_SP2,"));
    assert_null(strstr(err, "Exchange2007"));
}

/* SPEC section 4: older than Exchange2010_SP1 is a configuration error, with the file,
 * the line and why (every appointment carries StartTimeZone, which those schemas lack). */
static void test_err_version_too_old(void **state)
{
    (void)state;
    parse_fails("[exchange]\nversion = Exchange2007\n", 2,
                "[exchange] version = Exchange2007 is older than Exchange2010_SP1");
    assert_non_null(strstr(err, "StartTimeZone"));
    assert_non_null(strstr(err, "ErrorSchemaValidation"));
    parse_fails("; an old server\n[exchange]\nurl = https://mail.example.org/EWS/Exchange.asmx\n"
                "version = Exchange2007_SP1   ; as it always was\n", 4,
                "version = Exchange2007_SP1 is older than Exchange2010_SP1");
    /* Named in its canonical spelling, whatever the case in the file. */
    parse_fails("[exchange]\nversion = exchange2010\n", 2,
                "version = Exchange2010 is older than Exchange2010_SP1");

    config *cfg = parse_ok("[exchange]\nversion = Exchange2010_SP1\n");
    assert_string_equal(cfg->server_version, "Exchange2010_SP1");
    config_free(cfg);
    validate_ok("[exchange]\nurl = https://m.example.org/EWS\nusername = svc\n"
                "version = Exchange2010_SP2\n");
}

static void test_err_duplicate_key(void **state)
{
    (void)state;
    parse_fails("[exchange]\nurl = https://a\n\nurl = https://b\n", 4,
                "duplicate key 'url' in section [exchange] (first set on line 2)");
    /* a repeated section header does not hide the duplicate */
    parse_fails("[delivery]\nconcurrency = 2\n[exchange]\n[delivery]\nconcurrency =\n", 5,
                "duplicate key 'concurrency'");
}

static void test_err_unterminated_header(void **state)
{
    (void)state;
    parse_fails("[database\nconninfo = x\n", 1, "unterminated section header");
}

static void test_err_text_after_header(void **state)
{
    (void)state;
    parse_fails("[database] extra\n", 1, "unexpected text 'extra'");
}

/* ---- config_load --------------------------------------------------------------- */

struct tmp {
    char dir[64];
    char paths[8][128];
    int n;
};

static int tmp_setup(void **state)
{
    struct tmp *t = calloc(1, sizeof *t);

    if (!t)
        return -1;
    strcpy(t->dir, "/tmp/test_config.XXXXXX");
    if (!mkdtemp(t->dir)) {
        free(t);
        return -1;
    }
    *state = t;
    return 0;
}

static int tmp_teardown(void **state)
{
    struct tmp *t = *state;

    for (int i = 0; i < t->n; i++)
        unlink(t->paths[i]);
    rmdir(t->dir);
    free(t);
    return 0;
}

/* Writes content to a fresh file in the temp dir with the given mode. */
static const char *tmp_file(struct tmp *t, const char *content, size_t len, mode_t mode)
{
    char *path;
    int fd;

    assert_true(t->n < 8);
    path = t->paths[t->n];
    /* two steps: snprintf from t->dir into t->paths trips -Wrestrict */
    strcpy(path, t->dir);
    strcat(path, "/f.XXXXXX");
    fd = mkstemp(path);
    assert_true(fd >= 0);
    t->n++;
    assert_int_equal(write(fd, content, len), (ssize_t)len);
    assert_int_equal(fchmod(fd, mode), 0);
    close(fd);
    return path;
}

static void test_load_file(void **state)
{
    struct tmp *t = *state;
    const char *path = tmp_file(t, spec_sample, strlen(spec_sample), 0644);
    config *cfg = NULL;

    assert_int_equal(config_load(path, &cfg, err, sizeof err), 0);
    assert_string_equal(cfg->username, "svc-followupd");
    config_free(cfg);

    path = tmp_file(t, "[exchange]\n\nbogus = 1\n", 22, 0644);
    assert_int_equal(config_load(path, &cfg, err, sizeof err), -1);
    assert_null(cfg);
    assert_true(strncmp(err, path, strlen(path)) == 0);
    assert_non_null(strstr(err, ":3: unknown key 'bogus'"));

    path = tmp_file(t, "[exchange]\0x", 12, 0644);
    assert_int_equal(config_load(path, &cfg, err, sizeof err), -1);
    assert_non_null(strstr(err, "NUL byte"));
}

static void test_load_missing(void **state)
{
    struct tmp *t = *state;
    char path[256], want[320];
    config *cfg = (config *)1;

    snprintf(path, sizeof path, "%s/absent.conf", t->dir);
    assert_int_equal(config_load(path, &cfg, err, sizeof err), -1);
    assert_null(cfg);
    snprintf(want, sizeof want, "%s: cannot open: %s", path, strerror(ENOENT));
    assert_string_equal(err, want);
}

static void test_example_file(void **state)
{
    const char *top = getenv("top_srcdir");
    char path[PATH_MAX];
    config *cfg = NULL;

    (void)state;
    if (!top || !*top)
        skip();
    snprintf(path, sizeof path, "%s/examples/followupd.conf", top);
    if (config_load(path, &cfg, err, sizeof err) != 0)
        fail_msg("%s", err);
    if (config_validate(cfg, err, sizeof err) != 0)
        fail_msg("%s: %s", path, err);
    config_free(cfg);
}

/* ---- config_load_lenient (followupctl, item 9) ----------------------------------- */

struct warnings {
    int n;
    char text[4][512];
};

static void collect(const char *message, void *data)
{
    struct warnings *w = data;

    if (w->n < 4)
        snprintf(w->text[w->n], sizeof w->text[0], "%s", message);
    w->n++;
}

static void test_load_lenient_skips_bad_lines(void **state)
{
    static const char text[] =
        "[database]\n"
        "conninfo = host=/run/postgresql dbname=crm\n"
        "[exchange]\n"
        "timeout = 30s\n"                    /* 4: bad value */
        "frobs = 1\n"                        /* 5: unknown key */
        "[smtp]\n"                           /* 6: unknown section... */
        "host = mail\n"                      /* ...its keys go with it, silently */
        "[delivery]\n"
        "concurrency = 3\n";
    struct tmp *t = *state;
    const char *path = tmp_file(t, text, strlen(text), 0644);
    struct warnings w = {0};
    char want[256], absent[256];
    config *cfg = NULL;

    assert_int_equal(config_load(path, &cfg, err, sizeof err), -1);   /* the daemon: no */
    assert_int_equal(config_load_lenient(path, &cfg, collect, &w, err, sizeof err), 0);
    assert_non_null(cfg);
    assert_string_equal(cfg->db_conninfo, "host=/run/postgresql dbname=crm");
    assert_int_equal(cfg->timeout_seconds, 30);   /* the default */
    assert_int_equal(cfg->concurrency, 3);
    assert_int_equal(w.n, 3);
    snprintf(want, sizeof want, "%s:4: invalid integer '30s'", path);
    assert_true(strncmp(w.text[0], want, strlen(want)) == 0);
    snprintf(want, sizeof want, "%s:5: unknown key 'frobs'", path);
    assert_true(strncmp(w.text[1], want, strlen(want)) == 0);
    snprintf(want, sizeof want, "%s:6: unknown section [smtp]", path);
    assert_true(strncmp(w.text[2], want, strlen(want)) == 0);
    config_free(cfg);

    /* A file that cannot be read is still an error. */
    snprintf(absent, sizeof absent, "%s/absent.conf", t->dir);
    cfg = (config *)1;
    assert_int_equal(config_load_lenient(absent, &cfg, collect, &w, err, sizeof err), -1);
    assert_null(cfg);
}

/* ---- config_validate ------------------------------------------------------------ */

static void test_validate_url(void **state)
{
    (void)state;
    validate_ok(VALID_EWS);
    validate_ok("[exchange]\nusername = svc\nurl = http://127.0.0.1:8080/EWS/Exchange.asmx\n");
    validate_ok("[exchange]\nusername = svc\nurl = http://127.10.20.30/EWS\n");
    validate_ok("[exchange]\nusername = svc\nurl = http://[::1]:8443/EWS/Exchange.asmx\n");
    validate_ok("[exchange]\nusername = svc\nurl = http://localhost/EWS/Exchange.asmx\n");
    validate_ok("[exchange]\nusername = svc\nurl = HTTP://LOCALHOST:81\n");

    validate_fails("[exchange]\nusername = svc\nurl = http://mail.example.org/EWS\n",
                   "plain http:// is allowed only for loopback hosts");
    validate_fails("[exchange]\nusername = svc\nurl = http://10.0.0.1/EWS\n",
                   "plain http:// is allowed only for loopback hosts");
    validate_fails("[exchange]\nusername = svc\nurl = http://127.0.0.1.evil.example/EWS\n",
                   "plain http:// is allowed only for loopback hosts");
    validate_fails("[exchange]\nusername = svc\nurl = http://localhost@evil.example/\n",
                   "must not contain a user name or password");
    validate_fails("[exchange]\nusername = svc\nurl = https://u:p@mail.example.org/\n",
                   "must not contain a user name or password");
    validate_fails("[exchange]\nusername = svc\nurl = ftp://mail.example.org/\n",
                   "must start with https://");
    validate_fails("[exchange]\nusername = svc\nurl = https:///EWS\n", "no host name");
    validate_fails("[exchange]\nusername = svc\n", "[exchange] url: required when api = ews");
    validate_fails(VALID_EWS "[graph]\nbase_url = http://graph.example.org/v1.0\n",
                   "[graph] base_url");
}

static void test_validate_auth(void **state)
{
    (void)state;
    validate_fails("[exchange]\nurl = https://m.example.org/EWS\nauth = basic\n",
                   "[exchange] username: required when auth = basic");
    validate_fails("[exchange]\nurl = https://m.example.org/EWS\n",
                   "[exchange] username: required when auth = ntlm");
    validate_ok("[exchange]\nurl = https://m.example.org/EWS\nauth = negotiate\n");

    validate_fails("[exchange]\nurl = https://m.example.org/EWS\nauth = oauth2\n"
                   "[oauth2]\ntoken_url = https://login.example.org/token\n",
                   "missing: client_id client_secret_file");
    validate_fails("[exchange]\nurl = https://m.example.org/EWS\nauth = oauth2\n"
                   "[oauth2]\nclient_id = abc\nclient_secret_file = /run/s\n",
                   "missing: token_url");
    validate_fails("[exchange]\nurl = https://m.example.org/EWS\nauth = oauth2\n"
                   "[oauth2]\ntoken_url = http://login.example.org/token\nclient_id = abc\n"
                   "client_secret_file = /run/s\n",
                   "[oauth2] token_url");
    validate_ok("[exchange]\nurl = https://m.example.org/EWS\nauth = oauth2\n"
                "[oauth2]\ntoken_url = https://login.example.org/token\nclient_id = abc\n"
                "client_secret_file = /run/s\n");

    /* Graph: no EWS url or username needed, but always OAuth2 */
    validate_fails("[exchange]\napi = graph\n", "when api = graph");
    validate_ok("[exchange]\napi = graph\n[oauth2]\ntoken_url = https://login.example.org/t\n"
                "client_id = abc\nclient_secret_file = /run/s\n");
}

/* Item 7 of issue 15: every message names the file, the line (when the file sets the
 * key), the key and what to do. */
static void validate_fails_with(const char *text, const char *prefix, const char *want)
{
    config *cfg = parse_ok(text);

    err[0] = '\0';
    assert_int_equal(config_validate(cfg, err, sizeof err), -1);
    if (strncmp(err, prefix, strlen(prefix)) != 0 || !strstr(err, want))
        fail_msg("want '%s...%s', got '%s'", prefix, want, err);
    config_free(cfg);
}

static void test_validate_names_file_line_and_key(void **state)
{
    config *cfg;

    (void)state;
    validate_fails_with("[database]\nconninfo = dbname=crm\n\n[exchange]\nusername = svc\n"
                        "url = http://mail.example.org/EWS/Exchange.asmx\n",
                        "t.conf:6: [exchange] url: 'http://mail.example.org/EWS/Exchange.asmx'",
                        "use https://");
    validate_fails_with("[exchange]\nusername = svc\nurl = mail.example.org\n",
                        "t.conf:3: [exchange] url: 'mail.example.org' must start with https://",
                        "");
    /* A key the file does not set: the file, no line, and the line to add. */
    validate_fails_with("[exchange]\nusername = svc\n",
                        "t.conf: [exchange] url: required when api = ews",
                        "url = https://mail.example.org/EWS/Exchange.asmx");
    validate_fails_with("[exchange]\napi = graph\n[oauth2]\nclient_id = abc\n",
                        "t.conf: [oauth2] token_url: required when api = graph",
                        "missing: token_url client_secret_file");
    validate_fails_with("[exchange]\napi = graph\n[oauth2]\nclient_id = abc\n"
                        "client_secret_file = /run/s\n"
                        "token_url = http://login.example.org/token\n",
                        "t.conf:6: [oauth2] token_url: ", "loopback");
    validate_fails_with("[exchange]\napi = graph\n[graph]\n; the default\n"
                        "base_url = http://graph.example.org/v1.0\n",
                        "t.conf:5: [graph] base_url: ", "plain http://");

    /* Values set by code are checked, and located, all the same. */
    cfg = parse_ok(VALID_EWS "version = Exchange2016\n[delivery]\n");
    free(cfg->server_version);
    cfg->server_version = strdup("Exchange2019");
    assert_int_equal(config_validate(cfg, err, sizeof err), -1);
    assert_true(strncmp(err, "t.conf:4: [exchange] version: 'Exchange2019'", 43) == 0);
    free(cfg->server_version);
    cfg->server_version = strdup("Exchange2007");
    assert_int_equal(config_validate(cfg, err, sizeof err), -1);
    assert_true(strncmp(err, "t.conf:4: [exchange] version = Exchange2007 is older", 51) == 0);
    free(cfg->server_version);
    cfg->server_version = strdup("Exchange2016");
    cfg->concurrency = 0;
    assert_int_equal(config_validate(cfg, err, sizeof err), -1);
    assert_string_equal(err, "t.conf: [delivery] concurrency: 0 is out of range; use 1 to 256");
    config_free(cfg);
}

static void test_key_lines(void **state)
{
    config *cfg = parse_ok(spec_sample);
    char where[128];

    (void)state;
    assert_string_equal(config_file_name(cfg), "t.conf");
    assert_int_equal(config_key_line(cfg, "database", "conninfo"), 2);
    assert_int_equal(config_key_line(cfg, "exchange", "api"), 5);
    assert_int_equal(config_key_line(cfg, "exchange", "url"), 6);
    assert_int_equal(config_key_line(cfg, "exchange", "password_file"), 9);
    assert_int_equal(config_key_line(cfg, "delivery", "max_attempts"), 28);
    /* not in the file, or no such key */
    assert_int_equal(config_key_line(cfg, "delivery", "batch_size"), 0);
    assert_int_equal(config_key_line(cfg, "exchange", "nonsense"), 0);
    assert_int_equal(config_key_line(NULL, "exchange", "url"), 0);
    assert_string_equal(config_where(cfg, "exchange", "url", where, sizeof where),
                        "t.conf:6: [exchange] url");
    assert_string_equal(config_where(cfg, "metrics", "listen", where, sizeof where),
                        "t.conf: [metrics] listen");
    assert_string_equal(config_where(NULL, "metrics", "listen", where, sizeof where),
                        "[metrics] listen");
    config_free(cfg);
}

static void test_validate_programmatic(void **state)
{
    config *cfg = parse_ok(VALID_EWS);

    (void)state;
    assert_int_equal(config_validate(cfg, err, sizeof err), 0);
    free(cfg->server_version);
    cfg->server_version = strdup("Exchange2019");
    assert_int_equal(config_validate(cfg, err, sizeof err), -1);
    assert_non_null(strstr(err, "[exchange] version: 'Exchange2019' is not an Exchange version"));
    free(cfg->server_version);
    cfg->server_version = strdup("Exchange2007_SP1");
    assert_int_equal(config_validate(cfg, err, sizeof err), -1);
    assert_non_null(strstr(err, "version = Exchange2007_SP1 is older than Exchange2010_SP1"));
    free(cfg->server_version);
    cfg->server_version = strdup("V2016_10_10");
    assert_int_equal(config_validate(cfg, err, sizeof err), 0);
    cfg->concurrency = 0;
    assert_int_equal(config_validate(cfg, err, sizeof err), -1);
    assert_non_null(strstr(err, "concurrency"));
    cfg->concurrency = 8;
    cfg->auth = (config_auth)42;
    assert_int_equal(config_validate(cfg, err, sizeof err), -1);
    cfg->auth = CONFIG_AUTH_NTLM;
    config_free(cfg);
}

/* ---- secrets --------------------------------------------------------------------- */

#define SECRET "s3cr3t-Hunter2"

static void test_secret_good(void **state)
{
    struct tmp *t = *state;
    const char *path = tmp_file(t, SECRET "\n", strlen(SECRET) + 1, 0600);
    char *s = config_read_secret(path, err, sizeof err);

    assert_non_null(s);
    assert_string_equal(s, SECRET);
    free(s);

    path = tmp_file(t, SECRET "\r\n", strlen(SECRET) + 2, 0400);
    s = config_read_secret(path, err, sizeof err);
    assert_string_equal(s, SECRET);
    free(s);

    path = tmp_file(t, SECRET, strlen(SECRET), 0600);
    s = config_read_secret(path, err, sizeof err);
    assert_string_equal(s, SECRET);
    free(s);

    /* only one newline is stripped */
    path = tmp_file(t, "a b\n\n", 5, 0600);
    s = config_read_secret(path, err, sizeof err);
    assert_string_equal(s, "a b\n");
    free(s);
}

static void test_secret_symlink_followed(void **state)
{
    struct tmp *t = *state;
    const char *path = tmp_file(t, SECRET "\n", strlen(SECRET) + 1, 0600);
    char link[256];
    char *s;

    snprintf(link, sizeof link, "%s/link", t->dir);
    assert_int_equal(symlink(path, link), 0);
    s = config_read_secret(link, err, sizeof err);
    unlink(link);
    assert_non_null(s);
    assert_string_equal(s, SECRET);
    free(s);
}

static void secret_refused(struct tmp *t, mode_t mode, const char *mode_text)
{
    const char *path = tmp_file(t, SECRET "\n", strlen(SECRET) + 1, mode);
    char want[512];

    err[0] = '\0';
    assert_null(config_read_secret(path, err, sizeof err));
    snprintf(want, sizeof want,
             "%s: secret file is readable by group or others (mode %s); chmod 600 it", path,
             mode_text);
    assert_string_equal(err, want);
    assert_null(strstr(err, SECRET));
}

static void test_secret_mode_0640(void **state)
{
    secret_refused(*state, 0640, "0640");
}

static void test_secret_mode_0604(void **state)
{
    secret_refused(*state, 0604, "0604");
}

static void test_secret_missing(void **state)
{
    struct tmp *t = *state;
    char path[256], want[320];

    snprintf(path, sizeof path, "%s/no-such-secret", t->dir);
    assert_null(config_read_secret(path, err, sizeof err));
    /* What, where and what to do. */
    snprintf(want, sizeof want, "%s: cannot open: %s; create it (mode 0600)", path,
             strerror(ENOENT));
    if (strncmp(err, want, strlen(want)) != 0)
        fail_msg("want '%s...', got '%s'", want, err);
}

static void test_secret_other_refusals(void **state)
{
    struct tmp *t = *state;
    const char *path;
    char *big, *s;

    assert_null(config_read_secret(t->dir, err, sizeof err));
    assert_non_null(strstr(err, "not a regular file"));

    path = tmp_file(t, "\n", 1, 0600);
    assert_null(config_read_secret(path, err, sizeof err));
    assert_non_null(strstr(err, "is empty"));

    path = tmp_file(t, "ab\0cd", 5, 0600);
    assert_null(config_read_secret(path, err, sizeof err));
    assert_non_null(strstr(err, "NUL byte"));

    big = malloc(64 * 1024 + 1);
    assert_non_null(big);
    memset(big, 'x', 64 * 1024 + 1);
    path = tmp_file(t, big, 64 * 1024, 0600);  /* exactly the cap: accepted */
    s = config_read_secret(path, err, sizeof err);
    assert_non_null(s);
    assert_int_equal(strlen(s), 64 * 1024);
    free(s);
    path = tmp_file(t, big, 64 * 1024 + 1, 0600);
    free(big);
    assert_null(config_read_secret(path, err, sizeof err));
    assert_non_null(strstr(err, "larger than 64 KiB"));
    assert_null(strstr(err, "xxxx"));
}

/* ---- config_check_secrets (--check, items 2 and 7) ------------------------------------ */

static config *parse_secret_config(const char *fmt, const char *value)
{
    char text[1024];

    snprintf(text, sizeof text, fmt, value);
    return parse_ok(text);
}

static void test_check_secrets(void **state)
{
    struct tmp *t = *state;
    const char *good = tmp_file(t, SECRET "\n", strlen(SECRET) + 1, 0600);
    const char *open_to_group = tmp_file(t, SECRET "\n", strlen(SECRET) + 1, 0640);
    char *old = getenv("CREDENTIALS_DIRECTORY") ? strdup(getenv("CREDENTIALS_DIRECTORY")) : NULL;
    char missing[256], want[512], cred_dir[256];
    config *cfg;

    (void)state;
    /* password_file, read as ourselves (no service user) */
    cfg = parse_secret_config(VALID_EWS "password_file = %s\n", good);
    assert_int_equal(config_check_secrets(cfg, NULL, NULL, NULL, err, sizeof err), 0);
    config_free(cfg);

    snprintf(missing, sizeof missing, "%s/no-such-password", t->dir);
    cfg = parse_secret_config(VALID_EWS "password_file = %s\n", missing);
    assert_int_equal(config_check_secrets(cfg, NULL, NULL, NULL, err, sizeof err), -1);
    snprintf(want, sizeof want, "t.conf:4: [exchange] password_file: %s: cannot open: %s",
             missing, strerror(ENOENT));
    if (strncmp(err, want, strlen(want)) != 0)
        fail_msg("want '%s...', got '%s'", want, err);
    assert_non_null(strstr(err, "create it (mode 0600)"));
    assert_non_null(strstr(err, "LoadCredential=ews-password:"));
    config_free(cfg);

    cfg = parse_secret_config(VALID_EWS "password_file = %s\n", open_to_group);
    assert_int_equal(config_check_secrets(cfg, NULL, NULL, NULL, err, sizeof err), -1);
    assert_true(strncmp(err, "t.conf:4: [exchange] password_file: ", 36) == 0);
    assert_non_null(strstr(err, "readable by group or others (mode 0640); chmod 600 it"));
    assert_null(strstr(err, SECRET));
    config_free(cfg);

    /* password_file empty: the credential systemd passes */
    snprintf(cred_dir, sizeof cred_dir, "%s/credentials", t->dir);
    assert_int_equal(mkdir(cred_dir, 0700), 0);
    setenv("CREDENTIALS_DIRECTORY", cred_dir, 1);
    cfg = parse_ok(VALID_EWS "password_file =\n");
    assert_int_equal(config_check_secrets(cfg, NULL, NULL, NULL, err, sizeof err), -1);
    assert_true(strncmp(err, "t.conf:4: [exchange] password_file: empty, so the password is "
                        "the systemd credential ews-password: ", 95) == 0);
    assert_non_null(strstr(err, "/credentials/ews-password: cannot open"));
    snprintf(want, sizeof want, "%s/ews-password", cred_dir);
    FILE *f = fopen(want, "w");
    assert_non_null(f);
    fputs(SECRET "\n", f);
    fclose(f);
    assert_int_equal(chmod(want, 0400), 0);
    assert_int_equal(config_check_secrets(cfg, NULL, NULL, NULL, err, sizeof err), 0);
    unlink(want);
    rmdir(cred_dir);
    config_free(cfg);

    /* From a shell as root, without the file the unit's LoadCredential= reads. */
    unsetenv("CREDENTIALS_DIRECTORY");
    cfg = parse_ok(VALID_EWS);
    if (geteuid() == 0 && access(CONFIG_CREDENTIAL_SOURCE, F_OK) < 0) {
        assert_int_equal(config_check_secrets(cfg, NULL, NULL, NULL, err, sizeof err), -1);
        assert_true(strncmp(err, "t.conf: [exchange] password_file: empty, so the service gets "
                            "the password as the systemd credential ews-password", 100) == 0);
        assert_non_null(strstr(err, "status=243/CREDENTIALS"));
        assert_non_null(strstr(err, "install -m 0600 -o root -g root /dev/null "
                                    CONFIG_CREDENTIAL_SOURCE));
    }
    config_free(cfg);

    /* Kerberos needs no password; OAuth2 its client secret. */
    cfg = parse_ok("[exchange]\nurl = https://m.example.org/EWS\nauth = negotiate\n");
    assert_int_equal(config_check_secrets(cfg, NULL, NULL, NULL, err, sizeof err), 0);
    config_free(cfg);
    cfg = parse_secret_config("[exchange]\napi = graph\n[oauth2]\n"
                              "token_url = https://login.example.org/t\nclient_id = abc\n"
                              "client_secret_file = %s\n", missing);
    assert_int_equal(config_check_secrets(cfg, NULL, NULL, NULL, err, sizeof err), -1);
    assert_true(strncmp(err, "t.conf:6: [oauth2] client_secret_file: ", 39) == 0);
    assert_null(strstr(err, "LoadCredential"));
    config_free(cfg);

    if (old)
        setenv("CREDENTIALS_DIRECTORY", old, 1);
    free(old);
}

/* Run as root, --check opens password_file as the service user: a root-owned 0600
 * file passes root's own look, and the service would still be refused. */
static void test_check_secrets_as_the_service_user(void **state)
{
    struct tmp *t = *state;
    struct passwd *pw = getpwnam(CONFIG_SERVICE_USER);
    char want[512];
    const char *path;
    config *cfg;

    if (geteuid() != 0 || !pw)
        skip();
    assert_int_equal(chmod(t->dir, 0755), 0);   /* as /etc/followupd is for the group */
    path = tmp_file(t, SECRET "\n", strlen(SECRET) + 1, 0600);
    assert_int_equal(chown(path, 0, 0), 0);
    cfg = parse_secret_config(VALID_EWS "password_file = %s\n", path);
    assert_int_equal(config_check_secrets(cfg, NULL, NULL, NULL, err, sizeof err), 0);
    assert_int_equal(config_check_secrets(cfg, CONFIG_SERVICE_USER, NULL, NULL, err,
                                          sizeof err), -1);
    snprintf(want, sizeof want, "t.conf:4: [exchange] password_file: %s: the service user "
             "followupd cannot read it (owner root:root, mode 0600): make it the service's: "
             "chown followupd:followupd %s (mode 0600 stays); or leave password_file empty",
             path, path);
    if (strncmp(err, want, strlen(want)) != 0)
        fail_msg("want '%s...', got '%s'", want, err);
    assert_non_null(strstr(err, "LoadCredential=ews-password:" CONFIG_CREDENTIAL_SOURCE));
    assert_null(strstr(err, SECRET));

    /* Done as the message says: accepted. */
    assert_int_equal(chown(path, pw->pw_uid, pw->pw_gid), 0);
    assert_int_equal(config_check_secrets(cfg, CONFIG_SERVICE_USER, NULL, NULL, err,
                                          sizeof err), 0);
    /* The service's file in a directory closed to the service. */
    assert_int_equal(chmod(t->dir, 0700), 0);
    assert_int_equal(config_check_secrets(cfg, CONFIG_SERVICE_USER, NULL, NULL, err,
                                          sizeof err), -1);
    assert_non_null(strstr(err, "a directory on its path is closed to followupd"));
    /* Root itself as the service user: root's look is the whole check. */
    assert_int_equal(config_check_secrets(cfg, "root", NULL, NULL, err, sizeof err), 0);
    config_free(cfg);
}

/* ---- the option table -------------------------------------------------------------- */

static void test_options_list_every_key(void **state)
{
    static const char *const want[][2] = {
        { "database", "conninfo" },
        { "exchange", "api" }, { "exchange", "url" }, { "exchange", "auth" },
        { "exchange", "username" }, { "exchange", "password_file" },
        { "exchange", "impersonation" }, { "exchange", "version" },
        { "exchange", "tls_verify" }, { "exchange", "ca_file" }, { "exchange", "timeout" },
        { "exchange", "time_zone" },
        { "graph", "base_url" }, { "graph", "poll_interval" },
        { "oauth2", "token_url" }, { "oauth2", "client_id" },
        { "oauth2", "client_secret_file" }, { "oauth2", "scope" },
        { "delivery", "concurrency" }, { "delivery", "max_attempts" },
        { "delivery", "batch_size" },
        { "delivery", "backoff_initial_ms" }, { "delivery", "backoff_max_ms" },
        { "delivery", "settle_ms" }, { "delivery", "lease_seconds" },
        { "metrics", "listen" },
    };
    size_t n = 0;
    const config_option_info *opts = config_options(&n);
    char *text = NULL;
    size_t len = 0;
    FILE *f;
    config *cfg;

    (void)state;
    assert_int_equal(n, sizeof want / sizeof want[0]);
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(opts[i].section, want[i][0]);
        assert_string_equal(opts[i].key, want[i][1]);
        assert_non_null(opts[i].default_value);
        /* only the database connection, the back end and the metrics socket need a restart */
        assert_int_equal(opts[i].reloadable, strcmp(opts[i].section, "database") != 0 &&
                                                 strcmp(opts[i].key, "api") != 0 &&
                                                 strcmp(opts[i].section, "metrics") != 0);
    }

    /* Every row's key is accepted in its section, with its documented default. */
    f = open_memstream(&text, &len);
    assert_non_null(f);
    for (size_t i = 0; i < n; i++)
        fprintf(f, "[%s]\n%s = %s\n", opts[i].section, opts[i].key, opts[i].default_value);
    fclose(f);
    cfg = parse_ok(text);
    free(text);
    check_defaults(cfg);
    config_free(cfg);
}

static char *dump(const config *cfg)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);

    assert_non_null(f);
    config_dump(cfg, f);
    fclose(f);
    return text;
}

static void test_dump_round_trip(void **state)
{
    config *a = parse_ok(spec_sample), *b;
    char *ta = dump(a), *tb;

    (void)state;
    assert_non_null(strstr(ta, "[exchange]\napi = ews\n"));
    assert_non_null(strstr(ta, "auth = ntlm\n"));
    b = parse_ok(ta);
    tb = dump(b);
    assert_string_equal(ta, tb);
    free(ta);
    free(tb);
    config_free(a);
    config_free(b);
}

static void test_restart_keys(void **state)
{
    config *a = parse_ok(VALID_EWS);
    config *b = parse_ok(VALID_EWS "timeout = 5\n[delivery]\nconcurrency = 2\n");
    config *c = parse_ok(VALID_EWS "[database]\nconninfo = dbname=other\n");
    char keys[128];

    (void)state;
    assert_int_equal(config_restart_keys(a, b, keys, sizeof keys), 0);
    assert_string_equal(keys, "");
    assert_int_equal(config_restart_keys(a, c, keys, sizeof keys), 1);
    assert_string_equal(keys, "[database] conninfo");
    config_free(a);
    config_free(b);
    config_free(c);
}

static void test_password_path(void **state)
{
    config *cfg = parse_ok(VALID_EWS);
    char *old = getenv("CREDENTIALS_DIRECTORY") ? strdup(getenv("CREDENTIALS_DIRECTORY")) : NULL;
    char *p;

    (void)state;
    setenv("CREDENTIALS_DIRECTORY", "/run/credentials/followupd.service", 1);
    p = config_password_path(cfg, err, sizeof err);
    assert_string_equal(p, "/run/credentials/followupd.service/ews-password");
    free(p);
    unsetenv("CREDENTIALS_DIRECTORY");
    assert_null(config_password_path(cfg, err, sizeof err));
    assert_non_null(strstr(err, "CREDENTIALS_DIRECTORY"));
    config_free(cfg);

    cfg = parse_ok(VALID_EWS "password_file = /etc/followupd/pw\n");
    p = config_password_path(cfg, err, sizeof err);
    assert_string_equal(p, "/etc/followupd/pw");
    free(p);
    config_free(cfg);
    if (old)
        setenv("CREDENTIALS_DIRECTORY", old, 1);
    free(old);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spec_sample),
        cmocka_unit_test(test_defaults_empty_file),
        cmocka_unit_test(test_empty_values_mean_default),
        cmocka_unit_test(test_comments_and_whitespace),
        cmocka_unit_test(test_crlf_and_bom),
        cmocka_unit_test(test_bools),
        cmocka_unit_test(test_enums),
        cmocka_unit_test(test_ranges),
        cmocka_unit_test(test_graph_scope_default),
        cmocka_unit_test(test_err_unknown_section),
        cmocka_unit_test(test_err_unknown_key),
        cmocka_unit_test(test_err_key_outside_section),
        cmocka_unit_test(test_err_no_equals),
        cmocka_unit_test(test_err_missing_key_name),
        cmocka_unit_test(test_err_bad_bool),
        cmocka_unit_test(test_err_bad_int),
        cmocka_unit_test(test_err_out_of_range),
        cmocka_unit_test(test_err_bad_enum),
        cmocka_unit_test(test_err_bad_version),
        cmocka_unit_test(test_err_version_too_old),
        cmocka_unit_test(test_err_duplicate_key),
        cmocka_unit_test(test_err_unterminated_header),
        cmocka_unit_test(test_err_text_after_header),
        cmocka_unit_test_setup_teardown(test_load_file, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_load_missing, tmp_setup, tmp_teardown),
        cmocka_unit_test(test_example_file),
        cmocka_unit_test(test_validate_url),
        cmocka_unit_test(test_validate_auth),
        cmocka_unit_test(test_validate_programmatic),
        cmocka_unit_test(test_validate_names_file_line_and_key),
        cmocka_unit_test(test_key_lines),
        cmocka_unit_test_setup_teardown(test_load_lenient_skips_bad_lines, tmp_setup,
                                        tmp_teardown),
        cmocka_unit_test_setup_teardown(test_secret_good, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_secret_symlink_followed, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_secret_mode_0640, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_secret_mode_0604, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_secret_missing, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_secret_other_refusals, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_check_secrets, tmp_setup, tmp_teardown),
        cmocka_unit_test_setup_teardown(test_check_secrets_as_the_service_user, tmp_setup,
                                        tmp_teardown),
        cmocka_unit_test(test_options_list_every_key),
        cmocka_unit_test(test_dump_round_trip),
        cmocka_unit_test(test_restart_keys),
        cmocka_unit_test(test_password_path),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
