"""What every protocol part of one node shares: who it is, its knobs, its status, its dice.

The front builds one ``NodeContext`` and hands it to membership, heartbeats, rumors and
push-sum, so each part reads the same identity and configuration and draws from the same
``Rng`` in the order the rounds call them (runs stay reproducible from one seed).  Only
``status`` changes after construction (``StatusChanged``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from ..crypto import SigningKey
from .config import GossipConfig
from .events import Effect, Send
from .messages import Message
from .values import Contact, Rng, Status

T = TypeVar("T")

#: The effects a handler appends to, in the order the shell must perform them.
Out = list[Effect]


@dataclass(kw_only=True, slots=True, eq=False)
class NodeContext:
    """One node's identity, configuration, status and randomness (see the module docstring)."""

    key: SigningKey
    contact: Contact
    config: GossipConfig
    rng: Rng
    status: Status
    #: This node's id: its key id.
    node: str = field(init=False)

    def __post_init__(self) -> None:
        self.node = self.key.keyid
        if self.contact.node != self.node:
            raise ValueError("Gossip: contact.node must be this node's key id")

    def choice(self, seq: Sequence[T]) -> T:
        return seq[int(self.rng.random() * len(seq))]

    def sample(self, seq: Sequence[T], k: int) -> list[T]:
        """``k`` distinct items in random order (partial Fisher-Yates on ``rng.random()``;
        ``random.sample`` costs several times more, and this runs for every share sent)."""
        pool = list(seq)
        n = len(pool)
        rand = self.rng.random
        for i in range(min(k, n)):
            j = i + int(rand() * (n - i))
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]


def send(peer: str, msg: Message, out: Out) -> None:
    """Queue ``msg`` for ``peer``'s link."""
    out.append(Send(peer=peer, data=msg.to_wire()))
