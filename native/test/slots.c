// slots.h alone: ids are unique while held, a stale or repeated id finds nothing, the table
// grows past its first size and every held request can be taken back at the end.
#define FUSE_USE_VERSION 35
#include <assert.h>
#include <stdio.h>

#include "../slots.h"

#define N 5000

int main(void) {
  struct slots s;
  slots_init(&s);
  static uint32_t ids[N];
  char reqs[N];
  for (int i = 0; i < N; i++) {
    ids[i] = slots_put(&s, (fuse_req_t)&reqs[i]);
    assert(ids[i] != 0);
    for (int j = 0; j < i; j += 97) assert(ids[j] != ids[i]);
  }
  assert(s.used == N);
  for (int i = 0; i < N; i += 2) {
    assert(slots_peek(&s, ids[i]) == (fuse_req_t)&reqs[i]);
    assert(slots_take(&s, ids[i]) == (fuse_req_t)&reqs[i]);
    assert(slots_take(&s, ids[i]) == NULL);  // answered twice: the second finds nothing
  }
  // A freed index comes back with another generation: the old id stays stale.
  uint32_t again = slots_put(&s, (fuse_req_t)&reqs[0]);
  assert((again & SLOT_INDEX_MASK) == (ids[N - 2] & SLOT_INDEX_MASK));
  assert(again != ids[N - 2]);
  assert(slots_peek(&s, ids[N - 2]) == NULL);
  assert(slots_peek(&s, 0) == NULL && slots_peek(&s, 0xffffffffu) == NULL);
  int left = 0;
  while (slots_take_any(&s) != NULL) left++;
  assert(left == N / 2 + 1 && s.used == 0);
  slots_free(&s);
  puts("slots: ok");
  return 0;
}
