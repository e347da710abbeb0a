/* oauth2 — access tokens from the OAuth2 client-credentials flow ([oauth2] token_url,
 * client_id, client_secret_file, scope), fetched asynchronously on the event loop and
 * cached until shortly before they expire. Callers that ask while a token is being
 * fetched wait for that one fetch. Used by the Graph back end; meant for EWS with
 * auth = oauth2 too. Neither the secret nor a token is ever logged. */
#ifndef FOLLOWUPD_OAUTH2_H
#define FOLLOWUPD_OAUTH2_H

#include <stdint.h>
#include <systemd/sd-event.h>

#include "daemon/config.h"

typedef struct oauth2_client oauth2_client;

/* token: the access token (valid during the call), or NULL with error set to a
 * readable reason (never containing the secret). */
typedef void (*oauth2_token_fn)(const char *token, const char *error, void *userdata);

/* The client has its own HTTP connection to the token endpoint. */
oauth2_client *oauth2_client_new(sd_event *event) __attribute__((warn_unused_result));
void oauth2_client_free(oauth2_client *client);   /* waiting callbacks are not called */

/* Takes [oauth2] and the TLS/timeout keys of [exchange] from cfg and reads the client
 * secret file. A change of endpoint, client or scope drops the cached token. Returns 0,
 * or -errno with the reason in err (then the previous settings stay). */
int oauth2_configure(oauth2_client *client, const config *cfg, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* The cached token if it is still good, else NULL; *generation (may be NULL) gets a
 * number that names this token for oauth2_invalidate. */
const char *oauth2_cached_token(oauth2_client *client, uint64_t *generation);

/* Calls fn once with a token (the cached one, or a fresh one), always from the event
 * loop, never from inside this call. Returns 0 or -errno. */
int oauth2_with_token(oauth2_client *client, oauth2_token_fn fn, void *userdata)
    __attribute__((warn_unused_result));

/* The server refused the token named by generation (HTTP 401): forget it so the next
 * request fetches a new one. A stale generation (the token was renewed since) is
 * ignored; 0 forgets whatever is cached. */
void oauth2_invalidate(oauth2_client *client, uint64_t generation);

#endif
