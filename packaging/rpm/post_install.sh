# injixo-sync: own the state directory, enable the service (it starts once
# /etc/injixo-sync/config.toml exists); an upgrade restarts a running daemon.
install -d -o injixo-sync -g injixo-sync -m 0750 /var/lib/injixo-sync
chown root:injixo-sync /etc/injixo-sync
chmod 0750 /etc/injixo-sync
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
    if [ "$1" -gt 1 ]; then
        systemctl try-restart injixo-sync.service >/dev/null 2>&1 || true
    fi
fi
systemctl enable injixo-sync.service >/dev/null 2>&1 || true
exit 0
