"""Building aiortc's RTCConfiguration from configured ICE servers only."""

from __future__ import annotations

from typing import Any

from aiortc import RTCConfiguration, RTCIceServer


def rtc_configuration(ice_servers: list[dict[str, Any]]) -> RTCConfiguration:
    """An explicit configuration, never None.

    aiortc adds a public STUN server when ``iceServers`` is None; an empty
    list keeps it to host candidates, so nothing unconfigured is contacted.
    """
    servers = [
        RTCIceServer(
            urls=server["urls"],
            username=server.get("username"),
            credential=server.get("credential"),
        )
        for server in ice_servers
    ]
    return RTCConfiguration(iceServers=servers)


def restrict_host_addresses(addresses: tuple[str, ...]) -> None:
    """Use only ``addresses`` for host candidates in this whole process.

    aioice offers no per-connection choice of interfaces and leaves out
    127.0.0.1, so its address lookup is replaced. Meant for a process that
    is one peer (``huiyun peer --ice-address``), e.g. a multi-homed cart.
    """
    import aioice.ice

    chosen = list(addresses)

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [
            a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)
        ]

    aioice.ice.get_host_addresses = host_addresses
