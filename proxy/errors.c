/* SPDX-License-Identifier: Apache-2.0 */
/* errors: the registry error format (distribution spec, "Error Codes"), used for every
 * error the proxy answers itself. */
#include "proxy.h"

#include <jansson.h>
#include <string.h>

char *rp_error_body(const char *code, const char *message, const char *detail)
{
    json_t *err = json_pack("{s:s, s:s}", "code", code, "message", message);
    if (detail) {
        /* A detail given as JSON is embedded as such; anything else becomes a string. */
        json_t *d = json_loads(detail, JSON_DECODE_ANY, NULL);
        json_object_set_new(err, "detail", d ? d : json_string(detail));
    }
    json_t *root = json_pack("{s:[o]}", "errors", err);
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!s) {
        rp_error("errors: cannot encode an error body");
        abort();
    }
    return s;
}

const char *rp_error_code_for_status(int status, enum rp_route_kind kind)
{
    switch (status) {
    case 400: return "UNSUPPORTED";
    case 401: return "UNAUTHORIZED";
    case 403: return "DENIED";
    case 404:
        return kind == RP_ROUTE_BLOB       ? "BLOB_UNKNOWN"
               : kind == RP_ROUTE_MANIFEST ? "MANIFEST_UNKNOWN"
                                           : "NAME_UNKNOWN";
    case 405: return "UNSUPPORTED";
    case 429: return "TOOMANYREQUESTS";
    case 503: return "UNAVAILABLE";
    default: return "UNKNOWN";
    }
}
