#!/bin/sh
# The hosting account: OpenSSH serving SFTP only, to SFTP_USER, with the
# public key from /run/authorized_key. The host keys are made at first start
# and kept in /etc/ssh/keys (a volume), as a provider's would be.
set -eu
user=${SFTP_USER:?}
install -d -m 0755 /etc/ssh/keys /run/sshd
[ -s /etc/ssh/keys/ssh_host_ed25519_key ] || ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/keys/ssh_host_ed25519_key
id "$user" >/dev/null 2>&1 || { useradd -m -s /usr/sbin/nologin "$user"; usermod -p '*' "$user"; }
home=$(getent passwd "$user" | cut -d: -f6)
install -d -o "$user" -g "$user" -m 0700 "$home/.ssh" "$home/backups"
[ ! -s /run/authorized_key ] || install -o "$user" -g "$user" -m 0600 /run/authorized_key "$home/.ssh/authorized_keys"
cat >/etc/ssh/sftp_sshd_config <<CONF
HostKey /etc/ssh/keys/ssh_host_ed25519_key
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowTcpForwarding no
X11Forwarding no
UsePAM no
Subsystem sftp internal-sftp
ForceCommand internal-sftp
CONF
exec /usr/sbin/sshd -D -e -f /etc/ssh/sftp_sshd_config
