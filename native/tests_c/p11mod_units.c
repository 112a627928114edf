/* p11mod_units.c - unit checks of the PKCS#11 module's parsers (native/pkcs11mod/), built
 * with its sources and run under AddressSanitizer and UBSan by
 * tests/native/test_pkcs11_module_native.py: JSON (valid, malformed, every truncation),
 * base64, DER (SPKI, ECDSA signatures both ways, DigestInfo) and the configuration file.
 * Exit status 0 when every check holds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "p11m.h"

static int failures;
#define CHECK(cond)                                                                       \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);      \
            failures++;                                                                   \
        }                                                                                 \
    } while (0)

static void json_checks(void)
{
    const char *ok = "{\"a\": [1, -2.5e3, true, false, null], \"s\": \"x\\u00e9\\ud83d\\ude00"
                     "\\n\\\"\", \"o\": {\"k\": \"v\"}}";
    jdoc d;
    CHECK(json_parse(&d, ok, strlen(ok)) == 0);
    size_t n;
    const char *s = json_str(&d, 0, "s", &n);
    CHECK(s != NULL && n == 1 + 2 + 4 + 2 && memcmp(s, "x\xc3\xa9\xf0\x9f\x98\x80\n\"", n) == 0);
    int o = json_get(&d, 0, "o");
    CHECK(o >= 0 && json_str(&d, o, "k", NULL) != NULL);
    CHECK(json_get(&d, 0, "missing") < 0);
    json_free(&d);
    /* every prefix of a valid document is malformed, and never read past its end */
    size_t len = strlen(ok);
    for (size_t i = 0; i < len; i++) {
        char *cut = malloc(i ? i : 1);
        memcpy(cut, ok, i);
        CHECK(json_parse(&d, cut, i) != 0);
        free(cut);
    }
    const char *bad[] = {"", "{", "{\"a\":}", "[1,]", "{\"a\" 1}", "\"\\ud800\"", "\"\\x\"",
                         "{}x", "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]"
                         "]]]]]]]]]]]]]]", "\"\x01\""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(json_parse(&d, bad[i], strlen(bad[i])) != 0);
    buf_t b = {0};
    CHECK(json_add_str(&b, "a\"b\\c\n", 6) == 0 && strcmp((char *)b.p, "\"a\\\"b\\\\c\\u000a\"") == 0);
    buf_free(&b);
}

static void base64_checks(void)
{
    const char *vec[][2] = {{"", ""}, {"f", "Zg=="}, {"fo", "Zm8="}, {"foo", "Zm9v"},
                            {"foobar", "Zm9vYmFy"}};
    for (size_t i = 0; i < 5; i++) {
        char out[32];
        b64_encode((const unsigned char *)vec[i][0], strlen(vec[i][0]), out);
        CHECK(strcmp(out, vec[i][1]) == 0);
        buf_t b = {0};
        CHECK(b64_decode(vec[i][1], strlen(vec[i][1]), &b) == 0);
        CHECK(b.len == strlen(vec[i][0]) && (b.len == 0 || memcmp(b.p, vec[i][0], b.len) == 0));
        buf_free(&b);
    }
    const char *bad[] = {"Zg=", "Z===", "Zm9v=Zm9", "Zm9*", "=Zm9"};
    for (size_t i = 0; i < 5; i++) {
        buf_t b = {0};
        CHECK(b64_decode(bad[i], strlen(bad[i]), &b) != 0);
        buf_free(&b);
    }
}

static void der_checks(void)
{
    /* an SM2 SubjectPublicKeyInfo (id-ecPublicKey, curve 1.2.156.10197.1.301) */
    static const char *spki_hex =
        "3059301306072a8648ce3d020106082a811ccf5501822d034200043004b801d0781aa0728b42e57b43bc"
        "39bcdfeb4ca676a99395bcab15e30e905e83c62b38fd6ddf0a15f4a4b12fb1b1208f68fb79ebc43dc5b7"
        "a28a3f0ab5618c";
    unsigned char spki[128];
    size_t n = strlen(spki_hex) / 2;
    for (size_t i = 0; i < n; i++)
        sscanf(spki_hex + 2 * i, "%2hhx", &spki[i]);
    pubkey_t pk;
    CHECK(spki_parse(spki, n, &pk) == 0 && pk.kind == PK_EC && pk.ptlen == 65);
    CHECK(pk.plen == sizeof OID_SM2 && memcmp(pk.params, OID_SM2, pk.plen) == 0);
    for (size_t i = 0; i < n; i++) /* every truncation fails cleanly */
        CHECK(spki_parse(spki, i, &pk) != 0);
    unsigned char raw[64], back[64];
    for (int i = 0; i < 64; i++)
        raw[i] = (unsigned char)(i == 0 || i == 32 ? 0x80 : i); /* high bits: padded INTEGERs */
    buf_t der = {0};
    CHECK(ecsig_raw_to_der(raw, 64, &der) == 0);
    CHECK(ecsig_der_to_raw(der.p, der.len, 32, back) == 0 && memcmp(raw, back, 64) == 0);
    for (size_t i = 0; i < der.len; i++)
        CHECK(ecsig_der_to_raw(der.p, i, 32, back) != 0);
    buf_free(&der);
    memset(raw, 0, 32); /* r = 0...0 shrinks to one zero byte */
    CHECK(ecsig_raw_to_der(raw, 64, &der) == 0 && ecsig_der_to_raw(der.p, der.len, 32, back) == 0);
    CHECK(memcmp(raw, back, 64) == 0);
    buf_free(&der);
    unsigned char info[51] = {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65,
                              0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20};
    const unsigned char *dg;
    size_t dl;
    const char *h = digestinfo_parse(info, sizeof info, &dg, &dl);
    CHECK(h != NULL && strcmp(h, "SHA_256") == 0 && dl == 32 && dg == info + 19);
    CHECK(digestinfo_parse(info, sizeof info - 1, &dg, &dl) == NULL);
    info[14] = 0x04; /* SHA-224's OID: not signable by the KMS */
    CHECK(digestinfo_parse(info, sizeof info, &dg, &dl) == NULL);
}

static void conf_checks(const char *dir)
{
    char path[512];
    snprintf(path, sizeof path, "%s/units.conf", dir);
    const char *cases[][2] = {
        {"[slot]\nendpoint = http://h:1\ncredential_file = /c\nkey = a alias/a\n", NULL},
        {"[slot]\nendpoint = https://[::1]:8443\ncredential_file = /c\ndiscover = yes\n", NULL},
        {"[slot]\nendpoint = http://h\ncredential_file = /c\n", "names no key"},
        {"[slot]\nendpoint = ftp://h\n", "http://"},
        {"[slot]\nendpoint = http://h:99999\ncredential_file = /c\nkey = a b\n", "port"},
        {"[slot]\nendpoint = http://h/path\n", "without a path"},
        {"[slot]\nbogus = 1\n", "unknown setting"},
        {"token_label = x\n", "expected [slot]"},
        {"[slot]\ntoken_label = 0123456789012345678901234567890123\n", "bad value"},
        {"[slot]\nendpoint = http://h\ncredential_file = /c\nkey = only-a-label\n", "bad value"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        FILE *f = fopen(path, "w");
        fputs(cases[i][0], f);
        fclose(f);
        slot_conf *slots;
        size_t n;
        char err[256] = "";
        int rc = conf_load(path, &slots, &n, err, sizeof err);
        if (cases[i][1] == NULL) {
            CHECK(rc == 0 && n == 1);
            if (rc == 0) {
                CHECK(i != 1 || (strcmp(slots[0].host, "::1") == 0 && slots[0].tls &&
                                 strcmp(slots[0].host_header, "[::1]:8443") == 0));
                CHECK(i != 0 || strcmp(slots[0].host_header, "h:1") == 0);
                conf_free(slots, n);
            }
        } else {
            CHECK(rc != 0 && strstr(err, cases[i][1]) != NULL);
            if (rc != 0 && strstr(err, cases[i][1]) == NULL)
                fprintf(stderr, "  case %zu said: %s\n", i, err);
        }
    }
    remove(path);
}

int main(int argc, char **argv)
{
    json_checks();
    base64_checks();
    der_checks();
    conf_checks(argc > 1 ? argv[1] : "/tmp");
    if (failures == 0)
        printf("all checks passed\n");
    return failures == 0 ? 0 : 1;
}
