/* kms.c - one AWS KMS JSON 1.1 call (TrentService.<op>) and the mapping of its errors to
 * CKR_ codes (docs/pkcs11.md has the table). The credential is copied out of the slot under
 * its lock and wiped after signing; nothing here logs request or response bodies. */
#include <stdio.h>
#include <string.h>

#include "p11m.h"

static const struct {
    const char *type;
    CK_RV rv;
} ERRORS[] = {
    {"NotFoundException", CKR_KEY_HANDLE_INVALID},
    {"AccessDeniedException", CKR_FUNCTION_REJECTED},
    {"UnrecognizedClientException", CKR_USER_NOT_LOGGED_IN},
    {"InvalidSignatureException", CKR_USER_NOT_LOGGED_IN},
    {"IncompleteSignatureException", CKR_USER_NOT_LOGGED_IN},
    {"MissingAuthenticationTokenException", CKR_USER_NOT_LOGGED_IN},
    {"DisabledException", CKR_KEY_FUNCTION_NOT_PERMITTED},
    {"KMSInvalidStateException", CKR_KEY_FUNCTION_NOT_PERMITTED},
    {"InvalidKeyUsageException", CKR_KEY_FUNCTION_NOT_PERMITTED},
    {"UnsupportedOperationException", CKR_KEY_FUNCTION_NOT_PERMITTED},
    {"KMSInvalidSignatureException", CKR_SIGNATURE_INVALID},
    {"InvalidCiphertextException", CKR_ENCRYPTED_DATA_INVALID},
    {"IncorrectKeyException", CKR_ENCRYPTED_DATA_INVALID},
    {"ValidationException", CKR_ARGUMENTS_BAD},
    {"SerializationException", CKR_ARGUMENTS_BAD},
    {"AlreadyExistsException", CKR_FUNCTION_FAILED},
    {"InvalidAliasNameException", CKR_TEMPLATE_INCONSISTENT},
    {"LimitExceededException", CKR_DEVICE_MEMORY},
    {"ThrottlingException", CKR_DEVICE_MEMORY},
    {"KeyUnavailableException", CKR_DEVICE_ERROR},
    {"DependencyTimeoutException", CKR_DEVICE_ERROR},
    {"KMSInternalException", CKR_DEVICE_ERROR},
};

static CK_RV map_error(int status, const jdoc *d, int *not_found)
{
    size_t n = 0;
    const char *type = d->nodes ? json_str(d, 0, "__type", &n) : NULL;
    *not_found = 0;
    if (type != NULL) {
        const char *hash = strrchr(type, '#'); /* "com.amazonaws.kms#NotFoundException" */
        if (hash != NULL)
            type = hash + 1;
        for (size_t i = 0; i < sizeof ERRORS / sizeof ERRORS[0]; i++)
            if (strcmp(type, ERRORS[i].type) == 0) {
                *not_found = ERRORS[i].rv == CKR_KEY_HANDLE_INVALID;
                return ERRORS[i].rv;
            }
    }
    return status >= 500 ? CKR_DEVICE_ERROR : CKR_FUNCTION_FAILED;
}

CK_RV kms_call(slot_t *s, const char *op, const buf_t *body, jdoc *out, kms_err *err)
{
    memset(out, 0, sizeof *out);
    err->rv = CKR_OK;
    err->not_found = 0;
    credential cred;
    pthread_mutex_lock(&s->login_lock);
    int in = s->logged_in;
    if (in)
        cred = s->cred;
    pthread_mutex_unlock(&s->login_lock);
    if (!in)
        return err->rv = CKR_USER_NOT_LOGGED_IN;

    char target[96], amz_date[17], auth[512];
    snprintf(target, sizeof target, "TrentService.%s", op);
    int sr = sigv4_authorization(&cred, s->conf.region, s->conf.host_header, target, body->p,
                                 body->len, time(NULL), amz_date, auth, sizeof auth);
    wipe(&cred, sizeof cred);
    if (sr != 0)
        return err->rv = CKR_GENERAL_ERROR;
    buf_t head = {0}, resp = {0};
    CK_RV rv = CKR_HOST_MEMORY;
    if (buf_addf(&head, "POST / HTTP/1.1\r\nHost: %s\r\nContent-Type: "
                 "application/x-amz-json-1.1\r\nX-Amz-Date: %s\r\nX-Amz-Target: %s\r\n"
                 "Authorization: %s\r\nContent-Length: %zu\r\nUser-Agent: hsmpool-pkcs11/0.1"
                 "\r\n\r\n", s->conf.host_header, amz_date, target, auth, body->len) != 0)
        goto done;
    int status = 0;
    if (http_post(&s->http, (const char *)head.p, head.len, body->p, body->len, &status,
                  &resp) != 0) {
        rv = CKR_DEVICE_ERROR; /* unreachable, or no complete answer */
        goto done;
    }
    if (json_parse(out, (const char *)resp.p, resp.len) != 0 ||
        out->nodes[0].type != J_OBJ) {
        json_free(out);
        rv = status >= 500 || status == 200 ? CKR_DEVICE_ERROR : CKR_FUNCTION_FAILED;
        goto done;
    }
    if (status != 200) {
        rv = map_error(status, out, &err->not_found);
        json_free(out);
        goto done;
    }
    rv = CKR_OK;
done:
    buf_free(&head);
    buf_free(&resp);
    return err->rv = rv;
}

CK_RV kms_blob(const jdoc *d, const char *field, buf_t *out)
{
    size_t n;
    const char *s = json_str(d, 0, field, &n);
    if (s == NULL || b64_decode(s, n, out) != 0)
        return CKR_DEVICE_ERROR; /* the server answered something we do not understand */
    return CKR_OK;
}
