#!/usr/bin/env bash
# Holder of one lab host's private mount and UTS namespaces (started by scripts/lab up).
#
# Runs as `nsenter --net=/run/netns/mp-instanceN -- unshare --mount --uts --propagation private
# -- holder.sh HOST_DIR NAME`: it is already inside the fresh namespaces. It drops the copies of
# other namespaces' handles it inherited (so deleting another host later really frees it), sets
# the host name, binds the host's own directories over the paths the runtimes use, says it is
# ready, and then sleeps forever: scripts/lab bind-mounts /proc/PID/ns/{mnt,uts} onto
# HOST_DIR/{mnt,uts}.ns and enters them with nsenter.
set -euo pipefail
host_dir=$1
name=$2

# Inherited namespace handles: /run/netns/* (iproute2) and other lab hosts' *.ns files.
while read -r target; do
  umount -l "$target" 2>/dev/null || true
done < <(findmnt -rn -o TARGET,FSTYPE | awk '$2 == "nsfs" { print $1 }' | sort -r)

hostname "$name"

bind() {  # bind SRC DST: DST must exist in the shared file system
  mkdir -p "$1" "$2"
  mount --bind "$1" "$2"
}
bind "$host_dir/run" /run
bind "$host_dir/var-lib-docker" /var/lib/docker
bind "$host_dir/var-lib-containerd" /var/lib/containerd
bind "$host_dir/var-lib-migplan" /var/lib/migplan

echo $$ > "$host_dir/holder.pid"
exec -a "migplan-lab-holder $name" sleep infinity
