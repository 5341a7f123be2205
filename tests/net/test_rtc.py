"""RtcLink over real aiortc, in a network namespace the test makes.

aioice never offers 127.0.0.1 as a host candidate, so two ends in a plain test process
would have nothing to connect over.  The fixture makes a namespace ``p2pR<pid>`` whose only
non-loopback address is 10.77.0.1/24 (on one end of a veth pair inside it); each scenario runs in a child
``ip netns exec`` process where both link ends (one asyncio sidecar, as in a node) gather
that one host candidate and connect over it.  Signaling goes through a trio memory
channel standing in for the relay, which is where the tests tamper with it.  The namespace
is removed in teardown whatever happens; without root (or ``ip``) the namespace tests are
skipped with the reason.  The signal-blob tests need no network and always run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from p2pupdate.core import wire
from p2pupdate.core.crypto import SigningKey
from p2pupdate.net import rtc
from p2pupdate.net.base import LinkConfig, StreamLink, establish
from p2pupdate.net.errors import (
    FrameAlteredError,
    FrameTooLargeError,
    HandshakeKeyError,
    HandshakeReplayError,
    LinkBrokenError,
    LinkClosedError,
    LinkError,
    LinkTimeoutError,
    SignalError,
)
from p2pupdate.net.handshake import NonceCache

REPO = Path(__file__).resolve().parents[2]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
HAS_IP = shutil.which("ip") is not None
needs_netns = pytest.mark.skipif(
    not (IS_ROOT and HAS_IP),
    reason=f"needs root and iproute2 to make a network namespace (aioice never offers "
    f"127.0.0.1) (root: {IS_ROOT}, `ip` found: {HAS_IP})",
)

A = SigningKey.from_seed(b"a" * 32)
B = SigningKey.from_seed(b"b" * 32)
M = SigningKey.from_seed(b"m" * 32)
SDP = "v=0\r\na=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\n"


# -- signal blobs (pure; no network) ---------------------------------------------------


def test_signal_round_trip_and_refusals() -> None:
    s = b"s" * rtc.SESSION_LEN
    blob = rtc.sign_signal(A, kind="offer", to=B.keyid, session=s, sdp=SDP)
    got = rtc.open_signal(blob, me=B.keyid, kind="offer", sender=A.keyid)
    assert (got.sender, got.recipient, got.session, got.sdp) == (A.keyid, B.keyid, s, SDP)
    assert rtc.sdp_fingerprint(got.sdp) == b"\xab" * 32
    refusals = {
        "not for me": lambda: rtc.open_signal(blob, me=M.keyid, kind="offer"),
        "other sender": lambda: rtc.open_signal(blob, me=B.keyid, kind="offer", sender=M.keyid),
        "wrong kind": lambda: rtc.open_signal(blob, me=B.keyid, kind="answer"),
        "wrong session": lambda: rtc.open_signal(
            blob, me=B.keyid, kind="offer", session=b"x" * rtc.SESSION_LEN
        ),
        "garbage": lambda: rtc.open_signal(b"\x93\x01", me=B.keyid, kind="offer"),
        "oversize": lambda: rtc.open_signal(
            b"\x00" * (rtc.MAX_SIGNAL + 1), me=B.keyid, kind="offer"
        ),
    }
    for what, call in refusals.items():
        with pytest.raises(SignalError):
            call()
        print("refused:", what)


def _swap_fingerprint(blob: bytes, new: bytes) -> bytes:
    """What a relay would do to sit in the middle: put its own DTLS cert in the SDP.  It
    cannot re-sign, so it keeps the sender's key and signature."""
    outer = wire.decode(blob, rtc._SIGNAL_LIMITS)
    body = wire.decode(outer["body"], rtc._SIGNAL_LIMITS)
    old = rtc.sdp_fingerprint(body["sdp"]).hex(":").upper()
    body["sdp"] = body["sdp"].replace(old, new.hex(":").upper())
    assert body["sdp"] != wire.decode(outer["body"], rtc._SIGNAL_LIMITS)["sdp"]
    return wire.encode({**outer, "body": wire.encode(body)})


def test_relay_swapping_the_fingerprint_is_caught() -> None:
    blob = rtc.sign_signal(A, kind="offer", to=B.keyid, session=b"s" * 16, sdp=SDP)
    bad = _swap_fingerprint(blob, hashlib.sha256(b"mallory's cert").digest())
    with pytest.raises(SignalError, match="signature does not verify"):
        rtc.open_signal(bad, me=B.keyid, kind="offer", sender=A.keyid)


async def _bound_pair(a_certs: tuple[bytes, bytes], b_certs: tuple[bytes, bytes]) -> None:
    sa, sb = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as n:
        for stream, key, peer, certs, dialer in (
            (sa, A, B.keyid, a_certs, True),
            (sb, B, A.keyid, b_certs, False),
        ):
            n.start_soon(
                lambda s=stream, k=key, p=peer, c=certs, d=dialer: establish(
                    s, key=k, dialer=d, host="m", config=LinkConfig(), expected_peer=p, certs=c
                )
            )


async def test_channel_binding_in_the_handshake() -> None:
    """Both sides see the same two certificates: linked.  One side sees another remote
    certificate (a different DTLS leg): both proofs fail."""
    ca, cb, cm = b"\xaa" * 32, b"\xbb" * 32, b"\xcc" * 32
    await _bound_pair((ca, cb), (cb, ca))
    with pytest.raises(ExceptionGroup) as info:
        await _bound_pair((ca, cm), (cb, ca))
    assert info.value.subgroup(HandshakeKeyError) is not None, info.value


class _LateAnswers:
    """A nominated ICE pair whose peer answers each STUN check ``delay`` s late (or never):
    what a consent answer stuck behind a bulk transfer looks like.  The transaction is
    aioice's own; only the network is replaced."""

    def __init__(self, delay: float | None) -> None:
        from aioice import stun

        self.stun, self.delay, self.checks = stun, delay, 0
        self.remote_addr = ("10.77.0.2", 9)
        self.protocol = self

    async def request(self, request: Any, addr: Any, **kw: Any) -> Any:
        self.checks += 1
        tx = self.stun.Transaction(request, addr, self, retransmissions=kw["retransmissions"])
        if self.delay is not None:
            answer = self.stun.Message(
                message_method=request.message_method,
                message_class=self.stun.Class.RESPONSE,
                transaction_id=request.transaction_id,
            )
            asyncio.get_running_loop().call_later(self.delay, tx.response_received, answer, addr)
        return await tx.run()

    def send_stun(self, message: Any, addr: Any) -> None:
        pass


def _consent(delay: float | None, checks: int) -> tuple[bool, int]:
    """Run aioice's consent loop against ``_LateAnswers`` until the connection closes or
    ``checks`` checks were made; (closed, checks made)."""
    from aioice import ice, stun

    pair = _LateAnswers(delay)
    conn = ice.Connection(ice_controlling=True)
    conn.remote_password = "pw"
    conn._nominated = {1: pair}  # type: ignore[dict-item]
    conn.build_request = lambda p, nominate: stun.Message(  # type: ignore[method-assign]
        message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST
    )
    closed: list[bool] = []

    async def close() -> None:
        closed.append(True)

    conn.close = close  # type: ignore[method-assign]

    async def main() -> None:
        task = asyncio.ensure_future(conn.query_consent())
        while not closed and pair.checks < checks:
            await asyncio.sleep(0.005)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
    return bool(closed), pair.checks


def test_consent_survives_late_answers_and_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    """aioice counted a consent check failed when its answer came after 0.5 s (one STUN
    RTO), and closed the link after six: a link whose answers wait behind a transfer died
    of being busy.  Tuned, an answer within three RTOs counts; none at all still expires.
    (Time is scaled down: the RTO is 10 ms here, the check interval 1 ms.)"""
    import aioice
    from aioice import ice, stun

    if aioice.__version__ != rtc.AIOICE_TUNED_FOR:
        pytest.skip(
            f"aioice {aioice.__version__}: the consent tuning is for {rtc.AIOICE_TUNED_FOR}"
        )
    rtc.tune_aiortc()
    monkeypatch.setattr(stun, "RETRY_RTO", 0.01)
    monkeypatch.setattr(ice, "CONSENT_INTERVAL", 0.001)
    assert _consent(delay=0.02, checks=10) == (False, 10)  # twice the RTO late: kept
    closed, checks = _consent(delay=None, checks=50)
    assert closed and checks == ice.CONSENT_FAILURES


# -- scenarios: run inside the namespace by the tests below ----------------------------


async def _linked(
    relay: Callable[[bytes], bytes] = lambda b: b,
    *,
    dial_cfg: LinkConfig | None = None,
    accept_cfg: LinkConfig | None = None,
) -> tuple[rtc.RtcLink, rtc.RtcLink]:
    """A dials B through a relay (a memory channel) that may rewrite each blob."""
    to_b_send, to_b = trio.open_memory_channel[bytes](1)
    to_a_send, to_a = trio.open_memory_channel[bytes](1)
    out: dict[str, rtc.RtcLink] = {}

    async def exchange(offer: bytes) -> bytes:
        await to_b_send.send(relay(offer))
        return relay(await to_a.receive())

    async def dialer() -> None:
        out["a"] = await rtc.dial_rtc(key=A, peer=B.keyid, exchange=exchange, config=dial_cfg)

    async def acceptor() -> None:
        offer = await to_b.receive()
        out["b"] = await rtc.accept_rtc(offer, key=B, reply=to_a_send.send, config=accept_cfg)

    async with trio.open_nursery() as n:
        n.start_soon(dialer)
        n.start_soon(acceptor)
    return out["a"], out["b"]


async def scenario_frames() -> None:
    """Frames both ways, a max-size frame, an oversize one refused, close seen as EOF."""
    big = LinkConfig(max_frame=2 * LinkConfig().max_frame)
    with trio.fail_after(25):
        a, b = await _linked(dial_cfg=big)
        assert (a.peer, b.peer) == (B.keyid, A.keyid)
        assert a.path == b.path == "host" and a.host == b.host == "10.77.0.1", (a.path, a.host)
        await a.send(b"hello")
        assert await b.receive() == b"hello"
        await b.send(b"")
        await b.send(b"back")
        assert [await a.receive(), await a.receive()] == [b"", b"back"]
        top = os.urandom(b.config.max_frame)  # the largest frame either side accepts
        async with trio.open_nursery() as n:
            n.start_soon(a.send, top)
            assert await b.receive() == top
        await b.send(top)
        assert await a.receive() == top
        with pytest.raises(ValueError):  # too large to send: the caller's bug
            await b.send(top + b"x")
        await a.send(top + b"x")  # a is allowed more than b: b must refuse it
        with pytest.raises(FrameTooLargeError):
            await b.receive()
        await b.aclose()
        with pytest.raises(LinkClosedError):
            await a.receive()
        await a.aclose()
    print("ok frames")


async def scenario_tampered_answer() -> None:
    """An answer whose fingerprint a relay swapped is refused; nothing links."""

    def relay(blob: bytes) -> bytes:
        outer = wire.decode(blob, rtc._SIGNAL_LIMITS)
        kind = wire.decode(outer["body"], rtc._SIGNAL_LIMITS)["kind"]
        return _swap_fingerprint(blob, b"\x11" * 32) if kind == "answer" else blob

    with trio.fail_after(20), pytest.raises(ExceptionGroup) as info:
        await _linked(relay)  # the dialer refuses; the acceptor is cancelled with it
    refused = info.value.subgroup(SignalError)
    assert refused is not None and "altered" in str(refused.exceptions[0]), info.value
    print("ok tampered")


async def scenario_bad_input() -> None:
    """An offer seen before is refused before a peer connection is made for it; a signed
    offer whose SDP aiortc cannot use, and an ICE server URL it refuses, come out in the
    link error family (not as aiortc's bare AssertionError / ValueError)."""
    nonces = NonceCache()
    offer = rtc.sign_signal(A, kind="offer", to=B.keyid, session=b"r" * 16, sdp=SDP)

    async def lost(_answer: bytes) -> None:
        raise OSError("the relay is gone")

    async def lost_offer(_offer: bytes) -> bytes:
        raise OSError("the relay is gone")

    with trio.fail_after(10):
        with pytest.raises(LinkBrokenError, match="relay is gone"):  # answered, into the void
            await rtc.accept_rtc(offer, key=B, reply=lost, nonces=nonces)
        with pytest.raises(HandshakeReplayError):
            await rtc.accept_rtc(offer, key=B, reply=lost, nonces=nonces)
        m = "v=0\r\nm=application {} UDP/DTLS/SCTP webrtc-datachannel\r\n"
        for sdp in (m.format("x"), m.format(9)):  # aiortc: AssertionError, ValueError
            bad = rtc.sign_signal(A, kind="offer", to=B.keyid, session=os.urandom(16), sdp=sdp)
            with pytest.raises(SignalError, match="SDP refused"):  # signed, but nonsense
                await rtc.accept_rtc(bad, key=B, reply=lost, nonces=nonces)
        with pytest.raises(LinkError, match="malformed uri"):  # one `except` per link
            await rtc.dial_rtc(
                key=A, peer=B.keyid, exchange=lost_offer, ice_servers=[{"urls": "bogus:x"}]
            )
    print("ok bad input")


async def scenario_peer_vanishes() -> None:
    """The acceptor answers and is gone before ICE connects: the dialer gets a link error
    within its handshake deadline, not a hang."""

    async def exchange(offer: bytes) -> bytes:
        got = rtc.open_signal(offer, me=B.keyid, kind="offer")
        chan, sdp = await rtc.RtcChannel.answer(got.sdp)
        await chan.aclose()
        return rtc.sign_signal(B, kind="answer", to=A.keyid, session=got.session, sdp=sdp)

    cfg = LinkConfig(handshake_timeout=3)
    with trio.fail_after(10), pytest.raises((LinkBrokenError, LinkTimeoutError)) as info:
        await rtc.dial_rtc(key=A, peer=B.keyid, exchange=exchange, config=cfg)
    print("ok vanished:", info.value)


async def _pump(
    src: rtc.RtcChannel, dst: rtc.RtcChannel, alter: Callable[[bytes], bytes] = lambda b: b
) -> None:
    while chunk := await src.receive_some(65536):
        await dst.send_all(alter(chunk))


async def _legs() -> tuple[rtc.RtcChannel, rtc.RtcChannel, rtc.RtcChannel, rtc.RtcChannel]:
    """Mallory answers A's offer herself and offers to B (as a relay that could rewrite the
    SDP would: the signature layer is skipped here): channels A-MA and MB-B."""
    a, sdp_a = await rtc.RtcChannel.offer()
    ma, sdp_ma = await rtc.RtcChannel.answer(sdp_a)
    mb, sdp_mb = await rtc.RtcChannel.offer()
    b, sdp_b = await rtc.RtcChannel.answer(sdp_mb)
    await a.complete(sdp_ma)
    await mb.complete(sdp_b)
    for chan in (a, ma, mb, b):
        await chan.opened()
    assert a.certs[1] == ma.certs[0] != mb.certs[0] == b.certs[1]  # two legs, two certs
    return a, ma, mb, b


async def _mitm(bind: bool) -> tuple[BaseException | None, BaseException | None]:
    """Mallory sits between two legs (``_legs``) and copies bytes between them."""
    a, ma, mb, b = await _legs()
    results: dict[str, BaseException | None] = {}

    async def side(name: str, chan: rtc.RtcChannel, key: SigningKey, peer: str) -> None:
        try:
            await establish(
                chan,
                key=key,
                dialer=name == "a",
                host="x",
                config=LinkConfig(),
                expected_peer=peer,
                certs=chan.certs if bind else None,
            )
            results[name] = None
        except HandshakeKeyError as exc:
            results[name] = exc

    async with trio.open_nursery() as n:
        n.start_soon(_pump, ma, mb)
        n.start_soon(_pump, mb, ma)
        async with trio.open_nursery() as hs:
            hs.start_soon(side, "a", a, A, B.keyid)
            hs.start_soon(side, "b", b, B, A.keyid)
        n.cancel_scope.cancel()
    for chan in (a, ma, mb, b):
        await chan.aclose()
    return results["a"], results["b"]


async def scenario_mitm() -> None:
    """A man in the middle with its own DTLS certificates: without the channel binding the
    handshake would pass (the proofs are relayed intact); with it both sides refuse."""
    with trio.fail_after(25):
        assert await _mitm(bind=False) == (None, None)
        ra, rb = await _mitm(bind=True)
    assert isinstance(ra, HandshakeKeyError) and isinstance(rb, HandshakeKeyError), (ra, rb)
    assert "certificates of this channel" in str(ra)
    print("ok mitm")


async def scenario_altered_frame() -> None:
    """Without the channel binding Mallory's legs carry the handshake intact, but the link's
    session key is the two ends' alone: a byte she flips in a frame after the handshake is
    caught by the receiver's MAC check, which closes the link."""
    flip = False

    def alter(chunk: bytes) -> bytes:
        return chunk[:-1] + bytes([chunk[-1] ^ 1]) if flip else chunk

    with trio.fail_after(25):
        a, ma, mb, b = await _legs()
        async with trio.open_nursery() as n:
            n.start_soon(_pump, ma, mb, alter)
            n.start_soon(_pump, mb, ma)
            links: dict[str, StreamLink] = {}

            async def side(name: str, chan: rtc.RtcChannel, key: SigningKey, peer: str) -> None:
                links[name] = await establish(
                    chan, key=key, dialer=name == "a", host="x", config=LinkConfig(),
                    expected_peer=peer,
                )  # fmt: skip

            async with trio.open_nursery() as hs:
                hs.start_soon(side, "a", a, A, B.keyid)
                hs.start_soon(side, "b", b, B, A.keyid)
            await links["a"].send(b"intact")
            assert await links["b"].receive() == b"intact"
            flip = True
            await links["a"].send(b"one coin")
            with pytest.raises(FrameAlteredError, match="altered a frame"):
                await links["b"].receive()
            assert links["b"].closed
            n.cancel_scope.cancel()
    for chan in (a, ma, mb, b):
        await chan.aclose()
    print("ok altered frame")


async def scenario_slow_reader() -> None:
    """8 MiB to a reader that stalls: the credit window stops the sender once the reader's
    inbox holds ``WINDOW`` bytes (it cannot get further, whatever the speeds), neither
    aiortc's send buffer nor the inbox ever grows past its mark, and once the reader reads
    again every frame arrives, in order."""
    frame, count = 64 * 1024, 128
    done = 0
    with trio.fail_after(25):
        a, b = await _linked()

        async def write() -> None:
            nonlocal done
            for i in range(count):
                await a.send(i.to_bytes(4, "big") * (frame // 4))
                done += 1

        async with trio.open_nursery() as n:
            n.start_soon(write)
            while b.stats().max_unread < rtc.WINDOW - rtc.CHUNK:  # wait for the window to fill
                await trio.sleep(0.01)
            stalled_at = done
            assert stalled_at <= rtc.WINDOW // frame < count, stalled_at
            for i in range(count):
                assert await b.receive() == i.to_bytes(4, "big") * (frame // 4)
    sent, got = a.stats(), b.stats()
    print("stalled after", stalled_at, "frames;", sent, got)
    assert sent.max_buffered <= rtc.HIGH_WATER + rtc.CHUNK, sent
    assert got.max_unread <= rtc.WINDOW, got
    await a.aclose()
    await b.aclose()
    print("ok slow reader")


async def scenario_lossy_path() -> None:
    """The tuned SCTP (``rtc.tune_aiortc``: delayed SACKs, the retransmit walk only after a
    loss signal, the reassembly shortcut) over a path that drops 3 % of UDP packets at
    random (an nftables rule in the namespace; this kernel has no netem): gaps, fast
    retransmits, T3 expiries and fragments that arrive after later ones, and still every
    frame arrives whole and in order, both ways."""
    import aiortc

    assert rtc.tune_aiortc() == (aiortc.__version__ == rtc.AIORTC_TUNED_FOR)
    rules = (
        "table inet p2plossy {\n chain out {\n type filter hook output priority 0;\n"
        " meta l4proto udp numgen random mod 100 < 3 counter drop\n }\n}\n"
    )
    subprocess.run(["nft", "-f", "-"], input=rules.encode(), check=True)
    try:
        with trio.fail_after(40):
            a, b = await _linked()
            frames = [i.to_bytes(4, "big") * 9000 for i in range(64)]  # 36 KB each
            async with trio.open_nursery() as n:

                async def write() -> None:
                    for f in frames:
                        await a.send(f)

                n.start_soon(write)
                for i, f in enumerate(frames):
                    assert await b.receive() == f, i
            for f in (b"", b"back", frames[0]):
                await b.send(f)
                assert await a.receive() == f
            await a.aclose()
            await b.aclose()
        shown = subprocess.run(
            ["nft", "list", "table", "inet", "p2plossy"], capture_output=True, text=True
        ).stdout
        dropped = int(shown.split("counter packets ")[1].split()[0])
        assert dropped > 10, shown  # the path did lose packets
    finally:
        subprocess.run(["nft", "delete", "table", "inet", "p2plossy"], check=False)
    print("ok lossy, dropped", dropped)


# -- the namespace and the tests ---------------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    ns = f"p2pR{os.getpid() % 100000}"
    _ip("netns", "add", ns)
    try:
        _ip("-n", ns, "link", "set", "lo", "up")
        # a veth pair with both ends inside (no dummy module needed); only d0 is addressed
        _ip("-n", ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
        _ip("-n", ns, "addr", "add", "10.77.0.1/24", "dev", "d0")
        _ip("-n", ns, "link", "set", "d0", "up")
        _ip("-n", ns, "link", "set", "d1", "up")
        _ip("-n", ns, "route", "add", "224.0.0.0/4", "dev", "d0")  # mDNS (the sidecar test)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


def _run(ns: str, scenario: Callable[[], Awaitable[None]]) -> str:
    code = f"import trio, {scenario.__module__} as t; trio.run(t.{scenario.__name__})"
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=40,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@needs_netns
def test_frames_limits_and_close(netns: str) -> None:
    assert "ok frames" in _run(netns, scenario_frames)


@needs_netns
def test_altered_answer_is_refused(netns: str) -> None:
    assert "ok tampered" in _run(netns, scenario_tampered_answer)


@needs_netns
def test_mitm_with_own_dtls_cert_fails_the_handshake(netns: str) -> None:
    assert "ok mitm" in _run(netns, scenario_mitm)


@needs_netns
def test_a_frame_altered_on_the_path_is_caught(netns: str) -> None:
    assert "ok altered frame" in _run(netns, scenario_altered_frame)


@needs_netns
def test_frames_survive_a_lossy_reordering_path(netns: str) -> None:
    assert "ok lossy" in _run(netns, scenario_lossy_path)


@needs_netns
def test_slow_reader_keeps_memory_bounded(netns: str) -> None:
    assert "ok slow reader" in _run(netns, scenario_slow_reader)


@needs_netns
def test_replayed_or_unusable_offers_are_refused(netns: str) -> None:
    assert "ok bad input" in _run(netns, scenario_bad_input)


@needs_netns
def test_peer_gone_before_ice_connects(netns: str) -> None:
    assert "ok vanished" in _run(netns, scenario_peer_vanishes)
