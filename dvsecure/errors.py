"""Exception types. Each names a class of mistake so callers can catch precisely."""


class DvsecureError(Exception):
    """Base class of every error dvsecure raises on purpose."""


class PolicyError(DvsecureError, ValueError):
    """A consortium policy (object or TOML file) is malformed or inconsistent."""


class VoteError(DvsecureError, ValueError):
    """A vote batch has the wrong shape or type (per-source invalid votes do not
    raise: they exclude that source from that query)."""


class ParameterError(DvsecureError, ValueError):
    """A numeric parameter is out of its domain (sigma <= 0, delta not in (0,1), ...)."""


class BudgetExceededError(DvsecureError):
    """A charge would take a source past its budget. The filter prevents this;
    the ledger raises it as a last line of defence and records nothing."""


class LedgerError(DvsecureError):
    """The durable ledger is unusable: wrong policy, corrupt, or a replayed query id."""


class DuplicateQueryError(LedgerError):
    """A query id that the ledger has already charged."""


class ProofError(DvsecureError):
    """A Merkle inclusion or consistency proof does not verify (RFC 9162 §2.1)."""


class NoteError(DvsecureError):
    """A signed note or checkpoint is malformed, unsigned by a required key, or
    carries a signature that does not verify."""


class LogError(DvsecureError):
    """The transparency log directory is malformed or inconsistent with the ledger."""


class SubmissionError(DvsecureError):
    """A source's submission is malformed, unsigned or wrongly signed, from an
    unknown source, meant for another party or query, or does not decrypt."""


class UnauthenticatedSubmission(SubmissionError):
    """A submission whose sender is not who it claims: an unknown source, a bad
    signature, or signed by one source in another's name (gRPC UNAUTHENTICATED)."""


class AttestationError(DvsecureError):
    """An enclave attestation document does not verify. `reason` names the
    failed check, machine-readable; the message says what was wrong.

    Reasons: malformed (not a COSE_Sign1/ES384 document), payload (fields
    missing or of the wrong type or size), root (not issued under the trusted
    root), sim_untrusted (a simulated document checked against real roots),
    expired / not_yet_valid (a certificate outside its validity at the time
    checked), chain (the certificate chain does not verify), signature (the
    COSE signature does not verify), pcr / nonce / public_key (authentic, but
    not what the caller expected)."""

    REASONS = frozenset({"malformed", "payload", "root", "sim_untrusted", "expired", "not_yet_valid",
                         "chain", "signature", "pcr", "nonce", "public_key"})

    def __init__(self, reason: str, message: str):
        if reason not in self.REASONS:
            raise ValueError(f"unknown attestation failure reason {reason!r}")
        super().__init__(message)
        self.reason = reason


class SimulatedCAError(DvsecureError):
    """The simulated attestation CA directory is incomplete, unreadable, or
    holds a key that does not match its certificate."""


class ServiceRefusal(DvsecureError):
    """A gRPC service (the enclave, an MPC party) refused a request; `code` names
    the gRPC status it is sent with (dvsecure.wire.rpc)."""

    def __init__(self, message: str, code: str = "INVALID_ARGUMENT"):
        super().__init__(message)
        self.code = code


class EnclaveError(ServiceRefusal):
    """The enclave service refused a request or cannot start (no attestation
    device, unusable keys file), or a client's check of the enclave failed
    (attestation not binding its keys, a checkpoint it did not sign)."""


class PartyRefusal(ServiceRefusal):
    """An MPC party's submission service refused a source's shares (unknown
    source, bad signature, meant for another party, replayed, late)."""


class ChannelError(DvsecureError):
    """A link between MPC members (parties, dealer) failed: a frame that does not
    authenticate (a changed, dropped, injected or replayed byte), a closed
    connection, or a peer silent past the link timeout. The batch fails closed."""


class HandshakeError(ChannelError):
    """A link's key agreement failed: the peer is not the pinned member it claims,
    runs under another roster, or broke off."""
