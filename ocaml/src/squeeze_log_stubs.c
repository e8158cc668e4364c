/* squeeze: the library's log records, delivered to an OCaml logger (Squeeze_log).
 * SPDX-License-Identifier: LGPL-2.1-or-later
 *
 * libsqueeze may log on any thread: the caller's, with or without the OCaml runtime lock, or a
 * thread OCaml does not know (a service's background balancer). Calling OCaml from there is
 * not safe, so the C callback only copies the record into a queue here, under a mutex, and
 * never touches the OCaml heap. One OCaml thread (started by Squeeze_log) takes the records
 * off the queue, with the runtime lock released while it waits, and hands them to the logger.
 * Records are numbered as they are queued; Squeeze_log.flush waits (runtime lock released)
 * until every record queued before it was handed over.
 */

#define CAML_NAME_SPACE
#include <caml/alloc.h>
#include <caml/memory.h>
#include <caml/mlvalues.h>
#include <caml/signals.h>

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <squeeze.h>

/* Beyond this many undelivered records new ones are dropped (and counted), so a logger that
 * stalls cannot make the library's memory grow without bound. */
#define MAX_QUEUED 65536

struct record {
  struct record *next;
  int32_t level;
  char *target;
  char *message;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t arrived = PTHREAD_COND_INITIALIZER;
static pthread_cond_t handed_over = PTHREAD_COND_INITIALIZER;
static struct record *head, *tail;
static size_t queued;
static uint64_t queued_seq;    /* records queued so far */
static uint64_t delivered_seq; /* records handed to the logger so far */
static uint64_t dropped;

static void free_record(struct record *r) {
  if (r != NULL) {
    free(r->target);
    free(r->message);
    free(r);
  }
}

/* The sqz_log_fn: runs on any thread, never touches OCaml. */
static void on_record(void *ctx, int32_t level, const char *target, const char *message) {
  (void)ctx;
  struct record *r = calloc(1, sizeof *r);
  if (r != NULL) {
    r->level = level;
    r->target = strdup(target != NULL ? target : "");
    r->message = strdup(message != NULL ? message : "");
  }
  int ok = r != NULL && r->target != NULL && r->message != NULL;
  pthread_mutex_lock(&mu);
  if (ok && queued < MAX_QUEUED) {
    if (tail != NULL)
      tail->next = r;
    else
      head = r;
    tail = r;
    queued++;
    queued_seq++;
    pthread_cond_signal(&arrived);
    r = NULL;
  } else {
    dropped++;
  }
  pthread_mutex_unlock(&mu);
  free_record(r); /* only when dropped */
}

/* The level installed (0: none), for records written from OCaml. */
static int32_t installed_level;

/* install : int -> int (the sqz_status); level 0 stops delivery. */
CAMLprim value sqz_ml_log_install(value v_level) {
  sqz_status st = sqz_set_log_callback(on_record, NULL, Int_val(v_level));
  if (st == SQZ_OK) {
    pthread_mutex_lock(&mu);
    installed_level = Int_val(v_level);
    pthread_mutex_unlock(&mu);
  }
  return Val_int(st);
}

/* write : int -> string -> string -> unit: queues a record written by OCaml code, behind the
 * library's, when its level is delivered. */
CAMLprim value sqz_ml_log_write(value v_level, value v_target, value v_message) {
  int32_t level = Int_val(v_level);
  int wanted;
  pthread_mutex_lock(&mu);
  wanted = installed_level > 0 && level <= installed_level;
  pthread_mutex_unlock(&mu);
  if (wanted)
    on_record(NULL, level, String_val(v_target), String_val(v_message));
  return Val_unit;
}

/* take : unit -> (int * string * string) list * int
 * Waits for records; returns them newest first, and the number of the last one. */
CAMLprim value sqz_ml_log_take(value unit) {
  CAMLparam1(unit);
  CAMLlocal5(list, cell, item, s, result);
  struct record *batch;
  uint64_t last;
  caml_enter_blocking_section_no_pending();
  pthread_mutex_lock(&mu);
  while (head == NULL)
    pthread_cond_wait(&arrived, &mu);
  batch = head;
  head = tail = NULL;
  queued = 0;
  last = queued_seq;
  pthread_mutex_unlock(&mu);
  caml_leave_blocking_section();

  list = Val_emptylist;
  while (batch != NULL) {
    struct record *next = batch->next;
    item = caml_alloc_tuple(3);
    Store_field(item, 0, Val_int(batch->level));
    s = caml_copy_string(batch->target);
    Store_field(item, 1, s);
    s = caml_copy_string(batch->message);
    Store_field(item, 2, s);
    cell = caml_alloc_small(2, Tag_cons);
    Field(cell, 0) = item;
    Field(cell, 1) = list;
    list = cell;
    free_record(batch);
    batch = next;
  }
  result = caml_alloc_tuple(2);
  Store_field(result, 0, list);
  Store_field(result, 1, Val_long((intnat)last));
  CAMLreturn(result);
}

/* delivered : int -> unit: records up to this number were handed to the logger. */
CAMLprim value sqz_ml_log_delivered(value v_seq) {
  uint64_t seq = (uint64_t)Long_val(v_seq);
  pthread_mutex_lock(&mu);
  if (seq > delivered_seq) {
    delivered_seq = seq;
    pthread_cond_broadcast(&handed_over);
  }
  pthread_mutex_unlock(&mu);
  return Val_unit;
}

/* wait : unit -> unit: returns once every record queued so far was handed over. */
CAMLprim value sqz_ml_log_wait(value unit) {
  CAMLparam1(unit);
  caml_enter_blocking_section_no_pending();
  pthread_mutex_lock(&mu);
  uint64_t target = queued_seq;
  while (delivered_seq < target)
    pthread_cond_wait(&handed_over, &mu);
  pthread_mutex_unlock(&mu);
  caml_leave_blocking_section();
  CAMLreturn(Val_unit);
}

/* dropped : unit -> int */
CAMLprim value sqz_ml_log_dropped(value unit) {
  (void)unit;
  pthread_mutex_lock(&mu);
  uint64_t n = dropped;
  pthread_mutex_unlock(&mu);
  return Val_long((intnat)n);
}
