/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer target: bytes as a bundle stream through rp_bundle_read, the verifying reader
 * `regproxy import` runs before it touches a cache. Whatever the input, it must end in
 * success or a one-line error, within its caps, without leaks; a sink checks that records
 * are reported only in the metadata's order and sizes. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/offline.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct mem {
    const uint8_t *p;
    size_t len, pos;
};

static long mem_read(void *arg, void *buf, size_t n, const char **why)
{
    (void)why;
    struct mem *m = arg;
    size_t k = m->len - m->pos < n ? m->len - m->pos : n;
    /* Short reads, as pipes and part boundaries give them. */
    if (k > 7 && (m->pos & 1))
        k = k / 2;
    memcpy(buf, m->p + m->pos, k);
    m->pos += k;
    return (long)k;
}

struct seen {
    uint64_t blob_left;
    bool in_blob;
};

static int blob_begin(void *arg, const char *digest, uint64_t size, char *err, size_t errlen)
{
    (void)digest;
    (void)err;
    (void)errlen;
    struct seen *s = arg;
    if (s->in_blob)
        abort();
    s->in_blob = true;
    s->blob_left = size;
    return 0;
}

static int blob_data(void *arg, const void *p, size_t n, char *err, size_t errlen)
{
    (void)p;
    (void)err;
    (void)errlen;
    struct seen *s = arg;
    if (!s->in_blob || n > s->blob_left)
        abort();
    s->blob_left -= n;
    return 0;
}

static int blob_end(void *arg, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    struct seen *s = arg;
    if (!s->in_blob || s->blob_left)
        abort();
    s->in_blob = false;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct mem m = {.p = data, .len = size};
    struct rp_bundle_src src = {.read = mem_read, .arg = &m};
    struct seen s = {0};
    const struct rp_bundle_sink sink = {
        .blob_begin = blob_begin, .blob_data = blob_data, .blob_end = blob_end};
    struct rp_bundle_meta *meta = NULL;
    char err[1024];
    int rc = rp_bundle_read(&src, 0, &sink, &s, &meta, err, sizeof(err));
    if (rc == 0 && (!meta || s.in_blob))
        abort();
    if (rc != 0 && (meta || !err[0] || !memchr(err, '\0', sizeof(err))))
        abort();
    rp_bundle_meta_free(meta);
    return 0;
}
