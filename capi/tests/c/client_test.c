/*
 * The cluster client through the C ABI (issue 17 acceptance): built with nothing but
 * <ringlog.h> and `pkg-config --cflags --libs ringlog` against an installed libringlog, run
 * under AddressSanitizer + UndefinedBehaviorSanitizer against a 3-node cluster of real
 * `ringlog serve` processes (capi/tests/cluster_client.rs starts them).
 *
 *   client_test BOOTSTRAP PARTITIONS
 *
 * Checks: the loaded library's version is the header's; misuse answers a status, never a
 * crash (NULL and garbage handles, bad options, unknown partition, bad acks and consistency,
 * empty and oversize produces, too-small buffers, use after close, double close); metadata
 * names a leader per partition; produces with acks=quorum on every partition get dense
 * offsets; every record fetches back byte-identical, linearizable and replica-committed.
 * Exit 0 and "client_test: PASS" on success.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <ringlog.h>

/* CHECK, EXPECT_STATUS, EXPECT_OK: the helpers every C test shares. */
#include "check.h"

/* Batches produced per partition, records per batch at most. */
#define BATCHES 12
#define RECORDS_MAX 5
/* One large record per partition (crosses many TCP segments). */
#define LARGE_BYTES (64 * 1024)
/* Generous: elections on a loaded 2-core machine. */
#define LEADER_DEADLINE_SECONDS 120
#define FETCH_DEADLINE_SECONDS 120

typedef struct {
    uint8_t *data;
    size_t len;
} value;

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Record `r` of batch `b` of partition `p`: text, a zero-length record, binary bytes, or
 * the large one. */
static value make_value(uint32_t p, uint32_t b, uint32_t r) {
    value v;
    if (b == 3 && r == 0) {
        v.len = 0;
        v.data = NULL;
        return v;
    }
    if (b == 5 && r == 1) {
        v.len = LARGE_BYTES;
        v.data = malloc(v.len);
        CHECK(v.data != NULL);
        for (size_t i = 0; i < v.len; i++) v.data[i] = (uint8_t)(i * 31u + p * 7u + b);
        return v;
    }
    char text[96];
    int n = snprintf(text, sizeof text, "partition %u batch %u record %u \x01\x02", p, b, r);
    CHECK(n > 0 && (size_t)n < sizeof text);
    v.len = (size_t)n + 2;
    v.data = malloc(v.len);
    CHECK(v.data != NULL);
    memcpy(v.data, text, (size_t)n);
    v.data[n] = 0; /* an embedded NUL */
    v.data[n + 1] = 0xff;
    return v;
}

static void misuse_before_connect(void) {
    ringlog_client_options options;
    EXPECT_STATUS(RINGLOG_ERR_NULL_POINTER, ringlog_client_options_init(NULL, sizeof options));
    EXPECT_STATUS(RINGLOG_ERR_BAD_STRUCT_SIZE, ringlog_client_options_init(&options, 4));
    EXPECT_OK(ringlog_client_options_init(&options, sizeof options));
    CHECK(options.size == sizeof options);
    CHECK(options.request_timeout_ms > 0 && options.attempts_max > 0);
    CHECK(options.tls_ca_file == NULL);

    ringlog_client *client = (ringlog_client *)(uintptr_t)0x1;
    EXPECT_STATUS(RINGLOG_ERR_NULL_POINTER, ringlog_client_connect(NULL, NULL, &client));
    CHECK(client == NULL);
    EXPECT_STATUS(RINGLOG_ERR_NULL_POINTER, ringlog_client_connect("127.0.0.1:1", NULL, NULL));
    EXPECT_STATUS(RINGLOG_ERR_INVALID_ARGUMENT, ringlog_client_connect("", NULL, &client));
    EXPECT_STATUS(RINGLOG_ERR_INVALID_ARGUMENT,
                  ringlog_client_connect("not an address", NULL, &client));
    CHECK(strlen(ringlog_last_error_message()) > 0);
    CHECK(client == NULL);

    ringlog_client_options bad = options;
    bad.request_timeout_ms = 0;
    EXPECT_STATUS(RINGLOG_ERR_INVALID_ARGUMENT, ringlog_client_connect("127.0.0.1:1", &bad, &client));
    bad = options;
    bad.size = 8;
    EXPECT_STATUS(RINGLOG_ERR_BAD_STRUCT_SIZE, ringlog_client_connect("127.0.0.1:1", &bad, &client));
    bad = options;
    bad.tls_cert_file = "/nonexistent/cert.pem";
    EXPECT_STATUS(RINGLOG_ERR_INVALID_ARGUMENT, ringlog_client_connect("127.0.0.1:1", &bad, &client));
    bad = options;
    bad.tls_ca_file = "/nonexistent/ca.pem";
    EXPECT_STATUS(RINGLOG_ERR_CONFIG, ringlog_client_connect("127.0.0.1:1", &bad, &client));
    CHECK(strstr(ringlog_last_error_message(), "/nonexistent/ca.pem") != NULL);
    CHECK(client == NULL);

    /* A handle that was never issued, and NULL. */
    ringlog_client *garbage = (ringlog_client *)(uintptr_t)0xdeadbeef;
    uint64_t base = 0;
    ringlog_record one = {(const uint8_t *)"x", 1};
    EXPECT_STATUS(RINGLOG_ERR_BAD_HANDLE,
                  ringlog_client_produce(garbage, 0, RINGLOG_ACKS_QUORUM, &one, 1, &base, NULL));
    EXPECT_STATUS(RINGLOG_ERR_NULL_POINTER,
                  ringlog_client_produce(NULL, 0, RINGLOG_ACKS_QUORUM, &one, 1, &base, NULL));
    EXPECT_STATUS(RINGLOG_ERR_NULL_POINTER, ringlog_client_close(NULL));
    EXPECT_STATUS(RINGLOG_ERR_BAD_HANDLE, ringlog_client_close(garbage));
}

/* Waits until the metadata names a leader for each of `partitions` partitions. */
static void wait_for_leaders(ringlog_client *client, size_t partitions) {
    size_t count = 0;
    /* Asking for the count: NULL, 0. */
    double deadline = now_seconds() + LEADER_DEADLINE_SECONDS;
    ringlog_status status;
    for (;;) {
        status = ringlog_client_metadata(client, NULL, sizeof(ringlog_partition_info), 0, &count);
        if (status == RINGLOG_ERR_BUFFER_TOO_SMALL) break;
        CHECK(status == RINGLOG_ERR_UNAVAILABLE || status == RINGLOG_ERR_NOT_LEADER);
        CHECK(now_seconds() < deadline);
        sleep_ms(100);
    }
    CHECK(count == partitions);
    ringlog_partition_info *infos = calloc(partitions, sizeof *infos);
    CHECK(infos != NULL);
    EXPECT_STATUS(RINGLOG_ERR_BAD_STRUCT_SIZE, ringlog_client_metadata(client, infos, 4, partitions, &count));
    EXPECT_STATUS(RINGLOG_ERR_NULL_POINTER,
                  ringlog_client_metadata(client, infos, sizeof *infos, partitions, NULL));
    EXPECT_STATUS(RINGLOG_ERR_NULL_POINTER,
                  ringlog_client_metadata(client, NULL, sizeof *infos, partitions, &count));
    for (;;) {
        EXPECT_OK(ringlog_client_metadata(client, infos, sizeof *infos, partitions, &count));
        CHECK(count == partitions);
        size_t led = 0;
        for (size_t i = 0; i < count; i++) {
            CHECK(infos[i].partition == i);
            if (infos[i].leader_id != 0) {
                CHECK(infos[i].leader_id >= 1 && infos[i].leader_id <= 3);
                CHECK(infos[i].term >= 1);
                CHECK(strncmp(infos[i].leader_address, "127.0.0.1:", 10) == 0);
                CHECK(memchr(infos[i].leader_address, 0, RINGLOG_ADDRESS_BYTES) != NULL);
                led++;
            } else {
                CHECK(infos[i].leader_address[0] == 0);
            }
        }
        if (led == count) break;
        CHECK(now_seconds() < deadline);
        sleep_ms(100);
    }
    for (size_t i = 0; i < count; i++)
        printf("partition %u: leader node %u (term %llu) at %s\n", infos[i].partition,
               infos[i].leader_id, (unsigned long long)infos[i].term, infos[i].leader_address);
    free(infos);
}

/* Fetches every record of `partition` from `first` until `count` records arrived; checks
 * them against `expected`. */
static void fetch_and_compare(ringlog_client *client, uint32_t partition, uint32_t consistency,
                              uint64_t first, const value *expected, size_t count) {
    size_t cap = 256 * 1024;
    uint8_t *buf = malloc(cap);
    CHECK(buf != NULL);
    uint64_t offset = first;
    size_t got = 0;
    double deadline = now_seconds() + FETCH_DEADLINE_SECONDS;
    while (got < count) {
        size_t len = 0;
        uint64_t next = 0;
        ringlog_status status = ringlog_client_fetch(client, partition, offset, consistency, 500,
                                                     buf, cap, &len, &next);
        if (status != RINGLOG_OK) {
            /* A leader change may be in progress: retried until the deadline. */
            CHECK(status == RINGLOG_ERR_NOT_LEADER || status == RINGLOG_ERR_UNAVAILABLE ||
                  status == RINGLOG_ERR_TIMEOUT);
            CHECK(now_seconds() < deadline);
            sleep_ms(100);
            continue;
        }
        size_t at = 0;
        uint64_t records = 0;
        while (at < len) {
            CHECK(len - at >= 4);
            uint32_t n = (uint32_t)buf[at] | (uint32_t)buf[at + 1] << 8 |
                         (uint32_t)buf[at + 2] << 16 | (uint32_t)buf[at + 3] << 24;
            at += 4;
            CHECK(len - at >= n);
            CHECK(got < count);
            CHECK(n == expected[got].len);
            CHECK(n == 0 || memcmp(buf + at, expected[got].data, n) == 0);
            at += n;
            got++;
            records++;
        }
        CHECK(next == offset + records);
        offset = next;
        if (len == 0) {
            CHECK(now_seconds() < deadline);
        }
    }
    free(buf);
}

int main(int argc, char **argv) {
    if (argc != 3 && argc != 6) {
        fprintf(stderr, "usage: %s BOOTSTRAP PARTITIONS [TLS_CA TLS_CERT TLS_KEY]\n", argv[0]);
        return 2;
    }
    const char *bootstrap = argv[1];
    uint32_t partitions = (uint32_t)strtoul(argv[2], NULL, 10);
    CHECK(partitions >= 1 && partitions <= 64);

    /* The library loaded is the one the header describes. */
    CHECK(ringlog_version_number() == RINGLOG_VERSION_NUMBER);
    CHECK(strcmp(ringlog_version(), RINGLOG_VERSION_STRING) == 0);
    CHECK(ringlog_version_number() / 1000000 == RINGLOG_VERSION_MAJOR);

    misuse_before_connect();

    ringlog_client_options options;
    EXPECT_OK(ringlog_client_options_init(&options, sizeof options));
    /* Generous bounds: the cluster shares 2 loaded cores. */
    options.request_timeout_ms = 60000;
    options.metadata_timeout_ms = 5000;
    options.retry_time_max_ms = 120000;
    options.attempts_max = 2000;
    if (argc == 6) {
        /* Mutual TLS: the nodes' CA, and a client certificate the nodes require. */
        options.tls_ca_file = argv[3];
        options.tls_cert_file = argv[4];
        options.tls_key_file = argv[5];
        printf("client_test: over TLS\n");
    }
    ringlog_client *client = NULL;
    EXPECT_OK(ringlog_client_connect(bootstrap, &options, &client));
    CHECK(client != NULL);

    wait_for_leaders(client, partitions);

    /* Misuse on a live handle. */
    ringlog_record one = {(const uint8_t *)"x", 1};
    uint64_t base = 0, commit = 0;
    EXPECT_STATUS(RINGLOG_ERR_UNKNOWN_PARTITION,
                  ringlog_client_produce(client, partitions + 7, RINGLOG_ACKS_QUORUM, &one, 1, &base, NULL));
    CHECK(strstr(ringlog_last_error_message(), "partition") != NULL);
    EXPECT_STATUS(RINGLOG_ERR_INVALID_ARGUMENT,
                  ringlog_client_produce(client, 0, 7, &one, 1, &base, NULL));
    EXPECT_STATUS(RINGLOG_ERR_EMPTY_APPEND,
                  ringlog_client_produce(client, 0, RINGLOG_ACKS_QUORUM, &one, 0, &base, NULL));
    EXPECT_STATUS(RINGLOG_ERR_NULL_POINTER,
                  ringlog_client_produce(client, 0, RINGLOG_ACKS_QUORUM, NULL, 1, &base, NULL));
    ringlog_record huge = {(const uint8_t *)"x", SIZE_MAX};
    EXPECT_STATUS(RINGLOG_ERR_OVERSIZE,
                  ringlog_client_produce(client, 0, RINGLOG_ACKS_QUORUM, &huge, 1, &base, NULL));
    ringlog_record too_big = {(const uint8_t *)"x", (size_t)RINGLOG_CLIENT_BATCH_BYTES_MAX};
    EXPECT_STATUS(RINGLOG_ERR_OVERSIZE,
                  ringlog_client_produce(client, 0, RINGLOG_ACKS_QUORUM, &too_big, 1, &base, NULL));
    size_t len = 0;
    uint64_t next = 0;
    uint8_t small[8];
    EXPECT_STATUS(RINGLOG_ERR_UNKNOWN_PARTITION,
                  ringlog_client_fetch(client, partitions + 7, 0, RINGLOG_READ_LINEARIZABLE, 0,
                                       small, sizeof small, &len, &next));
    EXPECT_STATUS(RINGLOG_ERR_INVALID_ARGUMENT,
                  ringlog_client_fetch(client, 0, 0, 9, 0, small, sizeof small, &len, &next));
    EXPECT_STATUS(RINGLOG_ERR_NULL_POINTER,
                  ringlog_client_fetch(client, 0, 0, RINGLOG_READ_LINEARIZABLE, 0, small,
                                       sizeof small, NULL, &next));
    EXPECT_STATUS(RINGLOG_ERR_NULL_POINTER,
                  ringlog_client_fetch(client, 0, 0, RINGLOG_READ_LINEARIZABLE, 0, NULL, 16, &len,
                                       &next));

    /* Produce with acks=quorum to every partition; offsets are dense per partition. */
    value *expected[64];
    size_t counts[64];
    uint64_t firsts[64];
    for (uint32_t p = 0; p < partitions; p++) {
        expected[p] = calloc(BATCHES * RECORDS_MAX, sizeof(value));
        CHECK(expected[p] != NULL);
        counts[p] = 0;
        uint64_t expected_base = 0;
        for (uint32_t b = 0; b < BATCHES; b++) {
            uint32_t n = 1 + (p + b) % RECORDS_MAX;
            ringlog_record records[RECORDS_MAX];
            for (uint32_t r = 0; r < n; r++) {
                value v = make_value(p, b, r);
                expected[p][counts[p] + r] = v;
                records[r].data = v.data;
                records[r].len = v.len;
            }
            EXPECT_OK(ringlog_client_produce(client, p, RINGLOG_ACKS_QUORUM, records, n, &base,
                                             &commit));
            if (b == 0) {
                firsts[p] = base;
            } else {
                CHECK(base == expected_base);
            }
            /* acks=quorum: the batch is committed when the produce returns. */
            CHECK(commit >= base + n);
            expected_base = base + n;
            counts[p] += n;
        }
        printf("partition %u: %zu records at offsets %llu..%llu\n", p, counts[p],
               (unsigned long long)firsts[p], (unsigned long long)(firsts[p] + counts[p] - 1));
    }

    /* Everything fetches back byte-identical, both consistencies. */
    for (uint32_t p = 0; p < partitions; p++) {
        fetch_and_compare(client, p, RINGLOG_READ_LINEARIZABLE, firsts[p], expected[p], counts[p]);
        fetch_and_compare(client, p, RINGLOG_READ_REPLICA_COMMITTED, firsts[p], expected[p],
                          counts[p]);
    }

    /* A buffer too small for the first record reports the size it needs (NULL, 0 asks). */
    len = 0;
    EXPECT_STATUS(RINGLOG_ERR_BUFFER_TOO_SMALL,
                  ringlog_client_fetch(client, 0, firsts[0], RINGLOG_READ_LINEARIZABLE, 0, NULL, 0,
                                       &len, &next));
    CHECK(len == 4 + expected[0][0].len);
    /* At the end: nothing yet after a short wait; past the end: out of range. */
    uint64_t end = firsts[0] + counts[0];
    EXPECT_OK(ringlog_client_fetch(client, 0, end, RINGLOG_READ_LINEARIZABLE, 100, small,
                                   sizeof small, &len, &next));
    CHECK(len == 0 && next == end);
    EXPECT_STATUS(RINGLOG_ERR_OFFSET_OUT_OF_RANGE,
                  ringlog_client_fetch(client, 0, end + 1000, RINGLOG_READ_LINEARIZABLE, 0, small,
                                       sizeof small, &len, &next));

    /* Close: the handle is dead; a second close is BAD_HANDLE, never a crash. */
    EXPECT_OK(ringlog_client_close(client));
    EXPECT_STATUS(RINGLOG_ERR_BAD_HANDLE, ringlog_client_close(client));
    EXPECT_STATUS(RINGLOG_ERR_BAD_HANDLE,
                  ringlog_client_produce(client, 0, RINGLOG_ACKS_QUORUM, &one, 1, &base, NULL));
    EXPECT_STATUS(RINGLOG_ERR_BAD_HANDLE,
                  ringlog_client_fetch(client, 0, 0, RINGLOG_READ_LINEARIZABLE, 0, small,
                                       sizeof small, &len, &next));

    for (uint32_t p = 0; p < partitions; p++) {
        for (size_t i = 0; i < counts[p]; i++) free(expected[p][i].data);
        free(expected[p]);
    }
    printf("client_test: PASS\n");
    return 0;
}
