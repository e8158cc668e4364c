/*
 * squeeze-xl-preload: memory for new Xen domains through squeeze, for an unpatched xl (or
 * libvirt's libxl driver) loaded with
 *
 *     LD_PRELOAD=/usr/local/lib/squeeze-xl-preload.so xl create vm.cfg
 *
 * It wraps libxl_domain_create_new(): before the domain is built it reserves what
 * libxl_domain_need_memory() says the domain needs (squeeze balloons other guests down within
 * their dynamic ranges if the host lacks free memory). It hands the reservation to the domain
 * as soon as the domain exists and before its memory is populated, from libxl's first
 * xc_domain_setmaxmem() call for it (libxl__build_pre), which it wraps too: from then on the
 * memory counts once, as the domain's initial reservation, so another create reserving at the
 * same time does not see it twice. Once the domain is built it writes the domain's ballooning
 * policy; if the build failed it deletes the reservation. squeeze releases the reservation
 * itself when the domain goes away.
 *
 * The policy comes from /etc/xen/squeeze.d/<domain name>.cfg (squeeze_* keys) and the
 * squeeze_default_* keys of /etc/xen/xl.conf: an unpatched xl does not pass the VM's own
 * config file on. Only the synchronous call is wrapped (ao_how == NULL, which is what xl and
 * libvirt's domain start use); an asynchronous one, or SQUEEZE_PRELOAD=off in the
 * environment, goes straight to libxl. SQUEEZE_PRELOAD=verbose says on stderr what was
 * reserved and when it was handed over, with the library's own log (targets set, guests
 * judged) at info level; SQUEEZE_PRELOAD=debug adds its debug records (each look at the host). Set autoballoon="off" in xl.conf so that xl's own
 * freemem() does not shrink dom0 first.
 *
 * Copyright the squeeze authors. LGPL-2.1-or-later.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libxl.h>
#include <squeeze.h>
#include <xenctrl.h>

#define XL_CONF "/etc/xen/xl.conf"
#define POLICY_DIR "/etc/xen/squeeze.d"

typedef int setmaxmem_fn(xc_interface *xch, uint32_t domid, uint64_t max_memkb);
typedef int create_new_fn(libxl_ctx *ctx, libxl_domain_config *d_config,
                          uint32_t *domid, const libxl_asyncop_how *ao_how,
                          const libxl_asyncprogress_how *aop_console_how);

/* A whole small text file, NUL-terminated, or NULL when it cannot be read. */
static char *read_text(const char *path)
{
    FILE *f = fopen(path, "r");
    char *text = NULL;
    size_t len = 0, cap = 0, n;

    if (!f)
        return NULL;
    for (;;) {
        if (cap - len < 4096) {
            char *bigger = realloc(text, cap + 65536);
            if (!bigger)
                break;
            text = bigger;
            cap += 65536;
        }
        n = fread(text + len, 1, cap - len - 1, f);
        len += n;
        if (n == 0)
            break;
    }
    fclose(f);
    if (text)
        text[len] = 0;
    return text;
}

static void warn(const char *what, const char *detail)
{
    fprintf(stderr, "squeeze: %s: %s\n", what, detail);
}

/* SQUEEZE_PRELOAD=verbose: the library's log records on stderr, as the daemon prints them. */
static void log_to_stderr(void *ctx, int32_t level, const char *target, const char *message)
{
    static const char *const names[] = { "", "ERROR", "WARN", "INFO", "DEBUG", "TRACE" };
    (void)ctx;
    (void)target;
    fprintf(stderr, "squeeze %s: %s\n", level >= 1 && level <= 5 ? names[level] : "?", message);
}

/* A create in progress through squeeze, and where its reservation went. */
struct pending {
    struct sqz_service *svc;
    const char *session;
    const char *id;
    uint32_t domid;   /* the domain it went to, once transferred */
    int tried;        /* the domain being created was seen (whether the transfer worked) */
    int transferred;
    int verbose;
};

/* Per thread: a synchronous libxl call builds the domain in the caller's thread, and libvirt
 * may start several domains at once from different threads. */
static __thread struct pending *pending;

static int transfer(struct pending *p, uint32_t domid, const char *when)
{
    if (sqz_transfer_reservation_to_domain(p->svc, p->session, p->id, (int32_t)domid)) {
        warn("cannot hand the reservation to the domain", sqz_last_error_message());
        return -1;
    }
    p->transferred = 1;
    p->domid = domid;
    if (p->verbose)
        fprintf(stderr, "squeeze: reservation %s handed to domain %u %s\n", p->id, domid, when);
    return 0;
}

/*
 * libxl__build_pre() sets the new domain's maxmem once the domain and its store directory
 * exist and before any of its memory is populated: the moment to hand the reservation over.
 * The transfer sets maxmem to the reservation; libxl's own value (its target plus slack) is
 * set right after it, so the domain is built with exactly what libxl asked for. Any other
 * caller (xl mem-max, a create not through squeeze) goes straight through.
 */
int xc_domain_setmaxmem(xc_interface *xch, uint32_t domid, uint64_t max_memkb)
{
    setmaxmem_fn *real = (setmaxmem_fn *)dlsym(RTLD_NEXT, "xc_domain_setmaxmem");
    struct pending *p = pending;

    if (!real) {
        warn("xc_domain_setmaxmem not found", dlerror());
        errno = ENOSYS;
        return -1;
    }
    /* The first call during the create is for the domain being created (a device-model
     * stub domain, if any, is built after it). */
    if (p && !p->tried && domid != 0) {
        /* Set first: the transfer itself sets maxmem through this same function. */
        p->tried = 1;
        transfer(p, domid, "before its build");
    }
    return real(xch, domid, max_memkb);
}

int libxl_domain_create_new(libxl_ctx *ctx, libxl_domain_config *d_config,
                            uint32_t *domid, const libxl_asyncop_how *ao_how,
                            const libxl_asyncprogress_how *aop_console_how)
{
    create_new_fn *real = (create_new_fn *)dlsym(RTLD_NEXT, "libxl_domain_create_new");
    const char *mode = getenv("SQUEEZE_PRELOAD");
    struct sqz_service *svc = NULL;
    char session[64], id[SQZ_RESERVATION_ID_SIZE] = "";
    uint64_t need_memkb = 0;
    int rc;

    if (!real) {
        warn("libxl_domain_create_new not found", dlerror());
        return ERROR_FAIL;
    }
    if (ao_how || (mode && !strcmp(mode, "off")))
        return real(ctx, d_config, domid, ao_how, aop_console_how);

    snprintf(session, sizeof(session), "%s-%ld",
             program_invocation_short_name, (long)getpid());
    /* Session names allow A-Z a-z 0-9 _ @ - only (a store path element). */
    for (char *c = session; *c; c++)
        if (!strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_@-", *c))
            *c = '_';

    if (libxl_domain_need_memory(ctx, d_config, INVALID_DOMID, &need_memkb) < 0) {
        warn("cannot size the new domain", "libxl_domain_need_memory failed");
        return ERROR_FAIL;
    }
    if (mode && (!strcmp(mode, "verbose") || !strcmp(mode, "debug")))
        sqz_set_log_callback(log_to_stderr, NULL,
                             strcmp(mode, "debug") ? SQZ_LOG_INFO : SQZ_LOG_DEBUG);
    if (sqz_service_new_xen(NULL, &svc) || sqz_login(svc, session) ||
        sqz_reserve_memory(svc, session, (int64_t)need_memkb, id)) {
        fprintf(stderr, "squeeze: cannot reserve %" PRIu64 " KiB for the domain: %s\n",
                need_memkb, sqz_last_error_message());
        sqz_service_free(svc);
        return ERROR_NOMEM;
    }

    struct pending p = { .svc = svc, .session = session, .id = id,
                         .verbose = mode && (!strcmp(mode, "verbose") || !strcmp(mode, "debug")) };
    if (p.verbose)
        fprintf(stderr, "squeeze: reserved %" PRIu64 " KiB (reservation %s, session %s)\n",
                need_memkb, id, session);
    pending = &p;
    rc = real(ctx, d_config, domid, ao_how, aop_console_how);
    pending = NULL;

    if (rc) {
        /* Transferred or not: libxl destroyed the domain, nothing may keep the memory. */
        if (sqz_delete_reservation(svc, session, id))
            warn("cannot delete the reservation", sqz_last_error_message());
    } else {
        const libxl_domain_build_info *b = &d_config->b_info;
        uint64_t video = b->video_memkb == LIBXL_MEMKB_DEFAULT ? 0 : b->video_memkb;
        char path[512];
        char *vm_text = NULL, *host_text = read_text(XL_CONF);

        /* Normally done before the build; late if libxl never set maxmem (or the transfer
         * failed then), which still releases the memory with the domain. */
        if (!p.transferred)
            transfer(&p, *domid, "after its build");
        else if (p.domid != *domid)
            fprintf(stderr, "squeeze: the reservation went to domain %u, not to domain %u\n",
                    p.domid, *domid);
        if (d_config->c_info.name &&
            snprintf(path, sizeof(path), POLICY_DIR "/%s.cfg", d_config->c_info.name) <
                (int)sizeof(path))
            vm_text = read_text(path);
        /* The guest sees its memory less the video RAM, as libxl's memory/target does. */
        if (sqz_set_guest_policy(svc, (int32_t)*domid, vm_text, host_text,
                                 (int64_t)(b->target_memkb - video),
                                 (int64_t)(b->max_memkb - video)))
            warn("the domain keeps a fixed size", sqz_last_error_message());
        free(vm_text);
        free(host_text);
    }
    sqz_service_free(svc);
    return rc;
}
