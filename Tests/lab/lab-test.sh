#!/usr/bin/env bash
# Self-test of the lab's lifecycle (scripts/lab): up twice, status, SSH strictness, separate host
# disks, Docker over SSH, PostgreSQL over SSL, down, recovery from killed processes and leftovers.
# Needs root. Leaves the lab UP (other tests use it). Last line: "N passed, M failed".
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
REPO=$PWD
LAB="$REPO/scripts/lab"
LAB_DIR=$(realpath -m "${MIGPLAN_LAB_DIR:-$REPO/.lab}")
KEY=$LAB_DIR/keys/controller_ed25519
KNOWN=$LAB_DIR/known_hosts
PASSED=0
FAILED=0
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT

pass() { PASSED=$((PASSED + 1)); printf 'ok   %s\n' "$1"; }
fail() {
  FAILED=$((FAILED + 1)); printf 'FAIL %s\n' "$1"
  [[ -s $OUT ]] && sed 's/^/     | /' "$OUT" | tail -n 15
}
# check NAME CMD...: CMD must succeed (its output is kept for the failure report).
check() { local name=$1; shift; if "$@" >"$OUT" 2>&1; then pass "$name"; else fail "$name"; fi; }
# refuse NAME CMD...: CMD must fail.
refuse() { local name=$1; shift; if "$@" >"$OUT" 2>&1; then fail "$name (it succeeded)"; sed 's/^/     /' "$OUT"; else pass "$name"; fi; }
# refuse_with NAME TEXT CMD...: CMD must fail and say TEXT (so it fails for the right reason).
refuse_with() {
  local name=$1 text=$2; shift 2
  if "$@" >"$OUT" 2>&1; then fail "$name (it succeeded)"
  elif grep -qiF -- "$text" "$OUT"; then pass "$name"
  else fail "$name (failed without saying '$text')"; fi
}

lab_ssh() {  # lab_ssh ADDR [SSH-OPTION... --] CMD...
  local addr=$1 opts=()
  shift
  if [[ " $* " == *" -- "* ]]; then
    while [[ $1 != -- ]]; do opts+=("$1"); shift; done
    shift
  fi
  # ssh keeps the first value of an option: the test's own options come first.
  timeout 30 ssh -F /dev/null "${opts[@]}" -o BatchMode=yes -o ConnectTimeout=5 -o StrictHostKeyChecking=yes \
    -o UserKnownHostsFile="$KNOWN" -o GlobalKnownHostsFile=/dev/null -o IdentitiesOnly=yes \
    -i "$KEY" "root@$addr" -- "$@"
}
addr() { echo "10.77.0.$((10 + $1))"; }
hosts() { sed -n 's/^HOSTS=//p' "$LAB_DIR/config" 2>/dev/null || echo 2; }
docker_hosts() { sed -n 's/^DOCKER_HOSTS=//p' "$LAB_DIR/config" 2>/dev/null || echo 2; }
pg_url() {  # pg_url SSLMODE
  echo "host=10.77.0.1 port=5433 dbname=migplan user=migplan sslmode=$1 sslrootcert=$LAB_DIR/pg/ca.crt connect_timeout=5"
}
pg_psql() {  # pg_psql SSLMODE SQL
  PGPASSWORD=$(cat "$LAB_DIR/pg/password") timeout 20 psql -X -Atq "$(pg_url "$1")" -c "$2"
}

if [[ $(id -u) -ne 0 ]]; then
  echo "lab-test: must run as root"; echo "0 passed, 1 failed"; exit 1
fi

echo "== up (twice)"
t0=$SECONDS
check "up succeeds" "$LAB" up
echo "     (first up: $((SECONDS - t0)) s)"
N=$(hosts)
M=$(docker_hosts)
((N >= 2)) || N=2
t0=$SECONDS
if "$LAB" up >"$OUT" 2>&1 && grep -q "nothing changed" "$OUT"; then
  pass "second up changes nothing ($((SECONDS - t0)) s)"
else
  fail "second up changes nothing"
fi
((SECONDS - t0 < 20)) && pass "second up is quick" || fail "second up is quick ($((SECONDS - t0)) s)"
check "status says healthy" "$LAB" status

echo "== SSH"
for ((n = 1; n <= N; n++)); do
  if [[ $(lab_ssh "$(addr "$n")" hostname 2>"$OUT") == "instance$n" ]]; then
    pass "ssh root@$(addr "$n") with the controller key and strict known_hosts (hostname instance$n)"
  else
    fail "ssh root@$(addr "$n") with the controller key and strict known_hosts"
  fi
done
refuse_with "unknown host key is refused" "Host key verification failed" lab_ssh "$(addr 1)" -o UserKnownHostsFile=/dev/null -- true
refuse_with "password authentication is refused" "Permission denied (publickey)" \
  lab_ssh "$(addr 1)" -o PubkeyAuthentication=no -o PreferredAuthentications=password,keyboard-interactive -- true
refuse_with "cipher aes128-ctr is refused (only aes256-ctr)" "no matching cipher" lab_ssh "$(addr 1)" -c aes128-ctr -- true
refuse_with "MAC hmac-sha1 is refused (only hmac-sha2-256)" "no matching MAC" lab_ssh "$(addr 1)" -m hmac-sha1 -- true
refuse_with "KEX curve25519-sha256 is refused (only diffie-hellman-group-exchange-sha256)" "no matching key exchange" \
  lab_ssh "$(addr 1)" -o KexAlgorithms=curve25519-sha256 -- true
check "criu, runc, docker and ip are on PATH over ssh" lab_ssh "$(addr 1)" 'command -v criu runc docker ip'
sshd_effective() {  # the effective sshd configuration of instance1 (sshd -T)
  "$LAB" exec instance1 -- /usr/sbin/sshd -T -f "$LAB_DIR/hosts/instance1/sshd_config" \
    -C user=root,host=controller,addr=10.77.0.1,laddr=10.77.0.11,lport=22
}
for setting in "strictmodes yes" "authenticationmethods publickey" "allowagentforwarding no" "permittunnel no" \
               "allowtcpforwarding yes" "allowstreamlocalforwarding no" "x11forwarding no" "permitlisten 127.0.0.1:*" \
               "gatewayports no"; do
  check "sshd: $setting" bash -c "$(declare -f sshd_effective); LAB='$LAB' LAB_DIR='$LAB_DIR' sshd_effective | grep -qxF '$setting'"
done
check "sshd: AuthorizedKeysFile /run/migplan-lab/authorized_keys and its directories are root's alone (StrictModes)" \
  "$LAB" exec instance1 -- bash -c 'for p in / /run /run/migplan-lab /run/migplan-lab/authorized_keys; do
    [[ $(stat -c %u "$p") == 0 ]] || exit 1; (( 0$(stat -c %a "$p") & 022 )) && exit 1; done; exit 0'
lab_fwd() {  # lab_fwd TARGET: ssh -W TARGET through instance1 (a direct-tcpip channel)
  timeout 15 ssh -F /dev/null -n -o BatchMode=yes -o ConnectTimeout=5 -o StrictHostKeyChecking=yes \
    -o UserKnownHostsFile="$KNOWN" -o GlobalKnownHostsFile=/dev/null -o IdentitiesOnly=yes -i "$KEY" \
    -W "$1" "root@$(addr 1)"
}
if [[ $(lab_fwd "$(addr 2):22" 2>"$OUT" | head -c 4) == SSH- ]]; then
  pass "local forwarding (direct-tcpip) to another lab host works"
else
  fail "local forwarding (direct-tcpip) to another lab host works"
fi
refuse_with "local forwarding to an address outside PermitOpen is refused" "administratively prohibited" \
  bash -c "$(declare -f lab_fwd addr); KNOWN='$KNOWN' KEY='$KEY' lab_fwd 10.77.0.200:22 | grep -q SSH-"
check "remote forwarding bound to the host's loopback works (page-server tunnel)" \
  lab_ssh "$(addr 1)" -o ExitOnForwardFailure=yes -R 127.0.0.1:0:127.0.0.1:9 -- true
refuse_with "remote forwarding on the host's lab address is refused" "remote port forwarding failed" \
  lab_ssh "$(addr 1)" -o ExitOnForwardFailure=yes -R "$(addr 1):0:127.0.0.1:9" -- sleep 1
refuse_with "remote forwarding on all addresses is refused" "remote port forwarding failed" \
  lab_ssh "$(addr 1)" -o ExitOnForwardFailure=yes -R 0.0.0.0:0:127.0.0.1:9 -- sleep 1

echo "== separate hosts"
marker="lab-test-$$-$RANDOM"
check "instance1 writes /var/lib/migplan/$marker" lab_ssh "$(addr 1)" "touch /var/lib/migplan/$marker"
refuse "instance2 does not see instance1's /var/lib/migplan/$marker" lab_ssh "$(addr 2)" "test -e /var/lib/migplan/$marker"
refuse "the machine itself does not see it in /var/lib/migplan" test -e "/var/lib/migplan/$marker"
check "instance1's file lives in its own host directory" test -e "$LAB_DIR/hosts/instance1/var-lib-migplan/$marker"
lab_ssh "$(addr 1)" "rm -f /var/lib/migplan/$marker" >/dev/null 2>&1
check "lab exec enters instance2's namespaces" bash -c "[[ \$('$LAB' exec instance2 -- hostname) == instance2 ]]"
check "instance2 reaches instance1 over the bridge" "$LAB" exec instance2 -- bash -c 'exec 3<>/dev/tcp/10.77.0.11/22 && head -c 4 <&3 | grep -q SSH-'

echo "== Docker over SSH"
for ((n = 1; n <= M && n <= N; n++)); do
  check "docker info over ssh on instance$n" lab_ssh "$(addr "$n")" 'docker info --format "{{.ServerVersion}}"'
done
if [[ -x /bin/busybox ]] && ((M >= 1)); then
  img="migplan-lab-test:$$"
  check "docker import + run --network none over ssh on instance1" lab_ssh "$(addr 1)" "
    set -e; d=\$(mktemp -d); mkdir -p \$d/bin; cp /bin/busybox \$d/bin/busybox; ln -s busybox \$d/bin/sh
    tar -C \$d -c . | docker import - $img >/dev/null; rm -rf \$d
    out=\$(docker run --rm --network none $img /bin/busybox hostname -s; docker rmi $img >/dev/null)
    test -n \"\$out\""
  if ((M >= 2)); then
    refuse "instance2's dockerd does not see instance1's images" lab_ssh "$(addr 2)" "docker image inspect $img"
  fi
fi

echo "== PostgreSQL"
check "psql from the controller over SSL (verify-full) as migplan" \
  bash -c "[[ \$(PGPASSWORD=\$(cat '$LAB_DIR/pg/password') psql -X -Atq \"$(pg_url verify-full)\" -c 'select ssl from pg_stat_ssl where pid = pg_backend_pid()') == t ]]"
refuse_with "sslmode=disable is refused by the server" "no encryption" pg_psql disable 'select 1'
refuse_with "a wrong password is refused" "password authentication failed" \
  env PGPASSWORD=wrong timeout 20 psql -X -Atq "$(pg_url verify-full)" -c 'select 1'
check ".lab/env exports MIGPLAN_JOURNAL_PASSWORD and MIGPLAN_LAB_DIR" \
  bash -c "source '$LAB_DIR/env' && [[ -n \$MIGPLAN_JOURNAL_PASSWORD && \$MIGPLAN_LAB_DIR == '$LAB_DIR' ]]"
check "CA certificate is world-readable" bash -c "[[ \$(stat -c %a '$LAB_DIR/pg/ca.crt') == 644 ]]"
check "psql from instance1 over SSL works" "$LAB" exec instance1 -- env PGPASSWORD="$(cat "$LAB_DIR/pg/password")" \
  psql -X -Atq "$(pg_url verify-full)" -c 'select 1'
check "pg stop stops PostgreSQL" bash -c "'$LAB' pg stop && ! pg_isready -q -h 10.77.0.1 -p 5433 -t 2"
check "pg start starts it again (role and database kept)" bash -c "'$LAB' pg start && '$LAB' pg status"
# A listener on port 5433 that is not a lab's PostgreSQL is never stopped (review item 8).
fake_pg() {  # fake_pg ADDR: a process named postgres listening on ADDR:5433, in the background
  ( exec -a postgres /usr/bin/python3 -c "import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('$1', 5433)); s.listen(); time.sleep(300)" ) \
    </dev/null >/dev/null 2>&1 &
  FAKE=$!
  for _ in $(seq 50); do ss -Hltn "( sport = :5433 )" | grep -qF "$1:5433" && return 0; sleep 0.1; done
  return 1
}
if [[ -x /usr/bin/python3 ]]; then
  if fake_pg 127.0.0.1; then
    check "up with an unrelated postgres on 127.0.0.1:5433 succeeds" "$LAB" up
    check "... and leaves that process alone" kill -0 "$FAKE"
    kill "$FAKE" 2>/dev/null; wait "$FAKE" 2>/dev/null
  else
    fail "could not start a stand-in listener on 127.0.0.1:5433"
  fi
  "$LAB" pg stop >/dev/null 2>&1
  if fake_pg 10.77.0.1; then
    refuse_with "pg start refuses to stop a non-lab postgres on 10.77.0.1:5433" "not a migplan lab's PostgreSQL" "$LAB" pg start
    check "... and that process is still running" kill -0 "$FAKE"
    kill "$FAKE" 2>/dev/null; wait "$FAKE" 2>/dev/null
  else
    fail "could not start a stand-in listener on 10.77.0.1:5433"
  fi
  check "pg start after the stand-in went away" bash -c "'$LAB' pg start && '$LAB' pg status"
fi
if ((N >= 3)); then
  refuse_with "psql from instance3 (not in pg_hba.conf) is refused" "no pg_hba.conf entry" "$LAB" exec instance3 -- \
    env PGPASSWORD="$(cat "$LAB_DIR/pg/password")" psql -X -Atq "$(pg_url verify-full)" -c 'select 1'
fi

echo "== lab directory and owner safety"
SCRATCH=$(mktemp -d /tmp/lab-test-scratch.XXXXXX)
mkdir -p "$SCRATCH/notalab" && echo precious > "$SCRATCH/notalab/file"
for d in / /srv /var/lib /home "$HOME" "$REPO"; do
  refuse_with "down --purge refuses MIGPLAN_LAB_DIR=$d" "refusing to purge" env MIGPLAN_LAB_DIR="$d" "$LAB" down --purge
done
refuse_with "down --purge refuses a directory without the lab marker" "has no" \
  env MIGPLAN_LAB_DIR="$SCRATCH/notalab" "$LAB" down --purge
check "... and leaves it intact" test -s "$SCRATCH/notalab/file"
refuse_with "up refuses a non-empty directory that holds no lab" "holds no lab" \
  env MIGPLAN_LAB_DIR="$SCRATCH/notalab" "$LAB" up
refuse_with "up refuses MIGPLAN_LAB_DIR=/srv" "refusing to use" env MIGPLAN_LAB_DIR=/srv "$LAB" up
check "up wrote the lab marker" test -f "$LAB_DIR/.migplan-lab"
refuse_with "down from another lab directory refuses to remove this running lab" "is not this one" \
  env MIGPLAN_LAB_DIR="$SCRATCH/otherlab" "$LAB" down
check "... and the lab is still healthy" "$LAB" status
check "the bridge names its owner" bash -c "ip -o link show dev mpbr0 | grep -qF 'alias migplan-lab:$LAB_DIR'"
rm -rf "$SCRATCH"

echo "== down"
hostkey_before=$(cat "$KNOWN")
sshd_pid=$(cat "$LAB_DIR/hosts/instance1/sshd.pid" 2>/dev/null || echo none)
check "down succeeds" "$LAB" down
refuse "no mp-instance namespace is left" bash -c 'ip netns list | grep -q "^mp-instance"'
refuse "the bridge mpbr0 is gone" ip link show mpbr0
refuse "the iptables rule is gone" iptables -w 10 -C FORWARD -i mpbr0 -o mpbr0 -j ACCEPT
refuse "instance1's sshd is gone" bash -c "for i in \$(seq 30); do kill -0 $sshd_pid 2>/dev/null || exit 1; sleep 0.1; done; ps -o pid,ppid,args -p $sshd_pid >&2; exit 0"
refuse "PostgreSQL is down" pg_isready -h 10.77.0.1 -p 5433 -t 2
refuse "no lab mount is left" bash -c "findmnt -rn -o TARGET | grep -qF '$LAB_DIR/'"
refuse "status says not healthy" "$LAB" status
check "keys are kept" test -s "$KEY"

echo "== up after down"
check "up after down succeeds" "$LAB" up
check "host keys are the same as before (known_hosts unchanged)" bash -c "[[ \$(cat '$KNOWN') == '$hostkey_before' ]]"
check "ssh to instance1 works again" lab_ssh "$(addr 1)" true

echo "== recovery from a killed lab and leftovers"
kill -9 "$(cat "$LAB_DIR/hosts/instance1/sshd.pid")" 2>/dev/null
kill -9 "$(cat "$LAB_DIR/hosts/instance2/holder.pid")" 2>/dev/null
umount -l "$LAB_DIR/hosts/instance2/mnt.ns" 2>/dev/null   # as if instance2's namespace had been lost
if ((M >= 1)); then kill -9 "$(cat "$LAB_DIR/hosts/instance1/run/docker.pid")" 2>/dev/null; fi
iptables -w 10 -I FORWARD -i mpbr0 -o mpbr0 -j ACCEPT     # a duplicated rule
sleep 0.5
refuse "status notices the damage" "$LAB" status
check "up repairs it" "$LAB" up
check "status says healthy after repair" "$LAB" status
check "exactly one iptables rule" bash -c '[[ $(iptables -w 10 -S FORWARD | grep -cxF -- "-A FORWARD -i mpbr0 -o mpbr0 -j ACCEPT") == 1 ]]'
for ((n = 1; n <= 2; n++)); do
  check "ssh to instance$n after repair" lab_ssh "$(addr "$n")" true
done
sleep 600 &
bystander=$!
kill -9 "$(cat "$LAB_DIR/hosts/instance2/sshd.pid")" 2>/dev/null
echo "$bystander" > "$LAB_DIR/hosts/instance2/sshd.pid"   # a stale pid file naming an unrelated process
check "up recovers from a stale pid file naming another process" "$LAB" up
check "ssh to instance2 after that" lab_ssh "$(addr 2)" true
check "the unrelated process was left alone" kill -0 "$bystander"
kill "$bystander" 2>/dev/null; wait "$bystander" 2>/dev/null
printf 'damaged\n' > "$KEY.pub"
check "up replaces a damaged controller key" "$LAB" up
check "ssh works with the new controller key" lab_ssh "$(addr 1)" true

echo "== final"
check "lab is left up and healthy" "$LAB" status
echo "$PASSED passed, $FAILED failed"
[[ $FAILED -eq 0 ]]
