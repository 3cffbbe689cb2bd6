#!/bin/sh
# Create the secret files docker-compose.yml mounts (Compose `secrets:`), once.
#
#   sh infra/compose/make-secrets.sh [DIR]     (DIR: $TOXWATCH_SECRETS_DIR, else
#                                               infra/compose/secrets)
#
# Generated here (random): postgres_password, cipher_keys (one base64 AES-256 key, the
# format of TOXWATCH_CIPHER_KEY_FILE), audit_key, webhook_secret,
# grafana_admin_password. Issued by others, created empty for you to fill in:
# toxwatch_smtp_password (the dispatcher's SMTP account), smtp_password,
# pager_bridge_token, ticket_bridge_token (infra/alertmanager/alertmanager.yml).
#
# An existing file is never overwritten: losing cipher_keys makes the stored events
# unreadable, so keep a copy of it (and of audit_key) off this host. The folder is
# made private (0700); the files are 0444, because Compose bind-mounts them as they
# are and each container reads them as its own, non-root, user.
set -eu

dir=${1:-${TOXWATCH_SECRETS_DIR:-$(dirname "$0")/secrets}}
umask 077
mkdir -p "$dir"
chmod 700 "$dir"

random_base64() { head -c "$1" /dev/urandom | base64 | tr -d '\n'; }
random_hex() { head -c "$1" /dev/urandom | od -An -v -tx1 | tr -d ' \n'; }

put() {
    name=$1
    shift
    path="$dir/$name"
    if [ -e "$path" ]; then
        echo "kept     $path"
        return
    fi
    "$@" >"$path"
    chmod 444 "$path"
    if [ -s "$path" ]; then
        echo "created  $path"
    else
        echo "created  $path (empty: fill it in)"
    fi
}

put postgres_password random_hex 24
put cipher_keys random_base64 32
put audit_key random_hex 32
put webhook_secret random_hex 32
put grafana_admin_password random_hex 16
put toxwatch_smtp_password true
put smtp_password true
put pager_bridge_token true
put ticket_bridge_token true
