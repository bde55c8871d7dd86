#!/usr/bin/env bash
# The test lab's "remote" hypervisor on this one machine (run by test.sh, as root, idempotent):
#  - an sshd of the lab's own on 127.0.0.1:10022 and a key, for qemu+ssh://root@localhost:10022/system
#  - a lab CA (certtool) with one server certificate (SANs localhost, 127.0.0.1 and the extra
#    loopback addresses the tests dial) and one client certificate
#  - QEMU's NBD server of backup jobs using it (backup_tls_x509_cert_dir in qemu.conf)
#  - libvirtd listening for TLS on 127.0.0.1:16514 (qemu+tls://localhost/system), restarted with
#    --listen when its TLS configuration or that flag is missing, keeping its other flags
# What a test needs is printed by `scripts/lab-remote.sh env` (the LAB_* variables).
set -euo pipefail

LAB=/var/lib/vircptfs-lab
PKI=$LAB/pki
SSH_KEY=$LAB/ssh/id_ed25519
SSH_PORT=10022
BACKUP_CERTS=$PKI/backup          # QEMU's names: ca-cert.pem server-cert.pem server-key.pem
NBD_CERTS=$PKI/nbd-client         # libnbd's names: ca-cert.pem client-cert.pem client-key.pem
RPC_CERTS=$PKI/libvirt            # libvirt's pkipath names: cacert.pem clientcert.pem clientkey.pem
SANS=(127.0.0.1 127.0.0.2 127.0.0.3 127.0.0.4)
QEMU_CONF=/etc/libvirt/qemu.conf
LIBVIRTD_CONF=/etc/libvirt/libvirtd.conf
MARK='# vircptfs lab (scripts/lab-remote.sh)'

log() { printf '[lab-remote] %s\n' "$*" >&2; }

if [ "${1:-}" = env ]; then
  cat <<EOF
LAB_SSH_URI='qemu+ssh://root@localhost:$SSH_PORT/system?keyfile=$SSH_KEY&no_tty=1'
LAB_TLS_URI='qemu+tls://localhost/system?pkipath=$RPC_CERTS'
LAB_NBD_CERTS='$NBD_CERTS'
LAB_PKI='$PKI'
EOF
  exit 0
fi

# --- ssh ---------------------------------------------------------------------------------------
# An sshd of the lab's own on 127.0.0.1:$SSH_PORT (its own config and authorized keys), so the
# host's sshd and its settings are neither needed nor touched.
ssh-keygen -A >/dev/null
mkdir -p /run/sshd "$LAB/ssh" /root/.ssh
chmod 755 "$LAB"; chmod 700 /root/.ssh "$LAB/ssh"
[ -f "$SSH_KEY" ] || ssh-keygen -q -t ed25519 -N '' -C vircptfs-lab -f "$SSH_KEY"
install -m 600 "$SSH_KEY.pub" "$LAB/ssh/authorized_keys"
printf '%s\n' "ListenAddress 127.0.0.1:$SSH_PORT" 'HostKey /etc/ssh/ssh_host_ed25519_key' "PidFile $LAB/ssh/sshd.pid" \
  "AuthorizedKeysFile $LAB/ssh/authorized_keys" 'PermitRootLogin prohibit-password' 'PasswordAuthentication no' \
  'KbdInteractiveAuthentication no' 'UsePAM no' > "$LAB/ssh/sshd_config"
sshd_pid=$(cat "$LAB/ssh/sshd.pid" 2>/dev/null || true)
if [ -z "$sshd_pid" ] || [ "$(cat "/proc/$sshd_pid/comm" 2>/dev/null)" != sshd ]; then
  log "starting the lab's sshd on 127.0.0.1:$SSH_PORT"
  /usr/sbin/sshd -f "$LAB/ssh/sshd_config"
fi
touch /root/.ssh/known_hosts
if ! ssh-keygen -F "[localhost]:$SSH_PORT" >/dev/null; then
  keys=
  for _ in $(seq 1 50); do keys=$(ssh-keyscan -p "$SSH_PORT" -t ed25519 -H localhost 2>/dev/null) && [ -n "$keys" ] && break; sleep 0.1; done
  [ -n "$keys" ] || { echo "lab-remote.sh: the lab's sshd does not answer on 127.0.0.1:$SSH_PORT" >&2; exit 1; }
  printf '%s\n' "$keys" >> /root/.ssh/known_hosts
fi

# --- certificates (certtool, gnutls-bin) -------------------------------------------------------
mkdir -p "$PKI" "$BACKUP_CERTS" "$NBD_CERTS" "$RPC_CERTS"
cert() { # NAME TEMPLATE-LINES...: a key and a certificate signed by the lab CA
  local name=$1; shift
  [ -f "$PKI/$name-cert.pem" ] && return 0
  printf '%s\n' "$@" > "$PKI/$name.info"
  certtool --generate-privkey --outfile "$PKI/$name-key.pem" 2>/dev/null
  certtool --generate-certificate --load-privkey "$PKI/$name-key.pem" --load-ca-certificate "$PKI/ca-cert.pem" \
    --load-ca-privkey "$PKI/ca-key.pem" --template "$PKI/$name.info" --outfile "$PKI/$name-cert.pem" 2>/dev/null
}
if [ ! -f "$PKI/ca-cert.pem" ]; then
  log "making the lab CA"
  rm -f "$PKI"/server-cert.pem "$PKI"/client-cert.pem
  printf '%s\n' 'cn = vircptfs lab CA' ca cert_signing_key 'expiration_days = 3650' > "$PKI/ca.info"
  certtool --generate-privkey --outfile "$PKI/ca-key.pem" 2>/dev/null
  certtool --generate-self-signed --load-privkey "$PKI/ca-key.pem" --template "$PKI/ca.info" --outfile "$PKI/ca-cert.pem" 2>/dev/null
fi
sans=(); for ip in "${SANS[@]}"; do sans+=("ip_address = $ip"); done
cert server 'organization = vircptfs lab' 'cn = localhost' 'dns_name = localhost' "${sans[@]}" \
  tls_www_server encryption_key signing_key 'expiration_days = 3650'
cert client 'organization = vircptfs lab' 'cn = vircptfs-lab-client' tls_www_client encryption_key signing_key 'expiration_days = 3650'
chmod 600 "$PKI"/*-key.pem
# QEMU (user libvirt-qemu) reads the backup certificates itself.
qemu_group=$(id -gn libvirt-qemu 2>/dev/null || echo root)
install -m 644 "$PKI/ca-cert.pem" "$BACKUP_CERTS/ca-cert.pem"
install -m 644 "$PKI/server-cert.pem" "$BACKUP_CERTS/server-cert.pem"
install -m 640 -g "$qemu_group" "$PKI/server-key.pem" "$BACKUP_CERTS/server-key.pem"
chmod 755 "$LAB" "$PKI"; chmod 750 "$BACKUP_CERTS"; chgrp "$qemu_group" "$BACKUP_CERTS"
install -m 644 "$PKI/ca-cert.pem" "$NBD_CERTS/ca-cert.pem"
install -m 644 "$PKI/client-cert.pem" "$NBD_CERTS/client-cert.pem"
install -m 600 "$PKI/client-key.pem" "$NBD_CERTS/client-key.pem"
install -m 644 "$PKI/ca-cert.pem" "$RPC_CERTS/cacert.pem"
install -m 644 "$PKI/client-cert.pem" "$RPC_CERTS/clientcert.pem"
install -m 600 "$PKI/client-key.pem" "$RPC_CERTS/clientkey.pem"

# --- libvirt configuration ---------------------------------------------------------------------
restart=0
if ! grep -q "^backup_tls_x509_cert_dir = \"$BACKUP_CERTS\"" "$QEMU_CONF"; then
  log "qemu.conf: backup_tls_x509_cert_dir"
  sed -i '/^backup_tls_x509_cert_dir\b/d' "$QEMU_CONF"
  printf '%s\nbackup_tls_x509_cert_dir = "%s"\n' "$MARK" "$BACKUP_CERTS" >> "$QEMU_CONF"
  restart=1
fi
if ! grep -qF "$MARK" "$LIBVIRTD_CONF"; then
  log "libvirtd.conf: TLS on 127.0.0.1 with the lab certificates"
  printf '%s\nlisten_tls = 1\nlisten_tcp = 0\nlisten_addr = "127.0.0.1"\nca_file = "%s"\ncert_file = "%s"\nkey_file = "%s"\n' \
    "$MARK" "$PKI/ca-cert.pem" "$PKI/server-cert.pem" "$PKI/server-key.pem" >> "$LIBVIRTD_CONF"
  restart=1
fi

# libvirtd: running, with --listen. Restarted (SIGTERM, then the same command line plus --listen)
# when the configuration changed or the flag is missing; running domains survive a restart.
pid=$(cat /run/libvirtd.pid 2>/dev/null || true)
argv=()
if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = libvirtd ]; then
  mapfile -d '' -t argv < "/proc/$pid/cmdline"
  has_listen=0; for a in "${argv[@]}"; do case $a in --listen|-l) has_listen=1;; esac; done
  [ $has_listen = 1 ] || { argv+=(--listen); restart=1; }
  if [ $restart = 1 ]; then
    log "restarting libvirtd with: ${argv[*]}"
    kill -TERM "$pid"
    for _ in $(seq 1 300); do [ -e "/proc/$pid" ] || break; sleep 0.1; done
    (cd / && setsid "${argv[@]}" </dev/null >/dev/null 2>&1 &)
  fi
else
  log "starting libvirtd --listen"
  libvirtd -d --listen
fi
for _ in $(seq 1 100); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.2; done
virsh -c qemu:///system version >/dev/null || { echo "lab-remote.sh: libvirtd did not come up" >&2; exit 1; }
eval "$(bash "$0" env)"
virsh -c "$LAB_TLS_URI" version >/dev/null || { echo "lab-remote.sh: $LAB_TLS_URI does not answer" >&2; exit 1; }
virsh -c "$LAB_SSH_URI" version >/dev/null || { echo "lab-remote.sh: $LAB_SSH_URI does not answer" >&2; exit 1; }
log "ready"
