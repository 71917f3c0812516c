/*
 * lookupload: a tcp_table(5) load generator for bench/lookups.py.
 *
 *   lookupload PORT CONNS WARMUP_S MEASURE_S DEPTH KEYS_FILE [RATE]
 *
 * Opens CONNS connections to 127.0.0.1:PORT and keeps DEPTH requests
 * outstanding on each: DEPTH=1 is request/response, as Postfix's tcp_table
 * client does (it waits for each reply); DEPTH>1 is pipelined. One thread and
 * one epoll loop for all connections (a blocking read when CONNS=1), so the
 * client costs a few microseconds of CPU a lookup and the 2 cores go to the
 * servers.
 *
 * RATE (optional, lookups/s over all connections; request/response only): each
 * connection sends its next request on a fixed schedule (RATE/CONNS a second)
 * instead of at once, or at once when its reply came later than that: latency at a
 * given load rather than the most a server can do (bench/isolation.py).
 *
 * KEYS_FILE: one "KEY<TAB>EXPECTED" a line. Every reply is checked: EXPECTED
 * "200 ..." must be matched exactly, anything else ("500") as a prefix.
 * Connection i starts at key i*N/CONNS and walks the list round-robin, so every
 * server gets the same request sequence.
 *
 * stdout: "START" when the warm-up ends, "END" when the measurement ends (the
 * caller samples server CPU then), then one JSON line with the results.
 * Latency = from the write of a request to the read of its reply.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define INBUF 262144
#define MAXCONN 256

struct key {
    char *req;        /* "get KEY\n" */
    size_t req_len;
    char *expect;     /* "200 value" (exact) or "500" (prefix) */
    size_t expect_len;
    int exact;
};

struct conn {
    int fd;
    char *in;
    size_t in_len;
    size_t next_key;
    uint64_t *sent_at; /* ring of DEPTH send times (ns) */
    size_t *sent_key;  /* ring of DEPTH key indexes */
    size_t head, count;
    uint64_t next_at; /* paced: when the next request is due (ns) */
};

static struct key *keys;
static size_t nkeys;
static int depth;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static void load_keys(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) die(path);
    size_t cap = 1024;
    keys = malloc(cap * sizeof *keys);
    char *line = NULL;
    size_t n = 0;
    ssize_t len;
    while ((len = getline(&line, &n, f)) > 0) {
        if (line[len - 1] == '\n') line[--len] = 0;
        char *tab = strchr(line, '\t');
        if (!tab) continue;
        *tab = 0;
        if (nkeys == cap) keys = realloc(keys, (cap *= 2) * sizeof *keys);
        struct key *k = &keys[nkeys++];
        k->req_len = strlen(line) + 5;
        k->req = malloc(k->req_len + 1);
        snprintf(k->req, k->req_len + 1, "get %s\n", line);
        k->expect = strdup(tab + 1);
        k->expect_len = strlen(k->expect);
        k->exact = strncmp(k->expect, "200 ", 4) == 0;
    }
    free(line);
    fclose(f);
    if (!nkeys) {
        fprintf(stderr, "lookupload: no keys in %s\n", path);
        exit(2);
    }
}

/* Write all of buf, waiting for POLLOUT if the socket buffer is full. */
static void write_all(int fd, const char *buf, size_t len) {
    while (len) {
        ssize_t w = write(fd, buf, len);
        if (w < 0) {
            if (errno == EAGAIN) {
                struct pollfd p = {fd, POLLOUT, 0};
                poll(&p, 1, 1000);
                continue;
            }
            if (errno == EINTR) continue;
            die("write");
        }
        buf += w;
        len -= (size_t)w;
    }
}

static char outbuf[1 << 20];

/* Queue requests on c until DEPTH are outstanding; one write for all. */
static void fill(struct conn *c) {
    size_t out = 0;
    uint64_t t = now_ns();
    while (c->count < (size_t)depth) {
        struct key *k = &keys[c->next_key];
        if (out + k->req_len > sizeof outbuf) break;
        memcpy(outbuf + out, k->req, k->req_len);
        out += k->req_len;
        size_t slot = (c->head + c->count) % (size_t)depth;
        c->sent_at[slot] = t;
        c->sent_key[slot] = c->next_key;
        c->count++;
        c->next_key = (c->next_key + 1) % nkeys;
    }
    if (out) write_all(c->fd, outbuf, out);
}

/* results */
static uint64_t counted, n200, n500, nother, mismatches;
static uint32_t *lat;
static size_t nlat, latcap;
static int mismatch_reports;

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc != 7 && argc != 8) {
        fprintf(stderr, "usage: %s PORT CONNS WARMUP_S MEASURE_S DEPTH KEYS_FILE [RATE]\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]), nconn = atoi(argv[2]);
    double warmup = atof(argv[3]), measure = atof(argv[4]);
    depth = atoi(argv[5]);
    double rate = argc == 8 ? atof(argv[7]) : 0;
    if (rate > 0) depth = 1;
    uint64_t interval = rate > 0 ? (uint64_t)(1e9 * nconn / rate) : 0;
    int use_epoll = nconn > 1 || rate > 0;
    if (nconn < 1 || nconn > MAXCONN || depth < 1 || depth > 4096) {
        fprintf(stderr, "lookupload: bad CONNS or DEPTH\n");
        return 2;
    }
    load_keys(argv[6]);

    struct conn conns[MAXCONN];
    int ep = epoll_create1(0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    for (int i = 0; i < nconn; i++) {
        struct conn *c = &conns[i];
        memset(c, 0, sizeof *c);
        c->fd = socket(AF_INET, SOCK_STREAM, 0);
        if (c->fd < 0) die("socket");
        if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect");
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct timeval tv = {10, 0}; /* a server that stops answering ends the run */
        setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        c->in = malloc(INBUF);
        c->sent_at = malloc((size_t)depth * sizeof *c->sent_at);
        c->sent_key = malloc((size_t)depth * sizeof *c->sent_key);
        c->next_key = (nkeys * (size_t)i) / (size_t)nconn;
        if (use_epoll) {
            struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
            if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
        }
    }
    /* Let the servers accept (and PostSRSd fork) before the clock starts. */
    usleep(200000);

    uint64_t t0 = now_ns();
    uint64_t start = t0 + (uint64_t)(warmup * 1e9), end = start + (uint64_t)(measure * 1e9);
    int started = 0, stopping = 0;
    double cpu_start = 0, cpu_end = 0;
    for (int i = 0; i < nconn; i++) {
        conns[i].next_at = t0 + interval * (uint64_t)i / (uint64_t)nconn;
        if (!interval) fill(&conns[i]);
    }
    latcap = 1 << 20;
    lat = malloc(latcap * sizeof *lat);

    size_t outstanding = interval ? 0 : (size_t)nconn * (size_t)depth;
    struct epoll_event evs[MAXCONN];
    while (outstanding || (interval && !stopping)) {
        int nready;
        if (interval) { /* paced: send what is due, then wait for replies or the next due time */
            uint64_t t = now_ns(), soonest = UINT64_MAX;
            for (int i = 0; i < nconn; i++) {
                struct conn *c = &conns[i];
                if (c->count || stopping) continue;
                if (c->next_at <= t) {
                    c->next_at += interval;
                    if (c->next_at + interval < t) c->next_at = t; /* far behind: no catching up in bursts */
                    fill(c);
                    outstanding += c->count;
                } else if (c->next_at < soonest) {
                    soonest = c->next_at;
                }
            }
            if (!outstanding && stopping) break;
            if (!started && t >= start) {
                started = 1;
                cpu_start = cpu_s();
                fputs("START\n", stdout);
                fflush(stdout);
            }
            if (!stopping && t >= end) {
                stopping = 1;
                cpu_end = cpu_s();
                fputs("END\n", stdout);
                fflush(stdout);
                if (!outstanding) break;
            }
            int wait_ms = soonest == UINT64_MAX ? 100 : (int)((soonest - t + 999999) / 1000000);
            nready = epoll_wait(ep, evs, MAXCONN, wait_ms);
            if (nready < 0) {
                if (errno == EINTR) continue;
                die("epoll_wait");
            }
            if (nready == 0) continue;
        } else if (nconn == 1) {
            nready = 1;
            evs[0].data.u32 = 0;
        } else {
            nready = epoll_wait(ep, evs, MAXCONN, 10000);
            if (nready < 0) {
                if (errno == EINTR) continue;
                die("epoll_wait");
            }
            if (nready == 0) {
                fprintf(stderr, "lookupload: no reply for 10 s\n");
                return 3;
            }
        }
        for (int e = 0; e < nready; e++) {
            struct conn *c = &conns[evs[e].data.u32];
            ssize_t r = read(c->fd, c->in + c->in_len, INBUF - c->in_len);
            if (r <= 0) {
                if (r < 0 && errno == EINTR) continue;
                fprintf(stderr, "lookupload: connection %u: %s\n", evs[e].data.u32,
                        r == 0 ? "closed by server" : strerror(errno));
                return 3;
            }
            c->in_len += (size_t)r;
            uint64_t t = now_ns();
            if (!started && t >= start) {
                started = 1;
                cpu_start = cpu_s();
                fputs("START\n", stdout);
                fflush(stdout);
            }
            if (!stopping && t >= end) {
                stopping = 1;
                cpu_end = cpu_s();
                fputs("END\n", stdout);
                fflush(stdout);
            }
            int in_window = started && !stopping;
            char *p = c->in, *stop = c->in + c->in_len, *nl;
            while ((nl = memchr(p, '\n', (size_t)(stop - p)))) {
                size_t len = (size_t)(nl - p);
                if (!c->count) {
                    fprintf(stderr, "lookupload: unsolicited reply\n");
                    return 3;
                }
                size_t slot = c->head;
                struct key *k = &keys[c->sent_key[slot]];
                uint64_t sent = c->sent_at[slot];
                c->head = (c->head + 1) % (size_t)depth;
                c->count--;
                outstanding--;
                int ok = k->exact ? (len == k->expect_len && !memcmp(p, k->expect, len))
                                  : (len >= k->expect_len && !memcmp(p, k->expect, k->expect_len));
                if (in_window) {
                    counted++;
                    if (len >= 4 && !memcmp(p, "200 ", 4)) n200++;
                    else if (len >= 4 && !memcmp(p, "500 ", 4)) n500++;
                    else nother++;
                    if (nlat == latcap) lat = realloc(lat, (latcap *= 2) * sizeof *lat);
                    uint64_t d = t - sent;
                    lat[nlat++] = d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
                }
                if (!ok) {
                    mismatches++;
                    if (mismatch_reports++ < 5)
                        fprintf(stderr, "lookupload: mismatch: %.*s -> %.*s (expected %s)\n",
                                (int)k->req_len - 1, k->req, (int)len, p, k->expect);
                }
                p = nl + 1;
            }
            c->in_len = (size_t)(stop - p);
            memmove(c->in, p, c->in_len);
            if (c->in_len == INBUF) {
                fprintf(stderr, "lookupload: reply line too long\n");
                return 3;
            }
            if (!stopping && !interval) {
                size_t before = c->count;
                fill(c);
                outstanding += c->count - before;
            }
        }
    }
    double secs = (double)(end - start) / 1e9;
    qsort(lat, nlat, sizeof *lat, cmp_u32);
    double p50 = nlat ? lat[nlat / 2] / 1e3 : 0, p99 = nlat ? lat[(size_t)(nlat * 0.99)] / 1e3 : 0;
    double p999 = nlat ? lat[(size_t)(nlat * 0.999)] / 1e3 : 0;
    printf("{\"lookups\": %llu, \"seconds\": %.6f, \"rate\": %.1f, \"p50_us\": %.1f, \"p99_us\": %.1f, "
           "\"p999_us\": %.1f, \"n200\": %llu, \"n500\": %llu, \"nother\": %llu, \"mismatches\": %llu, "
           "\"client_cpu_s\": %.3f}\n",
           (unsigned long long)counted, secs, counted / secs, p50, p99, p999, (unsigned long long)n200,
           (unsigned long long)n500, (unsigned long long)nother, (unsigned long long)mismatches,
           cpu_end - cpu_start);
    for (int i = 0; i < nconn; i++) close(conns[i].fd);
    return 0;
}
