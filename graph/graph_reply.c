/* graph reply — Microsoft Graph's answers to the back end's calls, each classified
 * on its own into a delivery_result (see delivery.h): success with the item or the
 * items found, not found, throttled (per mailbox or for the service), a refused
 * token, or a transient or permanent failure. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/log.h"
#include "graph/graph_backend.h"

/* ---- answers ------------------------------------------------------------------ */

static const char *op_name(const graph_call *call)
{
    static const char *const names[] = {"lookup", "create", "update", "delete",
                                        "To Do list lookup"};
    return names[call->op];
}

static void on_success(graph_call *call, const graph_reply *rep, const char *code)
{
    graph_backend *b = call->b;
    delivery_result r = {.outcome = DELIVERY_OK, .retry_after_ms = -1, .code = code,
                         .reason = "ok"};
    char err[256], reason[512];
    char *id = NULL, *change_key = NULL, *task_ref = NULL;
    graph_id_list list = {0};
    outlook_item_ref *found = NULL;
    char **task_refs = NULL;

    switch (call->op) {
    case OP_REMOVE:
        break;
    case OP_LIST:
        if (graph_json_parse_collection(rep->body, rep->body_len, &list, err, sizeof err) < 0) {
            snprintf(reason, sizeof reason, "Microsoft Graph sent an unusable answer to the To Do "
                     "list lookup of %s: %s", call->box->address, err);
            graph_call_fail(call, DELIVERY_TRANSIENT, code, reason, -1);
            return;
        }
        if (list.n == 0) {
            snprintf(reason, sizeof reason, "mailbox %s has no default Microsoft To Do list "
                     "(yet); will look again", call->box->address);
            graph_id_list_clear(&list);
            graph_call_fail(call, DELIVERY_TRANSIENT, "NoDefaultList", reason, -1);
            return;
        }
        id = graph_url_escape(list.ids[0], false);
        graph_id_list_clear(&list);
        if (!id) {
            graph_call_fail(call, DELIVERY_TRANSIENT, "ENOMEM", "out of memory", -1);
            return;
        }
        graph_mailbox_list_resolved(call->box, id, NULL);
        free(id);
        graph_call_free(call);
        return;
    case OP_FIND:
        if (graph_json_parse_collection(rep->body, rep->body_len, &list, err, sizeof err) < 0)
            goto unusable;
        if (list.n > 0) {
            found = calloc(list.n, sizeof *found);
            task_refs = calloc(list.n, sizeof *task_refs);
            if (!found || !task_refs)
                goto oom;
        }
        for (size_t i = 0; i < list.n; i++) {
            if (call->kind == OUTLOOK_TASK) {
                char *task = graph_url_escape(list.ids[i], false);
                if (!task || asprintf(&task_refs[i], "%s/%s", call->list_id, task) < 0) {
                    free(task);
                    task_refs[i] = NULL;
                    goto oom;
                }
                free(task);
                found[i].item_id = task_refs[i];
            } else {
                found[i].item_id = list.ids[i];
                found[i].change_key = list.change_keys[i];
            }
        }
        r.found = found;
        r.n_found = list.n;
        break;
    case OP_CREATE:
    case OP_UPDATE:
        if (graph_json_parse_entity(rep->body, rep->body_len, &id, &change_key, err,
                                    sizeof err) < 0) {
            if (call->op == OP_CREATE)
                goto unusable;
            /* An update names the item we sent it to, whatever came back. */
            r.item.item_id = call->ref_id;
            break;
        }
        if (call->kind == OUTLOOK_TASK) {
            char *task = graph_url_escape(id, false);
            if (!task || asprintf(&task_ref, "%s/%s", call->list_id, task) < 0) {
                free(task);
                task_ref = NULL;
                goto oom;
            }
            free(task);
            r.item.item_id = task_ref;
        } else {
            r.item.item_id = id;
        }
        /* What reading back tells our own writes by (a task's: its etag). */
        r.item.change_key = change_key;
        break;
    }
    graph_call_finish(call, &r);
    goto out;
unusable:
    snprintf(reason, sizeof reason, "Microsoft Graph sent an unusable answer to the %s in %s "
             "(HTTP %ld): %s", op_name(call), call->box->address, rep->status, err);
    graph_call_fail(call, DELIVERY_TRANSIENT, code, reason, -1);
    goto out;
oom:
    graph_call_fail(call, DELIVERY_TRANSIENT, "ENOMEM", "out of memory", -1);
out:
    for (size_t i = 0; task_refs && i < list.n; i++)
        free(task_refs[i]);
    free(task_refs);
    free(found);
    graph_id_list_clear(&list);
    free(id);
    free(change_key);
    free(task_ref);
    (void)b;
}

void graph_reply_handle(graph_call *call, const graph_reply *rep)
{
    graph_backend *b = call->b;
    graph_mailbox *box = call->box;
    char reason[1024], code[80], gcode[64], message[256];
    delivery_outcome outcome;

    if (!rep->transfer_ok) {
        snprintf(reason, sizeof reason, "cannot reach Microsoft Graph at %s: %s", b->base_url,
                 rep->error ? rep->error : "transfer failed");
        graph_call_fail_maybe_done(call, DELIVERY_TRANSIENT,
                                   rep->failure ? rep->failure : "connection",
                                   reason, rep->retry_after_ms,
                                   delivery_outcome_unknown(false, rep->failure, 0));
        return;
    }
    snprintf(code, sizeof code, "HTTP %ld", rep->status);
    if (delivery_outcome_unknown(true, NULL, rep->status)) {
        snprintf(reason, sizeof reason, "a gateway in front of Microsoft Graph gave up waiting "
                 "(HTTP %ld)", rep->status);
        graph_call_fail_maybe_done(call, DELIVERY_TRANSIENT, code, reason, rep->retry_after_ms,
                                   true);
        return;
    }
    gcode[0] = message[0] = '\0';
    if (rep->status >= 400 &&
        graph_json_parse_error(rep->body, rep->body_len, gcode, sizeof gcode, message,
                               sizeof message) == 0 && gcode[0])
        snprintf(code, sizeof code, "%s", gcode);
    if (rep->status >= 200 && rep->status < 300) {
        on_success(call, rep, code);
        return;
    }
    if (rep->status == 401) {
        if (!call->auth_retried) {
            /* The token expired early or was revoked: a fresh one, this call once more. */
            call->auth_retried = true;
            oauth2_invalidate(b->oauth, call->token_generation);
            log_debug("Microsoft Graph refused the access token (HTTP 401); fetching a new one");
            graph_queue_call(b, call);
            return;
        }
        snprintf(reason, sizeof reason, "Microsoft Graph refused a freshly fetched access token "
                 "(HTTP 401%s%s%s%s): check the app registration's application permissions "
                 "(Calendars.ReadWrite, Tasks.ReadWrite.All), admin consent and [oauth2] scope",
                 gcode[0] ? " " : "", gcode, message[0] ? ": " : "", message);
        graph_call_fail_result(call, (delivery_result){.outcome = DELIVERY_TRANSIENT, .code = code,
                                                       .reason = reason,
                                                       .retry_after_ms = rep->retry_after_ms,
                                                       .auth_failed = true});
        return;
    }
    if ((rep->status == 429 || rep->status == 503) && rep->retry_after_ms > 0) {
        /* Throttling is per mailbox and application: hold back the mailbox's calls,
         * and the worker waits it out without spending an attempt (as for EWS). */
        uint64_t until = graph_now_usec(b) + (uint64_t)rep->retry_after_ms * 1000;
        if (until > box->throttled_until)
            box->throttled_until = until;
        snprintf(reason, sizeof reason, "Microsoft Graph throttles %s (HTTP %ld%s%s%s); "
                 "waiting %" PRId64 " ms (Retry-After)",
                 rep->status == 429 ? box->address : "the service", rep->status,
                 gcode[0] ? " " : "", gcode, message[0] ? ": " : "", rep->retry_after_ms);
        graph_call_fail_result(call, (delivery_result){
                       .outcome = DELIVERY_TRANSIENT, .code = code, .reason = reason,
                       .retry_after_ms = rep->retry_after_ms,
                       .throttle = rep->status == 429 ? DELIVERY_THROTTLE_MAILBOX
                                                      : DELIVERY_THROTTLE_SERVER});
        return;
    }
    if (rep->status == 404) {
        switch (call->op) {
        case OP_UPDATE:
        case OP_REMOVE:
            snprintf(reason, sizeof reason, "the %s is gone from %s (HTTP 404 %s)",
                     outlook_item_kind_name(call->kind), box->address, code);
            graph_call_fail(call, DELIVERY_NOT_FOUND, code, reason, -1);
            return;
        case OP_FIND:
        case OP_CREATE:
            if (call->kind == OUTLOOK_TASK) {
                /* The list itself went away: look it up again next time. */
                if (box->list_id && call->list_id && strcmp(box->list_id, call->list_id) == 0) {
                    free(box->list_id);
                    box->list_id = NULL;
                }
                snprintf(reason, sizeof reason, "the default To Do list of %s is gone (HTTP "
                         "404 %s); it will be looked up again", box->address, code);
                graph_call_fail(call, DELIVERY_TRANSIENT, code, reason, -1);
                return;
            }
            break;
        case OP_LIST:
            break;
        }
        snprintf(reason, sizeof reason, "Microsoft Graph knows no mailbox %s (HTTP 404 %s%s%s): "
                 "check the employee's email address", box->address, code,
                 message[0] ? ": " : "", message);
        graph_call_fail(call, DELIVERY_PERMANENT, code, reason, -1);
        return;
    }
    if (rep->status == 400 || rep->status == 403 || rep->status == 405 || rep->status == 501)
        outcome = DELIVERY_PERMANENT;   /* asking again will not help */
    else
        outcome = DELIVERY_TRANSIENT;   /* 408, 409, 412, 423, 429, 5xx, ... */
    snprintf(reason, sizeof reason, "Microsoft Graph answered HTTP %ld%s%s%s%s to the %s in %s%s",
             rep->status, gcode[0] ? " " : "", gcode, message[0] ? ": " : "", message,
             op_name(call), box->address,
             rep->status == 403 ? " (is the mailbox within the app's access policy?)" : "");
    graph_call_fail(call, outcome, code, reason, rep->retry_after_ms);
}
