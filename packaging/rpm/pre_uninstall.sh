# injixo-sync: on erase (not upgrade), stop and disable the service; it drains first.
if [ "$1" -eq 0 ]; then
    systemctl disable --now injixo-sync.service >/dev/null 2>&1 || true
fi
exit 0
