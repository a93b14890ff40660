/*
 * A ringlog cluster client in C: produce three records to partition 0 with acks=quorum,
 * then consume them back, and print the partitions' leaders.
 *
 *   cc cluster_client.c $(pkg-config --cflags --libs ringlog) -o cluster_client
 *   ./cluster_client 127.0.0.1:7101,127.0.0.1:7201,127.0.0.1:7301
 *
 * (Install libringlog and ringlog.pc first: capi/README.md, "Install".)
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ringlog.h>

static int fail(const char *what, ringlog_status status) {
    fprintf(stderr, "%s: %s (%s)\n", what, ringlog_status_str((int)status),
            ringlog_last_error_message());
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s HOST:PORT[,HOST:PORT...]\n", argv[0]);
        return 2;
    }
    if (ringlog_version_number() / 1000000 != RINGLOG_VERSION_MAJOR) {
        fprintf(stderr, "libringlog %s does not match ringlog.h %s\n", ringlog_version(),
                RINGLOG_VERSION_STRING);
        return 1;
    }

    ringlog_client_options options;
    ringlog_client_options_init(&options, sizeof options);
    options.request_timeout_ms = 30000;
    /* TLS: options.tls_ca_file = "ca.pem"; (and tls_cert_file/tls_key_file if required) */
    ringlog_client *client = NULL;
    ringlog_status status = ringlog_client_connect(argv[1], &options, &client);
    if (status != RINGLOG_OK) return fail("connect", status);

    const char *values[] = {"first", "second", "third"};
    ringlog_record records[3];
    for (int i = 0; i < 3; i++) {
        records[i].data = (const uint8_t *)values[i];
        records[i].len = strlen(values[i]);
    }
    uint64_t base = 0;
    status = ringlog_client_produce(client, 0, RINGLOG_ACKS_QUORUM, records, 3, &base, NULL);
    if (status == RINGLOG_ERR_INDETERMINATE) {
        /* The records may or may not be in the log: check before producing them again. */
        return fail("produce (outcome unknown)", status);
    }
    if (status != RINGLOG_OK) return fail("produce", status);
    printf("produced 3 records at offsets %" PRIu64 "..%" PRIu64 "\n", base, base + 2);

    uint8_t buf[4096];
    size_t len = 0;
    uint64_t next = 0;
    status = ringlog_client_fetch(client, 0, base, RINGLOG_READ_LINEARIZABLE, 1000, buf,
                                  sizeof buf, &len, &next);
    if (status != RINGLOG_OK) return fail("fetch", status);
    uint64_t offset = base;
    for (size_t at = 0; at + 4 <= len && offset < base + 3; offset++) {
        uint32_t n = (uint32_t)buf[at] | (uint32_t)buf[at + 1] << 8 | (uint32_t)buf[at + 2] << 16 |
                     (uint32_t)buf[at + 3] << 24;
        printf("offset %" PRIu64 ": %.*s\n", offset, (int)n, (const char *)buf + at + 4);
        at += 4 + n;
    }

    size_t count = 0;
    ringlog_client_metadata(client, NULL, sizeof(ringlog_partition_info), 0, &count);
    ringlog_partition_info *infos = calloc(count ? count : 1, sizeof *infos);
    if (infos == NULL) return 1;
    status = ringlog_client_metadata(client, infos, sizeof *infos, count, &count);
    if (status != RINGLOG_OK) return fail("metadata", status);
    for (size_t i = 0; i < count; i++)
        printf("partition %u: leader %u at %s\n", infos[i].partition, infos[i].leader_id,
               infos[i].leader_address[0] ? infos[i].leader_address : "(none yet)");
    free(infos);

    ringlog_client_close(client);
    printf("cluster_client: ok\n");
    return 0;
}
