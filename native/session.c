// vircptfs's FUSE addon: libfuse 3's low-level API driven from Node's event loop. This file is
// the event-loop side and the session's life (mount, detach, stop, destroy); docs/fuse-addon.md
// describes the whole design.
//
// The session's /dev/fuse descriptor is made non-blocking and watched by a uv_poll handle; when
// it is readable, requests are received and processed on the loop thread (at most
// REQUESTS_PER_WAKEUP per wakeup, so a flood of requests cannot starve timers and sockets), each
// one handed to one JavaScript function (ops.c). JavaScript answers later, from any callback,
// through the reply functions (replies.c), naming the request by its slot (slots.h). Replies to
// reads are written by two threads that only move bytes (writers.h).
//
// Consequence: the thread that serves the mount is the JavaScript thread. A synchronous call of
// the daemon into its own mount would wait for itself; the watchdog (watchdog.h) answers such
// requests EDEADLK instead. Fixed cost per mount: one uv_poll handle, two writer
// threads and one watchdog thread, whatever the load.
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>

#include "addon.h"

#define REQUESTS_PER_WAKEUP 64

napi_value make_number(napi_env env, double v) {
  napi_value out;
  napi_create_double(env, v, &out);
  return out;
}

napi_value undefined(napi_env env) {
  napi_value out;
  napi_get_undefined(env, &out);
  return out;
}

int get_double(napi_env env, napi_value v, double *out) {
  return napi_get_value_double(env, v, out) == napi_ok;
}

int get_u64(napi_env env, napi_value v, uint64_t *out) {
  double d;
  if (!get_double(env, v, &d) || !(d >= 0) || d > 9007199254740991.0) return 0;
  *out = (uint64_t)d;
  return 1;
}

session_t *session_of(napi_env env, napi_value v) {
  void *data = NULL;
  if (napi_get_value_external(env, v, &data) != napi_ok || data == NULL) {
    napi_throw_type_error(env, NULL, "vircptfs addon: not a session");
    return NULL;
  }
  return data;
}

// Calls the dispatch function. Runs inside the callback scope opened by on_readable, so
// promises and nextTicks queued by JavaScript run once the batch is processed.
void dispatch(session_t *s, enum op op, uint32_t slot, double ino, double a, double b,
                     double c, const char *name, const struct fuse_ctx *ctx) {
  napi_env env = s->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value fn, recv, argv[10], result;
  napi_get_reference_value(env, s->dispatch, &fn);
  napi_get_undefined(env, &recv);
  argv[0] = make_number(env, op);
  argv[1] = make_number(env, slot);
  argv[2] = make_number(env, ino);
  argv[3] = make_number(env, a);
  argv[4] = make_number(env, b);
  argv[5] = make_number(env, c);
  if (name) napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &argv[6]);
  else argv[6] = undefined(env);
  argv[7] = make_number(env, ctx ? ctx->uid : 0);
  argv[8] = make_number(env, ctx ? ctx->gid : 0);
  argv[9] = make_number(env, ctx ? ctx->pid : 0);
  if (napi_call_function(env, recv, fn, 10, argv, &result) == napi_pending_exception) {
    // The JavaScript side answers every request and never throws; if it did, the request
    // must still be answered (a request without a reply blocks its caller for good).
    napi_value err;
    napi_get_and_clear_last_exception(env, &err);
    fuse_req_t req = slots_take(&s->slots, slot);
    if (req) fuse_reply_err(req, EIO);
    napi_fatal_exception(env, err);
  }
  napi_close_handle_scope(env, scope);
}

// ---- the event-loop side -------------------------------------------------------------------

static void on_closed(uv_handle_t *handle) {
  session_t *s = handle->data;
  if (--s->open_handles > 0) return;
  napi_env env = s->env;
  s->polling = 0;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value fn, recv, arg, result;
  napi_get_reference_value(env, s->on_end, &fn);
  napi_get_global(env, &recv);
  arg = make_number(env, s->end_status);
  // From a libuv callback: make_callback runs the microtasks JavaScript queues.
  napi_make_callback(env, s->async, recv, fn, 1, &arg, &result);
  napi_close_handle_scope(env, scope);
  napi_delete_reference(env, s->self);
  s->self = NULL;
}

// Ends the loop: every request JavaScript still holds is answered (EIO if the kernel still
// listens), the poll handle closes, and on_end(status) follows from its close callback.
static void end_loop(session_t *s, int status) {
  if (s->ended) return;
  s->ended = 1;
  s->end_status = status;
  watchdog_stop(&s->watchdog);
  fuse_req_t req;
  while ((req = slots_take_any(&s->slots)) != NULL) fuse_reply_err(req, EIO);
  if (s->polling) {
    writers_stop(&s->writers);  // what is queued is written (or fails: the kernel is gone)
    uv_poll_stop(&s->poll);
    uv_close((uv_handle_t *)&s->poll, on_closed);
  }
}

static void on_readable(uv_poll_t *poll, int status, int events) {
  session_t *s = poll->data;
  (void)events;
  if (status < 0) {
    // /dev/fuse polls POLLERR once the connection is gone (unmounted or aborted): libuv
    // reports that as UV_EBADF. It is the normal end, as a read's ENODEV would be.
    end_loop(s, status == UV_EBADF ? 0 : status);
    return;
  }
  napi_env env = s->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value resource;
  napi_create_object(env, &resource);
  napi_callback_scope cb_scope;
  napi_open_callback_scope(env, resource, s->async, &cb_scope);
  for (int i = 0; i < REQUESTS_PER_WAKEUP && !s->ended; i++) {
    watchdog_served(&s->watchdog);
    int res = fuse_session_receive_buf(s->se, &s->buf);
    if (res == -EAGAIN) break;
    if (res == -EINTR) continue;
    // 0: the kernel ended the connection (ENODEV: unmounted, or aborted).
    if (res <= 0 || fuse_session_exited(s->se)) {
      end_loop(s, res < 0 ? res : 0);
      break;
    }
    fuse_session_process_buf(s->se, &s->buf);
  }
  napi_close_callback_scope(env, cb_scope);
  napi_close_handle_scope(env, scope);
}

// mount(mountpoint, args, dispatch, onEnd, stallMs) -> session
// args: libfuse's argv after the program name, e.g. ['-o', 'ro,fsname=x,max_readahead=1048576'].
// stallMs: the watchdog's patience (watchdog.h); 0 turns it off.
static napi_value Mount(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t stall_ms = 0;
  if (argc < 5 || napi_get_value_int32(env, argv[4], &stall_ms) != napi_ok) {
    napi_throw_type_error(env, NULL, "mount(mountpoint, args, dispatch, onEnd, stallMs)");
    return NULL;
  }
  size_t len;
  CHECK(env, napi_get_value_string_utf8(env, argv[0], NULL, 0, &len));
  char *mountpoint = malloc(len + 1);
  if (!mountpoint) return NULL;
  napi_get_value_string_utf8(env, argv[0], mountpoint, len + 1, &len);

  uint32_t n = 0;
  napi_get_array_length(env, argv[1], &n);
  struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
  fuse_opt_add_arg(&args, "vircptfs");
  for (uint32_t i = 0; i < n; i++) {
    napi_value el;
    char arg[4096];
    size_t alen;
    napi_get_element(env, argv[1], i, &el);
    if (napi_get_value_string_utf8(env, el, arg, sizeof arg, &alen) != napi_ok || alen >= sizeof arg - 1) {
      fuse_opt_free_args(&args);
      free(mountpoint);
      napi_throw_range_error(env, NULL, "vircptfs addon: bad libfuse argument");
      return NULL;
    }
    fuse_opt_add_arg(&args, arg);
  }

  session_t *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->env = env;
  s->mountpoint = mountpoint;
  slots_init(&s->slots);
  s->conn_opts = fuse_parse_conn_info_opts(&args);
  s->se = s->conn_opts ? fuse_session_new(&args, &vircptfs_ll_ops, sizeof vircptfs_ll_ops, s) : NULL;
  fuse_opt_free_args(&args);
  const char *failed = NULL;
  if (!s->se) failed = "libfuse refused the options";
  else if (fuse_session_mount(s->se, mountpoint) != 0) failed = "mount failed";
  if (failed) {
    if (s->se) fuse_session_destroy(s->se);
    free(s->conn_opts);
    slots_free(&s->slots);
    free(s->mountpoint);
    free(s);
    napi_throw_error(env, "EMOUNT", failed);
    return NULL;
  }
  int fd = fuse_session_fd(s->se);
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  if (watchdog_start(&s->watchdog, fd, stall_ms) != 0 || writers_start(&s->writers) != 0) {
    watchdog_stop(&s->watchdog);
    writers_stop(&s->writers);
    fuse_session_unmount(s->se);
    fuse_session_destroy(s->se);
    free(s->conn_opts);
    slots_free(&s->slots);
    free(s->mountpoint);
    free(s);
    napi_throw_error(env, "EMOUNT", "cannot start the watchdog thread");
    return NULL;
  }

  napi_value self, name;
  CHECK(env, napi_create_external(env, s, NULL, NULL, &self));
  napi_create_reference(env, argv[2], 1, &s->dispatch);
  napi_create_reference(env, argv[3], 1, &s->on_end);
  napi_create_reference(env, self, 1, &s->self);
  napi_create_string_utf8(env, "vircptfs:fuse", NAPI_AUTO_LENGTH, &name);
  napi_async_init(env, NULL, name, &s->async);

  uv_loop_t *loop;
  napi_get_uv_event_loop(env, &loop);
  uv_poll_init(loop, &s->poll, fd);
  s->poll.data = s;
  s->open_handles = 1;
  s->polling = 1;
  uv_poll_start(&s->poll, UV_READABLE, on_readable);
  return self;
}

// detach(session): unmounts lazily (MNT_DETACH, root only): new opens fail at once, files still
// open are served until closed; the loop ends when the kernel drops the connection.
static napi_value Detach(napi_env env, napi_callback_info info) {
  SESSION_ARG
  if (!s->ended && umount2(s->mountpoint, MNT_DETACH) != 0) {
    napi_value err, code, msg;
    napi_create_string_utf8(env, strerror(errno), NAPI_AUTO_LENGTH, &msg);
    napi_create_string_utf8(env, errno == EINVAL ? "EINVAL" : errno == EPERM ? "EPERM" : "EUMOUNT", NAPI_AUTO_LENGTH, &code);
    napi_create_error(env, code, msg, &err);
    napi_throw(env, err);
    return NULL;
  }
  return undefined(env);
}

// stop(session): stops serving without unmounting (the mount left this namespace while a copy
// elsewhere keeps the connection: closing our end makes that copy a dead mount).
static napi_value Stop(napi_env env, napi_callback_info info) {
  SESSION_ARG
  end_loop(s, 0);
  return undefined(env);
}

// destroy(session): frees the session once its loop ended (after onEnd).
static napi_value Destroy(napi_env env, napi_callback_info info) {
  SESSION_ARG
  if (s->polling || !s->ended || s->se == NULL) {
    napi_throw_error(env, NULL, "vircptfs addon: destroy before the loop ended");
    return NULL;
  }
  // The connection is over: fuse_session_destroy only closes the descriptor (no unmount, which
  // could hit a later mount on the same path).
  fuse_session_destroy(s->se);
  s->se = NULL;
  free(s->conn_opts);
  s->conn_opts = NULL;
  free(s->buf.mem);
  s->buf.mem = NULL;
  writers_free(&s->writers);
  slots_free(&s->slots);
  napi_delete_reference(env, s->dispatch);
  napi_delete_reference(env, s->on_end);
  napi_async_destroy(env, s->async);
  free(s->mountpoint);
  s->mountpoint = NULL;
  // The external may outlive this call in JavaScript: leave a zeroed husk (never freed twice).
  return undefined(env);
}

// The fd of /dev/fuse (tests: it must be close-on-exec), -1 once destroyed.
static napi_value Fd(napi_env env, napi_callback_info info) {
  SESSION_ARG
  return make_number(env, s->se && !s->ended ? fuse_session_fd(s->se) : -1);
}

// deadlocksAvoided(session): requests the watchdog answered with EDEADLK (tests, logs).
static napi_value DeadlocksAvoided(napi_env env, napi_callback_info info) {
  SESSION_ARG
  return make_number(env, (double)atomic_load(&s->watchdog.answered));
}


NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
    {"mount", NULL, Mount, NULL, NULL, NULL, napi_default, NULL},
    {"detach", NULL, Detach, NULL, NULL, NULL, napi_default, NULL},
    {"stop", NULL, Stop, NULL, NULL, NULL, napi_default, NULL},
    {"destroy", NULL, Destroy, NULL, NULL, NULL, napi_default, NULL},
    {"fd", NULL, Fd, NULL, NULL, NULL, napi_default, NULL},
    {"deadlocksAvoided", NULL, DeadlocksAvoided, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  napi_define_properties(env, exports, vircptfs_reply_property_count, vircptfs_reply_properties);
  return exports;
}
