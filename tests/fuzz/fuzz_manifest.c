/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer target: manifests and indexes through rp_manifest_refs, the parser the mirror,
 * the pins walk and export use to find an image's children, config and layers. Every
 * reference it returns must carry a valid digest and a non-negative size. The same bytes go
 * through rp_manifest_own_type, the type cached for an upstream's manifest: none, or one
 * that can be a header value. The input is also a client's Accept list for
 * rp_accept_names and rp_manifest_tag_canonical, which must agree with each other, and a
 * signed schema 1 manifest for rp_manifest_schema1_digest, which must give a valid digest. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/offline.h"
#include "proxy/proxy.h"
#include "util/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void accept_list(const uint8_t *data, size_t size)
{
    char *accept = malloc(size + 1);
    if (!accept)
        return;
    memcpy(accept, data, size);
    accept[size] = '\0';
    bool lists = rp_accept_names(accept, RP_MEDIA_DOCKER_LIST);
    bool indexes = rp_accept_names(accept, RP_MEDIA_OCI_INDEX);
    if (rp_manifest_tag_canonical(accept, RP_MEDIA_DOCKER_MANIFEST) != (lists && indexes) ||
        rp_manifest_tag_canonical(accept, RP_MEDIA_OCI_MANIFEST) != (lists && indexes) ||
        !rp_manifest_tag_canonical(accept, RP_MEDIA_OCI_INDEX) ||
        rp_manifest_tag_canonical(accept, "application/vnd.docker.distribution.manifest.v1+json"))
        abort();
    free(accept);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    accept_list(data, size);
    char *own = rp_manifest_own_type((const char *)data, size);
    if (own && (strlen(own) > RP_MEDIA_TYPE_MAX || !strchr(own, '/') || !rp_header_value_safe(own)))
        abort();
    free(own);
    /* A signed schema 1 manifest's digest, of the payload its JWS header describes. */
    char d[RP_DIGEST_MAX + 1];
    if (rp_manifest_schema1_digest("sha256", (const char *)data, size, d, sizeof(d)) &&
        (strncmp(d, "sha256:", 7) != 0 || !rp_valid_digest(d, strlen(d))))
        abort();
    struct rp_manifest_refs r;
    char err[256];
    if (rp_manifest_refs((const char *)data, size, &r, err, sizeof(err)) != 0) {
        if (r.v || r.n)
            abort();
        return 0;
    }
    if (r.n > RP_MANIFEST_REFS_MAX)
        abort();
    for (size_t i = 0; i < r.n; i++) {
        const struct rp_manifest_ref *x = &r.v[i];
        if (!rp_valid_digest(x->digest, strlen(x->digest)) || x->size < 0 ||
            (x->kind == RP_REF_CHILD) != r.is_index)
            abort();
    }
    rp_manifest_refs_free(&r);
    return 0;
}
