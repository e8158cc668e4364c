/*
 * The C client test: drives libsqueeze through include/squeeze.h exactly as a toolstack would,
 * with the small simulated host of host.h behind sqz_io, and checks outcomes and every error
 * path the header documents. Sizes are KiB; GiB is 1 << 20 KiB.
 */
#define _POSIX_C_SOURCE 200809L /* mkdtemp */
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "host.h"
#include "squeeze.h"

#define MIB ((int64_t)1 << 10)
#define GIB ((int64_t)1 << 20)
#define TIB ((int64_t)1 << 30)

static unsigned passed, failed;

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        if (cond) {                                                                            \
            passed++;                                                                          \
        } else {                                                                               \
            failed++;                                                                          \
            printf("FAIL %s:%d: %s (last error: %s)\n", __FILE__, __LINE__, #cond,           \
                   sqz_last_error_message());                                                  \
        }                                                                                      \
    } while (0)

#define CHECK_STATUS(call, want)                                                               \
    do {                                                                                       \
        sqz_status got_ = (call);                                                              \
        if (got_ == (want)) {                                                                  \
            passed++;                                                                          \
        } else {                                                                               \
            failed++;                                                                          \
            printf("FAIL %s:%d: %s returned %s, wanted %s (%s)\n", __FILE__, __LINE__, #call, \
                   sqz_status_name(got_), sqz_status_name(want), sqz_last_error_message());    \
        }                                                                                      \
    } while (0)

static bool message_has(const char *needle) {
    return strstr(sqz_last_error_message(), needle) != NULL;
}

/* Two guests of 2 GiB that may each shrink to 1 GiB, balloons moving 256 MiB/s, nothing free. */
static void two_guest_host(struct host *h) {
    host_init(h, 0, 0);
    host_add(h, 1, GIB, 2 * GIB, 2 * GIB, 256 * MIB);
    host_add(h, 2, GIB, 2 * GIB, 2 * GIB, 256 * MIB);
}

static void test_version(void) {
    char want[32];
    snprintf(want, sizeof want, "%d.%d.%d", SQZ_VERSION_MAJOR, SQZ_VERSION_MINOR,
             SQZ_VERSION_PATCH);
    CHECK(strcmp(sqz_version(), want) == 0);
    CHECK(SQZ_VERSION_NUMBER ==
          ((SQZ_VERSION_MAJOR << 16) | (SQZ_VERSION_MINOR << 8) | SQZ_VERSION_PATCH));
    CHECK(sqz_version_number() == SQZ_VERSION_NUMBER);
#if SQZ_VERSION_NUMBER < 0x000100
#error "the packed version is usable in #if"
#endif
    CHECK(strcmp(sqz_status_name(SQZ_ERR_BACKEND), "SQZ_ERR_BACKEND") == 0);
    CHECK(strcmp(sqz_status_name(77), "SQZ_ERR_UNKNOWN") == 0);
}

static void test_contract_values(void) {
    /* The contract's numbers and layouts are fixed. */
    CHECK(SQZ_OK == 0 && SQZ_ERR_INVALID_ARGUMENT == 1 && SQZ_ERR_INVALID_MEMORY_VALUE == 2);
    CHECK(SQZ_ERR_CANNOT_FREE_THIS_MUCH_MEMORY == 3 && SQZ_ERR_DOMAINS_REFUSED_TO_COOPERATE == 4);
    CHECK(SQZ_ERR_UNKNOWN_RESERVATION == 5 && SQZ_ERR_NO_RESERVATION == 6);
    CHECK(SQZ_ERR_BACKEND == 7 && SQZ_ERR_UNSUPPORTED == 8 && SQZ_ERR_BUFFER_TOO_SMALL == 9);
    CHECK(SQZ_ERR_INTERNAL == 10);
    CHECK(SQZ_FIST_DISABLE_TWO_PHASE_TARGET_SETS == 1u);
    CHECK(SQZ_FIST_DISABLE_INACCURACY_COMPENSATION == 2u);
    CHECK(offsetof(sqz_domain, domid) == 0 && offsetof(sqz_domain, can_balloon) == 4);
    CHECK(offsetof(sqz_domain, dynamic_min_kib) == 8 && offsetof(sqz_domain, inaccuracy_kib) == 48);
    CHECK(offsetof(sqz_io, struct_size) == 0 && offsetof(sqz_io, ctx) == 8);
    CHECK(offsetof(sqz_io, make_host) == 16 && offsetof(sqz_io, now) == 48);
    CHECK(offsetof(sqz_io, target_host_free_mem_kib) == 56);
    CHECK(offsetof(sqz_io, free_memory_tolerance_kib) == 64);
}

static void test_change_host_free_memory(void) {
    struct host h;
    two_guest_host(&h);
    sqz_io io = host_io(&h);
    CHECK_STATUS(sqz_change_host_free_memory(&io, NULL, GIB, NULL, NULL), SQZ_OK);
    /* Each guest gives up about half of its 1 GiB range: 512 MiB each, 1 GiB in all. */
    CHECK(h.free_kib >= GIB);
    for (size_t i = 0; i < 2; i++) {
        sqz_domain *d = &h.guests[i].d;
        CHECK(d->target_kib >= d->dynamic_min_kib && d->target_kib <= d->dynamic_max_kib);
        CHECK(llabs(d->target_kib - (GIB + GIB / 2)) <= 16);
    }
    CHECK(!h.allocated_beyond_free);
    CHECK(strcmp(sqz_last_error_message(), "") == 0);
    CHECK(sqz_last_error_status() == SQZ_OK);
}

static bool at_least_768_mib(void *ctx, int64_t free_kib) {
    int *calls = ctx;
    (*calls)++;
    return free_kib >= 768 * MIB;
}

static void test_success_callback(void) {
    struct host h;
    two_guest_host(&h);
    sqz_io io = host_io(&h);
    int calls = 0;
    /* Aiming at 1 GiB but content with 768 MiB. */
    CHECK_STATUS(sqz_change_host_free_memory(&io, NULL, GIB, at_least_768_mib, &calls), SQZ_OK);
    CHECK(calls >= 1);
    CHECK(h.free_kib >= 768 * MIB);
}

static void test_free_memory_range_and_balance(void) {
    struct host h;
    two_guest_host(&h);
    sqz_io io = host_io(&h);
    int64_t got = -1;
    CHECK_STATUS(sqz_free_memory_range(&io, NULL, 512 * MIB, GIB, &got), SQZ_OK);
    CHECK(got >= 512 * MIB && got <= GIB);
    CHECK(h.free_kib >= got);

    /* The new domain never came: balancing hands the memory back to the guests. */
    io.free_memory_tolerance_kib = MIB;
    bool unbalanced = false;
    CHECK_STATUS(sqz_is_host_memory_unbalanced(&io, NULL, &unbalanced), SQZ_OK);
    CHECK(unbalanced);
    CHECK_STATUS(sqz_balance_memory(&io, NULL), SQZ_OK);
    CHECK(h.free_kib < MIB + 16);
    CHECK(h.guests[0].d.memory_actual_kib > 2 * GIB - MIB);
    CHECK_STATUS(sqz_is_host_memory_unbalanced(&io, NULL, &unbalanced), SQZ_OK);
    CHECK(!unbalanced);
    CHECK(!h.allocated_beyond_free);
}

static void test_balance_ends_ok_when_nothing_more_can_be_balanced(void) {
    /* 1 GiB free, but both guests already sit at their dynamic-max of 2 GiB: nobody can take
       the memory. squeezed's balance_memory reports nothing, and neither do we. */
    struct host h;
    two_guest_host(&h);
    h.free_kib = GIB;
    sqz_io io = host_io(&h);
    io.free_memory_tolerance_kib = MIB;
    CHECK_STATUS(sqz_balance_memory(&io, NULL), SQZ_OK);
    CHECK(h.free_kib == GIB);
    /* Same with a stuck guest that should grow: balancing gives up on it quietly. */
    two_guest_host(&h);
    h.guests[0].d.memory_actual_kib = h.guests[0].d.target_kib = GIB;
    h.guests[0].rate_kib_per_s = 0;
    h.free_kib = GIB;
    io = host_io(&h);
    io.free_memory_tolerance_kib = MIB;
    CHECK_STATUS(sqz_balance_memory(&io, NULL), SQZ_OK);
    CHECK(h.guests[0].d.memory_actual_kib == GIB);
}

static void test_cannot_free(void) {
    struct host h;
    two_guest_host(&h);
    sqz_io io = host_io(&h);
    /* At dynamic-min both guests free 2 GiB less 16 KiB of inaccuracy: 3 GiB is too much. */
    CHECK_STATUS(sqz_change_host_free_memory(&io, NULL, 3 * GIB, NULL, NULL),
                 SQZ_ERR_CANNOT_FREE_THIS_MUCH_MEMORY);
    int64_t required = 0, free_kib = 0;
    for (int twice = 0; twice < 2; twice++) { /* the getters do not clear the record */
        CHECK_STATUS(sqz_last_error_cannot_free(&required, &free_kib), SQZ_OK);
        CHECK(required == 3 * GIB);
        CHECK(free_kib >= 2 * GIB - 16 && free_kib < 3 * GIB);
    }
    CHECK(sqz_last_error_domids(NULL, 0) == 0);
    CHECK(sqz_last_error_status() == SQZ_ERR_CANNOT_FREE_THIS_MUCH_MEMORY);
    CHECK(message_has("cannot free"));
}

static void test_refused_to_cooperate(void) {
    struct host h;
    two_guest_host(&h);
    h.guests[1].rate_kib_per_s = 0; /* domain 2's balloon driver is stuck */
    sqz_io io = host_io(&h);
    CHECK_STATUS(sqz_change_host_free_memory(&io, NULL, GIB + GIB / 2, NULL, NULL),
                 SQZ_ERR_DOMAINS_REFUSED_TO_COOPERATE);
    int32_t domids[4] = {-1, -1, -1, -1};
    CHECK(sqz_last_error_domids(domids, 4) == 1);
    CHECK(domids[0] == 2 && domids[1] == -1);
    CHECK(sqz_last_error_domids(domids, 0) == 1);
    /* Not a cannot-free error: asking for those details is refused and writes nothing. */
    int64_t required = 99;
    CHECK_STATUS(sqz_last_error_cannot_free(&required, NULL), SQZ_ERR_INVALID_ARGUMENT);
    CHECK(required == 99);
    /* It took at least the 5 s stuck-after time of simulated waiting to decide. */
    CHECK(h.time >= 5.0);
}

static void test_options(void) {
    sqz_options *o = NULL;
    CHECK_STATUS(sqz_options_new(&o), SQZ_OK);
    CHECK_STATUS(sqz_options_set_fistpoints(o, SQZ_FIST_DISABLE_TWO_PHASE_TARGET_SETS |
                                                   SQZ_FIST_DISABLE_INACCURACY_COMPENSATION),
                 SQZ_OK);
    CHECK_STATUS(sqz_options_set_fistpoints(o, 4), SQZ_ERR_UNSUPPORTED);
    CHECK_STATUS(sqz_options_set_fistpoints(NULL, 0), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_options_set_stuck_after(o, NAN), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_options_set_stuck_after(o, -1.0), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_options_set_stuck_after(o, 2.0), SQZ_OK);
    CHECK_STATUS(sqz_options_new(NULL), SQZ_ERR_INVALID_ARGUMENT);

    /* A shorter stuck-after time blames the stuck guest sooner: before 5 s have passed. */
    CHECK_STATUS(sqz_options_set_fistpoints(o, 0), SQZ_OK);
    struct host h;
    two_guest_host(&h);
    h.guests[1].rate_kib_per_s = 0;
    sqz_io io = host_io(&h);
    CHECK_STATUS(sqz_change_host_free_memory(&io, o, GIB + GIB / 2, NULL, NULL),
                 SQZ_ERR_DOMAINS_REFUSED_TO_COOPERATE);
    CHECK(h.time >= 2.0 && h.time < 5.0);
    sqz_options_free(o);
    sqz_options_free(NULL);
}

static void test_adaptive_policy(void) {
    /* 768 MiB free is wanted; each guest could give just under 1 GiB, but domain 2's driver is
       stuck. */
    struct host h;
    two_guest_host(&h);
    h.guests[1].rate_kib_per_s = 0;
    sqz_io io = host_io(&h);
    sqz_options *o = NULL;
    CHECK_STATUS(sqz_options_new(&o), SQZ_OK);
    CHECK_STATUS(sqz_options_set_policy(o, 7), SQZ_ERR_UNSUPPORTED);
    CHECK_STATUS(sqz_options_set_policy(NULL, SQZ_POLICY_ADAPTIVE), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_options_set_deadline(o, 0.0), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_options_set_deadline(o, NAN), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_options_set_deadline(o, 60.0), SQZ_OK);
    CHECK_STATUS(sqz_options_set_policy(o, SQZ_POLICY_ADAPTIVE), SQZ_OK);
    sqz_squeezer *s = NULL;
    CHECK_STATUS(sqz_squeezer_new(o, &s), SQZ_OK);
    sqz_options_free(o);
    /* Domain 1 alone covers the request once domain 2 has been given up on... */
    CHECK_STATUS(sqz_squeezer_change_host_free_memory(s, &io, 768 * MIB, NULL, NULL), SQZ_OK);
    CHECK(h.free_kib >= 768 * MIB);
    /* ...but not one for more than it holds above its dynamic-min: that fails at once, naming
       the stuck domain, instead of waiting for it. */
    double before = h.time;
    CHECK_STATUS(sqz_squeezer_change_host_free_memory(s, &io, GIB + GIB / 2, NULL, NULL),
                 SQZ_ERR_DOMAINS_REFUSED_TO_COOPERATE);
    int32_t blamed[2] = {-1, -1};
    CHECK(sqz_last_error_domids(blamed, 2) == 1 && blamed[0] == 2);
    CHECK(h.time - before < 5.0);
    sqz_cooperation c = {0};
    CHECK_STATUS(sqz_squeezer_cooperation(s, 2, &c), SQZ_OK);
    CHECK(c.score_s > 0.0 && c.concern == SQZ_CONCERN_NOT_MOVING);
    CHECK_STATUS(sqz_squeezer_cooperation(s, 1, &c), SQZ_OK);
    CHECK(c.concern == SQZ_CONCERN_NONE && !c.uncooperative);
    CHECK_STATUS(sqz_squeezer_cooperation(s, 9, &c), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_squeezer_cooperation(s, 1, NULL), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_squeezer_cooperation(NULL, 1, &c), SQZ_ERR_INVALID_ARGUMENT);
    /* Single steps run adaptive rounds too (tests/ffi_step_adaptive.rs). */
    CHECK_STATUS(sqz_squeezer_begin_operation(s, h.time), SQZ_OK);
    sqz_squeezer_free(s);
}

struct log_capture {
    int records, info_target_changes, above_debug;
    char last_target[64];
};

static void capture_log(void *ctx, int32_t level, const char *target, const char *message) {
    struct log_capture *c = ctx;
    c->records++;
    if (level <= SQZ_LOG_INFO) c->above_debug++;
    if (level == SQZ_LOG_INFO && strstr(message, "target") && strstr(message, "(free memory)"))
        c->info_target_changes++;
    snprintf(c->last_target, sizeof c->last_target, "%s", target);
}

static void test_log_callback(void) {
    struct log_capture c = {0};
    CHECK_STATUS(sqz_set_log_callback(capture_log, &c, 9), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_set_log_callback(capture_log, &c, SQZ_LOG_INFO), SQZ_OK);
    struct host h;
    two_guest_host(&h);
    sqz_io io = host_io(&h);
    CHECK_STATUS(sqz_change_host_free_memory(&io, NULL, GIB, NULL, NULL), SQZ_OK);
    /* Both guests got a new target, each logged once with its reason. */
    CHECK(c.info_target_changes == 2);
    CHECK(strncmp(c.last_target, "squeeze", 7) == 0);
    /* A balanced host writes nothing above debug level. */
    int before = c.above_debug;
    CHECK_STATUS(sqz_balance_memory(&io, NULL), SQZ_OK);
    CHECK_STATUS(sqz_balance_memory(&io, NULL), SQZ_OK);
    int after_first = c.above_debug;
    CHECK_STATUS(sqz_balance_memory(&io, NULL), SQZ_OK);
    CHECK(c.above_debug == after_first);
    (void)before;
    /* Off: nothing more arrives. */
    CHECK_STATUS(sqz_set_log_callback(NULL, NULL, SQZ_LOG_TRACE), SQZ_OK);
    int records = c.records;
    CHECK_STATUS(sqz_change_host_free_memory(&io, NULL, GIB + GIB / 2, NULL, NULL), SQZ_OK);
    CHECK(c.records == records);
}

static void test_bad_arguments(void) {
    struct host h;
    two_guest_host(&h);
    sqz_io io = host_io(&h);
    int64_t got = 0;
    bool flag;
    CHECK_STATUS(sqz_change_host_free_memory(NULL, NULL, GIB, NULL, NULL),
                 SQZ_ERR_INVALID_ARGUMENT);
    CHECK(message_has("io is NULL"));
    CHECK_STATUS(sqz_change_host_free_memory(&io, NULL, -1, NULL, NULL),
                 SQZ_ERR_INVALID_MEMORY_VALUE);
    CHECK_STATUS(sqz_change_host_free_memory(&io, NULL, INT64_MAX, NULL, NULL),
                 SQZ_ERR_INVALID_MEMORY_VALUE);
    CHECK_STATUS(sqz_free_memory_range(&io, NULL, GIB, 512 * MIB, &got),
                 SQZ_ERR_INVALID_MEMORY_VALUE);
    CHECK(message_has("above maximum"));
    CHECK_STATUS(sqz_free_memory_range(&io, NULL, -5, GIB, &got), SQZ_ERR_INVALID_MEMORY_VALUE);
    CHECK_STATUS(sqz_free_memory_range(&io, NULL, 0, GIB, NULL), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_is_host_memory_unbalanced(&io, NULL, NULL), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_balance_memory(NULL, NULL), SQZ_ERR_INVALID_ARGUMENT);
    CHECK(got == 0); /* nothing written on failure */

    sqz_io small = io;
    small.struct_size = sizeof(sqz_io) - 8;
    CHECK_STATUS(sqz_is_host_memory_unbalanced(&small, NULL, &flag), SQZ_ERR_INVALID_ARGUMENT);
    CHECK(message_has("struct_size"));
    sqz_io no_wait = io;
    no_wait.wait = NULL;
    CHECK_STATUS(sqz_balance_memory(&no_wait, NULL), SQZ_ERR_INVALID_ARGUMENT);
    CHECK(message_has("io->wait is NULL"));
    sqz_io bad_slush = io;
    bad_slush.target_host_free_mem_kib = -1;
    CHECK_STATUS(sqz_balance_memory(&bad_slush, NULL), SQZ_ERR_INVALID_MEMORY_VALUE);
    /* Nothing was touched by any of these. */
    CHECK(h.actions == 0 && h.set_maxmem_calls == 0 && h.free_kib == 0);
}

static void test_callback_failures(void) {
    struct host h;
    sqz_io io;
    int64_t got;

    two_guest_host(&h);
    h.fail_set_maxmem_domid = 2;
    io = host_io(&h);
    CHECK_STATUS(sqz_change_host_free_memory(&io, NULL, GIB, NULL, NULL), SQZ_ERR_BACKEND);
    CHECK(message_has("set_maxmem") && message_has("domain 2") && message_has("returned -5"));

    two_guest_host(&h);
    h.fail_execute_action_domid = 1;
    io = host_io(&h);
    CHECK_STATUS(sqz_free_memory_range(&io, NULL, GIB / 2, GIB, &got), SQZ_ERR_BACKEND);
    CHECK(message_has("execute_action") && message_has("domain 1"));

    two_guest_host(&h);
    h.fail_make_host = 12;
    io = host_io(&h);
    CHECK_STATUS(sqz_balance_memory(&io, NULL), SQZ_ERR_BACKEND);
    CHECK(message_has("make_host") && message_has("returned 12"));

    two_guest_host(&h);
    h.skip_set_free_mem = true;
    io = host_io(&h);
    CHECK_STATUS(sqz_change_host_free_memory(&io, NULL, GIB, NULL, NULL), SQZ_ERR_BACKEND);
    CHECK(message_has("sqz_host_builder_set_free_mem"));

    two_guest_host(&h);
    h.duplicate_domain = true;
    io = host_io(&h);
    CHECK_STATUS(sqz_change_host_free_memory(&io, NULL, GIB, NULL, NULL), SQZ_ERR_BACKEND);
    CHECK(message_has("appears twice"));

    two_guest_host(&h);
    h.domain_size = sizeof(sqz_domain) - 8;
    io = host_io(&h);
    CHECK_STATUS(sqz_change_host_free_memory(&io, NULL, GIB, NULL, NULL), SQZ_ERR_BACKEND);
    CHECK(message_has("domain_size"));

    two_guest_host(&h);
    h.guests[0].d.dynamic_min_kib = -1;
    io = host_io(&h);
    CHECK_STATUS(sqz_change_host_free_memory(&io, NULL, GIB, NULL, NULL), SQZ_ERR_BACKEND);
    CHECK(message_has("negative"));

    const char *time_words[] = {"", "NaN", "-1", "backwards"};
    for (int mode = 1; mode <= 3; mode++) {
        two_guest_host(&h);
        h.now_mode = mode;
        io = host_io(&h);
        CHECK_STATUS(sqz_change_host_free_memory(&io, NULL, GIB, NULL, NULL), SQZ_ERR_BACKEND);
        CHECK(message_has("now") && message_has(time_words[mode]));
    }
}

static void test_builder_outside_make_host(void) {
    struct host h;
    two_guest_host(&h);
    sqz_io io = host_io(&h);
    bool flag;
    CHECK_STATUS(sqz_is_host_memory_unbalanced(&io, NULL, &flag), SQZ_OK);
    /* The builder the callback kept is dead now: the library refuses it without touching it. */
    CHECK_STATUS(sqz_host_builder_add_domain(h.kept_builder, &h.guests[0].d, sizeof(sqz_domain)),
                 SQZ_ERR_INVALID_ARGUMENT);
    CHECK(message_has("not live"));
    CHECK_STATUS(sqz_host_builder_set_free_mem(h.kept_builder, 0), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_host_builder_set_free_mem(NULL, 0), SQZ_ERR_INVALID_ARGUMENT);
}

static void test_persistent_squeezer_and_reentry(void) {
    sqz_squeezer *s = NULL;
    CHECK_STATUS(sqz_squeezer_new(NULL, &s), SQZ_OK);
    CHECK_STATUS(sqz_squeezer_new(NULL, NULL), SQZ_ERR_INVALID_ARGUMENT);
    struct host h;
    two_guest_host(&h);
    sqz_io io = host_io(&h);
    int64_t got = 0;
    CHECK_STATUS(sqz_squeezer_free_memory_range(s, &io, 256 * MIB, 512 * MIB, &got), SQZ_OK);
    CHECK(got >= 256 * MIB && got <= 512 * MIB);

    /* Re-entering the same squeezer from a callback is refused, not deadlocked; the outer
       call carries on. */
    h.reenter_squeezer = s;
    CHECK_STATUS(sqz_squeezer_change_host_free_memory(s, &io, GIB, NULL, NULL), SQZ_OK);
    CHECK(h.reenter_status == SQZ_ERR_INVALID_ARGUMENT);
    CHECK(h.free_kib >= GIB);
    /* The refusal inside the callback is not the outer call's error. */
    CHECK(sqz_last_error_status() == SQZ_OK && strcmp(sqz_last_error_message(), "") == 0);

    /* Freeing the squeezer from inside its own callback is deferred until the call returns. */
    h.reenter_squeezer = s;
    h.free_squeezer_inside = true;
    CHECK_STATUS(sqz_squeezer_balance_memory(s, &io), SQZ_OK);
    CHECK(h.reenter_status == SQZ_ERR_INVALID_ARGUMENT);
    /* s is gone now; valgrind reports any use or leak. */

    CHECK_STATUS(sqz_squeezer_balance_memory(NULL, &io), SQZ_ERR_INVALID_ARGUMENT);
    sqz_squeezer_free(NULL);
}

static void test_terabyte_values_pass_intact(void) {
    /* Two guests of 8 TiB (2^33 KiB) that may shrink to 4 TiB; values far above 2^32 KiB. */
    struct host h;
    host_init(&h, 0, 64 * GIB);
    host_add(&h, 1, 4 * TIB, 8 * TIB, 8 * TIB, TIB);
    host_add(&h, 2, 4 * TIB, 8 * TIB, 8 * TIB, TIB);
    sqz_io io = host_io(&h);
    int64_t got = 0;
    CHECK_STATUS(sqz_free_memory_range(&io, NULL, 2 * TIB, 4 * TIB, &got), SQZ_OK);
    CHECK(got >= 2 * TIB && got <= 4 * TIB);
    CHECK(h.free_kib >= got + 64 * GIB);
    CHECK(h.guests[0].d.target_kib > 4 * TIB && h.guests[0].d.target_kib < 8 * TIB);
    CHECK(!h.allocated_beyond_free);

    /* 32 TiB cannot be freed: the amounts come back unchanged. */
    CHECK_STATUS(sqz_change_host_free_memory(&io, NULL, 32 * TIB, NULL, NULL),
                 SQZ_ERR_CANNOT_FREE_THIS_MUCH_MEMORY);
    int64_t required = 0, free_kib = 0;
    CHECK_STATUS(sqz_last_error_cannot_free(&required, &free_kib), SQZ_OK);
    CHECK(required == 32 * TIB && required == INT64_C(34359738368));
    CHECK(free_kib >= 8 * TIB - 16 && free_kib < 32 * TIB);
}

static void test_step(void) {
    sqz_squeezer *s = NULL;
    CHECK_STATUS(sqz_squeezer_new(NULL, &s), SQZ_OK);
    /* Domain 1 at 3000 KiB must shrink toward 1000; domain 2 sits at its minimum and may grow.
       Nothing is free and the goal is 0: the surplus 2000 (less 2 x 4 inaccuracy) is shared
       over two ranges of 2000, so both targets are about 2000 -- freeing first. */
    sqz_domain doms[2];
    memset(doms, 0, sizeof doms);
    doms[0] = (sqz_domain){1, true, 1000, 3000, 3000, 3000, 3000, 4};
    doms[1] = (sqz_domain){2, true, 1000, 1000, 3000, 1000, 1000, 4};
    sqz_action actions[1];
    sqz_maxmem maxmem[2];
    int32_t blamed[2];
    sqz_step_result r;
    memset(&r, 0, sizeof r);
    r.struct_size = sizeof r;
    r.actions = actions;
    r.actions_cap = 0; /* too small on purpose */
    r.maxmem = maxmem;
    r.maxmem_cap = 2;
    r.blamed_domids = blamed;
    r.blamed_cap = 2;
    CHECK_STATUS(sqz_squeezer_step(s, doms, 2, sizeof(sqz_domain), 0, 0, 0.0, NULL, NULL, &r),
                 SQZ_ERR_BUFFER_TOO_SMALL);
    CHECK(r.actions_len == 1 && r.maxmem_len == 2);
    r.actions_cap = 1;
    CHECK_STATUS(sqz_squeezer_step(s, doms, 2, sizeof(sqz_domain), 0, 0, 0.0, NULL, NULL, &r),
                 SQZ_OK);
    CHECK(r.verdict == SQZ_VERDICT_ADJUST_TARGETS);
    CHECK(r.actions_len == 1 && actions[0].domid == 1);
    CHECK(llabs(actions[0].new_target_kib - 2000) <= 8);
    CHECK(r.maxmem_len == 2 && maxmem[0].domid == 1 && maxmem[0].maxmem_kib == actions[0].new_target_kib);
    CHECK(maxmem[1].domid == 2 && maxmem[1].maxmem_kib == 1000);

    /* Terabyte values through the step path. */
    sqz_domain big = {7, true, 4 * TIB, 8 * TIB, 8 * TIB, 8 * TIB, 8 * TIB, 4};
    CHECK_STATUS(sqz_squeezer_step(s, &big, 1, sizeof big, 0, 2 * TIB, 1.0, NULL, NULL, &r), SQZ_OK);
    CHECK(r.verdict == SQZ_VERDICT_ADJUST_TARGETS && actions[0].new_target_kib == 6 * TIB - 8);

    /* Bad input changes nothing. */
    sqz_domain dup[2] = {doms[0], doms[0]};
    CHECK_STATUS(sqz_squeezer_step(s, dup, 2, sizeof(sqz_domain), 0, 0, 1.0, NULL, NULL, &r),
                 SQZ_ERR_INVALID_ARGUMENT);
    CHECK(message_has("twice"));
    CHECK_STATUS(sqz_squeezer_step(s, doms, 2, sizeof(sqz_domain), 0, 0, 0.5, NULL, NULL, &r),
                 SQZ_ERR_INVALID_ARGUMENT);
    CHECK(message_has("backwards"));
    CHECK_STATUS(sqz_squeezer_step(s, doms, 2, sizeof(sqz_domain), 0, 0, NAN, NULL, NULL, &r),
                 SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_squeezer_step(s, NULL, 2, sizeof(sqz_domain), 0, 0, 1.0, NULL, NULL, &r),
                 SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_squeezer_step(s, doms, 2, 8, 0, 0, 1.0, NULL, NULL, &r),
                 SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_squeezer_step(s, doms, 2, sizeof(sqz_domain), 0, -1, 1.0, NULL, NULL, &r),
                 SQZ_ERR_INVALID_MEMORY_VALUE);
    CHECK_STATUS(sqz_squeezer_step(s, doms, 2, sizeof(sqz_domain), 0, 0, 1.0, NULL, NULL, NULL),
                 SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_squeezer_begin_operation(s, 2.0), SQZ_OK);
    CHECK_STATUS(sqz_squeezer_begin_operation(s, -2.0), SQZ_ERR_INVALID_ARGUMENT);
    sqz_squeezer_free(s);
}

static void test_simulator(void) {
    sqz_sim_config c;
    memset(&c, 0, sizeof c);
    c.struct_size = sizeof c;
    c.free_mem_kib = 0;
    c.target_host_free_mem_kib = 0;
    c.time_limit_s = 600.0;
    sqz_sim *sim = NULL;
    CHECK_STATUS(sqz_sim_new(&c, &sim), SQZ_OK);
    sqz_behaviour ideal = {SQZ_BEHAVIOUR_IDEAL, 256 * MIB, 0, 0.0};
    sqz_behaviour stuck = {SQZ_BEHAVIOUR_STUCK, 0, 0, 0.0};
    sqz_domain d = {1, true, GIB, 2 * GIB, 2 * GIB, 2 * GIB, 2 * GIB, 4};
    CHECK_STATUS(sqz_sim_add_guest(sim, &d, sizeof d, &ideal), SQZ_OK);
    CHECK_STATUS(sqz_sim_add_guest(sim, &d, sizeof d, &ideal), SQZ_ERR_INVALID_ARGUMENT);
    d.domid = 2;
    CHECK_STATUS(sqz_sim_add_guest(sim, &d, sizeof d, &stuck), SQZ_OK);

    /* The io view drives a persistent squeezer like any other platform. */
    sqz_io io;
    CHECK_STATUS(sqz_sim_io(sim, &io, sizeof io), SQZ_OK);
    sqz_squeezer *s = NULL;
    CHECK_STATUS(sqz_squeezer_new(NULL, &s), SQZ_OK);
    CHECK_STATUS(sqz_squeezer_change_host_free_memory(s, &io, GIB / 2, NULL, NULL), SQZ_OK);
    int64_t free_kib = 0;
    CHECK_STATUS(sqz_sim_free_mem(sim, &free_kib), SQZ_OK);
    CHECK(free_kib >= GIB / 2);
    sqz_squeezer_free(s);

    /* Domain 1 can free at most 1 GiB less 8 KiB; 1.5 GiB needs the stuck domain 2. */
    CHECK_STATUS(sqz_sim_change_host_free_memory(sim, NULL, GIB + GIB / 2, NULL, NULL),
                 SQZ_ERR_DOMAINS_REFUSED_TO_COOPERATE);
    int32_t blamed = -1;
    CHECK(sqz_last_error_domids(&blamed, 1) == 1 && blamed == 2);
    sqz_domain g;
    CHECK_STATUS(sqz_sim_guest(sim, 1, &g, sizeof g), SQZ_OK);
    CHECK(g.memory_actual_kib <= GIB + 8);
    CHECK_STATUS(sqz_sim_guest(sim, 9, &g, sizeof g), SQZ_ERR_INVALID_ARGUMENT);

    CHECK_STATUS(sqz_sim_adjust_free_mem(sim, -256 * MIB), SQZ_OK);
    CHECK_STATUS(sqz_sim_adjust_free_mem(sim, INT64_MAX), SQZ_ERR_INVALID_MEMORY_VALUE);
    CHECK_STATUS(sqz_sim_advance(sim, -1.0), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_sim_advance(sim, 1.0), SQZ_OK);
    double t = 0;
    CHECK_STATUS(sqz_sim_time(sim, &t), SQZ_OK);
    CHECK(t > 1.0);
    sqz_sim_counters counters;
    CHECK_STATUS(sqz_sim_get_counters(sim, &counters), SQZ_OK);
    CHECK(counters.waits > 0 && counters.actions > 0);
    size_t violations = 99;
    CHECK_STATUS(sqz_sim_violations(sim, &violations), SQZ_OK);
    CHECK(violations == 0);
    CHECK_STATUS(sqz_sim_remove_guest(sim, 2), SQZ_OK);
    CHECK_STATUS(sqz_sim_remove_guest(sim, 2), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_sim_balance_memory(sim, NULL), SQZ_OK);
    bool unbalanced = true;
    CHECK_STATUS(sqz_sim_is_host_memory_unbalanced(sim, NULL, &unbalanced), SQZ_OK);
    CHECK(!unbalanced);
    int64_t got = 0;
    CHECK_STATUS(sqz_sim_free_memory_range(sim, NULL, 100 * MIB, 200 * MIB, &got), SQZ_OK);
    CHECK(got >= 100 * MIB && got <= 200 * MIB);

    sqz_behaviour bad = {42, 0, 0, 0.0};
    d.domid = 5;
    CHECK_STATUS(sqz_sim_add_guest(sim, &d, sizeof d, &bad), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_sim_add_guest(sim, &d, sizeof d, NULL), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_sim_io(sim, &io, 16), SQZ_ERR_INVALID_ARGUMENT);
    /* A simulator passed where a squeezer belongs is recognised, not misread. */
    CHECK_STATUS(sqz_squeezer_balance_memory((sqz_squeezer *)(void *)sim, &io),
                 SQZ_ERR_INVALID_ARGUMENT);
    CHECK(message_has("another kind"));
    sqz_squeezer_free((sqz_squeezer *)(void *)sim); /* refused quietly: not a squeezer */
    c.struct_size = 4;
    sqz_sim *none = NULL;
    CHECK_STATUS(sqz_sim_new(&c, &none), SQZ_ERR_INVALID_ARGUMENT);
    CHECK(none == NULL);
    sqz_sim_free(sim);
    sqz_sim_free(NULL);
}

static void test_simulated_time_limit(void) {
    /* A stuck guest and a stuck-after time longer than the time limit: the wait that crosses
       the limit cannot report it, so the next now() does, naming it. */
    sqz_sim_config c;
    memset(&c, 0, sizeof c);
    c.struct_size = sizeof c;
    c.time_limit_s = 3.0;
    sqz_sim *sim = NULL;
    CHECK_STATUS(sqz_sim_new(&c, &sim), SQZ_OK);
    sqz_behaviour stuck = {SQZ_BEHAVIOUR_STUCK, 0, 0, 0.0};
    sqz_domain d = {1, true, GIB, 2 * GIB, 2 * GIB, 2 * GIB, 2 * GIB, 4};
    CHECK_STATUS(sqz_sim_add_guest(sim, &d, sizeof d, &stuck), SQZ_OK);
    CHECK_STATUS(sqz_sim_change_host_free_memory(sim, NULL, GIB / 2, NULL, NULL), SQZ_ERR_BACKEND);
    CHECK(message_has("now") && message_has("time limit"));
    sqz_sim_free(sim);
}

/* ---- The memory service over the fake host ---- */

/* A temporary directory for the service's lock file and boot-time record. */
static char svc_dir[64];

static sqz_service_config *service_config(void) {
    char path[128];
    sqz_service_config *cfg = NULL;
    CHECK_STATUS(sqz_service_config_new(&cfg), SQZ_OK);
    snprintf(path, sizeof path, "%s/host.lock", svc_dir);
    CHECK_STATUS(sqz_service_config_set_lock_path(cfg, path), SQZ_OK);
    snprintf(path, sizeof path, "%s/boot_time_memory", svc_dir);
    CHECK_STATUS(sqz_service_config_set_boot_time_record_path(cfg, path), SQZ_OK);
    return cfg;
}

/* 8 GiB host: Xen keeps 256 MiB, domain 0 holds 1 GiB, so 6.75 GiB is free at the start. */
static sqz_fake_host *fake_8g(void) {
    sqz_fake_config c;
    memset(&c, 0, sizeof c);
    c.struct_size = sizeof c;
    c.total_kib = 8 * GIB;
    c.xen_kib = 256 * MIB;
    c.dom0_kib = GIB;
    c.boot_delay_s = 1.0;
    sqz_fake_host *f = NULL;
    CHECK_STATUS(sqz_fake_host_new(&c, &f), SQZ_OK);
    return f;
}

static sqz_fake_guest guest_spec(int64_t min_kib, int64_t max_kib) {
    sqz_fake_guest g;
    memset(&g, 0, sizeof g);
    g.struct_size = sizeof g;
    g.target_kib = max_kib;
    g.dynamic_min_kib = min_kib;
    g.dynamic_max_kib = max_kib;
    g.behaviour.kind = SQZ_BEHAVIOUR_IDEAL;
    g.behaviour.rate_kib_per_s = 256 * MIB;
    return g;
}

static void test_service_xenopsd_flow(void) {
    sqz_fake_host *f = fake_8g();
    sqz_service_config *cfg = service_config();
    CHECK_STATUS(sqz_service_config_set_slush(cfg, 64 * MIB), SQZ_OK);
    sqz_service *svc = NULL;
    CHECK_STATUS(sqz_service_new_fake(f, cfg, &svc), SQZ_OK);
    sqz_service_config_free(cfg);

    /* A running guest of 4 GiB that may shrink to 1 GiB: 2.75 GiB stays free. */
    sqz_fake_guest g1 = guest_spec(GIB, 4 * GIB);
    int32_t d1 = -1;
    CHECK_STATUS(sqz_fake_host_create_domain(f, &g1, sizeof g1, &d1), SQZ_OK);
    CHECK_STATUS(sqz_fake_host_build_domain(f, d1, 4 * GIB), SQZ_OK);
    CHECK_STATUS(sqz_fake_host_unpause(f, d1), SQZ_OK);
    CHECK_STATUS(sqz_fake_host_advance(f, 2.0), SQZ_OK);
    int64_t free_kib = 0;
    CHECK_STATUS(sqz_fake_host_free_mem(f, &free_kib), SQZ_OK);
    CHECK(free_kib == 2 * GIB + 768 * MIB);

    int64_t reserved_slush = 0;
    CHECK_STATUS(sqz_get_host_reserved_memory(svc, &reserved_slush), SQZ_OK);
    CHECK(reserved_slush == 64 * MIB);

    /* xenopsd: login, then ask for 3..4 GiB for a new VM: guest 1 must balloon down. */
    CHECK_STATUS(sqz_login(svc, "xenopsd"), SQZ_OK);
    char id[SQZ_RESERVATION_ID_SIZE];
    int64_t got = 0;
    CHECK_STATUS(sqz_reserve_memory_range(svc, "xenopsd", 3 * GIB, 4 * GIB, id, &got), SQZ_OK);
    CHECK(strlen(id) == 36 && id[8] == '-');
    CHECK(got >= 3 * GIB && got <= 4 * GIB);
    CHECK_STATUS(sqz_fake_host_free_mem(f, &free_kib), SQZ_OK);
    CHECK(free_kib >= got + 64 * MIB);
    sqz_fake_domain v1;
    CHECK_STATUS(sqz_fake_host_domain(f, d1, &v1), SQZ_OK);
    CHECK(v1.tot_kib < 4 * GIB && v1.tot_kib >= GIB);

    /* The domain appears, takes the reservation (its maxmem becomes the amount), boots. */
    sqz_fake_guest g2 = guest_spec(got, got);
    int32_t d2 = -1;
    CHECK_STATUS(sqz_fake_host_create_domain(f, &g2, sizeof g2, &d2), SQZ_OK);
    CHECK_STATUS(sqz_transfer_reservation_to_domain(svc, "xenopsd", id, d2), SQZ_OK);
    sqz_fake_domain v2;
    CHECK_STATUS(sqz_fake_host_domain(f, d2, &v2), SQZ_OK);
    CHECK(v2.max_kib == got);
    CHECK_STATUS(sqz_fake_host_build_domain(f, d2, got), SQZ_OK);
    CHECK_STATUS(sqz_fake_host_unpause(f, d2), SQZ_OK);
    CHECK_STATUS(sqz_fake_host_advance(f, 2.0), SQZ_OK);
    CHECK_STATUS(sqz_fake_host_domain(f, d2, &v2), SQZ_OK);
    CHECK(v2.booted && v2.tot_kib == got);

    char queried[SQZ_RESERVATION_ID_SIZE];
    CHECK_STATUS(sqz_query_reservation_of_domain(svc, "xenopsd", d2, queried), SQZ_OK);
    CHECK(strcmp(queried, id) == 0);
    CHECK_STATUS(sqz_service_balance_memory(svc), SQZ_OK);
    CHECK_STATUS(sqz_service_start_balancer(svc), SQZ_OK);
    CHECK_STATUS(sqz_service_stop_balancer(svc), SQZ_OK);
    CHECK_STATUS(sqz_delete_reservation(svc, "xenopsd", id), SQZ_OK);
    CHECK_STATUS(sqz_delete_reservation(svc, "xenopsd", id), SQZ_ERR_UNKNOWN_RESERVATION);

    int64_t initial = 0;
    CHECK_STATUS(sqz_get_host_initial_free_memory(svc, &initial), SQZ_OK);
    CHECK(initial > 0 && initial <= 8 * GIB);

    /* Diagnostics: ask for the size, then fetch exactly that much. */
    size_t need = 0;
    CHECK_STATUS(sqz_get_diagnostics(svc, NULL, 0, &need), SQZ_ERR_BUFFER_TOO_SMALL);
    CHECK(need > 2);
    char *doc = malloc(need);
    size_t again = 0;
    CHECK_STATUS(sqz_get_diagnostics(svc, doc, need, &again), SQZ_OK);
    CHECK(again == need && strlen(doc) + 1 == need && doc[0] == '{');
    CHECK(strstr(doc, "\"slush_kib\": 65536") != NULL);
    CHECK_STATUS(sqz_get_diagnostics(svc, doc, need - 1, &again), SQZ_ERR_BUFFER_TOO_SMALL);
    CHECK(again == need);
    free(doc);

    sqz_service_free(svc);
    sqz_fake_host_free(f);
}

/* Progress and cancellation: a guest of 1..4 GiB at 4 GiB whose balloon gives 64 MiB/s, 2.75 GiB
 * free: reserving 3.5 GiB (+ the 64 MiB slush) needs 832 MiB from it, about 13 s of waits. */
struct progress_log {
    int reports;
    int stop_at;             /* return non-zero at this report (0: never) */
    sqz_cancel *cancel_at_3; /* request this cancel at the third report (NULL: none) */
    sqz_service *svc;        /* call the service from the callback (must be refused) */
    sqz_status reentry;
    int64_t needed_kib, last_freed_kib;
    double last_eta_s;
};

static int32_t on_progress(void *ctx, const sqz_progress *p) {
    struct progress_log *l = ctx;
    l->reports++;
    l->needed_kib = p->needed_kib;
    l->last_freed_kib = p->freed_kib;
    l->last_eta_s = p->eta_s;
    if (l->svc != NULL) {
        l->reentry = sqz_service_balance_memory(l->svc);
        l->svc = NULL;
    }
    if (l->cancel_at_3 != NULL && l->reports == 3)
        sqz_cancel_request(l->cancel_at_3);
    return l->stop_at != 0 && l->reports >= l->stop_at;
}

static void test_service_progress_and_cancel(void) {
    sqz_fake_host *f = fake_8g();
    sqz_service_config *cfg = service_config();
    CHECK_STATUS(sqz_service_config_set_slush(cfg, 64 * MIB), SQZ_OK);
    sqz_service *svc = NULL;
    CHECK_STATUS(sqz_service_new_fake(f, cfg, &svc), SQZ_OK);
    sqz_service_config_free(cfg);
    sqz_fake_guest g = guest_spec(GIB, 4 * GIB);
    g.behaviour.rate_kib_per_s = 64 * MIB;
    int32_t d = -1;
    CHECK_STATUS(sqz_fake_host_create_domain(f, &g, sizeof g, &d), SQZ_OK);
    CHECK_STATUS(sqz_fake_host_build_domain(f, d, 4 * GIB), SQZ_OK);
    CHECK_STATUS(sqz_fake_host_unpause(f, d), SQZ_OK);
    CHECK_STATUS(sqz_fake_host_advance(f, 2.0), SQZ_OK);
    int64_t free_before = 0;
    CHECK_STATUS(sqz_fake_host_free_mem(f, &free_before), SQZ_OK);
    CHECK(free_before == 2 * GIB + 768 * MIB);

    char id[SQZ_RESERVATION_ID_SIZE];
    sqz_cancel *cancel = NULL;
    CHECK_STATUS(sqz_cancel_new(&cancel), SQZ_OK);
    struct progress_log log;
    memset(&log, 0, sizeof log);
    log.cancel_at_3 = cancel;
    log.svc = svc;
    sqz_reserve_options o;
    memset(&o, 0, sizeof o);
    o.struct_size = sizeof o;
    o.progress = on_progress;
    o.ctx = &log;
    o.cancel = cancel;
    /* Cancelled at the third report: nothing reserved, and the re-entry was refused. */
    CHECK_STATUS(sqz_reserve_memory_with(svc, "xenopsd", 3 * GIB + 512 * MIB, &o, id),
                 SQZ_ERR_CANCELLED);
    CHECK(log.reports == 3);
    CHECK(log.needed_kib == 832 * MIB);
    CHECK(log.last_freed_kib > 0 && log.last_freed_kib < 832 * MIB);
    CHECK(log.last_eta_s > 0.0);
    CHECK(log.reentry == SQZ_ERR_INVALID_ARGUMENT);
    CHECK(strcmp(sqz_status_name(SQZ_ERR_CANCELLED), "SQZ_ERR_CANCELLED") == 0);
    size_t need = 0;
    sqz_get_diagnostics(svc, NULL, 0, &need);
    char *doc = malloc(need);
    CHECK_STATUS(sqz_get_diagnostics(svc, doc, need, &need), SQZ_OK);
    CHECK(strstr(doc, "\"reservations_cancelled\": 1") != NULL);
    CHECK(strstr(doc, "\"sessions\": []") != NULL);
    CHECK(strstr(doc, "\"outcome\": \"cancelled\"") != NULL);
    free(doc);
    /* The handle stays cancelled: the next call with it stops at once. */
    int64_t got = 0;
    CHECK_STATUS(sqz_reserve_memory_range_with(svc, "xenopsd", GIB, GIB, &o, id, &got),
                 SQZ_ERR_CANCELLED);
    sqz_cancel_free(cancel);

    /* A callback returning non-zero stops the reservation too. */
    memset(&log, 0, sizeof log);
    log.stop_at = 2;
    o.cancel = NULL;
    CHECK_STATUS(sqz_reserve_memory_with(svc, "xenopsd", 3 * GIB + 512 * MIB, &o, id),
                 SQZ_ERR_CANCELLED);
    CHECK(log.reports == 2);

    /* Left alone, it reserves. */
    memset(&log, 0, sizeof log);
    CHECK_STATUS(sqz_reserve_memory_range_with(svc, "xenopsd", 3 * GIB + 512 * MIB,
                                               3 * GIB + 512 * MIB, &o, id, &got),
                 SQZ_OK);
    CHECK(got == 3 * GIB + 512 * MIB);
    CHECK(log.reports > 3);
    CHECK_STATUS(sqz_reserve_memory_with(svc, "xenopsd", MIB, NULL, id), SQZ_OK);

    /* Bad options. */
    o.struct_size = 4;
    CHECK_STATUS(sqz_reserve_memory_with(svc, "xenopsd", MIB, &o, id), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_cancel_new(NULL), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_cancel_request(NULL), SQZ_ERR_INVALID_ARGUMENT);
    sqz_cancel_free(NULL);

    sqz_service_free(svc);
    sqz_fake_host_free(f);
}

static void test_service_failures(void) {
    sqz_fake_host *f = fake_8g();
    sqz_service_config *cfg = service_config();
    sqz_service *svc = NULL;
    CHECK_STATUS(sqz_service_new_fake(f, cfg, &svc), SQZ_OK);
    sqz_service_config_free(cfg);
    /* The service keeps the host alive: the handle can go first. */
    sqz_fake_host_free(f);
    char id[SQZ_RESERVATION_ID_SIZE];
    int64_t got = -1;

    /* More than the host has: the amounts are net of the slush, so 100 GiB is asked for. */
    CHECK_STATUS(sqz_reserve_memory(svc, "xl", 100 * GIB, id), SQZ_ERR_CANNOT_FREE_THIS_MUCH_MEMORY);
    int64_t required = 0, free_kib = 0;
    CHECK_STATUS(sqz_last_error_cannot_free(&required, &free_kib), SQZ_OK);
    CHECK(required == 100 * GIB);
    CHECK(free_kib == 6 * GIB + 768 * MIB - 72 * MIB);

    CHECK_STATUS(sqz_reserve_memory(svc, "xl", -1, id), SQZ_ERR_INVALID_MEMORY_VALUE);
    CHECK_STATUS(sqz_reserve_memory_range(svc, "xl", 2 * GIB, GIB, id, &got), SQZ_ERR_INVALID_MEMORY_VALUE);
    CHECK(message_has("above maximum"));
    CHECK(got == -1);
    CHECK_STATUS(sqz_reserve_memory_range(svc, "xl", -5, GIB, id, &got), SQZ_ERR_INVALID_MEMORY_VALUE);

    const char *stranger = "6f1e8a3c-55d2-4c1e-9a8e-0d4b5f6a7b8c";
    CHECK_STATUS(sqz_transfer_reservation_to_domain(svc, "xl", stranger, 0), SQZ_ERR_UNKNOWN_RESERVATION);
    CHECK_STATUS(sqz_delete_reservation(svc, "xl", stranger), SQZ_ERR_UNKNOWN_RESERVATION);
    CHECK_STATUS(sqz_delete_reservation(svc, "xl", "not-a-uuid"), SQZ_ERR_UNKNOWN_RESERVATION);
    CHECK_STATUS(sqz_query_reservation_of_domain(svc, "xl", 0, id), SQZ_ERR_NO_RESERVATION);

    /* A reservation for a domain that never appears. */
    CHECK_STATUS(sqz_reserve_memory(svc, "xl", GIB, id), SQZ_OK);
    CHECK_STATUS(sqz_transfer_reservation_to_domain(svc, "xl", id, 77), SQZ_ERR_INVALID_ARGUMENT);
    CHECK(message_has("does not exist"));
    /* Another session cannot touch it. */
    CHECK_STATUS(sqz_delete_reservation(svc, "xenopsd", id), SQZ_ERR_UNKNOWN_RESERVATION);
    /* A restarted xl logs in again: its untransferred reservation is dropped. */
    CHECK_STATUS(sqz_login(svc, "xl"), SQZ_OK);
    CHECK_STATUS(sqz_delete_reservation(svc, "xl", id), SQZ_ERR_UNKNOWN_RESERVATION);

    sqz_service_free(svc);
}

/* The adaptive policy through the service: beside a 100 MiB/s guest, one that frees a page
 * every 5 s is named at once when a request needs it, and has a cooperation score. */
static void test_service_adaptive_policy(void) {
    sqz_fake_host *f = fake_8g();
    sqz_service_config *cfg = service_config();
    CHECK_STATUS(sqz_service_config_set_policy(cfg, 7), SQZ_ERR_UNSUPPORTED);
    CHECK_STATUS(sqz_service_config_set_policy(NULL, SQZ_POLICY_ADAPTIVE), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_service_config_set_policy(cfg, SQZ_POLICY_ADAPTIVE), SQZ_OK);
    sqz_service *svc = NULL;
    CHECK_STATUS(sqz_service_new_fake(f, cfg, &svc), SQZ_OK);
    sqz_service_config_free(cfg);

    /* Two guests of 1..2 GiB at 2 GiB: 2.75 GiB free. */
    int32_t d[2] = {-1, -1};
    for (int i = 0; i < 2; i++) {
        sqz_fake_guest g = guest_spec(GIB, 2 * GIB);
        if (i == 0) {
            g.behaviour.kind = SQZ_BEHAVIOUR_TRICKLE;
            g.behaviour.limit_kib = 4;
            g.behaviour.seconds = 5.0;
        } else {
            g.behaviour.rate_kib_per_s = 100 * MIB;
        }
        CHECK_STATUS(sqz_fake_host_create_domain(f, &g, sizeof g, &d[i]), SQZ_OK);
        CHECK_STATUS(sqz_fake_host_build_domain(f, d[i], 2 * GIB), SQZ_OK);
        CHECK_STATUS(sqz_fake_host_unpause(f, d[i]), SQZ_OK);
    }
    CHECK_STATUS(sqz_fake_host_advance(f, 2.0), SQZ_OK);

    /* 4 GiB needs 1.25 GiB + the slush freed; the fast guest has only 1 GiB to give. */
    char id[SQZ_RESERVATION_ID_SIZE];
    CHECK_STATUS(sqz_reserve_memory(svc, "xl", 4 * GIB, id), SQZ_ERR_DOMAINS_REFUSED_TO_COOPERATE);
    int32_t named[4] = {-1, -1, -1, -1};
    CHECK(sqz_last_error_domids(named, 4) == 1 && named[0] == d[0]);
    sqz_cooperation c;
    memset(&c, 0, sizeof c);
    CHECK_STATUS(sqz_service_cooperation(svc, d[0], &c), SQZ_OK);
    CHECK(c.score_s > 0.0 && c.concern != SQZ_CONCERN_NONE);
    CHECK_STATUS(sqz_service_cooperation(svc, d[1], &c), SQZ_OK);
    CHECK(c.concern == SQZ_CONCERN_NONE && !c.uncooperative);
    CHECK_STATUS(sqz_service_cooperation(svc, 99, &c), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_service_cooperation(svc, d[0], NULL), SQZ_ERR_INVALID_ARGUMENT);
    /* 3 GiB the fast guest covers alone. */
    CHECK_STATUS(sqz_reserve_memory(svc, "xl", 3 * GIB, id), SQZ_OK);
    sqz_service_free(svc);

    /* A classic service, asked for by name, keeps no scores. */
    cfg = service_config();
    CHECK_STATUS(sqz_service_config_set_policy(cfg, SQZ_POLICY_CLASSIC), SQZ_OK);
    CHECK_STATUS(sqz_service_new_fake(f, cfg, &svc), SQZ_OK);
    sqz_service_config_free(cfg);
    CHECK_STATUS(sqz_service_cooperation(svc, d[1], &c), SQZ_ERR_INVALID_ARGUMENT);
    CHECK(message_has("classic"));
    sqz_service_free(svc);

    /* With the default settings the service is adaptive: it only has not seen the guest yet. */
    cfg = service_config();
    CHECK_STATUS(sqz_service_new_fake(f, cfg, &svc), SQZ_OK);
    sqz_service_config_free(cfg);
    CHECK_STATUS(sqz_service_cooperation(svc, d[1], &c), SQZ_ERR_INVALID_ARGUMENT);
    CHECK(message_has("not seen") && !message_has("classic"));
    size_t need = 0;
    CHECK_STATUS(sqz_get_diagnostics(svc, NULL, 0, &need), SQZ_ERR_BUFFER_TOO_SMALL);
    char *doc = malloc(need);
    CHECK(doc != NULL);
    CHECK_STATUS(sqz_get_diagnostics(svc, doc, need, &need), SQZ_OK);
    CHECK(strstr(doc, "\"policy\": \"adaptive\"") != NULL);
    free(doc);
    sqz_service_free(svc);
    sqz_fake_host_free(f);
}

static void test_service_bad_input(void) {
    sqz_fake_host *f = fake_8g();
    sqz_service_config *cfg = service_config();
    sqz_service *svc = NULL;
    CHECK_STATUS(sqz_service_new_fake(f, cfg, &svc), SQZ_OK);
    char id[SQZ_RESERVATION_ID_SIZE];
    int64_t v = 0;
    size_t n = 0;
    const char *bad_utf8 = "xl\xff";
    const char *ok_id = "6f1e8a3c-55d2-4c1e-9a8e-0d4b5f6a7b8c";

    /* Config. */
    CHECK_STATUS(sqz_service_config_new(NULL), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_service_config_set_slush(NULL, 0), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_service_config_set_slush(cfg, -1), SQZ_ERR_INVALID_MEMORY_VALUE);
    CHECK_STATUS(sqz_service_config_set_slush(cfg, (int64_t)1 << 51), SQZ_ERR_INVALID_MEMORY_VALUE);
    CHECK_STATUS(sqz_service_config_set_lock_path(cfg, NULL), SQZ_ERR_INVALID_ARGUMENT);
    CHECK(message_has("path is NULL"));
    CHECK_STATUS(sqz_service_config_set_lock_path(cfg, ""), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_service_config_set_lock_path(cfg, bad_utf8), SQZ_ERR_INVALID_ARGUMENT);
    CHECK(message_has("UTF-8"));
    CHECK_STATUS(sqz_service_config_set_lock_path(NULL, "/tmp/x"), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_service_config_set_boot_time_record_path(cfg, NULL), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_service_config_set_boot_time_record_path(NULL, "/tmp/x"), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_service_config_set_options(NULL, NULL), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_service_config_set_options(cfg, NULL), SQZ_OK);
    CHECK_STATUS(sqz_service_config_set_balance_interval(NULL, 1.0), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_service_config_set_balance_interval(cfg, -1.0), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_service_config_set_balance_interval(cfg, INFINITY), SQZ_ERR_INVALID_ARGUMENT);
    sqz_service_config_free(NULL);

    /* Fake host. */
    sqz_fake_config c;
    memset(&c, 0, sizeof c);
    c.struct_size = sizeof c;
    c.total_kib = 4 * GIB;
    sqz_fake_host *none = NULL;
    CHECK_STATUS(sqz_fake_host_new(NULL, &none), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_fake_host_new(&c, NULL), SQZ_ERR_INVALID_ARGUMENT);
    c.total_kib = -1;
    CHECK_STATUS(sqz_fake_host_new(&c, &none), SQZ_ERR_INVALID_MEMORY_VALUE);
    c.total_kib = 4 * GIB;
    c.boot_delay_s = NAN;
    CHECK_STATUS(sqz_fake_host_new(&c, &none), SQZ_ERR_INVALID_ARGUMENT);
    c.boot_delay_s = 0;
    c.struct_size = 4;
    CHECK_STATUS(sqz_fake_host_new(&c, &none), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_fake_host_create(NULL, &c, &none), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_fake_host_create(bad_utf8, &c, &none), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_fake_host_open(NULL, &none), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_fake_host_open("/nonexistent/squeeze-fake", &none), SQZ_ERR_BACKEND);
    CHECK(none == NULL);
    sqz_fake_guest g = guest_spec(GIB, 2 * GIB);
    int32_t domid = -1;
    CHECK_STATUS(sqz_fake_host_create_domain(NULL, &g, sizeof g, &domid), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_fake_host_create_domain(f, NULL, sizeof g, &domid), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_fake_host_create_domain(f, &g, 4, &domid), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_fake_host_create_domain(f, &g, sizeof g, NULL), SQZ_ERR_INVALID_ARGUMENT);
    g.dynamic_min_kib = -GIB;
    CHECK_STATUS(sqz_fake_host_create_domain(f, &g, sizeof g, &domid), SQZ_ERR_INVALID_MEMORY_VALUE);
    CHECK(domid == -1);
    CHECK_STATUS(sqz_fake_host_build_domain(f, 99, GIB), SQZ_ERR_BACKEND);
    CHECK_STATUS(sqz_fake_host_build_domain(NULL, 1, GIB), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_fake_host_unpause(f, 99), SQZ_ERR_BACKEND);
    CHECK_STATUS(sqz_fake_host_destroy_domain(f, 0), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_fake_host_destroy_domain_over(f, 0, 5.0), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_fake_host_destroy_domain_over(NULL, 1, 5.0), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_fake_host_destroy_domain_over(f, 1, -1.0), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_fake_host_destroy_domain_over(f, 1, NAN), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_fake_host_destroy_domain_over(f, 99, 5.0), SQZ_ERR_BACKEND);
    CHECK_STATUS(sqz_fake_host_scrub_over(NULL, GIB, 2.0), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_fake_host_scrub_over(f, GIB, -1.0), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_fake_host_scrub_over(f, GIB, NAN), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_fake_host_scrub_over(f, -GIB, 2.0), SQZ_ERR_INVALID_MEMORY_VALUE);
    CHECK_STATUS(sqz_fake_host_scrub_over(f, 1024 * GIB, 2.0), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_fake_host_advance(f, -1.0), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_fake_host_advance(f, NAN), SQZ_ERR_INVALID_ARGUMENT);
    sqz_fake_domain fd;
    CHECK_STATUS(sqz_fake_host_domain(f, 99, &fd), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_fake_host_domain(f, 0, NULL), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_fake_host_free_mem(f, NULL), SQZ_ERR_INVALID_ARGUMENT);
    sqz_fake_host_free(NULL);

    /* Service construction. */
    sqz_service *s2 = NULL;
    CHECK_STATUS(sqz_service_new_fake(NULL, cfg, &s2), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_service_new_fake(f, cfg, NULL), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_service_new_platform(NULL, cfg, &s2), SQZ_ERR_INVALID_ARGUMENT);
    sqz_platform p;
    memset(&p, 0, sizeof p);
    p.struct_size = sizeof p;
    CHECK_STATUS(sqz_service_new_platform(&p, cfg, &s2), SQZ_ERR_INVALID_ARGUMENT);
    CHECK(message_has("list_domains is NULL"));
    CHECK(s2 == NULL);
    /* A fake host where a service is expected, and the other way round. */
    CHECK_STATUS(sqz_login((sqz_service *)(void *)f, "xl"), SQZ_ERR_INVALID_ARGUMENT);
    CHECK(message_has("another kind"));
    CHECK_STATUS(sqz_fake_host_advance((sqz_fake_host *)(void *)svc, 1.0), SQZ_ERR_INVALID_ARGUMENT);
    sqz_service_config_free(cfg);

    /* Every call: NULL service, NULL / invalid UTF-8 / invalid session, NULL outputs. */
    CHECK_STATUS(sqz_login(NULL, "xl"), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_login(svc, NULL), SQZ_ERR_INVALID_ARGUMENT);
    CHECK(message_has("service_name is NULL"));
    CHECK_STATUS(sqz_login(svc, bad_utf8), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_login(svc, "../etc"), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_login(svc, ""), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_reserve_memory(NULL, "xl", GIB, id), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_reserve_memory(svc, NULL, GIB, id), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_reserve_memory(svc, bad_utf8, GIB, id), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_reserve_memory(svc, "xl", GIB, NULL), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_reserve_memory(svc, "xl", (int64_t)1 << 51, id), SQZ_ERR_INVALID_MEMORY_VALUE);
    CHECK_STATUS(sqz_reserve_memory_range(NULL, "xl", 0, GIB, id, &v), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_reserve_memory_range(svc, NULL, 0, GIB, id, &v), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_reserve_memory_range(svc, "xl", 0, GIB, NULL, &v), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_reserve_memory_range(svc, "xl", 0, GIB, id, NULL), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_transfer_reservation_to_domain(NULL, "xl", ok_id, 1), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_transfer_reservation_to_domain(svc, NULL, ok_id, 1), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_transfer_reservation_to_domain(svc, "xl", NULL, 1), SQZ_ERR_INVALID_ARGUMENT);
    CHECK(message_has("reservation_id is NULL"));
    CHECK_STATUS(sqz_transfer_reservation_to_domain(svc, "xl", bad_utf8, 1), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_transfer_reservation_to_domain(svc, "xl", ok_id, -3), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_delete_reservation(NULL, "xl", ok_id), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_delete_reservation(svc, NULL, ok_id), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_delete_reservation(svc, "xl", NULL), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_delete_reservation(svc, "xl", bad_utf8), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_query_reservation_of_domain(NULL, "xl", 0, id), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_query_reservation_of_domain(svc, NULL, 0, id), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_query_reservation_of_domain(svc, "xl", 0, NULL), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_query_reservation_of_domain(svc, "xl", -1, id), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_service_balance_memory(NULL), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_service_start_balancer(NULL), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_service_stop_balancer(NULL), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_get_host_reserved_memory(NULL, &v), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_get_host_reserved_memory(svc, NULL), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_get_host_initial_free_memory(NULL, &v), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_get_host_initial_free_memory(svc, NULL), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_get_diagnostics(NULL, NULL, 0, &n), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_get_diagnostics(svc, NULL, 0, NULL), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_get_diagnostics(svc, NULL, 10, &n), SQZ_ERR_INVALID_ARGUMENT);

    /* Sinks outside a platform callback. */
    sqz_domain_info di;
    memset(&di, 0, sizeof di);
    CHECK_STATUS(sqz_domain_list_add(NULL, &di, sizeof di), SQZ_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sqz_strings_add(NULL, "x"), SQZ_ERR_INVALID_ARGUMENT);

    /* Nothing above reserved anything: the whole 6.75 GiB less the slush can still be had. */
    CHECK_STATUS(sqz_reserve_memory(svc, "xl", 6 * GIB + 768 * MIB - 72 * MIB, id), SQZ_OK);
    sqz_service_free(svc);
    sqz_service_free(NULL);
    sqz_fake_host_free(f);
}

/* A service over Xen, on this machine without Xen: the default library is built without Xen
 * support and says so; a library built with it finds no hypervisor and says that. Either way a
 * clear error at once, and no service. */
static void test_service_over_xen_without_xen(void) {
    sqz_service *s = NULL;
    sqz_status st = sqz_service_new_xen(NULL, &s);
    if (st == SQZ_ERR_UNSUPPORTED) {
        CHECK(message_has("built without Xen support"));
    } else {
        CHECK_STATUS(st, SQZ_ERR_BACKEND);
        CHECK(message_has("no Xen hypervisor: /dev/xen/privcmd not available"));
    }
    CHECK(s == NULL);
    CHECK_STATUS(sqz_service_new_xen(NULL, NULL), SQZ_ERR_INVALID_ARGUMENT);
    sqz_service_free(s);
}

/* ---- Many threads, and freeing while the background balancer works ---- */

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

/* A caller's platform with domain 0 alone and an empty store. Every callback reads and writes
 * its ctx, so a callback made after the ctx was freed is an invalid access valgrind reports.
 * The first domain listing waits until the test opens the gate. */
struct gated_platform {
    pthread_mutex_t m;
    pthread_cond_t c;
    int entered, open;
    long calls;
};

static void touch(void *ctx) {
    struct gated_platform *g = ctx;
    pthread_mutex_lock(&g->m);
    g->calls++;
    pthread_mutex_unlock(&g->m);
}

static int32_t gp_list_domains(void *ctx, struct sqz_domain_list *out) {
    struct gated_platform *g = ctx;
    pthread_mutex_lock(&g->m);
    g->calls++;
    if (!g->entered) {
        g->entered = 1;
        pthread_cond_broadcast(&g->c);
        while (!g->open)
            pthread_cond_wait(&g->c, &g->m);
    }
    pthread_mutex_unlock(&g->m);
    touch(ctx);
    sqz_domain_info d0;
    memset(&d0, 0, sizeof d0);
    d0.tot_pages = d0.max_pages = 1 << 18; /* 1 GiB */
    return sqz_domain_list_add(out, &d0, sizeof d0) == SQZ_OK ? 0 : -1;
}

static int32_t gp_physinfo(void *ctx, struct sqz_physinfo *out) {
    touch(ctx);
    memset(out, 0, sizeof *out);
    out->total_pages = 2 << 20;          /* 8 GiB */
    out->free_pages = (6 * GIB) / 4;     /* 6 GiB free */
    return 0;
}

static int32_t gp_set_maxmem(void *ctx, int32_t domid, int64_t kib) {
    (void)domid;
    (void)kib;
    touch(ctx);
    return 0;
}

static int32_t gp_tx_start(void *ctx, uint32_t *tx) {
    touch(ctx);
    *tx = 1;
    return 0;
}

static int32_t gp_tx_end(void *ctx, uint32_t tx, bool abort_tx) {
    (void)tx;
    (void)abort_tx;
    touch(ctx);
    return 0;
}

static int32_t gp_read(void *ctx, uint32_t tx, const char *path, struct sqz_strings *out) {
    (void)tx;
    (void)path;
    (void)out;
    touch(ctx);
    return 0;
}

static int32_t gp_write(void *ctx, uint32_t tx, const char *path, const char *value) {
    (void)tx;
    (void)path;
    (void)value;
    touch(ctx);
    return 0;
}

static int32_t gp_rm(void *ctx, uint32_t tx, const char *path) {
    (void)tx;
    (void)path;
    touch(ctx);
    return 0;
}

static int32_t gp_directory(void *ctx, uint32_t tx, const char *path, struct sqz_strings *out) {
    (void)tx;
    (void)path;
    (void)out;
    touch(ctx);
    return 0;
}

static double gp_now(void *ctx) {
    touch(ctx);
    return 100.0;
}

static void gp_sleep(void *ctx, double seconds) {
    (void)seconds;
    touch(ctx);
}

static void *free_service(void *svc) {
    sqz_service_free(svc);
    return NULL;
}

/* sqz_service_free returns only once the background balancer's pass is over: the caller may
 * free the platform's ctx right after it (under valgrind, a later callback is an error). */
static void test_service_free_waits_for_the_balancer(void) {
    struct gated_platform *g = calloc(1, sizeof *g);
    pthread_mutex_init(&g->m, NULL);
    pthread_cond_init(&g->c, NULL);
    sqz_platform p;
    memset(&p, 0, sizeof p);
    p.struct_size = sizeof p;
    p.ctx = g;
    p.list_domains = gp_list_domains;
    p.physinfo = gp_physinfo;
    p.set_maxmem_kib = gp_set_maxmem;
    p.transaction_start = gp_tx_start;
    p.transaction_end = gp_tx_end;
    p.read = gp_read;
    p.write = gp_write;
    p.rm = gp_rm;
    p.directory = gp_directory;
    p.now = gp_now;
    p.sleep = gp_sleep;
    sqz_service_config *cfg = service_config();
    CHECK_STATUS(sqz_service_config_set_balance_interval(cfg, 0.01), SQZ_OK);
    sqz_service *svc = NULL;
    CHECK_STATUS(sqz_service_new_platform(&p, cfg, &svc), SQZ_OK);
    sqz_service_config_free(cfg);
    CHECK_STATUS(sqz_service_start_balancer(svc), SQZ_OK);
    /* The balancer's first pass stops inside a domain listing. */
    pthread_mutex_lock(&g->m);
    while (!g->entered)
        pthread_cond_wait(&g->c, &g->m);
    pthread_mutex_unlock(&g->m);
    pthread_t freer;
    pthread_create(&freer, NULL, free_service, svc);
    /* Give a free that does not wait the time to return, then let the pass go on. */
    sleep_ms(200);
    pthread_mutex_lock(&g->m);
    g->open = 1;
    pthread_cond_broadcast(&g->c);
    pthread_mutex_unlock(&g->m);
    pthread_join(freer, NULL);
    CHECK(g->calls >= 2);
    pthread_cond_destroy(&g->c);
    pthread_mutex_destroy(&g->m);
    free(g);
    /* A pass still running would now touch the freed ctx. */
    sleep_ms(100);
}

struct shared_handles {
    sqz_service *svc;
    sqz_fake_host *host;
    int refused;
};

static void *hammer(void *arg) {
    struct shared_handles *s = arg;
    int refused = 0;
    for (int i = 0; i < 2000; i++) {
        int64_t v = 0;
        sqz_status st = (i % 2) ? sqz_get_host_reserved_memory(s->svc, &v)
                                : sqz_fake_host_free_mem(s->host, &v);
        if (st != SQZ_OK)
            refused++;
    }
    return (void *)(intptr_t)refused;
}

/* One service and one fake host, documented thread-safe, shared by four threads: no call is
 * refused as "already in use". */
static void test_shared_handles_serve_every_thread(void) {
    struct shared_handles s;
    s.host = fake_8g();
    sqz_service_config *cfg = service_config();
    CHECK_STATUS(sqz_service_new_fake(s.host, cfg, &s.svc), SQZ_OK);
    sqz_service_config_free(cfg);
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, hammer, &s);
    int refused = 0;
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(t[i], &r);
        refused += (int)(intptr_t)r;
    }
    CHECK(refused == 0);
    sqz_service_free(s.svc);
    sqz_fake_host_free(s.host);
}

/* Every handle is checked for its kind: a squeezer passed as options is refused, not written
 * into (valgrind reports an access past the squeezer's block), and a free of the wrong kind
 * leaves it alone. */
static void test_handles_of_the_wrong_kind(void) {
    sqz_squeezer *sq = NULL;
    CHECK_STATUS(sqz_squeezer_new(NULL, &sq), SQZ_OK);
    sqz_options *as_options = (sqz_options *)(void *)sq;
    CHECK_STATUS(sqz_options_set_deadline(as_options, 5.0), SQZ_ERR_INVALID_ARGUMENT);
    CHECK(message_has("not a live options handle"));
    sqz_squeezer *other = NULL;
    CHECK_STATUS(sqz_squeezer_new(as_options, &other), SQZ_ERR_INVALID_ARGUMENT);
    CHECK(other == NULL);
    sqz_service_config *as_config = (sqz_service_config *)(void *)sq;
    CHECK_STATUS(sqz_service_config_set_slush(as_config, 0), SQZ_ERR_INVALID_ARGUMENT);
    sqz_cancel *as_cancel = (sqz_cancel *)(void *)sq;
    CHECK_STATUS(sqz_cancel_request(as_cancel), SQZ_ERR_INVALID_ARGUMENT);
    sqz_options_free(as_options);
    sqz_service_config_free(as_config);
    sqz_cancel_free(as_cancel);
    sqz_cooperation coop;
    /* Still a live squeezer: it has simply not seen domain 3. */
    CHECK_STATUS(sqz_squeezer_cooperation(sq, 3, &coop), SQZ_ERR_INVALID_ARGUMENT);
    CHECK(message_has("not seen"));
    sqz_squeezer_free(sq);
}

int main(void) {
    test_version();
    test_contract_values();
    test_change_host_free_memory();
    test_success_callback();
    test_free_memory_range_and_balance();
    test_balance_ends_ok_when_nothing_more_can_be_balanced();
    test_cannot_free();
    test_refused_to_cooperate();
    test_options();
    test_adaptive_policy();
    test_log_callback();
    test_bad_arguments();
    test_callback_failures();
    test_builder_outside_make_host();
    test_persistent_squeezer_and_reentry();
    test_terabyte_values_pass_intact();
    test_step();
    test_simulator();
    test_simulated_time_limit();
    char tmpl[] = "/tmp/squeeze-c-XXXXXX";
    if (mkdtemp(tmpl) == NULL) {
        printf("cannot create a temporary directory\n");
        return 1;
    }
    snprintf(svc_dir, sizeof svc_dir, "%s", tmpl);
    test_service_xenopsd_flow();
    test_service_failures();
    test_service_progress_and_cancel();
    test_service_bad_input();
    test_service_over_xen_without_xen();
    test_service_adaptive_policy();
    test_service_free_waits_for_the_balancer();
    test_shared_handles_serve_every_thread();
    test_handles_of_the_wrong_kind();
    char cleanup[160];
    snprintf(cleanup, sizeof cleanup, "rm -rf '%s'", svc_dir);
    if (system(cleanup) != 0) {
        printf("cannot remove %s\n", svc_dir);
    }
    printf("c-client: %u passed, %u failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
