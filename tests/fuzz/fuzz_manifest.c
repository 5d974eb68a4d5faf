/* SPDX-License-Identifier: Apache-2.0 */
/* libFuzzer target: manifests and indexes through rp_manifest_refs, the parser the mirror,
 * the pins walk and export use to find an image's children, config and layers. Every
 * reference it returns must carry a valid digest and a non-negative size. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/offline.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
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
