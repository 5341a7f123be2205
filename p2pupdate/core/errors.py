"""Typed errors of the core.

Errors say *whose fault* it was (README "Architecture").  Bytes that arrive from anywhere are
untrusted, so every parse or verification failure is an exception of a specific type
carrying a short, stable ``rule`` code that tests and operators can match on, and a
human sentence.  A gate that says "no" is *not* an error: it returns a ``GateResult``.

Hierarchy::

    P2PUpdateError
      WireError                   the bytes are not a well-formed message (remote's fault)
        OversizeError             over a byte / length / count limit
        DepthError                nesting too deep
        TruncatedError            declared lengths run past the end of the input
        TrailingBytesError        bytes left after the single top-level object
        ExtTypeError              msgpack ext types are never accepted
        NonStrKeyError            map keys must be str
        DuplicateKeyError         a map key appears twice
        MalformedError            anything else the decoder rejects (reserved bytes, bad UTF-8)
        SchemaError               well-formed msgpack, wrong shape for the message kind
      VerificationError           a well-formed document that must not be trusted
        WrongTypeError            document of one kind used as another
        SignatureError            a threshold of valid signatures by distinct keys is missing
        KeyIdMismatchError        a key listed under an id that is not sha256(key)
        InvalidRootError          root document breaks a structural rule (threshold < 1, ...)
        RootRotationError         new root not signed by old and new thresholds, or skips
        ExpiredError              past ``expires`` (also when the clock was wound back)
        RollbackError             version lower than the floor already accepted
        EquivocationError         same version, different bytes
        BindingError              a token that names another node / pair / version
      KeyFileError                a key file that cannot be read as the expected key (local)
"""

from __future__ import annotations


class P2PUpdateError(Exception):
    """Base of every error the project raises on purpose."""

    rule: str = "error"

    def __init__(self, message: str, *, rule: str | None = None) -> None:
        super().__init__(message)
        if rule is not None:
            self.rule = rule

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.rule


# -- wire: malformed bytes -------------------------------------------------------------


class WireError(P2PUpdateError):
    """The bytes are not a well-formed message.  Blame the sender."""

    rule = "malformed"


class OversizeError(WireError):
    rule = "oversize"


class DepthError(WireError):
    rule = "too-deep"


class TruncatedError(WireError):
    rule = "truncated"


class TrailingBytesError(WireError):
    rule = "trailing-bytes"


class ExtTypeError(WireError):
    rule = "ext-type"


class NonStrKeyError(WireError):
    rule = "non-str-key"


class DuplicateKeyError(WireError):
    rule = "duplicate-key"


class MalformedError(WireError):
    rule = "malformed"


class SchemaError(WireError):
    rule = "schema"


# -- verification: well-formed but untrustworthy ----------------------------------------


class VerificationError(P2PUpdateError):
    """A well-formed document that must not be trusted."""

    rule = "unverified"


class WrongTypeError(VerificationError):
    rule = "wrong-type"


class WrongNetworkError(VerificationError):
    """Documents that disagree on which network this is: a network document, a bundle,
    its root or the pinned root naming another network."""

    rule = "wrong-network"


class SignatureError(VerificationError):
    rule = "signature-threshold"


class KeyIdMismatchError(VerificationError):
    rule = "keyid-mismatch"


class InvalidRootError(VerificationError):
    rule = "invalid-root"


class RootRotationError(VerificationError):
    rule = "root-rotation"


class ExpiredError(VerificationError):
    rule = "expired"


class RollbackError(VerificationError):
    rule = "rollback"


class EquivocationError(VerificationError):
    rule = "equivocation"


class BindingError(VerificationError):
    rule = "binding"


# -- local ------------------------------------------------------------------------------


class KeyFileError(P2PUpdateError):
    """A key file that is not the kind of key expected.  The local user's mistake."""

    rule = "key-file"
