/* test_ews_stream_sim — part of test_ews_stream: the watch whole against
 * tests/sim/ews_sim.py (two mailbox servers, so that affinity matters), skipped when
 * the simulator cannot start (no Python 3 with lxml). 300 mailboxes take two
 * connections of 200 and 100; an edit in Outlook reaches changed() within two seconds;
 * an expired subscription is made again; a smaller set unsubscribes the rest. */
#include <setjmp.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <json-c/json.h>

#include "daemon/config.h"
#include "ews/delivery_ews.h"
#include "ews/ews_stream.h"
#include "http/http_client.h"
#include "http/loop_timer.h"

#define MAILBOXES 300

extern char **environ;
void test_against_sim(void **state);
int test_against_sim_teardown(void **state);

typedef struct sim {
    pid_t pid;
    int port;
    char dir[64];
} sim;

static void path_in(const sim *s, const char *name, char *out, size_t size)
{
    snprintf(out, size, "%s/%s", s->dir, name);
}

/* Starts ews_sim.py; false when it cannot run here (then the test is skipped). */
static bool sim_start(sim *s)
{
    const char *src = getenv("top_srcdir") ? getenv("top_srcdir") : "..";
    const char *python = getenv("PYTHON3") && getenv("PYTHON3")[0] ? getenv("PYTHON3")
                                                                     : "/usr/bin/python3";
    const char *schema = getenv("FOLLOWUPD_EWS_SCHEMA");
    char script[1024], port_file[128], log_file[128], password[128];

    snprintf(script, sizeof script, "%s/tests/sim/ews_sim.py", src);
    if (access(script, R_OK) != 0 || access(python, X_OK) != 0)
        return false;
    snprintf(s->dir, sizeof s->dir, "/tmp/ews-stream-XXXXXX");
    assert_non_null(mkdtemp(s->dir));
    path_in(s, "port", port_file, sizeof port_file);
    path_in(s, "sim.log", log_file, sizeof log_file);
    path_in(s, "password", password, sizeof password);
    FILE *f = fopen(password, "w");
    assert_non_null(f);
    fputs("secret\n", f);
    fclose(f);
    chmod(password, 0600);

    char *argv[] = {(char *)python, script, "--port", "0", "--port-file", port_file,
                    "--users", "svc:secret", schema ? "--schema-dir" : "--no-schema",
                    (char *)schema, NULL};
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, log_file, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    int r = posix_spawn(&s->pid, python, &actions, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    if (r != 0)
        return false;
    for (int i = 0; i < 300; i++) {
        f = fopen(port_file, "r");
        if (f && fscanf(f, "%d", &s->port) == 1) {
            fclose(f);
            return true;
        }
        if (f)
            fclose(f);
        if (waitpid(s->pid, NULL, WNOHANG) == s->pid)
            return false;   /* e.g. no lxml */
        usleep(50000);
    }
    return false;
}

static void sim_stop(sim *s)
{
    char path[128];
    if (s->dir[0] == '\0')
        return;
    if (s->pid > 0) {
        kill(s->pid, SIGTERM);
        waitpid(s->pid, NULL, 0);
    }
    for (const char *const *name = (const char *const[]){"port", "sim.log", "password", NULL};
         *name; name++) {
        path_in(s, *name, path, sizeof path);
        unlink(path);
    }
    rmdir(s->dir);
}

typedef struct buffer {
    char *data;
    size_t len;
} buffer;

static size_t collect(char *data, size_t size, size_t n, void *userdata)
{
    buffer *b = userdata;
    char *grown = realloc(b->data, b->len + size * n + 1);
    assert_non_null(grown);
    memcpy(grown + b->len, data, size * n);
    b->data = grown;
    b->len += size * n;
    grown[b->len] = '\0';
    return size * n;
}

/* One control API call (blocking: a test may). Returns the JSON answer. */
static json_object *sim_call(const sim *s, const char *method, const char *path,
                             const char *json)
{
    char url[512];
    buffer answer = {0};
    CURL *curl = curl_easy_init();
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", s->port, path);
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    if (json)
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, json);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &answer);
    assert_int_equal(curl_easy_perform(curl), CURLE_OK);
    curl_slist_free_all(headers);
    curl_easy_cleanup(curl);
    json_object *parsed = json_tokener_parse(answer.data ? answer.data : "null");
    free(answer.data);
    return parsed;
}

static int64_t stat_of(const sim *s, const char *name)
{
    json_object *stats = sim_call(s, "GET", "/_sim/sync-stats", NULL), *value;
    int64_t n = json_object_object_get_ex(stats, name, &value) ? json_object_get_int64(value) : -1;
    json_object_put(stats);
    return n;
}

typedef struct watch_state {
    const sim *sim;
    int changed[MAILBOXES];
    int total;
    int want_connections, want_on_connections, want_subscriptions;
    char *item_id;
    bool created;
} watch_state;

static void on_changed(const char *mailbox, void *userdata)
{
    watch_state *w = userdata;
    int n = -1;
    assert_int_equal(sscanf(mailbox, "user%d@example.com", &n), 1);
    assert_true(n >= 0 && n < MAILBOXES);
    w->changed[n]++;
    w->total++;
}

static void on_created(const delivery_result *r, void *userdata)
{
    watch_state *w = userdata;
    assert_int_equal(r->outcome, DELIVERY_OK);
    w->item_id = strdup(r->item.item_id);
    w->created = true;
}

typedef bool (*condition)(watch_state *w);

/* Runs the loop until cond holds; false after timeout_ms. */
static bool run_until(sd_event *event, condition cond, watch_state *w, int timeout_ms)
{
    int64_t deadline = loop_timer_now_ms() + timeout_ms;
    while (loop_timer_now_ms() < deadline) {
        if (cond(w))
            return true;
        assert_true(sd_event_run(event, 50000) >= 0);
    }
    return cond(w);
}

static bool streams_as_wanted(watch_state *w)
{
    return stat_of(w->sim, "streaming_connections") == w->want_connections &&
           stat_of(w->sim, "subscriptions_on_connections") == w->want_on_connections &&
           stat_of(w->sim, "subscriptions") == w->want_subscriptions;
}

static bool all_changed(watch_state *w)
{
    for (int i = 0; i < MAILBOXES; i++)
        if (!w->changed[i])
            return false;
    return true;
}

static bool created(watch_state *w)
{
    return w->created && w->changed[5] > 0;
}

static bool changed_5(watch_state *w)
{
    return w->changed[5] > 0;
}

static bool changed_7(watch_state *w)
{
    return w->changed[7] > 0;
}

static bool group_1_changed(watch_state *w)
{
    for (int i = 0; i < 200; i++)
        if (!w->changed[i])
            return false;
    return true;
}

/* Every GetStreamingEvents was anchored at its group's first mailbox, preferred
 * affinity and carried the cookie the group's first Subscribe got. */
static void check_affinity(const sim *s)
{
    json_object *log = sim_call(s, "GET", "/_sim/requests?op=GetStreamingEvents", NULL);
    size_t n = json_object_array_length(log);
    assert_true(n >= 2);
    for (size_t i = 0; i < n; i++) {
        json_object *entry = json_object_array_get_idx(log, i), *v;
        assert_true(json_object_object_get_ex(entry, "anchor_mailbox", &v));
        const char *anchor = json_object_get_string(v);
        assert_true(strcmp(anchor, "user000@example.com") == 0 ||
                    strcmp(anchor, "user200@example.com") == 0);
        assert_true(json_object_object_get_ex(entry, "prefer_server_affinity", &v));
        assert_string_equal(json_object_get_string(v), "true");
        assert_true(json_object_object_get_ex(entry, "backend_override_cookie", &v));
        assert_non_null(json_object_get_string(v));
    }
    json_object_put(log);
    json_object *errors = sim_call(s, "GET", "/_sim/errors", NULL);
    if (json_object_array_length(errors) != 0)
        fail_msg("the simulator refused requests: %s", json_object_to_json_string(errors));
    json_object_put(errors);
}

static sim the_sim;   /* stopped by the teardown, also when an assertion failed */

int test_against_sim_teardown(void **state)
{
    (void)state;
    sim_stop(&the_sim);
    memset(&the_sim, 0, sizeof the_sim);
    return 0;
}

void test_against_sim(void **state)
{
    (void)state;
    if (!sim_start(&the_sim))
        skip();
    json_object_put(sim_call(&the_sim, "POST", "/_sim/settings",
                             "{\"mailbox_servers\": 2, \"streaming_heartbeat_s\": 5}"));
    sd_event *event = NULL;
    assert_int_equal(sd_event_new(&event), 0);
    void *backend = delivery_ews_new(event);
    assert_non_null(backend);
    char text[512], err[512], password[128];
    path_in(&the_sim, "password", password, sizeof password);
    snprintf(text, sizeof text, "[exchange]\nurl = http://127.0.0.1:%d/EWS/Exchange.asmx\n"
             "auth = basic\nusername = svc\npassword_file = %s\n", the_sim.port, password);
    config *cfg = NULL;
    assert_int_equal(config_parse_string("t.conf", text, &cfg, err, sizeof err), 0);
    if (delivery_ews_ops.configure(backend, cfg, err, sizeof err) != 0)
        fail_msg("configure: %s", err);

    static char names[MAILBOXES][32];
    const char *list[MAILBOXES];
    for (int i = 0; i < MAILBOXES; i++) {
        snprintf(names[i], sizeof names[i], "user%03d@example.com", i);
        list[i] = names[i];
    }
    watch_state w = {.sim = &the_sim, .want_connections = 2, .want_on_connections = MAILBOXES,
                     .want_subscriptions = MAILBOXES};
    int64_t started = loop_timer_now_ms();
    assert_int_equal(ews_stream_watch(backend, list, MAILBOXES, on_changed, &w), 0);
    assert_true(run_until(event, streams_as_wanted, &w, 30000));
    assert_true(run_until(event, all_changed, &w, 5000));   /* each new subscription */
    print_message("300 mailboxes subscribed and streaming in %lld ms\n",
                  (long long)(loop_timer_now_ms() - started));
    assert_int_equal(stat_of(&the_sim, "max_subscriptions_per_connection"), 200);
    check_affinity(&the_sim);


    /* A person edits an item: changed() within two seconds (the schema's namespaces
     * this time: t:Notification). */
    json_object_put(sim_call(&the_sim, "POST", "/_sim/settings",
                             "{\"streaming_schema_namespaces\": true}"));
    outlook_item item = {.kind = OUTLOOK_APPOINTMENT, .log_id = 5, .subject = "Call back",
                         .body_html = "<p>Call back</p>", .start = 1893456000,
                         .end = 1893457800, .reminder_minutes = 15,
                         .importance = OUTLOOK_IMPORTANCE_NORMAL};
    memset(w.changed, 0, sizeof w.changed);
    assert_int_equal(delivery_ews_ops.create(backend, list[5], &item, on_created, &w), 0);
    assert_true(run_until(event, created, &w, 5000));   /* our own create is an event too */
    memset(w.changed, 0, sizeof w.changed);
    char path[512];
    snprintf(path, sizeof path, "/_sim/items/%s", w.item_id);
    int64_t edited = loop_timer_now_ms();
    json_object_put(sim_call(&the_sim, "PATCH", path, "{\"subject\": \"Edited in Outlook\"}"));
    assert_true(run_until(event, changed_5, &w, 2000));
    print_message("an edit reached changed() after %lld ms\n",
                  (long long)(loop_timer_now_ms() - edited));

    /* An expired subscription is made again, and its mailbox reported. */
    json_object_put(sim_call(&the_sim, "POST", "/_sim/expire",
                             "{\"mailbox\": \"user007@example.com\", "
                             "\"what\": \"subscriptions\"}"));
    assert_true(run_until(event, changed_7, &w, 5000));
    assert_true(run_until(event, streams_as_wanted, &w, 20000));

    /* A connection that breaks may have lost events: once it is back, every mailbox of
     * its group is reported. (An expiry makes group 1 reopen; that connection drops.) */
    json_object_put(sim_call(&the_sim, "POST", "/_sim/faults",
                             "{\"mode\": \"drop_after_perform\", \"count\": 1, "
                             "\"ops\": [\"GetStreamingEvents\"]}"));
    memset(w.changed, 0, sizeof w.changed);
    json_object_put(sim_call(&the_sim, "POST", "/_sim/expire",
                             "{\"mailbox\": \"user008@example.com\", "
                             "\"what\": \"subscriptions\"}"));
    assert_true(run_until(event, group_1_changed, &w, 10000));
    assert_true(run_until(event, streams_as_wanted, &w, 20000));

    /* A smaller set: the others unsubscribed, the emptied group's connection gone. */
    w.want_connections = 1;
    w.want_on_connections = w.want_subscriptions = 150;
    assert_int_equal(ews_stream_watch(backend, list, 150, on_changed, &w), 0);
    assert_true(run_until(event, streams_as_wanted, &w, 20000));
    w.want_connections = w.want_on_connections = w.want_subscriptions = 0;
    assert_int_equal(ews_stream_watch(backend, list, 0, on_changed, &w), 0);
    assert_true(run_until(event, streams_as_wanted, &w, 20000));

    const char *dump = getenv("TEST_EWS_STREAM_REQUESTS");   /* to look at, by hand */
    if (dump) {
        json_object *log = sim_call(&the_sim, "GET", "/_sim/requests", NULL);
        json_object_to_file(dump, log);
        json_object_put(log);
    }
    ews_stream_free(backend);
    delivery_ews_ops.free(backend);
    config_free(cfg);
    free(w.item_id);
    sd_event_unref(event);
}
