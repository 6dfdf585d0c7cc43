"""Network guard: any socket connection to a non-loopback address fails and is logged.

Loaded into the test host's ComfyUI process through PYTHONPATH (as ``sitecustomize``) and into
the pytest process by ``conftest.py``.  Attempts are appended to ``$PERFORMER_NETGUARD_LOG`` so
tests can assert that none happened."""
import ipaddress
import os
import socket

_LOG = os.environ.get("PERFORMER_NETGUARD_LOG")
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_loopback(address) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _check(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
        if _LOG:
            with open(_LOG, "a") as fh:
                fh.write(f"{os.getpid()} blocked connection to {address!r}\n")
        raise OSError(f"netguard: non-loopback connection to {address!r} blocked in tests")


def _connect(self, address):
    _check(self, address)
    return _real_connect(self, address)


def _connect_ex(self, address):
    _check(self, address)
    return _real_connect_ex(self, address)


socket.socket.connect = _connect
socket.socket.connect_ex = _connect_ex
