"""Operating wg-py: ``wg-py show`` and ``wg-py top`` (status views over the daemons' sockets)
and the systemd service units (``wg-py install-units``). Clients only: nothing here runs inside
a daemon."""
