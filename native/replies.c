// The reply functions JavaScript calls, each naming the request by its slot id (slots.h). A
// stale id (the request was answered already, or the loop ended and answered it with EIO) is
// ignored and reported by a false return, so JavaScript can tell without the kernel seeing two
// replies to one request.
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "addon.h"

// attr: a Float64Array of ATTR_FIELDS values, filled by JavaScript (src/fs/fuse/native.ts).
enum attr_field {
  A_INO = 0, A_MODE, A_NLINK, A_UID, A_GID, A_SIZE, A_BLOCKS, A_BLKSIZE,
  A_ATIME, A_MTIME, A_CTIME, A_ATTR_TIMEOUT, A_ENTRY_TIMEOUT, ATTR_FIELDS,
};

#define FOPEN_DIRECT_IO_FLAG 1
#define FOPEN_KEEP_CACHE_FLAG 2

static void ms_to_timespec(double ms, struct timespec *ts) {
  if (!(ms >= 0)) ms = 0;
  ts->tv_sec = (time_t)(ms / 1000);
  ts->tv_nsec = (long)((ms - (double)ts->tv_sec * 1000) * 1e6);
  if (ts->tv_nsec < 0 || ts->tv_nsec >= 1000000000) ts->tv_nsec = 0;
}

static int read_attr(napi_env env, napi_value v, double **out) {
  napi_typedarray_type type;
  size_t length;
  void *data;
  if (napi_get_typedarray_info(env, v, &type, &length, &data, NULL, NULL) != napi_ok) return 0;
  if (type != napi_float64_array || length < ATTR_FIELDS) return 0;
  *out = data;
  return 1;
}

// The attributes JavaScript sent, or EIO to the kernel and a TypeError to JavaScript.
static int attr_or_fail(napi_env env, fuse_req_t req, napi_value v, double **out) {
  if (read_attr(env, v, out)) return 1;
  fuse_reply_err(req, EIO);
  napi_throw_type_error(env, NULL, "vircptfs addon: attr must be a Float64Array");
  return 0;
}

static void fill_stat(const double *a, struct stat *st) {
  memset(st, 0, sizeof *st);
  st->st_ino = (ino_t)a[A_INO];
  st->st_mode = (mode_t)a[A_MODE];
  st->st_nlink = (nlink_t)a[A_NLINK];
  st->st_uid = (uid_t)a[A_UID];
  st->st_gid = (gid_t)a[A_GID];
  st->st_size = (off_t)a[A_SIZE];
  st->st_blocks = (blkcnt_t)a[A_BLOCKS];
  st->st_blksize = (blksize_t)a[A_BLKSIZE];
  ms_to_timespec(a[A_ATIME], &st->st_atim);
  ms_to_timespec(a[A_MTIME], &st->st_mtim);
  ms_to_timespec(a[A_CTIME], &st->st_ctim);
}

// The session and the request of (session, slot, ...) arguments: NULL req when stale.
#define REPLY_PROLOGUE(nargs)                                                  \
  size_t argc = (nargs);                                                       \
  napi_value argv[(nargs) > 0 ? (nargs) : 1];                                  \
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));            \
  if (argc < (nargs)) {                                                        \
    napi_throw_type_error(env, NULL, "vircptfs addon: too few arguments");     \
    return NULL;                                                               \
  }                                                                            \
  session_t *s = session_of(env, argv[0]);                                     \
  if (!s) return NULL;                                                         \
  uint32_t slot;                                                               \
  CHECK(env, napi_get_value_uint32(env, argv[1], &slot));                      \
  fuse_req_t req = slots_take(&s->slots, slot);                                \
  napi_value answered;                                                         \
  napi_get_boolean(env, req != NULL, &answered);                               \
  if (!req) return answered;

// replyErr(session, slot, errno): errno 0 answers success (release, releasedir)
static napi_value ReplyErr(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(3)
  int32_t err = EIO;
  napi_get_value_int32(env, argv[2], &err);
  fuse_reply_err(req, err >= 0 && err < 4096 ? err : EIO);  // 0: success (release)
  return answered;
}

// replyEntry(session, slot, attr): a lookup's answer; attr[A_INO] is the inode.
static napi_value ReplyEntry(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(3)
  double *a;
  if (!attr_or_fail(env, req, argv[2], &a)) return NULL;
  struct fuse_entry_param e;
  memset(&e, 0, sizeof e);
  e.ino = (fuse_ino_t)a[A_INO];
  e.generation = 1;
  fill_stat(a, &e.attr);
  e.attr_timeout = a[A_ATTR_TIMEOUT];
  e.entry_timeout = a[A_ENTRY_TIMEOUT];
  fuse_reply_entry(req, &e);
  return answered;
}

// replyAttr(session, slot, attr)
static napi_value ReplyAttr(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(3)
  double *a;
  if (!attr_or_fail(env, req, argv[2], &a)) return NULL;
  struct stat st;
  fill_stat(a, &st);
  fuse_reply_attr(req, &st, a[A_ATTR_TIMEOUT]);
  return answered;
}

// replyOpen(session, slot, fh, flags): flags FOPEN_DIRECT_IO_FLAG | FOPEN_KEEP_CACHE_FLAG.
static napi_value ReplyOpen(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(4)
  struct fuse_file_info fi;
  memset(&fi, 0, sizeof fi);
  uint64_t fh = 0;
  uint32_t flags = 0;
  get_u64(env, argv[2], &fh);
  napi_get_value_uint32(env, argv[3], &flags);
  fi.fh = fh;
  fi.direct_io = (flags & FOPEN_DIRECT_IO_FLAG) != 0;
  fi.keep_cache = (flags & FOPEN_KEEP_CACHE_FLAG) != 0;
  // An open the kernel was told about but that never gets its release would leak a handle in
  // JavaScript: fuse_reply_open fails only when the kernel is gone, and then nothing releases.
  fuse_reply_open(req, &fi);
  return answered;
}

// The first `length` bytes of the Uint8Array v, or EIO to the kernel and a TypeError to JavaScript.
static int bytes_or_fail(napi_env env, fuse_req_t req, napi_value v, napi_value length_v, void **data, uint32_t *length) {
  napi_typedarray_type type;
  size_t size = 0;
  *length = 0;
  napi_get_value_uint32(env, length_v, length);
  if (napi_get_typedarray_info(env, v, &type, &size, data, NULL, NULL) == napi_ok && type == napi_uint8_array && *length <= size) {
    return 1;
  }
  fuse_reply_err(req, EIO);
  napi_throw_type_error(env, NULL, "vircptfs addon: a read's reply needs a Uint8Array holding length bytes");
  return 0;
}

// replyBuf(session, slot, data, length): the first length bytes of a Uint8Array (a read).
static napi_value ReplyBuf(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(4)
  void *data;
  uint32_t length;
  if (!bytes_or_fail(env, req, argv[2], argv[3], &data, &length)) return NULL;
  fuse_reply_buf(req, data, length);
  return answered;
}

// replyBufLater(session, slot, data, length, token): like replyBuf, but written by a writer
// thread (writers.h); data must stay untouched until onWritten(token). False when the request
// was answered already, or was answered here and now: then onWritten(token) never comes.
static napi_value ReplyBufLater(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(5)
  void *data;
  uint32_t length;
  double token = 0;
  if (!bytes_or_fail(env, req, argv[2], argv[3], &data, &length)) return NULL;
  get_double(env, argv[4], &token);
  if (s->ended || writers_push(&s->writers, req, data, length, token) != 0) {
    fuse_reply_buf(req, data, length);  // no writer to hand it to
    napi_get_boolean(env, 0, &answered);
  }
  return answered;
}

// replyDirents(session, slot, names, inodes, modes, offset, size): the directory entries from
// index offset on that fit in size bytes; an entry's offset is its index + 1.
static napi_value ReplyDirents(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(7)
  uint32_t count = 0;
  double offset = 0, size = 0;
  napi_get_array_length(env, argv[2], &count);
  get_double(env, argv[5], &offset);
  get_double(env, argv[6], &size);
  size_t max = size > 0 && size < (1 << 24) ? (size_t)size : 4096;
  char *buf = malloc(max);
  if (!buf) {
    fuse_reply_err(req, ENOMEM);
    return answered;
  }
  size_t used = 0;
  for (uint32_t i = offset >= 0 ? (uint32_t)offset : 0; i < count; i++) {
    napi_value name_v, ino_v, mode_v;
    char name[1024];
    size_t nlen;
    double ino = 0, mode = 0;
    napi_get_element(env, argv[2], i, &name_v);
    napi_get_element(env, argv[3], i, &ino_v);
    napi_get_element(env, argv[4], i, &mode_v);
    if (napi_get_value_string_utf8(env, name_v, name, sizeof name, &nlen) != napi_ok || nlen >= sizeof name - 1) continue;
    get_double(env, ino_v, &ino);
    get_double(env, mode_v, &mode);
    struct stat st;
    memset(&st, 0, sizeof st);
    st.st_ino = (ino_t)ino;
    st.st_mode = (mode_t)mode;
    size_t need = fuse_add_direntry(req, buf + used, max - used, name, &st, (off_t)i + 1);
    if (need > max - used) break;
    used += need;
  }
  fuse_reply_buf(req, buf, used);
  free(buf);
  return answered;
}

// replyStatfs(session, slot, Float64Array [bsize, frsize, blocks, bfree, bavail, files, ffree,
// favail, fsid, flag, namemax])
static napi_value ReplyStatfs(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(3)
  napi_typedarray_type type;
  size_t length;
  void *data;
  if (napi_get_typedarray_info(env, argv[2], &type, &length, &data, NULL, NULL) != napi_ok ||
      type != napi_float64_array || length < 11) {
    fuse_reply_err(req, EIO);
    napi_throw_type_error(env, NULL, "vircptfs addon: statfs must be a Float64Array of 11");
    return NULL;
  }
  const double *f = data;
  struct statvfs st;
  memset(&st, 0, sizeof st);
  st.f_bsize = (unsigned long)f[0];
  st.f_frsize = (unsigned long)f[1];
  st.f_blocks = (fsblkcnt_t)f[2];
  st.f_bfree = (fsblkcnt_t)f[3];
  st.f_bavail = (fsblkcnt_t)f[4];
  st.f_files = (fsfilcnt_t)f[5];
  st.f_ffree = (fsfilcnt_t)f[6];
  st.f_favail = (fsfilcnt_t)f[7];
  st.f_fsid = (unsigned long)f[8];
  st.f_flag = (unsigned long)f[9];
  st.f_namemax = (unsigned long)f[10];
  fuse_reply_statfs(req, &st);
  return answered;
}

// replyLseek(session, slot, offset)
static napi_value ReplyLseek(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(3)
  uint64_t off = 0;
  if (!get_u64(env, argv[2], &off)) {
    fuse_reply_err(req, EIO);
    return answered;
  }
  fuse_reply_lseek(req, (off_t)off);
  return answered;
}

// written(session, out): the tokens of replies the writer threads have written since the last
// call, at most out.length of them (a Float64Array), in out; returns how many. Those not taken
// stay for the next call.
static napi_value Written(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  session_t *s = session_of(env, argv[0]);
  if (!s) return NULL;
  napi_typedarray_type type;
  size_t capacity = 0;
  void *data = NULL;
  if (argc < 2 || napi_get_typedarray_info(env, argv[1], &type, &capacity, &data, NULL, NULL) != napi_ok ||
      type != napi_float64_array) {
    napi_throw_type_error(env, NULL, "vircptfs addon: written(session, Float64Array)");
    return NULL;
  }
  double *out = data;
  size_t n = 0;
  struct write_job *job = writers_take_done(&s->writers), *rest = NULL;
  while (job) {
    struct write_job *next = job->next;
    if (n < capacity) {
      out[n++] = job->token;
      free(job);
    } else {
      job->next = rest;
      rest = job;
    }
    job = next;
  }
  if (rest) writers_give_back(&s->writers, rest);
  return make_number(env, (double)n);
}

// pending(session): requests handed to JavaScript and not answered yet (tests).
static napi_value Pending(napi_env env, napi_callback_info info) {
  SESSION_ARG
  return make_number(env, s->slots.used);
}

const napi_property_descriptor vircptfs_reply_properties[] = {
  {"replyErr", NULL, ReplyErr, NULL, NULL, NULL, napi_default, NULL},
  {"replyEntry", NULL, ReplyEntry, NULL, NULL, NULL, napi_default, NULL},
  {"replyAttr", NULL, ReplyAttr, NULL, NULL, NULL, napi_default, NULL},
  {"replyOpen", NULL, ReplyOpen, NULL, NULL, NULL, napi_default, NULL},
  {"replyBuf", NULL, ReplyBuf, NULL, NULL, NULL, napi_default, NULL},
  {"replyBufLater", NULL, ReplyBufLater, NULL, NULL, NULL, napi_default, NULL},
  {"replyDirents", NULL, ReplyDirents, NULL, NULL, NULL, napi_default, NULL},
  {"replyStatfs", NULL, ReplyStatfs, NULL, NULL, NULL, napi_default, NULL},
  {"replyLseek", NULL, ReplyLseek, NULL, NULL, NULL, napi_default, NULL},
  {"pending", NULL, Pending, NULL, NULL, NULL, napi_default, NULL},
  {"written", NULL, Written, NULL, NULL, NULL, napi_default, NULL},
};
const size_t vircptfs_reply_property_count = sizeof vircptfs_reply_properties / sizeof vircptfs_reply_properties[0];
