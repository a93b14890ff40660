/*
 * C test of the node API: every function and misuse (NULL pointers, bad/closed/foreign
 * handles, double stop, bad config, bad acks/consistency/mode, bad struct size, zero-length
 * and oversize appends, reads past the end, too small buffers), on a single-node group.
 *
 * Usage: node_test <scratch dir> <node.toml> <invalid.toml> <tmpfs-node.toml or "-">
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void wait_leader(ringlog_node *node) {
    for (int waited = 0; waited < 30000; waited += 20) {
        ringlog_partition_status st;
        st.size = sizeof st;
        EXPECT_OK(ringlog_node_status(node, 0, &st));
        if (st.role == RINGLOG_ROLE_LEADER) {
            CHECK(st.leader_id == st.node_id && st.term >= 1);
            return;
        }
        sleep_ms(20);
    }
    fprintf(stderr, "no leader within 30 s\n");
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s <scratch> <node.toml> <invalid.toml> <tmpfs.toml|->\n", argv[0]);
        return 2;
    }
    ringlog_node *node = (ringlog_node *)0x1;
    uint8_t buf[256];
    size_t len = 0;
    uint64_t next = 0, first = 0, commit = 0;
    ringlog_record one = {(const uint8_t *)"x", 1};
    ringlog_partition_status st;
    st.size = sizeof st;

    /* Misuse before any node exists. */
    EXPECT_STATUS(RINGLOG_ERR_NULL_POINTER, ringlog_node_start(argv[2], NULL));
    EXPECT_STATUS(RINGLOG_ERR_NULL_POINTER, ringlog_node_start(NULL, &node));
    CHECK(node == NULL);
    EXPECT_STATUS(RINGLOG_ERR_CONFIG, ringlog_node_start("/nonexistent/ringlog.toml", &node));
    EXPECT_STATUS(RINGLOG_ERR_CONFIG, ringlog_node_start(argv[3], &node));
    CHECK(strstr(ringlog_last_error_message(), "node_id") != NULL);
    if (strcmp(argv[4], "-") != 0) {
        EXPECT_STATUS(RINGLOG_ERR_HOST_UNSUPPORTED, ringlog_node_start(argv[4], &node));
        CHECK(node == NULL);
    }
    EXPECT_STATUS(RINGLOG_ERR_NULL_POINTER, ringlog_node_append(NULL, 0, RINGLOG_ACKS_QUORUM, &one, 1, &first, &commit));
    EXPECT_STATUS(RINGLOG_ERR_BAD_HANDLE, ringlog_node_append((ringlog_node *)0x77, 0, RINGLOG_ACKS_QUORUM, &one, 1, &first, &commit));
    EXPECT_STATUS(RINGLOG_ERR_BAD_HANDLE, ringlog_node_read((ringlog_node *)0x77, 0, 0, RINGLOG_READ_LINEARIZABLE, 0, buf, sizeof buf, &len, &next));
    EXPECT_STATUS(RINGLOG_ERR_BAD_HANDLE, ringlog_node_status((ringlog_node *)0x77, 0, &st));
    EXPECT_STATUS(RINGLOG_ERR_BAD_HANDLE, ringlog_node_transfer_leadership((ringlog_node *)0x77, 0, 2));
    EXPECT_STATUS(RINGLOG_ERR_BAD_HANDLE, ringlog_node_stop((ringlog_node *)0x77, RINGLOG_STOP_GRACEFUL));
    EXPECT_STATUS(RINGLOG_ERR_NULL_POINTER, ringlog_node_stop(NULL, RINGLOG_STOP_GRACEFUL));

    /* A running single-node group. */
    EXPECT_OK(ringlog_node_start(argv[2], &node));
    CHECK(node != NULL);
    ringlog_node *twin = NULL; /* same data dir and ports: refused, not a crash */
    ringlog_status twin_status = ringlog_node_start(argv[2], &twin);
    CHECK(twin_status != RINGLOG_OK && twin == NULL);
    wait_leader(node);

    ringlog_record three[3] = {{(const uint8_t *)"a", 1}, {NULL, 0}, {(const uint8_t *)"ccc", 3}};
    EXPECT_OK(ringlog_node_append(node, 0, RINGLOG_ACKS_QUORUM, three, 3, &first, &commit));
    CHECK(commit >= first + 3);
    uint64_t second = 0;
    EXPECT_OK(ringlog_node_append(node, 0, RINGLOG_ACKS_LEADER, &one, 1, &second, NULL));
    CHECK(second == first + 3);
    EXPECT_OK(ringlog_node_append(node, 0, RINGLOG_ACKS_NONE, &one, 1, NULL, NULL));
    EXPECT_STATUS(RINGLOG_ERR_INVALID_ARGUMENT, ringlog_node_append(node, 0, 7, &one, 1, NULL, NULL));
    EXPECT_STATUS(RINGLOG_ERR_EMPTY_APPEND, ringlog_node_append(node, 0, RINGLOG_ACKS_QUORUM, &one, 0, NULL, NULL));
    EXPECT_STATUS(RINGLOG_ERR_NULL_POINTER, ringlog_node_append(node, 0, RINGLOG_ACKS_QUORUM, NULL, 1, NULL, NULL));
    uint8_t *big = calloc(1, 70000);
    CHECK(big != NULL);
    ringlog_record oversize = {big, 70000}; /* batch_size_max is 64 KiB */
    EXPECT_STATUS(RINGLOG_ERR_OVERSIZE, ringlog_node_append(node, 0, RINGLOG_ACKS_QUORUM, &oversize, 1, NULL, NULL));
    free(big);
    EXPECT_STATUS(RINGLOG_ERR_UNKNOWN_PARTITION, ringlog_node_append(node, 99, RINGLOG_ACKS_QUORUM, &one, 1, NULL, NULL));

    /* Reads. */
    EXPECT_OK(ringlog_node_read(node, 0, first, RINGLOG_READ_LINEARIZABLE, 1000, buf, sizeof buf, &len, &next));
    CHECK(len >= (4 + 1) + 4 + (4 + 3) + (4 + 1) && next >= first + 4); /* + the acks=none one */
    CHECK(memcmp(buf, "\1\0\0\0a\0\0\0\0\3\0\0\0ccc", 16) == 0);
    EXPECT_OK(ringlog_node_read(node, 0, first + 2, RINGLOG_READ_REPLICA_COMMITTED, 1000, buf, sizeof buf, &len, &next));
    CHECK(len >= 4 + 3 + 4 + 1 && next >= first + 4); /* from inside a batch */
    CHECK(memcmp(buf, "\3\0\0\0ccc\1\0\0\0x", 12) == 0);
    EXPECT_STATUS(RINGLOG_ERR_BUFFER_TOO_SMALL, ringlog_node_read(node, 0, first, RINGLOG_READ_LINEARIZABLE, 0, buf, 3, &len, &next));
    CHECK(len == 5);
    EXPECT_STATUS(RINGLOG_ERR_BUFFER_TOO_SMALL, ringlog_node_read(node, 0, first, RINGLOG_READ_LINEARIZABLE, 0, NULL, 0, &len, &next));
    EXPECT_STATUS(RINGLOG_ERR_OFFSET_OUT_OF_RANGE, ringlog_node_read(node, 0, UINT64_MAX / 2, RINGLOG_READ_LINEARIZABLE, 0, buf, sizeof buf, &len, &next));
    EXPECT_STATUS(RINGLOG_ERR_INVALID_ARGUMENT, ringlog_node_read(node, 0, 0, 9, 0, buf, sizeof buf, &len, &next));
    EXPECT_STATUS(RINGLOG_ERR_NULL_POINTER, ringlog_node_read(node, 0, 0, RINGLOG_READ_LINEARIZABLE, 0, buf, sizeof buf, NULL, &next));
    EXPECT_STATUS(RINGLOG_ERR_NULL_POINTER, ringlog_node_read(node, 0, 0, RINGLOG_READ_LINEARIZABLE, 0, buf, sizeof buf, &len, NULL));
    EXPECT_STATUS(RINGLOG_ERR_NULL_POINTER, ringlog_node_read(node, 0, 0, RINGLOG_READ_LINEARIZABLE, 0, NULL, 10, &len, &next));
    EXPECT_STATUS(RINGLOG_ERR_UNKNOWN_PARTITION, ringlog_node_read(node, 99, 0, RINGLOG_READ_LINEARIZABLE, 0, buf, sizeof buf, &len, &next));

    /* Status. */
    EXPECT_OK(ringlog_node_status(node, 0, &st));
    CHECK(st.role == RINGLOG_ROLE_LEADER && st.commit_offset >= first + 4);
    CHECK(st.durable_index >= 1 && st.commit_index >= 1 && st.last_index >= st.commit_index);
    ringlog_partition_status small;
    small.size = 8;
    EXPECT_STATUS(RINGLOG_ERR_BAD_STRUCT_SIZE, ringlog_node_status(node, 0, &small));
    struct {
        ringlog_partition_status base;
        uint64_t future;
    } bigger;
    bigger.base.size = sizeof bigger;
    bigger.future = 0xabcd;
    EXPECT_OK(ringlog_node_status(node, 0, &bigger.base));
    CHECK(bigger.future == 0xabcd); /* nothing written past what the library knows */
    EXPECT_STATUS(RINGLOG_ERR_NULL_POINTER, ringlog_node_status(node, 0, NULL));
    EXPECT_STATUS(RINGLOG_ERR_UNKNOWN_PARTITION, ringlog_node_status(node, 99, &st));

    /* Transfer to a node that is not in the group: refused, the node keeps leading. */
    ringlog_status transfer = ringlog_node_transfer_leadership(node, 0, 42);
    CHECK(transfer == RINGLOG_ERR_REJECTED || transfer == RINGLOG_ERR_INVALID_ARGUMENT);
    EXPECT_STATUS(RINGLOG_ERR_UNKNOWN_PARTITION, ringlog_node_transfer_leadership(node, 99, 1));

    /* A node handle is not a log handle. */
    EXPECT_STATUS(RINGLOG_ERR_BAD_HANDLE, ringlog_log_sync((ringlog_log *)node));

    /* Stop: bad mode keeps the node; then the handle is dead. */
    EXPECT_STATUS(RINGLOG_ERR_INVALID_ARGUMENT, ringlog_node_stop(node, 5));
    EXPECT_OK(ringlog_node_status(node, 0, &st));
    EXPECT_OK(ringlog_node_stop(node, RINGLOG_STOP_GRACEFUL));
    EXPECT_STATUS(RINGLOG_ERR_BAD_HANDLE, ringlog_node_stop(node, RINGLOG_STOP_GRACEFUL));
    EXPECT_STATUS(RINGLOG_ERR_BAD_HANDLE, ringlog_node_status(node, 0, &st));
    EXPECT_STATUS(RINGLOG_ERR_BAD_HANDLE, ringlog_node_append(node, 0, RINGLOG_ACKS_QUORUM, &one, 1, NULL, NULL));
    EXPECT_STATUS(RINGLOG_ERR_BAD_HANDLE, ringlog_node_read(node, 0, 0, RINGLOG_READ_LINEARIZABLE, 0, buf, sizeof buf, &len, &next));
    EXPECT_STATUS(RINGLOG_ERR_BAD_HANDLE, ringlog_node_transfer_leadership(node, 0, 1));

    /* Restart on the same data: the records are still there. */
    EXPECT_OK(ringlog_node_start(argv[2], &node));
    wait_leader(node);
    EXPECT_OK(ringlog_node_read(node, 0, first, RINGLOG_READ_LINEARIZABLE, 1000, buf, sizeof buf, &len, &next));
    CHECK(next >= first + 4 && memcmp(buf, "\1\0\0\0a", 5) == 0);
    EXPECT_OK(ringlog_node_stop(node, RINGLOG_STOP_IMMEDIATE));
    printf("node_test: PASS\n");
    return 0;
}
