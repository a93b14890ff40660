/* Tiny assertion helpers shared by the C tests (no framework: plain exit codes). */
#ifndef RINGLOG_TEST_CHECK_H
#define RINGLOG_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#include "ringlog.h"

#define CHECK(cond)                                                                    \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n  last error: %s\n", __FILE__,    \
                    __LINE__, #cond, ringlog_last_error_message());                    \
            exit(1);                                                                   \
        }                                                                              \
    } while (0)

/* Checks that `call` returns `expected`; prints both statuses and the last error if not. */
#define EXPECT_STATUS(expected, call)                                                  \
    do {                                                                               \
        ringlog_status got_ = (call);                                                  \
        if (got_ != (expected)) {                                                      \
            fprintf(stderr, "%s:%d: %s\n  returned %d (%s), expected %d (%s)\n  last error: %s\n", \
                    __FILE__, __LINE__, #call, (int)got_, ringlog_status_str((int)got_), \
                    (int)(expected), ringlog_status_str((int)(expected)),               \
                    ringlog_last_error_message());                                     \
            exit(1);                                                                   \
        }                                                                              \
    } while (0)

#define EXPECT_OK(call) EXPECT_STATUS(RINGLOG_OK, call)

#endif
