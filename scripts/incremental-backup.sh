#!/usr/bin/env bash
# Brings a previous full copy of a disk up to date from a vircptfs mount, copying only the
# extents dirty-map.json lists as changed since CHECKPOINT.
#
#   incremental-backup.sh MOUNT DOMAIN CHECKPOINT DISK COPY
#     MOUNT       the vircptfs mountpoint            COPY  the previous full copy (a raw file)
#     CHECKPOINT  a checkpoint created BEFORE the export that COPY (or its last update) was made from
#     DISK        the disk target (sda, vdb, ...)
#
# Order matters: CHECKPOINT must predate the export the copy came from, or writes made between
# that export and CHECKPOINT are missed. The usual cycle: create checkpoint N+1, then run this with
# checkpoint N (its map covers everything since N, up to this export), then forget N.
set -euo pipefail
[ $# -eq 5 ] || { sed -n '2,12p' "$0" >&2; exit 2; }
mnt=$1 dom=$2 cpt=$3 disk=$4 copy=$5
src="$mnt/$dom/$cpt/$disk.raw"
map="$mnt/$dom/$cpt/dirty-map.json"
[ -f "$copy" ] || { echo "incremental-backup: $copy: no previous full copy" >&2; exit 1; }

# Hold the export open: the map and the data then come from one point in time.
exec 3<"$src"
size=$(jq -er --arg d "$disk" '.disks[$d].size' "$map")
[ "$(stat -c %s "$copy")" -eq "$size" ] || { echo "incremental-backup: $copy is not $size bytes like $disk" >&2; exit 1; }
n=0 bytes=0
while read -r off len; do
  dd if="$src" of="$copy" bs=4M iflag=skip_bytes,count_bytes oflag=seek_bytes conv=notrunc \
     skip="$off" seek="$off" count="$len" status=none
  n=$((n + 1)) bytes=$((bytes + len))
done < <(jq -r --arg d "$disk" '.disks[$d].extents[] | select(.type == 1) | "\(.offset) \(.length)"' "$map")
exec 3<&-
echo "incremental-backup: $disk: $n extent(s), $bytes bytes copied into $copy (point in time $(jq -r .exportedAt "$map"))"
