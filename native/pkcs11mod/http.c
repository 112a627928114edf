/* http.c - HTTP/1.1 keep-alive client over TCP or TLS (libssl), one pool of idle
 * connections per slot. A thread takes an idle connection (or opens one), sends one request,
 * reads the whole response and gives the connection back unless the server said
 * "Connection: close". A reused connection that fails before any byte of the response
 * arrived (the server closed it while idle) is retried once on a new connection.
 * Bodies: Content-Length or chunked. Timeouts: conf->timeout_ms for connect, each send
 * and each receive. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "p11m.h"

#define MAX_HEAD 16384
#define MAX_BODY (8u << 20)

struct conn {
    int fd;
    SSL *ssl;
    conn_t *next;
    unsigned char rbuf[16384];
    size_t rpos, rlen;
};

int http_pool_init(http_pool *h, const slot_conf *conf, char *err, size_t errlen)
{
    memset(h, 0, sizeof *h);
    h->conf = conf;
    pthread_mutex_init(&h->lock, NULL);
    if (!conf->tls)
        return 0;
    h->ctx = SSL_CTX_new(TLS_client_method());
    if (h->ctx == NULL) {
        snprintf(err, errlen, "cannot create a TLS context");
        return -1;
    }
    SSL_CTX_set_min_proto_version(h->ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(h->ctx, SSL_VERIFY_PEER, NULL);
    int ok = conf->ca_file ? SSL_CTX_load_verify_locations(h->ctx, conf->ca_file, NULL)
                           : SSL_CTX_set_default_verify_paths(h->ctx);
    if (ok != 1) {
        snprintf(err, errlen, "cannot load the CA file %s",
                 conf->ca_file ? conf->ca_file : "(system default)");
        SSL_CTX_free(h->ctx);
        h->ctx = NULL;
        return -1;
    }
    return 0;
}

static void conn_close(conn_t *c)
{
    if (c == NULL)
        return;
    if (c->ssl != NULL) {
        SSL_shutdown(c->ssl);
        SSL_free(c->ssl);
    }
    if (c->fd >= 0)
        close(c->fd);
    free(c);
}

void http_pool_free(http_pool *h)
{
    conn_t *c = h->idle;
    while (c != NULL) {
        conn_t *next = c->next;
        conn_close(c);
        c = next;
    }
    h->idle = NULL;
    if (h->ctx != NULL)
        SSL_CTX_free(h->ctx);
    h->ctx = NULL;
    pthread_mutex_destroy(&h->lock);
}

static int connect_timeout(int fd, const struct sockaddr *sa, socklen_t len, int ms)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return -1;
    int rc = connect(fd, sa, len);
    if (rc != 0 && errno == EINPROGRESS) {
        struct pollfd p = {fd, POLLOUT, 0};
        rc = poll(&p, 1, ms);
        if (rc == 1) {
            int soerr = 0;
            socklen_t sl = sizeof soerr;
            rc = getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0 ? 0 : -1;
        } else {
            rc = -1;
        }
    }
    if (fcntl(fd, F_SETFL, flags) < 0)
        return -1;
    return rc;
}

static int is_ip_literal(const char *host)
{
    unsigned char tmp[16];
    return inet_pton(AF_INET, host, tmp) == 1 || inet_pton(AF_INET6, host, tmp) == 1;
}

static conn_t *conn_open(http_pool *h)
{
    const slot_conf *cf = h->conf;
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_family = AF_UNSPEC;
    if (getaddrinfo(cf->host, cf->port, &hints, &res) != 0)
        return NULL;
    int fd = -1;
    for (struct addrinfo *a = res; a != NULL; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0)
            continue;
        if (connect_timeout(fd, a->ai_addr, a->ai_addrlen, cf->timeout_ms) == 0)
            break;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        return NULL;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {cf->timeout_ms / 1000, (cf->timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    conn_t *c = calloc(1, sizeof *c);
    if (c == NULL) {
        close(fd);
        return NULL;
    }
    c->fd = fd;
    if (!cf->tls)
        return c;
    c->ssl = SSL_new(h->ctx);
    if (c->ssl == NULL)
        goto fail;
    const char *name = cf->server_name ? cf->server_name : cf->host;
    X509_VERIFY_PARAM *vp = SSL_get0_param(c->ssl);
    if (is_ip_literal(name)) {
        if (X509_VERIFY_PARAM_set1_ip_asc(vp, name) != 1)
            goto fail;
    } else {
        if (SSL_set_tlsext_host_name(c->ssl, name) != 1 || SSL_set1_host(c->ssl, name) != 1)
            goto fail;
    }
    if (SSL_set_fd(c->ssl, fd) != 1 || SSL_connect(c->ssl) != 1)
        goto fail;
    return c;
fail:
    ERR_clear_error();
    conn_close(c);
    return NULL;
}

static int conn_write(conn_t *c, const void *data, size_t n)
{
    const unsigned char *p = data;
    while (n > 0) {
        ssize_t w;
        if (c->ssl != NULL) {
            int r = SSL_write(c->ssl, p, n > 1 << 30 ? 1 << 30 : (int)n);
            w = r > 0 ? r : -1;
        } else {
            w = send(c->fd, p, n, MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR)
                continue;
        }
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Fills the read buffer; >0 bytes, 0 at EOF, -1 on error or timeout. */
static ssize_t conn_fill(conn_t *c)
{
    if (c->rpos == c->rlen)
        c->rpos = c->rlen = 0;
    if (c->rlen == sizeof c->rbuf) {
        memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
        c->rlen -= c->rpos;
        c->rpos = 0;
    }
    for (;;) {
        ssize_t r;
        size_t room = sizeof c->rbuf - c->rlen;
        if (c->ssl != NULL) {
            int x = SSL_read(c->ssl, c->rbuf + c->rlen, (int)room);
            if (x <= 0) {
                int e = SSL_get_error(c->ssl, x);
                ERR_clear_error();
                return e == SSL_ERROR_ZERO_RETURN ? 0 : -1;
            }
            r = x;
        } else {
            r = recv(c->fd, c->rbuf + c->rlen, room, 0);
            if (r < 0 && errno == EINTR)
                continue;
        }
        if (r > 0)
            c->rlen += (size_t)r;
        return r;
    }
}

/* Reads up to and including the next CRLF into line (NUL terminated, CRLF removed). */
static int read_line(conn_t *c, char *line, size_t cap, size_t *total)
{
    size_t o = 0;
    for (;;) {
        while (c->rpos < c->rlen) {
            char ch = (char)c->rbuf[c->rpos++];
            if (++*total > MAX_HEAD)
                return -1;
            if (ch == '\n') {
                if (o > 0 && line[o - 1] == '\r')
                    o--;
                line[o] = 0;
                return 0;
            }
            if (o + 1 >= cap)
                return -1;
            line[o++] = ch;
        }
        if (conn_fill(c) <= 0)
            return -1;
    }
}

static int read_exact(conn_t *c, size_t n, buf_t *out)
{
    while (n > 0) {
        if (c->rpos == c->rlen && conn_fill(c) <= 0)
            return -1;
        size_t take = c->rlen - c->rpos;
        if (take > n)
            take = n;
        if (out != NULL && buf_add(out, c->rbuf + c->rpos, take) != 0)
            return -1;
        c->rpos += take;
        n -= take;
    }
    return 0;
}

/* -1: failed before any response byte (retryable on a reused connection), -2: failed
 * later, 0: done; *keep = the connection may be reused. */
static int exchange(conn_t *c, const char *head, size_t head_len, const unsigned char *body,
                    size_t body_len, int *status, buf_t *resp, int *keep)
{
    *keep = 0;
    if (conn_write(c, head, head_len) != 0 || conn_write(c, body, body_len) != 0)
        return -1;
    if (c->rpos == c->rlen) {
        ssize_t r = conn_fill(c);
        if (r <= 0)
            return -1;
    }
    char line[8192];
    size_t total = 0;
    if (read_line(c, line, sizeof line, &total) != 0)
        return -2;
    if (strncmp(line, "HTTP/1.", 7) != 0 || strlen(line) < 12)
        return -2;
    int st = atoi(line + 9);
    if (st < 100 || st > 599)
        return -2;
    long clen = -1;
    int chunked = 0, close_after = line[7] == '0';
    for (;;) {
        if (read_line(c, line, sizeof line, &total) != 0)
            return -2;
        if (line[0] == 0)
            break;
        char *colon = strchr(line, ':');
        if (colon == NULL)
            continue;
        *colon = 0;
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        if (strcasecmp(line, "content-length") == 0) {
            char *end;
            clen = strtol(v, &end, 10);
            if (clen < 0 || (*end != 0 && *end != ' ') || clen > (long)MAX_BODY)
                return -2;
        } else if (strcasecmp(line, "transfer-encoding") == 0) {
            chunked = strcasestr(v, "chunked") != NULL;
        } else if (strcasecmp(line, "connection") == 0) {
            if (strcasestr(v, "close") != NULL)
                close_after = 1;
            else if (strcasestr(v, "keep-alive") != NULL)
                close_after = 0;
        }
    }
    if (chunked) {
        for (;;) {
            if (read_line(c, line, sizeof line, &total) != 0)
                return -2;
            char *end;
            long n = strtol(line, &end, 16);
            if (end == line || n < 0 || resp->len + (size_t)n > MAX_BODY)
                return -2;
            if (n == 0) {
                do { /* trailers */
                    if (read_line(c, line, sizeof line, &total) != 0)
                        return -2;
                } while (line[0] != 0);
                break;
            }
            if (read_exact(c, (size_t)n, resp) != 0 || read_exact(c, 2, NULL) != 0)
                return -2;
        }
    } else if (clen >= 0) {
        if (read_exact(c, (size_t)clen, resp) != 0)
            return -2;
    } else {
        for (;;) { /* until EOF */
            if (c->rpos < c->rlen) {
                if (buf_add(resp, c->rbuf + c->rpos, c->rlen - c->rpos) != 0 ||
                    resp->len > MAX_BODY)
                    return -2;
                c->rpos = c->rlen;
            }
            ssize_t r = conn_fill(c);
            if (r == 0)
                break;
            if (r < 0)
                return -2;
        }
        close_after = 1;
    }
    if (resp->p == NULL && buf_add(resp, "", 0) != 0)
        return -2;
    *status = st;
    *keep = !close_after;
    return 0;
}

int http_post(http_pool *h, const char *head, size_t head_len, const unsigned char *body,
              size_t body_len, int *status, buf_t *resp)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        pthread_mutex_lock(&h->lock);
        conn_t *c = h->idle;
        if (c != NULL) {
            h->idle = c->next;
            h->nidle--;
        }
        pthread_mutex_unlock(&h->lock);
        int reused = c != NULL;
        if (c == NULL && (c = conn_open(h)) == NULL)
            return -1;
        int keep = 0;
        resp->len = 0;
        int rc = exchange(c, head, head_len, body, body_len, status, resp, &keep);
        if (rc == 0 && keep) {
            pthread_mutex_lock(&h->lock);
            if (h->nidle < h->conf->max_idle) {
                c->next = h->idle;
                h->idle = c;
                h->nidle++;
                c = NULL;
            }
            pthread_mutex_unlock(&h->lock);
        }
        conn_close(c);
        if (rc == 0)
            return 0;
        if (rc == -2 || !reused)
            return -1;
    }
    return -1;
}
