"""Tokens issued elsewhere: RS256/ES256 from one configured issuer and audience.

The keys come from a local PEM file or JWKS file read at start-up; nothing is
fetched over the network, so a key rotation means updating the file.
"""

import json
import logging

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from app.config import ConfigError

log = logging.getLogger(__name__)

ALGORITHMS = ("RS256", "ES256")
REQUIRED_CLAIMS = ["exp", "iss", "aud", "sub"]


class UnknownKey(jwt.InvalidTokenError):
    """The token names no key (or algorithm) this issuer is configured with."""


class Issuer:
    """The outside issuer Tally trusts, with its verification keys."""

    def __init__(self, issuer, audience, keys):
        self.issuer = issuer
        self.audience = audience
        self.keys = keys  # [(kid or None, algorithm, public key)]

    def claims(self, token, header):
        """The verified claims of ``token``; raises a PyJWT error otherwise."""
        algorithm, key = self._key_for(header)
        return jwt.decode(
            token,
            key,
            algorithms=[algorithm],
            audience=self.audience,
            issuer=self.issuer,
            options={"require": REQUIRED_CLAIMS},
        )

    def _key_for(self, header):
        alg, kid = header.get("alg"), header.get("kid")
        # A key without a kid (a PEM file) matches any kid; a named key its own.
        found = [
            (a, key)
            for key_id, a, key in self.keys
            if a == alg and (key_id is None or kid is None or key_id == kid)
        ]
        if len(found) != 1:
            raise UnknownKey(f"no {alg} key {kid or ''} for issuer {self.issuer}")
        return found[0]


def load_issuer(settings):
    """The configured ``Issuer``, or None; raises ``ConfigError`` on a bad key file."""
    if not settings.external_tokens:
        return None
    if settings.jwt_public_key_file is not None:
        keys = [_pem_key(settings.jwt_public_key_file)]
    else:
        keys = _jwks_keys(settings.jwt_jwks_file)
    log.info(
        "issuer %s: accepting tokens for %s signed with %d key(s)",
        settings.jwt_issuer,
        settings.jwt_audience,
        len(keys),
    )
    return Issuer(settings.jwt_issuer, settings.jwt_audience, keys)


def _read(path, setting):
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None


def _pem_key(path):
    try:
        key = load_pem_public_key(_read(path, "TALLY_JWT_PUBLIC_KEY_FILE"))
    except ValueError:
        raise ConfigError(
            f"TALLY_JWT_PUBLIC_KEY_FILE: {path} is not a PEM public key"
        ) from None
    if isinstance(key, rsa.RSAPublicKey):
        return (None, "RS256", key)
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1":
        return (None, "ES256", key)
    raise ConfigError(
        f"TALLY_JWT_PUBLIC_KEY_FILE: {path} must hold an RSA or P-256 public key"
    )


def _jwks_keys(path):
    try:
        document = json.loads(_read(path, "TALLY_JWT_JWKS_FILE"))
        key_set = jwt.PyJWKSet.from_dict(document)
    except (ValueError, jwt.PyJWTError) as exc:
        raise ConfigError(f"TALLY_JWT_JWKS_FILE: {path} is not a JWKS: {exc}") from None
    keys = [
        (k.key_id, k.algorithm_name, _public(k.key))
        for k in key_set.keys
        if k.algorithm_name in ALGORITHMS and k.public_key_use in (None, "sig")
    ]
    if not keys:
        raise ConfigError(f"TALLY_JWT_JWKS_FILE: {path} has no RS256 or ES256 key")
    return keys


def _public(key):
    # A JWKS holding a private key still verifies with its public half.
    return key.public_key() if hasattr(key, "public_key") else key
