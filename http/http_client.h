/* http_client — HTTP POSTs through libcurl's multi interface, driven by an sd_event
 * loop: many requests in flight, no thread per request, no blocking call.
 * Connections are kept alive and reused; TLS is verified unless told otherwise. */
#ifndef FOLLOWUPD_HTTP_CLIENT_H
#define FOLLOWUPD_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <systemd/sd-event.h>

typedef struct http_client http_client;

typedef enum http_auth {
    HTTP_AUTH_NONE,
    HTTP_AUTH_BASIC,
    HTTP_AUTH_NTLM,
    HTTP_AUTH_NEGOTIATE,
    HTTP_AUTH_BEARER,
} http_auth;

typedef struct http_settings {
    http_auth auth;
    const char *username;
    const char *password;        /* or the bearer token for HTTP_AUTH_BEARER */
    bool tls_verify;
    const char *ca_file;         /* NULL: the system's bundle */
    long timeout_seconds;
    size_t max_response_bytes;
    /* A new connection per request, closed afterwards. For requests that must not
     * be sent twice: on a reused keep-alive connection that the server closed,
     * libcurl silently re-sends the request, although the server may have acted. */
    bool fresh_connection_per_request;
} http_settings;

typedef struct http_response {
    bool transfer_ok;            /* false: no complete HTTP answer (see error) */
    const char *error;           /* what went wrong in the transfer, NULL if ok */
    bool too_large;
    const char *failure;         /* when !transfer_ok: "dns", "connect", "tls", "timeout",
                                    "too-large" or "transfer" */
    long status;                 /* HTTP status, 0 when none arrived */
    const char *body;            /* NUL-terminated */
    size_t body_len;
    int64_t retry_after_ms;      /* Retry-After header, -1 when absent */
    /* auth = negotiate: why GSSAPI made no token, as libcurl told it ("gss_init_sec_context()
     * failed: ..."), one line; NULL when it did not fail. Says which of no ticket or
     * keytab, a refused password or an unknown SPN a 401 stands for. */
    const char *auth_detail;
} http_response;

typedef void (*http_done_fn)(const http_response *response, void *userdata);

/* Once per process, before any other thread exists (libcurl's global state). */
void http_global_init(void);
void http_global_cleanup(void);

http_client *http_client_new(sd_event *event) __attribute__((warn_unused_result));
void http_client_free(http_client *client);   /* aborts in-flight requests silently */

/* Copies settings (strings included). Applies to requests started afterwards. */
int http_client_configure(http_client *client, const http_settings *settings)
    __attribute__((warn_unused_result));

/* Starts a request. method: "GET", "POST", "PATCH", "DELETE", ... Takes ownership
 * of body (malloc'd, may be NULL with body_len 0). content_type may be NULL when
 * there is no body. extra_headers: NULL-terminated "Name: value" list, copied.
 * done is called exactly once, from the event loop, unless the client is freed
 * first. Returns 0 or -errno. */
int http_client_request(http_client *client, const char *method, const char *url,
                        const char *content_type, char *body, size_t body_len,
                        const char *const *extra_headers, http_done_fn done, void *userdata)
    __attribute__((warn_unused_result));

/* http_client_request with "POST". */
int http_client_post(http_client *client, const char *url, const char *content_type,
                     char *body, size_t body_len, const char *const *extra_headers,
                     http_done_fn done, void *userdata)
    __attribute__((warn_unused_result));

/* ---- streaming ----------------------------------------------------------------
 * A request whose answer is read while it arrives (EWS GetStreamingEvents: one long
 * chunked body) and that the caller can end at any time. */
typedef struct http_transfer http_request;

typedef struct http_stream_request {
    const char *method;             /* "POST", "GET", ... */
    const char *url;
    const char *content_type;       /* NULL when there is no body */
    char *body;                     /* taken, as by http_client_request */
    size_t body_len;
    const char *const *extra_headers;
    long timeout_seconds;           /* the whole exchange; 0: the client's timeout */
    long idle_seconds;              /* ends the transfer when nothing arrives this long
                                       ("timeout"); 0: no limit */
    /* Each header line of the answer, status lines included ("HTTP/1.1 200 OK"),
     * without its line break; NULL: not wanted. */
    void (*header)(const char *line, size_t len, void *userdata);
    /* Each block of the body as it arrives (any size, split anywhere); false ends the
     * transfer, which done then reports as failed ("transfer"). */
    bool (*data)(const char *block, size_t len, void *userdata);
    /* Once, at the end, from the event loop; the body it sees is empty. */
    http_done_fn done;
    void *userdata;
} http_stream_request;

/* Starts a streaming request; *handle names it until done is called. No size limit
 * applies (the data callback bounds what it keeps). The callbacks are called from
 * inside libcurl: they must not start or cancel other requests of this client.
 * Returns 0 or -errno (then done is never called). */
int http_client_stream(http_client *client, const http_stream_request *request,
                       http_request **handle)
    __attribute__((warn_unused_result));

/* Ends a streaming request without calling its done. Also from within its own header
 * or data callback, where it takes effect when the callback returns. */
void http_client_cancel(http_client *client, http_request *handle);

/* A Retry-After value (RFC 9110 10.2.3) as milliseconds to wait from now: delay-seconds,
 * or an HTTP-date (IMF-fixdate and the obsolete RFC 850 and asctime forms), a date
 * already past being 0. -1 for NULL, anything else, and waits of a week or more, which
 * no server means. The one parser for HTTP headers and for Graph $batch members. */
int64_t http_retry_after_ms(const char *value, time_t now);

#endif
