/* http_client — see http_client.h.
 * libcurl tells us which sockets to watch (CURLMOPT_SOCKETFUNCTION) and when to
 * wake (CURLMOPT_TIMERFUNCTION); we turn those into sd_event sources and hand
 * events back with curl_multi_socket_action. */
#include "http/http_client.h"
#include "http/loop_timer.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>

#include "daemon/text.h"

struct http_client {
    sd_event *event;
    CURLM *multi;
    loop_timer *timer;
    http_settings settings;      /* owned copies of the strings */
    struct http_transfer *transfers;   /* in flight, for freeing on shutdown */
};

typedef struct http_transfer {
    http_client *client;
    CURL *easy;
    struct curl_slist *headers;
    char *request_body;
    char *response;
    size_t response_len;
    size_t response_cap;
    bool too_large;
    int64_t retry_after_ms;
    char error[CURL_ERROR_SIZE];
    char auth_detail[512];       /* auth = negotiate: libcurl's last GSSAPI complaint */
    http_done_fn done;
    void *userdata;
    /* Streaming (http_client_stream): the body goes to data, header lines to header. */
    void (*header)(const char *line, size_t len, void *userdata);
    bool (*data)(const char *block, size_t len, void *userdata);
    bool in_callback;            /* inside header or data: cancel only marks */
    bool cancelled;              /* ends at the next chance, without done */
    struct http_transfer *prev, *next;
} http_transfer;

/* Per-socket watch; libcurl keeps a pointer to it with curl_multi_assign. */
typedef struct socket_watch {
    sd_event_source *source;
} socket_watch;

static void free_settings(http_settings *s)
{
    free((char *)s->username);
    if (s->password) {
        explicit_bzero((char *)s->password, strlen(s->password));
        free((char *)s->password);
    }
    free((char *)s->ca_file);
    memset(s, 0, sizeof *s);
}

void http_global_init(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

void http_global_cleanup(void)
{
    curl_global_cleanup();
}

int http_client_configure(http_client *client, const http_settings *settings)
{
    http_settings copy = *settings;
    copy.username = text_dup(settings->username);
    copy.password = text_dup(settings->password);
    copy.ca_file = text_dup(settings->ca_file);
    if ((settings->username && !copy.username) || (settings->password && !copy.password) ||
        (settings->ca_file && !copy.ca_file)) {
        free_settings(&copy);
        return -ENOMEM;
    }
    free_settings(&client->settings);
    client->settings = copy;
    return 0;
}

static void transfer_free(http_transfer *t)
{
    if (t->easy)
        curl_easy_cleanup(t->easy);
    curl_slist_free_all(t->headers);
    free(t->request_body);
    free(t->response);
    free(t);
}

static void unlink_transfer(http_client *client, http_transfer *t)
{
    if (t->prev)
        t->prev->next = t->next;
    else
        client->transfers = t->next;
    if (t->next)
        t->next->prev = t->prev;
}

/* Which stage failed, in words an operator can act on. */
static const char *failure_kind(CURLcode result, bool too_large)
{
    if (too_large)
        return "too-large";
    switch (result) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return "dns";
    case CURLE_COULDNT_CONNECT:
        return "connect";
    case CURLE_OPERATION_TIMEDOUT:
        return "timeout";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_USE_SSL_FAILED:
        return "tls";
    default:
        return "transfer";
    }
}

static void check_finished(http_client *client)
{
    CURLMsg *msg;
    int left;

    while ((msg = curl_multi_info_read(client->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        http_transfer *t = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&t);
        CURLcode result = msg->data.result;
        curl_multi_remove_handle(client->multi, t->easy);
        unlink_transfer(client, t);

        http_response r = {0};
        r.retry_after_ms = t->retry_after_ms;
        r.too_large = t->too_large;
        curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &r.status);
        if (result == CURLE_OK) {
            r.transfer_ok = true;
        } else {
            r.failure = failure_kind(result, t->too_large);
            r.error = t->too_large ? "response larger than the size limit"
                      : t->error[0] ? t->error
                                    : curl_easy_strerror(result);
        }
        r.body = t->response ? t->response : "";
        r.body_len = t->response_len;
        r.auth_detail = t->auth_detail[0] ? t->auth_detail : NULL;
        if (!t->cancelled)
            t->done(&r, t->userdata);
        transfer_free(t);
    }
}

static int on_socket_event(sd_event_source *source, int fd, uint32_t revents, void *userdata)
{
    http_client *client = userdata;
    int action = 0, running;

    (void)source;
    if (revents & EPOLLIN)
        action |= CURL_CSELECT_IN;
    if (revents & EPOLLOUT)
        action |= CURL_CSELECT_OUT;
    if (revents & (EPOLLERR | EPOLLHUP))
        action |= CURL_CSELECT_ERR;
    curl_multi_socket_action(client->multi, fd, action, &running);
    check_finished(client);
    return 0;
}

static void on_timer(void *userdata)
{
    http_client *client = userdata;
    int running;

    curl_multi_socket_action(client->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_finished(client);
}

static int socket_callback(CURL *easy, curl_socket_t fd, int what, void *clientp, void *socketp)
{
    http_client *client = clientp;
    socket_watch *watch = socketp;
    uint32_t events = 0;

    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        if (watch) {
            sd_event_source_disable_unref(watch->source);
            free(watch);
            curl_multi_assign(client->multi, fd, NULL);
        }
        return 0;
    }
    if (what & CURL_POLL_IN)
        events |= EPOLLIN;
    if (what & CURL_POLL_OUT)
        events |= EPOLLOUT;
    if (!watch) {
        watch = calloc(1, sizeof *watch);
        if (!watch)
            return -1;
        if (sd_event_add_io(client->event, &watch->source, fd, events, on_socket_event,
                            client) < 0) {
            free(watch);
            return -1;
        }
        curl_multi_assign(client->multi, fd, watch);
        return 0;
    }
    if (sd_event_source_set_io_events(watch->source, events) < 0)
        return -1;
    return 0;
}

static int timer_callback(CURLM *multi, long timeout_ms, void *clientp)
{
    http_client *client = clientp;

    (void)multi;
    if (timeout_ms < 0) {
        loop_timer_disarm(client->timer);
        return 0;
    }
    /* timeout 0 means "call me as soon as possible": from the loop, not recursively. */
    return loop_timer_arm(client->timer, (uint64_t)timeout_ms * 1000) < 0 ? -1 : 0;
}

http_client *http_client_new(sd_event *event)
{
    http_client *client = calloc(1, sizeof *client);
    if (!client)
        return NULL;
    client->event = sd_event_ref(event);
    client->multi = curl_multi_init();
    if (!client->multi)
        goto fail;
    client->timer = loop_timer_new(event, on_timer, client);
    if (!client->timer)
        goto fail;
    curl_multi_setopt(client->multi, CURLMOPT_SOCKETFUNCTION, socket_callback);
    curl_multi_setopt(client->multi, CURLMOPT_SOCKETDATA, client);
    curl_multi_setopt(client->multi, CURLMOPT_TIMERFUNCTION, timer_callback);
    curl_multi_setopt(client->multi, CURLMOPT_TIMERDATA, client);
    client->settings.tls_verify = true;
    client->settings.timeout_seconds = 30;
    client->settings.max_response_bytes = 4u * 1024u * 1024u;
    return client;
fail:
    http_client_free(client);
    return NULL;
}

void http_client_free(http_client *client)
{
    if (!client)
        return;
    if (client->multi) {
        /* Abort whatever is still running; its callbacks are not called. */
        while (client->transfers) {
            http_transfer *t = client->transfers;
            curl_multi_remove_handle(client->multi, t->easy);
            unlink_transfer(client, t);
            transfer_free(t);
        }
        curl_multi_cleanup(client->multi);
    }
    loop_timer_free(client->timer);
    sd_event_unref(client->event);
    free_settings(&client->settings);
    free(client);
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *userdata)
{
    http_transfer *t = userdata;
    size_t n = size * nmemb;

    if (t->data) {
        if (t->cancelled)
            return 0;
        t->in_callback = true;
        bool keep = t->data(data, n, t->userdata);
        t->in_callback = false;
        return keep && !t->cancelled ? n : 0;   /* 0 makes curl end the transfer */
    }
    if (t->response_len + n > t->client->settings.max_response_bytes) {
        t->too_large = true;
        return 0;   /* makes curl abort the transfer: memory stays bounded */
    }
    if (t->response_len + n + 1 > t->response_cap) {
        size_t cap = t->response_cap ? t->response_cap : 4096;
        while (cap < t->response_len + n + 1)
            cap *= 2;
        char *grown = realloc(t->response, cap);
        if (!grown)
            return 0;
        t->response = grown;
        t->response_cap = cap;
    }
    memcpy(t->response + t->response_len, data, n);
    t->response_len += n;
    t->response[t->response_len] = '\0';
    return n;
}

/* Longer than any real hold; a value beyond it is a broken or hostile hint. */
#define RETRY_AFTER_MAX_SECONDS (7 * 86400)

int64_t http_retry_after_ms(const char *value, time_t now)
{
    char text[128];

    if (!value)
        return -1;
    while (*value == ' ' || *value == '\t')
        value++;
    size_t n = strlen(value);
    while (n > 0 && strchr(" \t\r\n", value[n - 1]))
        n--;
    if (n == 0 || n >= sizeof text)
        return -1;
    memcpy(text, value, n);
    text[n] = '\0';

    if (strspn(text, "0123456789") == n) {
        /* delay-seconds: digits only ("120abc" is not a number of seconds). */
        if (n > 7)
            return -1;
        long seconds = strtol(text, NULL, 10);
        return seconds < RETRY_AFTER_MAX_SECONDS ? (int64_t)seconds * 1000 : -1;
    }
    /* libcurl's date parser knows all three HTTP-date forms and, unlike strptime,
     * does not depend on the locale's day and month names. */
    time_t when = curl_getdate(text, &now);
    if (when == -1)
        return -1;
    if (when <= now)
        return 0;
    if (when - now >= RETRY_AFTER_MAX_SECONDS)
        return -1;
    return (int64_t)(when - now) * 1000;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *userdata)
{
    http_transfer *t = userdata;
    size_t n = size * nmemb;
    static const char name[] = "retry-after:";

    if (n > sizeof name - 1 && n < 200 && strncasecmp(data, name, sizeof name - 1) == 0) {
        char value[200];
        memcpy(value, data + sizeof name - 1, n - (sizeof name - 1));
        value[n - (sizeof name - 1)] = '\0';
        value[strcspn(value, "\r\n")] = '\0';
        t->retry_after_ms = http_retry_after_ms(value, time(NULL));
    }
    if (t->header) {
        if (t->cancelled)
            return 0;
        size_t len = n;
        while (len > 0 && (data[len - 1] == '\n' || data[len - 1] == '\r'))
            len--;
        t->in_callback = true;
        t->header(data, len, t->userdata);
        t->in_callback = false;
        if (t->cancelled)
            return 0;
    }
    return n;
}

static long curl_auth_mask(http_auth auth)
{
    switch (auth) {
    case HTTP_AUTH_BASIC: return CURLAUTH_BASIC;
    case HTTP_AUTH_NTLM: return CURLAUTH_NTLM;
    case HTTP_AUTH_NEGOTIATE: return CURLAUTH_NEGOTIATE;
    case HTTP_AUTH_BEARER: return CURLAUTH_BEARER;
    case HTTP_AUTH_NONE: break;
    }
    return CURLAUTH_NONE;
}

/* auth = negotiate: libcurl tells why GSSAPI gave no token only as an informational
 * text; the last such line is kept (the rest of the verbose output is dropped). */
static int on_curl_debug(CURL *easy, curl_infotype type, char *data, size_t size,
                         void *userdata)
{
    http_transfer *t = userdata;
    static const char gss[] = "gss_";

    (void)easy;
    if (type != CURLINFO_TEXT || size < sizeof gss - 1 || memcmp(data, gss, sizeof gss - 1) != 0)
        return 0;
    size_t n = size < sizeof t->auth_detail - 1 ? size : sizeof t->auth_detail - 1;
    while (n > 0 && data[n - 1] != '\0' && strchr("\r\n .", data[n - 1]))
        n--;
    memcpy(t->auth_detail, data, n);
    t->auth_detail[n] = '\0';
    text_one_line(t->auth_detail, sizeof t->auth_detail);
    return 0;
}

static int configure_easy(http_transfer *t, const char *method, const char *url,
                          const http_settings *s)
{
    CURL *e = t->easy;
    int bad = 0;

    bad |= curl_easy_setopt(e, CURLOPT_URL, url);
    bad |= curl_easy_setopt(e, CURLOPT_PRIVATE, t);
    bad |= curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->error);
    bad |= curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    if (strcmp(method, "GET") == 0) {
        bad |= curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else {
        bad |= curl_easy_setopt(e, CURLOPT_POST, 1L);
        bad |= curl_easy_setopt(e, CURLOPT_POSTFIELDS, t->request_body ? t->request_body : "");
        if (strcmp(method, "POST") != 0)
            bad |= curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    }
    bad |= curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->headers);
    bad |= curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    bad |= curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
    bad |= curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    bad |= curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
    bad |= curl_easy_setopt(e, CURLOPT_TIMEOUT, s->timeout_seconds);
    bad |= curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, s->timeout_seconds);
    /* Only the web: no file://, no redirects to other schemes. */
    bad |= curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    bad |= curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    bad |= curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, s->tls_verify ? 1L : 0L);
    bad |= curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, s->tls_verify ? 2L : 0L);
    if (s->ca_file)
        bad |= curl_easy_setopt(e, CURLOPT_CAINFO, s->ca_file);
    if (s->fresh_connection_per_request) {
        bad |= curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
        bad |= curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
    }
    if (s->auth == HTTP_AUTH_BEARER) {
        bad |= curl_easy_setopt(e, CURLOPT_HTTPAUTH, CURLAUTH_BEARER);
        bad |= curl_easy_setopt(e, CURLOPT_XOAUTH2_BEARER, s->password ? s->password : "");
    } else if (s->auth != HTTP_AUTH_NONE) {
        bad |= curl_easy_setopt(e, CURLOPT_HTTPAUTH, curl_auth_mask(s->auth));
        if (s->auth == HTTP_AUTH_NEGOTIATE) {
            bad |= curl_easy_setopt(e, CURLOPT_DEBUGFUNCTION, on_curl_debug);
            bad |= curl_easy_setopt(e, CURLOPT_DEBUGDATA, t);
            bad |= curl_easy_setopt(e, CURLOPT_VERBOSE, 1L);
        }
        bad |= curl_easy_setopt(e, CURLOPT_USERNAME, s->username ? s->username : "");
        bad |= curl_easy_setopt(e, CURLOPT_PASSWORD, s->password ? s->password : "");
    }
    return bad ? -EINVAL : 0;
}

int http_client_post(http_client *client, const char *url, const char *content_type,
                     char *body, size_t body_len, const char *const *extra_headers,
                     http_done_fn done, void *userdata)
{
    return http_client_request(client, "POST", url, content_type, body, body_len,
                               extra_headers, done, userdata);
}

/* The transfer t (its body, callbacks and userdata set) on its way: headers, options,
 * added to the multi handle. On failure t is freed. */
static int start_transfer(http_client *client, http_transfer *t, const char *method,
                          const char *url, const char *content_type, size_t body_len,
                          const char *const *extra_headers, long timeout_seconds,
                          long idle_seconds)
{
    char header[512];

    t->client = client;
    t->retry_after_ms = -1;
    t->easy = curl_easy_init();
    if (!t->easy)
        goto fail;
    /* No "Expect: 100-continue" round trip before every body. */
    t->headers = curl_slist_append(NULL, "Expect:");
    if (content_type && t->headers) {
        snprintf(header, sizeof header, "Content-Type: %s", content_type);
        t->headers = curl_slist_append(t->headers, header);
    }
    for (size_t i = 0; t->headers && extra_headers && extra_headers[i]; i++)
        t->headers = curl_slist_append(t->headers, extra_headers[i]);
    if (!t->headers)
        goto fail;
    if (configure_easy(t, method, url, &client->settings) < 0 ||
        curl_easy_setopt(t->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len) != CURLE_OK)
        goto fail;
    if (timeout_seconds > 0 &&
        curl_easy_setopt(t->easy, CURLOPT_TIMEOUT, timeout_seconds) != CURLE_OK)
        goto fail;
    /* Less than a byte a second for idle_seconds: the peer is gone. */
    if (idle_seconds > 0 &&
        (curl_easy_setopt(t->easy, CURLOPT_LOW_SPEED_LIMIT, 1L) != CURLE_OK ||
         curl_easy_setopt(t->easy, CURLOPT_LOW_SPEED_TIME, idle_seconds) != CURLE_OK))
        goto fail;
    if (curl_multi_add_handle(client->multi, t->easy) != CURLM_OK)
        goto fail;
    t->next = client->transfers;
    if (t->next)
        t->next->prev = t;
    client->transfers = t;
    return 0;
fail:
    transfer_free(t);
    return -ENOMEM;
}

int http_client_request(http_client *client, const char *method, const char *url,
                        const char *content_type, char *body, size_t body_len,
                        const char *const *extra_headers, http_done_fn done, void *userdata)
{
    http_transfer *t = calloc(1, sizeof *t);
    if (!t) {
        free(body);
        return -ENOMEM;
    }
    t->request_body = body;
    t->done = done;
    t->userdata = userdata;
    return start_transfer(client, t, method, url, content_type, body_len, extra_headers, 0, 0);
}

int http_client_stream(http_client *client, const http_stream_request *request,
                       http_request **handle)
{
    http_transfer *t = calloc(1, sizeof *t);
    if (!t) {
        free(request->body);
        return -ENOMEM;
    }
    t->request_body = request->body;
    t->done = request->done;
    t->userdata = request->userdata;
    t->header = request->header;
    t->data = request->data;
    int r = start_transfer(client, t, request->method, request->url, request->content_type,
                           request->body_len, request->extra_headers,
                           request->timeout_seconds, request->idle_seconds);
    if (r == 0)
        *handle = t;
    return r;
}

void http_client_cancel(http_client *client, http_request *handle)
{
    if (handle->in_callback) {
        handle->cancelled = true;   /* the callback's return ends the transfer */
        return;
    }
    curl_multi_remove_handle(client->multi, handle->easy);
    unlink_transfer(client, handle);
    transfer_free(handle);
}
