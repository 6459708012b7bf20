"""SMART Backend Services: client assertions exchanged for short access tokens, and verified.

All JOSE work is joserfc's; what this module adds is policy: algorithms pinned to RS384 and
ES384 (never `none`, never an HMAC keyed with a public key), a key only from the client's own
JWKS and chosen by `kid`, `iss` = `sub` = the client, `aud` = the token URL, assertions of at
most five minutes whose `jti` is kept until they expire (so no replica accepts one twice), and
access tokens of at most five minutes signed by a key kept in the database (so replicas agree).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet
from joserfc.jws import extract_compact
from sqlalchemy import Engine

from service.access.keysets import KeySets, KeySetUnavailable
from service.access.scopes import Scopes
from service.errors import AuthError, OAuthError
from service.infra.clock import utcnow
from service.infra.db import reading, writing
from service.infra.settings import TrustedIssuer
from service.repositories import api_clients

# Pinned: what a client assertion may be signed with, and what our own tokens are signed with.
ASSERTION_ALGORITHMS = ["RS384", "ES384"]
TOKEN_ALGORITHM = "ES384"
MAX_ASSERTION_SECONDS = 300
ISSUER = "urn:trialbridge:token-service"
AUDIENCE = "urn:trialbridge:api"
GRANT_TYPE = "client_credentials"
CLIENT_REFUSED = "client authentication failed"
# A revoked client's tokens stop working within this long on every replica.
REVOCATION_CHECK_SECONDS = 1.0
# every process re-reads the signing keys this often: a rotation or a retirement reaches it by then
KEY_RELOAD_SECONDS = 60.0
# a rotated-out key verifies until every token it signed has expired in every process:
# reload (60 s) + the longest token lifetime (300 s) + the largest clock skew (300 s), rounded up
RETIRE_AFTER = dt.timedelta(minutes=15)
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# verified tokens kept per process (a repeat token skips only the signature check)
TOKEN_CACHE_ENTRIES = 4096
TOKEN_CACHE_BYTES = 4 * 1024 * 1024
_ENTRY_OVERHEAD = 600  # bytes an entry costs besides its strings (digest, tuple, dict, Principal)


@dataclass(frozen=True)
class Principal:
    """Who is asking: the client and the scopes its token grants."""

    client: str
    scopes: Scopes


@dataclass(frozen=True)
class TokenGrant:
    """An access token as the token endpoint answers it."""

    access_token: str
    expires_in: int
    scope: str
    client: str


def _now_s(now: dt.datetime) -> int:
    return int(now.timestamp())


@dataclass(frozen=True, slots=True)
class _Verified:
    """A token whose signature was checked: the claims every use checks again, and its key."""

    principal: Principal
    claims: Mapping[str, Any]
    kid: str
    exp: int
    size: int


class VerifiedTokens:
    """Tokens whose signature this process checked, by the SHA-256 of the token (never the token).

    Bounded in entries and in bytes (least recently used out first); an entry goes at the token's
    `exp`, and with its key when the key is retired. Only the signature check is skipped: times,
    issuer, audience and revocation are checked on every use.
    """

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[bytes, _Verified] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes, now_s: int) -> _Verified | None:
        """The entry of a token verified before and not yet at its `exp`."""
        with self._lock:
            hit = self._entries.get(digest)
            if hit is None:
                return None
            if hit.exp <= now_s:
                self._drop(digest)
                return None
            self._entries.move_to_end(digest)
            return hit

    def put(self, digest: bytes, entry: _Verified) -> None:
        """Keep a verified token, evicting the least recently used past either bound."""
        if entry.size > self.max_bytes or self.max_entries <= 0:
            return
        with self._lock:
            if digest in self._entries:
                self._drop(digest)
            self._entries[digest] = entry
            self.bytes += entry.size
            while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))

    def keep_kids(self, kids: frozenset[str]) -> None:
        """Forget every token signed by a key no longer among ours (retired)."""
        with self._lock:
            for digest in [d for d, e in self._entries.items() if e.kid not in kids]:
                self._drop(digest)

    def _drop(self, digest: bytes) -> None:
        self.bytes -= self._entries.pop(digest).size


class TokenService:
    """Issues and verifies this deployment's access tokens."""

    def __init__(
        self,
        engine: Engine,
        *,
        lifetime_seconds: int = 300,
        skew_seconds: int = 60,
        issuers: Sequence[TrustedIssuer] = (),
        allow_private: bool = False,
        clock: Callable[[], dt.datetime] = utcnow,
        cache_entries: int = TOKEN_CACHE_ENTRIES,
        cache_bytes: int = TOKEN_CACHE_BYTES,
    ) -> None:
        self.engine = engine
        self.issuers = {i.issuer: i for i in issuers if i.issuer != ISSUER}
        self.keysets = KeySets(allow_private=allow_private)
        self.lifetime = lifetime_seconds
        self.skew = skew_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._keys: tuple[ECKey, KeySet] | None = None
        self._kids: frozenset[str] = frozenset()
        self._loaded_at = 0.0
        self.verified = VerifiedTokens(cache_entries, cache_bytes)
        self._revoked: dict[str, tuple[float, bool]] = {}  # client -> (checked at, revoked)

    # -- our signing key --------------------------------------------------------------------------

    def _signing(self, *, reload: bool = False) -> tuple[ECKey, KeySet]:
        """The signing key (the newest stored) and every key's public half, read again each minute.

        Processes starting together on an empty database store one key between them (the first
        is made under a lock), and a process reloads the keys when a token names a `kid` it has
        not seen (at most once a second), so all of them accept each other's tokens.
        `trialbridge keys rotate` adds a newer key, which every process signs with after its next
        reload; retired keys stop verifying by then too.
        """
        with self._lock:
            fresh = time.monotonic() - self._loaded_at < KEY_RELOAD_SECONDS
            if self._keys is not None and fresh and not reload:
                return self._keys
        with reading(self.engine) as session:
            rows = api_clients.signing_keys(session)
        if not rows:
            key = ECKey.generate_key("P-384", parameters={"use": "sig", "alg": TOKEN_ALGORITHM})
            private = ECKey.import_key({**key.as_dict(private=True), "kid": key.thumbprint()})
            with writing(self.engine) as session:
                api_clients.lock_signing_keys(session)
                if not api_clients.signing_keys(session):
                    api_clients.insert_signing_key(
                        session,
                        str(private.kid),
                        json.dumps(private.as_dict(private=True)),
                        self.clock(),
                    )
            with reading(self.engine) as session:
                rows = api_clients.signing_keys(session)
        keys = [ECKey.import_key(json.loads(r.private_jwk)) for r in rows]
        public = KeySet([ECKey.import_key(k.as_dict(private=False)) for k in keys])
        kids = frozenset(str(k.kid) for k in keys)
        with self._lock:
            self._keys = (keys[-1], public)
            self._kids = kids
            self._loaded_at = time.monotonic()
        self.verified.keep_kids(kids)  # tokens of a retired key go with it
        return keys[-1], public

    def _public_for(self, kid: object) -> KeySet:
        """Our public keys, reloaded (at most once a second) when `kid` is not among them."""
        _, public = self._signing()
        known = {k.kid for k in public}
        if kid in known or time.monotonic() - self._loaded_at < REVOCATION_CHECK_SECONDS:
            return public
        return self._signing(reload=True)[1]

    # -- the token endpoint -----------------------------------------------------------------------

    def exchange(self, form: Mapping[str, str], token_url: str) -> TokenGrant:
        """A client_credentials request with a signed client assertion, answered with a token."""
        if form.get("grant_type") != GRANT_TYPE:
            raise OAuthError("unsupported_grant_type", f"grant_type must be {GRANT_TYPE}")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise OAuthError("invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}")
        assertion = form.get("client_assertion")
        if not assertion:
            raise OAuthError("invalid_request", "client_assertion is required")
        requested = Scopes.parse(form.get("scope", ""))
        if not requested.granted:
            raise OAuthError("invalid_scope", "scope is required")
        client_id = _claimed_client(assertion)
        with reading(self.engine) as session:
            client = api_clients.get_client(session, client_id)
        if client is None or client.revoked_at is not None or not (client.jwks or client.jwks_url):
            raise OAuthError("invalid_client", CLIENT_REFUSED, 401)
        claims = self._verified_assertion(assertion, client, token_url)
        allowed = Scopes.parse(client.scopes)
        refused = sorted(s for s in requested.granted if not allowed.covers(s))
        if refused:
            raise OAuthError("invalid_scope", f"not granted to this client: {' '.join(refused)}")
        expires = dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC)
        with writing(self.engine) as session:
            fresh = api_clients.remember_assertion(
                session, client_id, str(claims["jti"]), expires, self.clock()
            )
        if not fresh:
            raise OAuthError("invalid_client", "client assertion replayed (jti seen before)", 401)
        return self._issue(client_id, requested)

    def _verified_assertion(self, assertion: str, client: Any, token_url: str) -> dict[str, Any]:
        """The assertion's claims, checked against the client's keys and the SMART rules."""
        try:
            if client.jwks_url:
                keys = self.keysets.from_url(client.jwks_url)
            else:
                keys = KeySet.import_key_set(json.loads(client.jwks))
            token = jwt.decode(assertion, keys, algorithms=ASSERTION_ALGORITHMS)
        except (KeySetUnavailable, JoseError, ValueError, KeyError, TypeError) as exc:
            # the same words as for an unknown client: client names cannot be probed
            raise OAuthError("invalid_client", CLIENT_REFUSED, 401) from exc
        if "kid" not in token.header:
            raise OAuthError("invalid_client", "client assertion header needs a kid", 401)
        claims = dict(token.claims)
        now = _now_s(self.clock())
        problems = []
        if claims.get("iss") != client.name or claims.get("sub") != client.name:
            problems.append("iss and sub must be the client id")
        if not _addressed_to(claims, token_url):
            problems.append(f"aud must be {token_url}")
        exp = claims.get("exp")
        if not isinstance(exp, int) or isinstance(exp, bool):
            problems.append("exp is required")
        elif exp < now - self.skew:
            problems.append("expired")
        elif exp > now + MAX_ASSERTION_SECONDS + self.skew:
            problems.append(f"exp is more than {MAX_ASSERTION_SECONDS} s ahead")
        nbf = claims.get("nbf")
        if nbf is not None and (not isinstance(nbf, int | float) or nbf > now + self.skew):
            problems.append("not yet valid")
        iat = claims.get("iat")
        if iat is not None and (not isinstance(iat, int | float) or iat > now + self.skew):
            problems.append("issued in the future")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            problems.append("jti is required (at most 256 characters)")
        if problems:
            raise OAuthError("invalid_client", "client assertion: " + "; ".join(problems), 401)
        return claims

    def _issue(self, client_id: str, scopes: Scopes) -> TokenGrant:
        key, _ = self._signing()
        now = _now_s(self.clock())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": client_id,
            "scope": str(scopes),
            "iat": now,
            "nbf": now,
            "exp": now + self.lifetime,
            "jti": uuid.uuid4().hex,
        }
        header = {"alg": TOKEN_ALGORITHM, "kid": key.kid, "typ": "at+jwt"}
        token = jwt.encode(header, claims, key, algorithms=[TOKEN_ALGORITHM])
        return TokenGrant(token, self.lifetime, str(scopes), client_id)

    # -- bearer tokens ----------------------------------------------------------------------------

    def verify(self, token: str) -> Principal:
        """The principal of a bearer token, or 401 `invalid_token` (the reason is not echoed)."""
        digest = hashlib.sha256(token.encode()).digest()
        now = _now_s(self.clock())
        hit = self.verified.get(digest, now)
        if hit is not None:
            self._signing()  # the keys as of the last minute: a retired key's entries are gone
            with self._lock:
                known = hit.kid in self._kids
            if known and self._admits(hit.claims):
                return hit.principal
            raise AuthError(401, "invalid_token", "the access token is not valid")
        issuer = _unverified_claims(token).get("iss") if token.count(".") == 2 else None
        trusted = self.issuers.get(issuer) if isinstance(issuer, str) else None
        if trusted is not None:
            return self._verify_external(token, trusted)
        try:
            kid = extract_compact(token.encode()).protected.get("kid")
            public = self._public_for(kid)
            decoded = jwt.decode(token, public, algorithms=[TOKEN_ALGORITHM])
        except (JoseError, ValueError, KeyError, TypeError) as exc:
            raise AuthError(401, "invalid_token", "the access token is not valid") from exc
        claims = decoded.claims
        if not self._admits(claims):
            raise AuthError(401, "invalid_token", "the access token is not valid")
        who = Principal(claims["sub"], Scopes.parse(claims["scope"]))
        if isinstance(kid, str) and claims["exp"] > now:  # kept until its exp, not after
            kept = {k: claims.get(k) for k in ("iss", "aud", "sub", "scope", "exp", "nbf", "iat")}
            size = _ENTRY_OVERHEAD + len(claims["sub"]) + len(claims["scope"]) + len(kid)
            self.verified.put(digest, _Verified(who, kept, kid, claims["exp"], size))
        return who

    def cached(self, token: str) -> Principal | None:
        """A repeat token's principal without any I/O (on the event loop), or None: then only
        `verify` (in a thread) can tell, because the token, the keys or the client's revocation
        state was not known to this process recently enough."""
        if not self.verified:
            return None
        hit = self.verified.get(hashlib.sha256(token.encode()).digest(), _now_s(self.clock()))
        if hit is None:
            return None
        now = time.monotonic()
        with self._lock:
            keys_fresh = self._keys is not None and now - self._loaded_at < KEY_RELOAD_SECONDS
            known = hit.kid in self._kids
            revoked = self._revoked.get(hit.principal.client)
        if not (keys_fresh and known) or revoked is None:
            return None
        if now - revoked[0] >= REVOCATION_CHECK_SECONDS or revoked[1]:
            return None
        return hit.principal if self._valid(hit.claims) else None

    def _valid(self, claims: Mapping[str, Any]) -> bool:
        """Our own token's claims: our issuer, our audience, a client, scopes, current times."""
        return (
            claims.get("iss") == ISSUER
            and claims.get("aud") == AUDIENCE
            and isinstance(claims.get("sub"), str)
            and isinstance(claims.get("scope"), str)
            and self._current(claims)
        )

    def _admits(self, claims: Mapping[str, Any]) -> bool:
        """Valid claims of a client not revoked (asked of the database at most once a second)."""
        return self._valid(claims) and not self._is_revoked(claims["sub"])

    def _current(self, claims: Mapping[str, Any]) -> bool:
        """An access token's times: `exp` required and not past, `nbf`/`iat` not ahead (skew)."""
        now = _now_s(self.clock())
        exp, nbf, iat = claims.get("exp"), claims.get("nbf", 0), claims.get("iat", 0)
        return (
            isinstance(exp, int)
            and exp >= now - self.skew
            and isinstance(nbf, int)
            and nbf <= now + self.skew
            and isinstance(iat, int)
            and iat <= now + self.skew
        )

    def _is_revoked(self, client: str) -> bool:
        """Whether the client is revoked (or gone), asked of the database at most once a second."""
        now = time.monotonic()
        with self._lock:
            hit = self._revoked.get(client)
        if hit is not None and now - hit[0] < REVOCATION_CHECK_SECONDS:
            return hit[1]
        with reading(self.engine) as session:
            row = api_clients.get_client(session, client)
        revoked = row is None or row.revoked_at is not None
        with self._lock:
            self._revoked[client] = (now, revoked)
        return revoked

    def _verify_external(self, token: str, trusted: TrustedIssuer) -> Principal:
        """A token of a configured authorization server: its keys, algorithms and audience.

        Never kept in `verified`: the issuer's key set changes on its schedule (its JWKS URL, kept
        5 minutes, or its file), not ours, so no key retirement here would forget its tokens."""
        refused = AuthError(401, "invalid_token", "the access token is not valid")
        try:
            if trusted.jwks_file is not None:
                keys = self.keysets.from_file(trusted.jwks_file)
            else:
                keys = self.keysets.from_url(str(trusted.jwks_url))
            claims = jwt.decode(token, keys, algorithms=list(trusted.algorithms)).claims
        except (KeySetUnavailable, JoseError, ValueError, KeyError, TypeError) as exc:
            raise refused from exc
        scope = claims.get("scope", claims.get("scp"))
        scopes = scope.split() if isinstance(scope, str) else scope
        who = claims.get("client_id", claims.get("sub"))
        valid = (
            claims.get("iss") == trusted.issuer
            and _addressed_to(claims, trusted.audience)
            and self._current(claims)
            and isinstance(who, str)
            and isinstance(scopes, list)
            and all(isinstance(s, str) for s in scopes)
        )
        if not valid:
            raise refused
        return Principal(str(who), Scopes.of(scopes))  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class SigningKeyState:
    """One of our signing keys: its id, when it was made, and whether tokens are signed with it."""

    kid: str
    created_at: dt.datetime
    signing: bool


def signing_key_states(engine: Engine) -> list[SigningKeyState]:
    """Our signing keys, oldest first; the last signs, the others only verify until retired."""
    with reading(engine) as session:
        rows = api_clients.signing_keys(session)
    return [
        SigningKeyState(r.kid, r.created_at, signing=n == len(rows) - 1) for n, r in enumerate(rows)
    ]


def rotate_signing_key(
    engine: Engine, *, retire_now: bool = False, now: dt.datetime | None = None
) -> tuple[str, list[str]]:
    """Add a new signing key and retire the keys it outlived: (the new kid, the retired kids).

    A key is retired once a newer key has existed for RETIRE_AFTER, so no token it signed is
    still valid anywhere; `retire_now` retires every older key at once (a leaked key), which
    ends the sessions of every client until they ask for a new token.
    """
    at = now or utcnow()
    key = ECKey.generate_key("P-384", parameters={"use": "sig", "alg": TOKEN_ALGORITHM})
    private = ECKey.import_key({**key.as_dict(private=True), "kid": key.thumbprint()})
    with writing(engine) as session:
        rows = api_clients.signing_keys(session)
        # a key is outlived from the moment the next key was made
        retired = [
            old.kid
            for old, newer in pairwise(rows)
            if retire_now or at - newer.created_at >= RETIRE_AFTER
        ]
        if retire_now and rows:  # the newest too: it has no newer key to pair with
            retired.append(rows[-1].kid)
        api_clients.delete_signing_keys(session, retired)
        api_clients.insert_signing_key(
            session, str(private.kid), json.dumps(private.as_dict(private=True)), at
        )
    return str(private.kid), retired


def _addressed_to(claims: Mapping[str, Any], audience: str) -> bool:
    """`aud` is this audience, or a list holding it (RFC 7519 §4.1.3)."""
    found = claims.get("aud")
    return found == audience or (isinstance(found, list) and audience in found)


def _unverified_claims(token: str) -> dict[str, Any]:
    """A compact JWS's claims before verification (to know whose keys verify it), or {}."""
    try:
        claims = json.loads(extract_compact(token.encode()).payload)
    except (JoseError, ValueError, UnicodeError):
        return {}
    return claims if isinstance(claims, dict) else {}


def _claimed_client(assertion: str) -> str:
    """The `iss` an assertion claims (unverified: it only says whose keys to verify it with)."""
    issuer = _unverified_claims(assertion).get("iss")
    if not isinstance(issuer, str) or not issuer:
        raise OAuthError("invalid_client", "client assertion has no iss", 401)
    return issuer
