/* cred.c - the credential file: an access key encrypted under the user PIN.
 *
 * A JSON object (written by `hsmpool pkcs11 credential`, kms/pkcs11_cli.py):
 *   {"format": "hsmpool-pkcs11-credential", "version": 1, "kdf": "scrypt",
 *    "n": 32768, "r": 8, "p": 1, "salt": B64(16), "nonce": B64(12), "ciphertext": B64}
 * key = scrypt(PIN, salt, n, r, p, 32 bytes); ciphertext = AES-256-GCM(key, nonce,
 * plaintext, aad) || tag(16), aad = "hsmpool-pkcs11-credential/1/scrypt/<n>/<r>/<p>";
 * plaintext = {"AccessKeyId": ..., "SecretAccessKey": ...} (`credentials create --json`).
 * A wrong PIN fails the tag: CKR_PIN_INCORRECT.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "p11m.h"

#define MAX_FILE 65536

static int read_file(const char *path, buf_t *out)
{
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return -1;
    char chunk[4096];
    size_t n;
    int rc = 0;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (out->len + n > MAX_FILE || buf_add(out, chunk, n) != 0) {
            rc = -1;
            break;
        }
    }
    if (ferror(f))
        rc = -1;
    fclose(f);
    wipe(chunk, sizeof chunk);
    return rc;
}

static long num(const jdoc *d, const char *key)
{
    int k = json_get(d, 0, key);
    if (k < 0 || d->nodes[k].type != J_NUM)
        return -1;
    char *end;
    long v = strtol(d->nodes[k].s, &end, 10);
    return *end == 0 ? v : -1;
}

static int b64_field(const jdoc *d, const char *key, buf_t *out)
{
    size_t n;
    const char *s = json_str(d, 0, key, &n);
    return s == NULL ? -1 : b64_decode(s, n, out);
}

static int gcm_open(const unsigned char *key, const buf_t *nonce, const char *aad,
                    const buf_t *ct, buf_t *pt)
{
    if (ct->len < 16 || nonce->len != 12 || buf_reserve(pt, ct->len + 1) != 0)
        return -1;
    size_t n = ct->len - 16;
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int outl = 0, finl = 0, ok = c != NULL;
    ok = ok && EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1;
    ok = ok && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_IVLEN, 12, NULL) == 1;
    ok = ok && EVP_DecryptInit_ex(c, NULL, NULL, key, nonce->p) == 1;
    ok = ok && EVP_DecryptUpdate(c, NULL, &outl, (const unsigned char *)aad,
                                 (int)strlen(aad)) == 1;
    ok = ok && EVP_DecryptUpdate(c, pt->p, &outl, ct->p, (int)n) == 1;
    ok = ok && EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, 16, ct->p + n) == 1;
    ok = ok && EVP_DecryptFinal_ex(c, pt->p + outl, &finl) == 1;
    EVP_CIPHER_CTX_free(c);
    if (!ok)
        return -1;
    pt->len = (size_t)(outl + finl);
    pt->p[pt->len] = 0;
    return 0;
}

CK_RV cred_load(const char *path, const unsigned char *pin, size_t pin_len, credential *out)
{
    buf_t file = {0}, salt = {0}, nonce = {0}, ct = {0}, pt = {0};
    jdoc d = {0}, inner = {0};
    unsigned char key[32];
    CK_RV rv = CKR_GENERAL_ERROR;
    memset(out, 0, sizeof *out);
    if (read_file(path, &file) != 0) {
        p11m_log("cannot read the credential file %s", path);
        goto out;
    }
    if (json_parse(&d, (const char *)file.p, file.len) != 0)
        goto bad;
    const char *fmt = json_str(&d, 0, "format", NULL), *kdf = json_str(&d, 0, "kdf", NULL);
    long version = num(&d, "version"), N = num(&d, "n"), r = num(&d, "r"), p = num(&d, "p");
    if (fmt == NULL || strcmp(fmt, "hsmpool-pkcs11-credential") != 0 || version != 1 ||
        kdf == NULL || strcmp(kdf, "scrypt") != 0 || N < 1024 || N > (1L << 20) ||
        (N & (N - 1)) != 0 || r < 1 || r > 32 || p < 1 || p > 16)
        goto bad;
    if (b64_field(&d, "salt", &salt) != 0 || salt.len < 16 ||
        b64_field(&d, "nonce", &nonce) != 0 || b64_field(&d, "ciphertext", &ct) != 0)
        goto bad;
    if (EVP_PBE_scrypt((const char *)pin, pin_len, salt.p, salt.len, (uint64_t)N,
                       (uint64_t)r, (uint64_t)p, (uint64_t)1 << 30, key, sizeof key) != 1)
        goto bad;
    char aad[96];
    snprintf(aad, sizeof aad, "hsmpool-pkcs11-credential/1/scrypt/%ld/%ld/%ld", N, r, p);
    if (gcm_open(key, &nonce, aad, &ct, &pt) != 0) {
        rv = CKR_PIN_INCORRECT;
        goto out;
    }
    if (json_parse(&inner, (const char *)pt.p, pt.len) != 0)
        goto bad;
    size_t al, sl;
    const char *akid = json_str(&inner, 0, "AccessKeyId", &al);
    const char *secret = json_str(&inner, 0, "SecretAccessKey", &sl);
    if (akid == NULL || secret == NULL || al == 0 || sl == 0 || al >= sizeof out->akid ||
        sl >= sizeof out->secret)
        goto bad;
    memcpy(out->akid, akid, al);
    memcpy(out->secret, secret, sl);
    rv = CKR_OK;
    goto out;
bad:
    p11m_log("the credential file %s is malformed", path);
out:
    wipe(key, sizeof key);
    json_free(&d);
    json_free(&inner);
    buf_free(&file);
    buf_free(&salt);
    buf_free(&nonce);
    buf_free(&ct);
    buf_free(&pt);
    return rv;
}
