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
