/* EWS back end internals — shared by the files of the EWS back end's adapter only:
 * delivery_ews.c (the operations, configuration and life; a sync's answer),
 * ews_queue.c (calls waiting, posts, sending), ews_outcome.c (answers → delivery
 * results). */
#ifndef FOLLOWUPD_EWS_BACKEND_H
#define FOLLOWUPD_EWS_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/sha.h>
#include <systemd/sd-event.h>

#include "daemon/delivery.h"
#include "ews/ews_request.h"
#include "ews/ews_response.h"
#include "http/http_client.h"
#include "http/loop_timer.h"
#include "http/oauth2.h"

struct ews_backend;

typedef enum ews_call_kind {
    CALL_FIND, CALL_CREATE, CALL_UPDATE, CALL_REMOVE, CALL_PROBE, CALL_SYNC
} ews_call_kind;

struct ews_sync_page;

/* One operation the worker asked for. Creates wait in the queue as items, so that
 * those for the same mailbox and kind can share one CreateItem request. */
typedef struct ews_call {
    ews_call_kind kind;
    delivery_done_fn done;
    void *userdata;
    char *mailbox;
    const outlook_item *item;        /* create: owned by the caller until done */
    char *body;                  /* other kinds: the request, built when asked */
    size_t len;
    /* sync: done and userdata lead to ews_sync_call_done (the call itself), which
     * tells sync_done the page read from the answer, or done's result alone. */
    delivery_sync_done_fn sync_done;
    void *sync_userdata;
    outlook_item_kind sync_kind;
    struct ews_sync_page *sync_page;
    struct ews_call *next;       /* in the waiting queue */
} ews_call;

/* One HTTP request: one call, or a batch of creates. */
typedef struct ews_post {
    struct ews_backend *backend;
    ews_call **calls;
    size_t n_calls;
    bool is_create;
    char *body;                  /* kept for auth = oauth2: re-sent once after a 401 */
    size_t len;
    char anchor[512];
    uint64_t token_generation;
    bool token_retried;
    /* In the backend's list of posts on their way (sent, or waiting for a token), so
     * that freeing the backend frees the ones whose answer never came. */
    struct ews_post *prev, *next;
} ews_post;

typedef struct ews_backend {
    http_client *http_client_handle;
    http_client *create_client;  /* creates only: never over a reused connection */
    sd_event *event;
    oauth2_client *oauth;        /* auth = oauth2: bearer tokens (NULL otherwise) */
    bool use_oauth;
    char *url;
    char *server_version;
    bool impersonation;
    /* Kept to re-read the password after a 401 (it may have been rotated). */
    http_settings http;          /* owned username and ca_file; password NULL */
    char *password_path;         /* NULL: no password (negotiate) */
    unsigned char password_digest[SHA256_DIGEST_LENGTH];
    /* Requests wait here until one of max_in_flight slots is free. */
    ews_call *waiting_head, *waiting_tail;
    size_t in_flight;
    ews_post *on_their_way;      /* the in_flight posts */
    size_t max_in_flight;        /* [delivery] concurrency */
    size_t batch_size;           /* [delivery] batch_size: items per CreateItem */
    loop_timer *flush;           /* sends what a loop turn queued, batched */
    uint64_t flush_due_usec;     /* CLOCK_MONOTONIC when the flush fires; 0 = not armed */
    bool stopped;                /* nothing more goes on the wire */
} ews_backend;

/* ---- delivery_ews.c ------------------------------------------------------- */

/* Re-reads the password file after a 401; true when the password changed. */
bool ews_backend_reload_password(ews_backend *b);
ews_request_options ews_backend_options(const ews_backend *b, const char *mailbox);
/* A sync call's done: tells its sync_done. */
void ews_sync_call_done(const delivery_result *result, void *userdata);
/* http_client's callback for a sync post: a SyncFolderItems answer is read here,
 * everything else (transfer failures, HTTP errors, 401) as for every post. */
void ews_sync_on_answer(const http_response *hr, void *userdata);

/* ---- ews_queue.c ---------------------------------------------------------- */

void ews_call_free(ews_call *call);
/* Frees a post and its calls without answering them; unlinks it from on_their_way. */
void ews_post_free(ews_post *post);
/* Queues a call. It leaves on a later loop turn, so that creates queued in this one
 * for the same mailbox travel together. Takes body (NULL for a create). */
int ews_queue_call(ews_backend *b, ews_call_kind kind, const char *mailbox, char *body,
                   size_t len, const outlook_item *item, delivery_done_fn done, void *userdata);
/* Queues a SyncFolderItems request of a folder of kind (takes body). It travels alone,
 * never batched with writes. */
int ews_queue_sync(ews_backend *b, const char *mailbox, outlook_item_kind kind, char *body,
                   size_t len, delivery_sync_done_fn done, void *userdata);
/* Sends waiting requests while fewer than max_in_flight are on their way. */
void ews_queue_dispatch(ews_backend *b);
void ews_queue_on_flush(void *userdata);
/* oauth2_with_token's callback: sends the post with the token, or fails it. */
void ews_post_on_token(const char *token, const char *error, void *userdata);

/* ---- ews_outcome.c -------------------------------------------------------- */

/* Tells every call of the post its outcome, frees the post, lets the next one go:
 * common for all, else each call its own response message of parsed. */
void ews_post_finish(ews_post *post, const delivery_result *common,
                     const ews_response *parsed);
/* http_client's callback for a post. */
void ews_post_on_answer(const http_response *hr, void *userdata);
/* Why Exchange's 401 (with a password or Kerberos, not OAuth2) stands, into reason:
 * Kerberos's own words when GSSAPI gave no ticket, else what to check for the auth
 * configured. password_changed: the password file was read again and differs. */
void ews_refused_credentials_reason(const ews_backend *b, const http_response *hr,
                                    bool password_changed, char *reason, size_t size);

#endif
