/* SPDX-License-Identifier: Apache-2.0 */
/* acl: who may pull. Network allow-lists per listener, client credentials from an
 * htpasswd file (bcrypt, Apache's MD5 "$apr1$" of htpasswd -m, and the other hashes
 * libxcrypt's crypt knows), and the repository
 * allow-list per registry. Pure functions plus a small verified-credential cache. */
#ifndef RP_ACL_H
#define RP_ACL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct rp_cidr {
    int family; /* AF_INET or AF_INET6 */
    uint8_t addr[16];
    unsigned bits;
};

/* Parses "10.0.0.0/8", "192.168.1.7" (a /32), "fd00::/8", "::1". The address must have no
 * bits set beyond the prefix ("10.0.0.1/8" is refused: it is almost always a typo).
 * Returns 0 or -1. */
int rp_acl_parse_cidr(const char *s, struct rp_cidr *out);
/* Whether sa falls in any of the n networks. IPv4-mapped IPv6 addresses (::ffff:a.b.c.d)
 * match IPv4 networks. n == 0 allows everyone. */
bool rp_acl_allows(const struct rp_cidr *nets, size_t n, const struct sockaddr *sa);

/* Whether repo matches one of the fnmatch(3) patterns, such as "rhel8/ubi" or a prefix
 * followed by the shell wildcard;
 * n == 0 allows every repository. With dockerhub, an official image's "library/NAME" also
 * matches as NAME, the name Docker users write (`docker pull nginx`). */
bool rp_acl_repo_allowed(char *const *patterns, size_t n, const char *repo, bool dockerhub);

struct rp_htpasswd;
/* Loads "user:hash" lines, or nginx's "user:hash:comment" (at most 1 MiB; comments and
 * blank lines skipped, however long; any other line past 4095 bytes refused). NULL with a
 * message naming file and line on failure. */
struct rp_htpasswd *rp_htpasswd_load(const char *path, char *err, size_t errlen);
void rp_htpasswd_free(struct rp_htpasswd *h);
/* Entries that loaded but can never log in: a {SHA} hash, one locked with a leading '!' or
 * '*', or anything else crypt(3) and Apache's MD5 do not take as a hash. One line each,
 * "FILE:LINE: user 'NAME' can never log in: why", never the hash; past 50 of them, one more
 * line counts the rest. The i-th, or NULL past the last; owned by h. */
const char *rp_htpasswd_warning(const struct rp_htpasswd *h, size_t i);
/* Checking an Authorization header value ("Basic base64(user:pass)") sent by peer (the
 * client's "address:port" as the server logs it; NULL counts as one client). Hashing is
 * slow by design (bcrypt: milliseconds at htpasswd -B's cost 5, a quarter second at cost
 * 12), so it runs off the event loop (rp_htpasswd_begin), and:
 *   - successful checks are remembered (as a keyed digest, never the password), so repeated
 *     requests cost a lookup; so are recent failures;
 *   - checks of the same credentials while one is hashing wait for that one;
 *   - an unknown user, or one whose entry can never log in, costs a hash as a known one
 *     does (no timing tells them apart);
 *   - failing hashes are rationed: 4 a second in all (4 saved up), and 1 a second for each
 *     client address (2 saved up; IPv6 by /64), so that one guesser leaves most of the
 *     budget to other clients' first logins, and an address has at most 2 distinct
 *     credentials hashing at a time. A hash counts as a failure from its start (given
 *     back when it succeeds), so parallel guesses cannot all start before any is charged.
 *     Past any of these, credentials not already known good fail without a hash: first
 *     logins beyond 4 at once are refused and retried by the client. */
enum rp_htpasswd_verdict { RP_HTPASSWD_FAIL, RP_HTPASSWD_OK, RP_HTPASSWD_WAIT };
struct rp_htpasswd_job;
struct rp_htpasswd_waiter {
    /* Runs on the loop once the job it waited for has recorded its verdict: begin again
     * with the same credentials, and it answers at once. */
    void (*done)(struct rp_htpasswd_waiter *w);
    struct rp_htpasswd_job *job; /* while waiting, else NULL */
    struct rp_htpasswd_waiter *next;
};
/* OK or FAIL when that can be decided now. Else WAIT, with w added to the hashing of these
 * credentials: a new one returned in *submit, which the caller runs (rp_htpasswd_job_work
 * on any thread, then rp_htpasswd_job_done on the loop; e.g. with rp_syncer_submit), or one
 * already running (*submit NULL). */
enum rp_htpasswd_verdict rp_htpasswd_begin(struct rp_htpasswd *h, const char *authorization,
                                           const char *peer, struct rp_htpasswd_waiter *w,
                                           struct rp_htpasswd_job **submit);
/* Takes a waiting w off its job (its owner is going away); the job still finishes. */
void rp_htpasswd_cancel(struct rp_htpasswd_waiter *w);
void rp_htpasswd_job_work(void *job); /* the hash; touches nothing the loop uses */
void rp_htpasswd_job_done(void *job); /* records the verdict, wakes the waiters, frees job */
/* All of it at once, on this thread (tests and tools). */
bool rp_htpasswd_check(struct rp_htpasswd *h, const char *authorization, const char *peer);
/* How many hashes rp_htpasswd_check has computed (tests): crypt(3) refusing a setting at
 * once is not one. */
size_t rp_htpasswd_hashes(const struct rp_htpasswd *h);

#endif
