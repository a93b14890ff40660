/*
 * Embedding a local durable log: open, append (blocking and async), read back, close.
 *
 *   cc -I capi/include examples/local_log.c -L <libdir> -lringlog -o local_log
 *   ./local_log /var/lib/myapp/log
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "ringlog.h"

static int fail(const char *what, ringlog_status status) {
    fprintf(stderr, "%s: %s: %s\n", what, ringlog_status_str(status), ringlog_last_error_message());
    return 1;
}

/* Runs on a ringlog shard thread: keep it short, never block. */
static void appended(void *user, ringlog_status status, uint64_t first, uint32_t count,
                     const char *message) {
    (void)user;
    if (status == RINGLOG_OK) {
        printf("async batch durable at offsets %llu..%llu\n", (unsigned long long)first,
               (unsigned long long)(first + count - 1));
    } else {
        fprintf(stderr, "async append failed: %s\n", message);
    }
}

int main(int argc, char **argv) {
    const char *dir = argc > 1 ? argv[1] : "ringlog-data";
    printf("libringlog %s\n", ringlog_version());

    ringlog_log_options options;
    ringlog_log_options_init(&options, sizeof options);
    options.segment_size_bytes = 1u << 20; /* small segments for the demo: */
    options.batch_size_max = 64 * 1024; /* a batch and a flush must fit a segment */
    options.flush_bytes_max = 256 * 1024;

    ringlog_log *log = NULL;
    ringlog_status s = ringlog_log_open(dir, &options, &log);
    if (s != RINGLOG_OK) return fail("open", s);

    /* One batch of three records; returns once they are on stable storage. */
    const char *values[] = {"hello", "durable", "world"};
    ringlog_record records[3];
    for (int i = 0; i < 3; i++) {
        records[i].data = (const uint8_t *)values[i];
        records[i].len = strlen(values[i]);
    }
    uint64_t first = 0;
    s = ringlog_log_append(log, 0, records, 3, &first);
    if (s != RINGLOG_OK) return fail("append", s);
    printf("batch durable at offsets %llu..%llu\n", (unsigned long long)first,
           (unsigned long long)(first + 2));

    /* Fire-and-forget with a completion callback, then wait for all of them. */
    s = ringlog_log_append_async(log, 0, records, 1, appended, NULL);
    if (s != RINGLOG_OK) return fail("append_async", s);
    s = ringlog_log_sync(log);
    if (s != RINGLOG_OK) return fail("sync", s);

    /* Read back: [u32 little-endian length][bytes] per record. */
    uint8_t buf[4096];
    size_t len = 0;
    uint64_t next = 0;
    s = ringlog_log_read(log, 0, first, buf, sizeof buf, &len, &next);
    if (s != RINGLOG_OK) return fail("read", s);
    size_t pos = 0;
    for (uint64_t offset = first; offset < next; offset++) {
        uint32_t n;
        memcpy(&n, buf + pos, 4);
        printf("offset %llu: %.*s\n", (unsigned long long)offset, (int)n, (const char *)buf + pos + 4);
        pos += 4 + n;
    }

    s = ringlog_log_close(log);
    if (s != RINGLOG_OK) return fail("close", s);
    printf("local_log: ok\n");
    return 0;
}
