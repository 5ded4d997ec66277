"""Envelope encryption: master keys wrap per-tenant data keys; data keys seal records.

- A master key comes from `DATA_ENCRYPTION_KEY` (development: a file in `DATA_DIR`).
  It never encrypts customer data itself, only tenants' data keys, so rotating it
  re-wraps a few hundred bytes per tenant instead of re-encrypting every row.
- Each tenant has data keys (AES-256-GCM) in versions; records name the version that
  sealed them, so a new version serves new writes while older records still open.
- The tenant id and the record's purpose (`kb_chunks.text`, ...) are the associated
  data: a sealed value copied to another tenant's row, or into another column, fails
  its authentication tag instead of decrypting.
- Destroying a tenant's data keys makes every copy of its records unreadable, backups
  included (crypto-shredding).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

# Binary records start with MAGIC, text records with TEXT_PREFIX: anything else was
# written before encryption existed and is read as it is (see README, Security).
MAGIC = b"\xe1CK1"
TEXT_PREFIX = "e1."
NONCE_BYTES = 12
_VERSION = struct.Struct(">I")
MIN_MASTER_KEY_CHARS = 32


class DecryptionFailed(ValueError):
    """A record did not authenticate: wrong tenant, wrong column, edited, or its key is gone."""


def _derive(material: str) -> bytes:
    """Any long random string works as a master key; HKDF turns it into 32 key bytes."""
    if len(material) < MIN_MASTER_KEY_CHARS:
        raise ValueError(f"an encryption master key needs at least {MIN_MASTER_KEY_CHARS} characters")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"crm-ai master key v1").derive(material.encode())


@dataclass(frozen=True, slots=True)
class MasterKey:
    key_id: str  # a fingerprint, stored beside each wrapped data key; not secret
    aead: AESGCM

    @classmethod
    def from_material(cls, material: str) -> MasterKey:
        key = _derive(material)
        return cls(hashlib.sha256(b"crm-ai key id" + key).hexdigest()[:16], AESGCM(key))


class MasterKeys:
    """The current master key (wraps new data keys) and retired ones (still unwrap
    during a rotation, until `python -m app keys rotate` has re-wrapped everything)."""

    def __init__(self, current: str, retired: Iterable[str] = ()) -> None:
        self.current = MasterKey.from_material(current)
        self._by_id = {self.current.key_id: self.current}
        for material in retired:
            key = MasterKey.from_material(material)
            self._by_id.setdefault(key.key_id, key)

    def wrap(self, tenant_id: str, version: int, data_key: bytes) -> tuple[str, bytes]:
        nonce = os.urandom(NONCE_BYTES)
        return self.current.key_id, nonce + self.current.aead.encrypt(nonce, data_key, _wrap_aad(tenant_id, version))

    def unwrap(self, tenant_id: str, version: int, master_key_id: str, wrapped: bytes) -> bytes:
        master = self._by_id.get(master_key_id)
        if master is None:
            raise DecryptionFailed(
                f"master key {master_key_id} is not configured: replicas sharing a database or Redis need the "
                "same DATA_ENCRYPTION_KEY (a generated development key is per DATA_DIR), and a rotated-out key "
                "belongs in DATA_ENCRYPTION_OLD_KEYS until `python -m app keys rotate` has run")
        try:
            return master.aead.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _wrap_aad(tenant_id, version))
        except InvalidTag as error:
            raise DecryptionFailed(f"data key {version} of tenant {tenant_id} does not unwrap") from error


def _wrap_aad(tenant_id: str, version: int) -> bytes:
    return f"data-key|{tenant_id}|{version}".encode()


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


class TenantCipher:
    """Seals and opens one tenant's records. Synchronous and in memory: stores fetch it
    once per operation (`Keyring.cipher`) and then seal or open every row without I/O."""

    def __init__(self, tenant_id: str, keys: dict[int, bytes], *, sealing_version: int | None = None) -> None:
        if not keys:
            raise ValueError("a tenant cipher needs at least one data key")
        self.tenant_id = tenant_id
        self.version = max(keys) if sealing_version is None else sealing_version
        self._aeads = {version: AESGCM(key) for version, key in keys.items()}
        # From the oldest live key, so a rotation does not change fingerprints.
        self._fingerprint_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                                     info=b"crm-ai fingerprint v1").derive(keys[min(keys)])

    def _aad(self, purpose: str) -> bytes:
        return f"{self.tenant_id}|{purpose}".encode()

    def seal(self, purpose: str, plaintext: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aeads[self.version].encrypt(nonce, plaintext, self._aad(purpose))
        return MAGIC + _VERSION.pack(self.version) + nonce + sealed

    def open(self, purpose: str, record: bytes) -> bytes:
        if not record.startswith(MAGIC):
            return record  # written before encryption at rest
        header = len(MAGIC) + _VERSION.size
        (version,) = _VERSION.unpack(record[len(MAGIC):header])
        aead = self._aeads.get(version)
        if aead is None:
            raise DecryptionFailed(f"no data key {version} for tenant {self.tenant_id}")
        try:
            return aead.decrypt(record[header:header + NONCE_BYTES], record[header + NONCE_BYTES:], self._aad(purpose))
        except InvalidTag as error:
            raise DecryptionFailed(f"a {purpose} record of tenant {self.tenant_id} does not authenticate") from error

    def fingerprint(self, purpose: str, value: str) -> str:
        """A keyed hash, for lookup keys that would otherwise be a plain hash of customer
        text (anyone reading the store could confirm a guess of a short message)."""
        return hmac.new(self._fingerprint_key, f"{purpose}|{value}".encode(), hashlib.sha256).hexdigest()

    def seal_text(self, purpose: str, text: str) -> str:
        return TEXT_PREFIX + base64.urlsafe_b64encode(self.seal(purpose, text.encode())).decode()

    def open_text(self, purpose: str, stored: str) -> str:
        if not stored.startswith(TEXT_PREFIX):
            return stored
        return self.open(purpose, base64.urlsafe_b64decode(stored[len(TEXT_PREFIX):])).decode()

    def seal_json(self, purpose: str, value: Any) -> str:
        """For JSON columns: the sealed form is a JSON string."""
        return self.seal_text(purpose, json.dumps(value, separators=(",", ":")))

    def open_json(self, purpose: str, stored: Any) -> Any:
        if isinstance(stored, str) and stored.startswith(TEXT_PREFIX):
            return json.loads(self.open_text(purpose, stored))
        return stored
