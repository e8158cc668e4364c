/* squeeze: OCaml stubs for the memory service (Squeeze_memory) over the C API in squeeze.h.
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * Each call copies its arguments out of the OCaml heap (strings may move while the runtime
 * lock is released), releases the runtime lock, calls libsqueeze, copies the library's
 * last-error details into C memory while still on the same thread, takes the lock back and
 * builds a reply: [Done v] or [Failed (status, message, required, free, domids)]. The OCaml
 * side turns a failure into squeezed's exception. Only the progress closure of a reservation
 * runs OCaml code during a call: its trampoline takes the lock back around it, and an exception
 * it raises stops the reservation and is raised once the library has returned. Otherwise no
 * OCaml code runs while the lock is released. The lock is released with
 * caml_enter_blocking_section_no_pending, which runs no OCaml signal handler (one may raise):
 * nothing can then unwind past the C strings a stub has allocated. Pending signals are
 * handled at the next OCaml poll point.
 *
 * Services and fake hosts are custom blocks whose finaliser releases the library handle. A
 * stub keeps its custom block registered as a root for the whole call, so the finaliser can
 * never run while the handle is in use.
 */

#define CAML_NAME_SPACE
#include <caml/alloc.h>
#include <caml/callback.h>
#include <caml/custom.h>
#include <caml/fail.h>
#include <caml/memory.h>
#include <caml/mlvalues.h>
#include <caml/signals.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <squeeze.h>

#include "squeeze_handle.h"

/* Tags of Squeeze_memory's reply type. */
enum { REPLY_DONE, REPLY_FAILED };

/* --- Handles -------------------------------------------------------------------------------- */

#define Service_val(v) SQZ_ML_HANDLE_SLOT(sqz_service, v)
#define Fake_val(v) SQZ_ML_HANDLE_SLOT(sqz_fake_host, v)

SQZ_ML_HANDLE(service, sqz_service, sqz_service_free, "org.squeeze.service")
SQZ_ML_HANDLE(fake, sqz_fake_host, sqz_fake_host_free, "org.squeeze.fake_host")

/* --- Outcomes ------------------------------------------------------------------------------ */

/* A failed call's details, copied out of the library before anything else can replace them. */
struct outcome {
  sqz_status status;
  char *message; /* malloc'ed, may be NULL */
  int64_t required_kib, free_kib;
  int32_t *domids; /* malloc'ed, n_domids entries */
  size_t n_domids;
};

/* Runs without the runtime lock: touches no OCaml value. */
static void collect(struct outcome *o, sqz_status status) {
  memset(o, 0, sizeof *o);
  o->status = status;
  if (status == SQZ_OK)
    return;
  {
    const char *msg = sqz_last_error_message();
    o->message = strdup(msg ? msg : "");
  }
  if (status == SQZ_ERR_CANNOT_FREE_THIS_MUCH_MEMORY &&
      sqz_last_error_cannot_free(&o->required_kib, &o->free_kib) != SQZ_OK) {
    o->required_kib = -1;
    o->free_kib = -1;
  }
  if (status == SQZ_ERR_DOMAINS_REFUSED_TO_COOPERATE) {
    size_t n = sqz_last_error_domids(NULL, 0);
    if (n > 0) {
      o->domids = malloc(n * sizeof *o->domids);
      n = o->domids ? sqz_last_error_domids(o->domids, n) : 0;
    }
    o->n_domids = n;
  }
}

/* Builds the reply for [o] with the lock held, [payload] being the result when it succeeded,
   and releases [o]'s memory. */
static value reply_of(struct outcome *o, value payload) {
  CAMLparam1(payload);
  CAMLlocal5(reply, msg, req, fr, ids);
  size_t i;
  if (o->status == SQZ_OK) {
    reply = caml_alloc(1, REPLY_DONE);
    Store_field(reply, 0, payload);
  } else {
    msg = caml_copy_string(o->message ? o->message : "out of memory while reporting an error");
    req = caml_copy_int64(o->required_kib);
    fr = caml_copy_int64(o->free_kib);
    ids = caml_alloc(o->n_domids, 0);
    for (i = 0; i < o->n_domids; i++)
      Store_field(ids, i, Val_int(o->domids[i]));
    reply = caml_alloc(5, REPLY_FAILED);
    Store_field(reply, 0, Val_int(o->status));
    Store_field(reply, 1, msg);
    Store_field(reply, 2, req);
    Store_field(reply, 3, fr);
    Store_field(reply, 4, ids);
  }
  free(o->message);
  free(o->domids);
  o->message = NULL;
  o->domids = NULL;
  CAMLreturn(reply);
}

/* A failure found before the library is called (an argument C cannot carry). */
static value refuse(const char *message) {
  struct outcome o;
  memset(&o, 0, sizeof o);
  o.status = SQZ_ERR_INVALID_ARGUMENT;
  o.message = strdup(message);
  return reply_of(&o, Val_unit);
}

/* A copy of an OCaml string for use without the lock, or NULL if it holds a NUL byte. */
static char *c_string(value s) {
  if (!caml_string_is_c_safe(s))
    return NULL;
  return caml_stat_strdup(String_val(s));
}

/* --- Fake host ----------------------------------------------------------------------------- */

CAMLprim value sqz_ml_fake_new(value v_total, value v_xen, value v_dom0, value v_delay) {
  CAMLparam4(v_total, v_xen, v_dom0, v_delay);
  CAMLlocal1(handle);
  sqz_fake_config cfg;
  sqz_fake_host *f = NULL;
  struct outcome o;
  sqz_status st;
  memset(&cfg, 0, sizeof cfg);
  cfg.struct_size = sizeof cfg;
  cfg.total_kib = Int64_val(v_total);
  cfg.xen_kib = Int64_val(v_xen);
  cfg.dom0_kib = Int64_val(v_dom0);
  cfg.boot_delay_s = Double_val(v_delay);
  caml_enter_blocking_section_no_pending();
  st = sqz_fake_host_new(&cfg, &f);
  collect(&o, st);
  caml_leave_blocking_section();
  handle = Val_unit;
  if (st == SQZ_OK)
    handle = sqz_ml_wrap(&fake_ops, f);
  CAMLreturn(reply_of(&o, handle));
}

/* [v_stuck]: the balloon driver never moves (to test Domains_refused_to_cooperate). */
CAMLprim value sqz_ml_fake_create_domain(value v_fake, value v_target, value v_min,
                                         value v_max, value v_offset, value v_rate,
                                         value v_stuck) {
  CAMLparam5(v_fake, v_target, v_min, v_max, v_offset);
  CAMLxparam2(v_rate, v_stuck);
  sqz_fake_guest g;
  sqz_fake_host *f = Fake_val(v_fake);
  int32_t domid = -1;
  struct outcome o;
  sqz_status st;
  memset(&g, 0, sizeof g);
  g.struct_size = sizeof g;
  g.target_kib = Int64_val(v_target);
  g.dynamic_min_kib = Int64_val(v_min);
  g.dynamic_max_kib = Int64_val(v_max);
  g.offset_kib = Int64_val(v_offset);
  g.behaviour.kind = Bool_val(v_stuck) ? SQZ_BEHAVIOUR_STUCK : SQZ_BEHAVIOUR_IDEAL;
  g.behaviour.rate_kib_per_s = Int64_val(v_rate);
  caml_enter_blocking_section_no_pending();
  st = sqz_fake_host_create_domain(f, &g, sizeof g, &domid);
  collect(&o, st);
  caml_leave_blocking_section();
  CAMLreturn(reply_of(&o, Val_int(domid)));
}

CAMLprim value sqz_ml_fake_create_domain_bc(value *argv, int argn) {
  (void)argn;
  return sqz_ml_fake_create_domain(argv[0], argv[1], argv[2], argv[3], argv[4], argv[5],
                                   argv[6]);
}

enum fake_op { FAKE_BUILD, FAKE_UNPAUSE, FAKE_DESTROY, FAKE_ADVANCE, FAKE_FREE_MEM };

static value fake_call(value v_fake, enum fake_op op, int32_t domid, int64_t kib,
                       double seconds) {
  CAMLparam1(v_fake);
  CAMLlocal1(payload);
  sqz_fake_host *f = Fake_val(v_fake);
  int64_t out = 0;
  struct outcome o;
  sqz_status st = SQZ_OK;
  caml_enter_blocking_section_no_pending();
  switch (op) {
  case FAKE_BUILD:
    st = sqz_fake_host_build_domain(f, domid, kib);
    break;
  case FAKE_UNPAUSE:
    st = sqz_fake_host_unpause(f, domid);
    break;
  case FAKE_DESTROY:
    st = sqz_fake_host_destroy_domain(f, domid);
    break;
  case FAKE_ADVANCE:
    st = sqz_fake_host_advance(f, seconds);
    break;
  case FAKE_FREE_MEM:
    st = sqz_fake_host_free_mem(f, &out);
    break;
  }
  collect(&o, st);
  caml_leave_blocking_section();
  payload = op == FAKE_FREE_MEM ? caml_copy_int64(out) : Val_unit;
  CAMLreturn(reply_of(&o, payload));
}

/* Domids are checked to fit in 32 bits on the OCaml side. */
CAMLprim value sqz_ml_fake_build(value v_fake, value v_domid, value v_kib) {
  CAMLparam3(v_fake, v_domid, v_kib);
  CAMLreturn(fake_call(v_fake, FAKE_BUILD, (int32_t)Long_val(v_domid), Int64_val(v_kib), 0));
}

CAMLprim value sqz_ml_fake_unpause(value v_fake, value v_domid) {
  CAMLparam2(v_fake, v_domid);
  CAMLreturn(fake_call(v_fake, FAKE_UNPAUSE, (int32_t)Long_val(v_domid), 0, 0));
}

CAMLprim value sqz_ml_fake_destroy(value v_fake, value v_domid) {
  CAMLparam2(v_fake, v_domid);
  CAMLreturn(fake_call(v_fake, FAKE_DESTROY, (int32_t)Long_val(v_domid), 0, 0));
}

CAMLprim value sqz_ml_fake_advance(value v_fake, value v_seconds) {
  CAMLparam2(v_fake, v_seconds);
  CAMLreturn(fake_call(v_fake, FAKE_ADVANCE, 0, 0, Double_val(v_seconds)));
}

CAMLprim value sqz_ml_fake_free_mem(value v_fake) {
  CAMLparam1(v_fake);
  CAMLreturn(fake_call(v_fake, FAKE_FREE_MEM, 0, 0, 0));
}

/* Replies {tot_kib; max_kib; booted} (Squeeze_memory.Fake_host.domain). */
CAMLprim value sqz_ml_fake_domain(value v_fake, value v_domid) {
  CAMLparam2(v_fake, v_domid);
  CAMLlocal3(rec, tot, max);
  sqz_fake_host *f = Fake_val(v_fake);
  int32_t domid = (int32_t)Long_val(v_domid);
  sqz_fake_domain d;
  struct outcome o;
  sqz_status st;
  memset(&d, 0, sizeof d);
  caml_enter_blocking_section_no_pending();
  st = sqz_fake_host_domain(f, domid, &d);
  collect(&o, st);
  caml_leave_blocking_section();
  tot = caml_copy_int64(d.tot_kib);
  max = caml_copy_int64(d.max_kib);
  rec = caml_alloc_tuple(3);
  Store_field(rec, 0, tot);
  Store_field(rec, 1, max);
  Store_field(rec, 2, Val_bool(d.booted));
  CAMLreturn(reply_of(&o, rec));
}

/* --- Service ------------------------------------------------------------------------------- */

/* A config with the given settings; called without the runtime lock. */
static sqz_status new_config(int has_slush, int64_t slush, const char *lock, const char *record,
                             int32_t policy, int32_t dom0, int64_t dom0_min, int64_t dom0_max,
                             sqz_service_config **cfg) {
  sqz_status st = sqz_service_config_new(cfg);
  if (st == SQZ_OK && has_slush)
    st = sqz_service_config_set_slush(*cfg, slush);
  if (st == SQZ_OK && lock)
    st = sqz_service_config_set_lock_path(*cfg, lock);
  if (st == SQZ_OK && record)
    st = sqz_service_config_set_boot_time_record_path(*cfg, record);
  if (st == SQZ_OK)
    st = sqz_service_config_set_policy(*cfg, policy);
  if (st == SQZ_OK)
    st = sqz_service_config_set_domain_zero(*cfg, dom0, dom0_min, dom0_max);
  return st;
}

/* A service over the fake host [v_fake] or, when it is None, over this host's Xen. [slush] is
   an int64 option, the paths string options, [v_choice] (adaptive, domain 0's
   SQZ_DOMAIN_ZERO_* policy, its dynamic-min, its dynamic-max or 0, the balance interval or 0)
   : bool * int * int64 * int64 * float. */
static value new_service(value v_fake, value v_slush, value v_lock, value v_record,
                         value v_choice) {
  CAMLparam5(v_fake, v_slush, v_lock, v_record, v_choice);
  CAMLlocal1(handle);
  int over_fake = Is_block(v_fake);
  sqz_fake_host *f = over_fake ? Fake_val(Field(v_fake, 0)) : NULL;
  sqz_service_config *cfg = NULL;
  sqz_service *s = NULL;
  char *lock = NULL, *record = NULL;
  int has_slush = Is_block(v_slush);
  int64_t slush = has_slush ? Int64_val(Field(v_slush, 0)) : 0;
  int32_t policy = Bool_val(Field(v_choice, 0)) ? SQZ_POLICY_ADAPTIVE : SQZ_POLICY_CLASSIC;
  int32_t dom0 = (int32_t)Int_val(Field(v_choice, 1));
  int64_t dom0_min = Int64_val(Field(v_choice, 2));
  int64_t dom0_max = Int64_val(Field(v_choice, 3));
  double interval = Double_val(Field(v_choice, 4));
  struct outcome o;
  sqz_status st;
  if (Is_block(v_lock) && (lock = c_string(Field(v_lock, 0))) == NULL)
    CAMLreturn(refuse("lock path contains a NUL byte"));
  if (Is_block(v_record) && (record = c_string(Field(v_record, 0))) == NULL) {
    caml_stat_free(lock);
    CAMLreturn(refuse("boot-time record path contains a NUL byte"));
  }
  caml_enter_blocking_section_no_pending();
  st = new_config(has_slush, slush, lock, record, policy, dom0, dom0_min, dom0_max, &cfg);
  if (st == SQZ_OK && interval > 0)
    st = sqz_service_config_set_balance_interval(cfg, interval);
  if (st == SQZ_OK)
    st = over_fake ? sqz_service_new_fake(f, cfg, &s) : sqz_service_new_xen(cfg, &s);
  collect(&o, st);
  sqz_service_config_free(cfg);
  caml_leave_blocking_section();
  caml_stat_free(lock);
  caml_stat_free(record);
  handle = Val_unit;
  if (st == SQZ_OK)
    handle = sqz_ml_wrap(&service_ops, s);
  CAMLreturn(reply_of(&o, handle));
}

CAMLprim value sqz_ml_service_new_fake(value v_fake, value v_slush, value v_lock,
                                       value v_record, value v_choice) {
  CAMLparam5(v_fake, v_slush, v_lock, v_record, v_choice);
  CAMLlocal1(some);
  some = caml_alloc_small(1, 0);
  Field(some, 0) = v_fake;
  CAMLreturn(new_service(some, v_slush, v_lock, v_record, v_choice));
}

CAMLprim value sqz_ml_service_new_xen(value v_slush, value v_lock, value v_record,
                                      value v_choice) {
  return new_service(Val_none, v_slush, v_lock, v_record, v_choice);
}

/* Replies (SQZ_DOMAIN_ZERO_* policy, dynamic-min, dynamic-max), KiB. */
CAMLprim value sqz_ml_get_domain_zero_policy(value v_s) {
  CAMLparam1(v_s);
  CAMLlocal3(lo, hi, triple);
  sqz_service *s = Service_val(v_s);
  int32_t policy = 0;
  int64_t min = 0, max = 0;
  struct outcome o;
  sqz_status st;
  caml_enter_blocking_section_no_pending();
  st = sqz_get_domain_zero_policy(s, &policy, &min, &max);
  collect(&o, st);
  caml_leave_blocking_section();
  lo = caml_copy_int64(min);
  hi = caml_copy_int64(max);
  triple = caml_alloc_tuple(3);
  Store_field(triple, 0, Val_int(policy));
  Store_field(triple, 1, lo);
  Store_field(triple, 2, hi);
  CAMLreturn(reply_of(&o, triple));
}

CAMLprim value sqz_ml_login(value v_s, value v_name) {
  CAMLparam2(v_s, v_name);
  sqz_service *s = Service_val(v_s);
  char *name = c_string(v_name);
  struct outcome o;
  sqz_status st;
  if (name == NULL)
    CAMLreturn(refuse("service name contains a NUL byte"));
  caml_enter_blocking_section_no_pending();
  st = sqz_login(s, name);
  collect(&o, st);
  caml_leave_blocking_section();
  caml_stat_free(name);
  CAMLreturn(reply_of(&o, Val_unit));
}

/* reserve_memory when [v_max] is None, reserve_memory_range otherwise; replies (id, kib). */
CAMLprim value sqz_ml_reserve(value v_s, value v_session, value v_min, value v_max) {
  CAMLparam4(v_s, v_session, v_min, v_max);
  CAMLlocal3(id, kib, pair);
  sqz_service *s = Service_val(v_s);
  char *session = c_string(v_session);
  char buf[SQZ_RESERVATION_ID_SIZE];
  int64_t min = Int64_val(v_min);
  int ranged = Is_block(v_max);
  int64_t max = ranged ? Int64_val(Field(v_max, 0)) : 0;
  int64_t reserved = min;
  struct outcome o;
  sqz_status st;
  if (session == NULL)
    CAMLreturn(refuse("session contains a NUL byte"));
  memset(buf, 0, sizeof buf);
  caml_enter_blocking_section_no_pending();
  if (ranged)
    st = sqz_reserve_memory_range(s, session, min, max, buf, &reserved);
  else
    st = sqz_reserve_memory(s, session, min, buf);
  collect(&o, st);
  caml_leave_blocking_section();
  caml_stat_free(session);
  buf[sizeof buf - 1] = '\0';
  id = caml_copy_string(buf);
  kib = caml_copy_int64(reserved);
  pair = caml_alloc_tuple(2);
  Store_field(pair, 0, id);
  Store_field(pair, 1, kib);
  CAMLreturn(reply_of(&o, pair));
}

/* transfer when [v_domid] is Some, delete otherwise. */
CAMLprim value sqz_ml_reservation(value v_s, value v_session, value v_id, value v_domid) {
  CAMLparam4(v_s, v_session, v_id, v_domid);
  sqz_service *s = Service_val(v_s);
  char *session = c_string(v_session);
  char *id = c_string(v_id);
  int transfer = Is_block(v_domid);
  int32_t domid = transfer ? (int32_t)Long_val(Field(v_domid, 0)) : 0;
  struct outcome o;
  sqz_status st;
  if (session == NULL || id == NULL) {
    caml_stat_free(session);
    caml_stat_free(id);
    CAMLreturn(refuse("session or reservation id contains a NUL byte"));
  }
  caml_enter_blocking_section_no_pending();
  if (transfer)
    st = sqz_transfer_reservation_to_domain(s, session, id, domid);
  else
    st = sqz_delete_reservation(s, session, id);
  collect(&o, st);
  caml_leave_blocking_section();
  caml_stat_free(session);
  caml_stat_free(id);
  CAMLreturn(reply_of(&o, Val_unit));
}

CAMLprim value sqz_ml_query_reservation(value v_s, value v_session, value v_domid) {
  CAMLparam3(v_s, v_session, v_domid);
  CAMLlocal1(id);
  sqz_service *s = Service_val(v_s);
  char *session = c_string(v_session);
  int32_t domid = (int32_t)Long_val(v_domid);
  char buf[SQZ_RESERVATION_ID_SIZE];
  struct outcome o;
  sqz_status st;
  if (session == NULL)
    CAMLreturn(refuse("session contains a NUL byte"));
  memset(buf, 0, sizeof buf);
  caml_enter_blocking_section_no_pending();
  st = sqz_query_reservation_of_domain(s, session, domid, buf);
  collect(&o, st);
  caml_leave_blocking_section();
  caml_stat_free(session);
  buf[sizeof buf - 1] = '\0';
  id = caml_copy_string(buf);
  CAMLreturn(reply_of(&o, id));
}

enum host_op {
  HOST_BALANCE,
  HOST_RESERVED,
  HOST_INITIAL_FREE,
  HOST_START_BALANCER,
  HOST_STOP_BALANCER
};

static value host_call(value v_s, enum host_op op) {
  CAMLparam1(v_s);
  CAMLlocal1(payload);
  sqz_service *s = Service_val(v_s);
  int64_t out = 0;
  struct outcome o;
  sqz_status st = SQZ_OK;
  caml_enter_blocking_section_no_pending();
  switch (op) {
  case HOST_BALANCE:
    st = sqz_service_balance_memory(s);
    break;
  case HOST_RESERVED:
    st = sqz_get_host_reserved_memory(s, &out);
    break;
  case HOST_INITIAL_FREE:
    st = sqz_get_host_initial_free_memory(s, &out);
    break;
  case HOST_START_BALANCER:
    st = sqz_service_start_balancer(s);
    break;
  case HOST_STOP_BALANCER:
    /* Waits for the balancer's thread, which may be in the middle of a pass. */
    st = sqz_service_stop_balancer(s);
    break;
  }
  collect(&o, st);
  caml_leave_blocking_section();
  payload = op == HOST_RESERVED || op == HOST_INITIAL_FREE ? caml_copy_int64(out) : Val_unit;
  CAMLreturn(reply_of(&o, payload));
}

CAMLprim value sqz_ml_service_balance_memory(value v_s) {
  CAMLparam1(v_s);
  CAMLreturn(host_call(v_s, HOST_BALANCE));
}

CAMLprim value sqz_ml_get_host_reserved_memory(value v_s) {
  CAMLparam1(v_s);
  CAMLreturn(host_call(v_s, HOST_RESERVED));
}

CAMLprim value sqz_ml_get_host_initial_free_memory(value v_s) {
  CAMLparam1(v_s);
  CAMLreturn(host_call(v_s, HOST_INITIAL_FREE));
}

CAMLprim value sqz_ml_start_balancer(value v_s) {
  CAMLparam1(v_s);
  CAMLreturn(host_call(v_s, HOST_START_BALANCER));
}

CAMLprim value sqz_ml_stop_balancer(value v_s) {
  CAMLparam1(v_s);
  CAMLreturn(host_call(v_s, HOST_STOP_BALANCER));
}

/* --- Progress and cancellation ------------------------------------------------------------- */

#define Cancel_val(v) SQZ_ML_HANDLE_SLOT(sqz_cancel, v)

SQZ_ML_HANDLE(cancel, sqz_cancel, sqz_cancel_free, "org.squeeze.cancel")

CAMLprim value sqz_ml_cancel_new(value unit) {
  CAMLparam1(unit);
  CAMLlocal1(handle);
  sqz_cancel *c = NULL;
  struct outcome o;
  sqz_status st = sqz_cancel_new(&c);
  collect(&o, st);
  handle = Val_unit;
  if (st == SQZ_OK)
    handle = sqz_ml_wrap(&cancel_ops, c);
  CAMLreturn(reply_of(&o, handle));
}

/* Only sets a flag: safe and quick with the runtime lock held. */
CAMLprim value sqz_ml_cancel_request(value v_c) {
  sqz_cancel_request(Cancel_val(v_c));
  return Val_unit;
}

/* The OCaml side of a progress callback: the closure, and the exception it raised if any.
   Both point at local roots of the stub's frame, live for the whole call. */
struct watch {
  value *closure;
  value *exn;
  int failed;
};

/* Runs with the runtime lock held: calls the closure with
   (freed_kib, needed_kib, elapsed_s, eta_s). */
static int32_t progress_locked(struct watch *w, const sqz_progress *p) {
  CAMLparam0();
  CAMLlocal5(freed, needed, elapsed, eta, args);
  value r;
  freed = caml_copy_int64(p->freed_kib);
  needed = caml_copy_int64(p->needed_kib);
  elapsed = caml_copy_double(p->elapsed_s);
  eta = caml_copy_double(p->eta_s);
  args = caml_alloc_tuple(4);
  Store_field(args, 0, freed);
  Store_field(args, 1, needed);
  Store_field(args, 2, elapsed);
  Store_field(args, 3, eta);
  r = caml_callback_exn(*w->closure, args);
  if (Is_exception_result(r)) {
    *w->exn = Extract_exception(r);
    w->failed = 1;
    CAMLreturnT(int32_t, 1);
  }
  CAMLreturnT(int32_t, 0);
}

/* The sqz_progress_fn: called by the library on the reserving thread, lock released. */
static int32_t on_progress(void *ctx, const sqz_progress *p) {
  struct watch *w = ctx;
  int32_t rc;
  if (w->failed)
    return 1;
  caml_leave_blocking_section();
  rc = progress_locked(w, p);
  caml_enter_blocking_section_no_pending();
  return rc;
}

/* reserve_memory_with (v_max None) or reserve_memory_range_with; [v_extras] is
   (progress closure option, cancel option, deadline in seconds option). Replies (id, kib); an exception raised by the
   closure is re-raised here, once the library has returned. */
CAMLprim value sqz_ml_reserve_with(value v_s, value v_session, value v_min, value v_max,
                                   value v_extras) {
  CAMLparam5(v_s, v_session, v_min, v_max, v_extras);
  CAMLlocal5(closure, exn, id, kib, pair);
  sqz_service *s = Service_val(v_s);
  char *session = c_string(v_session);
  char buf[SQZ_RESERVATION_ID_SIZE];
  int64_t min = Int64_val(v_min);
  int ranged = Is_block(v_max);
  int64_t max = ranged ? Int64_val(Field(v_max, 0)) : 0;
  int64_t reserved = min;
  value v_progress = Field(v_extras, 0), v_cancel = Field(v_extras, 1);
  value v_deadline = Field(v_extras, 2);
  struct watch w;
  sqz_reserve_options opts;
  struct outcome o;
  sqz_status st;
  if (session == NULL)
    CAMLreturn(refuse("session contains a NUL byte"));
  closure = Is_block(v_progress) ? Field(v_progress, 0) : Val_unit;
  exn = Val_unit;
  w.closure = &closure;
  w.exn = &exn;
  w.failed = 0;
  memset(&opts, 0, sizeof opts);
  opts.struct_size = sizeof opts;
  opts.progress = Is_block(v_progress) ? on_progress : NULL;
  opts.ctx = &w;
  opts.cancel = Is_block(v_cancel) ? Cancel_val(Field(v_cancel, 0)) : NULL;
  opts.deadline_s = Is_block(v_deadline) ? Double_val(Field(v_deadline, 0)) : 0.0;
  memset(buf, 0, sizeof buf);
  caml_enter_blocking_section_no_pending();
  if (ranged)
    st = sqz_reserve_memory_range_with(s, session, min, max, &opts, buf, &reserved);
  else
    st = sqz_reserve_memory_with(s, session, min, &opts, buf);
  collect(&o, st);
  caml_leave_blocking_section();
  caml_stat_free(session);
  if (w.failed) {
    free(o.message);
    free(o.domids);
    caml_raise(exn);
  }
  buf[sizeof buf - 1] = '\0';
  id = caml_copy_string(buf);
  kib = caml_copy_int64(reserved);
  pair = caml_alloc_tuple(2);
  Store_field(pair, 0, id);
  Store_field(pair, 1, kib);
  CAMLreturn(reply_of(&o, pair));
}

CAMLprim value sqz_ml_get_diagnostics(value v_s) {
  CAMLparam1(v_s);
  CAMLlocal1(text);
  sqz_service *s = Service_val(v_s);
  char *buf = NULL;
  size_t cap = 0, size = 0;
  struct outcome o;
  sqz_status st;
  int tries;
  caml_enter_blocking_section_no_pending();
  /* Ask the size, then fetch; the document may grow in between, so ask again a few times. */
  st = sqz_get_diagnostics(s, NULL, 0, &size);
  for (tries = 0; tries < 8 && (st == SQZ_OK || st == SQZ_ERR_BUFFER_TOO_SMALL); tries++) {
    char *bigger;
    cap = size + 4096;
    bigger = realloc(buf, cap);
    if (bigger == NULL) {
      st = SQZ_ERR_INTERNAL;
      break;
    }
    buf = bigger;
    st = sqz_get_diagnostics(s, buf, cap, &size);
    if (st == SQZ_OK)
      break;
  }
  collect(&o, st);
  if (st == SQZ_ERR_INTERNAL && buf == NULL) {
    free(o.message);
    o.message = strdup("out of memory for the diagnostics");
  }
  caml_leave_blocking_section();
  text = caml_copy_string(st == SQZ_OK && buf ? buf : "");
  free(buf);
  CAMLreturn(reply_of(&o, text));
}

/* Replies (score, uncooperative, concern) for a domain, as the service's adaptive squeezer has
   seen it. */
CAMLprim value sqz_ml_service_cooperation(value v_s, value v_domid) {
  CAMLparam2(v_s, v_domid);
  CAMLlocal2(score, triple);
  sqz_service *s = Service_val(v_s);
  int32_t domid = (int32_t)Long_val(v_domid);
  sqz_cooperation c;
  struct outcome o;
  sqz_status st;
  memset(&c, 0, sizeof c);
  caml_enter_blocking_section_no_pending();
  st = sqz_service_cooperation(s, domid, &c);
  collect(&o, st);
  caml_leave_blocking_section();
  score = caml_copy_double(c.score_s);
  triple = caml_alloc_tuple(3);
  Store_field(triple, 0, score);
  Store_field(triple, 1, Val_bool(c.uncooperative));
  Store_field(triple, 2, Val_int(c.concern));
  CAMLreturn(reply_of(&o, triple));
}
