/* Unit tests for metrics: how answers are classified, the metering delivery (counts,
 * durations, the caller's callback, no leak when a call is refused), and the page.
 * Includes metrics.c to reach its statics; the HTTP side is tested end to end by
 * tests/integration/test_metrics.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "daemon/metrics.c"

/* ---- a back end that keeps the last call's callback --------------------------- */

typedef struct fake_backend {
    delivery_done_fn done;
    void *userdata;
    int refuse;          /* returned by the next call when negative */
    bool stopped, freed;
} fake_backend;

static int fake_find(void *impl, const char *mailbox, outlook_item_kind kind, int64_t log_id,
                     delivery_done_fn done, void *userdata)
{
    fake_backend *f = impl;
    (void)mailbox;
    (void)kind;
    (void)log_id;
    if (f->refuse < 0)
        return f->refuse;
    f->done = done;
    f->userdata = userdata;
    return 0;
}

static int fake_create(void *impl, const char *mailbox, const outlook_item *item,
                       delivery_done_fn done, void *userdata)
{
    (void)item;
    return fake_find(impl, mailbox, OUTLOOK_APPOINTMENT, 0, done, userdata);
}

static int fake_configure(void *impl, const config *cfg, char *err, size_t errlen)
{
    (void)impl;
    (void)cfg;
    (void)err;
    (void)errlen;
    return 0;
}

static void fake_stop(void *impl)
{
    ((fake_backend *)impl)->stopped = true;
}

static void fake_free(void *impl)
{
    ((fake_backend *)impl)->freed = true;
}

static const delivery_ops fake_ops = {
    .find = fake_find, .create = fake_create, .configure = fake_configure,
    .stop = fake_stop, .free = fake_free,
};

/* What the daemon's callback saw. */
static const delivery_result *seen_result;
static void *seen_userdata;
static int calls;

static void on_done(const delivery_result *r, void *userdata)
{
    seen_result = r;
    seen_userdata = userdata;
    calls++;
}

static metrics *bare_metrics(metrics_read_fn read)
{
    metrics *m = calloc(1, sizeof *m);   /* no HTTP server: not needed to count */
    assert_non_null(m);
    m->read = read;
    return m;
}

/* ---- tests ------------------------------------------------------------------------ */

static void answers_are_classified_as_job_acts_on_them(void **state)
{
    (void)state;
    delivery_result r = {.outcome = DELIVERY_OK, .retry_after_ms = -1};
    assert_int_equal(classify(&r), OUT_OK);
    r.outcome = DELIVERY_NOT_FOUND;
    assert_int_equal(classify(&r), OUT_NOT_FOUND);
    r.outcome = DELIVERY_TRANSIENT;
    assert_int_equal(classify(&r), OUT_RETRY);
    r.outcome = DELIVERY_PERMANENT;
    assert_int_equal(classify(&r), OUT_FAILED);
    r = (delivery_result){.outcome = DELIVERY_TRANSIENT, .retry_after_ms = 500,
                          .throttle = DELIVERY_THROTTLE_MAILBOX};
    assert_int_equal(classify(&r), OUT_THROTTLED);
    r.retry_after_ms = -1;   /* "busy" without a wait: an ordinary retry */
    assert_int_equal(classify(&r), OUT_RETRY);
    r = (delivery_result){.outcome = DELIVERY_TRANSIENT, .outcome_unknown = true,
                          .retry_after_ms = -1};
    assert_int_equal(classify(&r), OUT_UNKNOWN);
    r.auth_failed = true;
    assert_int_equal(classify(&r), OUT_AUTH);
    r.not_sent = true;
    assert_int_equal(classify(&r), OUT_NOT_SENT);
}

static void metered_calls_are_counted_timed_and_passed_on(void **state)
{
    (void)state;
    metrics *m = bare_metrics(NULL);
    fake_backend fake = {0};
    delivery *inner = calloc(1, sizeof *inner);
    assert_non_null(inner);
    *inner = (delivery){&fake_ops, &fake};
    delivery *d = metrics_meter(m, inner);
    assert_non_null(d);
    int marker;

    assert_int_equal(delivery_create(d, "a@x", NULL, on_done, &marker), 0);
    assert_int_equal(calls, 0);
    delivery_result ok = {.outcome = DELIVERY_OK, .retry_after_ms = -1};
    fake.done(&ok, fake.userdata);
    assert_int_equal(calls, 1);
    assert_ptr_equal(seen_result, &ok);
    assert_ptr_equal(seen_userdata, &marker);
    assert_int_equal(m->requests[OP_CREATE][OUT_OK], 1);
    assert_int_equal(m->duration[OP_CREATE].count, 1);

    /* Not sent: counted, but no duration. */
    assert_int_equal(delivery_find(d, "a@x", OUTLOOK_TASK, 7, on_done, &marker), 0);
    delivery_result not_sent = {.outcome = DELIVERY_TRANSIENT, .not_sent = true};
    fake.done(&not_sent, fake.userdata);
    assert_int_equal(m->requests[OP_LOOKUP][OUT_NOT_SENT], 1);
    assert_int_equal(m->duration[OP_LOOKUP].count, 0);

    /* A call the back end refuses: the error comes back, nothing is counted. */
    fake.refuse = -EINVAL;
    assert_int_equal(delivery_create(d, "a@x", NULL, on_done, &marker), -EINVAL);
    assert_int_equal(m->requests[OP_CREATE][OUT_OK] + m->requests[OP_CREATE][OUT_FAILED], 1);
    assert_int_equal(calls, 2);

    delivery_stop(d);
    assert_true(fake.stopped);
    delivery_free(d);   /* frees the back end it wraps */
    assert_true(fake.freed);
    free(m);
}

static long long pending_figure = 5;

static void read_some(metrics_gauges *g, void *userdata)
{
    (void)userdata;
    *g = (metrics_gauges){.database_connected = true, .pending = pending_figure, .parked = 1,
                          .oldest_pending_seconds = 42, .auth_failing = true,
                          .mailboxes_held = 2, .mailbox_holds = 3};
}

static void the_page_has_every_family_and_the_figures(void **state)
{
    (void)state;
    metrics *m = bare_metrics(read_some);
    delivery_result slow = {.outcome = DELIVERY_OK};
    count_request(m, OP_UPDATE, &slow, 3000000);   /* 3 s: in the 5 s bucket */
    size_t len;
    char *page = metrics_render(m, &len);
    assert_non_null(page);
    assert_int_equal(strlen(page), len);
    static const char *const expected[] = {
        "# TYPE followupd_requests_total counter\n",
        "followupd_requests_total{operation=\"update\",outcome=\"ok\"} 1\n",
        "followupd_requests_total{operation=\"lookup\",outcome=\"not_sent\"} 0\n",
        "# TYPE followupd_request_duration_seconds histogram\n",
        "followupd_request_duration_seconds_bucket{operation=\"update\",le=\"2.5\"} 0\n",
        "followupd_request_duration_seconds_bucket{operation=\"update\",le=\"5\"} 1\n",
        "followupd_request_duration_seconds_bucket{operation=\"update\",le=\"+Inf\"} 1\n",
        "followupd_request_duration_seconds_sum{operation=\"update\"} 3.000000\n",
        "followupd_request_duration_seconds_count{operation=\"update\"} 1\n",
        "followupd_throttling_holds_total{scope=\"mailbox\"} 3\n",
        "followupd_throttling_holds_total{scope=\"server\"} 0\n",
        "followupd_throttled_mailboxes 2\n",
        "followupd_pending_logs 5\n",
        "followupd_parked_logs 1\n",
        "followupd_oldest_pending_seconds 42\n",
        "followupd_logs_in_progress 0\n",
        "followupd_backend_state{state=\"ok\"} 0\n",
        "followupd_backend_state{state=\"auth_failing\"} 1\n",
        "followupd_database_connected 1\n",
        "# TYPE followupd_outlook_changes_total counter\n"
        "followupd_outlook_changes_total{result=\"applied\"} 0\n"
        "followupd_outlook_changes_total{result=\"refused\"} 0\n",
    };
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++)
        if (!strstr(page, expected[i]))
            fail_msg("missing from the page: %s", expected[i]);
    free(page);

    /* A figure not known: its family stays, without a sample. */
    pending_figure = -1;
    page = metrics_render(m, NULL);
    assert_non_null(page);
    assert_non_null(strstr(page, "# TYPE followupd_pending_logs gauge\n"));
    assert_null(strstr(page, "\nfollowupd_pending_logs "));
    free(page);
    pending_figure = 5;
    free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(answers_are_classified_as_job_acts_on_them),
        cmocka_unit_test(metered_calls_are_counted_timed_and_passed_on),
        cmocka_unit_test(the_page_has_every_family_and_the_figures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
