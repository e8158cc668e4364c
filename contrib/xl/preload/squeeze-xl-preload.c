/*
 * squeeze-xl-preload: memory for new Xen domains through squeeze, for an unpatched xl (or
 * libvirt's libxl driver) loaded with
 *
 *     LD_PRELOAD=/usr/local/lib/squeeze-xl-preload.so xl create vm.cfg
 *
 * It wraps libxl_domain_create_new(): before the domain is built it reserves what
 * libxl_domain_need_memory() says the domain needs (squeeze balloons other guests down within
 * their dynamic ranges if the host lacks free memory); once the domain exists it hands the
 * reservation to it and writes its ballooning policy; if the build failed it deletes the
 * reservation. squeeze releases the reservation itself when the domain goes away.
 *
 * The policy comes from /etc/xen/squeeze.d/<domain name>.cfg (squeeze_* keys) and the
 * squeeze_default_* keys of /etc/xen/xl.conf: an unpatched xl does not pass the VM's own
 * config file on. Only the synchronous call is wrapped (ao_how == NULL, which is what xl and
 * libvirt's domain start use); an asynchronous one, or SQUEEZE_PRELOAD=off in the
 * environment, goes straight to libxl. Set autoballoon="off" in xl.conf so that xl's own
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

#define XL_CONF "/etc/xen/xl.conf"
#define POLICY_DIR "/etc/xen/squeeze.d"

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
    /* Session names allow A-Z a-z 0-9 . _ : @ + - only. */
    for (char *c = session; *c; c++)
        if (!strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:@+-", *c))
            *c = '_';

    if (libxl_domain_need_memory(ctx, d_config, INVALID_DOMID, &need_memkb) < 0) {
        warn("cannot size the new domain", "libxl_domain_need_memory failed");
        return ERROR_FAIL;
    }
    if (sqz_service_new_xen(NULL, &svc) || sqz_login(svc, session) ||
        sqz_reserve_memory(svc, session, (int64_t)need_memkb, id)) {
        fprintf(stderr, "squeeze: cannot reserve %" PRIu64 " KiB for the domain: %s\n",
                need_memkb, sqz_last_error_message());
        sqz_service_free(svc);
        return ERROR_NOMEM;
    }

    rc = real(ctx, d_config, domid, ao_how, aop_console_how);

    if (rc) {
        if (sqz_delete_reservation(svc, session, id))
            warn("cannot delete the reservation", sqz_last_error_message());
    } else {
        const libxl_domain_build_info *b = &d_config->b_info;
        uint64_t video = b->video_memkb == LIBXL_MEMKB_DEFAULT ? 0 : b->video_memkb;
        char path[512];
        char *vm_text = NULL, *host_text = read_text(XL_CONF);

        if (sqz_transfer_reservation_to_domain(svc, session, id, (int32_t)*domid))
            warn("cannot hand the reservation to the domain", sqz_last_error_message());
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
