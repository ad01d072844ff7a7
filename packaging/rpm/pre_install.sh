# injixo-sync: the system user the service runs as.
getent group injixo-sync >/dev/null || groupadd -r injixo-sync
getent passwd injixo-sync >/dev/null || \
    useradd -r -g injixo-sync -d /var/lib/injixo-sync -s /sbin/nologin \
        -c "injixo-sync daemon" injixo-sync
exit 0
