/*
 * p11m.h - internal declarations of libhsmpool-pkcs11, the PKCS#11 module in front of the
 * hsmpool KMS (see docs/pkcs11.md). Every PKCS#11 call that needs a key goes to the server's
 * AWS KMS JSON 1.1 API over HTTP/1.1 (keep-alive, optional TLS), signed with SigV4 by the
 * access key that C_Login decrypts from the credential file.
 *
 * Files: util.c (buffers, base64), json.c (reader/writer), conf.c (configuration file),
 * cred.c (credential file), http.c (connection pool), sigv4.c, kms.c (API calls and error
 * mapping), der.c (SPKI, ECDSA signature forms, DigestInfo), objects.c (keys as objects,
 * attributes), ops.c (sign/verify/encrypt/decrypt/digest state), module.c (entry points).
 */
#ifndef HSMPOOL_P11M_H
#define HSMPOOL_P11M_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/ssl.h>

#include <p11-kit/pkcs11.h>

#define P11M_EXPORT __attribute__((visibility("default")))

/* ---- util.c ------------------------------------------------------------------------- */

typedef struct {
    unsigned char *p;
    size_t len, cap;
} buf_t;

int buf_reserve(buf_t *b, size_t extra);
int buf_add(buf_t *b, const void *data, size_t n);
int buf_adds(buf_t *b, const char *s);
int buf_addf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_free(buf_t *b);  /* wipes, then frees */
void wipe(void *p, size_t n);
size_t b64_len(size_t n);                                /* encoded length, without NUL */
void b64_encode(const unsigned char *in, size_t n, char *out); /* writes a NUL too */
int b64_decode(const char *in, size_t n, buf_t *out);   /* 0, or -1 on malformed input */
void hex_lower(const unsigned char *in, size_t n, char *out);  /* writes a NUL too */
void p11m_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- json.c ------------------------------------------------------------------------- */

enum { J_NULL, J_FALSE, J_TRUE, J_NUM, J_STR, J_ARR, J_OBJ };

typedef struct {
    int type;
    const char *key; /* member name inside an object (NUL terminated), else NULL */
    size_t klen;
    const char *s;   /* J_STR: decoded, NUL terminated; J_NUM: the literal */
    size_t slen;
    int first, next; /* children and siblings, -1 = none */
} jnode;

typedef struct {
    jnode *nodes;
    size_t n, cap;
    char *strs; /* decoded strings */
    size_t used, scap;
} jdoc;

int json_parse(jdoc *d, const char *text, size_t len); /* 0, or -1 */
void json_free(jdoc *d);
int json_get(const jdoc *d, int obj, const char *key);   /* node index or -1 */
const char *json_str(const jdoc *d, int obj, const char *key, size_t *len);
int json_bool(const jdoc *d, int obj, const char *key, int dflt);
int json_add_str(buf_t *b, const char *s, size_t n);    /* a quoted, escaped string */

/* ---- conf.c ------------------------------------------------------------------------- */

typedef struct {
    char *label;
    char *ref; /* key id, key ARN, alias name or alias ARN */
} conf_key;

typedef struct {
    char token_label[33];
    char *endpoint;
    char host[256];
    char port[8];
    char host_header[300];
    int tls;
    char *region;
    char *ca_file;
    char *credential_file;
    char *server_name; /* TLS: the name to check in the certificate (default: host) */
    int discover;      /* 1: every key the principal may ListKeys/DescribeKey */
    int timeout_ms;
    int refresh_s;
    int max_idle;
    conf_key *keys;
    size_t nkeys;
} slot_conf;

int conf_load(const char *path, slot_conf **slots, size_t *n, char *err, size_t errlen);
void conf_free(slot_conf *slots, size_t n);

/* ---- cred.c ------------------------------------------------------------------------- */

typedef struct {
    char akid[128];
    char secret[256];
} credential;

/* CKR_OK, CKR_PIN_INCORRECT, or CKR_GENERAL_ERROR (file missing or malformed). */
CK_RV cred_load(const char *path, const unsigned char *pin, size_t pin_len, credential *out);

/* ---- http.c ------------------------------------------------------------------------- */

typedef struct conn conn_t;

typedef struct {
    const slot_conf *conf;
    SSL_CTX *ctx;
    pthread_mutex_t lock;
    conn_t *idle;
    int nidle;
} http_pool;

int http_pool_init(http_pool *h, const slot_conf *conf, char *err, size_t errlen);
void http_pool_free(http_pool *h);
/* One POST of `head` (request line and headers, ending in an empty line) and `body`.
 * 0 with *status and the response body, or -1 when the server could not be reached or
 * answered no complete HTTP response. */
int http_post(http_pool *h, const char *head, size_t head_len, const unsigned char *body,
              size_t body_len, int *status, buf_t *resp);

/* ---- sigv4.c ------------------------------------------------------------------------ */

/* Writes the X-Amz-Date value (16 chars + NUL) and the Authorization value. */
int sigv4_authorization(const credential *c, const char *region, const char *host_header,
                        const char *target, const unsigned char *body, size_t body_len,
                        time_t now, char amz_date[17], char *auth, size_t auth_len);

/* ---- der.c -------------------------------------------------------------------------- */

enum { PK_NONE, PK_RSA, PK_EC };

typedef struct {
    int kind;
    unsigned char n[1024]; size_t nlen; /* RSA modulus, unsigned big-endian */
    unsigned char e[16]; size_t elen;
    unsigned char params[32]; size_t plen; /* EC: the curve OID, DER (CKA_EC_PARAMS) */
    unsigned char point[160]; size_t ptlen; /* EC: 04 || X || Y */
    size_t field_len; /* EC: bytes of one coordinate */
} pubkey_t;

int spki_parse(const unsigned char *der, size_t len, pubkey_t *out); /* 0 or -1 */
/* DER ECDSA/SM2 Sig-Value -> r || s (each `nlen` bytes), 0 or -1 */
int ecsig_der_to_raw(const unsigned char *der, size_t len, size_t nlen, unsigned char *out);
int ecsig_raw_to_der(const unsigned char *raw, size_t len, buf_t *out);
/* A DigestInfo of SHA-256/384/512 -> the hash name ("SHA_256" ...) and the digest. */
const char *digestinfo_parse(const unsigned char *in, size_t len, const unsigned char **digest,
                             size_t *dlen);
int der_wrap_octets(const unsigned char *in, size_t len, unsigned char *out, size_t cap);

extern const unsigned char OID_P256[10], OID_SECP256K1[7], OID_SM2[10];

/* ---- kms.c -------------------------------------------------------------------------- */

typedef struct slot slot_t;

typedef struct {
    CK_RV rv;
    int not_found; /* the server said NotFound (invisible key) */
} kms_err;

/* Calls TrentService.<op> with a JSON body; on success the parsed response is in *out. */
CK_RV kms_call(slot_t *s, const char *op, const buf_t *body, jdoc *out, kms_err *err);
/* A base64 field of a response, decoded. */
CK_RV kms_blob(const jdoc *d, const char *field, buf_t *out);

/* ---- objects.c ---------------------------------------------------------------------- */

enum { KS_AES, KS_SM4, KS_RSA, KS_EC, KS_SM2 };
enum { KU_ENCRYPT, KU_SIGN };
enum { OBJ_PRIVATE = 1, OBJ_PUBLIC = 2 }; /* OBJ_PRIVATE is also the secret key */

typedef struct key {
    char key_id[64];
    char arn[256];
    char label[256];
    unsigned char id[16];
    char spec_name[32];
    int spec, usage;
    unsigned char *spki; size_t spki_len;
    pubkey_t pub;
    int gone; /* no longer visible (logout, refresh) */
    int created_here; /* by C_GenerateKeyPair in this process */
} kmskey_t;

#define MAX_KEYS 4096

struct slot {
    CK_SLOT_ID id;
    slot_conf conf;
    http_pool http;
    pthread_mutex_t login_lock;
    int logged_in;
    credential cred;
    pthread_mutex_t keys_lock;
    kmskey_t **keys;
    size_t nkeys;
    time_t loaded_at;
    int nsessions;
    char serial[17];
};

CK_OBJECT_HANDLE obj_handle(const slot_t *s, size_t key_index, int kind);
kmskey_t *obj_lookup(slot_t *s, CK_OBJECT_HANDLE h, int *kind);
CK_RV objects_load(slot_t *s);          /* at login and on refresh */
void objects_hide(slot_t *s);           /* at logout */
CK_RV obj_get_attributes(slot_t *s, const kmskey_t *k, int kind, CK_ATTRIBUTE *tpl, CK_ULONG n);
int obj_matches(slot_t *s, const kmskey_t *k, int kind, const CK_ATTRIBUTE *tpl, CK_ULONG n);
CK_RV objects_add_created(slot_t *s, const char *key_id, const char *label, size_t *index);
size_t key_sig_len(const kmskey_t *k);

/* ---- ops.c -------------------------------------------------------------------------- */

enum { OP_NONE, OP_SIGN, OP_VERIFY, OP_ENCRYPT, OP_DECRYPT, OP_DIGEST, OP_KINDS };

typedef struct {
    int kind;
    CK_MECHANISM_TYPE mech;
    kmskey_t *key;
    EVP_MD_CTX *md;        /* hashing mechanisms and C_Digest */
    const char *hash_name; /* "SHA_256" ... for the KMS algorithm names */
    size_t hash_len;
    buf_t data;            /* input of non-hashing mechanisms */
    buf_t aad;             /* GCM AAD */
    const char *enc_alg;   /* RSAES_OAEP_SHA_1/256 */
    int updated;           /* a C_*Update was called */
    buf_t result;          /* a result kept for a second call after CKR_BUFFER_TOO_SMALL */
    int have_result;
} op_t;

void op_reset(op_t *op);
CK_RV op_init(slot_t *s, op_t *op, int kind, const CK_MECHANISM *m, kmskey_t *k, int objkind);
CK_RV op_update(op_t *op, const unsigned char *in, size_t n);
/* Finishes: `in` is the single-part input (NULL for C_*Final). For sign/encrypt/decrypt/
 * digest, out == NULL asks for the size (the op stays active). */
CK_RV op_final(slot_t *s, op_t *op, const unsigned char *in, size_t in_len,
               unsigned char *out, CK_ULONG *out_len, const unsigned char *sig, size_t sig_len);
CK_RV ops_random(slot_t *s, unsigned char *out, size_t n);
CK_RV ops_generate_key_pair(slot_t *s, const CK_MECHANISM *m, const CK_ATTRIBUTE *pub,
                            CK_ULONG npub, const CK_ATTRIBUTE *priv, CK_ULONG npriv,
                            size_t *index);

/* ---- mechanisms (module.c) ---------------------------------------------------------- */

/* Vendor mechanisms; see docs/pkcs11.md for where the numbers come from. */
#define CKM_HSMPOOL_SM2 (CKM_VENDOR_DEFINED + 0x8000UL)           /* sign a 32-byte e */
#define CKM_HSMPOOL_SM3_SM2 (CKM_VENDOR_DEFINED + 0x8100UL)       /* SM3 with Z, default ID */
#define CKM_HSMPOOL_SM3_SM2_APPID1 (CKM_VENDOR_DEFINED + 0x8102UL)/* the same, named so */
#define CKM_HSMPOOL_KMS_SYMMETRIC (CKM_VENDOR_DEFINED + 0x48500001UL) /* KMS Encrypt/Decrypt */
#define CKK_HSMPOOL_SM4 (CKK_VENDOR_DEFINED + 0x48500002UL)

#endif
