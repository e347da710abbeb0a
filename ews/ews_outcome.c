/* ews outcome — what Exchange's answer to a post means for each of its calls: the
 * HTTP status (401: a fresh token, or the password file read again), a SOAP fault,
 * or one response message per item, each classified on its own (ews_errors) into a
 * delivery_result. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ews/ews_backend.h"
#include "ews/ews_errors.h"
#include "ews/ews_response.h"

static void set_result(delivery_result *r, delivery_outcome outcome, const char *code,
                       const char *reason)
{
    r->outcome = outcome;
    r->code = code;
    r->reason = reason;
}

void ews_refused_credentials_reason(const ews_backend *b, const http_response *hr,
                                    bool password_changed, char *reason, size_t size)
{
    if (hr->auth_detail)
        snprintf(reason, size, "Exchange refused the credentials (HTTP 401): Kerberos gave "
                 "no ticket (%s): check the keytab or ticket cache (KRB5_CLIENT_KTNAME, "
                 "KRB5CCNAME), the password it was made from, and that the host in "
                 "[exchange] url has an HTTP/ SPN", hr->auth_detail);
    else if (b->http.auth == HTTP_AUTH_NEGOTIATE)
        snprintf(reason, size, "Exchange refused the credentials (HTTP 401): it did not "
                 "accept the Kerberos ticket: check that the clocks of this host, the KDC "
                 "and Exchange agree (within 5 minutes; then kdestroy the ticket cache) "
                 "and that Exchange's HTTP/ SPN keytab is current");
    else
        snprintf(reason, size, "Exchange refused the credentials (HTTP 401)%s: check "
                 "[exchange] username, auth and the password file",
                 password_changed ? "; the password file changed, retrying with it" : "");
}

static delivery_outcome outcome_for_code(ews_code code)
{
    if (code == EWS_ERROR_ITEM_NOT_FOUND)
        return DELIVERY_NOT_FOUND;
    switch (ews_code_disposition(code)) {
    case EWS_DISPOSITION_OK: return DELIVERY_OK;
    case EWS_DISPOSITION_PERMANENT: return DELIVERY_PERMANENT;
    case EWS_DISPOSITION_TRANSIENT: break;
    }
    return DELIVERY_TRANSIENT;
}

/* What one response message says about the call it answers. */
static void classify_message(const ews_response_message *m, ews_call_kind kind,
                             delivery_result *r, char *reason, size_t reason_size, char *code,
                             size_t code_size, outlook_item_ref **found)
{
    snprintf(code, code_size, "%s", m->response_code);
    if (m->response_class == EWS_CLASS_ERROR) {
        snprintf(reason, reason_size, "Exchange answered %s: %s", m->response_code,
                 m->message_text ? m->message_text : "(no text)");
        set_result(r, outcome_for_code(m->code), code, reason);
        if (r->outcome == DELIVERY_OK)
            r->outcome = DELIVERY_TRANSIENT;
        if (m->back_off_ms > r->retry_after_ms)
            r->retry_after_ms = m->back_off_ms;
        if (m->code == EWS_ERROR_SERVER_BUSY)
            r->throttle = DELIVERY_THROTTLE_MAILBOX;
        return;
    }
    set_result(r, DELIVERY_OK, code, "ok");
    if (kind == CALL_FIND && m->n_items > 0) {
        *found = calloc(m->n_items, sizeof **found);
        if (!*found) {
            set_result(r, DELIVERY_TRANSIENT, "ENOMEM", "out of memory");
            return;
        }
        for (size_t i = 0; i < m->n_items; i++) {
            (*found)[i].item_id = m->items[i].item_id;
            (*found)[i].change_key = m->items[i].change_key;
        }
        r->found = *found;
        r->n_found = m->n_items;
    } else if (m->n_items > 0) {
        r->item.item_id = m->items[0].item_id;
        r->item.change_key = m->items[0].change_key;
    } else if (kind == CALL_CREATE) {
        set_result(r, DELIVERY_TRANSIENT, code,
                   "Exchange reported success but returned no item id");
    }
}

/* Tells every call of the post its outcome, frees the post, lets the next one go. */
void ews_post_finish(ews_post *post, const delivery_result *common,
                     const ews_response *parsed)
{
    ews_backend *b = post->backend;

    b->in_flight--;
    for (size_t i = 0; i < post->n_calls; i++) {
        ews_call *call = post->calls[i];
        delivery_result r = common ? *common : (delivery_result){.retry_after_ms = -1};
        outlook_item_ref *found = NULL;
        char reason[1024], code[64];
        if (!common) {
            /* Response messages come in the order of the items sent. */
            if (i < parsed->n_messages) {
                classify_message(&parsed->messages[i], call->kind, &r, reason, sizeof reason,
                                 code, sizeof code, &found);
            } else {
                set_result(&r, DELIVERY_TRANSIENT, "NoResponseMessage",
                           "Exchange sent fewer response messages than items");
            }
        }
        call->done(&r, call->userdata);
        free(found);
    }
    ews_post_free(post);
    ews_queue_dispatch(b);
}

void ews_post_on_answer(const http_response *hr, void *userdata)
{
    ews_post *post = userdata;
    ews_backend *b = post->backend;
    delivery_result r = {.retry_after_ms = hr->retry_after_ms};
    ews_response *parsed = NULL;
    char reason[1024], code[64], parse_error[256];

    if (!hr->transfer_ok) {
        if (hr->too_large)
            snprintf(reason, sizeof reason, "Exchange's answer from %s was larger than %u "
                     "bytes and was dropped", b->url, EWS_RESPONSE_MAX_BYTES);
        else
            snprintf(reason, sizeof reason, "cannot reach Exchange at %s: %s", b->url,
                     hr->error);
        set_result(&r, DELIVERY_TRANSIENT, hr->failure ? hr->failure : "connection", reason);
        r.outcome_unknown = delivery_outcome_unknown(false, hr->failure, 0);
        goto common;
    }
    snprintf(code, sizeof code, "HTTP %ld", hr->status);
    r.outcome_unknown = delivery_outcome_unknown(true, NULL, hr->status);
    if (hr->status == 401 && b->use_oauth) {
        if (!post->token_retried) {
            /* The token was refused (revoked, or expired early): a fresh one, once. */
            post->token_retried = true;
            oauth2_invalidate(b->oauth, post->token_generation);
            if (oauth2_with_token(b->oauth, ews_post_on_token, post) == 0)
                return;
        }
        snprintf(reason, sizeof reason, "Exchange refused the OAuth2 token (HTTP 401) twice: "
                 "check the app registration's EWS permission (full_access_as_app) and "
                 "[oauth2] scope");
        set_result(&r, DELIVERY_TRANSIENT, code, reason);
        r.auth_failed = true;
        goto common;
    }
    if (hr->status == 401) {
        /* The password may have been changed in its file since: read it again and
         * retry. Refused again with the same password: retrying cannot help. */
        bool changed = ews_backend_reload_password(b);
        ews_refused_credentials_reason(b, hr, changed, reason, sizeof reason);
        set_result(&r, DELIVERY_TRANSIENT, code, reason);
        r.auth_failed = true;   /* a KDC hiccup or a lock-out ends by itself: retry */
        goto common;
    }
    if (hr->status == 429 || hr->status == 503)
        r.throttle = DELIVERY_THROTTLE_SERVER;
    if (hr->status != 200 && hr->status != 500) {
        if (hr->status == 403) {
            snprintf(reason, sizeof reason, "Exchange refused the service account (HTTP 403): "
                     "check that [exchange] username may use EWS");
            r.auth_failed = true;
        } else {
            snprintf(reason, sizeof reason, "Exchange answered HTTP %ld", hr->status);
        }
        set_result(&r, DELIVERY_TRANSIENT, code, reason);
        goto common;
    }
    if (ews_response_parse(hr->body, hr->body_len, &parsed, parse_error, sizeof parse_error) < 0) {
        snprintf(reason, sizeof reason, "Exchange sent an unusable answer (HTTP %ld): %s",
                 hr->status, parse_error);
        set_result(&r, DELIVERY_TRANSIENT, code, reason);
        r.outcome_unknown = hr->status == 200;   /* it may have done what we asked */
        goto common;
    }
    if (parsed->fault_code) {
        snprintf(code, sizeof code, "%s", parsed->fault_code);
        snprintf(reason, sizeof reason, "Exchange fault %s: %s", parsed->fault_code,
                 parsed->fault_string ? parsed->fault_string : "(no text)");
        set_result(&r, outcome_for_code(parsed->fault_ews_code), code, reason);
        if (r.outcome == DELIVERY_OK)
            r.outcome = DELIVERY_TRANSIENT;   /* a fault is never a success */
        if (parsed->fault_back_off_ms > r.retry_after_ms)
            r.retry_after_ms = parsed->fault_back_off_ms;
        if (parsed->fault_ews_code == EWS_ERROR_SERVER_BUSY)
            r.throttle = DELIVERY_THROTTLE_MAILBOX;
        goto common;
    }
    if (parsed->n_messages == 0) {
        snprintf(reason, sizeof reason, "Exchange answered without a response message "
                                        "(HTTP %ld)", hr->status);
        set_result(&r, DELIVERY_TRANSIENT, code, reason);
        goto common;
    }
    /* Each item its own verdict: one bad item does not fail its batch-mates. */
    ews_post_finish(post, NULL, parsed);
    ews_response_free(parsed);
    return;
common:
    ews_post_finish(post, &r, NULL);
    ews_response_free(parsed);
}
