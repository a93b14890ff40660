/*
 * C test of the local log API: every function, every misuse (NULL pointers, bad and closed
 * handles, double close, zero-length and oversize appends, reads past the end, too small
 * buffers, bad struct sizes, blocking calls from a callback), durability across close and
 * reopen, and the process-wide functions.
 *
 * Usage: log_test <empty scratch dir on a disk filesystem> [tmpfs dir or "-"]
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"

#define SEGMENT_BYTES (1u << 20)

static void small_options(ringlog_log_options *o) {
    EXPECT_OK(ringlog_log_options_init(o, sizeof *o));
    o->segment_size_bytes = SEGMENT_BYTES;
    o->batch_size_max = 64 * 1024;
    o->flush_bytes_max = 256 * 1024;
    o->queued_bytes_max = 1024 * 1024;
}

static ringlog_record rec(const char *text) {
    ringlog_record r = {(const uint8_t *)text, strlen(text)};
    return r;
}

/* Reads every record of partition 0 from `from` into `out` (NUL-terminated strings). */
static size_t read_all(ringlog_log *log, uint32_t partition, uint64_t from, char out[][64],
                       size_t max) {
    uint8_t buf[256];
    size_t n = 0;
    uint64_t offset = from;
    for (;;) {
        size_t len = 0;
        uint64_t next = 0;
        EXPECT_OK(ringlog_log_read(log, partition, offset, buf, sizeof buf, &len, &next));
        if (len == 0) {
            CHECK(next == offset);
            return n;
        }
        size_t pos = 0;
        while (pos < len) {
            uint32_t rlen;
            memcpy(&rlen, buf + pos, 4); /* little-endian host */
            pos += 4;
            CHECK(rlen < 64 && pos + rlen <= len && n < max);
            memcpy(out[n], buf + pos, rlen);
            out[n][rlen] = 0;
            pos += rlen;
            n++;
        }
        CHECK(pos == len);
        CHECK(next == offset + (next - offset)); /* dense */
        offset = next;
    }
}

static void test_process_wide_functions(void) {
    const char *version = ringlog_version();
    CHECK(version != NULL && strchr(version, '.') != NULL);
    CHECK(strcmp(ringlog_status_str(RINGLOG_OK), "ok") == 0);
    CHECK(strcmp(ringlog_status_str(-1), "unknown status") == 0);
    CHECK(strcmp(ringlog_status_str(100000), "unknown status") == 0);
    for (int s = 1; s <= RINGLOG_ERR_INTERNAL; s++) {
        CHECK(strlen(ringlog_status_str(s)) > 0);
    }
    CHECK(ringlog_last_error_message() != NULL);
}

static void test_options(void) {
    ringlog_log_options o;
    EXPECT_STATUS(RINGLOG_ERR_NULL_POINTER, ringlog_log_options_init(NULL, sizeof o));
    EXPECT_STATUS(RINGLOG_ERR_BAD_STRUCT_SIZE, ringlog_log_options_init(&o, 4));
    CHECK(strstr(ringlog_last_error_message(), "size") != NULL);
    EXPECT_OK(ringlog_log_options_init(&o, sizeof o));
    CHECK(o.size == sizeof o);
    CHECK(o.shards == 1 && o.partitions == 1);
    CHECK(o.io_memory_bytes == 1024 * 1024);
    /* A caller compiled against a newer, larger struct: zero tail accepted, set tail refused. */
    struct {
        ringlog_log_options base;
        uint64_t future_field;
    } newer;
    EXPECT_OK(ringlog_log_options_init(&newer.base, sizeof newer));
    CHECK(newer.base.size == sizeof newer && newer.future_field == 0);
}

static void test_open_misuse(const char *root, const char *tmpfs) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/misuse", root);
    ringlog_log_options o;
    small_options(&o);
    ringlog_log *log = (ringlog_log *)0x1;
    EXPECT_STATUS(RINGLOG_ERR_NULL_POINTER, ringlog_log_open(dir, &o, NULL));
    EXPECT_STATUS(RINGLOG_ERR_NULL_POINTER, ringlog_log_open(NULL, &o, &log));
    CHECK(log == NULL); /* cleared on error */
    EXPECT_STATUS(RINGLOG_ERR_INVALID_ARGUMENT, ringlog_log_open("", &o, &log));
    o.shards = 0;
    EXPECT_STATUS(RINGLOG_ERR_INVALID_ARGUMENT, ringlog_log_open(dir, &o, &log));
    CHECK(strstr(ringlog_last_error_message(), "shards") != NULL);
    small_options(&o);
    o.segment_size_bytes = 12345; /* not a multiple of 4096 */
    EXPECT_STATUS(RINGLOG_ERR_INVALID_ARGUMENT, ringlog_log_open(dir, &o, &log));
    small_options(&o);
    o.size = 8;
    EXPECT_STATUS(RINGLOG_ERR_BAD_STRUCT_SIZE, ringlog_log_open(dir, &o, &log));
    CHECK(log == NULL);
    struct {
        ringlog_log_options base;
        uint64_t future_field;
    } newer;
    small_options(&newer.base);
    newer.base.size = sizeof newer;
    newer.future_field = 7;
    EXPECT_STATUS(RINGLOG_ERR_BAD_STRUCT_SIZE, ringlog_log_open(dir, &newer.base, &log));
    if (tmpfs != NULL) {
        /* tmpfs has no O_DIRECT: the host check refuses before any executor starts. */
        char shm[4096];
        snprintf(shm, sizeof shm, "%s/ringlog-capi-test-%ld", tmpfs, (long)getpid());
        small_options(&o);
        EXPECT_STATUS(RINGLOG_ERR_HOST_UNSUPPORTED, ringlog_log_open(shm, &o, &log));
        CHECK(strlen(ringlog_last_error_message()) > 0);
        CHECK(log == NULL);
        rmdir(shm);
    }
}

struct async_state {
    pthread_mutex_t lock;
    int calls;
    int ok;
    uint64_t offsets[64];
    ringlog_status nested_status;
    ringlog_status nested_async_status;
    ringlog_log *log;
};

static void on_done(void *user, ringlog_status status, uint64_t first, uint32_t count,
                    const char *message) {
    struct async_state *st = user;
    CHECK(message != NULL);
    pthread_mutex_lock(&st->lock);
    if (status == RINGLOG_OK) {
        CHECK(count == 1);
        st->offsets[st->ok++] = first;
    } else {
        fprintf(stderr, "async append failed: %s\n", message);
    }
    st->calls++;
    pthread_mutex_unlock(&st->lock);
}

static void nested_done(void *user, ringlog_status status, uint64_t first, uint32_t count,
                        const char *message) {
    (void)first;
    (void)count;
    (void)message;
    struct async_state *st = user;
    CHECK(status == RINGLOG_OK);
    /* A blocking call from the shard thread would deadlock: it must be refused. */
    ringlog_record r = rec("nested");
    uint64_t off;
    st->nested_status = ringlog_log_append(st->log, 0, &r, 1, &off);
    /* A non-blocking call is fine. */
    st->nested_async_status = ringlog_log_append_async(st->log, 0, &r, 1, on_done, st);
    pthread_mutex_lock(&st->lock);
    st->calls++;
    pthread_mutex_unlock(&st->lock);
}

static void test_log(const char *root) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/log", root);
    ringlog_log_options o;
    small_options(&o);
    o.partitions = 2;
    ringlog_log *log = NULL;
    EXPECT_OK(ringlog_log_open(dir, &o, &log));
    CHECK(log != NULL);

    /* The directory is locked while open. */
    ringlog_log *second = NULL;
    EXPECT_STATUS(RINGLOG_ERR_LOCKED, ringlog_log_open(dir, &o, &second));
    CHECK(second == NULL);

    /* Appends: blocking, several records, a zero-length record. */
    ringlog_record three[3] = {rec("alpha"), rec("beta"), {NULL, 0}};
    uint64_t first = 99;
    EXPECT_OK(ringlog_log_append(log, 0, three, 3, &first));
    CHECK(first == 0);
    ringlog_record one = rec("gamma");
    EXPECT_OK(ringlog_log_append(log, 0, &one, 1, &first));
    CHECK(first == 3);
    EXPECT_OK(ringlog_log_append(log, 0, &one, 1, NULL)); /* out offset optional */
    EXPECT_OK(ringlog_log_append(log, 1, &one, 1, &first));
    CHECK(first == 0); /* partitions have their own offsets */

    /* Append misuse. */
    EXPECT_STATUS(RINGLOG_ERR_EMPTY_APPEND, ringlog_log_append(log, 0, three, 0, &first));
    EXPECT_STATUS(RINGLOG_ERR_NULL_POINTER, ringlog_log_append(log, 0, NULL, 1, &first));
    ringlog_record bad = {NULL, 5};
    EXPECT_STATUS(RINGLOG_ERR_NULL_POINTER, ringlog_log_append(log, 0, &bad, 1, &first));
    size_t big_len = 64 * 1024;
    uint8_t *big = calloc(1, big_len);
    CHECK(big != NULL);
    ringlog_record oversize = {big, big_len};
    EXPECT_STATUS(RINGLOG_ERR_OVERSIZE, ringlog_log_append(log, 0, &oversize, 1, &first));
    ringlog_record absurd = {big, SIZE_MAX / 2}; /* never read: refused by size first */
    EXPECT_STATUS(RINGLOG_ERR_OVERSIZE, ringlog_log_append(log, 0, &absurd, 1, &first));
    oversize.len = 60 * 1024; /* fits */
    EXPECT_OK(ringlog_log_append(log, 1, &oversize, 1, &first));
    CHECK(first == 1);
    free(big);
    EXPECT_STATUS(RINGLOG_ERR_UNKNOWN_PARTITION, ringlog_log_append(log, 2, &one, 1, &first));
    EXPECT_STATUS(RINGLOG_ERR_NULL_POINTER, ringlog_log_append(NULL, 0, &one, 1, &first));
    EXPECT_STATUS(RINGLOG_ERR_BAD_HANDLE,
                  ringlog_log_append((ringlog_log *)0xdeadbeef, 0, &one, 1, &first));
    EXPECT_STATUS(RINGLOG_ERR_BAD_HANDLE,
                  ringlog_log_append((ringlog_log *)((uintptr_t)log + 1), 0, &one, 1, &first));

    /* Reads. */
    char got[32][64];
    size_t n = read_all(log, 0, 0, got, 32);
    CHECK(n == 5);
    CHECK(strcmp(got[0], "alpha") == 0 && strcmp(got[1], "beta") == 0);
    CHECK(strcmp(got[2], "") == 0 && strcmp(got[3], "gamma") == 0);
    n = read_all(log, 0, 3, got, 32); /* from the middle of a batch */
    CHECK(n == 2 && strcmp(got[0], "gamma") == 0);

    uint8_t buf[64];
    size_t len = 7;
    uint64_t next = 7;
    EXPECT_OK(ringlog_log_read(log, 0, 5, buf, sizeof buf, &len, &next)); /* at the end */
    CHECK(len == 0 && next == 5);
    EXPECT_STATUS(RINGLOG_ERR_OFFSET_OUT_OF_RANGE,
                  ringlog_log_read(log, 0, 6, buf, sizeof buf, &len, &next)); /* past it */
    EXPECT_STATUS(RINGLOG_ERR_OFFSET_OUT_OF_RANGE,
                  ringlog_log_read(log, 0, UINT64_MAX, buf, sizeof buf, &len, &next));
    EXPECT_STATUS(RINGLOG_ERR_BUFFER_TOO_SMALL,
                  ringlog_log_read(log, 0, 0, buf, 6, &len, &next)); /* "alpha" needs 9 */
    CHECK(len == 9 && next == 0);
    EXPECT_STATUS(RINGLOG_ERR_BUFFER_TOO_SMALL, ringlog_log_read(log, 0, 0, NULL, 0, &len, &next));
    CHECK(len == 9);
    EXPECT_OK(ringlog_log_read(log, 0, 0, buf, 9, &len, &next)); /* exactly one record */
    CHECK(len == 9 && next == 1);
    EXPECT_STATUS(RINGLOG_ERR_NULL_POINTER, ringlog_log_read(log, 0, 0, NULL, 10, &len, &next));
    EXPECT_STATUS(RINGLOG_ERR_NULL_POINTER, ringlog_log_read(log, 0, 0, buf, 10, NULL, &next));
    EXPECT_STATUS(RINGLOG_ERR_NULL_POINTER, ringlog_log_read(log, 0, 0, buf, 10, &len, NULL));
    EXPECT_STATUS(RINGLOG_ERR_UNKNOWN_PARTITION,
                  ringlog_log_read(log, 9, 0, buf, sizeof buf, &len, &next));
    EXPECT_STATUS(RINGLOG_ERR_BAD_HANDLE,
                  ringlog_log_read((ringlog_log *)0x42, 0, 0, buf, sizeof buf, &len, &next));

    /* Async appends, then sync. */
    struct async_state st;
    memset(&st, 0, sizeof st);
    pthread_mutex_init(&st.lock, NULL);
    st.log = log;
    for (int i = 0; i < 10; i++) {
        ringlog_record r = rec("async");
        EXPECT_OK(ringlog_log_append_async(log, 0, &r, 1, on_done, &st));
    }
    EXPECT_STATUS(RINGLOG_ERR_NULL_POINTER, ringlog_log_append_async(log, 0, &one, 1, NULL, &st));
    EXPECT_STATUS(RINGLOG_ERR_EMPTY_APPEND, ringlog_log_append_async(log, 0, &one, 0, on_done, &st));
    EXPECT_STATUS(RINGLOG_ERR_BAD_HANDLE,
                  ringlog_log_append_async((ringlog_log *)0x42, 0, &one, 1, on_done, &st));
    EXPECT_OK(ringlog_log_sync(log));
    pthread_mutex_lock(&st.lock);
    CHECK(st.calls == 10 && st.ok == 10); /* every callback ran before sync returned */
    for (int i = 0; i < 10; i++) {
        CHECK(st.offsets[i] == 5 + (uint64_t)i); /* one partition: in order */
    }
    pthread_mutex_unlock(&st.lock);

    /* A blocking call from a callback is refused; a non-blocking one works. */
    st.calls = 0;
    st.ok = 0;
    EXPECT_OK(ringlog_log_append_async(log, 0, &one, 1, nested_done, &st));
    EXPECT_OK(ringlog_log_sync(log));
    EXPECT_OK(ringlog_log_sync(log)); /* the nested async append, accepted before this sync */
    pthread_mutex_lock(&st.lock);
    CHECK(st.nested_status == RINGLOG_ERR_WOULD_DEADLOCK);
    CHECK(st.nested_async_status == RINGLOG_OK);
    CHECK(st.calls == 2 && st.ok == 1);
    pthread_mutex_unlock(&st.lock);
    EXPECT_STATUS(RINGLOG_ERR_NULL_POINTER, ringlog_log_sync(NULL));

    /* Close; then every use of the handle is a status. */
    EXPECT_OK(ringlog_log_close(log));
    EXPECT_STATUS(RINGLOG_ERR_BAD_HANDLE, ringlog_log_close(log));
    EXPECT_STATUS(RINGLOG_ERR_BAD_HANDLE, ringlog_log_append(log, 0, &one, 1, &first));
    EXPECT_STATUS(RINGLOG_ERR_BAD_HANDLE, ringlog_log_append_async(log, 0, &one, 1, on_done, &st));
    EXPECT_STATUS(RINGLOG_ERR_BAD_HANDLE, ringlog_log_read(log, 0, 0, buf, sizeof buf, &len, &next));
    EXPECT_STATUS(RINGLOG_ERR_BAD_HANDLE, ringlog_log_sync(log));
    EXPECT_STATUS(RINGLOG_ERR_NULL_POINTER, ringlog_log_close(NULL));

    /* Reopen: every acknowledged record is there, and the old handle stays dead. */
    ringlog_log *again = NULL;
    EXPECT_OK(ringlog_log_open(dir, &o, &again));
    CHECK(again != log);
    EXPECT_STATUS(RINGLOG_ERR_BAD_HANDLE, ringlog_log_sync(log));
    n = read_all(again, 0, 0, got, 32);
    CHECK(n == 17); /* 5 + 10 async + 1 nested_done trigger + 1 nested async */
    CHECK(strcmp(got[3], "gamma") == 0 && strcmp(got[5], "async") == 0);
    /* Partition 1: "gamma" then the 60 KiB record, which needs a bigger buffer. */
    EXPECT_OK(ringlog_log_read(again, 1, 0, buf, sizeof buf, &len, &next));
    CHECK(len == 4 + 5 && next == 1);
    EXPECT_STATUS(RINGLOG_ERR_BUFFER_TOO_SMALL,
                  ringlog_log_read(again, 1, 1, buf, sizeof buf, &len, &next));
    CHECK(len == 4 + 60 * 1024 && next == 1);
    EXPECT_OK(ringlog_log_append(again, 0, &one, 1, &first));
    CHECK(first == 17);
    EXPECT_OK(ringlog_log_close(again));
    pthread_mutex_destroy(&st.lock);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s <scratch dir> [tmpfs dir|-]\n", argv[0]);
        return 2;
    }
    const char *tmpfs = argc > 2 && strcmp(argv[2], "-") != 0 ? argv[2] : NULL;
    test_process_wide_functions();
    test_options();
    test_open_misuse(argv[1], tmpfs);
    test_log(argv[1]);
    printf("log_test: PASS\n");
    return 0;
}
