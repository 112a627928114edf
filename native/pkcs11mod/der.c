/* der.c - the DER this module needs: SubjectPublicKeyInfo (RSA, EC and SM2 public keys, as
 * GetPublicKey returns them), ECDSA/SM2 signatures between DER (the KMS form) and r || s
 * (the PKCS#11 form), PKCS#1 DigestInfo, and OCTET STRING wrapping (CKA_EC_POINT). */
#include <string.h>

#include "p11m.h"

const unsigned char OID_P256[10] = {0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07};
const unsigned char OID_SECP256K1[7] = {0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x0A};
const unsigned char OID_SM2[10] = {0x06, 0x08, 0x2A, 0x81, 0x1C, 0xCF, 0x55, 0x01, 0x82, 0x2D};
static const unsigned char OID_RSA[11] = {0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D,
                                          0x01, 0x01, 0x01};
static const unsigned char OID_ECPUB[9] = {0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02,
                                           0x01};

/* Reads one TLV at *p; advances *p past it. Definite lengths up to 4 bytes only. */
static int tlv(const unsigned char **p, const unsigned char *end, int *tag,
               const unsigned char **val, size_t *len, const unsigned char **whole)
{
    const unsigned char *q = *p;
    if (end - q < 2)
        return -1;
    if (whole != NULL)
        *whole = q;
    *tag = *q++;
    size_t n = *q++;
    if (n & 0x80) {
        size_t k = n & 0x7F;
        if (k == 0 || k > 4 || (size_t)(end - q) < k)
            return -1;
        n = 0;
        for (size_t i = 0; i < k; i++)
            n = n << 8 | *q++;
    }
    if ((size_t)(end - q) < n)
        return -1;
    *val = q;
    *len = n;
    *p = q + n;
    return 0;
}

static void strip_zeros(const unsigned char **v, size_t *n)
{
    while (*n > 1 && (*v)[0] == 0) {
        (*v)++;
        (*n)--;
    }
}

int spki_parse(const unsigned char *der, size_t len, pubkey_t *out)
{
    memset(out, 0, sizeof *out);
    const unsigned char *p = der, *end = der + len, *v, *w;
    size_t n, m;
    int tag;
    if (tlv(&p, end, &tag, &v, &n, NULL) != 0 || tag != 0x30 || p != end)
        return -1;
    const unsigned char *q = v, *qend = v + n;
    if (tlv(&q, qend, &tag, &v, &n, NULL) != 0 || tag != 0x30) /* AlgorithmIdentifier */
        return -1;
    const unsigned char *a = v, *aend = v + n, *oid;
    size_t oidlen;
    if (tlv(&a, aend, &tag, &v, &n, &oid) != 0 || tag != 0x06)
        return -1;
    oidlen = (size_t)(a - oid);
    const unsigned char *params = a;
    size_t plen = (size_t)(aend - a);
    const unsigned char *bits;
    size_t blen;
    if (tlv(&q, qend, &tag, &bits, &blen, NULL) != 0 || tag != 0x03 || blen < 1 ||
        bits[0] != 0 || q != qend)
        return -1;
    bits++;
    blen--;
    if (oidlen == sizeof OID_RSA && memcmp(oid, OID_RSA, oidlen) == 0) {
        const unsigned char *r = bits, *rend = bits + blen;
        if (tlv(&r, rend, &tag, &v, &n, NULL) != 0 || tag != 0x30 || r != rend)
            return -1;
        const unsigned char *s = v, *send = v + n;
        if (tlv(&s, send, &tag, &v, &n, NULL) != 0 || tag != 0x02)
            return -1;
        if (tlv(&s, send, &tag, &w, &m, NULL) != 0 || tag != 0x02 || s != send)
            return -1;
        strip_zeros(&v, &n);
        strip_zeros(&w, &m);
        if (n > sizeof out->n || m > sizeof out->e)
            return -1;
        memcpy(out->n, v, n);
        out->nlen = n;
        memcpy(out->e, w, m);
        out->elen = m;
        out->kind = PK_RSA;
        return 0;
    }
    if (oidlen == sizeof OID_ECPUB && memcmp(oid, OID_ECPUB, oidlen) == 0) {
        if (plen > sizeof out->params)
            return -1;
        int known = (plen == sizeof OID_P256 && memcmp(params, OID_P256, plen) == 0) ||
                    (plen == sizeof OID_SECP256K1 && memcmp(params, OID_SECP256K1, plen) == 0) ||
                    (plen == sizeof OID_SM2 && memcmp(params, OID_SM2, plen) == 0);
        if (!known || blen != 65 || bits[0] != 0x04 || blen > sizeof out->point)
            return -1;
        memcpy(out->params, params, plen);
        out->plen = plen;
        memcpy(out->point, bits, blen);
        out->ptlen = blen;
        out->field_len = 32;
        out->kind = PK_EC;
        return 0;
    }
    return -1;
}

int ecsig_der_to_raw(const unsigned char *der, size_t len, size_t nlen, unsigned char *out)
{
    const unsigned char *p = der, *end = der + len, *v, *r, *s;
    size_t n, rl, sl;
    int tag;
    if (tlv(&p, end, &tag, &v, &n, NULL) != 0 || tag != 0x30 || p != end)
        return -1;
    const unsigned char *q = v, *qend = v + n;
    if (tlv(&q, qend, &tag, &r, &rl, NULL) != 0 || tag != 0x02)
        return -1;
    if (tlv(&q, qend, &tag, &s, &sl, NULL) != 0 || tag != 0x02 || q != qend)
        return -1;
    strip_zeros(&r, &rl);
    strip_zeros(&s, &sl);
    if (rl > nlen || sl > nlen)
        return -1;
    memset(out, 0, 2 * nlen);
    memcpy(out + nlen - rl, r, rl);
    memcpy(out + 2 * nlen - sl, s, sl);
    return 0;
}

static int add_int(buf_t *b, const unsigned char *v, size_t n)
{
    strip_zeros(&v, &n);
    int pad = v[0] & 0x80 ? 1 : 0;
    unsigned char h[3] = {0x02, (unsigned char)(n + (size_t)pad), 0};
    return buf_add(b, h, 2) || (pad && buf_add(b, h + 2, 1)) || buf_add(b, v, n);
}

int ecsig_raw_to_der(const unsigned char *raw, size_t len, buf_t *out)
{
    if (len == 0 || len % 2 != 0 || len > 132)
        return -1;
    buf_t inner = {0};
    int rc = add_int(&inner, raw, len / 2) || add_int(&inner, raw + len / 2, len / 2);
    if (rc == 0) {
        unsigned char h[3] = {0x30, 0x81, (unsigned char)inner.len};
        rc = inner.len < 128 ? buf_add(out, (unsigned char[]){0x30, (unsigned char)inner.len}, 2)
                             : buf_add(out, h, 3);
        rc = rc || buf_add(out, inner.p, inner.len);
    }
    buf_free(&inner);
    return rc ? -1 : 0;
}

/* DigestInfo prefixes (RFC 8017 section 9.2, note 1), with and without the NULL parameter. */
static const struct {
    const char *name;
    size_t dlen;
    unsigned char oid_last;
} HASHES[] = {{"SHA_256", 32, 0x01}, {"SHA_384", 48, 0x02}, {"SHA_512", 64, 0x03}};

const char *digestinfo_parse(const unsigned char *in, size_t len, const unsigned char **digest,
                             size_t *dlen)
{
    static const unsigned char sha2_arc[] = {0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03,
                                             0x04, 0x02};
    for (size_t i = 0; i < 3; i++) {
        for (int with_null = 1; with_null >= 0; with_null--) {
            unsigned char pre[19];
            size_t k = 0, alg_len = 11 + (with_null ? 2u : 0u);
            size_t content = 2 + alg_len + 2 + HASHES[i].dlen;
            pre[k++] = 0x30;
            pre[k++] = (unsigned char)content;
            pre[k++] = 0x30;
            pre[k++] = (unsigned char)alg_len;
            memcpy(pre + k, sha2_arc, sizeof sha2_arc);
            k += sizeof sha2_arc;
            pre[k++] = HASHES[i].oid_last;
            if (with_null) {
                pre[k++] = 0x05;
                pre[k++] = 0x00;
            }
            pre[k++] = 0x04;
            pre[k++] = (unsigned char)HASHES[i].dlen;
            if (len == k + HASHES[i].dlen && memcmp(in, pre, k) == 0) {
                *digest = in + k;
                *dlen = HASHES[i].dlen;
                return HASHES[i].name;
            }
        }
    }
    return NULL;
}

int der_wrap_octets(const unsigned char *in, size_t len, unsigned char *out, size_t cap)
{
    if (len > 255 || cap < len + 3)
        return -1;
    size_t k = 0;
    out[k++] = 0x04;
    if (len >= 128)
        out[k++] = 0x81;
    out[k++] = (unsigned char)len;
    memcpy(out + k, in, len);
    return (int)(k + len);
}
