/*
 * A small simulated Xen host driven through sqz_io, written the way a toolstack such as libxl
 * would write its platform: a table of domains, a clock, and callbacks that read and set
 * targets and maxmem. Balloon drivers move at a fixed rate toward their targets; a domain can
 * be made stuck, and any callback can be made to fail, for the error-path tests.
 */
#ifndef SQZ_TEST_HOST_H
#define SQZ_TEST_HOST_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "squeeze.h"

#define HOST_MAX_DOMAINS 16

struct guest {
    sqz_domain d;
    int64_t rate_kib_per_s; /* balloon speed; 0 = stuck */
};

struct host {
    struct guest guests[HOST_MAX_DOMAINS];
    size_t n;
    int64_t free_kib;
    double time;
    int64_t slush_kib;

    /* Fault injection. */
    int fail_set_maxmem_domid;     /* -1: none */
    int fail_execute_action_domid; /* -1: none */
    int fail_make_host;            /* non-zero: make_host returns this */
    bool skip_set_free_mem;        /* make_host "forgets" sqz_host_builder_set_free_mem */
    bool duplicate_domain;         /* make_host adds the first domain twice */
    size_t domain_size;            /* passed to sqz_host_builder_add_domain */
    int now_mode;                  /* 0 ok, 1 NaN, 2 negative, 3 backwards after first call */
    int now_calls;

    /* Re-entrancy probes: a call made from inside set_maxmem. */
    sqz_squeezer *reenter_squeezer;
    sqz_status reenter_status;
    bool free_squeezer_inside;
    sqz_host_builder *kept_builder; /* the builder of the last make_host, kept illegally */

    /* What was asked. */
    unsigned set_maxmem_calls, actions, waits;
    bool allocated_beyond_free; /* a guest tried to take memory the host did not have */
};

static inline struct guest *host_find(struct host *h, int32_t domid) {
    for (size_t i = 0; i < h->n; i++)
        if (h->guests[i].d.domid == domid)
            return &h->guests[i];
    return NULL;
}

static inline void host_init(struct host *h, int64_t free_kib, int64_t slush_kib) {
    memset(h, 0, sizeof *h);
    h->free_kib = free_kib;
    h->slush_kib = slush_kib;
    h->fail_set_maxmem_domid = -1;
    h->fail_execute_action_domid = -1;
    h->domain_size = sizeof(sqz_domain);
}

static inline void host_add(struct host *h, int32_t domid, int64_t min, int64_t max,
                            int64_t actual, int64_t rate) {
    struct guest *g = &h->guests[h->n++];
    g->d.domid = domid;
    g->d.can_balloon = true;
    g->d.dynamic_min_kib = min;
    g->d.target_kib = actual;
    g->d.dynamic_max_kib = max;
    g->d.memory_actual_kib = actual;
    g->d.memory_max_kib = actual;
    g->d.inaccuracy_kib = 4;
    g->rate_kib_per_s = rate;
}

static int32_t host_make_host(void *ctx, sqz_host_builder *b) {
    struct host *h = ctx;
    h->kept_builder = b;
    if (h->fail_make_host)
        return h->fail_make_host;
    for (size_t i = 0; i < h->n; i++)
        if (sqz_host_builder_add_domain(b, &h->guests[i].d, h->domain_size) != SQZ_OK)
            return -1;
    if (h->duplicate_domain && h->n > 0)
        (void)sqz_host_builder_add_domain(b, &h->guests[0].d, h->domain_size);
    if (!h->skip_set_free_mem && sqz_host_builder_set_free_mem(b, h->free_kib) != SQZ_OK)
        return -1;
    return 0;
}

static int32_t host_set_maxmem(void *ctx, int32_t domid, int64_t kib) {
    struct host *h = ctx;
    h->set_maxmem_calls++;
    if (h->reenter_squeezer) {
        sqz_io none;
        memset(&none, 0, sizeof none);
        h->reenter_status = sqz_squeezer_balance_memory(h->reenter_squeezer, &none);
        if (h->free_squeezer_inside)
            sqz_squeezer_free(h->reenter_squeezer);
        h->reenter_squeezer = NULL;
    }
    if (domid == h->fail_set_maxmem_domid)
        return -5;
    struct guest *g = host_find(h, domid);
    if (!g)
        return -2;
    g->d.memory_max_kib = kib;
    return 0;
}

static int32_t host_execute_action(void *ctx, int32_t domid, int64_t target) {
    struct host *h = ctx;
    h->actions++;
    if (domid == h->fail_execute_action_domid)
        return 3;
    struct guest *g = host_find(h, domid);
    if (!g)
        return -2;
    /* As libxl does: raise maxmem before a target above it, lower it after. */
    g->d.target_kib = target;
    g->d.memory_max_kib = target;
    return 0;
}

static void host_wait(void *ctx, double seconds) {
    struct host *h = ctx;
    h->waits++;
    h->time += seconds;
    for (size_t i = 0; i < h->n; i++) {
        struct guest *g = &h->guests[i];
        int64_t step = (int64_t)(g->rate_kib_per_s * seconds);
        int64_t gap = g->d.target_kib - g->d.memory_actual_kib;
        int64_t move = gap > 0 ? (gap < step ? gap : step) : (-gap < step ? gap : -step);
        if (move > 0 && g->d.memory_actual_kib + move > g->d.memory_max_kib)
            move = g->d.memory_max_kib - g->d.memory_actual_kib;
        if (move > h->free_kib) {
            h->allocated_beyond_free = true;
            move = 0;
        }
        g->d.memory_actual_kib += move;
        h->free_kib -= move;
    }
}

static double host_now(void *ctx) {
    struct host *h = ctx;
    h->now_calls++;
    switch (h->now_mode) {
    case 1:
        return NAN;
    case 2:
        return -1.0;
    case 3:
        return h->now_calls > 1 ? 50.0 : 100.0;
    default:
        return h->time;
    }
}

static inline sqz_io host_io(struct host *h) {
    sqz_io io;
    memset(&io, 0, sizeof io);
    io.struct_size = sizeof io;
    io.ctx = h;
    io.make_host = host_make_host;
    io.set_maxmem = host_set_maxmem;
    io.execute_action = host_execute_action;
    io.wait = host_wait;
    io.now = host_now;
    io.target_host_free_mem_kib = h->slush_kib;
    io.free_memory_tolerance_kib = 0;
    return io;
}

#endif
