"""API keys: who is calling. The keys file, the `x-api-key` check (401) and a CLI to make keys.

Off unless `DEPTHID_API_KEYS_FILE` names a keys file; then every /v1 and /v2 route needs a
known key (health, metrics, /docs and /openapi.json stay open). The file holds only each key's
SHA-256, never the key:

    {"keys": [{"name": "team-a", "sha256": "<64 hex digits>", "models": ["instantid"],
               "credits": 100000, "requests_per_minute": 120, "concurrent_jobs": 8}]}

`name` is the tenant id of logs, metrics and the credit ledger; everything after `sha256` is
optional (all models; no credit limit; the settings' per-key limits). Why a plain SHA-256 and
not a slow password hash: the keys are 256-bit random strings (`new` below), so a leaked file
cannot be brute-forced back into keys, which is all a slow hash buys for guessable passwords;
and a fast hash keeps the check per request at microseconds, a dictionary lookup by hash that
never compares secrets character by character.

An entry may also hold `webhook_secret` (`whsec_...`): the key's Standard Webhooks signing
secret, with which the Gateway signs the webhooks of its v2 jobs (gateway/webhooks.py). Unlike
the key it must be kept as it is, since the Gateway signs with it: the file is a secret.

    depthid keys new --name team-a [--models M ...] [--credits N]
prints a new key and its webhook signing secret once, and the entry to add to the file;
    depthid keys add --file keys.json --name team-a [...]
makes a key and appends its entry to the file (creating it);
    depthid keys check --file keys.json
checks a file by the rules the Gateway starts with. `python -m gateway.tenancy.api_keys` is the
same command where `depthid` is not installed (the images).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.http.errors import ApiError
from gateway.schemas.registry import MODEL_SPECS
from gateway.tenancy import ANONYMOUS
from settings import Settings, get_settings

HEADER = "x-api-key"
KEY_PREFIX = "did_"  # makes a DepthID key recognisable (secret scanners, support tickets)
KEY_BYTES = 32  # 256 random bits
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # safe in Redis keys, logs and labels
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# Standard Webhooks' secret format: the prefix, then the base64 of the HMAC key.
WEBHOOK_SECRET_PREFIX = "whsec_"
WEBHOOK_SECRET_MIN_BYTES = 24

# Declares the header in the OpenAPI schema (an "Authorize" button in /docs); the check is ours.
api_key_header = APIKeyHeader(
    name=HEADER,
    auto_error=False,
    description="Your API key (needed when the server has API keys configured).",
)


@dataclass(frozen=True)
class Tenant:
    """A caller as the limits and the ledger see it: a key's entry with the defaults filled in."""

    name: str
    models: frozenset[str] | None  # None: every model
    credits: int | None  # None: no credit limit (the ledger is not used)
    requests_per_minute: int  # 0: no limit
    concurrent_jobs: int  # 0: no limit
    webhook_secret: str | None = None  # signs its v2 webhooks (gateway/webhooks.py)


# When keys are off: everyone is this tenant, with no credits and no per-key limits.
NO_KEYS_TENANT = Tenant(
    name=ANONYMOUS, models=None, credits=None, requests_per_minute=0, concurrent_jobs=0
)


class ApiKeysFileError(Exception):
    """The keys file cannot be used; the message says which file and why."""


class KeyEntry(BaseModel):
    """One entry of the keys file."""

    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not ignored

    name: str
    sha256: str
    models: list[str] | None = Field(default=None, min_length=1)
    credits: int | None = Field(default=None, ge=0)
    requests_per_minute: int | None = Field(default=None, ge=0)
    concurrent_jobs: int | None = Field(default=None, ge=0)
    webhook_secret: str | None = None

    @field_validator("webhook_secret")
    @classmethod
    def _signing_secret(cls, value: str | None) -> str | None:
        if value is not None and not is_webhook_secret(value):
            raise ValueError(
                f"must be '{WEBHOOK_SECRET_PREFIX}' and the base64 of at least "
                f"{WEBHOOK_SECRET_MIN_BYTES} bytes (the keys CLI makes one)"
            )
        return value

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        if not SHA256_HEX.fullmatch(value.lower()):
            raise ValueError("must be the key's SHA-256 as 64 hex digits, not the key itself")
        return value.lower()

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not NAME.fullmatch(value):
            raise ValueError("1 to 64 letters, digits, '.', '_' or '-', not starting with . _ -")
        if value == ANONYMOUS:
            raise ValueError(f"'{ANONYMOUS}' is reserved for the server without keys")
        return value

    @field_validator("models")
    @classmethod
    def _known_models(cls, value: list[str] | None) -> list[str] | None:
        unknown = sorted(set(value or ()) - set(MODEL_SPECS))
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; models are {sorted(MODEL_SPECS)}")
        return value


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[KeyEntry] = Field(min_length=1)


def hash_key(key: str) -> str:
    """The form a key is stored and looked up in: its SHA-256, as hex."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyRing:
    """The configured keys, looked up by hash (a request's key) or by name (a job's owner)."""

    def __init__(self, tenants_by_hash: dict[str, Tenant]) -> None:
        self._by_hash = tenants_by_hash
        self._by_name = {tenant.name: tenant for tenant in tenants_by_hash.values()}

    def find(self, key: str) -> Tenant | None:
        return self._by_hash.get(hash_key(key))

    def named(self, name: str) -> Tenant | None:
        return self._by_name.get(name)

    def __len__(self) -> int:
        return len(self._by_hash)

    @classmethod
    def load(cls, path: Path, settings: Settings) -> KeyRing:
        """Read and check the keys file; any problem is an ApiKeysFileError naming it."""
        where = f"API keys file {path} (DEPTHID_API_KEYS_FILE)"
        try:
            raw = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ApiKeysFileError(f"{where}: cannot be read: {exc}") from exc
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ApiKeysFileError(f"{where}: is not valid JSON: {exc}") from exc
        entries = check_keys_data(data, where)
        return cls({entry.sha256: tenant_of(entry, settings) for entry in entries})


def check_keys_data(data: object, where: str) -> list[KeyEntry]:
    """The entries of a keys file's parsed JSON, by the rules the Gateway starts with; any
    problem is an ApiKeysFileError that starts with `where`."""
    if not isinstance(data, dict):
        raise ApiKeysFileError(f'{where}: must be a JSON object: {{"keys": [...]}}')
    try:
        entries = KeysFile.model_validate(data).keys
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise ApiKeysFileError(f"{where}: {problems}") from exc
    for field in ("name", "sha256"):
        values = [getattr(entry, field) for entry in entries]
        duplicates = sorted({value for value in values if values.count(value) > 1})
        if duplicates:
            shown = duplicates if field == "name" else [d[:12] + "…" for d in duplicates]
            raise ApiKeysFileError(f"{where}: the same {field} twice: {shown}")
    return entries


def tenant_of(entry: KeyEntry, settings: Settings) -> Tenant:
    """A key's entry with the settings' defaults for what it leaves out."""
    return Tenant(
        name=entry.name,
        models=frozenset(entry.models) if entry.models is not None else None,
        credits=entry.credits,
        requests_per_minute=(
            entry.requests_per_minute
            if entry.requests_per_minute is not None
            else settings.key_requests_per_minute
        ),
        concurrent_jobs=(
            entry.concurrent_jobs
            if entry.concurrent_jobs is not None
            else settings.key_concurrent_jobs
        ),
        webhook_secret=entry.webhook_secret,
    )


def describe_keys(ring: KeyRing | None, settings: Settings) -> str:
    """The Gateway's start-up line about keys."""
    if ring is None:
        return "API keys: off (DEPTHID_API_KEYS_FILE unset: anyone may call, no credits or limits)"
    return f"API keys: on, {len(ring)} keys ({settings.api_keys_file})"


def load_key_ring(settings: Settings) -> KeyRing | None:
    """The configured keys, or None when keys are off (no DEPTHID_API_KEYS_FILE)."""
    if settings.api_keys_file is None:
        return None
    return KeyRing.load(settings.api_keys_file, settings)


async def authenticate(
    request: Request, key: Annotated[str | None, Security(api_key_header)]
) -> Tenant:
    """The caller's tenant (a route dependency): with keys configured, the `x-api-key` header
    must name a known key, else 401. The key itself is never logged or echoed."""
    ring: KeyRing | None = request.app.state.api_keys
    if ring is None:
        tenant = NO_KEYS_TENANT
    elif not key:
        raise ApiError(401, f"an API key is required: send it in the {HEADER} header")
    elif (found := ring.find(key)) is None:
        raise ApiError(401, "unknown API key")
    else:
        tenant = found
    request.state.tenant = tenant.name  # for logs and metrics
    return tenant


Authenticated = Annotated[Tenant, Depends(authenticate)]


def authorize(tenant: Tenant, model: str) -> None:
    """403 when the key is limited to some models and `model` is not one of them."""
    if tenant.models is not None and model not in tenant.models:
        allowed = ", ".join(sorted(tenant.models))
        raise ApiError(403, f"this API key may not use '{model}'; it may use: {allowed}")


# --- CLI ----------------------------------------------------------------------------------


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def new_webhook_secret() -> str:
    """A Standard Webhooks signing secret: `whsec_` and the base64 of 32 random bytes."""
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()


def is_webhook_secret(value: str) -> bool:
    if not value.startswith(WEBHOOK_SECRET_PREFIX):
        return False
    try:
        raw = base64.b64decode(value.removeprefix(WEBHOOK_SECRET_PREFIX), validate=True)
    except ValueError:
        return False
    return len(raw) >= WEBHOOK_SECRET_MIN_BYTES


def main(argv: list[str] | None = None, prog: str = "python -m gateway.tenancy.api_keys") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Make DepthID API keys; check keys files.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="make a key: prints it once, and its file entry")
    add = commands.add_parser("add", help="make a key and append its entry to a keys file")
    add.add_argument("--file", type=Path, required=True, help="the keys file (created if absent)")
    for command in (new, add):
        command.add_argument("--name", required=True, help="tenant id (logs, metrics, ledger)")
        command.add_argument("--models", nargs="+", help="models it may use (default: all)")
        command.add_argument("--credits", type=int, help="credits it may spend (default: no limit)")
        command.add_argument("--requests-per-minute", type=int, help="instead of the setting's")
        command.add_argument("--concurrent-jobs", type=int, help="instead of the setting's")
    check = commands.add_parser("check", help="check a keys file as the Gateway does at start")
    check.add_argument("--file", type=Path, required=True, help="the keys file")
    args = parser.parse_args(argv)

    if args.command == "check":
        return check_file(args.file)
    key = new_key()
    webhook_secret = new_webhook_secret()
    fields = {
        "name": args.name,
        "sha256": hash_key(key),
        "webhook_secret": webhook_secret,
        "models": args.models,
        "credits": args.credits,
        "requests_per_minute": args.requests_per_minute,
        "concurrent_jobs": args.concurrent_jobs,
    }
    try:
        entry = KeyEntry.model_validate(fields)
    except ValidationError as exc:
        for error in exc.errors():
            option = "--" + str(error["loc"][0]).replace("_", "-")
            print(f"error: {option}: {error['msg']}", file=sys.stderr)
        return 2
    if args.command == "add":
        try:
            count = append_entry(args.file, entry)
        except ApiKeysFileError as exc:
            print(f"error: {exc} (the file is unchanged)", file=sys.stderr)
            return 1
        print(f"API key for '{entry.name}' (shown only now; hand it over, it cannot be recovered):")
        print(key)
        print(
            f"Its webhook signing secret (verifies the v2 webhooks its jobs send): {webhook_secret}"
        )
        print(f"Added to {args.file} ({count} keys). The Gateway reads it at start: restart it.")
        return 0
    print(f"API key for '{entry.name}' (shown only now; hand it over, it cannot be recovered):")
    print(key)
    print(f"Its webhook signing secret (verifies the v2 webhooks its jobs send): {webhook_secret}")
    print()
    print('Add this entry to the "keys" list of the file DEPTHID_API_KEYS_FILE names:')
    print(json.dumps(entry.model_dump(exclude_none=True)))
    return 0


def append_entry(path: Path, entry: KeyEntry) -> int:
    """Append `entry` to the keys file at `path` (created when absent), checked first by the
    Gateway's own rules (a name or hash twice is refused); the number of keys it now holds.
    Written to a temporary file and renamed, so a reader never sees half a file."""
    where = f"API keys file {path}"
    if path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiKeysFileError(f"{where}: cannot be read as JSON: {exc}") from exc
        check_keys_data(data, where)  # the file as it is must be valid to add to it
    else:
        data = {"keys": []}
    data["keys"].append(entry.model_dump(exclude_none=True))
    entries = check_keys_data(data, where)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        temporary.chmod(0o600)  # hashes only, yet nobody else's business
        os.replace(temporary, path)
    except OSError as exc:
        raise ApiKeysFileError(f"{where}: cannot be written: {exc}") from exc
    return len(entries)


def check_file(path: Path) -> int:
    """Print whether the Gateway would start with this keys file, and why not."""
    try:
        ring = KeyRing.load(path, get_settings())
    except ApiKeysFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{path}: ok, {len(ring)} keys")
    return 0


if __name__ == "__main__":
    sys.exit(main())
