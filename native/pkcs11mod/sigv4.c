/* sigv4.c - AWS Signature Version 4 (header form) for one KMS request, as the SDKs sign:
 * signed headers content-type, host, x-amz-date and x-amz-target; the credential scope
 * <date>/<region>/kms/aws4_request. libcrypto's HMAC and SHA-256. */
#include <stdio.h>
#include <string.h>

#include <openssl/hmac.h>
#include <openssl/sha.h>

#include "p11m.h"

static const char CONTENT_TYPE[] = "application/x-amz-json-1.1";
static const char SIGNED[] = "content-type;host;x-amz-date;x-amz-target";

static int hmac(const unsigned char *key, size_t klen, const void *data, size_t n,
                unsigned char out[32])
{
    unsigned int len = 32;
    return HMAC(EVP_sha256(), key, (int)klen, data, n, out, &len) == NULL ? -1 : 0;
}

int sigv4_authorization(const credential *c, const char *region, const char *host_header,
                        const char *target, const unsigned char *body, size_t body_len,
                        time_t now, char amz_date[17], char *auth, size_t auth_len)
{
    struct tm tm;
    if (gmtime_r(&now, &tm) == NULL)
        return -1;
    strftime(amz_date, 17, "%Y%m%dT%H%M%SZ", &tm);
    char date[9];
    memcpy(date, amz_date, 8);
    date[8] = 0;

    unsigned char h[32];
    char body_hex[65], creq_hex[65], sig_hex[65];
    SHA256(body, body_len, h);
    hex_lower(h, 32, body_hex);

    buf_t creq = {0}, sts = {0};
    int rc = -1;
    if (buf_addf(&creq, "POST\n/\n\ncontent-type:%s\nhost:%s\nx-amz-date:%s\n"
                 "x-amz-target:%s\n\n%s\n%s", CONTENT_TYPE, host_header, amz_date, target,
                 SIGNED, body_hex) != 0)
        goto out;
    SHA256(creq.p, creq.len, h);
    hex_lower(h, 32, creq_hex);
    if (buf_addf(&sts, "AWS4-HMAC-SHA256\n%s\n%s/%s/kms/aws4_request\n%s", amz_date, date,
                 region, creq_hex) != 0)
        goto out;

    unsigned char k[32];
    char kinit[300];
    int kl = snprintf(kinit, sizeof kinit, "AWS4%s", c->secret);
    if (kl < 0 || (size_t)kl >= sizeof kinit)
        goto out;
    rc = hmac((unsigned char *)kinit, (size_t)kl, date, strlen(date), k);
    rc = rc || hmac(k, 32, region, strlen(region), k);
    rc = rc || hmac(k, 32, "kms", 3, k);
    rc = rc || hmac(k, 32, "aws4_request", 12, k);
    rc = rc || hmac(k, 32, sts.p, sts.len, h);
    wipe(kinit, sizeof kinit);
    wipe(k, sizeof k);
    if (rc != 0) {
        rc = -1;
        goto out;
    }
    hex_lower(h, 32, sig_hex);
    int n = snprintf(auth, auth_len, "AWS4-HMAC-SHA256 Credential=%s/%s/%s/kms/aws4_request, "
                     "SignedHeaders=%s, Signature=%s", c->akid, date, region, SIGNED, sig_hex);
    rc = n > 0 && (size_t)n < auth_len ? 0 : -1;
out:
    buf_free(&creq);
    buf_free(&sts);
    return rc;
}
