/* SPDX-License-Identifier: Apache-2.0 */
/* accesslog: one line per request, as text (key=value) or a JSON object, with a request
 * id that is also sent to the client as X-Request-Id. Paths are validated request targets
 * or '-'; credentials never reach this code. */
#include "proxy.h"

#include <jansson.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void rp_request_id(char *buf, size_t len)
{
    /* A random per-process prefix keeps ids unique across restarts and replicas. */
    static unsigned prefix;
    static unsigned long long seq;
    if (!prefix && RAND_bytes((unsigned char *)&prefix, sizeof(prefix)) != 1)
        prefix = (unsigned)rp_now_ms();
    snprintf(buf, len, "%08x-%llu", prefix, ++seq);
}

void rp_access_log(const struct rp_access *a)
{
    if (!rp_log_enabled(RP_LOG_INFO))
        return;
    if (rp_log_is_json()) {
        char ts[40];
        rp_log_time(ts, sizeof(ts));
        json_t *o = json_pack(
            "{s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:I, s:I, s:s, s:s, s:i, s:s}", "ts", ts, "level",
            "info", "msg", "access", "id", a->id, "method", a->method, "path", a->path, "status",
            a->status, "bytes", (json_int_t)a->bytes, "ms", (json_int_t)a->ms, "registry",
            a->registry, "cache", a->cache, "upstream", a->upstream, "peer", a->peer);
        if (a->aborted)
            json_object_set_new(o, "aborted", json_string(a->aborted));
        if (a->reason)
            json_object_set_new(o, "reason", json_string(a->reason));
        char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (s) {
            rp_log_line(s, strlen(s));
            free(s);
        }
        return;
    }
    rp_info("access id=%s method=%s path=%s status=%d bytes=%llu ms=%lld registry=%s cache=%s "
            "upstream=%d peer=%s%s%s%s%s%s",
            a->id, a->method, a->path, a->status, (unsigned long long)a->bytes, (long long)a->ms,
            a->registry, a->cache, a->upstream, a->peer, a->aborted ? " aborted=" : "",
            a->aborted ? a->aborted : "", a->reason ? " reason=\"" : "", a->reason ? a->reason : "",
            a->reason ? "\"" : "");
}
