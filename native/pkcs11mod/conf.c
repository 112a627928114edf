/* conf.c - the module's configuration file (named by $HSMPOOL_PKCS11_CONF).
 *
 *   # a comment
 *   [slot]                         # one section per slot (a KMS instance's principal)
 *   token_label = kms-prod         # at most 32 bytes
 *   endpoint = https://kms.example:8443    # http:// or https://, host[:port], no path
 *   region = us-east-1             # the SigV4 region (default us-east-1)
 *   credential_file = /etc/hsmpool/pkcs11.cred   # written by `hsmpool pkcs11 credential`
 *   ca_file = /etc/hsmpool/ca.pem  # https: the CAs to trust (default: the system's)
 *   server_name = kms.example      # https: the name the certificate must carry (default host)
 *   discover = false               # true: every key the principal may list and describe
 *   timeout_ms = 10000             # connect, send and receive timeout
 *   refresh_seconds = 60           # how old the key list may get before C_FindObjectsInit
 *                                  # reloads it (0: every time)
 *   max_idle_connections = 16      # keep-alive connections kept per slot
 *   key = app-sign alias/app-sign  # LABEL KEY: a key id, key ARN, alias name or alias ARN
 *
 * Unknown names, a missing endpoint or credential_file, and malformed values are errors.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "p11m.h"

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' ||
                     s[n - 1] == '\n'))
        s[--n] = 0;
    return s;
}

static int parse_endpoint(slot_conf *c, const char *url, char *err, size_t errlen)
{
    const char *rest;
    if (strncmp(url, "http://", 7) == 0) {
        c->tls = 0;
        rest = url + 7;
    } else if (strncmp(url, "https://", 8) == 0) {
        c->tls = 1;
        rest = url + 8;
    } else {
        snprintf(err, errlen, "endpoint must start with http:// or https://");
        return -1;
    }
    size_t n = strlen(rest);
    if (n > 0 && rest[n - 1] == '/')
        n--;
    if (n == 0 || n >= sizeof c->host || memchr(rest, '/', n) != NULL) {
        snprintf(err, errlen, "endpoint must be scheme://host[:port] without a path");
        return -1;
    }
    char hp[256];
    memcpy(hp, rest, n);
    hp[n] = 0;
    const char *port = c->tls ? "443" : "80";
    char *colon;
    if (hp[0] == '[') { /* [v6]:port */
        char *close = strchr(hp, ']');
        if (close == NULL) {
            snprintf(err, errlen, "endpoint: unterminated [IPv6] address");
            return -1;
        }
        *close = 0;
        snprintf(c->host, sizeof c->host, "%s", hp + 1);
        if (close[1] == ':')
            port = close + 2;
        else if (close[1] != 0) {
            snprintf(err, errlen, "endpoint: junk after the IPv6 address");
            return -1;
        }
    } else {
        colon = strchr(hp, ':');
        if (colon != NULL) {
            *colon = 0;
            port = colon + 1;
        }
        snprintf(c->host, sizeof c->host, "%s", hp);
    }
    char *end;
    long p = strtol(port, &end, 10);
    if (*port == 0 || *end != 0 || p < 1 || p > 65535 || c->host[0] == 0) {
        snprintf(err, errlen, "endpoint: bad host or port");
        return -1;
    }
    snprintf(c->port, sizeof c->port, "%ld", p);
    /* The Host header as an SDK sends it: the port only when it is not the default. */
    int default_port = (c->tls && p == 443) || (!c->tls && p == 80);
    int v6 = strchr(c->host, ':') != NULL;
    if (default_port)
        snprintf(c->host_header, sizeof c->host_header, v6 ? "[%s]" : "%s", c->host);
    else
        snprintf(c->host_header, sizeof c->host_header, v6 ? "[%s]:%s" : "%s:%s", c->host,
                 c->port);
    return 0;
}

static int parse_int(const char *v, long lo, long hi, int *out)
{
    char *end;
    long x = strtol(v, &end, 10);
    if (*v == 0 || *end != 0 || x < lo || x > hi)
        return -1;
    *out = (int)x;
    return 0;
}

static int parse_bool(const char *v, int *out)
{
    if (strcmp(v, "true") == 0 || strcmp(v, "yes") == 0 || strcmp(v, "1") == 0)
        *out = 1;
    else if (strcmp(v, "false") == 0 || strcmp(v, "no") == 0 || strcmp(v, "0") == 0)
        *out = 0;
    else
        return -1;
    return 0;
}

static int set_str(char **dst, const char *v)
{
    free(*dst);
    *dst = strdup(v);
    return *dst == NULL ? -1 : 0;
}

static int add_key(slot_conf *c, char *v)
{
    char *sp = v;
    while (*sp && *sp != ' ' && *sp != '\t')
        sp++;
    if (*sp == 0)
        return -1;
    *sp++ = 0;
    char *ref = trim(sp);
    if (*v == 0 || *ref == 0 || strlen(v) > 200 || strchr(ref, ' ') != NULL)
        return -1;
    conf_key *nk = realloc(c->keys, (c->nkeys + 1) * sizeof *nk);
    if (nk == NULL)
        return -1;
    c->keys = nk;
    nk[c->nkeys].label = strdup(v);
    nk[c->nkeys].ref = strdup(ref);
    if (nk[c->nkeys].label == NULL || nk[c->nkeys].ref == NULL)
        return -1;
    c->nkeys++;
    return 0;
}

static void defaults(slot_conf *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->token_label, sizeof c->token_label, "hsmpool");
    c->timeout_ms = 10000;
    c->refresh_s = 60;
    c->max_idle = 16;
}

static int finish(slot_conf *c, int lineno, char *err, size_t errlen)
{
    if (c->endpoint == NULL || c->credential_file == NULL) {
        snprintf(err, errlen, "the [slot] ending at line %d needs endpoint and "
                 "credential_file", lineno);
        return -1;
    }
    if (c->region == NULL && set_str(&c->region, "us-east-1") != 0)
        return -1;
    if (!c->discover && c->nkeys == 0) {
        snprintf(err, errlen, "the [slot] ending at line %d names no key and does not "
                 "discover", lineno);
        return -1;
    }
    return 0;
}

int conf_load(const char *path, slot_conf **slots, size_t *n, char *err, size_t errlen)
{
    *slots = NULL;
    *n = 0;
    FILE *f = fopen(path, "re");
    if (f == NULL) {
        snprintf(err, errlen, "cannot open the configuration %s", path);
        return -1;
    }
    slot_conf *all = NULL;
    size_t count = 0;
    char line[4096];
    int lineno = 0, rc = -1;
    slot_conf *cur = NULL;
    while (fgets(line, sizeof line, f) != NULL) {
        lineno++;
        if (strchr(line, '\n') == NULL && !feof(f)) {
            snprintf(err, errlen, "line %d is too long", lineno);
            goto out;
        }
        char *hash = strchr(line, '#');
        if (hash != NULL)
            *hash = 0;
        char *s = trim(line);
        if (*s == 0)
            continue;
        if (strcmp(s, "[slot]") == 0) {
            if (cur != NULL && finish(cur, lineno, err, errlen) != 0)
                goto out;
            if (count >= 64) {
                snprintf(err, errlen, "at most 64 slots");
                goto out;
            }
            slot_conf *na = realloc(all, (count + 1) * sizeof *na);
            if (na == NULL)
                goto out;
            all = na;
            cur = &all[count++];
            defaults(cur);
            continue;
        }
        char *eq = strchr(s, '=');
        if (eq == NULL || cur == NULL) {
            snprintf(err, errlen, "line %d: expected [slot] or name = value", lineno);
            goto out;
        }
        *eq = 0;
        char *k = trim(s), *v = trim(eq + 1);
        int bad = 0;
        if (strcmp(k, "token_label") == 0) {
            if (strlen(v) == 0 || strlen(v) > 32)
                bad = 1;
            else
                snprintf(cur->token_label, sizeof cur->token_label, "%s", v);
        } else if (strcmp(k, "endpoint") == 0) {
            if (set_str(&cur->endpoint, v) != 0 || parse_endpoint(cur, v, err, errlen) != 0)
                goto out;
        } else if (strcmp(k, "region") == 0) {
            bad = *v == 0 || set_str(&cur->region, v) != 0;
        } else if (strcmp(k, "credential_file") == 0) {
            bad = *v == 0 || set_str(&cur->credential_file, v) != 0;
        } else if (strcmp(k, "ca_file") == 0) {
            bad = *v == 0 || set_str(&cur->ca_file, v) != 0;
        } else if (strcmp(k, "server_name") == 0) {
            bad = *v == 0 || set_str(&cur->server_name, v) != 0;
        } else if (strcmp(k, "discover") == 0) {
            bad = parse_bool(v, &cur->discover) != 0;
        } else if (strcmp(k, "timeout_ms") == 0) {
            bad = parse_int(v, 100, 600000, &cur->timeout_ms) != 0;
        } else if (strcmp(k, "refresh_seconds") == 0) {
            bad = parse_int(v, 0, 86400, &cur->refresh_s) != 0;
        } else if (strcmp(k, "max_idle_connections") == 0) {
            bad = parse_int(v, 0, 1024, &cur->max_idle) != 0;
        } else if (strcmp(k, "key") == 0) {
            bad = add_key(cur, v) != 0;
        } else {
            snprintf(err, errlen, "line %d: unknown setting %.40s", lineno, k);
            goto out;
        }
        if (bad) {
            snprintf(err, errlen, "line %d: bad value for %.40s", lineno, k);
            goto out;
        }
    }
    if (cur == NULL) {
        snprintf(err, errlen, "no [slot] section");
        goto out;
    }
    if (finish(cur, lineno, err, errlen) != 0)
        goto out;
    rc = 0;
out:
    fclose(f);
    if (rc != 0) {
        conf_free(all, count);
        return -1;
    }
    *slots = all;
    *n = count;
    return 0;
}

void conf_free(slot_conf *slots, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        slot_conf *c = &slots[i];
        free(c->endpoint);
        free(c->region);
        free(c->ca_file);
        free(c->credential_file);
        free(c->server_name);
        for (size_t j = 0; j < c->nkeys; j++) {
            free(c->keys[j].label);
            free(c->keys[j].ref);
        }
        free(c->keys);
    }
    free(slots);
}
