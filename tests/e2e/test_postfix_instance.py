"""The private Postfix of the e2e tests itself: a start that finds its smtpd port taken
(chosen free in __init__, bound by someone since) chooses another instead of failing
the test that needed it."""

from __future__ import annotations

import socket

from .postfix_instance import PostfixInstance
from .smtp_sink import SmtpSink


def test_a_taken_smtpd_port_is_chosen_again():
    sink = SmtpSink().start()
    instance = PostfixInstance(
        relay_port=sink.port, local_domains=["fwd.example"], virtual_aliases={}, extra_main_cf="", label="porttaken"
    )
    taken = instance.smtpd_port
    squatter = socket.create_server(("127.0.0.1", taken))  # what a daemon binding port 0 may be given
    try:
        instance.start()
        assert instance.smtpd_port != taken
        assert "Address already in use" in instance.maillog.read_text()
        with socket.create_connection(("127.0.0.1", instance.smtpd_port), timeout=10) as client:
            client.settimeout(10)
            assert client.recv(64).startswith(b"220 ")
    finally:
        squatter.close()
        instance.stop()
        sink.stop()
