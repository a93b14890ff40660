/*
 * A 3-node replicated group in one process: three ringlog_node_start calls with three
 * config files (each node listens on its own ports and keeps its own data dir, exactly as
 * three `ringlog serve` processes would). Waits for a leader of partition 0, appends with
 * acks=quorum, reads back from the leader (linearizable) and from every follower (replica
 * committed), transfers leadership and appends through the new leader, then stops the nodes.
 *
 *   ./replicated_group node1.toml node2.toml node3.toml
 */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "ringlog.h"

#define NODES 3
#define WAIT_MS 30000

static int fail(const char *what, ringlog_status status) {
    fprintf(stderr, "%s: %s: %s\n", what, ringlog_status_str(status), ringlog_last_error_message());
    return 1;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Index of the node that leads partition 0 (optionally not `exclude`), or -1 after WAIT_MS. */
static int wait_leader(ringlog_node **nodes, int exclude) {
    for (int waited = 0; waited < WAIT_MS; waited += 20) {
        for (int i = 0; i < NODES; i++) {
            ringlog_partition_status st;
            st.size = sizeof st;
            if (i != exclude && ringlog_node_status(nodes[i], 0, &st) == RINGLOG_OK &&
                st.role == RINGLOG_ROLE_LEADER) {
                printf("node %u leads partition 0 in term %llu\n", st.node_id,
                       (unsigned long long)st.term);
                return i;
            }
        }
        sleep_ms(20);
    }
    return -1;
}

/* Reads `count` records from `first` on node `i`, waiting until they are committed there. */
static int read_back(ringlog_node *node, uint32_t consistency, uint64_t first, int count,
                     const char *const *expected) {
    uint8_t buf[4096];
    uint64_t offset = first;
    int seen = 0;
    for (int waited = 0; seen < count && waited < WAIT_MS; waited += 10) {
        size_t len = 0;
        uint64_t next = 0;
        ringlog_status s = ringlog_node_read(node, 0, offset, consistency, 100, buf, sizeof buf, &len, &next);
        if (s != RINGLOG_OK) return fail("read", s);
        size_t pos = 0;
        for (; offset < next; offset++, seen++) {
            uint32_t n;
            memcpy(&n, buf + pos, 4);
            if (seen >= count || n != strlen(expected[seen]) || memcmp(buf + pos + 4, expected[seen], n) != 0) {
                fprintf(stderr, "record %llu differs\n", (unsigned long long)offset);
                return 1;
            }
            pos += 4 + n;
        }
    }
    if (seen != count) {
        fprintf(stderr, "only %d of %d records committed in time\n", seen, count);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != NODES + 1) {
        fprintf(stderr, "usage: %s node1.toml node2.toml node3.toml\n", argv[0]);
        return 2;
    }
    ringlog_node *nodes[NODES] = {0};
    for (int i = 0; i < NODES; i++) {
        ringlog_status s = ringlog_node_start(argv[i + 1], &nodes[i]);
        if (s != RINGLOG_OK) return fail("node_start", s);
    }
    int leader = wait_leader(nodes, -1);
    if (leader < 0) {
        fprintf(stderr, "no leader elected\n");
        return 1;
    }

    const char *values[] = {"replicated", "to a", "majority"};
    ringlog_record records[3];
    for (int i = 0; i < 3; i++) {
        records[i].data = (const uint8_t *)values[i];
        records[i].len = strlen(values[i]);
    }
    uint64_t first = 0, commit = 0;
    ringlog_status s = ringlog_node_append(nodes[leader], 0, RINGLOG_ACKS_QUORUM, records, 3, &first, &commit);
    if (s != RINGLOG_OK) return fail("append", s);
    printf("committed offsets %llu..%llu (commit offset %llu)\n", (unsigned long long)first,
           (unsigned long long)(first + 2), (unsigned long long)commit);

    /* A follower refuses appends and names the leader. */
    int follower = (leader + 1) % NODES;
    s = ringlog_node_append(nodes[follower], 0, RINGLOG_ACKS_QUORUM, records, 1, NULL, NULL);
    if (s != RINGLOG_ERR_NOT_LEADER) return fail("append on a follower", s);
    printf("follower: %s\n", ringlog_last_error_message());

    if (read_back(nodes[leader], RINGLOG_READ_LINEARIZABLE, first, 3, values)) return 1;
    for (int i = 0; i < NODES; i++) {
        if (read_back(nodes[i], RINGLOG_READ_REPLICA_COMMITTED, first, 3, values)) return 1;
    }
    printf("every replica returns the committed records\n");

    /* Rolling-restart style hand-off. */
    ringlog_partition_status target;
    target.size = sizeof target;
    s = ringlog_node_status(nodes[follower], 0, &target);
    if (s != RINGLOG_OK) return fail("status", s);
    s = ringlog_node_transfer_leadership(nodes[leader], 0, target.node_id);
    if (s != RINGLOG_OK) return fail("transfer_leadership", s);
    int new_leader = wait_leader(nodes, leader);
    if (new_leader < 0) {
        fprintf(stderr, "leadership did not move\n");
        return 1;
    }
    const char *more[] = {"after transfer"};
    records[0].data = (const uint8_t *)more[0];
    records[0].len = strlen(more[0]);
    uint64_t first2 = 0;
    s = ringlog_node_append(nodes[new_leader], 0, RINGLOG_ACKS_QUORUM, records, 1, &first2, NULL);
    if (s != RINGLOG_OK) return fail("append after transfer", s);
    if (first2 != first + 3) {
        fprintf(stderr, "offset %llu after transfer, expected %llu\n", (unsigned long long)first2,
                (unsigned long long)(first + 3));
        return 1;
    }
    if (read_back(nodes[new_leader], RINGLOG_READ_LINEARIZABLE, first2, 1, more)) return 1;

    for (int i = 0; i < NODES; i++) {
        s = ringlog_node_stop(nodes[i], i == 0 ? RINGLOG_STOP_GRACEFUL : RINGLOG_STOP_IMMEDIATE);
        if (s != RINGLOG_OK) return fail("node_stop", s);
    }
    printf("replicated_group: ok\n");
    return 0;
}
