/* Thin C glue between Python (cffi) and a PKCS#11 module: the pool's own binding.
 *
 * One hp11_module per loaded library. Every function returns the module's CK_RV (or
 * HP11_ERR_* for errors of the glue itself). Composite helpers (hp11_crypt, hp11_gcm) do
 * the Init and the single-part call in one crossing, which is what keeps the pool's
 * per-operation overhead below python-pkcs11's.
 */
#ifndef HSMPOOL_P11GLUE_H
#define HSMPOOL_P11GLUE_H
#include <p11-kit/pkcs11.h>

typedef struct hp11_module hp11_module;

/* dlopen a module (usually the shim copy) and fetch its function list. NULL on failure,
 * with a message (dlerror) in err. */
hp11_module *hp11_load(const char *path, char *err, unsigned long errlen);
/* C_Initialize with CKF_OS_LOCKING_OK; CKR_CRYPTOKI_ALREADY_INITIALIZED counts as success. */
unsigned long hp11_initialize(hp11_module *m);
/* C_Finalize and dlclose; m is freed. */
void hp11_unload(hp11_module *m);

unsigned long hp11_slot_list(hp11_module *m, unsigned long *slots, unsigned long *count);
/* label (32), manufacturer (32), model (16), serial (16): space padded, not NUL terminated. */
unsigned long hp11_token_info(hp11_module *m, unsigned long slot, unsigned char *label,
                              unsigned char *manufacturer, unsigned char *model,
                              unsigned char *serial, unsigned long *flags);
unsigned long hp11_mechanisms(hp11_module *m, unsigned long slot, unsigned long *mechs,
                              unsigned long *count);
unsigned long hp11_open_session(hp11_module *m, unsigned long slot, unsigned long *session);
unsigned long hp11_close_session(hp11_module *m, unsigned long session);
unsigned long hp11_login(hp11_module *m, unsigned long session, unsigned long user_type,
                         const unsigned char *pin, unsigned long pin_len);
unsigned long hp11_logout(hp11_module *m, unsigned long session);

unsigned long hp11_generate_key(hp11_module *m, unsigned long session, unsigned long mech,
                                CK_ATTRIBUTE *tpl, unsigned long n, unsigned long *key);
unsigned long hp11_generate_key_pair(hp11_module *m, unsigned long session, unsigned long mech,
                                     CK_ATTRIBUTE *pub, unsigned long npub, CK_ATTRIBUTE *priv,
                                     unsigned long npriv, unsigned long *pub_key,
                                     unsigned long *priv_key);
unsigned long hp11_create_object(hp11_module *m, unsigned long session, CK_ATTRIBUTE *tpl,
                                 unsigned long n, unsigned long *obj);
unsigned long hp11_destroy_object(hp11_module *m, unsigned long session, unsigned long obj);
unsigned long hp11_get_attributes(hp11_module *m, unsigned long session, unsigned long obj,
                                  CK_ATTRIBUTE *tpl, unsigned long n);
/* Find up to max objects matching tpl (Init, Find, Final in one call). */
unsigned long hp11_find(hp11_module *m, unsigned long session, CK_ATTRIBUTE *tpl,
                        unsigned long n, unsigned long *objs, unsigned long max,
                        unsigned long *found);
unsigned long hp11_wrap(hp11_module *m, unsigned long session, CK_MECHANISM *mech,
                        unsigned long wrapping_key, unsigned long key, unsigned char *out,
                        unsigned long *out_len);
unsigned long hp11_unwrap(hp11_module *m, unsigned long session, CK_MECHANISM *mech,
                          unsigned long unwrapping_key, const unsigned char *wrapped,
                          unsigned long wrapped_len, CK_ATTRIBUTE *tpl, unsigned long n,
                          unsigned long *key);
unsigned long hp11_random(hp11_module *m, unsigned long session, unsigned char *out,
                          unsigned long len);

#define HP11_ENCRYPT 0
#define HP11_DECRYPT 1
#define HP11_SIGN 2
/* Init + single-part Encrypt/Decrypt/Sign. *out_len: capacity in, length out. If the output
 * buffer is too small, returns CKR_BUFFER_TOO_SMALL with *out_len set to the need, and the
 * operation is cancelled (finished with a sized call into a scratch buffer). */
unsigned long hp11_crypt(hp11_module *m, int op, unsigned long session, CK_MECHANISM *mech,
                         unsigned long key, const unsigned char *in, unsigned long in_len,
                         unsigned char *out, unsigned long *out_len);
/* AES-GCM with a 128-bit tag in one crossing; encrypt: out = ct || tag. */
unsigned long hp11_gcm(hp11_module *m, int op, unsigned long session, unsigned long key,
                       const unsigned char *iv, unsigned long iv_len, const unsigned char *aad,
                       unsigned long aad_len, const unsigned char *in, unsigned long in_len,
                       unsigned char *out, unsigned long *out_len);
#endif
