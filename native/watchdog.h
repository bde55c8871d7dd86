// The guard against a deadlock the design makes possible: the JavaScript thread serves the
// mount, so a synchronous call of the daemon into its own mount (fs.readFileSync on a path
// inside it) waits for a reply only that blocked thread could give. A watchdog thread per
// session notices requests waiting on /dev/fuse while the event loop has not come for them for
// `stall_ms`, and answers them itself with EDEADLK, in the raw protocol (linux/fuse.h headers;
// no libfuse, no JavaScript), until the loop comes back. The blocked call then fails with
// "Resource deadlock avoided" instead of hanging the daemon and every reader for good.
// Requests without a reply (FORGET, BATCH_FORGET, INTERRUPT) are dropped: a forgotten forget
// only keeps an inode number in the table.
#ifndef VIRCPTFS_WATCHDOG_H
#define VIRCPTFS_WATCHDOG_H

#include <errno.h>
#include <linux/fuse.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

// The largest request the kernel may send: FUSE_MAX_MAX_PAGES pages of data plus headers.
#define WATCHDOG_BUF_SIZE (256 * 4096 + 8192)
#define WATCHDOG_TICK_MS 100

struct watchdog {
  pthread_t thread;
  pthread_mutex_t lock;
  pthread_cond_t wake;
  int fd;
  int stall_ms;
  int stop;
  int running;
  atomic_llong last_served_ms;  // when the event loop last read /dev/fuse
  atomic_llong answered;        // requests the watchdog answered with EDEADLK
};

static inline long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void watchdog_served(struct watchdog *w) {
  atomic_store_explicit(&w->last_served_ms, now_ms(), memory_order_relaxed);
}

// Answers every request waiting now, and none that comes later: all of them are read off first,
// then answered. Answering as they are read let a request that the first answer itself set off
// (the daemon, unblocked by its EDEADLK, reading its own mount again at once) be taken too,
// before the event loop could come back for it.
#define WATCHDOG_BATCH 256
static inline void watchdog_answer(struct watchdog *w, char *buf) {
  uint64_t uniques[WATCHDOG_BATCH];
  int more = 1;
  while (more) {
    int n_waiting = 0;
    more = 0;
    while (n_waiting < WATCHDOG_BATCH) {
      ssize_t n = read(w->fd, buf, WATCHDOG_BUF_SIZE);
      if (n < (ssize_t)sizeof(struct fuse_in_header)) break;  // EAGAIN: drained
      const struct fuse_in_header *in = (const struct fuse_in_header *)buf;
      if (in->opcode == FUSE_FORGET || in->opcode == FUSE_BATCH_FORGET || in->opcode == FUSE_INTERRUPT) continue;
      uniques[n_waiting++] = in->unique;
    }
    if (n_waiting == WATCHDOG_BATCH) more = 1;  // a full batch: read on after answering it
    for (int i = 0; i < n_waiting; i++) {
      struct fuse_out_header out = {.len = sizeof out, .error = -EDEADLK, .unique = uniques[i]};
      // Counted (and logged) before the answer goes: the answer wakes the blocked caller at once,
      // and what it then reads (deadlocksAvoided) must already count it.
      if (atomic_fetch_add(&w->answered, 1) == 0) {
        fprintf(stderr, "vircptfs: the event loop has not served its FUSE mount for %d ms while requests wait "
                        "(a synchronous call of the daemon into its own mount?): answering EDEADLK until it does\n",
                w->stall_ms);
      }
      if (write(w->fd, &out, sizeof out) < 0) {
        atomic_fetch_sub(&w->answered, 1);  // not answered after all
        if (errno == ENOENT) continue;      // that request was interrupted meanwhile: the others still wait
        return;                             // the mount went away
      }
    }
  }
}

// Requests count as stuck once /dev/fuse has stayed readable for stall_ms while the event loop
// did not read it once: a request that merely arrived between two wakeups is never taken.
static inline void *watchdog_run(void *arg) {
  struct watchdog *w = arg;
  char *buf = NULL;
  long long waiting_since = 0, served_then = 0;
  pthread_mutex_lock(&w->lock);
  while (!w->stop) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += WATCHDOG_TICK_MS * 1000000L;
    if (until.tv_nsec >= 1000000000L) { until.tv_sec++; until.tv_nsec -= 1000000000L; }
    pthread_cond_timedwait(&w->wake, &w->lock, &until);
    if (w->stop) break;
    struct pollfd p = {.fd = w->fd, .events = POLLIN};
    if (poll(&p, 1, 0) != 1 || !(p.revents & POLLIN)) {
      waiting_since = 0;
      continue;
    }
    long long served = atomic_load_explicit(&w->last_served_ms, memory_order_relaxed);
    if (waiting_since == 0 || served != served_then) {
      waiting_since = now_ms();
      served_then = served;
      continue;
    }
    if (now_ms() - waiting_since < w->stall_ms) continue;
    if (!buf && !(buf = malloc(WATCHDOG_BUF_SIZE))) continue;
    pthread_mutex_unlock(&w->lock);
    watchdog_answer(w, buf);
    pthread_mutex_lock(&w->lock);
    waiting_since = 0;
  }
  pthread_mutex_unlock(&w->lock);
  free(buf);
  return NULL;
}

static inline int watchdog_start(struct watchdog *w, int fd, int stall_ms) {
  w->fd = fd;
  w->stall_ms = stall_ms;
  w->stop = 0;
  w->running = 0;
  atomic_init(&w->answered, 0);
  watchdog_served(w);
  if (stall_ms <= 0) return 0;
  pthread_mutex_init(&w->lock, NULL);
  pthread_cond_init(&w->wake, NULL);
  if (pthread_create(&w->thread, NULL, watchdog_run, w) != 0) return -1;
  w->running = 1;
  return 0;
}

static inline void watchdog_stop(struct watchdog *w) {
  if (!w->running) return;
  pthread_mutex_lock(&w->lock);
  w->stop = 1;
  pthread_cond_signal(&w->wake);
  pthread_mutex_unlock(&w->lock);
  pthread_join(w->thread, NULL);
  pthread_mutex_destroy(&w->lock);
  pthread_cond_destroy(&w->wake);
  w->running = 0;
}

#endif
